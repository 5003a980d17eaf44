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

/// How long we wait for the agent to tell us the session type (the reference waits forever).
pub const SESSION_TYPE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an ending waits for the agent to acknowledge more of what we sent last, and how
/// long a handler gets to flush once the session is over.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long telling the agent we leave may take: first the TerminateSession flag's ack, then
/// the TerminateSession API call.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a resume may take when the connection drops while a local end waits for acks.
pub const RESUME_WHILE_ENDING: Duration = Duration::from_secs(10);
/// The variable that allows more time to resume (named in the give-up message; the value
/// reaches us through [`Config::reconnect_timeout`]).
const RECONNECT_TIMEOUT_VARIABLE: &str = "SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT";
/// Agents above this version understand the TerminateSession flag.
pub const TERMINATE_FLAG_MIN_AGENT: &str = "2.3.722.0";
/// Attempts at the first connection before giving up (the reference retries 5 times, then
/// hangs forever).
const CONNECT_ATTEMPTS: u32 = 3;
/// First pause between connection or resume attempts; it doubles up to [`RETRY_MAX_DELAY`].
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between two resume attempts.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
/// A connection that lived this long (or delivered a frame) ended an outage: a later loss starts
/// a new reconnection window instead of continuing the old one.
const STABLE_LINK: Duration = Duration::from_secs(10);
/// Data the handler gave us while the send window was full, in order. Beyond it we stop taking
/// the handler's data, which back-pressures the handler.
const MAX_HELD: usize = 64;
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
    /// The 4-argument CLI form, which cannot do KMS.
    pub legacy_cli: bool,
    /// The local terminal's size, sent first when the user is at a terminal.
    pub initial_size: Option<SizeData>,
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

/// A resume failure, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeVerdict {
    /// The session is over.
    Expired,
    /// Retrying cannot help.
    Final(String),
    /// Worth another try within the budget.
    Retry(String),
}

/// Sorts a ResumeSession failure once: the session does not exist or ended, access denied, and
/// any other 4xx except throttling are final; network errors, throttling and 5xx are retried.
pub fn classify_resume(f: &ResumeFailure) -> ResumeVerdict {
    match f {
        ResumeFailure::Expired => ResumeVerdict::Expired,
        ResumeFailure::Network(m) => ResumeVerdict::Retry(m.clone()),
        ResumeFailure::Service {
            status,
            code,
            message,
        } => {
            let code = code.as_deref().unwrap_or("");
            let throttled = code.contains("Throttl")
                || code == "TooManyRequestsException"
                || code == "RequestLimitExceeded"
                || *status == Some(429);
            let final_code = matches!(
                code,
                "DoesNotExistException"
                    | "ValidationException"
                    | "InvalidParameterException"
                    | "AccessDeniedException"
                    | "AccessDenied"
                    | "UnrecognizedClientException"
                    | "InvalidClientTokenId"
                    | "ExpiredTokenException"
            );
            match status {
                _ if throttled => ResumeVerdict::Retry(message.clone()),
                _ if final_code => ResumeVerdict::Final(message.clone()),
                Some(s) if (400..500).contains(s) => ResumeVerdict::Final(message.clone()),
                _ => ResumeVerdict::Retry(message.clone()),
            }
        }
    }
}

/// A data key from KMS: the plaintext for the channel's keys and the ciphertext for the agent.
pub struct DataKey {
    /// Plaintext key material (64 bytes).
    pub plaintext: Vec<u8>,
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
    /// `Cannot perform start session: <text>` on stderr.
    Error(String),
    /// A line of its own on stderr (the reference's `Session: X timed out.`).
    Plain(String),
    /// Nothing (nobody reads stdout any more).
    Quiet,
}

/// How a session ended: the one exit status and what to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit status.
    pub exit: Exit,
    /// What to tell the user.
    pub report: Report,
}

impl Outcome {
    fn error(exit: Exit, text: impl Into<String>) -> Self {
        Self {
            exit,
            report: Report::Error(text.into()),
        }
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
        Self {
            type_deadline: now + SESSION_TYPE_TIMEOUT,
            cfg,
            ch,
            phase: Phase::AwaitingType,
            link: Link::Connecting {
                attempt: 1,
                retry_at: None,
                delay: RETRY_FIRST_DELAY,
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
            inbox: VecDeque::new(),
            events: VecDeque::from([Event::Connect]),
        }
    }

    // ----- getters -----

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

    /// The session type, once known.
    pub fn kind(&self) -> Option<&SessionKind> {
        self.kind.as_ref()
    }

    /// Channel counters, for logs.
    pub fn stats(&self) -> channel::Stats {
        self.ch.stats()
    }

    // ----- outputs -----

    /// The next websocket frame to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !matches!(self.link, Link::Up { .. }) || self.is_ended() {
            return None;
        }
        self.ch.poll_transmit(now)
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
        loop {
            match self.inbox.pop_front()? {
                Inbox::Message(t, p) => {
                    self.pump(now);
                    return Some((t, p));
                }
                Inbox::Closed(output) => {
                    self.on_closed(now, output);
                    return None;
                }
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
            Link::Up { .. } => at(self.ch.poll_timeout()),
            Link::Gone => {}
        }
        t
    }

    // ----- inputs -----

    /// A websocket message from the service.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        if self.is_ended() {
            return;
        }
        if let Link::Up { confirmed, .. } = &mut self.link {
            *confirmed = true;
        }
        self.ever_confirmed = true;
        if let Err(e) = self.ch.handle_frame(now, frame) {
            tracing::warn!("dropping an undecodable message from the service: {e}");
        }
        self.pump(now);
    }

    /// Time passed; acts on every deadline at or before `now` (early calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Ended => return,
            Phase::Closing { deadline, outcome } => {
                if now >= *deadline {
                    tracing::debug!("the session handler did not finish in time");
                    let outcome = outcome.clone();
                    self.finish(outcome);
                }
                return;
            }
            _ => {}
        }
        self.ch.handle_timeout(now);
        match &mut self.link {
            Link::Connecting { retry_at, .. } if retry_at.is_some_and(|r| now >= r) => {
                *retry_at = None;
                self.events.push_back(Event::Connect);
            }
            Link::Down {
                deadline,
                reason,
                last_error,
                ..
            } if now >= *deadline => {
                let text = format!(
                    "the connection to the Session Manager service was lost ({reason}) and could not be resumed within {} s: {last_error}\nCheck your network and AWS credentials (they must allow ssm:ResumeSession), or allow more time with {}=<seconds>.",
                    self.cfg.reconnect_timeout.as_secs(),
                    RECONNECT_TIMEOUT_VARIABLE
                );
                self.link = Link::Gone;
                self.events.push_back(Event::DropLink);
                if let Phase::Ending(_) = self.phase {
                    // Already leaving: the ending decides (it stops waiting for acks).
                } else {
                    self.end_now(now, Outcome::error(Exit::Unavailable, text));
                    return;
                }
            }
            Link::Down { retry_at, .. } if retry_at.is_some_and(|r| now >= r) => {
                *retry_at = None;
                self.events.push_back(Event::Resume);
            }
            _ => {}
        }
        if matches!(self.phase, Phase::AwaitingType | Phase::Handshake { .. })
            && now >= self.type_deadline
        {
            self.begin_end(
                now,
                Mode::Tell,
                Outcome::error(
                    Exit::Unavailable,
                    format!(
                        "the agent did not start the session within {} seconds; check that the target is online and its SSM Agent is running (aws ssm describe-instance-information)",
                        SESSION_TYPE_TIMEOUT.as_secs()
                    ),
                ),
            );
        }
        self.pump(now);
    }

    /// The websocket opened (first connection or a resume).
    pub fn transport_restored(&mut self, now: Instant) {
        let was_down = matches!(self.link, Link::Down { .. });
        if !self.wants_link() {
            // Nobody waits for this link any more.
            self.events.push_back(Event::DropLink);
            return;
        }
        self.link = Link::Up {
            opened: now,
            confirmed: false,
        };
        if was_down {
            self.ch.transport_restored(now);
            tracing::info!("session resumed");
            self.events
                .push_back(Event::Notice("Session resumed.".into()));
        }
        self.pump(now);
    }

    /// The first connection could not be opened. `usage` marks a failure that no retry can
    /// mend (a StreamUrl that is not a websocket URL).
    pub fn connect_failed(&mut self, now: Instant, error: String, usage: bool) {
        let Link::Connecting { attempt, delay, .. } = &mut self.link else {
            return;
        };
        if usage || *attempt >= CONNECT_ATTEMPTS {
            self.link = Link::Gone;
            let exit = if usage {
                Exit::Usage
            } else {
                Exit::Unavailable
            };
            self.end_now(now, Outcome::error(exit, error));
            return;
        }
        tracing::debug!("connection attempt {attempt} failed: {error}; retrying");
        *attempt += 1;
        let retry_at = now + *delay;
        *delay *= 2;
        self.link = Link::Connecting {
            attempt: *attempt,
            retry_at: Some(retry_at),
            delay: *delay,
        };
    }

    /// The websocket was lost. `refused`: the service closed it with 1008 (policy), i.e. it
    /// turned our token or the session away.
    pub fn transport_lost(&mut self, now: Instant, reason: &str, refused: bool) {
        if matches!(self.phase, Phase::Ended | Phase::Closing { .. }) {
            self.link = Link::Gone;
            return;
        }
        if self.closed_by_service || matches!(self.link, Link::Gone) {
            // The session is over; what is left is delivering its last events.
            self.link = Link::Gone;
            self.pump(now);
            return;
        }
        if refused && !self.ever_confirmed {
            self.link = Link::Gone;
            self.end_now(now, Outcome::error(
                Exit::Unavailable,
                format!("the Session Manager service refused the connection: {reason}; the session token may be expired or already used: start a new session"),
            ));
            return;
        }
        self.ch.transport_lost(now);
        let previous = std::mem::replace(&mut self.link, Link::Gone);
        if let Phase::Ending(e) = &self.phase {
            let idle = self.is_idle();
            if e.mode == Mode::Tell || idle {
                tracing::info!("connection lost while ending the session ({reason}); not resuming");
                self.pump(now);
                return;
            }
        }
        // A link that delivered nothing and lived briefly continues the outage it ended.
        let since = match previous {
            Link::Up { opened, confirmed } if !confirmed && now < opened + STABLE_LINK => {
                self.outage_start.unwrap_or(now)
            }
            _ => now,
        };
        self.outage_start = Some(since);
        let mut deadline = since + self.cfg.reconnect_timeout;
        if let Phase::Ending(e) = &self.phase {
            let left = (e.progress_at + DRAIN_TIMEOUT).saturating_duration_since(now);
            deadline = deadline.min(now + left.max(RESUME_WHILE_ENDING));
        }
        self.events.push_back(Event::Notice(format!(
            "\nConnection lost ({reason}); resuming session..."
        )));
        self.events.push_back(Event::Resume);
        self.link = Link::Down {
            deadline,
            reason: reason.to_owned(),
            retry_at: None,
            delay: RETRY_FIRST_DELAY / 2,
            last_error: String::new(),
        };
        self.pump(now);
    }

    /// A resume attempt failed.
    pub fn resume_failed(&mut self, now: Instant, failure: &ResumeFailure) {
        let Link::Down {
            deadline,
            reason,
            retry_at,
            delay,
            last_error,
            ..
        } = &mut self.link
        else {
            return;
        };
        if retry_at.is_some() {
            return;
        }
        match classify_resume(failure) {
            ResumeVerdict::Expired => {
                let text = format!("Session: {} timed out.", self.cfg.session_id);
                self.link = Link::Gone;
                self.end_now(
                    now,
                    Outcome {
                        exit: Exit::Unavailable,
                        report: Report::Plain(text),
                    },
                );
            }
            ResumeVerdict::Final(e) => {
                let text = format!(
                    "the connection to the Session Manager service was lost ({reason}) and the session cannot be resumed: {e}"
                );
                self.link = Link::Gone;
                self.end_now(now, Outcome::error(Exit::Unavailable, text));
            }
            ResumeVerdict::Retry(e) => {
                if e != *last_error {
                    tracing::warn!("resuming the session: {e}");
                }
                *last_error = e;
                let next = now + *delay;
                if next >= *deadline {
                    // Let the deadline say it; retrying past it is pointless.
                    *retry_at = Some(*deadline);
                } else {
                    *retry_at = Some(next);
                }
                *delay = (*delay * 2).min(RETRY_MAX_DELAY);
            }
        }
    }

    /// Something happened on our side.
    pub fn handle_local(&mut self, now: Instant, input: Local) {
        if self.is_ended() {
            return;
        }
        match input {
            Local::Send {
                payload_type,
                payload,
                priority,
            } => {
                if !self.wants_local_data() && self.held.len() >= MAX_HELD {
                    tracing::debug!("local data after the session began to end, dropped");
                    return;
                }
                if matches!(self.phase, Phase::Ending(_) | Phase::Closing { .. }) {
                    return;
                }
                let direct = priority == Priority::Control || self.held.is_empty();
                if !direct
                    || self
                        .ch
                        .send(now, payload_type, payload.clone(), priority)
                        .is_err()
                {
                    self.held.push_back((payload_type, payload));
                }
            }
            Local::Flag(f) => {
                let _ = self.ch.send(
                    now,
                    PayloadType::FLAG,
                    Bytes::copy_from_slice(&f.to_payload()),
                    Priority::Control,
                );
            }
            Local::InputEnded => {
                if matches!(self.phase, Phase::Running) {
                    tracing::debug!(stats = ?self.ch.stats(), "local input ended");
                    self.begin_end(
                        now,
                        Mode::Drain,
                        Outcome {
                            exit: Exit::Normal,
                            report: Report::Exiting,
                        },
                    );
                }
            }
            Local::End(why) => {
                tracing::debug!(?why, "the user ends the session");
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome {
                        exit: Exit::Normal,
                        report: Report::Exiting,
                    },
                );
            }
            Local::Signal(sig) => self.on_signal(now, sig),
            Local::HandlerEnded(exit) => self.on_handler_ended(now, exit),
        }
        self.pump(now);
    }

    /// KMS answered the data-key request.
    pub fn data_key(&mut self, now: Instant, key: Result<DataKey, String>) {
        let Phase::Handshake { pending, .. } = &mut self.phase else {
            return;
        };
        let Some(PendingKms {
            mut plan,
            challenge,
        }) = pending.take()
        else {
            return;
        };
        let keys = key.and_then(|k| {
            channel::crypto::SessionKeys::new(&k.plaintext)
                .map(|keys| (keys, k.ciphertext))
                .map_err(|e| {
                    format!("Error calling KMS GenerateDataKey API: unusable data key ({e})")
                })
        });
        let mut failure = None;
        if let Some(slot) = plan
            .actions
            .iter_mut()
            .find(|a| a.action_type == "KMSEncryption")
        {
            match keys {
                Ok((keys, blob)) => {
                    use base64::Engine;
                    let result = wire::KmsEncryptionResponse {
                        kms_cipher_text_key: base64::engine::general_purpose::STANDARD
                            .encode(&blob),
                        kms_cipher_text_hash: None,
                        // The challenge went into the encryption context; the agent then adds
                        // it to its Decrypt context (agents from 3.3.808.0).
                        challenge_acknowledgement: challenge.as_ref().map(|_| true),
                    };
                    slot.action_status = wire::ActionStatus::Success as i32;
                    slot.action_result = serde_json::to_value(&result).unwrap_or(Value::Null);
                    slot.error.clear();
                    self.ch.set_encryption(keys);
                }
                Err(text) => {
                    slot.error = format!("Failed to process action KMSEncryption: {text}");
                    failure = Some(slot.error.clone());
                }
            }
        }
        self.answer_handshake(now, plan);
        if let Some(msg) = failure {
            // The agent has our answer (it cancels the session); leave once it acknowledged it.
            self.begin_end(
                now,
                Mode::Drain,
                Outcome::error(
                    Exit::NoPerm,
                    format!("{msg}\nThis session requires KMS encryption: check that your credentials allow kms:GenerateDataKey on the session's KMS key (Session Manager preferences) in this region."),
                ),
            );
        }
        self.pump(now);
    }

    /// The TerminateSession API call finished (either way) or was abandoned.
    pub fn terminate_done(&mut self, now: Instant) {
        if let Phase::Ending(e) = &mut self.phase {
            e.api = Api::Answered;
        }
        self.pump(now);
    }

    // ----- internals -----

    fn is_idle(&self) -> bool {
        self.ch.is_idle() && self.held.is_empty()
    }

    fn flag_supported(&self) -> bool {
        handshake::version_greater(&self.agent_version, TERMINATE_FLAG_MIN_AGENT)
    }

    fn is_port(&self) -> bool {
        self.kind == Some(SessionKind::Port)
    }

    /// Moves data, events and endings along; called after every input.
    fn pump(&mut self, now: Instant) {
        while self.ch.send_capacity() > 0 {
            let Some((t, p)) = self.held.pop_front() else {
                break;
            };
            if self.ch.send(now, t, p.clone(), Priority::Data).is_err() {
                self.held.push_front((t, p));
                break;
            }
        }
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

    fn on_message(&mut self, now: Instant, payload_type: PayloadType, payload: Bytes) {
        match payload_type {
            PayloadType::HANDSHAKE_REQUEST => self.on_handshake_request(now, &payload),
            PayloadType::ENC_CHALLENGE_REQUEST => self.on_challenge(now, &payload),
            PayloadType::HANDSHAKE_COMPLETE => self.on_handshake_complete(now, &payload),
            _ => {
                if payload_type == PayloadType::EXIT_CODE {
                    self.remote_exit = wire::parse_exit_code(&payload).or(self.remote_exit);
                }
                if matches!(self.phase, Phase::AwaitingType) {
                    if payload_type != PayloadType::OUTPUT {
                        tracing::warn!(
                            "ignoring a {} payload before the session started",
                            payload_type.name()
                        );
                        return;
                    }
                    // No handshake: the agent does this for shells without KMS. Its first
                    // output starts the shell, as in the reference.
                    self.start_handler(SessionKind::StandardStream, Value::Null);
                }
                self.inbox.push_back(Inbox::Message(payload_type, payload));
            }
        }
    }

    fn on_handshake_request(&mut self, now: Instant, payload: &[u8]) {
        if !matches!(self.phase, Phase::AwaitingType) {
            tracing::debug!("a second handshake request, ignored");
            return;
        }
        let req: wire::HandshakeRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return self.protocol_error(
                    now,
                    format!("the agent sent an unreadable handshake request: {e}"),
                )
            }
        };
        let mut plan = handshake::plan(&req);
        self.agent_version = plan.agent_version.clone();
        tracing::debug!(agent_version = %plan.agent_version, kind = ?plan.kind, "handshake request");
        let kind = plan.kind.clone();
        let properties = plan.properties.clone();
        match plan.kms.take() {
            Some(kms) => {
                if self.cfg.legacy_cli {
                    self.phase = Phase::Handshake {
                        kind,
                        properties,
                        pending: Some(PendingKms {
                            plan,
                            challenge: kms.challenge,
                        }),
                    };
                    return self.data_key(now, Err("Installed version of CLI does not support Session Manager encryption feature. Please upgrade to the latest version of your CLI (e.g., AWS CLI).".into()));
                }
                self.events.push_back(Event::NeedDataKey {
                    key_id: kms.kms_key_id.clone(),
                    challenge: kms.challenge.clone(),
                });
                self.phase = Phase::Handshake {
                    kind,
                    properties,
                    pending: Some(PendingKms {
                        plan,
                        challenge: kms.challenge,
                    }),
                };
            }
            None => {
                self.phase = Phase::Handshake {
                    kind,
                    properties,
                    pending: None,
                };
                self.answer_handshake(now, plan);
            }
        }
    }

    fn answer_handshake(&mut self, now: Instant, plan: handshake::Plan) {
        // A KMS failure is reported when we exit (with its own status); others now.
        let failed: Vec<String> = plan
            .actions
            .iter()
            .filter(|a| {
                a.action_status != wire::ActionStatus::Success as i32
                    && a.action_type != "KMSEncryption"
            })
            .map(|a| a.error.clone())
            .collect();
        let resp = handshake::response(crate::cli::WIRE_VERSION, plan.actions);
        let _ = self.ch.send(
            now,
            PayloadType::HANDSHAKE_RESPONSE,
            Bytes::from(wire::to_vec(&resp)),
            Priority::Control,
        );
        if !failed.is_empty() {
            // The agent cancels the session on any failed action; say why now rather than
            // waiting for its channel_closed.
            self.events.push_back(Event::Warn(failed.join("\n")));
        }
    }

    fn on_challenge(&mut self, now: Instant, payload: &[u8]) {
        let req: wire::EncryptionChallenge = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return self.protocol_error(
                    now,
                    format!("the agent sent an unreadable encryption challenge: {e}"),
                )
            }
        };
        match self.ch.answer_encryption_challenge(&req.challenge) {
            None => self.protocol_error(
                now,
                "the agent sent an encryption challenge before asking for encryption".into(),
            ),
            Some(Err(e)) => self.begin_end(
                now,
                Mode::Tell,
                Outcome::error(
                    Exit::NoPerm,
                    format!("cannot answer the agent's encryption challenge: {e}"),
                ),
            ),
            Some(Ok(answer)) => {
                let resp = wire::EncryptionChallenge { challenge: answer };
                let _ = self.ch.send(
                    now,
                    PayloadType::ENC_CHALLENGE_RESPONSE,
                    Bytes::from(wire::to_vec(&resp)),
                    Priority::Control,
                );
            }
        }
    }

    fn on_handshake_complete(&mut self, now: Instant, payload: &[u8]) {
        let done: wire::HandshakeComplete = serde_json::from_slice(payload).unwrap_or_default();
        if !done.customer_message.is_empty() {
            self.events
                .push_back(Event::Status(format!("{}\n", done.customer_message)));
        }
        let Phase::Handshake {
            kind,
            properties,
            pending: None,
        } = &self.phase
        else {
            tracing::debug!("HandshakeComplete out of turn, ignored");
            return;
        };
        match kind.clone() {
            Some(kind) => {
                let properties = properties.clone();
                self.start_handler(kind, properties);
            }
            None => self.protocol_error(
                now,
                "Cannot perform start session: unable to determine SessionType".into(),
            ),
        }
    }

    fn start_handler(&mut self, kind: SessionKind, properties: Value) {
        self.kind = Some(kind.clone());
        self.properties = properties.clone();
        self.handler_running = true;
        self.phase = Phase::Running;
        self.events.push_back(Event::StartHandler {
            kind,
            properties,
            agent_version: self.agent_version.clone(),
        });
    }

    fn protocol_error(&mut self, now: Instant, text: String) {
        self.begin_end(now, Mode::Tell, Outcome::error(Exit::Protocol, text));
    }

    fn on_channel_failed(&mut self, now: Instant, e: channel::Error) {
        match e {
            channel::Error::TimedOut { .. } => {
                // The agent stopped acknowledging: the flag would not arrive either. End the
                // session on the service side with the API, as the reference does.
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome::error(Exit::Unavailable, e.to_string()),
                );
                if let Phase::Ending(end) = &mut self.phase {
                    end.flag_deadline = None;
                    if matches!(end.api, Api::NotAsked) {
                        end.api = Api::Asked(now + TERMINATE_TIMEOUT);
                        self.events.push_back(Event::TerminateApi);
                    }
                }
            }
            _ => self.begin_end(
                now,
                Mode::Tell,
                Outcome::error(Exit::Protocol, e.to_string()),
            ),
        }
    }

    /// The service's channel_closed reached the front of the inbox: everything before it was
    /// delivered.
    fn on_closed(&mut self, _now: Instant, output: String) {
        self.link = Link::Gone;
        self.events.push_back(Event::DropLink);
        let outcome = match &self.phase {
            // We were leaving anyway: our reason stands.
            Phase::Ending(e) => e.outcome.clone(),
            _ if output.is_empty() => Outcome {
                exit: self.remote_exit.map_or(Exit::Normal, Exit::Remote),
                report: Report::Exiting,
            },
            _ => Outcome {
                exit: self.remote_exit.map_or(Exit::ClosedWithError, Exit::Remote),
                report: Report::ServiceMessage(output),
            },
        };
        self.close(_now, outcome);
    }

    fn on_signal(&mut self, now: Instant, sig: Signal) {
        let in_shell = matches!(self.phase, Phase::Running) && !self.is_port();
        match (&self.phase, sig) {
            (
                Phase::Closing { outcome, .. },
                Signal::Terminate | Signal::HangUp | Signal::Interrupt,
            ) => {
                // The user insists: stop waiting for the handler.
                let outcome = outcome.clone();
                self.finish(outcome);
            }
            (Phase::Ending(e), Signal::Terminate | Signal::HangUp | Signal::Interrupt) => {
                let mut outcome = e.outcome.clone();
                if matches!(sig, Signal::Terminate | Signal::HangUp) && outcome.exit == Exit::Normal
                {
                    outcome.exit = Exit::Signal(sig.number());
                }
                self.close(now, outcome);
            }
            (Phase::Ending(_) | Phase::Closing { .. } | Phase::Ended, _) => {}
            (_, Signal::Interrupt | Signal::Quit | Signal::Suspend) if in_shell => {
                // The AWS CLI leaves these ignored; `kill` can still send them. As in the
                // reference they become Ctrl-C, Ctrl-\ and Ctrl-Z for the remote.
                let byte = match sig {
                    Signal::Interrupt => 0x03,
                    Signal::Quit => 0x1c,
                    _ => 0x1a,
                };
                let _ = self.ch.send(
                    now,
                    PayloadType::OUTPUT,
                    Bytes::copy_from_slice(&[byte]),
                    Priority::Control,
                );
            }
            (_, Signal::Suspend) => {}
            (Phase::Running, Signal::Interrupt | Signal::Quit) => {
                self.terminate_line();
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome {
                        exit: Exit::Normal,
                        report: Report::Exiting,
                    },
                );
            }
            (_, Signal::Interrupt | Signal::Quit) => {
                // Before the session started: the user gives up waiting.
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome {
                        exit: Exit::Interrupted,
                        report: Report::Exiting,
                    },
                );
            }
            (_, Signal::Terminate | Signal::HangUp) => {
                if self.is_port() {
                    self.terminate_line();
                }
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome {
                        exit: Exit::Signal(sig.number()),
                        report: Report::Exiting,
                    },
                );
            }
        }
    }

    /// The reference's line for a port session ended by a signal: a status line, or stderr
    /// when stdout carries the tunnel.
    fn terminate_line(&mut self) {
        let stdio = port_params::choose(
            &PortParameters::from_value(&self.properties),
            &self.agent_version,
        ) == port_params::Mode::Stdio;
        self.events.push_back(if stdio {
            Event::Warn(TERMINATE_LINE.trim_end().to_owned())
        } else {
            Event::Status(TERMINATE_LINE.to_owned())
        });
    }

    fn on_handler_ended(&mut self, now: Instant, exit: HandlerExit) {
        self.handler_running = false;
        if let Phase::Closing { outcome, .. } = &self.phase {
            let mut outcome = outcome.clone();
            if let HandlerExit::OutputFailed(e) = &exit {
                // The session's output was lost: that beats a clean end.
                if matches!(
                    outcome.exit,
                    Exit::Normal | Exit::Remote(_) | Exit::ClosedWithError
                ) {
                    outcome = output_failed(e);
                }
            }
            return self.finish(outcome);
        }
        let (mode, outcome) = match exit {
            HandlerExit::Done => (
                Mode::Drain,
                Outcome {
                    exit: Exit::Normal,
                    report: Report::Exiting,
                },
            ),
            HandlerExit::OutputClosed => (
                Mode::Tell,
                Outcome {
                    exit: Exit::Normal,
                    report: Report::Quiet,
                },
            ),
            HandlerExit::OutputFailed(e) => (Mode::Tell, output_failed(&e)),
            HandlerExit::Failed { exit, message } => (
                Mode::Tell,
                Outcome {
                    exit,
                    report: Report::Plain(message),
                },
            ),
        };
        self.begin_end(now, mode, outcome);
    }

    /// Starts leaving (once; a later reason does not replace the first).
    fn begin_end(&mut self, now: Instant, mode: Mode, outcome: Outcome) {
        if matches!(
            self.phase,
            Phase::Ending(_) | Phase::Closing { .. } | Phase::Ended
        ) {
            return;
        }
        tracing::debug!(?mode, ?outcome, stats = ?self.ch.stats(), "ending the session");
        let mut ending = Ending {
            outcome,
            mode,
            progress_at: now,
            acked: self.ch.stats().acked,
            flag_deadline: None,
            api: Api::NotAsked,
        };
        if mode == Mode::Tell {
            self.held.clear();
            if self.closed_by_service {
                // Nothing to tell.
            } else if matches!(self.link, Link::Up { .. }) && self.flag_supported() {
                let _ = self.ch.send(
                    now,
                    PayloadType::FLAG,
                    Bytes::copy_from_slice(&FlagValue::TerminateSession.to_payload()),
                    Priority::Control,
                );
                ending.flag_deadline = Some(now + TERMINATE_TIMEOUT);
            } else {
                // Agents without the flag, sessions whose agent sent no handshake, and no link
                // to send it on: the API, as the reference does for old agents.
                ending.api = Api::Asked(now + TERMINATE_TIMEOUT);
                self.events.push_back(Event::TerminateApi);
            }
            if matches!(self.link, Link::Down { .. } | Link::Connecting { .. }) {
                // Stop resuming: we are leaving.
                self.link = Link::Gone;
                self.events.push_back(Event::DropLink);
            }
        }
        self.phase = Phase::Ending(ending);
        self.check_ending(now);
    }

    /// Leaves at once with `outcome` (nothing to tell, or telling is pointless).
    fn end_now(&mut self, now: Instant, outcome: Outcome) {
        self.close(now, outcome);
    }

    fn check_ending(&mut self, now: Instant) {
        let idle = self.is_idle();
        let link_up = matches!(self.link, Link::Up { .. });
        let link_gone = matches!(self.link, Link::Gone);
        let closed = self.closed_by_service;
        let acked = self.ch.stats().acked;
        let Phase::Ending(e) = &mut self.phase else {
            return;
        };
        if acked != e.acked {
            e.acked = acked;
            e.progress_at = e.progress_at.max(now);
        }
        let done = match e.mode {
            Mode::Drain => {
                if idle || closed {
                    true
                } else if link_gone || now >= e.progress_at + DRAIN_TIMEOUT {
                    self.events.push_back(Event::Warn(
                        "Warning: the agent did not acknowledge the last data in time; exiting anyway."
                            .into(),
                    ));
                    true
                } else {
                    false
                }
            }
            Mode::Tell => {
                if closed || matches!(e.api, Api::Answered) {
                    true
                } else if let Api::Asked(d) = e.api {
                    now >= d
                } else if e.flag_deadline.is_some() && idle {
                    // The agent acknowledged everything, the flag included.
                    true
                } else if e.flag_deadline.is_some_and(|d| now >= d) || !link_up {
                    // The flag may not have reached the agent: the API instead.
                    e.flag_deadline = None;
                    e.api = Api::Asked(now + TERMINATE_TIMEOUT);
                    self.events.push_back(Event::TerminateApi);
                    false
                } else {
                    false
                }
            }
        };
        if done {
            let outcome = e.outcome.clone();
            self.close(now, outcome);
        }
    }

    /// The outcome is decided: let the handler flush, then end.
    fn close(&mut self, now: Instant, outcome: Outcome) {
        if matches!(self.phase, Phase::Closing { .. } | Phase::Ended) {
            return;
        }
        if self.handler_running {
            self.events.push_back(Event::StopHandler);
            self.phase = Phase::Closing {
                outcome,
                deadline: now + DRAIN_TIMEOUT,
            };
        } else {
            self.finish(outcome);
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.phase = Phase::Ended;
        self.link = Link::Gone;
        self.held.clear();
        self.inbox.clear();
        self.events.push_back(Event::DropLink);
        self.events.push_back(Event::Ended(outcome));
    }
}

fn output_failed(e: &str) -> Outcome {
    Outcome::error(
        Exit::Io,
        format!("cannot write the session's output ({e}); the rest of it is lost. Check where stdout goes (a full disk, a closed file)."),
    )
}
