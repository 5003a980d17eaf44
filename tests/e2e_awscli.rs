//! End to end with the real AWS CLI: `aws` -> fake SSM/ECS API -> our plugin from PATH -> the
//! agent simulator. The CLI must print no warning (our `--version` satisfies its check) and
//! exit 0, and the output must be what the remote side produced.

mod support;

use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn aws_ssm_start_session_shell() {
    let w = world(fast_config()).await;
    let cmd = w.aws(&["ssm", "start-session", "--target", "i-0123456789abcdef0"]);
    let out = run_piped(cmd, b"echo via-cli-$((6*7))\nexit\n", LIMIT).await;
    assert!(
        out.status.success(),
        "stdout:{}\nstderr:{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("via-cli-42"), "{}", out.stdout);
    assert!(
        out.stdout.contains("Starting session with SessionId: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Exiting session with sessionId: "),
        "{}",
        out.stdout
    );
    assert!(
        !out.stderr.contains("WARNING"),
        "the CLI warned: {}",
        out.stderr
    );
    // The CLI passed the response through the environment (our version is above 1.2.497.0) and
    // the call was signed with the profile's keys.
    let starts: Vec<_> = w
        .api
        .requests()
        .into_iter()
        .filter(|r| r.operation == "StartSession")
        .collect();
    assert_eq!(starts.len(), 1);
    assert_eq!(
        starts[0]
            .signed_by
            .as_ref()
            .map(|s| s.access_key_id.as_str()),
        Some(TEST_KEY_ID)
    );
}

#[tokio::test]
async fn aws_ssm_noninteractive_command_status_becomes_255() {
    let w = world(fast_config()).await;
    let cmd = w.aws(&[
        "ssm",
        "start-session",
        "--target",
        "i-0123456789abcdef0",
        "--document-name",
        "AWS-StartNonInteractiveCommand",
        "--parameters",
        r#"{"command": ["sh -c 'echo from-remote; exit 3'"]}"#,
    ]);
    let out = run_piped(cmd, b"", LIMIT).await;
    assert!(out.stdout.contains("from-remote"), "{}", out.stdout);
    // The plugin exits 3; the AWS CLI reports any non-zero plugin status as 255.
    assert_eq!(out.status.code(), Some(255), "stderr:{}", out.stderr);
    assert!(
        out.stderr.contains("returned non-zero exit status 3"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn aws_ecs_execute_command() {
    let w = world(fast_config()).await;
    let cmd = w.aws(&[
        "ecs",
        "execute-command",
        "--cluster",
        "demo",
        "--task",
        "0123456789abcdef",
        "--container",
        "web",
        "--command",
        "sh",
        "--interactive",
    ]);
    let out = run_piped(cmd, b"echo ecs-$((40+2))\nexit\n", LIMIT).await;
    assert!(
        out.status.success(),
        "stdout:{}\nstderr:{}",
        out.stdout,
        out.stderr
    );
    // ECS calls the plugin bare first; our banner is the reference's.
    assert!(
        out.stdout.starts_with(ssm_plugin::cli::INSTALLED_BANNER),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("ecs-42"), "{}", out.stdout);
    assert!(!out.stderr.contains("WARNING"), "{}", out.stderr);
}
