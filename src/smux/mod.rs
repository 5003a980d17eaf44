//! The stream multiplexer spoken inside port-forwarding sessions with agents newer than
//! 3.0.196.0: xtaci/smux protocol version 1 (the agent runs smux v1.5.15 as the server, the Go
//! plugin v1.5.16 as the client; the two are identical on the wire).
//!
//! Sans-IO: a [`Mux`] owns no socket, no task and no clock. The driver feeds it the peer's bytes
//! ([`Mux::handle_input`]) and the time ([`Mux::handle_timeout`]), issues commands
//! ([`Mux::open_stream`], [`Mux::write`], [`Mux::close_write`], [`Mux::close`]) and drains the
//! results. After every input or command, drain in this order:
//! 1. [`Mux::poll_output`] until `None`: bytes for the peer (here: the payload of Output messages);
//! 2. [`Mux::poll_event`] until `None`: what the peer did to the streams;
//! 3. [`Mux::poll_timeout`]: when to call [`Mux::handle_timeout`] next (spurious calls are harmless).
//!
//! Protocol facts this module relies on (xtaci/smux v1.5.15 `session.go`, `stream.go`):
//! - The client's stream ids are odd and start at 3, the server's even and start at 2.
//! - Opening a stream is one SYN; the other side does not answer it.
//! - Writes go out as PSH frames of at most `MaxFrameSize` (32768) data bytes.
//! - Version 1 has no flow control: the receiver's `MaxReceiveBuffer` only stops it from reading
//!   the connection. Here every frame is turned into an event at once, so back-pressure is the
//!   driver's job (stop feeding input while its per-stream buffers are full).
//! - xtaci's `Stream.Close` sends FIN and forgets the stream at once, so a v1 peer silently drops
//!   data (and FIN) that arrives for a stream it has closed; PSH and FIN for unknown ids are read
//!   and discarded, never an error. Only a wrong version byte or an undefined command ends the
//!   session. This Mux also lets a side keep receiving after its own FIN ([`Mux::close_write`]),
//!   which is safe with xtaci peers because their FIN only follows their own close.
//! - Keep-alive: a NOP (stream id 0) every interval, and every timeout period the session dies if
//!   no frame at all arrived during that period. The Go plugin turns it off iff the agent is newer
//!   than 3.1.1511.0, the agent iff the client is newer than 1.2.331.0; the caller decides, through
//!   [`MuxConfig::keep_alive`].

pub mod frame;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};
use frame::{Cmd, FrameError, HEADER_LEN};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The protocol version both real peers use.
pub const VERSION: u8 = 1;
/// xtaci's default `MaxFrameSize`: the largest PSH data either real peer sends.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 32768;
/// Default bound on the partial frame held between [`Mux::handle_input`] calls: the largest frame
/// the u16 length field allows, so any frame a peer may legally send is accepted.
pub const DEFAULT_MAX_FRAME_BUFFER_BYTES: usize = frame::MAX_FRAME_LEN;
/// At most this many peer-opened streams are tracked at once; further SYNs are ignored so a
/// hostile peer cannot grow our memory without bound.
pub const MAX_PEER_STREAMS: usize = 65536;

/// A stream identifier.
pub type StreamId = u32;

/// Which end of the smux session we are; decides the parity of the stream ids we allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Go plugin's end: opens streams with odd ids 3, 5, 7, ...
    Client,
    /// The agent's end: accepts the client's streams; would open even ids 2, 4, ...
    Server,
}

/// Keep-alive timing (xtaci `KeepAliveInterval` / `KeepAliveTimeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// How often a NOP is sent.
    pub interval: Duration,
    /// The length of each period in which at least one frame must arrive.
    pub timeout: Duration,
}

impl KeepAlive {
    /// xtaci's `DefaultConfig`: NOP every 10 s, dead after a 30 s period without input.
    pub const DEFAULT: KeepAlive = KeepAlive {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(30),
    };
}

/// Configuration of a [`Mux`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxConfig {
    /// Our end of the session.
    pub role: Role,
    /// `None` disables keep-alive (what newer peers agree on, see the module docs).
    pub keep_alive: Option<KeepAlive>,
    /// Largest PSH data we send in one frame; clamped to 1..=65535.
    pub max_frame_size: usize,
    /// Largest frame (header included) we are willing to buffer from the peer; a frame announcing
    /// more is a fatal error. Clamped to at least one header.
    pub max_frame_buffer_bytes: usize,
}

impl MuxConfig {
    /// xtaci's defaults (frame size 32768) for `role`, with the given keep-alive choice.
    pub fn new(role: Role, keep_alive: Option<KeepAlive>) -> Self {
        MuxConfig {
            role,
            keep_alive,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_frame_buffer_bytes: DEFAULT_MAX_FRAME_BUFFER_BYTES,
        }
    }
}

/// What the peer did; drained with [`Mux::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// The peer opened a stream (server role only; a client ignores SYNs, as the Go plugin never
    /// accepts streams).
    Opened(StreamId),
    /// Data for a stream, in order.
    Data(StreamId, Bytes),
    /// The peer half-closed the stream: no more data will come on it.
    Fin(StreamId),
    /// FIN went both ways: the stream is forgotten, and its id no longer accepted by commands.
    Closed(StreamId),
    /// Nothing arrived for a whole keep-alive period: the session is dead, every stream is gone.
    KeepAliveTimeout,
}

/// Errors from [`Mux`] commands and input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The peer's byte stream is not smux; the session is dead.
    #[error(
        "smux protocol error from the peer: {0}; the session cannot continue, start a new one"
    )]
    Frame(#[from] FrameError),
    /// The peer speaks another smux version; the session is dead.
    #[error("the peer sent smux protocol version {0}, but only version 1 is supported; the session cannot continue, start a new one")]
    UnsupportedVersion(u8),
    /// The peer announced a frame larger than we buffer; the session is dead.
    #[error("the peer sent a {len}-byte smux frame, larger than the {max}-byte limit; the session cannot continue, start a new one")]
    FrameTooLarge {
        /// The announced frame size, header included.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A command named a stream that was never opened or is already closed (caller bug).
    #[error("smux stream {0} is not open (never opened, or already closed)")]
    UnknownStream(StreamId),
    /// A write on a stream after [`Mux::close_write`] (caller bug).
    #[error("smux stream {0} is closed for writing")]
    StreamWriteClosed(StreamId),
    /// All stream ids of our parity are used up; xtaci calls this "go away".
    #[error("smux stream ids are exhausted; start a new session")]
    StreamIdsExhausted,
    /// The session died earlier (protocol error or keep-alive timeout).
    #[error("the smux session is closed after an earlier error or keep-alive timeout; start a new session")]
    Closed,
}

#[derive(Debug, Default)]
struct StreamState {
    /// We sent FIN.
    write_closed: bool,
    /// The peer sent FIN.
    read_closed: bool,
}

#[derive(Debug)]
struct KeepAliveTimers {
    config: KeepAlive,
    next_nop: Instant,
    next_check: Instant,
    /// A frame arrived since the last check (xtaci `dataReady`).
    received: bool,
}

/// One smux session, sans-IO. See the module docs for the driving contract.
#[derive(Debug)]
pub struct Mux {
    role: Role,
    max_frame_size: usize,
    max_frame_buffer_bytes: usize,
    /// The id most recently allocated by [`Mux::open_stream`] (xtaci starts it at 1 / 0).
    last_stream_id: u32,
    streams: HashMap<StreamId, StreamState>,
    /// At most one partial frame from the peer.
    input: BytesMut,
    output: BytesMut,
    events: VecDeque<MuxEvent>,
    keep_alive: Option<KeepAliveTimers>,
    dead: bool,
}

impl Mux {
    /// A new session starting at `now` (keep-alive periods count from here).
    pub fn new(config: MuxConfig, now: Instant) -> Self {
        let keep_alive = config.keep_alive.map(|k| {
            // A zero period would make the timers fire in a loop.
            let config = KeepAlive {
                interval: k.interval.max(Duration::from_millis(1)),
                timeout: k.timeout.max(Duration::from_millis(1)),
            };
            KeepAliveTimers {
                config,
                next_nop: now + config.interval,
                next_check: now + config.timeout,
                received: false,
            }
        });
        Mux {
            role: config.role,
            max_frame_size: config.max_frame_size.clamp(1, frame::MAX_DATA_LEN),
            max_frame_buffer_bytes: config.max_frame_buffer_bytes.max(HEADER_LEN),
            last_stream_id: match config.role {
                Role::Client => 1,
                Role::Server => 0,
            },
            streams: HashMap::new(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            keep_alive,
            dead: false,
        }
    }

    /// Opens a stream: queues its SYN and returns its id (client: 3, 5, 7, ...).
    pub fn open_stream(&mut self) -> Result<StreamId, MuxError> {
        if self.dead {
            return Err(MuxError::Closed);
        }
        let id = self
            .last_stream_id
            .checked_add(2)
            .ok_or(MuxError::StreamIdsExhausted)?;
        self.last_stream_id = id;
        // A server-role peer could have SYN'd this id only with the wrong parity, which
        // on_frame refuses, so the id is free.
        self.streams.insert(id, StreamState::default());
        self.push_frame(Cmd::Syn, id, &[]);
        Ok(id)
    }

    /// Queues `data` for stream `id` as PSH frames of at most `max_frame_size` bytes each.
    /// Empty data queues nothing.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<(), MuxError> {
        let stream = self.stream_for_command(id)?;
        if stream.write_closed {
            return Err(MuxError::StreamWriteClosed(id));
        }
        for chunk in data.chunks(self.max_frame_size) {
            self.push_frame(Cmd::Psh, id, chunk);
        }
        Ok(())
    }

    /// Half-closes stream `id`: queues FIN; no more writes. The peer may still send data until it
    /// sends FIN too. Closing an already write-closed stream does nothing.
    pub fn close_write(&mut self, id: StreamId) -> Result<(), MuxError> {
        let stream = self.stream_for_command(id)?;
        if stream.write_closed {
            return Ok(());
        }
        stream.write_closed = true;
        let done = stream.read_closed;
        self.push_frame(Cmd::Fin, id, &[]);
        if done {
            self.streams.remove(&id);
            self.events.push_back(MuxEvent::Closed(id));
        }
        Ok(())
    }

    /// Closes stream `id` both ways at once, like xtaci's `Stream.Close`: queues FIN unless sent
    /// already and forgets the stream; later data and FIN from the peer for it are dropped. No
    /// event follows. For local errors where waiting for the peer's FIN is pointless.
    pub fn close(&mut self, id: StreamId) -> Result<(), MuxError> {
        let stream = self.stream_for_command(id)?;
        let send_fin = !stream.write_closed;
        self.streams.remove(&id);
        if send_fin {
            self.push_frame(Cmd::Fin, id, &[]);
        }
        Ok(())
    }

    /// Feeds bytes received from the peer, chunked any way.
    ///
    /// An error is fatal: the session is dead afterwards (as xtaci closes it), every stream is
    /// gone and later calls fail with [`MuxError::Closed`]. Events decoded before the error stay
    /// queued.
    pub fn handle_input(&mut self, _now: Instant, mut bytes: &[u8]) -> Result<(), MuxError> {
        if self.dead {
            return Err(MuxError::Closed);
        }
        loop {
            match frame::decode(&mut self.input) {
                Ok(Some(f)) => {
                    self.on_frame(f)?;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(self.fail(e.into())),
            }
            // Take only what completes the current header or frame, so `input` never holds more
            // than one frame however large the caller's chunk is.
            let want = match frame::frame_len(&self.input) {
                Ok(Some(len)) => len,
                Ok(None) => HEADER_LEN,
                Err(e) => return Err(self.fail(e.into())),
            };
            if want > self.max_frame_buffer_bytes {
                return Err(self.fail(MuxError::FrameTooLarge {
                    len: want,
                    max: self.max_frame_buffer_bytes,
                }));
            }
            if bytes.is_empty() {
                return Ok(());
            }
            let take = (want - self.input.len()).min(bytes.len());
            self.input.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }

    /// Runs the keep-alive timers: queues a NOP when one is due, and declares the session dead
    /// ([`MuxEvent::KeepAliveTimeout`]) when a whole period passed without input. Calls before the
    /// next deadline do nothing; after a long gap each timer fires once, not once per missed tick.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        let Some(ka) = self.keep_alive.as_mut() else {
            return;
        };
        let mut send_nop = false;
        let mut timed_out = false;
        if now >= ka.next_nop {
            send_nop = true;
            ka.next_nop = next_tick(ka.next_nop, ka.config.interval, now);
        }
        if now >= ka.next_check {
            if ka.received {
                ka.received = false;
                ka.next_check = next_tick(ka.next_check, ka.config.timeout, now);
            } else {
                timed_out = true;
            }
        }
        if timed_out {
            tracing::debug!("smux keep-alive timeout: no frame from the peer for a whole period");
            self.kill();
            self.events.push_back(MuxEvent::KeepAliveTimeout);
        } else if send_nop {
            self.push_frame(Cmd::Nop, 0, &[]);
        }
    }

    /// Bytes to send to the peer, everything queued so far in one piece; `None` when idle.
    pub fn poll_output(&mut self) -> Option<Bytes> {
        if self.output.is_empty() {
            None
        } else {
            Some(self.output.split().freeze())
        }
    }

    /// Bytes queued for the peer and not yet taken with [`Mux::poll_output`].
    pub fn pending_output_len(&self) -> usize {
        self.output.len()
    }

    /// The next event, in the order the peer's frames arrived.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    /// When [`Mux::handle_timeout`] should run next; `None` when keep-alive is off or the session
    /// is dead.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.dead {
            return None;
        }
        self.keep_alive
            .as_ref()
            .map(|ka| ka.next_nop.min(ka.next_check))
    }

    /// Streams that are open in at least one direction.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Whether the session died (protocol error or keep-alive timeout).
    pub fn is_closed(&self) -> bool {
        self.dead
    }

    fn stream_for_command(&mut self, id: StreamId) -> Result<&mut StreamState, MuxError> {
        if self.dead {
            return Err(MuxError::Closed);
        }
        self.streams.get_mut(&id).ok_or(MuxError::UnknownStream(id))
    }

    fn push_frame(&mut self, cmd: Cmd, id: StreamId, data: &[u8]) {
        // Every caller passes at most max_frame_size (<= 65535) bytes, so the length fits.
        frame::encode_header(VERSION, cmd, id, data.len(), &mut self.output)
            .expect("frame data is at most max_frame_size <= 65535 bytes");
        self.output.extend_from_slice(data);
    }

    fn on_frame(&mut self, f: frame::Frame) -> Result<(), MuxError> {
        if let Some(ka) = self.keep_alive.as_mut() {
            ka.received = true;
        }
        if f.version != VERSION {
            return Err(self.fail(MuxError::UnsupportedVersion(f.version)));
        }
        let id = f.stream_id;
        match f.cmd {
            Cmd::Nop => {}
            Cmd::Upd => {
                // A v1 xtaci peer never sends UPD; xtaci v1 reads it and only stores the window.
                tracing::debug!(
                    stream_id = id,
                    "smux: ignoring UPD frame in protocol version 1"
                );
            }
            Cmd::Syn => self.on_syn(id),
            Cmd::Fin => match self.streams.get_mut(&id) {
                Some(s) if !s.read_closed => {
                    s.read_closed = true;
                    let done = s.write_closed;
                    self.events.push_back(MuxEvent::Fin(id));
                    if done {
                        self.streams.remove(&id);
                        self.events.push_back(MuxEvent::Closed(id));
                    }
                }
                Some(_) => tracing::debug!(stream_id = id, "smux: dropping repeated FIN"),
                None => tracing::debug!(stream_id = id, "smux: dropping FIN for unknown stream"),
            },
            Cmd::Psh => {
                if f.data.is_empty() {
                    return Ok(());
                }
                match self.streams.get(&id) {
                    Some(s) if !s.read_closed => {
                        self.events.push_back(MuxEvent::Data(id, f.data));
                    }
                    Some(_) => tracing::debug!(
                        stream_id = id,
                        len = f.data.len(),
                        "smux: dropping data after the peer's FIN"
                    ),
                    None => tracing::debug!(
                        stream_id = id,
                        len = f.data.len(),
                        "smux: dropping data for unknown or closed stream"
                    ),
                }
            }
        }
        Ok(())
    }

    fn on_syn(&mut self, id: StreamId) {
        let ours = match self.role {
            Role::Client => {
                tracing::debug!(stream_id = id, "smux: client ignores SYN from the server");
                return;
            }
            Role::Server => id % 2 == 0,
        };
        if ours {
            tracing::debug!(stream_id = id, "smux: ignoring SYN with our own id parity");
        } else if self.streams.contains_key(&id) {
            tracing::debug!(stream_id = id, "smux: ignoring SYN for an open stream");
        } else if self.streams.len() >= MAX_PEER_STREAMS {
            tracing::warn!(
                stream_id = id,
                "smux: ignoring SYN, too many open streams ({MAX_PEER_STREAMS})"
            );
        } else {
            self.streams.insert(id, StreamState::default());
            self.events.push_back(MuxEvent::Opened(id));
        }
    }

    /// Marks the session dead after a fatal input error and returns the error.
    fn fail(&mut self, err: MuxError) -> MuxError {
        tracing::debug!(error = %err, "smux session failed");
        self.kill();
        err
    }

    fn kill(&mut self) {
        self.dead = true;
        self.streams.clear();
        self.input = BytesMut::new();
    }
}

/// The first tick of a ticker with phase `last` and `period` that lies after `now`.
fn next_tick(last: Instant, period: Duration, now: Instant) -> Instant {
    let behind = now.saturating_duration_since(last).as_nanos();
    let period_ns = period.as_nanos().max(1);
    let ticks = behind / period_ns + 1;
    let ahead =
        Duration::from_nanos(u64::try_from(ticks.saturating_mul(period_ns)).unwrap_or(u64::MAX));
    last.checked_add(ahead).unwrap_or(now + period)
}
