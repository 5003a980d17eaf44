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

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::channel::{self, Channel, Event, Priority};
use crate::cli::{Secret, SessionArgs, WIRE_VERSION};
use crate::transport::{self, ConnectOptions, TransportError};
use crate::wire::{self, FlagValue, OpenDataChannelInput, PayloadType};
use handshake::SessionKind;

/// How long we wait for the agent to tell us the session type (the reference waits forever).
pub const SESSION_TYPE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long we wait, on a local exit, for the agent to acknowledge what we sent last.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Websocket ping interval, as the reference.
pub const PING_INTERVAL: Duration = Duration::from_secs(300);
/// Agents above this version understand the TerminateSession flag.
pub const TERMINATE_FLAG_MIN_AGENT: &str = "2.3.722.0";

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
    /// The websocket was lost and could not be resumed.
    #[error("the connection to the Session Manager service was lost ({0}) and the session could not be resumed")]
    ConnectionLost(String),
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
    Lost(String),
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
                    let _ = lost_tx
                        .send(LinkIn::Lost(format!("write failed: {e}")))
                        .await;
                    break;
                }
            }
        });
        let reader = tokio::spawn(async move {
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
            let _ = rtx.send(LinkIn::Lost(reason)).await;
        });
        Ok(Self {
            tx,
            rx,
            tasks: [writer, reader],
        })
    }
}

/// Opens the first connection, retrying transient failures a few times within a bounded time
/// (the reference retries 5 times, then hangs forever).
async fn open_with_retries(s: &Settings) -> Result<Link, TransportError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match Link::open(
            &s.args.response.stream_url,
            &s.args.response.token_value,
            &s.client_id,
            &s.connect,
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
    let mut phase = Phase::AwaitingType;
    let mut agent_version = String::new();
    let (to_agent_tx, mut to_agent_rx) = mpsc::channel::<ToAgent>(32);
    let mut stash: Option<FromAgent> = None;
    let mut finishing: Option<(Finish, Instant)> = None;
    let mut exit_code: Option<i32> = None;
    let type_deadline = start + SESSION_TYPE_TIMEOUT;

    loop {
        let now = Instant::now();
        // 1. Everything the channel wants to send.
        while let Some(frame) = ch.poll_transmit(now.into_std()) {
            if link.tx.send(Message::Binary(frame.into())).await.is_err() {
                break;
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
                    return Ok(Ended::Closed { output, exit_code });
                }
                Event::Paused => tracing::info!("the service paused our sending"),
                Event::Resumed => tracing::info!("the service resumed our sending"),
                Event::Failed(e) => {
                    end_handler(&mut phase).await;
                    return Err(e.into());
                }
            }
        }
        // 3. A local end completes once the agent has everything (bounded).
        if let Some((how, since)) = finishing {
            if ch.is_idle() || now >= since + DRAIN_TIMEOUT {
                if !ch.is_idle() {
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
                return Ok(Ended::Local { code });
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
        let can_send = ch.send_capacity() > 0 && finishing.is_none();
        let handler_running = matches!(phase, Phase::Running { .. });
        // A payload waits for room in the handler's queue: wake up when there is some (the
        // channel may have nothing else to wake us for).
        let room = match (&phase, &stash) {
            (Phase::Running { tx, .. }, Some(_)) => Some(tx.clone()),
            _ => None,
        };
        tokio::select! {
            _ = async { if let Some(tx) = &room { let _ = tx.reserve().await; } }, if room.is_some() => {}
            input = link.rx.recv() => match input {
                Some(LinkIn::Frame(bytes)) => {
                    if let Err(e) = ch.handle_frame(Instant::now().into_std(), &bytes) {
                        tracing::warn!("dropping an undecodable message from the service: {e}");
                    }
                }
                Some(LinkIn::Lost(reason)) => {
                    ch.transport_lost(Instant::now().into_std());
                    link = reconnect(&settings, &reason).await?;
                    ch.transport_restored(Instant::now().into_std());
                }
                None => {
                    ch.transport_lost(Instant::now().into_std());
                    link = reconnect(&settings, "the connection tasks ended").await?;
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
            msg = to_agent_rx.recv(), if can_send => {
                let Some(msg) = msg else { continue };
                let now = Instant::now().into_std();
                match msg {
                    ToAgent::Data { payload_type, payload, priority } => {
                        let _ = ch.send(now, payload_type, payload, priority);
                    }
                    ToAgent::Flag(f) => {
                        let _ = ch.send(now, PayloadType::FLAG, Bytes::copy_from_slice(&f.to_payload()), Priority::Control);
                    }
                    ToAgent::Finish(how) => {
                        if how == Finish::Terminate
                            && handshake::version_greater(&agent_version, TERMINATE_FLAG_MIN_AGENT)
                        {
                            let _ = ch.send(now, PayloadType::FLAG, Bytes::copy_from_slice(&FlagValue::TerminateSession.to_payload()), Priority::Control);
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

/// Called when the websocket is lost without channel_closed. Resuming (ResumeSession and a new
/// connection with the same sequence state) belongs to the AWS integration; until then the
/// session ends with a clear error.
async fn reconnect(_settings: &Settings, reason: &str) -> Result<Link, SessionError> {
    Err(SessionError::ConnectionLost(reason.to_owned()))
}

/// Handles one in-order message while no handler runs yet (type detection and handshake), or
/// passes it on (returned, for the caller to queue with back-pressure).
async fn handle_message(
    settings: &Settings,
    ch: &mut Channel,
    phase: &mut Phase,
    agent_version: &mut String,
    to_agent: &mpsc::Sender<ToAgent>,
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
                        }
                    }
                }
            }
            let failed: Vec<String> = plan
                .actions
                .iter()
                .filter(|a| a.action_status != wire::ActionStatus::Success as i32)
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
    let _ = req;
    Err("KMS encryption is not supported by this build".into())
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
