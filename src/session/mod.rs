//! The session driver: one tokio task owns the websocket link, the clock and the [`Channel`]
//! state machine, decides the session type (from the handshake, or from the first output when
//! the agent sends none), answers the handshake, and hands in-order payloads to a session
//! handler task (shell, port) through bounded queues.
//!
//! Back-pressure runs end to end: the driver pulls an event from the channel only when the
//! handler's queue has room (so a slow terminal or socket stops our acks and so the agent), and
//! reads the handler's outgoing queue only while the channel's send window has room.

pub mod handshake;
pub mod port;
pub mod shell;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::aws::{Aws, ResumeError};
use crate::channel::{self, Channel, Event, Priority};
use crate::cli::{Secret, SessionArgs, WIRE_VERSION};
use crate::transport::{self, ConnectOptions, TransportError};
use crate::wire::{self, FlagValue, OpenDataChannelInput, PayloadType};
use handshake::SessionKind;

/// How long we wait for the agent to tell us the session type (the reference waits forever).
pub const SESSION_TYPE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long we wait, on a local exit, for the agent to acknowledge more of what we sent last.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed write, how long the reader gets to deliver what is already received.
const WRITE_FAILURE_GRACE: Duration = Duration::from_secs(1);
/// How long a resume may take when the connection drops while a local end waits for acks.
const RESUME_WHILE_ENDING: Duration = Duration::from_secs(10);
/// Websocket ping interval, as the reference.
pub const PING_INTERVAL: Duration = Duration::from_secs(300);
/// Agents above this version understand the TerminateSession flag.
pub const TERMINATE_FLAG_MIN_AGENT: &str = "2.3.722.0";
/// Default for how long we try to resume a lost connection
/// (`SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT`).
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest pause between two resume attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
/// A connection that lived this long (or delivered a frame) ended an outage: a later loss starts
/// a new reconnection window instead of continuing the old one.
const STABLE_LINK: Duration = Duration::from_secs(10);
/// Bound on the TerminateSession API call on the way out.
const TERMINATE_API_TIMEOUT: Duration = Duration::from_secs(5);

/// Where user-visible status lines go.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    /// Status lines on stderr instead of stdout (`SESSION_MANAGER_PLUGIN_MESSAGES=stderr`).
    pub to_stderr: bool,
}

impl Ui {
    /// Prints a status line such as `Starting session with SessionId: X`, byte-identical to the
    /// reference, where scripts look for it.
    pub fn status(&self, text: &str) {
        use std::io::Write;
        if self.to_stderr {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(text.as_bytes());
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(text.as_bytes());
            let _ = o.flush();
        }
    }

    /// Prints a warning or error for the user on stderr.
    pub fn warn(&self, text: &str) {
        use std::io::Write;
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{text}");
        let _ = e.flush();
    }
}

/// Everything the driver needs.
#[derive(Clone)]
pub struct Settings {
    /// From argv.
    pub args: SessionArgs,
    /// One per process, reused on every reconnection.
    pub client_id: uuid::Uuid,
    /// Status line placement.
    pub ui: Ui,
    /// Reliability settings.
    pub channel: channel::Config,
    /// Websocket settings.
    pub connect: ConnectOptions,
    /// Largest plaintext payload we send (the agent's StreamDataPayloadSize, 1024).
    pub max_payload: usize,
    /// Credentials, signing, KMS and the SSM calls.
    pub aws: Arc<Aws>,
    /// How long a lost connection may take to resume before we give up.
    pub reconnect_timeout: Duration,
}

/// A message from the agent for the session handler.
#[derive(Debug)]
pub enum FromAgent {
    /// An in-order payload.
    Message {
        /// Its type.
        payload_type: PayloadType,
        /// Its bytes (decrypted).
        payload: Bytes,
    },
    /// The session is over: flush, restore the terminal, return.
    End,
}

/// How a handler ends the session from the local side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The local side is done (stdin closed): exit once everything sent is acknowledged.
    AfterAcked,
    /// The user ended the session (`~.`, Ctrl-C on a port session): tell the agent, then exit.
    Terminate,
}

/// A message from the session handler for the agent.
#[derive(Debug)]
pub enum ToAgent {
    /// Send a payload.
    Data {
        /// Its type.
        payload_type: PayloadType,
        /// Its bytes (at most `max_payload`).
        payload: Bytes,
        /// Control messages overtake queued data.
        priority: Priority,
    },
    /// Send a Flag payload.
    Flag(FlagValue),
    /// End the session from our side.
    Finish(Finish),
}

/// What a handler gets.
pub struct HandlerContext {
    /// The session id.
    pub session_id: String,
    /// The session type.
    pub kind: SessionKind,
    /// SessionType Properties from the handshake (port settings), or null.
    pub properties: serde_json::Value,
    /// The agent's version, empty when it sent no handshake.
    pub agent_version: String,
    /// Payloads from the agent.
    pub from_agent: mpsc::Receiver<FromAgent>,
    /// Payloads for the agent.
    pub to_agent: mpsc::Sender<ToAgent>,
    /// Status lines.
    pub ui: Ui,
    /// Largest payload to send.
    pub max_payload: usize,
}

/// How a handler ended.
#[derive(Debug, Default)]
pub struct HandlerExit {
    /// A process exit status the handler decided on (e.g. 130 after a local interrupt).
    pub code: Option<i32>,
}

/// Why a session failed; each maps to one documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The websocket could not be opened.
    #[error("{0}")]
    Connect(#[from] TransportError),
    /// The websocket was lost and could not be resumed (the text says why and what to do).
    #[error("{0}")]
    ConnectionLost(String),
    /// ResumeSession said the session is over (`Session: <id> timed out.`).
    #[error("{0}")]
    SessionExpired(String),
    /// The reliability layer gave up or could not decrypt.
    #[error("{0}")]
    Channel(#[from] channel::Error),
    /// The handshake failed or the agent misbehaved.
    #[error("{0}")]
    Protocol(String),
    /// KMS refused or failed.
    #[error("{0}")]
    Encryption(String),
    /// A local I/O error (terminal, socket).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How a session ended, for the exit status.
#[derive(Debug)]
pub enum Ended {
    /// The service closed the channel; `output` is its message (empty on a normal end).
    Closed {
        /// The message.
        output: String,
        /// The remote command's exit status, if it sent one.
        exit_code: Option<i32>,
    },
    /// We ended it locally.
    Local {
        /// The handler's exit status, if any.
        code: Option<i32>,
    },
}

enum LinkIn {
    Frame(Vec<u8>),
    Lost {
        reason: String,
        /// The service closed with 1008 (policy): it refused our token or the session.
        refused: bool,
    },
}

/// One websocket connection: a reader task and a writer task around the split stream, so the
/// driver never blocks on the socket while it has protocol work to do.
struct Link {
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<LinkIn>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Link {
    async fn open(
        url: &str,
        token: &Secret,
        client_id: &uuid::Uuid,
        opts: &ConnectOptions,
    ) -> Result<Self, TransportError> {
        let ws = transport::connect(url, opts).await?;
        let (mut sink, mut stream) = ws.split();
        let open = OpenDataChannelInput {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: token.expose().to_owned(),
            client_id: client_id.to_string(),
            client_version: WIRE_VERSION.into(),
        };
        sink.send(Message::Text(open.to_json().into()))
            .await
            .map_err(|e| TransportError::Upgrade(format!("sending the session token: {e}")))?;
        let (tx, mut wrx) = mpsc::channel::<Message>(256);
        let (rtx, rx) = mpsc::channel::<LinkIn>(256);
        let lost_tx = rtx.clone();
        let writer = tokio::spawn(async move {
            let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
            loop {
                let msg = tokio::select! {
                    m = wrx.recv() => match m { Some(m) => m, None => break },
                    _ = ping.tick() => Message::Ping(Bytes::from_static(b"keepalive")),
                };
                if let Err(e) = sink.send(msg).await {
                    // The reader may still have the service's last messages (a channel_closed)
                    // to hand over before it sees the end too: give it a moment to go first.
                    tokio::time::sleep(WRITE_FAILURE_GRACE).await;
                    let _ = lost_tx
                        .send(LinkIn::Lost {
                            reason: format!("write failed: {e}"),
                            refused: false,
                        })
                        .await;
                    break;
                }
            }
        });
        let reader = tokio::spawn(async move {
            let mut refused = false;
            let reason = loop {
                match stream.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        if rtx.send(LinkIn::Frame(b.to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        if rtx
                            .send(LinkIn::Frame(t.as_bytes().to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        break match f {
                            Some(f) => {
                                refused = u16::from(f.code) == 1008;
                                format!("closed by the service: {} {}", u16::from(f.code), f.reason)
                            }
                            None => "closed by the service".to_owned(),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("read failed: {e}"),
                    None => break "connection closed".to_owned(),
                }
            };
            let _ = rtx.send(LinkIn::Lost { reason, refused }).await;
        });
        Ok(Self {
            tx,
            rx,
            tasks: [writer, reader],
        })
    }
}

/// Opens a connection to `url` with `token`, the upgrade signed with SigV4 unless the URL is
/// presigned or there are no credentials. `fresh` are credentials (and region) just resolved for
/// a resume; otherwise the session's are used.
async fn open_link(
    s: &Settings,
    url: &str,
    token: &Secret,
    fresh: Option<(&aws_credential_types::Credentials, &str)>,
) -> Result<Link, TransportError> {
    let mut opts = s.connect.clone();
    opts.extra_headers
        .extend(s.aws.upgrade_headers(url, fresh).await);
    Link::open(url, token, &s.client_id, &opts).await
}

/// Opens the first connection, retrying transient failures a few times within a bounded time
/// (the reference retries 5 times, then hangs forever).
async fn open_with_retries(s: &Settings) -> Result<Link, TransportError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match open_link(
            s,
            &s.args.response.stream_url,
            &s.args.response.token_value,
            None,
        )
        .await
        {
            Ok(l) => return Ok(l),
            Err(e @ TransportError::BadUrl(_)) => return Err(e),
            Err(e) if attempt >= 3 => return Err(e),
            Err(e) => {
                tracing::debug!("connection attempt {attempt} failed: {e}; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

enum Phase {
    /// Connected; no type yet.
    AwaitingType,
    /// Handshake answered; waiting for HandshakeComplete.
    AwaitingComplete {
        kind: Option<SessionKind>,
        properties: serde_json::Value,
    },
    /// A handler runs.
    Running {
        tx: mpsc::Sender<FromAgent>,
        join: JoinHandle<HandlerExit>,
    },
    /// The handler has ended.
    HandlerDone,
}

/// Runs one session to its end.
pub async fn run(settings: Settings) -> Result<Ended, SessionError> {
    let ui = settings.ui;
    let session_id = settings.args.response.session_id.clone();
    ui.status(&format!(
        "\nStarting session with SessionId: {session_id}\n"
    ));
    let mut link = open_with_retries(&settings).await?;
    let start = Instant::now();
    let mut cfg = settings.channel.clone();
    cfg.created_epoch_ms = unix_ms();
    let mut ch = Channel::new(cfg, start.into_std());
    if let Some(size) = shell::initial_size() {
        // First of all, so the remote pty has our size before its first prompt (see there).
        let _ = ch.send(
            start.into_std(),
            PayloadType::SIZE,
            Bytes::from(wire::to_vec(&size)),
            Priority::Control,
        );
    }
    let mut phase = Phase::AwaitingType;
    let mut agent_version = String::new();
    let (to_agent_tx, mut to_agent_rx) = mpsc::channel::<ToAgent>(32);
    let mut stash: Option<FromAgent> = None;
    let mut finishing: Option<(Finish, Instant)> = None;
    let mut exit_code: Option<i32> = None;
    let type_deadline = start + SESSION_TYPE_TIMEOUT;
    // Data the handler gave us while the send window was full, in order. Bounded: once it is
    // full we stop reading the handler's queue, which back-pressures the handler. Reading on
    // while the window is full lets a Finish or a Flag behind bulk data through at once.
    let mut held: std::collections::VecDeque<(PayloadType, Bytes)> = Default::default();
    const MAX_HELD: usize = 64;
    // Reconnection state: when the current link opened, whether it delivered anything, whether
    // any link ever did, when the current outage began, and whether the service sent
    // channel_closed (then the session is over and is never resumed).
    let mut link_opened = start;
    let mut link_confirmed = false;
    let mut ever_confirmed = false;
    let mut outage_since: Option<Instant> = None;
    let mut closed_by_service = false;
    let mut link_dead = false;
    // The KMS action failed: the agent is told, then we exit with the encryption error.
    let mut kms_failure: Option<(String, Instant)> = None;
    // A TerminateSession API call on its way (old agents that lack the flag).
    let mut terminating: Option<JoinHandle<()>> = None;
    // The connection went away while we were ending: stop waiting for acks.
    let mut drain_abandoned = false;
    // Messages the agent had acknowledged when the drain last made progress.
    let mut drain_acked = 0u64;

    loop {
        let now = Instant::now();
        while ch.send_capacity() > 0 {
            let Some((payload_type, payload)) = held.pop_front() else {
                break;
            };
            if ch
                .send(now.into_std(), payload_type, payload, Priority::Data)
                .is_err()
            {
                break;
            }
        }
        // 1. Everything the channel wants to send, as far as the websocket writer takes it. Never
        // wait for the writer here: a peer that does not read must not stop us reading, timing
        // out or exiting (the channel keeps what is not written yet).
        let mut writer_full = false;
        loop {
            match link.tx.try_reserve() {
                Ok(permit) => match ch.poll_transmit(now.into_std()) {
                    Some(frame) => permit.send(Message::Binary(frame.into())),
                    None => break,
                },
                Err(mpsc::error::TrySendError::Full(())) => {
                    writer_full = true;
                    break;
                }
                // The writer is gone; the reader reports the loss.
                Err(mpsc::error::TrySendError::Closed(())) => break,
            }
        }
        // 2. Everything it has to deliver, as far as the handler can take it.
        loop {
            if let Some(msg) = stash.take() {
                match &phase {
                    Phase::Running { tx, .. } => match tx.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(m)) => {
                            stash = Some(m);
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    },
                    _ => {}
                }
                continue;
            }
            let Some(ev) = ch.poll_event() else { break };
            match ev {
                Event::Message {
                    payload_type,
                    payload,
                    ..
                } => {
                    if payload_type == PayloadType::EXIT_CODE {
                        exit_code = wire::parse_exit_code(&payload).or(exit_code);
                    }
                    match handle_message(
                        &settings,
                        &mut ch,
                        &mut phase,
                        &mut agent_version,
                        &to_agent_tx,
                        &mut kms_failure,
                        payload_type,
                        payload,
                    )
                    .await?
                    {
                        Some(m) => stash = Some(m),
                        None => {}
                    }
                }
                Event::ChannelClosed { output } => {
                    end_handler(&mut phase).await;
                    if let Some((msg, _)) = kms_failure {
                        return Err(SessionError::Encryption(encryption_exit_text(&msg)));
                    }
                    finish_terminate(terminating).await;
                    return Ok(Ended::Closed { output, exit_code });
                }
                Event::Paused => tracing::info!("the service paused our sending"),
                Event::Resumed => tracing::info!("the service resumed our sending"),
                Event::Failed(e) => {
                    end_handler(&mut phase).await;
                    if matches!(e, channel::Error::TimedOut { .. }) {
                        // As the reference does when the agent stops acknowledging: end the
                        // session on the service side too, so it does not linger.
                        if let Err(err) =
                            settings.aws.terminate_session(TERMINATE_API_TIMEOUT).await
                        {
                            tracing::warn!("{err}");
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        // 3. A local end completes once the agent has everything: bounded by DRAIN_TIMEOUT
        // without progress, so a long tail of data (an upload at the frame budget) is not cut
        // short while the agent keeps acknowledging it.
        if let Some((how, mut since)) = finishing {
            let acked = ch.stats().acked;
            if acked != drain_acked {
                drain_acked = acked;
                since = since.max(now);
                finishing = Some((how, since));
            }
            let idle = ch.is_idle() && held.is_empty();
            if idle || drain_abandoned || now >= since + DRAIN_TIMEOUT {
                if !idle && !(drain_abandoned && how == Finish::Terminate) {
                    ui.warn("Warning: the agent did not acknowledge the last data in time; exiting anyway.");
                }
                let code = match std::mem::replace(&mut phase, Phase::HandlerDone) {
                    Phase::Running { join, tx } => {
                        drop(tx);
                        join_handler(join).await.code
                    }
                    _ => None,
                };
                let _ = how;
                finish_terminate(terminating).await;
                return Ok(Ended::Local { code });
            }
        }
        // 3b. A refused KMS action ends the session once the agent has our answer (bounded).
        if let Some((msg, since)) = &kms_failure {
            if ch.is_idle() || now >= *since + DRAIN_TIMEOUT {
                end_handler(&mut phase).await;
                return Err(SessionError::Encryption(encryption_exit_text(msg)));
            }
        }
        let mut deadline = ch.poll_timeout().map(Instant::from_std);
        if matches!(phase, Phase::AwaitingType | Phase::AwaitingComplete { .. }) {
            deadline = Some(deadline.map_or(type_deadline, |d| d.min(type_deadline)));
        }
        if let Some((_, since)) = finishing {
            let d = since + DRAIN_TIMEOUT;
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        if let Some((_, since)) = &kms_failure {
            let d = *since + DRAIN_TIMEOUT;
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        let can_read = held.len() < MAX_HELD && finishing.is_none();
        let handler_running = matches!(phase, Phase::Running { .. });
        // Room in the handler's queue for a stashed message wakes us (after channel_closed no
        // resend from the agent would).
        let stash_tx = match (&phase, &stash) {
            (Phase::Running { tx, .. }, Some(_)) => Some(tx.clone()),
            _ => None,
        };
        // Room in the websocket writer's queue wakes us when step 1 had to stop.
        let writer_room = (writer_full && !link_dead).then(|| link.tx.clone());
        tokio::select! {
            input = link.rx.recv(), if !link_dead && ch.wants_input() => {
                let lost = match input {
                    Some(LinkIn::Frame(bytes)) => {
                        link_confirmed = true;
                        ever_confirmed = true;
                        outage_since = None;
                        if is_channel_closed(&bytes) {
                            closed_by_service = true;
                        }
                        if let Err(e) = ch.handle_frame(Instant::now().into_std(), &bytes) {
                            tracing::warn!("dropping an undecodable message from the service: {e}");
                        }
                        None
                    }
                    Some(LinkIn::Lost { reason, refused }) => Some((reason, refused)),
                    None => Some(("the connection tasks ended".to_owned(), false)),
                };
                if let Some((reason, refused)) = lost {
                    if closed_by_service {
                        // The session is over; what is left is delivering its last events.
                        link_dead = true;
                        continue;
                    }
                    if refused && !ever_confirmed {
                        // The service turned the very first connection away: the token is bad
                        // or stale, or the session already ended. Resuming cannot help.
                        end_handler(&mut phase).await;
                        return Err(SessionError::Connect(TransportError::Upgrade(format!(
                            "{reason}; the session token may be expired or already used: start a new session"
                        ))));
                    }
                    let now = Instant::now();
                    if outage_since.is_none() || link_confirmed || now >= link_opened + STABLE_LINK {
                        outage_since = Some(now);
                    }
                    let since = outage_since.unwrap_or(now);
                    ch.transport_lost(now.into_std());
                    // Already on our way out: never spend the whole reconnect budget on it.
                    let mut bound = None;
                    if let Some((how, fsince)) = finishing {
                        let idle = ch.is_idle() && held.is_empty();
                        if how == Finish::Terminate || idle {
                            if !idle && terminating.is_none() {
                                // The flag may not have reached the agent: end the session
                                // through the API instead.
                                terminating = Some(spawn_terminate(&settings));
                            }
                            tracing::info!("connection lost while ending the session ({reason}); not resuming");
                            link_dead = true;
                            drain_abandoned = true;
                            continue;
                        }
                        let left = (fsince + DRAIN_TIMEOUT).saturating_duration_since(now);
                        bound = Some(left.max(RESUME_WHILE_ENDING));
                    }
                    let resumed = match bound {
                        None => reconnect(&settings, &reason, since).await,
                        Some(b) => match tokio::time::timeout(b, reconnect(&settings, &reason, since)).await {
                            Ok(r) => r,
                            Err(_) => {
                                link_dead = true;
                                drain_abandoned = true;
                                continue;
                            }
                        },
                    };
                    link = match resumed {
                        Ok(l) => l,
                        Err(e) => {
                            end_handler(&mut phase).await;
                            return Err(e);
                        }
                    };
                    link_opened = Instant::now();
                    link_confirmed = false;
                    ch.transport_restored(Instant::now().into_std());
                }
            },
            _ = sleep_until_opt(deadline) => {
                let now = Instant::now();
                if matches!(phase, Phase::AwaitingType | Phase::AwaitingComplete { .. }) && now >= type_deadline {
                    return Err(SessionError::Protocol(format!(
                        "the agent did not start the session within {} seconds; check that the target is online and its SSM Agent is running (aws ssm describe-instance-information)",
                        SESSION_TYPE_TIMEOUT.as_secs()
                    )));
                }
                ch.handle_timeout(now.into_std());
            }
            _ = reserve(writer_room), if writer_full && !link_dead => {}
            permit = reserve(stash_tx), if stash.is_some() => {
                if let (Some(permit), Some(msg)) = (permit, stash.take()) {
                    permit.send(msg);
                }
            }
            msg = to_agent_rx.recv(), if can_read => {
                let Some(msg) = msg else { continue };
                let now = Instant::now().into_std();
                match msg {
                    ToAgent::Data { payload_type, payload, priority: Priority::Control } => {
                        if ch.send(now, payload_type, payload.clone(), Priority::Control).is_err() {
                            held.push_back((payload_type, payload));
                        }
                    }
                    ToAgent::Data { payload_type, payload, priority: Priority::Data } => {
                        if !held.is_empty() || ch.send(now, payload_type, payload.clone(), Priority::Data).is_err() {
                            held.push_back((payload_type, payload));
                        }
                    }
                    ToAgent::Flag(f) => {
                        let _ = ch.send(now, PayloadType::FLAG, Bytes::copy_from_slice(&f.to_payload()), Priority::Control);
                    }
                    ToAgent::Finish(how) => {
                        tracing::debug!(?how, stats = ?ch.stats(), "the local side ends the session");
                        if how == Finish::Terminate {
                            if handshake::version_greater(&agent_version, TERMINATE_FLAG_MIN_AGENT) {
                                let _ = ch.send(now, PayloadType::FLAG, Bytes::copy_from_slice(&FlagValue::TerminateSession.to_payload()), Priority::Control);
                            } else if terminating.is_none() {
                                // Agents without the flag (and sessions whose agent sent no
                                // handshake) are ended with the TerminateSession API, as the
                                // reference does for old agents.
                                terminating = Some(spawn_terminate(&settings));
                            }
                        }
                        finishing = Some((how, Instant::now()));
                    }
                }
            }
            res = join_running(&mut phase), if handler_running => {
                // The handler ended on its own (e.g. its local side failed).
                phase = Phase::HandlerDone;
                if finishing.is_none() {
                    finishing = Some((Finish::AfterAcked, Instant::now()));
                }
                if let Some(c) = res.code { exit_code = Some(c); }
            }
        }
    }
}

/// A reconnection notice on stderr. A shell may have the terminal in raw mode, where a bare
/// `\n` does not return the cursor, so lines end with `\r\n` on a terminal.
fn notice(text: &str) {
    use std::io::{IsTerminal, Write};
    let mut e = std::io::stderr().lock();
    let text = if e.is_terminal() {
        format!("{}\r\n", text.replace('\n', "\r\n"))
    } else {
        format!("{text}\n")
    };
    let _ = e.write_all(text.as_bytes());
    let _ = e.flush();
}

/// Starts the TerminateSession API call (bounded; a failure is only logged).
fn spawn_terminate(settings: &Settings) -> JoinHandle<()> {
    let aws = settings.aws.clone();
    tokio::spawn(async move {
        match aws.terminate_session(TERMINATE_API_TIMEOUT).await {
            Ok(()) => tracing::debug!("TerminateSession done"),
            Err(e) => tracing::warn!("{e}"),
        }
    })
}

/// Waits (bounded) for a TerminateSession API call started on the way out.
async fn finish_terminate(terminating: Option<JoinHandle<()>>) {
    if let Some(t) = terminating {
        let _ = tokio::time::timeout(TERMINATE_API_TIMEOUT, t).await;
    }
}

/// Waits for room in a handler's queue.
async fn reserve<T>(tx: Option<mpsc::Sender<T>>) -> Option<mpsc::OwnedPermit<T>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

/// True for a `channel_closed` frame (the message type sits at bytes 4..36, space padded).
fn is_channel_closed(frame: &[u8]) -> bool {
    frame
        .get(4..36)
        .is_some_and(|t| t.starts_with(b"channel_closed"))
}

/// The exit message for a failed KMS action: what the agent was told, and what to check.
fn encryption_exit_text(action_error: &str) -> String {
    format!(
        "{action_error}\nThis session requires KMS encryption: check that your credentials allow kms:GenerateDataKey on the session's KMS key (Session Manager preferences) in this region."
    )
}

/// Called when the websocket is lost without channel_closed (the service's hourly close 1000
/// "Bye" included): SSM ResumeSession with freshly resolved credentials, then a new websocket
/// to the StreamUrl it returns (else the original) with its token. The channel keeps its
/// sequence state and resends what was not acknowledged; handlers never notice. Retries with
/// backoff until `outage_since + reconnect_timeout`.
async fn reconnect(
    settings: &Settings,
    reason: &str,
    outage_since: Instant,
) -> Result<Link, SessionError> {
    let session_id = &settings.args.response.session_id;
    let limit = settings.reconnect_timeout;
    let deadline = outage_since + limit;
    notice(&format!(
        "\nConnection lost ({reason}); resuming session..."
    ));
    let mut delay = Duration::from_millis(100 + u64::from(rand::random::<u8>() % 100));
    let mut last_error = String::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outcome = match tokio::time::timeout(remaining, settings.aws.resume_session()).await {
            Err(_) => Err(ResumeError::Retry(
                "ResumeSession did not answer in time".into(),
            )),
            Ok(r) => r,
        };
        let error = match outcome {
            Ok(resumed) => {
                let url = resumed
                    .stream_url
                    .clone()
                    .unwrap_or_else(|| settings.args.response.stream_url.clone());
                let region = settings.aws.signing_region().to_owned();
                match open_link(
                    settings,
                    &url,
                    &resumed.token,
                    Some((&resumed.credentials, &region)),
                )
                .await
                {
                    Ok(link) => {
                        tracing::info!(attempt, "session resumed");
                        notice("Session resumed.");
                        return Ok(link);
                    }
                    Err(e) => format!("reconnecting the websocket failed: {e}"),
                }
            }
            Err(ResumeError::Expired) => {
                return Err(SessionError::SessionExpired(format!(
                    "Session: {session_id} timed out."
                )))
            }
            Err(ResumeError::Fatal(e)) => {
                return Err(SessionError::ConnectionLost(format!(
                    "the connection to the Session Manager service was lost ({reason}) and the session cannot be resumed: {e}"
                )))
            }
            Err(ResumeError::Retry(e)) => e,
        };
        if error != last_error {
            tracing::warn!(attempt, "resuming the session: {error}");
        }
        last_error = error;
        if Instant::now() + delay >= deadline {
            return Err(SessionError::ConnectionLost(format!(
                "the connection to the Session Manager service was lost ({reason}) and could not be resumed within {} s: {last_error}\nCheck your network and AWS credentials (they must allow ssm:ResumeSession), or allow more time with {}=<seconds>.",
                limit.as_secs(),
                crate::config::ENV_RECONNECT_TIMEOUT
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX_DELAY);
    }
}

/// Handles one in-order message while no handler runs yet (type detection and handshake), or
/// passes it on (returned, for the caller to queue with back-pressure).
// The driver's loop state is passed piecewise so each borrow stays narrow.
#[allow(clippy::too_many_arguments)]
async fn handle_message(
    settings: &Settings,
    ch: &mut Channel,
    phase: &mut Phase,
    agent_version: &mut String,
    to_agent: &mpsc::Sender<ToAgent>,
    kms_failure: &mut Option<(String, Instant)>,
    payload_type: PayloadType,
    payload: Bytes,
) -> Result<Option<FromAgent>, SessionError> {
    let now = Instant::now().into_std();
    match payload_type {
        PayloadType::HANDSHAKE_REQUEST => {
            let req: wire::HandshakeRequest = serde_json::from_slice(&payload).map_err(|e| {
                SessionError::Protocol(format!(
                    "the agent sent an unreadable handshake request: {e}"
                ))
            })?;
            let mut plan = handshake::plan(&req);
            *agent_version = plan.agent_version.clone();
            tracing::debug!(agent_version = %plan.agent_version, kind = ?plan.kind, "handshake request");
            if let Some(kms) = plan.kms.take() {
                let outcome = encryption_action(settings, &kms).await;
                if let Some(slot) = plan
                    .actions
                    .iter_mut()
                    .find(|a| a.action_type == "KMSEncryption")
                {
                    match outcome {
                        Ok((result, keys)) => {
                            slot.action_status = wire::ActionStatus::Success as i32;
                            slot.action_result = result;
                            slot.error.clear();
                            ch.set_encryption(keys);
                        }
                        Err(text) => {
                            slot.error = format!("Failed to process action KMSEncryption: {text}");
                            *kms_failure = Some((slot.error.clone(), Instant::now()));
                        }
                    }
                }
            }
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
            let resp = handshake::response(WIRE_VERSION, plan.actions);
            let _ = ch.send(
                now,
                PayloadType::HANDSHAKE_RESPONSE,
                Bytes::from(wire::to_vec(&resp)),
                Priority::Control,
            );
            if !failed.is_empty() {
                // The agent cancels the session on any failed action; say why now rather than
                // waiting for its channel_closed.
                settings.ui.warn(&failed.join("\n"));
            }
            *phase = Phase::AwaitingComplete {
                kind: plan.kind,
                properties: plan.properties,
            };
            Ok(None)
        }
        PayloadType::ENC_CHALLENGE_REQUEST => {
            let req: wire::EncryptionChallenge = serde_json::from_slice(&payload).map_err(|e| {
                SessionError::Protocol(format!(
                    "the agent sent an unreadable encryption challenge: {e}"
                ))
            })?;
            let answer = ch
                .answer_encryption_challenge(&req.challenge)
                .ok_or_else(|| {
                    SessionError::Protocol(
                        "the agent sent an encryption challenge before asking for encryption"
                            .into(),
                    )
                })?
                .map_err(|e| {
                    SessionError::Encryption(format!(
                        "cannot answer the agent's encryption challenge: {e}"
                    ))
                })?;
            let resp = wire::EncryptionChallenge { challenge: answer };
            let _ = ch.send(
                now,
                PayloadType::ENC_CHALLENGE_RESPONSE,
                Bytes::from(wire::to_vec(&resp)),
                Priority::Control,
            );
            Ok(None)
        }
        PayloadType::HANDSHAKE_COMPLETE => {
            let done: wire::HandshakeComplete =
                serde_json::from_slice(&payload).unwrap_or_default();
            if !done.customer_message.is_empty() {
                settings.ui.status(&format!("{}\n", done.customer_message));
            }
            let (kind, properties) = match std::mem::replace(phase, Phase::HandlerDone) {
                Phase::AwaitingComplete { kind, properties } => (kind, properties),
                other => {
                    *phase = other;
                    return Ok(None);
                }
            };
            let Some(kind) = kind else {
                return Err(SessionError::Protocol(
                    "Cannot perform start session: unable to determine SessionType".into(),
                ));
            };
            *phase = start_handler(
                settings,
                kind,
                properties,
                agent_version.clone(),
                to_agent.clone(),
            );
            Ok(None)
        }
        _ => {
            if matches!(phase, Phase::AwaitingType) {
                if payload_type != PayloadType::OUTPUT {
                    tracing::warn!(
                        "ignoring a {} payload before the session started",
                        payload_type.name()
                    );
                    return Ok(None);
                }
                // No handshake: the agent does this for shells without KMS. Its first output
                // starts the shell UI, as in the reference.
                *phase = start_handler(
                    settings,
                    SessionKind::StandardStream,
                    serde_json::Value::Null,
                    String::new(),
                    to_agent.clone(),
                );
            }
            Ok(Some(FromAgent::Message {
                payload_type,
                payload,
            }))
        }
    }
}

fn start_handler(
    settings: &Settings,
    kind: SessionKind,
    properties: serde_json::Value,
    agent_version: String,
    to_agent: mpsc::Sender<ToAgent>,
) -> Phase {
    let (tx, rx) = mpsc::channel(64);
    let ctx = HandlerContext {
        session_id: settings.args.response.session_id.clone(),
        kind: kind.clone(),
        properties,
        agent_version,
        from_agent: rx,
        to_agent,
        ui: settings.ui,
        max_payload: settings.max_payload,
    };
    let join = match kind {
        SessionKind::Port => tokio::spawn(port::run(ctx)),
        _ => tokio::spawn(shell::run(ctx)),
    };
    Phase::Running { tx, join }
}

/// The KMSEncryption action: a data key from KMS, and the ActionResult carrying its ciphertext.
async fn encryption_action(
    settings: &Settings,
    req: &wire::KmsEncryptionRequest,
) -> Result<(serde_json::Value, channel::crypto::SessionKeys), String> {
    if settings.args.legacy_cli {
        return Err("Installed version of CLI does not support Session Manager encryption feature. Please upgrade to the latest version of your CLI (e.g., AWS CLI).".into());
    }
    let (plaintext, blob) = settings
        .aws
        .generate_data_key(&req.kms_key_id, req.challenge.as_deref())
        .await?;
    let keys = channel::crypto::SessionKeys::new(&plaintext)
        .map_err(|e| format!("Error calling KMS GenerateDataKey API: unusable data key ({e})"))?;
    use base64::Engine;
    let result = wire::KmsEncryptionResponse {
        kms_cipher_text_key: base64::engine::general_purpose::STANDARD.encode(&blob),
        kms_cipher_text_hash: None,
        // The challenge went into the encryption context; the agent then adds it to its
        // Decrypt context (agents from 3.3.808.0).
        challenge_acknowledgement: req.challenge.as_ref().map(|_| true),
    };
    let json = serde_json::to_value(&result).map_err(|e| e.to_string())?;
    Ok((json, keys))
}

async fn join_handler(join: JoinHandle<HandlerExit>) -> HandlerExit {
    match tokio::time::timeout(DRAIN_TIMEOUT, join).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(e)) => {
            tracing::error!("the session handler failed: {e}");
            HandlerExit::default()
        }
        Err(_) => HandlerExit::default(),
    }
}

/// Tells a running handler the session is over and waits (bounded) for it to restore the
/// terminal and flush.
async fn end_handler(phase: &mut Phase) {
    if let Phase::Running { tx, join } = std::mem::replace(phase, Phase::HandlerDone) {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, tx.send(FromAgent::End)).await;
        drop(tx);
        join_handler(join).await;
    }
}

async fn join_running(phase: &mut Phase) -> HandlerExit {
    match phase {
        Phase::Running { join, .. } => match join.await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("the session handler failed: {e}");
                HandlerExit::default()
            }
        },
        _ => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
