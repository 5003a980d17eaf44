//! A small websocket client for the simulator tests, built on `ssm_plugin::wire` (not the real
//! plugin): opens the data channel, acks agent output in order, and keeps what it received.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use agent_sim::{SessionBackend, SessionSpec, SimConfig, SimHandle, Simulator, Started};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ssm_plugin::wire::{
    ChannelClosed, ClientMessage, HandshakeResponse, MessageType, OpenDataChannelInput,
    PayloadType, ProcessedClientAction,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const NEW_CLIENT: &str = "1.2.650.0";

/// Simulator settings that keep tests fast.
pub fn fast_config() -> SimConfig {
    SimConfig {
        pty_start_delay: Duration::from_millis(100),
        ..SimConfig::default()
    }
}

pub async fn sim(config: SimConfig) -> SimHandle {
    Simulator::start(config).await.expect("simulator starts")
}

pub fn spec(doc: Option<&str>, params: &[(&str, &str)]) -> SessionSpec {
    SessionSpec {
        target: "i-0123456789abcdef0".into(),
        document_name: doc.map(str::to_owned),
        parameters: agent_sim::parameters(params),
        reason: None,
    }
}

pub fn start(sim: &SimHandle, doc: Option<&str>, params: &[(&str, &str)]) -> Started {
    sim.backend()
        .start_session(spec(doc, params))
        .expect("session starts")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What the client saw.
#[derive(Debug)]
pub enum Event {
    /// An in-order agent data message (already acked).
    Data(ClientMessage),
    /// An acknowledge from the agent (its acked sequence number).
    Ack(i64),
    /// channel_closed with its Output.
    ChannelClosed(String),
    /// The websocket closed (close code, reason), or dropped (None).
    Closed(Option<(u16, String)>),
    /// Other messages (pause_publication, ...).
    Other(ClientMessage),
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Client {
    ws: WebSocketStream<Box<dyn Io>>,
    pub seq: i64,
    pub expected: i64,
    buffered: BTreeMap<i64, ClientMessage>,
    ready: std::collections::VecDeque<Event>,
    /// Agent data messages seen more than once (sequence below expected).
    pub duplicates: u64,
    /// Agent data messages that arrived ahead of the expected sequence number.
    pub out_of_order: u64,
    /// Frames dropped because their payload digest did not match (as the plugin does).
    pub bad_digest: u64,
    /// Frames dropped because they did not parse at all.
    pub malformed: u64,
    /// Pongs received (answers to [`Client::ping`]).
    pub pongs: u64,
}

impl Client {
    /// Connects (ws://) and sends OpenDataChannelInput.
    pub async fn connect(url: &str, token: &str, client_version: &str) -> Client {
        let hostport = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port in url");
        let tcp = tokio::net::TcpStream::connect(hostport)
            .await
            .expect("tcp connect");
        Self::over(Box::new(tcp), url, token, client_version).await
    }

    /// Opens a websocket over an existing stream (used for TLS).
    pub async fn over(io: Box<dyn Io>, url: &str, token: &str, client_version: &str) -> Client {
        let (ws, _) = tokio_tungstenite::client_async(url, io)
            .await
            .expect("ws handshake");
        let mut c = Client::from_ws(ws);
        c.send_open(token, client_version).await;
        c
    }

    fn from_ws(ws: WebSocketStream<Box<dyn Io>>) -> Client {
        Client {
            ws,
            seq: 0,
            expected: 0,
            buffered: BTreeMap::new(),
            ready: Default::default(),
            duplicates: 0,
            out_of_order: 0,
            bad_digest: 0,
            malformed: 0,
            pongs: 0,
        }
    }

    async fn send_open(&mut self, token: &str, client_version: &str) {
        let open = OpenDataChannelInput {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: token.into(),
            client_id: uuid::Uuid::new_v4().to_string(),
            client_version: client_version.into(),
        };
        self.ws
            .send(Message::Text(open.to_json().into()))
            .await
            .expect("send open");
    }

    pub fn input(&mut self, pt: PayloadType, payload: &[u8]) -> ClientMessage {
        let m = ClientMessage::new(
            MessageType::InputStreamData,
            self.seq,
            0,
            pt,
            Bytes::copy_from_slice(payload),
            now_ms(),
            uuid::Uuid::new_v4(),
        );
        self.seq += 1;
        m
    }

    pub async fn send_raw(&mut self, frame: Vec<u8>) {
        self.ws
            .send(Message::Binary(frame.into()))
            .await
            .expect("send frame");
    }

    /// Sends one input_stream_data message with the next sequence number.
    pub async fn send(&mut self, pt: PayloadType, payload: &[u8]) -> ClientMessage {
        let m = self.input(pt, payload);
        self.send_raw(m.encode()).await;
        m
    }

    /// Sends a websocket ping (answered by a pong unless the relay is stalled).
    pub async fn ping(&mut self) {
        self.ws
            .send(Message::Ping(b"agent-sim-test".to_vec().into()))
            .await
            .expect("send ping");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.send(PayloadType::OUTPUT, s.as_bytes()).await;
    }

    /// Next event, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                None | Some(Err(_)) => return Some(Event::Closed(None)),
                Some(Ok(Message::Close(f))) => {
                    return Some(Event::Closed(
                        f.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ))
                }
                // Like the plugin: a frame that fails validation is dropped, not acked.
                Some(Ok(Message::Binary(b))) => match ClientMessage::decode(&b) {
                    Ok(m) => self.on_message(m).await,
                    Err(ssm_plugin::wire::DecodeError::Digest) => self.bad_digest += 1,
                    Err(_) => self.malformed += 1,
                },
                Some(Ok(Message::Pong(_))) => self.pongs += 1,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn on_message(&mut self, m: ClientMessage) {
        match m.message_type {
            MessageType::OutputStreamData => {
                let seq = m.sequence_number;
                if seq < self.expected {
                    self.duplicates += 1;
                    return;
                }
                let ack = ClientMessage::acknowledge_for(&m, now_ms(), uuid::Uuid::new_v4());
                self.send_raw(ack.encode()).await;
                if seq == self.expected {
                    self.ready.push_back(Event::Data(m));
                    self.expected += 1;
                    while let Some(b) = self.buffered.remove(&self.expected) {
                        self.ready.push_back(Event::Data(b));
                        self.expected += 1;
                    }
                } else {
                    if !self.buffered.contains_key(&seq) {
                        self.out_of_order += 1;
                    }
                    self.buffered.insert(seq, m);
                }
            }
            MessageType::Acknowledge => {
                let a: ssm_plugin::wire::AcknowledgeContent =
                    serde_json::from_slice(&m.payload).expect("ack json");
                self.ready
                    .push_back(Event::Ack(a.acknowledged_message_sequence_number));
            }
            MessageType::ChannelClosed => {
                let c: ChannelClosed = serde_json::from_slice(&m.payload).expect("closed json");
                assert_eq!(c.message_type, "channel_closed");
                assert_eq!(c.schema_version, 1);
                assert!(c.created_date.ends_with('Z') && c.created_date.len() == 24);
                self.ready.push_back(Event::ChannelClosed(c.output));
            }
            _ => self.ready.push_back(Event::Other(m)),
        }
    }

    /// Next in-order data message, skipping acks.
    pub async fn data(&mut self, timeout: Duration) -> Option<ClientMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Event::Data(m) => return Some(m),
                Event::ChannelClosed(o) => panic!("channel closed while waiting for data: {o:?}"),
                Event::Closed(c) => panic!("websocket closed while waiting for data: {c:?}"),
                _ => {}
            }
        }
    }

    /// Collects Output text until it shows a shell prompt (`$ `, or `# ` as root).
    pub async fn prompt(&mut self, timeout: Duration) -> String {
        self.output_until_any(&["$ ", "# "], timeout).await
    }

    /// Collects Output text until it contains `needle`.
    pub async fn output_until(&mut self, needle: &str, timeout: Duration) -> String {
        self.output_until_any(&[needle], timeout).await
    }

    /// Collects Output text until it contains one of `needles`.
    pub async fn output_until_any(&mut self, needles: &[&str], timeout: Duration) -> String {
        let needle = needles.join(" | ");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut all = String::new();
        while !needles.iter().any(|n| all.contains(n)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.data(left).await {
                Some(m) if m.payload_type == PayloadType::OUTPUT => {
                    all.push_str(&String::from_utf8_lossy(&m.payload))
                }
                Some(_) => {}
                None => panic!("timed out waiting for {needle:?}; output so far: {all:?}"),
            }
        }
        all
    }

    /// Waits for channel_closed (collecting data meanwhile); returns its Output and the data.
    pub async fn until_closed(&mut self, timeout: Duration) -> (String, Vec<ClientMessage>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut data = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Event::Data(m)) => data.push(m),
                Some(Event::ChannelClosed(o)) => return (o, data),
                Some(Event::Closed(c)) => panic!("websocket closed before channel_closed: {c:?}"),
                Some(_) => {}
                None => panic!("timed out waiting for channel_closed"),
            }
        }
    }

    /// Waits for the websocket to close; returns the close frame.
    pub async fn until_ws_closed(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Event::Closed(c)) => return c,
                Some(_) => {}
                None => panic!("timed out waiting for the websocket to close"),
            }
        }
    }

    /// Answers a HandshakeRequest (which must be the next data message) with success for
    /// every action; returns the request's JSON.
    pub async fn handshake(&mut self, client_version: &str) -> serde_json::Value {
        let req = self
            .data(Duration::from_secs(10))
            .await
            .expect("HandshakeRequest");
        assert_eq!(req.payload_type, PayloadType::HANDSHAKE_REQUEST);
        assert_eq!(req.sequence_number, 0);
        assert_eq!(req.flags, 1);
        let json: serde_json::Value = serde_json::from_slice(&req.payload).unwrap();
        let actions = json["RequestedClientActions"].as_array().unwrap();
        let resp = HandshakeResponse {
            client_version: client_version.into(),
            processed_client_actions: actions
                .iter()
                .map(|a| ProcessedClientAction {
                    action_type: a["ActionType"].as_str().unwrap().into(),
                    action_status: 1,
                    action_result: serde_json::Value::Null,
                    error: String::new(),
                })
                .collect(),
            errors: None,
        };
        self.send(
            PayloadType::HANDSHAKE_RESPONSE,
            &ssm_plugin::wire::to_vec(&resp),
        )
        .await;
        json
    }

    /// Reads until HandshakeComplete; returns its CustomerMessage.
    pub async fn handshake_complete(&mut self) -> String {
        let m = self
            .data(Duration::from_secs(10))
            .await
            .expect("HandshakeComplete");
        assert_eq!(m.payload_type, PayloadType::HANDSHAKE_COMPLETE);
        let c: ssm_plugin::wire::HandshakeComplete = serde_json::from_slice(&m.payload).unwrap();
        assert!(c.handshake_time_to_complete > 0);
        c.customer_message
    }
}

/// A TCP echo server on 127.0.0.1; returns its port.
pub async fn echo_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// A port on 127.0.0.1 nobody listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Deterministic test bytes.
pub fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Reads Output data messages until `n` bytes arrived; each payload is at most 1024 bytes
/// (the agent's port read size).
pub async fn read_port_bytes(c: &mut Client, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = c.data(Duration::from_secs(10)).await.expect("port data");
        assert_eq!(m.payload_type, PayloadType::OUTPUT);
        assert!(m.payload.len() <= 1024);
        got.extend_from_slice(&m.payload);
    }
    got
}

pub const SMUX_SYN: u8 = 0;
pub const SMUX_FIN: u8 = 1;
pub const SMUX_PSH: u8 = 2;
pub const SMUX_NOP: u8 = 3;

/// Encodes one smux v1 frame (what the plugin's smux client writes).
pub fn smux(cmd: u8, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut f = vec![1, cmd];
    f.extend_from_slice(&(data.len() as u16).to_le_bytes());
    f.extend_from_slice(&sid.to_le_bytes());
    f.extend_from_slice(data);
    f
}

/// Splits a byte stream into complete smux frames (cmd, sid, data), keeping the remainder.
pub fn smux_frames(buf: &mut Vec<u8>) -> Vec<(u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 8 {
            return out;
        }
        assert_eq!(buf[0], 1, "smux version 1");
        let len = u16::from_le_bytes([buf[2], buf[3]]) as usize;
        if buf.len() < 8 + len {
            return out;
        }
        let sid = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        out.push((buf[1], sid, buf[8..8 + len].to_vec()));
        buf.drain(..8 + len);
    }
}
