//! The session driver: a thin tokio loop around the sans-IO [`core::Session`]. It owns the
//! websocket [`Link`], the handler task, signals and the AWS calls, and does what the machine
//! asks; it decides nothing itself.
//!
//! Nothing long is awaited inside a `select!` arm: connecting, ResumeSession, KMS and
//! TerminateSession run as futures polled beside the websocket, the handler's queues, timers and
//! signals, so `~.`, Ctrl-C, SIGTERM and SIGHUP are acted on at once in every phase, an outage
//! included.
//!
//! Back-pressure runs end to end: the driver hands the handler a payload only when its queue has
//! room (so a slow terminal or socket stops our acks and so the agent), reads the websocket only
//! while the machine wants input, and takes the handler's data only while the machine has room.

pub mod core;
pub mod handler;
pub mod handshake;
pub mod listen;
pub mod port;
pub mod shell;
pub(crate) mod signals;
mod wake;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use self::core::{DataKey, Event, Local, Outcome, ResumeFailure, Session};
use crate::aws::Aws;
use crate::channel;
use crate::cli::{Secret, SessionArgs};
use crate::transport::allow;
use crate::transport::link::{Link, LinkIn};
use crate::transport::{ConnectOptions, TransportError};
use crate::ui::Ui;
pub use handler::{FromAgent, HandlerContext, HandlerExit, LocalEnd, ToAgent};
use handshake::SessionKind;

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
    /// How long the agent has to start the session.
    pub start_timeout: Duration,
    /// The websocket's liveness checks (keepalive pings, dead-link detection); `None`: off.
    pub liveness: Option<core::LivenessConfig>,
    /// The marker of a wrapped command's exit status (`exec` with a document that reports
    /// none); `None`: the output is delivered as it comes.
    pub status_marker: Option<String>,
    /// Hosts besides AWS's and loopback the token may be sent to.
    pub allowed_hosts: Option<String>,
    /// The user's bind address for port listeners.
    pub bind_address: Option<String>,
    /// The port listener, shared with the sessions that continue this one.
    pub listener: port::ListenerSlot,
}

impl Settings {
    /// The settings for a session started with `args` under the environment's settings.
    pub fn new(args: SessionArgs, env: &crate::config::Env, ui: Ui) -> Self {
        let url = url::Url::parse(&args.response.stream_url).ok();
        Self {
            client_id: uuid::Uuid::new_v4(),
            ui,
            channel: env.channel_config(),
            connect: ConnectOptions {
                timeouts: crate::transport::Timeouts::default(),
                proxy: url
                    .as_ref()
                    .and_then(|u| crate::transport::proxy_for(u, |k| std::env::var(k).ok())),
                tls: crate::transport::tls_config(),
                extra_headers: Vec::new(),
            },
            max_payload: env.payload_size,
            aws: Aws::new(&args),
            reconnect_timeout: env.reconnect_timeout,
            start_timeout: env.start_timeout,
            liveness: env.liveness,
            status_marker: None,
            allowed_hosts: env.allowed_hosts.clone(),
            bind_address: env.bind_address.clone(),
            listener: Default::default(),
            args,
        }
    }

    /// The same settings for a new session of the same request (a restarted forward).
    fn for_new_session(&self, response: crate::cli::StartSessionResponse, region: String) -> Self {
        let mut next = self.clone();
        next.args.response = response;
        if next.args.region.is_empty() {
            next.args.region = region;
        }
        next.aws = Aws::new(&next.args);
        next
    }
}

/// A lost session that lived this long counts as having worked: its restart budget refills.
const RESTART_STABLE: Duration = Duration::from_secs(60);
/// Waits before each new session: 1 s, 2 s, 4 s... up to this.
const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);

/// Runs a session; when it is a port forward with a local listener and its connection is lost
/// for good (the hourly reconnect refused, the session expired), starts a new session of the
/// same request (Target, DocumentName, Parameters) and carries on with the same listener, up to
/// `restarts` times in a row with backoff. Connections open on the old session are closed; new
/// ones use the new session. Shells never restart: a new shell is a different session.
/// Returns how the last session ended and its id.
pub async fn run_forwarding(mut settings: Settings, restarts: u32) -> (Outcome, String) {
    let mut left = restarts;
    // New sessions started since the budget last refilled.
    let mut started_in_row = 0u32;
    loop {
        let began = Instant::now();
        let id = settings.args.response.session_id.clone();
        let outcome = run(settings.clone()).await;
        let listening = settings
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let request = match &settings.args.parameters {
            Some(p) if !p.target.is_empty() => p.clone(),
            _ => return (outcome, id),
        };
        if !outcome.lost || !listening || restarts == 0 || settings.args.legacy_cli {
            return (outcome, id);
        }
        if began.elapsed() >= RESTART_STABLE {
            left = restarts;
            started_in_row = 0;
        }
        let why = match &outcome.report {
            core::Report::Error(t)
            | core::Report::Failed(t)
            | core::Report::Plain(t)
            | core::Report::ServiceMessage(t) => t.trim().to_owned(),
            _ => "the connection was lost".to_owned(),
        };
        settings.ui.warn(&format!(
            "Session {} cannot go on ({why}); starting a new session for {} and keeping the listener open (turn this off with {}=0).",
            settings.args.response.session_id,
            request.target,
            crate::config::ENV_PORT_RESTARTS
        ));
        let mut delay = Duration::from_secs(1);
        let mut signals = signals::Signals::install();
        let next = loop {
            if left == 0 {
                // Say what really happened: sessions that started and were lost again, or
                // attempts of which none started.
                let what = if started_in_row == 0 {
                    format!("{restarts} attempts to start a new session failed")
                } else {
                    format!(
                        "of {restarts} attempts to carry on in a new session, {started_in_row} started and were lost within {} s, {} did not start",
                        RESTART_STABLE.as_secs(),
                        restarts.saturating_sub(started_in_row)
                    )
                };
                settings.ui.warn(&format!(
                    "Giving up: {what} (at most {restarts} in a row; {} sets it).",
                    crate::config::ENV_PORT_RESTARTS
                ));
                return (outcome, id);
            }
            left -= 1;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                sig = signals.recv() => {
                    tracing::debug!(?sig, "signal while starting a new session");
                    let exit = sig.leaving_exit();
                    let report = core::Report::Quiet;
                    return (Outcome { lost: false, exit, report }, id);
                }
            }
            delay = (delay * 2).min(RESTART_MAX_DELAY);
            match settings.aws.start_session(&request).await {
                Ok((response, region)) => {
                    started_in_row += 1;
                    break settings.for_new_session(response, region);
                }
                Err(e) => settings
                    .ui
                    .warn(&format!("Cannot start a new session: {e}")),
            }
        };
        settings = next;
    }
}

/// Prints how the session ended, as AWS's plugin does where scripts read it.
pub fn print_end(ui: Ui, session_id: &str, outcome: &Outcome) {
    match &outcome.report {
        // The session is over: a reader that went away by now has nothing left to miss.
        core::Report::Exiting => {
            let _ = ui.status(&format!(
                "\n\nExiting session with sessionId: {session_id}.\n\n"
            ));
        }
        core::Report::ServiceMessage(output) => {
            let _ = ui.status(&format!("\n\nSessionId: {session_id} : {output}\n\n"));
        }
        core::Report::Error(text) => eprintln!("\nCannot perform start session: {text}\n"),
        core::Report::Failed(text) => eprintln!("\nSession {session_id} ended: {text}\n"),
        // The reference's own words when ResumeSession says the session is over, or a
        // handler's complete message.
        core::Report::Plain(text) => eprintln!("\n{}\n", text.trim_matches('\n')),
        core::Report::Quiet => {}
    }
}

type Op<T> = Pin<Box<dyn Future<Output = T>>>;

/// The handler task and its queue (dropped to tell it the session is over).
struct Handler {
    tx: Option<mpsc::Sender<FromAgent>>,
    join: JoinHandle<HandlerExit>,
}

/// Runs one session to its end and returns how it ended.
pub async fn run(settings: Settings) -> Outcome {
    let ui = settings.ui;
    // `Starting session with SessionId: X` once the StreamUrl passed its checks, so that a
    // script waiting for it never sees a session refused before any connection start.
    let mut announced = false;
    let mut s = Session::new(
        core::Config {
            session_id: settings.args.response.session_id.clone(),
            channel: settings.channel.clone(),
            reconnect_timeout: settings.reconnect_timeout,
            start_timeout: settings.start_timeout,
            legacy_cli: settings.args.legacy_cli,
            initial_size: shell::initial_size(),
            liveness: settings.liveness,
            status_marker: settings.status_marker.clone(),
        },
        Instant::now().into_std(),
        unix_ms(),
    );
    let mut signals = signals::Signals::install();
    let (to_agent_tx, mut to_agent_rx) = mpsc::channel::<ToAgent>(32);
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<LocalEnd>();
    let mut link: Option<Link> = None;
    let mut connect: Option<Op<Result<Link, TransportError>>> = None;
    let mut resuming: Option<Op<Result<Link, ResumeFailure>>> = None;
    let mut kms: Option<Op<Result<DataKey, String>>> = None;
    let mut terminate: Option<Op<()>> = None;
    let mut handler: Option<Handler> = None;
    let mut stash: Option<FromAgent> = None;
    let mut stopping = false;

    let mut wake = wake::Check::new();
    loop {
        let now = Instant::now().into_std();
        if let Some(slept) = wake.slept() {
            s.woke(now, slept);
        }
        // Outputs: events (which may start the handler), deliveries (which may queue events).
        loop {
            while let Some(ev) = s.poll_event() {
                match ev {
                    Event::Connect => match allow::check(
                        &settings.args.response.stream_url,
                        settings.allowed_hosts.as_deref(),
                    ) {
                        Ok(_) => {
                            if !announced {
                                announced = true;
                                // Its loss is noticed by the handler's own lines, or harmless.
                                let _ = ui.status(&format!(
                                    "\nStarting session with SessionId: {}\n",
                                    settings.args.response.session_id
                                ));
                            }
                            connect = Some(Box::pin(first_connect(settings.clone())));
                        }
                        Err(e) => s.connect_failed(now, e, true),
                    },
                    Event::Resume => resuming = Some(Box::pin(resume(settings.clone()))),
                    Event::DropLink => {
                        link = None;
                        connect = None;
                        resuming = None;
                    }
                    Event::StartHandler {
                        kind,
                        properties,
                        agent_version,
                    } => {
                        if kind != SessionKind::Port {
                            signals.add_suspend();
                        }
                        handler = Some(start_handler(
                            &settings,
                            kind,
                            properties,
                            agent_version,
                            to_agent_tx.clone(),
                            end_tx.clone(),
                        ));
                    }
                    Event::StopHandler => stopping = true,
                    Event::NeedDataKey { key_id, challenge } => {
                        let aws = settings.aws.clone();
                        kms = Some(Box::pin(async move {
                            aws.generate_data_key(&key_id, challenge.as_deref())
                                .await
                                .map(|(plaintext, ciphertext)| DataKey {
                                    plaintext,
                                    ciphertext,
                                })
                        }));
                    }
                    Event::TerminateApi => {
                        let aws = settings.aws.clone();
                        terminate = Some(Box::pin(async move {
                            match aws.terminate_session(core::TERMINATE_TIMEOUT).await {
                                Ok(()) => tracing::debug!("TerminateSession done"),
                                Err(e) => tracing::warn!("{e}"),
                            }
                        }));
                    }
                    Event::Ping => {
                        if let Some(l) = &link {
                            // A full writer queue is a stuck link: the deadline tells.
                            let _ = l
                                .tx
                                .try_send(Message::Ping(bytes::Bytes::from_static(b"liveness")));
                        }
                    }
                    Event::Status(t) => {
                        let _ = ui.status(&t);
                    }
                    Event::Warn(t) => ui.warn(&t),
                    Event::Notice(t) => ui.notice(&t),
                    Event::Ended(outcome) => {
                        if let Some(h) = handler.take() {
                            // It had its chance to flush; whatever it still does, we leave.
                            h.join.abort();
                        }
                        return outcome;
                    }
                }
            }
            deliver(&mut s, &mut handler, &mut stash, now);
            if !s.has_events() {
                break;
            }
        }
        if stopping && stash.is_none() {
            // Everything before the end is in the handler's queue: closing it ends the handler.
            if let Some(h) = handler.as_mut() {
                h.tx = None;
            }
        }
        if !s.wants_link() {
            connect = None;
            resuming = None;
        }
        // Everything the machine wants to send, as far as the websocket writer takes it.
        let mut writer_full = false;
        if let Some(l) = &link {
            loop {
                match l.tx.try_reserve() {
                    Ok(permit) => match s.poll_transmit(now) {
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
        }
        let deadline = s.poll_timeout().map(Instant::from_std);
        let writer_room = writer_full
            .then(|| link.as_ref().map(|l| l.tx.clone()))
            .flatten();
        let stash_room = match (&handler, &stash) {
            (Some(Handler { tx: Some(tx), .. }), Some(_)) => Some(tx.clone()),
            _ => None,
        };
        let reading = link.is_some() && s.wants_input();
        tokio::select! {
            input = recv_link(&mut link), if reading => {
                let now = Instant::now().into_std();
                match input {
                    Some(LinkIn::Frame(bytes)) => s.handle_frame(now, &bytes),
                    Some(LinkIn::Alive) => s.link_alive(now),
                    Some(LinkIn::Lost { reason, refused }) => {
                        link = None;
                        s.transport_lost(now, &reason, refused);
                    }
                    None => {
                        link = None;
                        s.transport_lost(now, "the connection tasks ended", false);
                    }
                }
            }
            _ = sleep_until_opt(deadline) => s.handle_timeout(Instant::now().into_std()),
            sig = signals.recv() => {
                tracing::debug!(?sig, "signal");
                s.handle_local(Instant::now().into_std(), Local::Signal(sig));
            }
            Some(why) = end_rx.recv() => s.handle_local(Instant::now().into_std(), Local::End(why)),
            msg = to_agent_rx.recv(), if s.wants_local_data() => {
                let Some(msg) = msg else { continue };
                let local = match msg {
                    ToAgent::Data { payload_type, payload, priority } => Local::Send { payload_type, payload, priority },
                    ToAgent::Flag(f) => Local::Flag(f),
                    ToAgent::InputEnded => Local::InputEnded,
                };
                s.handle_local(Instant::now().into_std(), local);
            }
            exit = join_handler(&mut handler), if handler.is_some() => {
                handler = None;
                stash = None;
                s.handle_local(Instant::now().into_std(), Local::HandlerEnded(exit));
            }
            r = run_op(&mut connect), if connect.is_some() => {
                connect = None;
                let now = Instant::now().into_std();
                match r {
                    Ok(l) => {
                        link = Some(l);
                        s.transport_restored(now);
                    }
                    Err(e) => {
                        let usage = matches!(e, TransportError::BadUrl(_) | TransportError::NotAllowed(_) | TransportError::Credentials(_));
                        s.connect_failed(now, e.to_string(), usage);
                    }
                }
            }
            r = run_op(&mut resuming), if resuming.is_some() => {
                resuming = None;
                let now = Instant::now().into_std();
                match r {
                    Ok(l) => {
                        link = Some(l);
                        s.transport_restored(now);
                    }
                    Err(f) => s.resume_failed(now, &f),
                }
            }
            r = run_op(&mut kms), if kms.is_some() => {
                kms = None;
                s.data_key(Instant::now().into_std(), r);
            }
            _ = run_op(&mut terminate), if terminate.is_some() => {
                terminate = None;
                s.terminate_done(Instant::now().into_std());
            }
            _ = reserve(writer_room), if writer_full => {}
            permit = reserve(stash_room), if stash.is_some() && !matches!(&handler, Some(Handler { tx: None, .. }) | None) => {
                if let (Some(permit), Some(msg)) = (permit, stash.take()) {
                    permit.send(msg);
                }
            }
        }
    }
}

/// Hands the machine's deliveries to the handler while its queue has room.
fn deliver(
    s: &mut Session,
    handler: &mut Option<Handler>,
    stash: &mut Option<FromAgent>,
    now: std::time::Instant,
) {
    while stash.is_none() {
        let Some((payload_type, payload)) = s.poll_delivery(now) else {
            break;
        };
        let msg = FromAgent::Message {
            payload_type,
            payload,
        };
        match handler.as_ref().and_then(|h| h.tx.as_ref()) {
            Some(tx) => match tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => *stash = Some(m),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            None => tracing::debug!("a {} payload with no handler, dropped", payload_type.name()),
        }
    }
}

/// Opens the first connection with the StartSession response's StreamUrl and token.
/// The StreamUrl was checked against the allow-list when the connection was asked for.
async fn first_connect(s: Settings) -> Result<Link, TransportError> {
    open_link(
        &s,
        &s.args.response.stream_url,
        &s.args.response.token_value,
        None,
    )
    .await
}

/// SSM ResumeSession with freshly resolved credentials, then a new websocket to the StreamUrl it
/// returns (else the original) with its token. The channel keeps its sequence state and resends
/// what was not acknowledged; handlers never notice.
async fn resume(s: Settings) -> Result<Link, ResumeFailure> {
    let resumed = s.aws.resume_session().await?;
    let url = resumed
        .stream_url
        .clone()
        .unwrap_or_else(|| s.args.response.stream_url.clone());
    allow::check(&url, s.allowed_hosts.as_deref()).map_err(ResumeFailure::Unusable)?;
    let region = s.aws.signing_region().to_owned();
    open_link(
        &s,
        &url,
        &resumed.token,
        Some((&resumed.credentials, &region)),
    )
    .await
    .map_err(|e| ResumeFailure::Network(format!("reconnecting the websocket failed: {e}")))
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
    let headers = s
        .aws
        .upgrade_headers(url, fresh)
        .await
        .map_err(|e| TransportError::Credentials(e.message))?;
    opts.extra_headers.extend(headers);
    Link::open(url, token, &s.client_id, &opts).await
}

fn start_handler(
    settings: &Settings,
    kind: SessionKind,
    properties: serde_json::Value,
    agent_version: String,
    to_agent: mpsc::Sender<ToAgent>,
    end: mpsc::UnboundedSender<LocalEnd>,
) -> Handler {
    let (tx, rx) = mpsc::channel(64);
    let ctx = HandlerContext {
        session_id: settings.args.response.session_id.clone(),
        kind: kind.clone(),
        properties,
        agent_version,
        from_agent: rx,
        to_agent,
        end,
        ui: settings.ui,
        max_payload: settings.max_payload,
        bind_address: settings.bind_address.clone(),
        listener: settings.listener.clone(),
    };
    let join = match kind {
        SessionKind::Port => tokio::spawn(port::run(ctx)),
        _ => tokio::spawn(shell::run(ctx)),
    };
    Handler { tx: Some(tx), join }
}

async fn recv_link(link: &mut Option<Link>) -> Option<LinkIn> {
    match link {
        Some(l) => l.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn join_handler(handler: &mut Option<Handler>) -> HandlerExit {
    match handler {
        Some(h) => match (&mut h.join).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("the session handler failed: {e}");
                HandlerExit::Failed {
                    exit: crate::exit::Exit::Software,
                    message: format!(
                        "internal error in the session handler ({e}); please report it"
                    ),
                }
            }
        },
        None => std::future::pending().await,
    }
}

async fn run_op<T>(op: &mut Option<Op<T>>) -> T {
    match op {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Waits for room in a queue.
async fn reserve<T>(tx: Option<mpsc::Sender<T>>) -> Option<mpsc::OwnedPermit<T>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
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
