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
        r#"{"command": ["sh -c 'echo from-remote; exit 3'"], "separateOutputStream": ["true"]}"#,
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

/// `aws ssm start-session --document-name AWS-StartPortForwardingSession`: the listener line the
/// scripts wait for, bytes echoed through the tunnel, and Ctrl-C (SIGINT to the foreground
/// process group, which the AWS CLI ignores and our plugin handles) ends it with status 0.
#[tokio::test]
async fn aws_ssm_port_forwarding_and_ctrl_c() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let w = world(fast_config()).await;
    // A local echo server plays the instance's service.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dport = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut wr) = s.split();
                let _ = tokio::io::copy(&mut r, &mut wr).await;
            });
        }
    });
    let params = format!(r#"{{"portNumber": ["{dport}"], "localPortNumber": ["0"]}}"#);
    let mut cmd = w.aws(&[
        "ssm",
        "start-session",
        "--target",
        "i-0123456789abcdef0",
        "--document-name",
        "AWS-StartPortForwardingSession",
        "--parameters",
        &params,
    ]);
    cmd.process_group(0);
    let mut child = cmd.spawn().unwrap();
    let pgid = child.id().unwrap() as i32;
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    // `Port N opened for sessionId X.` then `Waiting for connections...`.
    let mut seen = String::new();
    let port: u16 = tokio::time::timeout(LIMIT, async {
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).await.unwrap() == 0 {
                panic!("the plugin ended early: {seen}");
            }
            seen.push_str(&line);
            if seen.contains("Waiting for connections...") {
                let p = seen
                    .split("Port ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap();
                break p.parse().unwrap();
            }
        }
    })
    .await
    .expect("the listener lines in time");
    assert!(seen.contains(" opened for sessionId "), "{seen}");

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
    let (mut r, mut wr) = s.split();
    let mut back = vec![0u8; data.len()];
    let (wres, rres) = tokio::time::timeout(LIMIT, async {
        tokio::join!(wr.write_all(&data), r.read_exact(&mut back))
    })
    .await
    .expect("echo in time");
    wres.unwrap();
    rres.unwrap();
    assert!(back == data, "the tunnel changed the bytes");
    drop(s);

    // Ctrl-C as a terminal delivers it: to the whole foreground process group.
    unsafe { libc::kill(-pgid, libc::SIGINT) };
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("exits")
        .unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest).await;
    assert!(status.success(), "status {status:?}, output {rest}");
    assert!(rest.contains("Exiting session with sessionId: "), "{rest}");
}
