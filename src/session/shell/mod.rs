//! Shell-like sessions (Standard_Stream, InteractiveCommands, NonInteractiveCommands / ECS
//! Exec): local input goes to the remote as Output payloads; remote Output goes to stdout,
//! StdErr and Error to stderr.
//!
//! Two modes, chosen by whether stdin is a terminal:
//! - **Terminal**: raw input for the whole session (keys, Ctrl-C, Ctrl-Z, Enter as CR reach
//!   the remote as bytes), the window size sent at start and on every change, ssh-style `~`
//!   escapes, and the terminal restored on every way out ([`terminal`]).
//! - **Piped** (CI, scripts, Ansible): no terminal calls at all, stdin forwarded as it comes,
//!   and end of input passed on as end of input (see [`EofPolicy`]).
//!
//! Signals that end or interrupt the session (SIGINT, SIGQUIT, SIGTSTP, SIGTERM, SIGHUP) are the
//! session machine's (see `session::core`); this handler only watches the window size.

pub mod escape;

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::handler::output_error;
use super::handshake::SessionKind;
use super::{FromAgent, HandlerContext, HandlerExit, LocalEnd, ToAgent};
use crate::channel::Priority;
use crate::term as terminal;
use crate::wire::{self, PayloadType, SizeData};
use escape::{Action, Escapes};

/// End-of-transmission: what a terminal sends for Ctrl-D.
const EOT: u8 = 0x04;
/// How often the window size is checked when SIGWINCH does not come (stdout is not the
/// terminal we are signalled for, or another process group holds it); the reference polls at
/// this rate and nothing else.
const RESIZE_POLL: Duration = Duration::from_millis(500);
/// Bytes read ahead of what the channel takes; beyond it the stdin reader waits (so a paste
/// is coalesced into full frames instead of piling up).
const INPUT_AHEAD_FRAMES: usize = 4;

/// The size to send before anything else in a session, when the user is at a terminal: the
/// agent holds it back (no ack, so we resend) until its pty exists and applies it before any
/// keystroke, and it discards it while a handshake is in progress (port sessions).
pub fn initial_size() -> Option<SizeData> {
    terminal::has_terminal().then(terminal::remote_size)
}

/// Watches SIGWINCH and SIGCONT on a thread of its own (a resize or a return from suspension:
/// check the window size, and put the terminal back in raw mode after a resume).
fn start_signal_thread(tx: mpsc::Sender<()>) -> std::io::Result<()> {
    use signal_hook::consts::signal::{SIGCONT, SIGWINCH};
    let mut signals = signal_hook::iterator::Signals::new([SIGWINCH, SIGCONT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGCONT {
                    terminal::reapply();
                }
                // A full queue means a check is already pending.
                let _ = tx.try_send(());
            }
        })?;
    Ok(())
}

enum Input {
    Data(Bytes),
    /// End of input, or a read error (a closed descriptor, a hung-up terminal).
    End,
}

/// Reads stdin on a plain thread: blocking reads of what is there, up to one frame each. The
/// thread is never joined; it ends with the process.
fn start_stdin_reader(max: usize, tx: mpsc::Sender<Input>) {
    use std::os::fd::FromRawFd;
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            // SAFETY: fd 0 stays open for the life of the process; ManuallyDrop never closes it.
            let stdin = std::mem::ManuallyDrop::new(unsafe {
                std::fs::File::from_raw_fd(libc::STDIN_FILENO)
            });
            let mut buf = vec![0u8; max.max(1)];
            loop {
                match (&*stdin).read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .blocking_send(Input::Data(Bytes::copy_from_slice(&buf[..n])))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!("stdin: {e}");
                        break;
                    }
                }
            }
            let _ = tx.blocking_send(Input::End);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot read stdin: {e}");
    }
}

/// What end of piped input means for the remote.
///
/// Standard_Stream and InteractiveCommands run on a remote pty, where end of input is Ctrl-D
/// at the start of a line. We end the last line if the input did not, then send Ctrl-D, so a
/// shell exits after running the whole script (like `sh < script`) and a command reading
/// stdin sees its end. A line editor (bash's readline) can miss that Ctrl-D when it arrives
/// while a command still runs (the pty, then in line mode, turns it into a NUL byte that
/// readline later reads as a key), so after each burst of remote output followed by a quiet
/// moment we send Ctrl-D again, a bounded number of times: input is over, and every read of
/// the remote terminal should say so. NonInteractiveCommands ignores input, so nothing is sent.
#[derive(Debug)]
pub struct EofPolicy {
    enabled: bool,
    at_eof: bool,
    sent: u32,
    quiet_since_output: Option<Instant>,
}

impl EofPolicy {
    /// Most Ctrl-D we send after end of input.
    pub const MAX_EOT: u32 = 8;
    /// How long the remote must stay quiet after output before another Ctrl-D.
    pub const QUIET: Duration = Duration::from_millis(500);

    fn new(kind: &SessionKind) -> Self {
        Self {
            enabled: *kind != SessionKind::NonInteractiveCommands,
            at_eof: false,
            sent: 0,
            quiet_since_output: None,
        }
    }

    /// Local input ended; `last_byte` is the last byte forwarded. Returns the bytes to send.
    fn on_eof(&mut self, last_byte: Option<u8>) -> Vec<u8> {
        self.at_eof = true;
        if !self.enabled {
            return Vec::new();
        }
        self.sent = 1;
        match last_byte {
            Some(b'\n' | b'\r') | None => vec![EOT],
            Some(_) => vec![b'\n', EOT],
        }
    }

    /// The remote printed something.
    fn on_output(&mut self, now: Instant) {
        if self.at_eof && self.enabled && self.sent < Self::MAX_EOT {
            self.quiet_since_output = Some(now + Self::QUIET);
        }
    }

    /// When to send the next Ctrl-D, if one is due after the current quiet period.
    fn deadline(&self) -> Option<Instant> {
        self.quiet_since_output
    }

    /// The quiet period is over: send another Ctrl-D.
    fn on_quiet(&mut self) -> Vec<u8> {
        self.quiet_since_output = None;
        self.sent += 1;
        vec![EOT]
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn size_message(size: SizeData) -> ToAgent {
    ToAgent::Data {
        payload_type: PayloadType::SIZE,
        payload: Bytes::from(wire::to_vec(&size)),
        priority: Priority::Control,
    }
}

/// Runs the handler until the driver says the session is over (or the local side ends it).
pub async fn run(mut ctx: HandlerContext) -> HandlerExit {
    let on_terminal = terminal::is_tty(libc::STDIN_FILENO);
    // Raw input from the first output on; dropped (restored) when this function returns, and
    // restored by the panic hook, the signal thread and `main` on the other ways out.
    let raw = if on_terminal {
        match terminal::RawMode::enter(libc::STDIN_FILENO) {
            Ok(g) => Some(g),
            Err(e) => {
                ctx.ui.warn(&format!(
                    "Warning: cannot switch the terminal to raw input ({e}); input is sent line by line."
                ));
                None
            }
        }
    } else {
        None
    };
    let (sig_tx, mut sig_rx) = mpsc::channel(8);
    if let Err(e) = start_signal_thread(sig_tx) {
        tracing::warn!("cannot handle signals: {e}");
    }
    let max = ctx.max_payload.max(1);
    let (in_tx, mut in_rx) = mpsc::channel(INPUT_AHEAD_FRAMES);
    start_stdin_reader(max, in_tx);

    let size_tracked = terminal::has_terminal();
    let mut last_size = terminal::remote_size();
    let _ = ctx.to_agent.send(size_message(last_size)).await;
    let mut resize_poll = tokio::time::interval(RESIZE_POLL);
    resize_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut escapes = on_terminal.then(Escapes::new);
    let mut eof = EofPolicy::new(&ctx.kind);
    let mut pending: Vec<u8> = Vec::new();
    let mut last_byte: Option<u8> = None;
    let mut reading = true;
    // Set once we asked the driver to end the session: input stops, output still drains.
    let mut ending = false;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();

    loop {
        // Unbiased: a flood of output must not starve the keys (Ctrl-C) of the user.
        tokio::select! {
            msg = ctx.from_agent.recv() => {
                let Some(FromAgent::Message { payload_type, payload }) = msg else { break };
                let r = match payload_type {
                    PayloadType::OUTPUT => {
                        eof.on_output(Instant::now());
                        stdout.write_all(&payload).await.and(stdout.flush().await)
                    }
                    PayloadType::STDERR | PayloadType::ERROR => {
                        stderr.write_all(&payload).await.and(stderr.flush().await)
                    }
                    // The exit code is read by the driver; Flags mean nothing to shells.
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    tracing::debug!("cannot write the session output: {e}");
                    return output_error(&e);
                }
            }
            Some(()) = sig_rx.recv(), if !ending => {
                if let Some(s) = terminal::window_size().filter(|s| *s != last_size) {
                    last_size = s;
                    let _ = ctx.to_agent.send(size_message(s)).await;
                }
            },
            permit = ctx.to_agent.reserve(), if !pending.is_empty() && !ending => {
                let Ok(permit) = permit else { break };
                let n = pending.len().min(max);
                let chunk: Vec<u8> = pending.drain(..n).collect();
                permit.send(ToAgent::Data {
                    payload_type: PayloadType::OUTPUT,
                    payload: Bytes::from(chunk),
                    priority: Priority::Data,
                });
            }
            input = in_rx.recv(), if reading && !ending && pending.len() < INPUT_AHEAD_FRAMES * max => {
                match input {
                    Some(Input::Data(bytes)) => {
                        let actions = match escapes.as_mut() {
                            Some(e) => e.feed(&bytes),
                            None => vec![Action::Send(bytes.to_vec())],
                        };
                        for a in actions {
                            match a {
                                Action::Send(b) => {
                                    last_byte = b.last().copied().or(last_byte);
                                    pending.extend_from_slice(&b);
                                }
                                Action::Help => {
                                    let _ = stderr.write_all(escape::HELP.as_bytes()).await;
                                    let _ = stderr.flush().await;
                                }
                                Action::Terminate => {
                                    ending = true;
                                    pending.clear();
                                    let _ = ctx.end.send(LocalEnd::Escape);
                                }
                            }
                        }
                    }
                    Some(Input::End) | None => {
                        reading = false;
                        if let Some(b) = escapes.as_mut().and_then(Escapes::flush) {
                            pending.extend_from_slice(&b);
                        }
                        if raw.is_some() {
                            // A raw terminal only ends when it goes away (hang-up).
                            ending = true;
                            let _ = ctx.end.send(LocalEnd::TerminalGone);
                        } else {
                            pending.extend(eof.on_eof(last_byte));
                        }
                    }
                }
            }
            _ = sleep_until_opt(eof.deadline()), if !ending => {
                pending.extend(eof.on_quiet());
            }
            _ = resize_poll.tick(), if size_tracked && !ending => {
                if let Some(s) = terminal::window_size().filter(|s| *s != last_size) {
                    last_size = s;
                    let _ = ctx.to_agent.send(size_message(s)).await;
                }
            }
        }
    }
    let flushed = stdout.flush().await.and(stderr.flush().await);
    drop(raw);
    match flushed {
        Ok(()) => HandlerExit::Done,
        Err(e) => output_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eof_ends_the_line_then_sends_ctrl_d() {
        let mut p = EofPolicy::new(&SessionKind::StandardStream);
        assert_eq!(p.on_eof(Some(b'x')), vec![b'\n', EOT]);
        let mut p = EofPolicy::new(&SessionKind::InteractiveCommands);
        assert_eq!(p.on_eof(Some(b'\n')), vec![EOT]);
        let mut p = EofPolicy::new(&SessionKind::StandardStream);
        assert_eq!(p.on_eof(None), vec![EOT]);
    }

    #[test]
    fn eof_repeats_after_output_and_quiet_a_bounded_number_of_times() {
        let t = Instant::now();
        let mut p = EofPolicy::new(&SessionKind::StandardStream);
        p.on_output(t);
        assert_eq!(p.deadline(), None, "nothing before local EOF");
        p.on_eof(Some(b'\n'));
        let mut sent = 1;
        for i in 0..20 {
            p.on_output(t + Duration::from_secs(i));
            match p.deadline() {
                Some(d) => {
                    assert_eq!(d, t + Duration::from_secs(i) + EofPolicy::QUIET);
                    assert_eq!(p.on_quiet(), vec![EOT]);
                    sent += 1;
                }
                None => break,
            }
        }
        assert_eq!(sent, EofPolicy::MAX_EOT);
    }

    #[test]
    fn non_interactive_commands_get_nothing_at_eof() {
        let mut p = EofPolicy::new(&SessionKind::NonInteractiveCommands);
        assert!(p.on_eof(Some(b'x')).is_empty());
        p.on_output(Instant::now());
        assert_eq!(p.deadline(), None);
    }
}
