//! Shared helpers for the AWS-integration tests: the simulator and the fake AWS API sharing one
//! KMS store, a throwaway HOME with `~/.aws/config` and `~/.aws/credentials`, and a plugin
//! process whose output can be watched while it runs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_sim::api::{serve, ApiHandle, ApiOptions, KmsStore, RequestRecord};
use agent_sim::{SessionBackend, SessionSpec, SimConfig, SimHandle, Simulator, Started};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const KEY: &str = "AKIDPLUGINTEST00001";
pub const SECRET: &str = "plugin/test/secret/0001EXAMPLEKEY";
pub const KEY2: &str = "AKIDPLUGINTEST00002";
pub const SECRET2: &str = "plugin/test/secret/0002EXAMPLEKEY";
pub const TARGET: &str = "i-0123456789abcdef0";
pub const REGION: &str = "us-east-1";

/// Simulator settings that keep tests fast.
pub fn fast_config() -> SimConfig {
    SimConfig {
        pty_start_delay: Duration::from_millis(100),
        ..SimConfig::default()
    }
}

/// The simulator and the fake API, wired together.
pub struct World {
    pub sim: SimHandle,
    pub api: ApiHandle,
}

impl World {
    /// Starts both; the API accepts (and verifies) KEY/SECRET and KEY2/SECRET2.
    pub async fn start(cfg: SimConfig) -> Self {
        let kms = Arc::new(KmsStore::new());
        let sim = Simulator::start_with_resolver(cfg, Some(kms.clone()))
            .await
            .expect("simulator starts");
        let mut opts = ApiOptions::with_credentials(KEY, SECRET);
        opts.credentials.insert(KEY2.into(), SECRET2.into());
        opts.kms = Some(kms);
        let api = serve(Arc::new(sim.backend()), opts)
            .await
            .expect("fake API starts");
        Self { sim, api }
    }

    /// A session of `doc` (shell when `None`) on `target`.
    pub fn start_session(
        &self,
        target: &str,
        doc: Option<&str>,
        params: &[(&str, &str)],
    ) -> Started {
        self.sim
            .backend()
            .start_session(SessionSpec {
                target: target.into(),
                document_name: doc.map(str::to_owned),
                parameters: agent_sim::parameters(params),
                reason: None,
            })
            .expect("session starts")
    }

    /// API calls of one operation.
    pub fn calls(&self, op: &str) -> Vec<RequestRecord> {
        self.api.requests_for(op)
    }
}

/// [`fast_config`] with SigV4 required and checked on every websocket upgrade, for both test
/// key pairs.
pub fn signed_config() -> SimConfig {
    let mut cfg = fast_config();
    cfg.ws_credentials = ws_credentials();
    cfg.require_signed_upgrade = true;
    cfg
}

/// Signature checking on the simulated relay for both test key pairs.
pub fn ws_credentials() -> std::collections::BTreeMap<String, String> {
    [(KEY, SECRET), (KEY2, SECRET2)]
        .iter()
        .map(|(k, s)| ((*k).to_owned(), (*s).to_owned()))
        .collect()
}

/// A throwaway HOME with `~/.aws/config` and `~/.aws/credentials`.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    /// With `[profile]` (`default` or a name) holding `key`/`secret`.
    pub fn with_keys(profile: &str, key: &str, secret: &str) -> Self {
        let h = Self::empty();
        h.write_keys(profile, key, secret);
        h
    }

    /// No AWS files at all.
    pub fn empty() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join(".aws")).expect("~/.aws");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// (Re)writes both files, as `aws configure` or an SSO/credential refresh would.
    pub fn write_keys(&self, profile: &str, key: &str, secret: &str) {
        let aws = self.dir.path().join(".aws");
        let section = if profile == "default" {
            "default".to_owned()
        } else {
            format!("profile {profile}")
        };
        std::fs::write(
            aws.join("config"),
            format!("[{section}]\nregion = {REGION}\n"),
        )
        .expect("write config");
        // Write a new file and rename it over the old one, as tools do.
        let tmp = aws.join("credentials.tmp");
        std::fs::write(
            &tmp,
            format!("[{profile}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"),
        )
        .expect("write credentials");
        std::fs::rename(&tmp, aws.join("credentials")).expect("rename credentials");
    }
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

/// The plugin as `aws ssm start-session --endpoint-url <fake API>` runs it, in an isolated
/// environment: the HOME's files are the only credentials, KMS goes to the fake API.
pub fn plugin(
    world: &World,
    started: &Started,
    home: &Home,
    profile: &str,
    target: &str,
    endpoint: &str,
) -> tokio::process::Command {
    plugin_request(
        world,
        started,
        home,
        profile,
        &serde_json::json!({ "Target": target }),
        endpoint,
    )
}

/// [`plugin`] with the whole StartSession request as argv[5] (Target, DocumentName,
/// Parameters), as the AWS CLI passes it.
pub fn plugin_request(
    world: &World,
    started: &Started,
    home: &Home,
    profile: &str,
    request: &serde_json::Value,
    endpoint: &str,
) -> tokio::process::Command {
    let mut c = isolated(world, home, &format!("plugin-{}", started.session_id));
    c.arg(response_json(started))
        .arg(REGION)
        .arg("StartSession")
        .arg(profile)
        .arg(request.to_string())
        .arg(endpoint);
    c
}

/// The plugin binary in an isolated environment: the HOME's files are the only credentials,
/// KMS goes to the fake API, stdio is piped, and it keeps a debug log named `log_name`, so a
/// failure shows what the plugin was doing (see `Running::finish`); SSM_TEST_PLUGIN_LOG_DIR
/// chooses where the logs are kept.
pub fn isolated(world: &World, home: &Home, log_name: &str) -> tokio::process::Command {
    let mut c =
        tokio::process::Command::new(PathBuf::from(env!("CARGO_BIN_EXE_session-manager-plugin")));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_KMS", world.api.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let dir = std::env::var_os("SSM_TEST_PLUGIN_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ssm-plugin-test-logs"));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{log_name}.log"));
    let _ = std::fs::remove_file(&file);
    c.env("SESSION_MANAGER_PLUGIN_LOG", "debug")
        .env("SESSION_MANAGER_PLUGIN_LOG_FILE", file);
    c
}

/// The plugin's standalone command `args[0]` in an isolated environment (see [`isolated`]),
/// with the fake API as its SSM endpoint, the test region, and `home`'s XDG config directory.
/// The common options go right after the command: anything after `--` belongs to `exec`.
pub fn standalone(world: &World, home: &Home, args: &[&str]) -> tokio::process::Command {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let log = format!("standalone-{}-{}-{n}", args[0], std::process::id());
    let mut c = isolated(world, home, &log);
    c.arg(args[0])
        .args(["--region", REGION, "--endpoint-url", &world.api.url()])
        .args(&args[1..])
        .env("XDG_CONFIG_HOME", home.path().join("xdg"));
    c
}

/// Simulator settings for tests about sessions, not pacing: fast, service limits off.
pub fn unpaced_config() -> SimConfig {
    let mut cfg = fast_config();
    cfg.limits.port_pacing = false;
    cfg.limits.frame_rate_limit = None;
    cfg
}

/// Output of a finished plugin.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A running plugin whose stdout/stderr are collected as they come.
pub struct Running {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    pub out: Arc<Mutex<Vec<u8>>>,
    pub err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    log: Option<PathBuf>,
}

fn collect<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    buf: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    })
}

impl Running {
    pub fn spawn(mut cmd: tokio::process::Command) -> Self {
        let log = cmd
            .as_std()
            .get_envs()
            .find(|(k, _)| *k == "SESSION_MANAGER_PLUGIN_LOG_FILE")
            .and_then(|(_, v)| v.map(PathBuf::from));
        let mut child = cmd.spawn().expect("plugin starts");
        let stdin = child.stdin.take();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), out.clone()),
            collect(child.stderr.take().unwrap(), err.clone()),
        ];
        Self {
            child,
            stdin,
            out,
            err,
            readers,
            log,
        }
    }

    /// The last lines of the plugin's debug log, if it keeps one.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(80);
        format!(
            "--- plugin log {} (tail)\n{}",
            path.display(),
            lines[from..].join("\n")
        )
    }

    /// The plugin's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends a signal to the plugin.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// The local port from `Port <p> opened for sessionId <id>.` (port sessions).
    pub async fn port(&self, session_id: &str, limit: Duration) -> u16 {
        let head = "Port ";
        let tail = format!(" opened for sessionId {session_id}.");
        self.wait_stdout(&tail, limit).await;
        let out = self.stdout();
        let line = out
            .lines()
            .find(|l| l.starts_with(head) && l.ends_with(&tail))
            .expect("the port line");
        line[head.len()..line.len() - tail.len()]
            .parse()
            .expect("a port number")
    }

    pub async fn write(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(data).await.expect("write to the plugin");
        stdin.flush().await.expect("flush");
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits until stdout contains `needle`; panics with both streams after `limit`.
    pub async fn wait_stdout(&self, needle: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.stdout().contains(needle) {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "stdout never showed {needle:?} within {limit:?}\n--- stdout\n{}\n--- stderr\n{}\n{}",
                    self.stdout(),
                    self.stderr(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes stdin (EOF) and waits, bounded, for the exit.
    pub async fn finish(self, limit: Duration) -> Finished {
        self.finish_with(limit, String::new).await
    }

    /// As `finish`; `context` adds to the failure message (the simulator's view, say).
    pub async fn finish_with(
        mut self,
        limit: Duration,
        context: impl FnOnce() -> String,
    ) -> Finished {
        drop(self.stdin.take());
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the plugin did not exit within {limit:?}\n--- stdout\n{}\n--- stderr\n{}\n{}\n{}",
                    self.stdout(),
                    self.stderr(),
                    self.log_tail(),
                    context()
                )
            })
            .expect("wait for the plugin");
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

/// Waits until `cond` holds, bounded.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
