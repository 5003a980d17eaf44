//! NonInteractiveCommands: the command without a terminal (`shell/shell.go:
//! executeCommandsWithExec`, `processCommandsWithOutputStreamSeparate`,
//! `processCommandsWithExec`; input handling in `shell/shell_unix.go`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ssm_plugin::wire::PayloadType;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::text::{shell_split, take_utf8};
use crate::datachannel::{DataChannel, HandlerFut, InputHandler};

const CHUNK: usize = 1024;

/// Input to a command: only Ctrl-C (0x03) and Ctrl-\ (0x1c) mean anything
/// (`appconfig/constants.go: ByteControlSignalsLinux`); they signal the command.
struct SignalHandler {
    pid: Option<u32>,
}

impl InputHandler for SignalHandler {
    fn handle(&self, payload_type: PayloadType, payload: Bytes) -> HandlerFut<'_> {
        Box::pin(async move {
            if payload_type == PayloadType::OUTPUT {
                let sig = payload.iter().find_map(|b| match b {
                    0x03 => Some(libc::SIGINT),
                    0x1c => Some(libc::SIGQUIT),
                    _ => None,
                });
                if let (Some(sig), Some(pid)) = (sig, self.pid) {
                    // SAFETY: kill(2) with a pid we spawned; no memory is involved.
                    unsafe {
                        libc::kill(pid as libc::pid_t, sig);
                    }
                }
            }
            // Size and everything else are ignored without a pty.
            Ok(())
        })
    }
}

fn command(words: &[String]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&words[0]);
    cmd.args(&words[1..])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("LANG").is_none() {
        cmd.env("LANG", "C.UTF-8");
    }
    cmd
}

async fn pump(dc: &DataChannel, mut r: impl AsyncRead + Unpin, pt: PayloadType) {
    let mut buf = vec![0u8; CHUNK];
    let mut pending = Vec::new();
    loop {
        dc.wait_active().await;
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                let out = take_utf8(&mut pending);
                dc.send_stream(pt, &out);
            }
        }
    }
    dc.send_stream(pt, &pending);
}

/// Go's `ProcessState.ExitCode()`: -1 when killed by a signal.
fn exit_code(s: std::io::Result<std::process::ExitStatus>) -> i32 {
    s.ok().and_then(|s| s.code()).unwrap_or(-1)
}

pub(crate) async fn run(dc: Arc<DataChannel>, command_line: &str, separate: bool) -> String {
    let sess = dc.sess.clone();
    let words = match shell_split(command_line) {
        Ok(w) if !w.is_empty() => w,
        Ok(_) => vec!["sh".to_owned()],
        Err(e) => {
            dc.set_handler(Arc::new(SignalHandler { pid: None }));
            return format!("Unable to start command: Failed to parse commands input: {e}\n\n");
        }
    };
    let mut cmd = command(&words);
    let done = if separate {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return start_failed(&dc, separate, e).await,
        };
        dc.set_handler(Arc::new(SignalHandler { pid: child.id() }));
        let out = child.stdout.take();
        let err = child.stderr.take();
        let work = async {
            let a = async {
                if let Some(o) = out {
                    pump(&dc, o, PayloadType::OUTPUT).await
                }
            };
            let b = async {
                if let Some(e) = err {
                    pump(&dc, e, PayloadType::STDERR).await
                }
            };
            tokio::join!(a, b);
            let code = exit_code(child.wait().await);
            dc.send_stream(
                PayloadType::EXIT_CODE,
                format!("EXIT_CODE: {code}").as_bytes(),
            );
        };
        tokio::select! {
            _ = work => true,
            _ = dc.cancelled() => false,
        }
    } else {
        // Both streams into one pipe; the agent sends the output once the command is done.
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => return start_failed(&dc, separate, e).await,
        };
        let writer2 = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => return start_failed(&dc, separate, e).await,
        };
        cmd.stdout(Stdio::from(writer)).stderr(Stdio::from(writer2));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return start_failed(&dc, separate, e).await,
        };
        // Our copies of the write end must go, or the reader never sees EOF.
        drop(cmd);
        dc.set_handler(Arc::new(SignalHandler { pid: child.id() }));
        let collected = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            let _ = std::io::Read::read_to_end(&mut { reader }, &mut all);
            all
        });
        let work = async {
            let _ = child.wait().await;
            let all = collected.await.unwrap_or_default();
            for chunk in all.chunks(CHUNK) {
                dc.wait_active().await;
                dc.send_stream(PayloadType::OUTPUT, chunk);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            _ = work => true,
            _ = dc.cancelled() => false,
        }
    };
    if done {
        dc.prepare_to_close().await;
        sess.agent_state("Terminating");
    }
    String::new()
}

/// `processCommandsWithOutputStreamSeparate` when Start fails: exit code 1, then (after the
/// agent's 1 s pause in `sendErrorToDataChannel`) the error text as StdErr.
async fn start_failed(dc: &Arc<DataChannel>, separate: bool, e: std::io::Error) -> String {
    dc.set_handler(Arc::new(SignalHandler { pid: None }));
    if separate {
        dc.send_stream(PayloadType::EXIT_CODE, b"EXIT_CODE: 1");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    dc.send_stream(PayloadType::STDERR, e.to_string().as_bytes());
    dc.prepare_to_close().await;
    dc.sess.agent_state("Terminating");
    String::new()
}
