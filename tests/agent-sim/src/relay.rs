//! The relay service (MGS) end of the client websocket: `/v1/data-channel/<session-id>`.
//!
//! What we know of MGS comes from the plugin's code, the captures and field reports; where we
//! had to guess (token rejection, the rate limit's close), README.md says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ssm_plugin::wire::{ClientMessage, MessageType, OpenDataChannelInput, PayloadType};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::faults::When;
use crate::session::{lock, now_ms, AgentInput, Session, Shared, WsCmd};

/// How long a new connection may take to send its OpenDataChannelInput.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Close code for refused tokens and throttling (RFC 6455 policy violation).
const POLICY: u16 = 1008;

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((tcp, peer)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match tls {
                Some(acc) => match acc.accept(tcp).await {
                    Ok(s) => connection(shared, s, shutdown).await,
                    Err(e) => tracing::info!(%peer, "TLS handshake failed: {e}"),
                },
                None => connection(shared, tcp, shutdown).await,
            }
        });
    }
}

async fn connection<S>(shared: Arc<Shared>, stream: S, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let found: Arc<std::sync::Mutex<Option<Arc<Session>>>> = Default::default();
    let found2 = found.clone();
    let shared2 = shared.clone();
    // The callback's signature is tungstenite's; its large Err type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let id = req
            .uri()
            .path()
            .strip_prefix("/v1/data-channel/")
            .map(str::to_owned);
        match id.and_then(|id| shared2.session(&id)) {
            Some(s) => {
                match check_upgrade_signature(&shared2.cfg(), req) {
                    Ok(a) => s.stats().upgrades.push(a),
                    Err(()) => {
                        s.stats().rejected_signatures += 1;
                        let mut r = ErrorResponse::new(Some(
                        "InvalidSignatureException: the websocket upgrade signature was refused"
                            .into(),
                    ));
                        *r.status_mut() = http_status(403);
                        return Err(r);
                    }
                }
                *lock(&found2) = Some(s);
                Ok(resp)
            }
            None => {
                let mut r = ErrorResponse::new(Some("session not found".into()));
                *r.status_mut() = http_status(404);
                Err(r)
            }
        }
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!("websocket upgrade refused: {e}");
            return;
        }
    };
    let Some(sess) = lock(&found).take() else {
        return;
    };
    if shared.cfg().faults.stall {
        tracing::info!(session = %sess.id, "stalling the connection (fault injection)");
        let _keep = ws;
        let _ = shutdown.wait_for(|s| *s).await;
        return;
    }
    let (mut sink, mut source) = ws.split();

    // OpenDataChannelInput: the first frame, text.
    let first = tokio::time::timeout(OPEN_TIMEOUT, async {
        loop {
            match source.next().await {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let open: Option<OpenDataChannelInput> = first.and_then(|t| serde_json::from_str(&t).ok());
    let Some(open) = open else {
        let _ = sink
            .send(close(
                POLICY,
                "The first message must be OpenDataChannelInput",
            ))
            .await;
        return;
    };
    let token_ok = *lock(&sess.token) == open.token_value && !open.token_value.is_empty();
    if token_ok && sess.is_ended() {
        if let Some(frame) = sess.pending_farewell() {
            // The agent finished while this client was away: hand over the channel_closed it
            // missed, then end normally.
            tracing::info!(session = %sess.id, "client resumed an ended session; sending channel_closed");
            if sink.send(Message::Binary(frame.into())).await.is_ok() {
                sess.farewell_delivered();
                let _ = sink.send(close(1000, "")).await;
            }
            return;
        }
    }
    if !token_ok || sess.is_ended() {
        sess.stats().rejected_tokens += 1;
        let reason = if sess.is_ended() {
            "Session is already terminated"
        } else {
            "Authentication failed: the token is invalid or expired"
        };
        tracing::info!(session = %sess.id, request = %open.request_id, "refusing connection: {reason}");
        let _ = sink.send(close(POLICY, reason)).await;
        return;
    }
    tracing::info!(session = %sess.id, client_version = %open.client_version, "client connected");
    *lock(&sess.open_client_version) = open.client_version.clone();

    // Register as the session's connection, replacing any older one.
    let (tx, mut rx) = mpsc::unbounded_channel::<WsCmd>();
    let conn_id = {
        let mut link = lock(&sess.link);
        link.next_conn_id += 1;
        let id = link.next_conn_id;
        if let Some((_, old)) = link.conn.take() {
            let _ = old.send(WsCmd::Cut);
        }
        let queued: Vec<Vec<u8>> = link.queue.drain(..).collect();
        let n = queued.len() as u64;
        for f in queued {
            let _ = tx.send(WsCmd::Frame(f));
        }
        link.conn = Some((id, tx.clone()));
        link.disconnected_at = None;
        // The agent finished between the check above and now: its channel_closed follows the
        // queued output on this connection.
        if let Some(f) = sess.pending_farewell() {
            let _ = tx.send(WsCmd::Farewell(f));
        }
        drop(link);
        let mut st = sess.stats();
        st.connections += 1;
        st.frames_out += n;
        id
    };
    if let Some(life) = shared.cfg().limits.ws_lifetime {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(life).await;
            let _ = tx.send(WsCmd::Close(1000, "Bye".into()));
        });
    }

    let kill = Arc::new(Notify::new());
    let kill_w = kill.clone();
    let writer_sess = sess.clone();
    let writer = tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                WsCmd::Frame(f) => {
                    if sink.send(Message::Binary(f.into())).await.is_err() {
                        break;
                    }
                }
                WsCmd::Close(code, reason) => {
                    let _ = sink.send(close(code, &reason)).await;
                    break;
                }
                WsCmd::Cut => break,
                WsCmd::Farewell(f) => {
                    if sink.send(Message::Binary(f.into())).await.is_ok() {
                        writer_sess.farewell_delivered();
                        let _ = sink.send(close(1000, "")).await;
                    }
                    break;
                }
            }
        }
        kill_w.notify_one();
        drop(sink);
    });

    let mut rate = RateWindow::new();
    // Delayed frames towards the agent, in order (created on first use).
    let mut line = None;
    // `kill` holds a single permit: whichever select consumes it must end the whole reader
    // loop, or the read half (and so the TCP connection) stays open after a cut.
    'conn: loop {
        let msg = tokio::select! {
            m = source.next() => m,
            _ = kill.notified() => break,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let data = match msg {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        sess.stats().frames_in += 1;
        if is_input_data(&data) && rate.count(&shared, &sess, &tx) {
            continue;
        }
        let faults = shared.cfg().faults.to_agent;
        let outs = {
            let mut rng = lock(&shared.rng);
            let mut st = sess.stats();
            crate::faults::apply(&mut rng, &faults, data, &mut st.to_agent)
        };
        for (when, f) in outs {
            match when {
                When::Now => {
                    tokio::select! {
                        _ = sess.agent_tx.send(AgentInput::Frame(f)) => {}
                        _ = kill.notified() => break 'conn,
                    }
                }
                When::InLine(delay) => {
                    let due = tokio::time::Instant::now() + delay;
                    let tx = line.get_or_insert_with(|| {
                        let agent = sess.agent_tx.clone();
                        crate::faults::delay_line(&shared.runtime, move |f| {
                            let agent = agent.clone();
                            async move {
                                let _ = agent.send(AgentInput::Frame(f)).await;
                            }
                        })
                    });
                    let _ = tx.send((due, f));
                }
                When::Aside(delay) => {
                    let agent = sess.agent_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = agent.send(AgentInput::Frame(f)).await;
                    });
                }
            }
        }
    }
    drop(source);
    writer.abort();
    on_disconnect(&sess, conn_id);
}

/// Checks (with `ws_credentials`) or records (without) the SigV4 signature of an upgrade.
/// `Err` means: refuse with 403. The reason is logged, never the secret.
fn check_upgrade_signature(
    cfg: &crate::config::SimConfig,
    req: &Request,
) -> Result<crate::session::UpgradeAuth, ()> {
    use crate::api::sigv4;
    let uri = req.uri().to_string();
    let headers = req.headers();
    let authorization_header = headers.contains_key("authorization");
    let unverified = sigv4::parse_unverified(&sigv4::Request {
        method: req.method().as_str(),
        uri: &uri,
        headers,
        body: None,
    });
    if cfg.ws_credentials.is_empty() {
        return Ok(crate::session::UpgradeAuth {
            authorization_header,
            signed_by: unverified,
        });
    }
    if unverified.is_none() && !authorization_header {
        if cfg.require_signed_upgrade {
            tracing::info!("refusing an unsigned websocket upgrade");
            return Err(());
        }
        return Ok(crate::session::UpgradeAuth {
            authorization_header,
            signed_by: None,
        });
    }
    match sigv4::verify_presigned_or_signed_ws_upgrade(
        req.method().as_str(),
        &uri,
        headers,
        &cfg.ws_credentials,
        "ssmmessages",
    ) {
        Ok(by) => Ok(crate::session::UpgradeAuth {
            authorization_header,
            signed_by: Some(by),
        }),
        Err(e) => {
            tracing::info!("refusing a websocket upgrade: {e}");
            Err(())
        }
    }
}

/// The client left without channel_closed: keep the session for the resume window.
fn on_disconnect(sess: &Arc<Session>, conn_id: u64) {
    let mut link = lock(&sess.link);
    if link.conn.as_ref().map(|(id, _)| *id) != Some(conn_id) {
        return;
    }
    link.conn = None;
    let at = Instant::now();
    link.disconnected_at = Some(at);
    drop(link);
    if sess.is_ended() {
        return;
    }
    tracing::info!(session = %sess.id, "client disconnected; waiting for a resume");
    let window = sess.shared.cfg().resume_window;
    let sess = sess.clone();
    tokio::spawn(async move {
        tokio::time::sleep(window).await;
        let still_gone = lock(&sess.link).disconnected_at == Some(at);
        if still_gone && !sess.is_ended() {
            tracing::info!(session = %sess.id, "resume window over; terminating");
            sess.abandoned
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = sess.agent_tx.send(AgentInput::Terminate).await;
        }
    });
}

fn is_input_data(frame: &[u8]) -> bool {
    frame.len() > 36 && frame[4..36].starts_with(b"input_stream_data")
}

/// The service's per-session data-frame budget.
struct RateWindow {
    start: Instant,
    count: u32,
    over: u64,
    tripped: bool,
}

impl RateWindow {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            count: 0,
            over: 0,
            tripped: false,
        }
    }

    /// Counts one client data frame; true when the frame is to be discarded (throttled).
    fn count(
        &mut self,
        shared: &Shared,
        sess: &Arc<Session>,
        tx: &mpsc::UnboundedSender<WsCmd>,
    ) -> bool {
        if self.tripped {
            return true;
        }
        let limits = shared.cfg().limits;
        let Some(limit) = limits.frame_rate_limit else {
            return false;
        };
        self.count += 1;
        if self.start.elapsed() >= Duration::from_secs(1) {
            if self.count > limit {
                self.over += 1;
            } else {
                self.over = 0;
            }
            self.count = 0;
            self.start = Instant::now();
        }
        let seconds = limits.frame_rate_window.as_secs().max(1);
        if self.over >= seconds {
            self.tripped = true;
            tracing::warn!(session = %sess.id, "client exceeds {limit} data frames/s: throttling");
            let pause = ClientMessage::new(
                MessageType::PausePublication,
                0,
                0,
                PayloadType::NONE,
                bytes::Bytes::new(),
                now_ms(),
                uuid::Uuid::new_v4(),
            );
            let _ = tx.send(WsCmd::Frame(pause.encode()));
            sess.stats().pause_publication_sent += 1;
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tx.send(WsCmd::Close(POLICY, "Rate exceeded".into()));
            });
            return true;
        }
        false
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}

fn http_status(code: u16) -> tokio_tungstenite::tungstenite::http::StatusCode {
    tokio_tungstenite::tungstenite::http::StatusCode::from_u16(code)
        .unwrap_or(tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND)
}
