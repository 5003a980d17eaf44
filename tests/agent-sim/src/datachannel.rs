//! The agent's data channel (`agent/session/datachannel/datachannel.go`): sequence numbers,
//! the outgoing buffer and its resend scheduler, acks, the incoming reorder buffer, pause and
//! resume, and the handshake (`PerformHandshake`).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use rand::RngCore;
use serde_json::{json, Value};
use ssm_plugin::wire::{
    AcknowledgeContent, ClientMessage, DecodeError, EncryptionChallenge, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, KmsEncryptionRequest, KmsEncryptionResponse, MessageType,
    PayloadType, RequestedClientAction, SessionTypeRequest,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::crypto::AgentCipher;
use crate::session::{lock, now_ms, AgentInput, Session};

/// `config.go: OutgoingMessageBufferCapacity` / `IncomingMessageBufferCapacity`.
const BUFFER_CAPACITY: usize = 100_000;
/// `config.go: ResendSleepInterval`.
const RESEND_TICK: Duration = Duration::from_millis(100);
/// `config.go: ClockGranularity`.
const CLOCK_GRANULARITY: f64 = 0.010;
/// `config.go: MaxTransmissionTimeout`.
const MAX_RTO: f64 = 1.0;
/// `datachannel.go: clientVersionWithoutOutputSeparation`.
const CLIENT_VERSION_WITHOUT_OUTPUT_SEPARATION: &str = "1.2.295";
/// `datachannel.go: firstVersionWithOutputSeparationFeature`.
const FIRST_VERSION_WITH_OUTPUT_SEPARATION: &str = "1.2.312.0";
/// The agent's error when the client never answers the HandshakeRequest.
pub(crate) const HANDSHAKE_TIMEOUT_ERROR: &str =
    "Handshake timed out. Please ensure that you have the latest version of the session manager plugin.";

/// Why a plugin did not take a message.
#[derive(Debug)]
pub(crate) enum HandleError {
    /// `ErrHandlerNotReady`: not acked, the client resends.
    NotReady,
    /// Any other failure: logged, not acked.
    Failed(String),
}

pub(crate) type HandlerFut<'a> = Pin<Box<dyn Future<Output = Result<(), HandleError>> + Send + 'a>>;

/// A session plugin's `InputStreamMessageHandler`.
pub(crate) trait InputHandler: Send + Sync {
    fn handle(&self, payload_type: PayloadType, payload: Bytes) -> HandlerFut<'_>;
}

struct Outgoing {
    seq: i64,
    bytes: Vec<u8>,
    last_sent: Instant,
}

struct State {
    seq: i64,
    outgoing: VecDeque<Outgoing>,
    expected: i64,
    incoming: BTreeMap<i64, ClientMessage>,
    rtt: f64,
    rttvar: f64,
    rto: f64,
    paused: bool,
    encryption_enabled: bool,
    cipher: Option<AgentCipher>,
    hs_skipped: bool,
    hs_complete: bool,
    client_version: String,
    separate_output: bool,
    random_challenge: String,
    challenge_plain: Vec<u8>,
    response_tx: Option<oneshot::Sender<Result<(), String>>>,
    challenge_tx: Option<oneshot::Sender<Result<(), String>>>,
}

pub(crate) struct DataChannel {
    pub(crate) sess: Arc<Session>,
    st: Mutex<State>,
    handler: Mutex<Option<Arc<dyn InputHandler>>>,
    cancel: watch::Sender<bool>,
}

impl DataChannel {
    pub(crate) fn new(sess: Arc<Session>) -> Arc<Self> {
        let mut challenge = [0u8; 16];
        rand::rng().fill_bytes(&mut challenge);
        Arc::new(Self {
            sess,
            st: Mutex::new(State {
                seq: 0,
                outgoing: VecDeque::new(),
                expected: 0,
                incoming: BTreeMap::new(),
                rtt: 0.100,
                rttvar: 0.0,
                rto: 0.200,
                paused: false,
                encryption_enabled: false,
                cipher: None,
                hs_skipped: false,
                hs_complete: false,
                client_version: String::new(),
                separate_output: false,
                random_challenge: base64::engine::general_purpose::STANDARD.encode(challenge),
                challenge_plain: Vec::new(),
                response_tx: None,
                challenge_tx: None,
            }),
            handler: Mutex::new(None),
            cancel: watch::Sender::new(false),
        })
    }

    /// Starts the incoming-message loop and the resend scheduler.
    pub(crate) fn start(self: &Arc<Self>, rx: mpsc::Receiver<AgentInput>) {
        let rt = self.sess.shared.runtime.clone();
        rt.spawn(self.clone().inbound_loop(rx));
        rt.spawn(self.clone().resend_loop());
    }

    pub(crate) fn set_handler(&self, h: Arc<dyn InputHandler>) {
        *lock(&self.handler) = Some(h);
    }

    pub(crate) fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when the session is cancelled (TerminateSession, Flag TerminateSession, a
    /// failed handshake, the end of the resume window).
    pub(crate) async fn cancelled(&self) {
        let mut rx = self.cancel.subscribe();
        // The sender lives as long as self, so wait_for only ends when the value is true.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// `IsActive`: false while paused by `pause_publication`.
    pub(crate) fn is_active(&self) -> bool {
        !lock(&self.st).paused
    }

    /// Waits (polling like the agent's 1 ms loops) until publication is not paused.
    pub(crate) async fn wait_active(&self) {
        while !self.is_active() && !self.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub(crate) fn client_version(&self) -> String {
        lock(&self.st).client_version.clone()
    }

    pub(crate) fn set_separate_output(&self, on: bool) {
        lock(&self.st).separate_output = on;
    }

    /// `SendStreamDataMessage`: numbers, (encrypts,) sends unless paused, and buffers.
    pub(crate) fn send_stream(&self, payload_type: PayloadType, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let (bytes, send_now) = {
            let mut st = lock(&self.st);
            let encrypt = st.encryption_enabled
                && matches!(
                    payload_type,
                    PayloadType::OUTPUT | PayloadType::STDERR | PayloadType::EXIT_CODE
                );
            let payload = match (&mut st.cipher, encrypt) {
                (Some(c), true) => c.encrypt(data),
                _ => data.to_vec(),
            };
            let seq = st.seq;
            let msg = ClientMessage::new(
                MessageType::OutputStreamData,
                seq,
                if seq == 0 { 1 } else { 0 },
                payload_type,
                Bytes::from(payload),
                now_ms(),
                uuid::Uuid::new_v4(),
            );
            let bytes = msg.encode();
            if st.outgoing.len() < BUFFER_CAPACITY {
                st.outgoing.push_back(Outgoing {
                    seq,
                    bytes: bytes.clone(),
                    last_sent: Instant::now(),
                });
            }
            st.seq += 1;
            (bytes, !st.paused)
        };
        self.sess.stats().data_out += 1;
        if send_now {
            self.sess.to_client(bytes);
        }
    }

    fn send_ack(&self, msg: &ClientMessage) {
        let ack = ClientMessage::acknowledge_for(msg, now_ms(), uuid::Uuid::new_v4());
        self.sess.stats().acks_out += 1;
        self.sess.to_client(ack.encode());
    }

    /// `ResendStreamDataMessageScheduler`: every 100 ms, the oldest unacked message only.
    async fn resend_loop(self: Arc<Self>) {
        let mut ended = self.sess.ended.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESEND_TICK) => {}
                _ = ended.wait_for(|e| e.is_some()) => return,
            }
            let resend = {
                let mut st = lock(&self.st);
                let rto = st.rto;
                if st.paused {
                    None
                } else {
                    match st.outgoing.front_mut() {
                        Some(front) if front.last_sent.elapsed().as_secs_f64() > rto => {
                            front.last_sent = Instant::now();
                            Some(front.bytes.clone())
                        }
                        _ => None,
                    }
                }
            };
            if let Some(b) = resend {
                self.sess.stats().resends += 1;
                self.sess.to_client(b);
            }
        }
    }

    /// `ProcessAcknowledgedMessage` + `calculateRetransmissionTimeout`.
    fn on_ack(&self, seq: i64) {
        let mut st = lock(&self.st);
        if let Some(pos) = st.outgoing.iter().position(|m| m.seq == seq) {
            let r = st.outgoing[pos].last_sent.elapsed().as_secs_f64();
            st.rttvar = 0.75 * st.rttvar + 0.25 * (st.rtt - r).abs();
            st.rtt = 0.875 * st.rtt + 0.125 * r;
            st.rto = (st.rtt + (4.0 * st.rttvar).max(CLOCK_GRANULARITY)).min(MAX_RTO);
            st.outgoing.remove(pos);
        }
    }

    /// `PrepareToCloseChannel`: wait until everything is acked, at most the drain timeout.
    pub(crate) async fn prepare_to_close(&self) {
        let deadline = Instant::now() + self.sess.cfg.close_drain_timeout;
        while Instant::now() < deadline {
            if lock(&self.st).outgoing.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::debug!(session = %self.sess.id, "timeout waiting for the send buffer to empty");
    }

    async fn inbound_loop(self: Arc<Self>, mut rx: mpsc::Receiver<AgentInput>) {
        let mut ended = self.sess.ended.subscribe();
        loop {
            let input = tokio::select! {
                i = rx.recv() => i,
                _ = ended.wait_for(|e| e.is_some()) => None,
            };
            match input {
                None => return,
                Some(AgentInput::Terminate) => self.cancel(),
                Some(AgentInput::Frame(raw)) => self.on_frame(&raw).await,
            }
        }
    }

    async fn on_frame(&self, raw: &[u8]) {
        let msg = match decode_like_agent(raw) {
            Ok((m, digest_ok)) => {
                if !digest_ok {
                    self.sess.stats().bad_digest_in += 1;
                }
                m
            }
            Err(e) => {
                tracing::warn!(session = %self.sess.id, "agent cannot parse client frame: {e}");
                self.sess.stats().unparsable_in += 1;
                return;
            }
        };
        match msg.message_type {
            MessageType::InputStreamData => {
                lock(&self.st).paused = false;
                self.sess.stats().data_in += 1;
                self.on_stream_data(msg).await;
            }
            MessageType::Acknowledge => {
                lock(&self.st).paused = false;
                self.sess.stats().acks_in += 1;
                match serde_json::from_slice::<AcknowledgeContent>(&msg.payload) {
                    Ok(a) => self.on_ack(a.acknowledged_message_sequence_number),
                    Err(e) => tracing::warn!("bad acknowledge payload: {e}"),
                }
            }
            MessageType::PausePublication => lock(&self.st).paused = true,
            MessageType::StartPublication => lock(&self.st).paused = false,
            MessageType::ChannelClosed => self.cancel(),
            other => tracing::debug!("agent ignores {other} from the client"),
        }
    }

    /// `handleStreamDataMessage`.
    async fn on_stream_data(&self, msg: ClientMessage) {
        let expected = lock(&self.st).expected;
        let seq = msg.sequence_number;
        if seq == expected {
            match self.process(msg.clone()).await {
                Ok(()) => {}
                Err(HandleError::NotReady) => {
                    self.sess.stats().not_ready += 1;
                    return;
                }
                Err(HandleError::Failed(e)) => {
                    tracing::warn!(session = %self.sess.id, seq, "unable to process stream data: {e}");
                    return;
                }
            }
            self.send_ack(&msg);
            lock(&self.st).expected += 1;
            // processIncomingMessageBufferItems: stop at the first failure, keeping the entry.
            loop {
                let next = {
                    let st = lock(&self.st);
                    st.incoming.get(&st.expected).cloned()
                };
                let Some(m) = next else { break };
                if let Err(e) = self.process(m.clone()).await {
                    tracing::warn!(session = %self.sess.id, "buffered message {} failed: {e:?}", m.sequence_number);
                    break;
                }
                let mut st = lock(&self.st);
                st.incoming.remove(&m.sequence_number);
                st.expected += 1;
            }
        } else if seq > expected {
            let room = lock(&self.st).incoming.len() < BUFFER_CAPACITY;
            if room {
                self.sess.stats().out_of_order += 1;
                self.send_ack(&msg);
                lock(&self.st).incoming.insert(seq, msg);
            }
        } else {
            self.sess.stats().duplicates_seen += 1;
            self.send_ack(&msg);
        }
    }

    /// `processStreamDataMessage`.
    async fn process(&self, mut msg: ClientMessage) -> Result<(), HandleError> {
        {
            let st = lock(&self.st);
            if st.encryption_enabled && msg.payload_type == PayloadType::OUTPUT {
                let Some(c) = &st.cipher else {
                    return Err(HandleError::Failed(
                        "encrypted data before the data key is known".into(),
                    ));
                };
                msg.payload = Bytes::from(c.decrypt(&msg.payload).map_err(|e| {
                    HandleError::Failed(format!(
                        "Error decrypting stream data message sequence {}, err: {e}",
                        msg.sequence_number
                    ))
                })?);
            }
        }
        match msg.payload_type {
            PayloadType::HANDSHAKE_RESPONSE => self
                .on_handshake_response(&msg.payload)
                .map_err(HandleError::Failed),
            PayloadType::ENC_CHALLENGE_RESPONSE => self
                .on_challenge_response(&msg.payload)
                .map_err(HandleError::Failed),
            pt => {
                let (skipped, complete) = {
                    let st = lock(&self.st);
                    (st.hs_skipped, st.hs_complete)
                };
                if !skipped && !complete {
                    self.sess.stats().discarded_during_handshake += 1;
                    return Ok(());
                }
                let handler = lock(&self.handler).clone();
                match handler {
                    Some(h) => h.handle(pt, msg.payload).await,
                    None => Err(HandleError::NotReady),
                }
            }
        }
    }

    /// `SkipHandshake`.
    pub(crate) fn skip_handshake(&self) {
        let v = lock(&self.sess.open_client_version).clone();
        let mut st = lock(&self.st);
        st.hs_skipped = true;
        drop(st);
        self.sess.stats().client_version = v;
    }

    /// `PerformHandshake`.
    pub(crate) async fn perform_handshake(
        &self,
        session_type: &str,
        properties: Value,
        kms_key: Option<&str>,
    ) -> Result<(), String> {
        let start = Instant::now();
        let encryption = kms_key.is_some();
        let (resp_tx, resp_rx) = oneshot::channel();
        let random_challenge = {
            let mut st = lock(&self.st);
            st.encryption_enabled = encryption;
            st.response_tx = Some(resp_tx);
            st.random_challenge.clone()
        };
        let mut actions = vec![RequestedClientAction {
            action_type: "SessionType".into(),
            action_parameters: ssm_plugin_value(&SessionTypeRequest {
                session_type: session_type.to_owned(),
                properties,
            }),
        }];
        if let Some(key) = kms_key {
            actions.push(RequestedClientAction {
                action_type: "KMSEncryption".into(),
                action_parameters: ssm_plugin_value(&KmsEncryptionRequest {
                    kms_key_id: key.to_owned(),
                    challenge: Some(random_challenge),
                }),
            });
        }
        let request = HandshakeRequest {
            agent_version: self.sess.cfg.agent_version.clone(),
            requested_client_actions: actions,
        };
        self.send_stream(
            PayloadType::HANDSHAKE_REQUEST,
            &ssm_plugin::wire::to_vec(&request),
        );
        let timeout = self.sess.cfg.handshake_timeout;
        match self.wait(resp_rx, timeout).await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(HANDSHAKE_TIMEOUT_ERROR.to_owned()),
        }
        if encryption {
            let (tx, rx) = oneshot::channel();
            let challenge = {
                let mut st = lock(&self.st);
                let mut plain = vec![0u8; 64];
                rand::rng().fill_bytes(&mut plain);
                st.challenge_plain = plain.clone();
                st.challenge_tx = Some(tx);
                match &mut st.cipher {
                    Some(c) => c.encrypt(&plain),
                    None => return Err("encryption is on but no data key".into()),
                }
            };
            let body = EncryptionChallenge {
                challenge: base64::engine::general_purpose::STANDARD.encode(challenge),
            };
            self.send_stream(
                PayloadType::ENC_CHALLENGE_REQUEST,
                &ssm_plugin::wire::to_vec(&body),
            );
            match self.wait(rx, timeout).await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("Timed out waiting for encryption challenge.".into()),
            }
        }
        let (separate, client_version, enc) = {
            let st = lock(&self.st);
            (
                st.separate_output,
                st.client_version.clone(),
                st.encryption_enabled,
            )
        };
        let mut customer_message = String::new();
        if separate
            && crate::version::compare(&client_version, CLIENT_VERSION_WITHOUT_OUTPUT_SEPARATION)
                != std::cmp::Ordering::Greater
        {
            customer_message = format!(
                "Please update session manager plugin version (minimum required version {FIRST_VERSION_WITH_OUTPUT_SEPARATION}) for fully support of separate StdOut/StdErr output.\r\n"
            );
        }
        if enc {
            customer_message.push_str("This session is encrypted using AWS KMS.");
        }
        let complete = HandshakeComplete {
            handshake_time_to_complete: start.elapsed().as_nanos() as i64,
            customer_message,
        };
        self.send_stream(
            PayloadType::HANDSHAKE_COMPLETE,
            &ssm_plugin::wire::to_vec(&complete),
        );
        lock(&self.st).hs_complete = true;
        Ok(())
    }

    async fn wait(
        &self,
        rx: oneshot::Receiver<Result<(), String>>,
        timeout: Duration,
    ) -> Option<Result<(), String>> {
        tokio::select! {
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(v)) => Some(v),
                _ => None,
            },
            _ = self.cancelled() => Some(Err("session cancelled during the handshake".into())),
        }
    }

    /// `handleHandshakeResponse`.
    fn on_handshake_response(&self, payload: &[u8]) -> Result<(), String> {
        let resp: HandshakeResponse = serde_json::from_slice(payload)
            .map_err(|e| format!("Unmarshalling of HandshakeResponse message failed, {e}"))?;
        let mut error = None;
        for action in &resp.processed_client_actions {
            let r = if action.action_status != 1 {
                Err(format!(
                    "{} failed on client with status {} error: {}",
                    action.action_type, action.action_status, action.error
                ))
            } else if action.action_type == "KMSEncryption" {
                self.finalize_kms(&action.action_result)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                tracing::warn!(session = %self.sess.id, "handshake action failed: {e}");
                self.cancel();
                error = Some(e);
            }
        }
        self.sess.stats().client_version = resp.client_version.clone();
        let mut st = lock(&self.st);
        st.client_version = resp.client_version;
        if let Some(tx) = st.response_tx.take() {
            let _ = tx.send(error.map_or(Ok(()), Err));
        }
        Ok(())
    }

    /// `finalizeKMSEncryption` + `blockcipher.go: UpdateEncryptionKey`.
    fn finalize_kms(&self, result: &Value) -> Result<(), String> {
        let resp: KmsEncryptionResponse =
            serde_json::from_value(result.clone()).map_err(|e| e.to_string())?;
        let acked = resp.challenge_acknowledgement.unwrap_or(false);
        if self.sess.cfg.require_kms_challenge && !acked {
            return Err(
                "client does not support required encryption context random challenge".into(),
            );
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(resp.kms_cipher_text_key.as_bytes())
            .map_err(|e| format!("Fetching data key failed: bad KMSCipherTextKey: {e}"))?;
        let challenge = lock(&self.st).random_challenge.clone();
        let target = self
            .sess
            .cfg
            .agent_instance_id
            .clone()
            .unwrap_or_else(|| self.sess.target.clone());
        let ctx = crate::session::kms_context(
            &self.sess.id,
            &target,
            acked.then_some(challenge.as_str()),
        );
        let resolver = self
            .sess
            .shared
            .resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let key = resolver
            .and_then(|r| r.decrypt(&blob, &ctx))
            .ok_or_else(|| {
                "Fetching data key failed: InvalidCiphertextException: the ciphertext or encryption context does not match".to_owned()
            })?;
        let cipher = AgentCipher::new(&key).ok_or_else(|| {
            format!(
                "Fetching data key failed: data key has {} bytes, not 64",
                key.len()
            )
        })?;
        let mut st = lock(&self.st);
        st.cipher = Some(cipher);
        st.encryption_enabled = true;
        Ok(())
    }

    /// `handleEncryptionChallengeResponse`.
    fn on_challenge_response(&self, payload: &[u8]) -> Result<(), String> {
        let resp: EncryptionChallenge = serde_json::from_slice(payload).map_err(|e| {
            format!("Unmarshalling of EncryptionChallengeResponse message failed, {e}")
        })?;
        let wire = base64::engine::general_purpose::STANDARD
            .decode(resp.challenge.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut st = lock(&self.st);
        let result = match &st.cipher {
            Some(c) => match c.decrypt(&wire) {
                Ok(p) if p == st.challenge_plain => Ok(()),
                Ok(_) => Err("Encryption challenge does not match!".to_owned()),
                Err(e) => Err(e),
            },
            None => Err("no data key".to_owned()),
        };
        if let Some(tx) = st.challenge_tx.take() {
            let _ = tx.send(result.clone());
        }
        result
    }
}

fn ssm_plugin_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(json!(null))
}

/// Parses a frame the way the agent does: it validates the header but **not** the digest
/// (`contracts/agentmessage.go: Validate`). Returns whether the digest matched.
pub(crate) fn decode_like_agent(raw: &[u8]) -> Result<(ClientMessage, bool), DecodeError> {
    match ClientMessage::decode(raw) {
        Ok(m) => Ok((m, true)),
        Err(DecodeError::Digest) => {
            use sha2::{Digest, Sha256};
            let mut fixed = raw.to_vec();
            let digest = Sha256::digest(&raw[ssm_plugin::wire::PAYLOAD_OFFSET..]);
            fixed[80..112].copy_from_slice(&digest);
            ClientMessage::decode(&fixed).map(|m| (m, false))
        }
        Err(e) => Err(e),
    }
}
