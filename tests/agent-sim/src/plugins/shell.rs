//! Standard_Stream and InteractiveCommands: a command in a pseudo terminal
//! (`shell/shell.go: executeCommandsWithPty`, `shell/shell_unix.go`).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use portable_pty::{native_pty_system, CommandBuilder, MasterPty, PtySize};
use ssm_plugin::wire::{PayloadType, SizeData};
use tokio::sync::mpsc;

use super::text::take_utf8;
use crate::datachannel::{DataChannel, HandleError, HandlerFut, InputHandler};
use crate::session::lock;

/// `config.go: StreamDataPayloadSize`.
const CHUNK: usize = 1024;

struct PtyHandler {
    writer: Mutex<Box<dyn Write + Send>>,
    master: Mutex<Box<dyn MasterPty + Send>>,
}

impl InputHandler for PtyHandler {
    fn handle(&self, payload_type: PayloadType, payload: Bytes) -> HandlerFut<'_> {
        Box::pin(async move {
            match payload_type {
                PayloadType::OUTPUT => {
                    let mut w = lock(&self.writer);
                    w.write_all(&payload).and_then(|_| w.flush()).map_err(|e| {
                        HandleError::Failed(format!("Unable to write to stdin, err: {e}."))
                    })
                }
                PayloadType::SIZE => {
                    let size: SizeData = serde_json::from_slice(&payload)
                        .map_err(|e| HandleError::Failed(format!("Invalid size message: {e}")))?;
                    lock(&self.master)
                        .resize(PtySize {
                            rows: size.rows.min(u16::MAX as u32) as u16,
                            cols: size.cols.min(u16::MAX as u32) as u16,
                            pixel_width: 0,
                            pixel_height: 0,
                        })
                        .map_err(|e| HandleError::Failed(format!("Unable to set pty size: {e}")))
                }
                // Shell plugins ignore flags and everything else.
                _ => Ok(()),
            }
        })
    }
}

/// Runs `argv` in a PTY until it exits (returns `""`) or the session is cancelled.
pub(crate) async fn run_pty(dc: Arc<DataChannel>, argv: Vec<String>, _login_shell: bool) -> String {
    let sess = dc.sess.clone();
    let spawned = (|| -> anyhow::Result<_> {
        let pair = native_pty_system().openpty(PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })?;
        let mut cmd = CommandBuilder::new(&argv[0]);
        cmd.args(&argv[1..]);
        // shell_unix.go: TERM=xterm-256color, and LANG=C.UTF-8 when LANG is unset.
        cmd.env("TERM", "xterm-256color");
        if std::env::var_os("LANG").is_none() {
            cmd.env("LANG", "C.UTF-8");
        }
        if let Ok(dir) = std::env::current_dir() {
            cmd.cwd(dir);
        }
        let child = pair.slave.spawn_command(cmd)?;
        drop(pair.slave);
        let reader = pair.master.try_clone_reader()?;
        let writer = pair.master.take_writer()?;
        Ok((child, reader, writer, pair.master))
    })();
    let (mut child, mut reader, writer, master) = match spawned {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(session = %sess.id, "cannot start the pty: {e}");
            return format!("Unable to start command: {e}\n");
        }
    };
    let mut killer = child.clone_killer();
    dc.set_handler(Arc::new(PtyHandler {
        writer: Mutex::new(writer),
        master: Mutex::new(master),
    }));

    // The PTY is read on a thread (portable-pty is blocking); a small bounded channel keeps
    // the agent's "read only when active" backpressure.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let waiter = tokio::task::spawn_blocking(move || child.wait());

    let pump = async {
        // setupRoutineToWriteCommandOutput(..., 1): output starts after the initial wait.
        tokio::time::sleep(sess.cfg.pty_start_delay).await;
        let mut pending = Vec::new();
        loop {
            dc.wait_active().await;
            let Some(chunk) = rx.recv().await else {
                return;
            };
            pending.extend_from_slice(&chunk);
            let out = take_utf8(&mut pending);
            dc.send_stream(PayloadType::OUTPUT, &out);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::pin!(pump);
    let mut waiter = waiter;
    // The shell ends when the pty reports end of file, as in the agent. A pty slave that leaked
    // into another process (a child spawned by the host between openpty and the close-on-exec
    // flag) keeps that end of file from ever coming, so the shell's exit ends the session too,
    // once its last output has drained.
    let child_done = tokio::select! {
        _ = &mut pump => false,
        _ = &mut waiter => {
            let _ = tokio::time::timeout(Duration::from_millis(300), &mut pump).await;
            true
        }
        _ = dc.cancelled() => {
            let _ = killer.kill();
            let _ = waiter.await;
            return String::new();
        }
    };
    // Success path: drain, then tell MGS the session is terminating.
    dc.prepare_to_close().await;
    sess.agent_state("Terminating");
    if !child_done {
        let _ = killer.kill();
        let _ = waiter.await;
    }
    String::new()
}
