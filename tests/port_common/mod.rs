//! Shared by the port tests: the simulator, the real plugin binary started as the AWS CLI starts
//! it, destination servers on 127.0.0.x, data generators and hashes. Every wait is bounded.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_sim::{SessionBackend, SessionSpec, SimConfig, SimHandle, Simulator, Started};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub const TARGET: &str = "i-0123456789abcdef0";
pub const MIB: usize = 1024 * 1024;

/// MiB per direction of the transfers with the service limits off: `PORT_TEST_MIB`, else 64.
pub fn big_mib() -> usize {
    env_mib("PORT_TEST_MIB", 64)
}

/// MiB per direction of the transfers with the service limits on (about 0.5 MB/s down and
/// 0.9 MB/s up at best): `PORT_TEST_LIMITED_MIB`, else 8, about 17 s of paced echo: many
/// times the relay's 2 s frame-rate window, which is what keeping the session alive is about
/// (16 MiB took 35 s of the test command's 10 minutes).
pub fn limited_mib() -> usize {
    env_mib("PORT_TEST_LIMITED_MIB", 8)
}

fn env_mib(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Simulator settings: `limits` true keeps the service's frame-rate limit and the agent's
/// 1 KiB + 1 ms read pacing; false switches both off.
pub fn sim_config(limits: bool, agent_version: &str) -> SimConfig {
    let mut c = SimConfig {
        agent_version: agent_version.into(),
        pty_start_delay: Duration::from_millis(100),
        ..SimConfig::default()
    };
    if !limits {
        c.limits.port_pacing = false;
        c.limits.frame_rate_limit = None;
    }
    c
}

pub async fn sim(config: SimConfig) -> SimHandle {
    Simulator::start(config).await.expect("simulator starts")
}

pub fn start(sim: &SimHandle, doc: &str, params: &[(&str, &str)]) -> (Started, String) {
    let spec = SessionSpec {
        target: TARGET.into(),
        document_name: Some(doc.into()),
        parameters: agent_sim::parameters(params),
        reason: None,
    };
    let started = sim.backend().start_session(spec).expect("session starts");
    let mut p = serde_json::Map::new();
    for (k, v) in params {
        p.insert((*k).into(), serde_json::json!([v]));
    }
    let request = serde_json::json!({"Target": TARGET, "DocumentName": doc, "Parameters": p});
    (started, request.to_string())
}

/// What the plugin printed on stdout so far, shared with the reading task.
#[derive(Clone, Default)]
pub struct Output(
    Arc<Mutex<String>>,
    Arc<tokio::sync::Notify>,
    Arc<AtomicBool>,
);

impl Output {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits (bounded) until the pipe reached its end, so `text` holds everything written.
    async fn until_eof(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while !self.2.load(Ordering::SeqCst) {
                let wake = self.1.notified();
                if self.2.load(Ordering::SeqCst) {
                    break;
                }
                wake.await;
            }
        })
        .await;
    }
}

/// The real binary, started as the AWS CLI starts it.
pub struct Plugin {
    pub child: Child,
    pub stdout: Output,
    pub stderr: Output,
    pub log: PathBuf,
    _home: tempfile::TempDir,
}

pub struct Launch<'a> {
    pub started: &'a Started,
    pub request: &'a str,
    pub env: Vec<(&'a str, String)>,
    /// Keep stdin/stdout for the test (stdio mode); otherwise stdout is collected.
    pub stdio: bool,
}

impl Plugin {
    pub fn spawn(l: Launch<'_>) -> Plugin {
        let home = tempfile::tempdir().unwrap();
        let response = serde_json::json!({
            "SessionId": l.started.session_id,
            "TokenValue": l.started.token_value,
            "StreamUrl": l.started.stream_url,
        })
        .to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-manager-plugin"));
        cmd.args([&response, "us-east-1", "StartSession", "", l.request, ""])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", home.path())
            .env_remove("SESSION_MANAGER_PLUGIN_BIND_ADDRESS")
            .env_remove("SSM_PLUGIN_LOCAL_HOST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // An info log per plugin (debug with SSM_TEST_PLUGIN_LOG_DIR, which also keeps it), so
        // a plugin that does not exit shows what it was doing.
        let (dir, level) = match std::env::var_os("SSM_TEST_PLUGIN_LOG_DIR") {
            Some(d) => (PathBuf::from(d), "debug"),
            None => (home.path().to_owned(), "info"),
        };
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join(format!("plugin-{}.log", l.started.session_id));
        cmd.env("SESSION_MANAGER_PLUGIN_LOG", level)
            .env("SESSION_MANAGER_PLUGIN_LOG_FILE", &log);
        for (k, v) in &l.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("plugin starts");
        let stdout = Output::default();
        let stderr = Output::default();
        collect(child.stderr.take().unwrap(), stderr.clone());
        if !l.stdio {
            collect(child.stdout.take().unwrap(), stdout.clone());
        } else {
            // The test owns stdout: nothing to wait for here.
            stdout.2.store(true, Ordering::SeqCst);
        }
        Plugin {
            child,
            stdout,
            stderr,
            log,
            _home: home,
        }
    }

    /// Waits until stdout contains `needle`; returns all of stdout.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let t = self.stdout.text();
            if t.contains(needle) {
                return t;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {needle:?}; stdout: {t:?}; stderr: {:?}",
                    self.stderr.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The local port from `Port <p> opened for sessionId <id>.`
    pub async fn port(&self, session_id: &str) -> u16 {
        let out = self
            .wait_for(&format!(" opened for sessionId {session_id}."), T)
            .await;
        let at = out.find("Port ").expect("a Port line") + 5;
        out[at..].split(' ').next().unwrap().parse().unwrap()
    }
}

/// Sends `len` bytes through an echo destination and checks both directions byte for byte.
/// The client closes only after reading everything back: the agent (as the real one) closes the
/// destination connection when the client's stream ends, dropping what was still on its way.
pub async fn echo_through(port: u16, seed: u64, len: usize) {
    echo_through_at("127.0.0.1", port, seed, len).await
}

pub async fn echo_through_at(ip: &str, port: u16, seed: u64, len: usize) {
    let s = connect(ip, port).await;
    let (mut r, mut w) = s.into_split();
    let reader = tokio::spawn(async move { read_hash(&mut r, len).await });
    let sent = write_gen(&mut w, seed, len).await;
    let (n, got) = tokio::time::timeout(Duration::from_secs(900), reader)
        .await
        .expect("echo completes")
        .unwrap();
    assert_eq!(n, len, "bytes echoed back");
    assert_eq!(got, sent, "echoed bytes differ");
    w.shutdown().await.unwrap();
}

impl Plugin {
    /// Sends a signal to the plugin.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Plugin {
    /// Waits for the exit status (bounded).
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => {
                // The process is gone; what it wrote may still be in the pipes.
                self.stdout.until_eof(Duration::from_secs(5)).await;
                self.stderr.until_eof(Duration::from_secs(5)).await;
                s.unwrap()
            }
            Err(_) => panic!(
                "the plugin did not exit within {timeout:?}; stdout: {:?}; stderr: {:?}\n{}",
                self.stdout.text(),
                self.stderr.text(),
                self.log_tail()
            ),
        }
    }

    /// The last lines of the plugin's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- plugin log {} (tail)\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Resident memory of the plugin in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn collect(r: impl AsyncRead + Unpin + Send + 'static, out: Output) {
    tokio::spawn(async move {
        let mut r = r;
        let mut buf = vec![0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    out.2.store(true, Ordering::SeqCst);
                    out.1.notify_waiters();
                    return;
                }
                Ok(n) => out
                    .0
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
}

/// The usual bounded wait.
pub const T: Duration = Duration::from_secs(30);

/// A fast deterministic byte stream (xorshift), so both ends can hash the same data.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
    }
}

/// Writes `len` generated bytes, returns their SHA-256.
pub async fn write_gen(w: &mut (impl AsyncWrite + Unpin), seed: u64, len: usize) -> [u8; 32] {
    try_write_gen(w, seed, len).await.expect("write")
}

/// As [`write_gen`], for a peer that may hang up early (a reader that wants only a prefix).
pub async fn try_write_gen(
    w: &mut (impl AsyncWrite + Unpin),
    seed: u64,
    len: usize,
) -> std::io::Result<[u8; 32]> {
    let mut g = Gen::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        g.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n;
    }
    Ok(h.finalize().into())
}

/// Reads until EOF or `limit` bytes; returns (bytes, SHA-256).
pub async fn read_hash(r: &mut (impl AsyncRead + Unpin), limit: usize) -> (usize, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while total < limit {
        let want = (limit - total).min(buf.len());
        let n = r.read(&mut buf[..want]).await.expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
    }
    (total, h.finalize().into())
}

pub fn gen_hash(seed: u64, len: usize) -> [u8; 32] {
    let mut g = Gen::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        g.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n;
    }
    h.finalize().into()
}

/// What a destination server saw on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub bytes: usize,
    pub sha: [u8; 32],
}

/// Destination behaviours.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Echo everything back, half-close after the client's EOF.
    Echo,
    /// Read to EOF, report what was seen.
    Sink,
    /// Write `len` generated bytes (seed), then close.
    Source { seed: u64, len: usize },
    /// Wait, then read to EOF and report what was seen.
    StalledSink { stall: Duration },
    /// Read to EOF, then answer with the byte count and SHA-256 of what it got, then close.
    Digest,
}

/// A destination server on `ip`:0; returns its port and a receiver of what each connection saw.
pub async fn server(ip: &str, b: Behaviour) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move { serve(s, b, tx).await });
        }
    });
    (port, rx)
}

async fn serve(s: TcpStream, b: Behaviour, tx: tokio::sync::mpsc::UnboundedSender<Seen>) {
    let (mut r, mut w) = s.into_split();
    match b {
        Behaviour::Echo => {
            let mut buf = vec![0u8; 32 * 1024];
            let mut h = Sha256::new();
            let mut total = 0;
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        h.update(&buf[..n]);
                        total += n;
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(Seen {
                bytes: total,
                sha: h.finalize().into(),
            });
            // Keep our side open a moment: the simulator's basic-mode agent mishandles a
            // destination that closes in the same instant as the DisconnectToPort flag arrives
            // (its disconnect notification outlives the connection and kills the next one).
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = w.shutdown().await;
        }
        Behaviour::Sink | Behaviour::Digest => {
            let (bytes, sha) = read_hash_lenient(&mut r).await;
            if let Behaviour::Digest = b {
                let mut answer = format!("{bytes} ").into_bytes();
                answer.extend_from_slice(hex::encode(sha).as_bytes());
                let _ = w.write_all(&answer).await;
                let _ = w.shutdown().await;
            }
            let _ = tx.send(Seen { bytes, sha });
        }
        Behaviour::StalledSink { stall } => {
            tokio::time::sleep(stall).await;
            let (bytes, sha) = read_hash_lenient(&mut r).await;
            let _ = tx.send(Seen { bytes, sha });
        }
        Behaviour::Source { seed, len } => {
            // A client may read only a prefix and hang up: then nothing is reported.
            if let Ok(sha) = try_write_gen(&mut w, seed, len).await {
                let _ = w.shutdown().await;
                let _ = tx.send(Seen { bytes: len, sha });
            }
        }
    }
}

async fn read_hash_lenient(r: &mut (impl AsyncRead + Unpin)) -> (usize, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n;
            }
        }
    }
    (total, h.finalize().into())
}

pub async fn recv_seen(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>, t: Duration) -> Seen {
    tokio::time::timeout(t, rx.recv())
        .await
        .expect("the destination reports in time")
        .expect("destination alive")
}

pub async fn connect(ip: &str, port: u16) -> TcpStream {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match TcpStream::connect((ip, port)).await {
            Ok(s) => return s,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("connect {ip}:{port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A unique path for a unix socket.
pub fn socket_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// A local client that stops reading for `stall` while the destination sends `len` bytes, then
/// reads everything. Checks the bytes, that the plugin's memory stayed bounded during the stall,
/// and returns how long the read took once resumed (the download must not collapse to the
/// agent's one-resend-per-timeout pace after a stall).
pub async fn stalled_download(
    p: &Plugin,
    port: u16,
    seed: u64,
    len: usize,
    stall: Duration,
) -> Duration {
    let base = p.rss_kib();
    let mut s = connect("127.0.0.1", port).await;
    tokio::time::sleep(stall).await;
    let rss = p.rss_kib();
    eprintln!("local reader stalled {stall:?}: rss {base} -> {rss} KiB");
    assert!(
        rss < base + 48 * 1024,
        "rss grew from {base} to {rss} KiB during the stall"
    );
    let t0 = std::time::Instant::now();
    let (n, got) = tokio::time::timeout(Duration::from_secs(300), read_hash(&mut s, len))
        .await
        .expect("the download resumes and completes after the stall");
    let took = t0.elapsed();
    eprintln!(
        "after the stall: {n} bytes in {:.1}s ({:.1} MB/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64() / 1e6
    );
    assert_eq!(n, len, "bytes after the stall");
    assert_eq!(got, gen_hash(seed, len), "bytes differ");
    took
}

pub const PORT_DOC: &str = "AWS-StartPortForwardingSession";
/// The last agent that speaks basic port forwarding.
pub const BASIC_AGENT: &str = "3.0.196.0";
/// An agent with smux port forwarding.
pub const MUX_AGENT: &str = "3.3.987.0";

/// Echoes `mib` MiB each way through a basic-mode session, checks both ends and the session.
pub async fn basic_echo_session(limits: bool, mib: usize) {
    let sim = sim(sim_config(limits, BASIC_AGENT)).await;
    let (dport, mut seen) = server("127.0.0.1", Behaviour::Echo).await;
    let (st, req) = start(&sim, PORT_DOC, &[("portNumber", &dport.to_string())]);
    let env = if limits {
        vec![]
    } else {
        vec![("SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE", "0".to_string())]
    };
    let mut p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env,
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    let len = mib * MIB;
    let t0 = std::time::Instant::now();
    echo_through(port, 9, len).await;
    eprintln!(
        "basic echo {mib} MiB each way (limits {limits}): {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    // The client closed: DisconnectToPort makes the agent close the destination connection.
    let at = recv_seen(&mut seen, T).await;
    assert_eq!((at.bytes, at.sha), (len, gen_hash(9, len)));
    let stats = sim.stats(&st.session_id).unwrap();
    assert_eq!(stats.port_mode, "basic");
    assert_eq!(stats.pause_publication_sent, 0, "the service throttled us");
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "plugin still running"
    );
    p.signal(libc::SIGINT);
    assert!(p.wait(T).await.success());
    sim.shutdown();
}

/// Echoes `mib` MiB each way through an smux session, checks both ends and the session.
pub async fn mux_echo_session(limits: bool, mib: usize) {
    let sim = sim(sim_config(limits, MUX_AGENT)).await;
    let (dport, mut seen) = server("127.0.0.1", Behaviour::Echo).await;
    let (st, req) = start(&sim, PORT_DOC, &[("portNumber", &dport.to_string())]);
    let env = if limits {
        vec![]
    } else {
        vec![("SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE", "0".to_string())]
    };
    let mut p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env,
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    let len = mib * MIB;
    let t0 = std::time::Instant::now();
    echo_through(port, 7, len).await;
    eprintln!(
        "mux echo {mib} MiB each way (limits {limits}): {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let at_dest = recv_seen(&mut seen, T).await;
    assert_eq!((at_dest.bytes, at_dest.sha), (len, gen_hash(7, len)));
    // The session is alive: no pause, no close, and a new connection still works.
    let stats = sim.stats(&st.session_id).unwrap();
    assert_eq!(stats.pause_publication_sent, 0, "the service throttled us");
    assert_eq!(stats.port_mode, "mux");
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "plugin still running"
    );
    echo_through(port, 8, 10_000).await;
    p.signal(libc::SIGINT);
    let status = p.wait(T).await;
    assert!(status.success(), "{status:?}");
    let out = p.stdout.text();
    assert!(
        out.contains("Terminate signal received, exiting.\n"),
        "{out:?}"
    );
    assert!(
        sim.wait_ended(&st.session_id, T).await.is_some(),
        "Ctrl-C ends the session at the agent"
    );
    sim.shutdown();
}
