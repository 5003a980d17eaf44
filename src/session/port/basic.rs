//! Basic forwarding (agents up to 3.0.196.0): one local connection at a time, its bytes sent
//! raw. When the client disconnects we send the DisconnectToPort flag (the agent then closes its
//! destination connection and dials again on the next client's first bytes) and accept the next
//! client, as the reference does.
//!
//! Agent data that arrives before the first client connects belongs to that client (a server
//! that speaks first) and is held, bounded; data that arrives between clients is the tail of
//! the previous destination connection and is dropped.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::conn::{self, AbortOnDrop, ConnId, ReadEvent, WriteCmd, WriterDone};
use super::CONNECT_ERROR_LINE;
use crate::channel::Priority;
use crate::session::handler::output_error;
use crate::session::listen::Listener;
use crate::session::{FromAgent, HandlerContext, HandlerExit, LocalEnd, ToAgent};
use crate::wire::{FlagValue, PayloadType};

/// Agent payloads held for the first client, at most.
const HELD_MAX: usize = 256;
/// Chunks queued for the client's writer.
const WRITER_QUEUE: usize = 16;

struct Active {
    id: ConnId,
    tx: mpsc::Sender<WriteCmd>,
    _reader: AbortOnDrop,
}

/// Runs until the session ends.
pub async fn run(mut ctx: HandlerContext, listener: std::sync::Arc<Listener>) -> HandlerExit {
    let sid = ctx.session_id.clone();
    if let Err(e) = ctx.ui.status(&format!("{}\n", listener.opened_line(&sid))) {
        return output_error(&e);
    }
    let (read_tx, mut read_rx) = mpsc::channel::<ReadEvent>(4);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<WriterDone>();
    let mut active: Option<Active> = None;
    let mut next_id: ConnId = 0;
    let mut had_client = false;
    // The proxy handing us connections no longer needs this session.
    let mut released = false;
    // Agent payloads not yet handed to the writer.
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    // Messages for the agent waiting for room in its queue (one payload, maybe a flag).
    let mut up: VecDeque<ToAgent> = VecDeque::new();
    loop {
        // Hand held payloads to the writer as far as its queue allows.
        let mut blocked = None;
        if let Some(a) = &active {
            while let Some(b) = pending.pop_front() {
                match a.tx.try_send(WriteCmd::Data(b)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(WriteCmd::Data(b))) => {
                        pending.push_front(b);
                        blocked = Some(a.tx.clone());
                        break;
                    }
                    // The writer failed; its report comes through `done_rx`.
                    Err(_) => {
                        pending.clear();
                        break;
                    }
                }
            }
        } else if had_client {
            pending.clear();
        }
        let take_agent = blocked.is_none() && pending.len() < HELD_MAX;
        let mut stop = false;
        tokio::select! {
            accepted = listener.accept(), if active.is_none() && !released => match accepted {
                Ok(None) => {
                    released = true;
                    let _ = ctx.end.send(LocalEnd::Released);
                }
                Ok(Some(c)) => {
                    tracing::debug!(peer = %c.peer, "connection accepted");
                    if !had_client {
                        if let Err(e) = ctx.ui.status(&format!("Connection accepted for session {sid}.\n")) {
                            return output_error(&e);
                        }
                        had_client = true;
                    }
                    next_id += 1;
                    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
                    conn::spawn_writer(next_id, c.write, rx, done_tx.clone());
                    let reader = conn::spawn_reader(next_id, c.read, ctx.max_payload, read_tx.clone());
                    active = Some(Active { id: next_id, tx, _reader: reader });
                }
                Err(e) => {
                    tracing::warn!("accepting a local connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            permit = ctx.to_agent.reserve(), if !up.is_empty() => {
                if let (Ok(p), Some(m)) = (permit, up.pop_front()) {
                    p.send(m);
                }
            }
            ev = read_rx.recv(), if up.is_empty() => {
                // read_tx lives here, so the queue never closes.
                let Some(ev) = ev else { continue };
                let ended = match ev {
                    ReadEvent::Data(id, b) if active.as_ref().is_some_and(|a| a.id == id) => {
                        up.push_back(ToAgent::Data { payload_type: PayloadType::OUTPUT, payload: b, priority: Priority::Data });
                        None
                    }
                    ReadEvent::Eof(id) => Some(id),
                    ReadEvent::Failed(id, e) => {
                        tracing::debug!("reading the local connection failed: {e}");
                        Some(id)
                    }
                    ReadEvent::Data(..) => None,
                };
                if let Some(id) = ended {
                    if active.as_ref().is_some_and(|a| a.id == id) {
                        // The writer still delivers what it holds, then closes.
                        active = None;
                        up.push_back(ToAgent::Flag(FlagValue::DisconnectToPort));
                    }
                }
            }
            Some((id, r)) = done_rx.recv() => {
                if let Err(e) = r {
                    if active.as_ref().is_some_and(|a| a.id == id) {
                        tracing::debug!("writing the local connection failed: {e}");
                        active = None;
                        pending.clear();
                        up.push_back(ToAgent::Flag(FlagValue::DisconnectToPort));
                    }
                }
            }
            _ = async { if let Some(tx) = &blocked { let _ = tx.reserve().await; } }, if blocked.is_some() => {}
            msg = ctx.from_agent.recv(), if take_agent => match msg {
                Some(FromAgent::Message { payload_type: PayloadType::OUTPUT, payload }) => {
                    if active.is_some() || !had_client {
                        pending.push_back(payload);
                    }
                }
                Some(FromAgent::Message { payload_type: PayloadType::FLAG, payload }) => {
                    if FlagValue::from_payload(&payload) == Some(FlagValue::ConnectToPortError) {
                        if let Err(e) = ctx.ui.status(CONNECT_ERROR_LINE) {
                            return output_error(&e);
                        }
                    }
                }
                Some(FromAgent::Message { .. }) => {}
                None => stop = true,
            },
        }
        if stop {
            return HandlerExit::Done;
        }
    }
}
