//! Shared helpers for tests that run the real `session-manager-plugin` binary against the agent
//! simulator started in-process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use agent_sim::{SessionBackend, SessionSpec, SimConfig, SimHandle, Simulator, Started};

/// The binary under test.
pub fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_session-manager-plugin"))
}

/// Simulator settings that keep tests fast (the real agent starts its pty pump after 1 s).
pub fn fast_config() -> SimConfig {
    SimConfig {
        pty_start_delay: Duration::from_millis(100),
        ..SimConfig::default()
    }
}

/// Starts a simulator.
pub async fn sim(config: SimConfig) -> SimHandle {
    Simulator::start(config).await.expect("simulator starts")
}

/// Creates a session with the given document and parameters.
pub fn start(sim: &SimHandle, doc: Option<&str>, params: &[(&str, &str)]) -> Started {
    sim.backend()
        .start_session(SessionSpec {
            target: "i-0123456789abcdef0".into(),
            document_name: doc.map(str::to_owned),
            parameters: agent_sim::parameters(params),
            reason: None,
        })
        .expect("session starts")
}

/// The response JSON the AWS CLI passes.
pub fn response_json(s: &Started) -> String {
    serde_json::json!({
        "SessionId": s.session_id,
        "TokenValue": s.token_value,
        "StreamUrl": s.stream_url,
    })
    .to_string()
}

/// A plugin command for `started`, with a clean, isolated environment.
pub fn plugin_command(started: &Started, home: &std::path::Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(plugin_bin());
    c.arg(response_json(started))
        .arg("us-east-1")
        .arg("StartSession")
        .arg("")
        .arg(r#"{"Target": "i-0123456789abcdef0"}"#)
        .arg("")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Output of a finished plugin.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the plugin with `stdin` piped in, bounded by `limit`.
pub async fn run_piped(
    mut cmd: tokio::process::Command,
    stdin: &[u8],
    limit: Duration,
) -> Finished {
    use tokio::io::AsyncWriteExt;
    let mut child = cmd.spawn().expect("plugin starts");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    tokio::spawn(async move {
        let _ = input.write_all(&data).await;
        // Dropping closes stdin: EOF.
    });
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("the plugin must finish in time")
        .expect("wait for the plugin");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The simulator plus the fake AWS API in front of it, sharing one KMS store.
pub struct World {
    pub sim: SimHandle,
    pub api: agent_sim::api::ApiHandle,
    pub home: tempfile::TempDir,
}

/// Test credentials the fake API accepts (and checks SigV4 signatures with).
pub const TEST_KEY_ID: &str = "AKIDTESTEXAMPLE";
pub const TEST_SECRET: &str = "test-secret-key";

/// Starts the simulator and the fake API, with a throwaway HOME holding test credentials.
pub async fn world(config: SimConfig) -> World {
    let kms = std::sync::Arc::new(agent_sim::api::KmsStore::new());
    let sim = Simulator::start_with_resolver(config, Some(kms.clone()))
        .await
        .expect("simulator starts");
    let opts = agent_sim::api::ApiOptions {
        kms: Some(kms),
        ..agent_sim::api::ApiOptions::with_credentials(TEST_KEY_ID, TEST_SECRET)
    };
    let api = agent_sim::api::serve(std::sync::Arc::new(sim.backend()), opts)
        .await
        .expect("fake API starts");
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = {TEST_KEY_ID}\naws_secret_access_key = {TEST_SECRET}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        "[default]\nregion = us-east-1\n",
    )
    .unwrap();
    World { sim, api, home }
}

/// Path of the real AWS CLI (installed into scripts/.venv by scripts/ensure-awscli.sh).
pub fn aws_cli() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-awscli.sh");
    let out = std::process::Command::new(&script)
        .output()
        .expect("scripts/ensure-awscli.sh runs");
    assert!(
        out.status.success(),
        "installing the AWS CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl World {
    /// An `aws` command with an isolated environment in which our plugin is first on PATH.
    pub fn aws(&self, args: &[&str]) -> tokio::process::Command {
        let plugin_dir = plugin_bin().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            plugin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = tokio::process::Command::new(aws_cli());
        c.args(args)
            .args(["--endpoint-url", &self.api.url(), "--region", "us-east-1"])
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL_KMS", self.api.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }
}
