//! The session lifecycle as a sans-IO state machine: start (connect, handshake, KMS), outage
//! (resume within a budget), and end (drain, tell the agent, one exit status).
//!
//! It sits above [`Channel`] and speaks the same verbs: the driver feeds it what happened
//! (`handle_frame`, `handle_timeout`, `handle_local`, `transport_lost`, `transport_restored`,
//! `connect_failed`, `resume_failed`, `data_key`, `terminate_done`) with the current time, and
//! polls what to do (`poll_transmit`, `poll_event`, `poll_delivery`, `poll_timeout`). It never
//! reads the clock, touches a socket or waits: every give-up is a deadline it returns from
//! `poll_timeout`, so a session always reaches [`Event::Ended`] within its timers, and the
//! edges (leaving during an outage, telling the agent when we go, which status we exit with)
//! are tested with simulated time in `core_tests.rs`.
//!
//! Call order, after any input: `poll_event` until `None`, then `poll_delivery` while the
//! handler has room (deliveries may queue new events), then `poll_transmit` until `None`, then
//! sleep until `poll_timeout`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::handler::{HandlerExit, LocalEnd};
use super::handshake::{self, SessionKind};
use super::port::params::{self as port_params, PortParameters};
use crate::channel::{self, Channel, Priority};
use crate::exit::Exit;
use crate::wire::{self, FlagValue, PayloadType, SizeData};

/// How long an ending waits for the agent to acknowledge more of what we sent last, and how
/// long a handler gets to flush once the session is over.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long telling the agent we leave may take: first the TerminateSession flag's ack, then
/// the TerminateSession API call.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a resume may take when the connection drops while a local end waits for acks.
pub const RESUME_WHILE_ENDING: Duration = Duration::from_secs(10);
/// Agents above this version understand the TerminateSession flag.
pub const TERMINATE_FLAG_MIN_AGENT: &str = "2.3.722.0";
/// Attempts at the first connection before giving up (the reference retries 5 times, then
/// hangs forever). Each is bounded by the transport's own limits (an upgrade that never
/// answers: 15 s), so a silent service costs about 45 s; the error says so.
pub const CONNECT_ATTEMPTS: u32 = 3;
/// First pause between connection or resume attempts; it doubles up to [`RETRY_MAX_DELAY`].
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between two resume attempts.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
/// A connection that lived this long (or delivered a frame) ended an outage: a later loss starts
/// a new reconnection window instead of continuing the old one.
const STABLE_LINK: Duration = Duration::from_secs(10);
/// Data the handler gave us while the send window was full, in order. Beyond it we stop taking
/// the handler's data, which back-pressures the handler.
const MAX_HELD: usize = 16;
/// Agent messages taken from the channel ahead of the handler; beyond it the channel's own
/// queue fills and we stop reading the websocket (back-pressure towards the agent).
const MAX_INBOX: usize = 64;
/// The reference's line when a port session is ended by a signal.
pub const TERMINATE_LINE: &str = "Terminate signal received, exiting.\n";

/// Settings of one session.
#[derive(Debug, Clone)]
pub struct Config {
    /// The session id, for messages.
    pub session_id: String,
    /// Reliability settings.
    pub channel: channel::Config,
    /// Budget for resuming one outage.
    pub reconnect_timeout: Duration,
    /// How long the agent has to start the session.
    pub start_timeout: Duration,
    /// The 4-argument CLI form, which cannot do KMS.
    pub legacy_cli: bool,
    /// The local terminal's size, sent first when the user is at a terminal.
    pub initial_size: Option<SizeData>,
    /// Liveness checks of the websocket (see [`liveness`]); `None`: off.
    pub liveness: Option<LivenessConfig>,
    /// The marker behind which a wrapped command prints its exit status (see [`marker`]).
    pub status_marker: Option<String>,
}

/// A local signal, already read by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT.
    Interrupt,
    /// SIGQUIT.
    Quit,
    /// SIGTSTP.
    Suspend,
    /// SIGTERM.
    Terminate,
    /// SIGHUP.
    HangUp,
}

impl Signal {
    /// The status of a process that leaves on this signal once the agent knows: 128 + N for
    /// SIGTERM and SIGHUP, 0 for the others (Ctrl-C ends a forward normally).
    pub fn leaving_exit(self) -> Exit {
        match self {
            Self::Terminate | Self::HangUp => Exit::Signal(self.number()),
            _ => Exit::Normal,
        }
    }

    fn number(self) -> i32 {
        match self {
            Self::Interrupt => 2,
            Self::Quit => 3,
            Self::Suspend => 20,
            Self::Terminate => 15,
            Self::HangUp => 1,
        }
    }
}

/// Something that happened on our side.
#[derive(Debug)]
pub enum Local {
    /// The handler has a payload for the agent.
    Send {
        /// Its type.
        payload_type: PayloadType,
        /// Its bytes.
        payload: Bytes,
        /// Control overtakes data.
        priority: Priority,
    },
    /// The handler sends a flag.
    Flag(FlagValue),
    /// Local input ended: end once the agent has everything.
    InputEnded,
    /// The user ends the session now.
    End(LocalEnd),
    /// A signal arrived.
    Signal(Signal),
    /// The handler returned.
    HandlerEnded(HandlerExit),
}

pub use crate::aws::ResumeFailure;
pub use liveness::LivenessConfig;
pub use outage::{classify_resume, ResumeVerdict};

mod ending;
pub mod liveness;
pub mod marker;
mod outage;
mod start;
#[cfg(test)]
mod tests;

/// A data key from KMS: the plaintext for the channel's keys and the ciphertext for the agent.
pub struct DataKey {
    /// Plaintext key material (64 bytes), zeroed when dropped.
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
    /// The encrypted key, for the agent.
    pub ciphertext: Vec<u8>,
}

/// How the process reports the end, besides its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `Exiting session with sessionId: X.` (a status line).
    Exiting,
    /// The service's closing message: `SessionId: X : message` (a status line).
    ServiceMessage(String),
    /// `Cannot perform start session: <text>` on stderr: the session never started.
    Error(String),
    /// `Session <id> ended: <text>` on stderr: it had started, then failed (lost for good, a
    /// broken protocol, output that could not be written).
    Failed(String),
    /// A line of its own on stderr (the reference's `Session: X timed out.`).
    Plain(String),
    /// Nothing (nobody reads stdout any more).
    Quiet,
}

/// How a session ended: the one exit status and what to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The session ended because its connection was lost and could not be resumed (an outage
    /// that outlived the reconnect budget, or ResumeSession refused for good): a port forward
    /// may carry on in a new session ([`crate::session::run_forwarding`]).
    pub lost: bool,
    /// The exit status.
    pub exit: Exit,
    /// What to tell the user.
    pub report: Report,
}

impl Outcome {
    fn error(exit: Exit, text: impl Into<String>) -> Self {
        Self {
            lost: false,
            exit,
            report: Report::Error(text.into()),
        }
    }

    /// The connection is gone for good (see [`Outcome::lost`]).
    fn lost(mut self) -> Self {
        self.lost = true;
        self
    }
}

/// What the driver should do.
#[derive(Debug)]
pub enum Event {
    /// Open the first websocket (StreamUrl and token from the response).
    Connect,
    /// Call ResumeSession and open a websocket with the token it returns.
    Resume,
    /// Drop the current websocket and any connect or resume in flight.
    DropLink,
    /// Start the handler for this session type.
    StartHandler {
        /// The type.
        kind: SessionKind,
        /// SessionType Properties (port settings).
        properties: Value,
        /// The agent's version ("" without a handshake).
        agent_version: String,
    },
    /// Close the handler's queue: it flushes what it has and returns.
    StopHandler,
    /// Ask KMS for a data key.
    NeedDataKey {
        /// The session's key.
        key_id: String,
        /// The agent's challenge for the encryption context, if any.
        challenge: Option<String>,
    },
    /// Call the TerminateSession API (bounded by the driver; answer with `terminate_done`).
    TerminateApi,
    /// A status line (stdout, or stderr with `SESSION_MANAGER_PLUGIN_MESSAGES=stderr`).
    Status(String),
    /// A line on stderr.
    Warn(String),
    /// A notice on stderr while the session runs (reconnection).
    Notice(String),
    /// Send a websocket Ping on the current link (liveness check and keepalive).
    Ping,
    /// The session is over: exit with this.
    Ended(Outcome),
}

#[derive(Debug)]
enum Link {
    /// Opening the first websocket: `retry_at` is `None` while an attempt is in flight.
    Connecting {
        attempt: u32,
        retry_at: Option<Instant>,
        delay: Duration,
        /// When the first attempt began, to say how long all of them took.
        since: Instant,
    },
    Up {
        opened: Instant,
        confirmed: bool,
    },
    /// An outage.
    Down {
        deadline: Instant,
        reason: String,
        retry_at: Option<Instant>,
        delay: Duration,
        last_error: String,
    },
    /// No more websockets: the service closed the session, or we are leaving.
    Gone,
}

#[derive(Debug)]
enum Phase {
    /// No handshake request yet (and no output).
    AwaitingType,
    /// Handshake answered (or waiting for KMS to answer it).
    Handshake {
        kind: Option<SessionKind>,
        properties: Value,
        pending: Option<PendingKms>,
    },
    /// A handler runs.
    Running,
    /// Leaving: see [`Ending`].
    Ending(Ending),
    /// The outcome is decided; the handler flushes.
    Closing { outcome: Outcome, deadline: Instant },
    /// [`Event::Ended`] was emitted.
    Ended,
}

#[derive(Debug)]
struct PendingKms {
    plan: handshake::Plan,
    challenge: Option<String>,
}

/// How an ending completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Wait until the agent has acknowledged everything (at most [`DRAIN_TIMEOUT`] without
    /// progress).
    Drain,
    /// Tell the agent (flag, else API), bounded by [`TERMINATE_TIMEOUT`] each.
    Tell,
}

#[derive(Debug)]
enum Api {
    NotAsked,
    Asked(Instant),
    Answered,
}

#[derive(Debug)]
struct Ending {
    outcome: Outcome,
    mode: Mode,
    progress_at: Instant,
    acked: u64,
    flag_deadline: Option<Instant>,
    api: Api,
}

#[derive(Debug)]
enum Inbox {
    Message(PayloadType, Bytes),
    Closed(String),
}

/// One session's lifecycle. See the module doc for the call order.
pub struct Session {
    cfg: Config,
    ch: Channel,
    phase: Phase,
    link: Link,
    kind: Option<SessionKind>,
    properties: Value,
    agent_version: String,
    handler_running: bool,
    ever_confirmed: bool,
    closed_by_service: bool,
    outage_start: Option<Instant>,
    remote_exit: Option<i32>,
    type_deadline: Instant,
    held: VecDeque<(PayloadType, Bytes)>,
    /// The current link's liveness timers (`None` while no link is up, or when off).
    live: Option<liveness::Liveness>,
    /// The output's end, held back while it may be the status line of a wrapped command.
    status_tail: Option<marker::StatusTail>,
    inbox: VecDeque<Inbox>,
    events: VecDeque<Event>,
}

impl Session {
    /// A new session at `now`; its first event is [`Event::Connect`].
    pub fn new(cfg: Config, now: Instant, created_epoch_ms: u64) -> Self {
        let mut ccfg = cfg.channel.clone();
        ccfg.created_epoch_ms = created_epoch_ms;
        let mut ch = Channel::new(ccfg, now);
        if let Some(size) = cfg.initial_size {
            // First of all, so the remote pty has our size before its first prompt: the agent
            // holds it back (no ack, so we resend) until its pty exists.
            let _ = ch.send(
                now,
                PayloadType::SIZE,
                Bytes::from(wire::to_vec(&size)),
                Priority::Control,
            );
        }
        let status_tail = cfg.status_marker.as_deref().map(marker::StatusTail::new);
        Self {
            type_deadline: now + cfg.start_timeout,
            cfg,
            ch,
            phase: Phase::AwaitingType,
            link: Link::Connecting {
                attempt: 1,
                retry_at: None,
                delay: RETRY_FIRST_DELAY,
                since: now,
            },
            kind: None,
            properties: Value::Null,
            agent_version: String::new(),
            handler_running: false,
            ever_confirmed: false,
            closed_by_service: false,
            outage_start: None,
            remote_exit: None,
            held: VecDeque::new(),
            live: None,
            status_tail,
            inbox: VecDeque::new(),
            events: VecDeque::from([Event::Connect]),
        }
    }

    /// Whether the driver should read the websocket now (back-pressure).
    pub fn wants_input(&self) -> bool {
        matches!(self.link, Link::Up { .. })
            && self.ch.wants_input()
            && self.inbox.len() < MAX_INBOX
            && !matches!(self.phase, Phase::Ended)
    }

    /// Whether the driver should take the handler's next payload now.
    pub fn wants_local_data(&self) -> bool {
        self.held.len() < MAX_HELD
            && matches!(
                self.phase,
                Phase::Running | Phase::AwaitingType | Phase::Handshake { .. }
            )
    }

    /// Whether a connect or resume attempt may be in flight (else the driver drops it).
    pub fn wants_link(&self) -> bool {
        matches!(
            self.link,
            Link::Connecting { retry_at: None, .. } | Link::Down { retry_at: None, .. }
        ) && !matches!(self.phase, Phase::Ended | Phase::Closing { .. })
    }

    /// Whether [`Event::Ended`] was emitted.
    pub fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// The next websocket frame to send. Each frame that leaves makes room for held data, which
    /// moves into the channel here, so a paced or windowed transfer never waits for another
    /// input to go on.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !matches!(self.link, Link::Up { .. }) || self.is_ended() {
            return None;
        }
        let frame = match self.ch.poll_transmit(now) {
            Some(f) => Some(f),
            None if self.refill(now) => self.ch.poll_transmit(now),
            None => None,
        };
        if frame.is_some() {
            if let Some(l) = &mut self.live {
                l.sent(now);
            }
        }
        frame
    }

    /// Moves held data into the channel as far as it takes it; whether anything moved.
    pub(super) fn refill(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while self.ch.send_capacity() > 0 {
            let Some((t, p)) = self.held.pop_front() else {
                break;
            };
            if self.ch.send(now, t, p.clone(), Priority::Data).is_err() {
                self.held.push_front((t, p));
                break;
            }
            moved = true;
        }
        moved
    }

    /// Whether [`poll_event`](Self::poll_event) has something (deliveries can queue events).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next thing the driver should do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next agent payload for the handler. Call it only while the handler has room; a
    /// payload taken while no handler runs is for nobody and is dropped by the driver.
    pub fn poll_delivery(&mut self, now: Instant) -> Option<(PayloadType, Bytes)> {
        match self.inbox.pop_front()? {
            Inbox::Message(t, p) => {
                self.pump(now);
                Some((t, p))
            }
            Inbox::Closed(output) => {
                self.on_closed(now, output);
                None
            }
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next; `None` once ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |x| x.min(d)));
            }
        };
        match &self.phase {
            Phase::Ended => return None,
            Phase::Closing { deadline, .. } => return Some(*deadline),
            Phase::AwaitingType | Phase::Handshake { .. } => at(Some(self.type_deadline)),
            Phase::Running => {}
            Phase::Ending(e) => {
                if e.mode == Mode::Drain {
                    at(Some(e.progress_at + DRAIN_TIMEOUT));
                }
                at(e.flag_deadline);
                if let Api::Asked(d) = e.api {
                    at(Some(d));
                }
            }
        }
        match &self.link {
            Link::Connecting { retry_at, .. } => at(*retry_at),
            Link::Down {
                deadline, retry_at, ..
            } => {
                at(Some(*deadline));
                at(*retry_at);
            }
            Link::Up { .. } => {
                at(self.ch.poll_timeout());
                at(self.live.as_ref().map(|l| l.poll_timeout()));
            }
            Link::Gone => {}
        }
        t
    }

    /// A websocket message from the service.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        if self.is_ended() {
            return;
        }
        if let Link::Up { confirmed, .. } = &mut self.link {
            *confirmed = true;
        }
        if let Some(l) = &mut self.live {
            l.heard(now);
        }
        self.ever_confirmed = true;
        if let Err(e) = self.ch.handle_frame(now, frame) {
            tracing::warn!("dropping an undecodable message from the service: {e}");
        }
        self.pump(now);
    }

    /// The current link answered a ping (or the service pinged us): it works.
    pub fn link_alive(&mut self, now: Instant) {
        if let Some(l) = &mut self.live {
            l.heard(now);
        }
    }

    /// The machine woke from sleep (the driver saw the boot clock run ahead of the monotonic
    /// one): check the link at once instead of waiting out timers that slept too.
    pub fn woke(&mut self, now: Instant, slept: Duration) {
        if let Some(l) = &mut self.live {
            tracing::info!(
                "woke after about {} s asleep; checking the link",
                slept.as_secs()
            );
            if l.woke(now) == liveness::Verdict::Ping {
                self.events.push_back(Event::Ping);
            }
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.ch.is_idle() && self.held.is_empty()
    }

    /// Only the agent's port plugins act on the TerminateSession flag (shell plugins ignore
    /// flags), and only from 2.3.722.0 on; every other session is ended with the API.
    pub(super) fn flag_supported(&self) -> bool {
        self.is_port() && handshake::version_greater(&self.agent_version, TERMINATE_FLAG_MIN_AGENT)
    }

    pub(super) fn is_port(&self) -> bool {
        self.kind == Some(SessionKind::Port)
    }

    /// Moves data, events and endings along; called after every input.
    pub(super) fn pump(&mut self, now: Instant) {
        self.refill(now);
        while self.inbox.len() < MAX_INBOX && !self.is_ended() {
            let Some(ev) = self.ch.poll_event() else {
                break;
            };
            match ev {
                channel::Event::Message {
                    payload_type,
                    payload,
                    ..
                } => self.on_message(now, payload_type, payload),
                channel::Event::ChannelClosed { output } => {
                    self.closed_by_service = true;
                    if let Some(mut tail) = self.status_tail.take() {
                        let (rest, status) = tail.finish();
                        if !rest.is_empty() {
                            self.inbox
                                .push_back(Inbox::Message(PayloadType::OUTPUT, rest));
                        }
                        if self.remote_exit.is_none() {
                            self.remote_exit = status;
                        }
                    }
                    self.inbox.push_back(Inbox::Closed(output));
                }
                channel::Event::Paused => tracing::info!("the service paused our sending"),
                channel::Event::Resumed => tracing::info!("the service resumed our sending"),
                channel::Event::Failed(e) => self.on_channel_failed(now, e),
            }
        }
        // A close with nothing in front of it needs no handler to go on.
        if let Some(Inbox::Closed(_)) = self.inbox.front() {
            if !self.handler_running {
                if let Some(Inbox::Closed(output)) = self.inbox.pop_front() {
                    self.on_closed(now, output);
                }
            }
        }
        self.check_ending(now);
    }
}
