//! Drives the real `session-manager-plugin` binary against the in-process agent simulator,
//! either on a pseudo-terminal (portable-pty) or with pipes. Every wait is bounded.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sim::{SessionBackend, SessionSpec, SimConfig, SimHandle, Simulator, Started};
use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize, SlavePty};

pub const TARGET: &str = "i-0123456789abcdef0";
/// Upper bound of any single wait (a healthy run needs a fraction of it).
pub const T: Duration = Duration::from_secs(20);

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_session-manager-plugin");

pub async fn sim(shell: &str) -> SimHandle {
    let config = SimConfig {
        pty_start_delay: Duration::from_millis(100),
        shell: shell.to_owned(),
        ..SimConfig::default()
    };
    Simulator::start(config).await.expect("simulator starts")
}

pub fn start(sim: &SimHandle, doc: Option<&str>, params: &[(&str, &str)]) -> Started {
    sim.backend()
        .start_session(SessionSpec {
            target: TARGET.into(),
            document_name: doc.map(str::to_owned),
            parameters: agent_sim::parameters(params),
            reason: None,
        })
        .expect("session starts")
}

/// argv as the AWS CLI builds it (response JSON in argv, no profile, no endpoint).
pub fn plugin_args(s: &Started) -> Vec<String> {
    let response = serde_json::json!({
        "SessionId": s.session_id,
        "TokenValue": s.token_value,
        "StreamUrl": s.stream_url,
    });
    vec![
        response.to_string(),
        "us-east-1".into(),
        "StartSession".into(),
        String::new(),
        serde_json::json!({ "Target": TARGET }).to_string(),
        String::new(),
    ]
}

/// A clean environment: nothing from the test's (proxies, AWS settings) leaks in.
fn base_env(home: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".into(), home.display().to_string()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("TERM".into(), "xterm-256color".into()),
    ]
}

/// The terminal settings that matter to a user (what `stty -g` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modes {
    pub iflag: libc::tcflag_t,
    pub oflag: libc::tcflag_t,
    pub cflag: libc::tcflag_t,
    pub lflag: libc::tcflag_t,
    pub cc: Vec<libc::cc_t>,
}

pub fn modes_of(fd: std::os::fd::RawFd) -> Modes {
    // SAFETY: termios is plain data filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::tcgetattr(fd, &mut t) };
    assert_eq!(r, 0, "tcgetattr: {}", std::io::Error::last_os_error());
    Modes {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        cc: t.c_cc.to_vec(),
    }
}

/// The plugin running on a pseudo-terminal, started the way the AWS CLI starts it: with
/// SIGINT, SIGQUIT and SIGTSTP ignored.
pub struct PtyPlugin {
    pub child: Box<dyn Child + Send + Sync>,
    pub master: Box<dyn MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    output: Arc<Mutex<Vec<u8>>>,
    // Kept open so the terminal settings stay readable after the plugin exits.
    _slave: Box<dyn SlavePty + Send>,
    _home: tempfile::TempDir,
}

impl PtyPlugin {
    pub fn spawn(s: &Started, size: (u16, u16), env: &[(&str, &str)]) -> Self {
        let home = tempfile::tempdir().expect("temp dir");
        let pair = native_pty_system()
            .openpty(PtySize {
                cols: size.0,
                rows: size.1,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut cmd = CommandBuilder::new("sh");
        cmd.arg("-c");
        cmd.arg("trap '' INT QUIT TSTP; exec \"$0\" \"$@\"");
        cmd.arg(PLUGIN);
        for a in plugin_args(s) {
            cmd.arg(a);
        }
        cmd.env_clear();
        for (k, v) in base_env(home.path()) {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.cwd(home.path());
        let child = pair.slave.spawn_command(cmd).expect("spawn the plugin");
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let writer = pair.master.take_writer().expect("pty writer");
        let output = Arc::new(Mutex::new(Vec::new()));
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child,
            master: pair.master,
            writer,
            output,
            _slave: pair.slave,
            _home: home,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.process_id().expect("pid") as libc::pid_t
    }

    pub fn modes(&self) -> Modes {
        modes_of(self.master.as_raw_fd().expect("master fd"))
    }

    pub fn type_bytes(&mut self, b: &[u8]) {
        self.writer.write_all(b).expect("write to the pty");
        self.writer.flush().expect("flush the pty");
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        self.master
            .resize(PtySize {
                cols,
                rows,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("resize");
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Where the output ends now, for [`Self::expect_after`].
    pub fn mark(&self) -> usize {
        self.output.lock().unwrap().len()
    }

    /// Waits until the output after `mark` contains `needle`.
    pub async fn expect_after(&self, mark: usize, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let out = self.output.lock().unwrap();
                let tail = String::from_utf8_lossy(&out[mark.min(out.len())..]);
                if tail.contains(needle) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn expect(&self, needle: &str) {
        assert!(
            self.expect_after(0, needle, T).await,
            "no {needle:?} in the output:\n{}",
            self.text()
        );
    }

    /// Waits for the shell to print its prompt after `mark`. The simulator's `sh` prompts
    /// with `$ ` or `# `.
    pub async fn prompt_after(&self, mark: usize) {
        let deadline = Instant::now() + T;
        loop {
            {
                let out = self.output.lock().unwrap();
                let tail = String::from_utf8_lossy(&out[mark.min(out.len())..]);
                if tail.contains("$ ") || tail.contains("# ") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no prompt in:\n{}", self.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Types a command and waits for `needle` in what follows.
    pub async fn run(&mut self, command: &str, needle: &str) {
        let mark = self.mark();
        self.type_bytes(command.as_bytes());
        self.type_bytes(b"\r");
        assert!(
            self.expect_after(mark, needle, T).await,
            "{command:?} did not print {needle:?}:\n{}",
            self.text()
        );
    }

    /// Waits (bounded) for the plugin to exit; its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.exit_code());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PtyPlugin {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
    }
}

/// What a piped run produced.
pub struct Piped {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the plugin with stdin, stdout and stderr on pipes (no terminal anywhere), feeds it
/// `input` and closes stdin; kills it after `timeout`.
pub async fn run_piped(
    s: &Started,
    env: &[(&str, &str)],
    input: &[u8],
    timeout: Duration,
) -> Piped {
    run_piped_inner(s, env, Some(input), timeout, |_, _| true).await
}

/// As [`run_piped`] with stdin left open; `poke(pid, stdout so far)` is called until it
/// returns true once.
pub async fn run_piped_with(
    s: &Started,
    env: &[(&str, &str)],
    timeout: Duration,
    poke: impl FnMut(libc::pid_t, &str) -> bool,
) -> Piped {
    run_piped_inner(s, env, None, timeout, poke).await
}

async fn run_piped_inner(
    s: &Started,
    env: &[(&str, &str)],
    input: Option<&[u8]>,
    timeout: Duration,
    mut poke: impl FnMut(libc::pid_t, &str) -> bool,
) -> Piped {
    let home = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(PLUGIN);
    cmd.args(plugin_args(s))
        .env_clear()
        .envs(base_env(home.path()))
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .current_dir(home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // No controlling terminal either: a new session.
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn the plugin");
    let pid = child.id() as libc::pid_t;
    let mut stdin = child.stdin.take().expect("stdin");
    let mut kept_stdin = None;
    match input {
        Some(input) => {
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        None => kept_stdin = Some(stdin),
    }
    let collect = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let t = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (buf, t)
    };
    let (out, out_t) = collect(Box::new(child.stdout.take().expect("stdout")));
    let (err, err_t) = collect(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let mut poked = false;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if !poked {
            let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
            poked = poke(pid, &text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(kept_stdin);
    let _ = out_t.join();
    let _ = err_t.join();
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    Piped {
        status,
        stdout: text(&out),
        stderr: text(&err),
    }
}
