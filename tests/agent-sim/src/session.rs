//! One session as both the relay and the agent see it: identity, token, the client link,
//! counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};

use crate::backend::DataKeyResolver;
use crate::config::SimConfig;
use crate::faults::When;

/// Frames the relay keeps for a disconnected client at most (oldest dropped beyond).
const MAX_QUEUED_FRAMES: usize = 10_000;

/// Counters of one session, for tests (`SimHandle::stats`).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Binary frames the relay received from the client (before faults).
    pub frames_in: u64,
    /// Binary frames the relay wrote to the client (after faults).
    pub frames_out: u64,
    /// Client `input_stream_data` messages the agent parsed (duplicates included).
    pub data_in: u64,
    /// Distinct agent `output_stream_data` messages (first sends only).
    pub data_out: u64,
    /// Client `acknowledge` messages the agent parsed.
    pub acks_in: u64,
    /// `acknowledge` messages the agent sent.
    pub acks_out: u64,
    /// Agent resends of its oldest unacked message.
    pub resends: u64,
    /// Client data with a sequence number already processed (re-acked).
    pub duplicates_seen: u64,
    /// Client data ahead of the expected sequence number (acked and buffered).
    pub out_of_order: u64,
    /// Client data refused because the handler was not ready (not acked).
    pub not_ready: u64,
    /// Client data acked and thrown away because the handshake was not complete.
    pub discarded_during_handshake: u64,
    /// Client frames the agent could not parse.
    pub unparsable_in: u64,
    /// Client frames whose digest did not match; the agent does not check it and used them.
    pub bad_digest_in: u64,
    /// Faults applied to frames towards the client.
    pub to_client: DirStats,
    /// Faults applied to frames towards the agent.
    pub to_agent: DirStats,
    /// `pause_publication` messages the relay sent.
    pub pause_publication_sent: u64,
    /// Accepted websocket connections (first connect and reconnects).
    pub connections: u64,
    /// Connections refused for a wrong or stale token.
    pub rejected_tokens: u64,
    /// `agent_session_state` values the agent sent to the relay, in order.
    pub session_states: Vec<String>,
    /// Whether the relay sent `channel_closed`.
    pub channel_closed_sent: bool,
    /// Bytes the agent wrote to port destinations.
    pub bytes_to_destination: u64,
    /// Bytes the agent read from port destinations.
    pub bytes_from_destination: u64,
    /// Port mode the agent chose: `basic`, `mux` or empty.
    pub port_mode: String,
    /// smux frames received from the client, by command (0 SYN, 1 FIN, 2 PSH, 3 NOP).
    pub smux_frames_in: [u64; 4],
    /// smux NOP keep-alives the agent sent.
    pub smux_nops_out: u64,
    /// The client version from the HandshakeResponse, or, without handshake, from
    /// OpenDataChannelInput.
    pub client_version: String,
    /// How the session ended: the channel_closed Output (`""` is a normal end).
    pub end_output: Option<String>,
    /// One entry per websocket upgrade accepted for this session, in order: how it was signed.
    pub upgrades: Vec<UpgradeAuth>,
    /// Upgrades refused with 403 because their SigV4 signature did not verify (or was missing
    /// while `require_signed_upgrade` is set).
    pub rejected_signatures: u64,
}

/// How one websocket upgrade request was authenticated (see `SimConfig::ws_credentials`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeAuth {
    /// The request carried an `Authorization` header.
    pub authorization_header: bool,
    /// Who signed it, when it carried a SigV4 signature (header or presigned query);
    /// `verified` is true when the relay checked it against `ws_credentials`.
    pub signed_by: Option<crate::api::SignedBy>,
}

/// Fault counters for one direction.
#[derive(Debug, Clone, Default)]
pub struct DirStats {
    /// Frames dropped.
    pub dropped: u64,
    /// Frames delivered twice.
    pub duplicated: u64,
    /// Frames held back so later ones overtook them.
    pub reordered: u64,
    /// Frames delayed.
    pub delayed: u64,
    /// Frames with a flipped payload byte.
    pub corrupted: u64,
    /// Frames truncated.
    pub malformed: u64,
}

/// Which agent session plugin runs.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    StandardStream,
    Interactive {
        command: String,
    },
    NonInteractive {
        command: String,
        separate: bool,
    },
    Port {
        /// The document properties as the agent forwards them (keys sorted, as Go's
        /// encoding/json writes a map).
        properties: serde_json::Map<String, serde_json::Value>,
        host: Option<String>,
        port: String,
        port_type: Option<String>,
    },
}

impl Kind {
    /// The agent plugin name, which is also the `SessionType` in the handshake.
    pub(crate) fn plugin_name(&self) -> &'static str {
        match self {
            Kind::StandardStream => "Standard_Stream",
            Kind::Interactive { .. } => "InteractiveCommands",
            Kind::NonInteractive { .. } => "NonInteractiveCommands",
            Kind::Port { .. } => "Port",
        }
    }
}

/// Input the relay hands to the agent.
#[derive(Debug)]
pub(crate) enum AgentInput {
    /// A raw binary frame from the client.
    Frame(Vec<u8>),
    /// The session is being terminated (TerminateSession, resume window over, shutdown).
    Terminate,
}

/// Commands to one client websocket's writer.
#[derive(Debug)]
pub(crate) enum WsCmd {
    Frame(Vec<u8>),
    /// Send a close frame, then drop the connection.
    Close(u16, String),
    /// Drop the TCP connection without a close frame.
    Cut,
    /// The relay's `channel_closed`, then a normal close; marks the farewell delivered.
    Farewell(Vec<u8>),
}

#[derive(Default)]
pub(crate) struct Link {
    pub(crate) conn: Option<(u64, mpsc::UnboundedSender<WsCmd>)>,
    pub(crate) next_conn_id: u64,
    pub(crate) queue: VecDeque<Vec<u8>>,
    pub(crate) disconnected_at: Option<Instant>,
}

/// State shared by the whole simulator.
pub(crate) struct Shared {
    pub(crate) cfg: RwLock<SimConfig>,
    pub(crate) sessions: Mutex<HashMap<String, Arc<Session>>>,
    pub(crate) rng: Mutex<StdRng>,
    pub(crate) resolver: RwLock<Option<Arc<dyn DataKeyResolver>>>,
    pub(crate) ws_base: String,
    pub(crate) wss_base: Option<String>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Shared {
    pub(crate) fn cfg(&self) -> SimConfig {
        // A poisoned lock only means a panic elsewhere; the config itself is still whole.
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(id).cloned()
    }
}

/// Locks a std mutex, ignoring poisoning (our critical sections leave data consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) target: String,
    pub(crate) kind: Kind,
    pub(crate) kms_key: Option<String>,
    /// The configuration in force when the session started.
    pub(crate) cfg: SimConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) token: Mutex<String>,
    pub(crate) stream_url: String,
    pub(crate) link: Mutex<Link>,
    pub(crate) agent_tx: mpsc::Sender<AgentInput>,
    pub(crate) stats: Mutex<Stats>,
    /// Set to Some(channel_closed Output) once the agent has finished.
    pub(crate) ended: watch::Sender<Option<String>>,
    /// The ClientVersion of the latest OpenDataChannelInput.
    pub(crate) open_client_version: Mutex<String>,
    /// Delayed frames towards the client, in order (created on first use).
    pub(crate) delay_line: Mutex<Option<crate::faults::DelayLine>>,
    /// The `channel_closed` of an ended session until a websocket has carried it. A client
    /// whose connection dropped just as the agent finished resumes and gets it then, instead
    /// of being refused and retrying until its reconnect budget runs out.
    /// Kept for one resume window after the end; never when the end was the window running out.
    pub(crate) farewell: Mutex<Option<(Vec<u8>, std::time::Instant)>>,
    /// The client stayed away past the resume window: the session is gone for good.
    pub(crate) abandoned: std::sync::atomic::AtomicBool,
}

impl Session {
    pub(crate) fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Agent to client: through the faults, then to the websocket (or the queue).
    pub(crate) fn to_client(self: &Arc<Self>, frame: Vec<u8>) {
        let faults = self.shared.cfg().faults.to_client;
        let outs = {
            let mut rng = lock(&self.shared.rng);
            let mut st = self.stats();
            crate::faults::apply(&mut rng, &faults, frame, &mut st.to_client)
        };
        for (when, f) in outs {
            match when {
                When::Now => self.deliver(f),
                When::InLine(delay) => {
                    let due = tokio::time::Instant::now() + delay;
                    let mut line = lock(&self.delay_line);
                    let tx = line.get_or_insert_with(|| {
                        // Weak: the line lives in the session and must not keep it alive.
                        let me = Arc::downgrade(self);
                        crate::faults::delay_line(&self.shared.runtime, move |f| {
                            if let Some(s) = me.upgrade() {
                                s.deliver(f);
                            }
                            std::future::ready(())
                        })
                    });
                    let _ = tx.send((due, f));
                }
                When::Aside(delay) => {
                    let me = self.clone();
                    self.shared.runtime.spawn(async move {
                        tokio::time::sleep(delay).await;
                        me.deliver(f);
                    });
                }
            }
        }
    }

    /// Writes a frame to the current connection, bypassing faults (relay's own messages).
    pub(crate) fn deliver(&self, frame: Vec<u8>) {
        let mut link = lock(&self.link);
        if let Some((_, tx)) = &link.conn {
            if tx.send(WsCmd::Frame(frame.clone())).is_ok() {
                self.stats().frames_out += 1;
                return;
            }
        }
        if self.cfg.queue_while_disconnected {
            if link.queue.len() >= MAX_QUEUED_FRAMES {
                link.queue.pop_front();
            }
            link.queue.push_back(frame);
        }
    }

    /// Sends a command to the current connection, if any.
    pub(crate) fn ws_cmd(&self, cmd: WsCmd) -> bool {
        let link = lock(&self.link);
        match &link.conn {
            Some((_, tx)) => tx.send(cmd).is_ok(),
            None => false,
        }
    }

    /// The agent's `agent_session_state` message, consumed by the relay.
    pub(crate) fn agent_state(&self, state: &str) {
        self.stats().session_states.push(state.to_owned());
    }

    /// The agent has closed its side: record how, and let the relay tell the client.
    pub(crate) fn finish(self: &Arc<Self>, output: String) {
        if self.is_ended() {
            return;
        }
        tracing::info!(session = %self.id, output = %output, "agent finished");
        self.stats().end_output = Some(output.clone());
        let frame = channel_closed_frame(&self.id, &output);
        // Under the link lock, so a connection registering at the same moment either is here
        // (and gets the farewell now) or registers after and finds it pending (see relay).
        let link = lock(&self.link);
        if !self.abandoned.load(std::sync::atomic::Ordering::SeqCst) {
            *lock(&self.farewell) = Some((frame.clone(), std::time::Instant::now()));
        }
        if let Some((_, tx)) = &link.conn {
            let _ = tx.send(WsCmd::Farewell(frame));
        }
        self.ended.send_replace(Some(output));
        drop(link);
    }

    /// A websocket has written the `channel_closed`: the session may now refuse resumes.
    pub(crate) fn farewell_delivered(&self) {
        if lock(&self.farewell).take().is_some() {
            let mut st = self.stats();
            st.channel_closed_sent = true;
            st.frames_out += 1;
        }
    }

    /// The undelivered `channel_closed` of an ended session, if any.
    pub(crate) fn pending_farewell(&self) -> Option<Vec<u8>> {
        let window = self.shared.cfg().resume_window;
        lock(&self.farewell)
            .as_ref()
            .filter(|(_, at)| at.elapsed() < window)
            .map(|(f, _)| f.clone())
    }
}

/// Builds the relay's `channel_closed` message (the plugin validates CreatedDate and digest).
pub(crate) fn channel_closed_frame(session_id: &str, output: &str) -> Vec<u8> {
    use ssm_plugin::wire::{ChannelClosed, ClientMessage, MessageType, PayloadType};
    let id = uuid::Uuid::new_v4();
    let now = now_ms();
    let body = ChannelClosed {
        message_id: id.to_string(),
        created_date: rfc3339_ms(now),
        destination_id: session_id.to_owned(),
        session_id: session_id.to_owned(),
        message_type: "channel_closed".into(),
        schema_version: 1,
        output: output.to_owned(),
    };
    ClientMessage::new(
        MessageType::ChannelClosed,
        0,
        0,
        PayloadType::NONE,
        bytes::Bytes::from(ssm_plugin::wire::to_vec(&body)),
        now,
        id,
    )
    .encode()
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

/// `2024-05-01T12:34:56.789Z` from Unix milliseconds (civil-from-days, proleptic Gregorian).
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ms % 1000
    )
}

/// The KMS encryption context the agent uses for Decrypt (`crypto/blockcipher.go`).
pub(crate) fn kms_context(
    session_id: &str,
    target_id: &str,
    challenge: Option<&str>,
) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    c.insert("aws:ssm:SessionId".to_owned(), session_id.to_owned());
    c.insert("aws:ssm:TargetId".to_owned(), target_id.to_owned());
    if let Some(ch) = challenge {
        c.insert("aws:ssm:RandomChallenge".to_owned(), ch.to_owned());
    }
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            super::rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
