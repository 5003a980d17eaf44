//! smux forwarding (agents above 3.0.196.0): every local connection is one smux stream, with
//! half-close carried both ways (local EOF -> FIN; agent FIN -> shutdown of our write side) and
//! abortive close when either side fails.
//!
//! One loop owns the sans-IO [`Mux`]: it feeds it agent payloads and local reads, and cuts the
//! smux byte stream it produces into full `max_payload` payloads (a partial one only when no
//! local data is waiting), so the frame budget carries as many bytes as possible.
//!
//! Bounded everywhere: local reads wait while [`OUT_HIGH`] smux bytes are pending for the agent;
//! each connection's writer holds [`STREAM_QUEUE`] chunks; when one is full the loop stops taking
//! agent payloads until it drains (head-of-line blocking, as smux v1 has no per-stream window).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::BytesMut;
use tokio::sync::mpsc;

use super::conn::{self, AbortOnDrop, ConnId, ReadEvent, WriteCmd, WriterDone};
use super::CONNECT_ERROR_LINE;
use crate::channel::Priority;
use crate::exit::Exit;
use crate::session::handler::output_error;
use crate::session::listen::Listener;
use crate::session::{FromAgent, HandlerContext, HandlerExit, LocalEnd, ToAgent};
use crate::smux::{KeepAlive, Mux, MuxConfig, MuxEvent, Role, DEFAULT_MAX_FRAME_SIZE};
use crate::wire::{FlagValue, PayloadType};

/// Largest local read: one full smux frame.
const READ_CHUNK: usize = DEFAULT_MAX_FRAME_SIZE;
/// Local reads queued across all connections. Small on purpose: every byte queued here is ahead
/// of every other connection's next bytes (at the default 900 frames/s, 32 KiB is 36 ms), so
/// bulk data waits in its own socket and the connections' readers take turns.
const READ_QUEUE: usize = 2;
/// smux bytes waiting for the data channel before local reads pause.
const OUT_HIGH: usize = 16 * 1024;
/// Chunks (each at most one smux frame) queued for one connection's writer.
const STREAM_QUEUE: usize = 8;

struct Slot {
    /// `None` once FIN was passed on or the writer is gone.
    tx: Option<mpsc::Sender<WriteCmd>>,
    /// The agent sent data on this stream.
    got_data: bool,
    _reader: AbortOnDrop,
}

struct State {
    mux: Mux,
    streams: HashMap<ConnId, Slot>,
    /// smux output not yet sent to the agent.
    out: BytesMut,
    /// Agent-side events not yet handed to writers, in order.
    pending: VecDeque<MuxEvent>,
    /// ConnectToPortError flags not yet matched with the FIN of the failed stream.
    connect_errors: usize,
}

impl State {
    fn pull_output(&mut self) {
        while let Some(b) = self.mux.poll_output() {
            self.out.extend_from_slice(&b);
        }
    }

    fn on_local(&mut self, ev: ReadEvent) {
        match ev {
            ReadEvent::Data(id, b) => {
                // Fails only for a stream already closed after a local error: drop the bytes.
                let _ = self.mux.write(id, &b);
            }
            ReadEvent::Eof(id) => {
                let _ = self.mux.close_write(id);
            }
            ReadEvent::Failed(id, e) => {
                tracing::debug!(stream = id, "local connection failed: {e}");
                let _ = self.mux.close(id);
                self.streams.remove(&id);
            }
        }
    }

    fn on_writer_done(&mut self, (id, r): WriterDone) {
        if let Err(e) = r {
            tracing::debug!(stream = id, "writing to the local connection failed: {e}");
            let _ = self.mux.close(id);
            self.streams.remove(&id);
        }
    }

    /// Hands pending agent events to the writers; returns the sender to wait on when one is full.
    fn dispatch(&mut self) -> Option<mpsc::Sender<WriteCmd>> {
        while let Some(ev) = self.pending.pop_front() {
            let (id, cmd) = match ev {
                MuxEvent::Data(id, b) => (id, WriteCmd::Data(b)),
                MuxEvent::Fin(id) => {
                    let failed_dial = self.connect_errors > 0
                        && self.streams.get(&id).is_some_and(|s| !s.got_data);
                    if failed_dial {
                        // The agent could not reach the destination for this stream: close the
                        // local connection outright rather than leave it half open.
                        self.connect_errors -= 1;
                        let _ = self.mux.close(id);
                        self.streams.remove(&id);
                        continue;
                    }
                    (id, WriteCmd::Fin)
                }
                MuxEvent::Closed(id) => {
                    // FIN went both ways; the writer finishes what it holds on its own.
                    self.streams.remove(&id);
                    continue;
                }
                MuxEvent::Opened(_) | MuxEvent::KeepAliveTimeout => continue,
            };
            let Some(slot) = self.streams.get_mut(&id) else {
                continue;
            };
            let is_fin = matches!(cmd, WriteCmd::Fin);
            if let WriteCmd::Data(_) = cmd {
                slot.got_data = true;
            }
            let Some(tx) = &slot.tx else { continue };
            match tx.try_send(cmd) {
                Ok(()) => {
                    if is_fin {
                        slot.tx = None;
                    }
                }
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    let tx = tx.clone();
                    self.pending.push_front(match cmd {
                        WriteCmd::Data(b) => MuxEvent::Data(id, b),
                        WriteCmd::Fin => MuxEvent::Fin(id),
                    });
                    return Some(tx);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => slot.tx = None,
            }
        }
        None
    }
}

/// Runs until the session ends.
pub async fn run(
    mut ctx: HandlerContext,
    listener: std::sync::Arc<Listener>,
    keep_alive: Option<KeepAlive>,
) -> HandlerExit {
    let sid = ctx.session_id.clone();
    let max = ctx.max_payload.max(1);
    if let Err(e) = ctx.ui.status(&format!(
        "{}\nWaiting for connections...\n",
        listener.opened_line(&sid)
    )) {
        return output_error(&e);
    }
    let mut st = State {
        mux: Mux::new(MuxConfig::new(Role::Client, keep_alive), Instant::now()),
        streams: HashMap::new(),
        out: BytesMut::new(),
        pending: VecDeque::new(),
        connect_errors: 0,
    };
    let (read_tx, mut read_rx) = mpsc::channel::<ReadEvent>(READ_QUEUE);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<WriterDone>();
    let mut announced = false;
    // The proxy handing us connections no longer needs this session.
    let mut released = false;
    loop {
        let blocked = st.dispatch();
        st.pull_output();
        // Full payloads go out without waiting for the select.
        while st.out.len() >= max {
            match ctx.to_agent.try_reserve() {
                Ok(p) => p.send(output(st.out.split_to(max).freeze())),
                Err(_) => break,
            }
        }
        let mux_deadline = st.mux.poll_timeout().map(tokio::time::Instant::from_std);
        let mut stop: Option<Stop> = None;
        tokio::select! {
            permit = ctx.to_agent.reserve(), if !st.out.is_empty() => {
                let Ok(permit) = permit else { continue };
                if st.out.len() < max {
                    // Top up a partial payload with whatever local data is already waiting.
                    while st.out.len() < OUT_HIGH {
                        match read_rx.try_recv() {
                            Ok(ev) => { st.on_local(ev); st.pull_output(); }
                            Err(_) => break,
                        }
                    }
                }
                let n = st.out.len().min(max);
                permit.send(output(st.out.split_to(n).freeze()));
            }
            ev = read_rx.recv(), if st.out.len() < OUT_HIGH => {
                // read_tx lives here, so the queue never closes.
                if let Some(ev) = ev { st.on_local(ev); }
            }
            Some(done) = done_rx.recv() => st.on_writer_done(done),
            _ = async { if let Some(tx) = &blocked { let _ = tx.reserve().await; } }, if blocked.is_some() => {}
            msg = ctx.from_agent.recv(), if blocked.is_none() => match msg {
                Some(FromAgent::Message { payload_type: PayloadType::OUTPUT, payload }) => {
                    let r = st.mux.handle_input(Instant::now(), &payload);
                    while let Some(ev) = st.mux.poll_event() {
                        if ev == MuxEvent::KeepAliveTimeout {
                            continue;
                        }
                        st.pending.push_back(ev);
                    }
                    if let Err(e) = r {
                        stop = Some(Stop::Failed(e.to_string()));
                    }
                }
                Some(FromAgent::Message { payload_type: PayloadType::FLAG, payload }) => {
                    if FlagValue::from_payload(&payload) == Some(FlagValue::ConnectToPortError) {
                        if let Err(e) = ctx.ui.status(CONNECT_ERROR_LINE) {
                            return output_error(&e);
                        }
                        st.connect_errors += 1;
                    }
                }
                Some(FromAgent::Message { .. }) => {}
                None => stop = Some(Stop::Ended),
            },
            accepted = listener.accept(), if !released => match accepted {
                Ok(None) => {
                    released = true;
                    let _ = ctx.end.send(LocalEnd::Released);
                }
                Ok(Some(c)) => {
                    let id = match st.mux.open_stream() {
                        Ok(id) => id,
                        Err(e) => {
                            ctx.ui.warn(&format!("Cannot forward a new connection: {e}"));
                            continue;
                        }
                    };
                    tracing::debug!(peer = %c.peer, stream = id, "connection accepted");
                    if !announced {
                        if let Err(e) = ctx.ui.status(&format!("\nConnection accepted for session [{sid}]\n")) {
                            return output_error(&e);
                        }
                        announced = true;
                    }
                    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                    conn::spawn_writer(id, c.write, rx, done_tx.clone());
                    let reader = conn::spawn_reader(id, c.read, READ_CHUNK, read_tx.clone());
                    st.streams.insert(id, Slot { tx: Some(tx), got_data: false, _reader: reader });
                }
                Err(e) => {
                    tracing::warn!("accepting a local connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = sleep_until_opt(mux_deadline), if mux_deadline.is_some() => {
                st.mux.handle_timeout(Instant::now());
                if st.mux.is_closed() {
                    stop = Some(Stop::Failed("the agent's smux keep-alive stopped arriving (nothing for 30 seconds)".into()));
                }
            }
        }
        match stop {
            None => {}
            Some(Stop::Ended) => return HandlerExit::Done,
            Some(Stop::Failed(why)) => {
                drop(st);
                drop(listener);
                return HandlerExit::Failed {
                    exit: Exit::Protocol,
                    message: format!(
                        "\nThe port forwarding session cannot continue: {why}. Start a new session.\n"
                    ),
                };
            }
        }
    }
}

enum Stop {
    Ended,
    Failed(String),
}

fn output(payload: bytes::Bytes) -> ToAgent {
    ToAgent::Data {
        payload_type: PayloadType::OUTPUT,
        payload,
        priority: Priority::Data,
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
