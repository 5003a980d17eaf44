//! The fake AWS API against the real AWS CLI v1 (from PyPI, via scripts/ensure-awscli.sh), with a
//! recording stand-in for `session-manager-plugin` first on PATH. Proves that what the CLI sends
//! parses, that botocore's signatures verify, and that the CLI hands our responses to the plugin
//! exactly as it would hand AWS's.

mod api_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agent_sim::api::{ecs_runtime_id, serve, ApiHandle, ApiOptions, Fault};
use api_support::FakeBackend;

const KEY_ID: &str = "AKIDCLITEST";
const SECRET: &str = "cli/test+secret/0123456789abcdefEXAMPLE";
const TARGET: &str = "i-0123456789abcdef0";
/// Bound on one CLI run (Python start-up is slow on a shared machine; retries add seconds).
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// Records each call (argv NUL-separated, env NUL-separated) into `$CALLS/<n>/`; answers
/// `--version` like a current plugin; otherwise exits 0 at once.
const FAKE_PLUGIN: &str = r#"#!/bin/sh
n=$(ls -1 "$FAKE_PLUGIN_CALLS" | wc -l)
d="$FAKE_PLUGIN_CALLS/$(printf '%03d' "$n")"
mkdir "$d" || exit 97
: > "$d/argv"
for a in "$@"; do printf '%s\000' "$a" >> "$d/argv"; done
env -0 > "$d/env"
if [ "$1" = "--version" ]; then echo "${FAKE_PLUGIN_VERSION:-1.2.764.0}"; fi
exit 0
"#;

/// The `aws` executable, installed once per test binary; `None` (with a loud message) only when
/// python3 is missing.
fn aws_cli() -> Option<PathBuf> {
    static AWS: OnceLock<Option<PathBuf>> = OnceLock::new();
    AWS.get_or_init(|| {
        if std::process::Command::new("python3")
            .arg("--version")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!(
                "\n\n*** SKIPPING AWS CLI TESTS: python3 is not installed, so the real AWS CLI \
                 cannot be set up. Install python3 (with venv) to run them. ***\n\n"
            );
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ensure-awscli.sh");
        let out = std::process::Command::new(&script)
            .output()
            .expect("running scripts/ensure-awscli.sh");
        assert!(
            out.status.success(),
            "scripts/ensure-awscli.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(path.is_file(), "ensure-awscli printed {path:?}, not a file");
        Some(path)
    })
    .clone()
}

/// A throwaway HOME with credentials, the fake plugin, and a record of its calls.
struct Cli {
    aws: PathBuf,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct PluginCall {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Each item is NUL-terminated; empty items (an empty profile argument) are kept.
fn split_nul(bytes: &[u8]) -> Vec<String> {
    match bytes.strip_suffix(&[0]) {
        None => Vec::new(),
        Some(items) => items
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    }
}

impl Cli {
    fn new(secret: &str) -> Option<Self> {
        let aws = aws_cli()?;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("home/.aws")).unwrap();
        std::fs::create_dir_all(p.join("bin")).unwrap();
        std::fs::create_dir_all(p.join("calls")).unwrap();
        std::fs::write(
            p.join("home/.aws/credentials"),
            format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {secret}\n"),
        )
        .unwrap();
        std::fs::write(
            p.join("home/.aws/config"),
            "[default]\nregion = eu-west-3\n",
        )
        .unwrap();
        let plugin = p.join("bin/session-manager-plugin");
        std::fs::write(&plugin, FAKE_PLUGIN).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(Self { aws, dir })
    }

    async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let p = self.dir.path();
        let mut cmd = tokio::process::Command::new(&self.aws);
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", p.join("bin").display()),
            )
            .env("HOME", p.join("home"))
            .env("AWS_CONFIG_FILE", p.join("home/.aws/config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                p.join("home/.aws/credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "")
            .env("FAKE_PLUGIN_CALLS", p.join("calls"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("aws {args:?} did not finish within {CLI_TIMEOUT:?}"))
            .expect("aws runs");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn plugin_calls(&self) -> Vec<PluginCall> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("calls"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        dirs.iter()
            .map(|d| {
                let argv = split_nul(&std::fs::read(d.join("argv")).unwrap());
                let env = split_nul(&std::fs::read(d.join("env")).unwrap())
                    .into_iter()
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    })
                    .collect();
                PluginCall { argv, env }
            })
            .collect()
    }
}

async fn api(backend: &Arc<FakeBackend>) -> ApiHandle {
    serve(
        backend.clone(),
        ApiOptions::with_credentials(KEY_ID, SECRET),
    )
    .await
    .expect("fake API starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_start_session_hands_our_response_to_the_plugin() {
    let Some(cli) = Cli::new(SECRET) else { return };
    let backend = Arc::new(FakeBackend::default());
    let api = api(&backend).await;
    let url = api.url();

    let run = cli
        .run(
            &[
                "ssm",
                "start-session",
                "--target",
                TARGET,
                "--endpoint-url",
                &url,
                "--region",
                "us-east-1",
            ],
            &[],
        )
        .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(
        !run.stderr.contains("WARNING"),
        "plugin version is current: {}",
        run.stderr
    );

    // The API call: parsed, signed by the profile's key for ssm/us-east-1, verified.
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.target, "AmazonSSM.StartSession");
    assert_eq!(r.body, serde_json::json!({"Target": TARGET}));
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/x-amz-json-1.1")
    );
    assert!(r
        .user_agent
        .as_deref()
        .unwrap_or("")
        .starts_with("aws-cli/1."));
    let by = r.signed_by.as_ref().unwrap();
    assert!(by.verified);
    assert_eq!(
        (
            by.access_key_id.as_str(),
            by.service.as_str(),
            by.region.as_str()
        ),
        (KEY_ID, "ssm", "us-east-1")
    );
    assert_eq!(by.session_token, None);

    let calls = backend.calls();
    assert_eq!(calls.started.len(), 1);
    assert_eq!(calls.started[0].target, TARGET);
    assert_eq!(calls.started[0].document_name, None);
    let started = backend
        .issued(&format!("test-user-{:017x}", 1))
        .expect("issued");

    // The plugin: `--version` first, then the session with the response in the env var.
    let plugin = cli.plugin_calls();
    assert_eq!(plugin.len(), 2, "{plugin:?}");
    assert_eq!(plugin[0].argv, vec!["--version"]);
    assert!(!plugin[0].env.contains_key("AWS_SSM_START_SESSION_RESPONSE"));
    assert_eq!(
        plugin[1].argv,
        vec![
            "AWS_SSM_START_SESSION_RESPONSE".to_owned(),
            "us-east-1".to_owned(),
            "StartSession".to_owned(),
            String::new(),
            format!(r#"{{"Target": "{TARGET}"}}"#),
            url.clone(),
        ]
    );
    assert_eq!(
        plugin[1].env["AWS_SSM_START_SESSION_RESPONSE"],
        format!(
            r#"{{"SessionId": "{}", "TokenValue": "{}", "StreamUrl": "{}"}}"#,
            started.session_id, started.token_value, started.stream_url
        )
    );
    assert!(plugin[1].env.contains_key("AWS_DATA_PATH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_port_forwarding_parameters_reach_the_backend() {
    let Some(cli) = Cli::new(SECRET) else { return };
    let backend = Arc::new(FakeBackend::default());
    let api = api(&backend).await;
    let url = api.url();
    let run = cli
        .run(
            &[
                "ssm",
                "start-session",
                "--target",
                TARGET,
                "--document-name",
                "AWS-StartPortForwardingSession",
                "--parameters",
                "portNumber=80,localPortNumber=8080",
                "--reason",
                "test",
                "--endpoint-url",
                &url,
                "--region",
                "us-east-1",
            ],
            // An old plugin version: the CLI passes the response in argv instead of the env.
            &[("FAKE_PLUGIN_VERSION", "1.2.497.0")],
        )
        .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let spec = &backend.calls().started[0];
    assert_eq!(
        spec.document_name.as_deref(),
        Some("AWS-StartPortForwardingSession")
    );
    assert_eq!(spec.reason.as_deref(), Some("test"));
    assert_eq!(
        spec.parameters,
        BTreeMap::from([
            ("localPortNumber".to_owned(), vec!["8080".to_owned()]),
            ("portNumber".to_owned(), vec!["80".to_owned()]),
        ])
    );
    let started = backend.issued(&format!("test-user-{:017x}", 1)).unwrap();
    let plugin = cli.plugin_calls();
    assert_eq!(plugin.len(), 2, "{plugin:?}");
    assert_eq!(
        plugin[1].argv[0],
        format!(
            r#"{{"SessionId": "{}", "TokenValue": "{}", "StreamUrl": "{}"}}"#,
            started.session_id, started.token_value, started.stream_url
        )
    );
    assert_eq!(
        plugin[1].argv[4],
        r#"{"Target": "i-0123456789abcdef0", "DocumentName": "AWS-StartPortForwardingSession", "Reason": "test", "Parameters": {"portNumber": ["80"], "localPortNumber": ["8080"]}}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_resume_and_terminate_with_rotated_credentials() {
    let Some(cli) = Cli::new(SECRET) else { return };
    let backend = Arc::new(FakeBackend::default());
    let api = api(&backend).await;
    api.add_credentials("ASIAROTATEDCLI", "rotated/secret");
    let url = api.url();
    let common = [
        "--endpoint-url",
        url.as_str(),
        "--region",
        "us-east-1",
        "--output",
        "json",
    ];

    let run = cli
        .run(
            &[&["ssm", "start-session", "--target", TARGET][..], &common].concat(),
            &[],
        )
        .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let sid = backend.calls().started.len();
    let sid = format!("test-user-{sid:017x}");
    let first = backend.issued(&sid).unwrap();

    // Temporary credentials from the environment win over the credentials file.
    let rotated = [
        ("AWS_ACCESS_KEY_ID", "ASIAROTATEDCLI"),
        ("AWS_SECRET_ACCESS_KEY", "rotated/secret"),
        ("AWS_SESSION_TOKEN", "cli-token-2"),
    ];
    let run = cli
        .run(
            &[
                &["ssm", "resume-session", "--session-id", &sid][..],
                &common,
            ]
            .concat(),
            &rotated,
        )
        .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let resumed = backend.issued(&sid).unwrap();
    assert_ne!(resumed.token_value, first.token_value);
    let out: serde_json::Value = serde_json::from_str(&run.stdout).expect("CLI prints JSON");
    assert_eq!(
        out,
        serde_json::json!({
            "SessionId": sid, "TokenValue": resumed.token_value, "StreamUrl": resumed.stream_url
        })
    );

    let run = cli
        .run(
            &[
                &["ssm", "terminate-session", "--session-id", &sid][..],
                &common,
            ]
            .concat(),
            &rotated,
        )
        .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let out: serde_json::Value = serde_json::from_str(&run.stdout).expect("CLI prints JSON");
    assert_eq!(out, serde_json::json!({"SessionId": sid}));
    assert_eq!(backend.calls().terminated, vec![sid.clone()]);

    let signer = |op: &str| api.requests_for(op)[0].signed_by.clone().unwrap();
    assert_eq!(signer("StartSession").access_key_id, KEY_ID);
    assert_eq!(signer("StartSession").session_token, None);
    for op in ["ResumeSession", "TerminateSession"] {
        let by = signer(op);
        assert!(by.verified, "{op}");
        assert_eq!(by.access_key_id, "ASIAROTATEDCLI", "{op}");
        assert_eq!(by.session_token.as_deref(), Some("cli-token-2"), "{op}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ecs_execute_command() {
    let Some(cli) = Cli::new(SECRET) else { return };
    let backend = Arc::new(FakeBackend::default());
    let api = api(&backend).await;
    let url = api.url();
    let run = cli
        .run(
            &[
                "ecs",
                "execute-command",
                "--cluster",
                "c",
                "--task",
                "t",
                "--container",
                "web",
                "--command",
                "sh",
                "--interactive",
                "--endpoint-url",
                &url,
                "--region",
                "us-east-1",
            ],
            &[],
        )
        .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);

    let ops: Vec<String> = api.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        ops,
        vec![
            "AmazonEC2ContainerServiceV20141113.ExecuteCommand",
            "AmazonEC2ContainerServiceV20141113.DescribeTasks"
        ]
    );
    for r in api.requests() {
        let by = r.signed_by.unwrap();
        assert!(by.verified);
        assert_eq!(by.service, "ecs");
    }
    let runtime = ecs_runtime_id("c", "t", "web");
    let target = format!("ecs:c_t_{runtime}");
    let spec = &backend.calls().started[0];
    assert_eq!(spec.target, target);
    assert_eq!(
        spec.document_name.as_deref(),
        Some("AWS-StartInteractiveCommand")
    );
    assert_eq!(spec.parameters["command"], vec!["sh".to_owned()]);
    let started = backend
        .issued(&format!("ecs-execute-command-{:017x}", 1))
        .unwrap();

    // Bare probe first, then camelCase JSON in argv, the ECS endpoint last.
    let plugin = cli.plugin_calls();
    assert_eq!(plugin.len(), 2, "{plugin:?}");
    assert!(plugin[0].argv.is_empty(), "{:?}", plugin[0].argv);
    assert_eq!(
        plugin[1].argv,
        vec![
            format!(
                r#"{{"sessionId": "{}", "streamUrl": "{}", "tokenValue": "{}"}}"#,
                started.session_id, started.stream_url, started.token_value
            ),
            "us-east-1".to_owned(),
            "StartSession".to_owned(),
            String::new(),
            format!(r#"{{"Target": "{target}"}}"#),
            url.clone(),
        ]
    );
    assert!(!plugin[1].env.contains_key("AWS_SSM_START_SESSION_RESPONSE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_shows_api_errors_and_retries_throttling() {
    let Some(cli) = Cli::new(SECRET) else { return };
    let backend = Arc::new(FakeBackend::default());
    let api = api(&backend).await;
    let url = api.url();
    let start = [
        "ssm",
        "start-session",
        "--target",
        TARGET,
        "--endpoint-url",
        url.as_str(),
        "--region",
        "us-east-1",
    ];

    api.set_fault("StartSession", Fault::target_not_connected(TARGET));
    let run = cli.run(&start, &[]).await;
    assert_eq!(run.code, Some(255));
    assert!(
        run.stderr.contains(
            "An error occurred (TargetNotConnected) when calling the StartSession operation: \
             i-0123456789abcdef0 is not connected."
        ),
        "stderr: {}",
        run.stderr
    );
    assert!(
        cli.plugin_calls().is_empty(),
        "no plugin call after an API error"
    );
    assert!(backend.calls().started.is_empty());

    // One throttled answer: botocore retries and the session starts.
    api.set_fault("StartSession", Fault::throttling().times(1));
    let run = cli.run(&start, &[]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let starts = api.requests_for("StartSession");
    assert_eq!(starts.len(), 3);
    assert_eq!(starts[1].error_code.as_deref(), Some("ThrottlingException"));
    assert_eq!(starts[2].status, 200);
    assert_eq!(backend.calls().started.len(), 1);

    // ECS without --container picks the default container; ECS errors reach the CLI too.
    let run = cli
        .run(
            &[
                "ecs",
                "execute-command",
                "--cluster",
                "c",
                "--task",
                "t",
                "--command",
                "sh",
                "--interactive",
                "--endpoint-url",
                &url,
                "--region",
                "us-east-1",
            ],
            &[],
        )
        .await;
    assert_eq!(
        run.code,
        Some(0),
        "default container: stderr {}",
        run.stderr
    );
    api.set_fault(
        "ExecuteCommand",
        Fault::error(
            400,
            "TargetNotConnectedException",
            "The execute command failed due to an internal error. Try again later.",
        ),
    );
    let run = cli
        .run(
            &[
                "ecs",
                "execute-command",
                "--cluster",
                "c",
                "--task",
                "t",
                "--command",
                "sh",
                "--interactive",
                "--endpoint-url",
                &url,
                "--region",
                "us-east-1",
            ],
            &[],
        )
        .await;
    assert_eq!(run.code, Some(255));
    assert!(
        run.stderr
            .contains("(TargetNotConnectedException) when calling the ExecuteCommand operation"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_with_a_wrong_secret_is_refused() {
    let Some(cli) = Cli::new("not-the-secret") else {
        return;
    };
    let backend = Arc::new(FakeBackend::default());
    let api = api(&backend).await;
    let url = api.url();
    let run = cli
        .run(
            &[
                "ssm",
                "start-session",
                "--target",
                TARGET,
                "--endpoint-url",
                &url,
                "--region",
                "us-east-1",
            ],
            &[],
        )
        .await;
    assert_eq!(run.code, Some(255));
    assert!(
        run.stderr
            .contains("(InvalidSignatureException) when calling the StartSession operation"),
        "stderr: {}",
        run.stderr
    );
    let r = &api.requests()[0];
    assert_eq!(r.status, 403);
    assert!(!r.signed_by.as_ref().unwrap().verified);
    assert!(backend.calls().started.is_empty());
    assert!(cli.plugin_calls().is_empty());
}
