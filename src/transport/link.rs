//! One live websocket connection to the service: a reader task and a writer task around the
//! split stream, so the session driver never blocks on the socket while it has protocol work
//! to do (a peer that stops reading must not stop us reading, timing out or exiting).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{ConnectOptions, TransportError};
use crate::cli::{Secret, WIRE_VERSION};
use crate::wire::OpenDataChannelInput;

/// Websocket ping interval, as the reference; the session's liveness checks ping far more often
/// (`session::core::liveness`) unless they are turned off.
pub const PING_INTERVAL: Duration = Duration::from_secs(300);
/// After a failed write, how long the reader gets to deliver what is already received.
const WRITE_FAILURE_GRACE: Duration = Duration::from_secs(1);

/// What the reader saw.
#[derive(Debug)]
pub enum LinkIn {
    /// A binary (or text) websocket message.
    Frame(Vec<u8>),
    /// A pong (or the service's ping): the link works, though it carried no frame.
    Alive,
    /// The connection ended.
    Lost {
        /// Why, for the user.
        reason: String,
        /// The service closed with 1008 (policy): it refused our token or the session.
        refused: bool,
    },
}

/// An open connection. Dropping it stops both tasks and closes the socket.
pub struct Link {
    /// Frames to write (bounded: `try_reserve` tells when the writer is behind).
    pub tx: mpsc::Sender<Message>,
    /// What the reader saw.
    pub rx: mpsc::Receiver<LinkIn>,
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
    /// Dials `url` and sends OpenDataChannelInput with `token`.
    pub async fn open(
        url: &str,
        token: &Secret,
        client_id: &uuid::Uuid,
        opts: &ConnectOptions,
    ) -> Result<Self, TransportError> {
        let ws = super::connect(url, opts).await?;
        let (mut sink, mut stream) = ws.split();
        let open = OpenDataChannelInput {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: token.expose().to_owned(),
            client_id: client_id.to_string(),
            client_version: WIRE_VERSION.into(),
        };
        tokio::time::timeout(
            opts.timeouts.upgrade,
            sink.send(Message::Text(open.to_json().into())),
        )
        .await
        .map_err(|_| TransportError::NoAnswer(opts.timeouts.upgrade))?
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
                let frame = match stream.next().await {
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Close(f))) => {
                        break match f {
                            Some(f) => {
                                refused = u16::from(f.code) == 1008;
                                format!("closed by the service: {} {}", u16::from(f.code), f.reason)
                            }
                            None => "closed by the service".to_owned(),
                        }
                    }
                    Some(Ok(Message::Pong(_) | Message::Ping(_))) => {
                        if rtx.send(LinkIn::Alive).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break format!("read failed: {e}"),
                    None => break "connection closed".to_owned(),
                };
                if rtx.send(LinkIn::Frame(frame)).await.is_err() {
                    return;
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
