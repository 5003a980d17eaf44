//! Every knob of the simulator. Defaults are the real agent's values (with the source named)
//! or, for the relay, the behaviour users report from the service.

use std::collections::BTreeMap;
use std::time::Duration;

/// The whole configuration; [`crate::SimHandle::set_config`] swaps it live (new values apply to
/// the next decision that reads them: faults and limits at once, versions and timings to
/// sessions started afterwards).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// `AgentVersion` in the HandshakeRequest. At or below 3.0.196.0 the agent behaves as the
    /// agents of that era did: they had no smux, so Port sessions always use basic forwarding
    /// (consistent with the plugin, which picks basic for such agents).
    pub agent_version: String,
    /// Also listen for wss:// with a certificate generated at start, and hand out wss:// URLs.
    pub tls: bool,
    /// KMS key id the agent asks for (session preferences `kmsKeyId`); `None` means no
    /// encryption. Port sessions are never encrypted (`sessionplugin.go: isEncryptionEnabled`).
    pub kms_key_id: Option<String>,
    /// Agent config `Kms.RequireKMSChallengeResponse` (default false in the agent).
    pub require_kms_challenge: bool,
    /// Encrypt port sessions too when `kms_key_id` is set. The real agent never does; this lets
    /// tests run the plugin's encryption over bulk port data.
    pub kms_for_port_sessions: bool,
    /// `aws:ssm:TargetId` the agent puts in the KMS Decrypt context; `None` uses the target of
    /// StartSession (as on a real instance). Set it to another value to provoke a mismatch.
    pub agent_instance_id: Option<String>,
    /// Shell for Standard_Stream (the agent runs `sh`).
    pub shell: String,
    /// Delay before the PTY output pump starts (`shell.go: executeCommandsWithPty` waits 1 s).
    pub pty_start_delay: Duration,
    /// Agent handshake timeout (`datachannel.go: handshakeTimeout`, 15 s) for the response and
    /// again for the encryption challenge.
    pub handshake_timeout: Duration,
    /// How long the agent waits for its outgoing buffer to drain before closing
    /// (`datachannel.go: PrepareToCloseChannel`, 2 s).
    pub close_drain_timeout: Duration,
    /// How long the relay keeps a session whose client websocket dropped without
    /// channel_closed, waiting for a reconnect with a resumed token.
    pub resume_window: Duration,
    /// NonInteractiveCommands `separateOutputStream` (StdErr + ExitCode payloads) when the
    /// StartSession parameters do not say: off, as AWS-StartNonInteractiveCommand declares it
    /// (its parameter's default is "false").
    pub separate_output_stream: bool,
    /// Keep agent frames in the relay while no client is connected (first connect, and
    /// between a drop and the reconnect), delivering them when the client (re)connects.
    pub queue_while_disconnected: bool,
    /// On a client smux FIN, only shut down writing to the destination. The agent instead
    /// closes the destination connection entirely (`port_mux.go: handleDataTransfer`), which is
    /// the default here.
    pub mux_half_close: bool,
    /// Access key id → secret the relay checks SigV4 websocket upgrades against (service
    /// `ssmmessages`, the header or the presigned form, as AWS's plugin signs from 1.2.764.0).
    /// Empty: signatures are only parsed and recorded. A signature that does not verify is
    /// refused with HTTP 403.
    pub ws_credentials: BTreeMap<String, String>,
    /// Refuse unsigned upgrades with HTTP 403 (only with `ws_credentials`).
    pub require_signed_upgrade: bool,
    /// Service limits.
    pub limits: Limits,
    /// Fault injection.
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            agent_version: "3.3.987.0".into(),
            tls: false,
            kms_key_id: None,
            require_kms_challenge: false,
            kms_for_port_sessions: false,
            agent_instance_id: None,
            shell: "sh".into(),
            pty_start_delay: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(15),
            close_drain_timeout: Duration::from_secs(2),
            resume_window: Duration::from_secs(60),
            // AWS-StartNonInteractiveCommand's own default ("false").
            separate_output_stream: false,
            queue_while_disconnected: true,
            mux_half_close: false,
            ws_credentials: BTreeMap::new(),
            require_signed_upgrade: false,
            limits: Limits::default(),
            faults: Faults::default(),
        }
    }
}

/// Limits of the agent and the service, each switchable.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Port readers send at most 1024 bytes per message and sleep 1 ms after each
    /// (`port_basic.go` / `port_mux.go` WritePump). Off: read and send as fast as possible.
    pub port_pacing: bool,
    /// Client data frames per second the relay tolerates; above it for `frame_rate_window` it
    /// sends `pause_publication` and then closes the websocket. `None`: no limit.
    pub frame_rate_limit: Option<u32>,
    /// How long the rate must stay above the limit.
    pub frame_rate_window: Duration,
    /// Close every client websocket with 1000 "Bye" after this long (the service does so
    /// about hourly). `None`: never.
    pub ws_lifetime: Option<Duration>,
    /// smux receive buffer (xtaci/smux `MaxReceiveBuffer`, 4 MiB): the agent stops reading the
    /// channel while this much client data waits for destinations.
    pub smux_receive_buffer: usize,
    /// smux keep-alive NOP interval (smux default 10 s), used only when the client version is
    /// at or below 1.2.331.0.
    pub smux_keepalive_interval: Duration,
    /// smux keep-alive timeout (smux default 30 s): no frame from the client for this long
    /// closes the smux session and ends the Port session.
    pub smux_keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            port_pacing: true,
            frame_rate_limit: Some(1000),
            frame_rate_window: Duration::from_secs(2),
            ws_lifetime: None,
            smux_receive_buffer: 4 * 1024 * 1024,
            smux_keepalive_interval: Duration::from_secs(10),
            smux_keepalive_timeout: Duration::from_secs(30),
        }
    }
}

/// Fault injection on the relay, per direction, drawn from one seeded generator.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Seed of the generator (same seed and same traffic: same faults).
    pub seed: u64,
    /// Faults on frames the relay delivers to the client (agent output, acks).
    pub to_client: DirFaults,
    /// Faults on frames the relay delivers to the agent (client input, acks).
    pub to_agent: DirFaults,
    /// Accept websockets but never read or answer anything on them (not even pings).
    pub stall: bool,
}

/// Fault rates (0.0..=1.0) for one direction. They apply to relayed binary frames only, never
/// to the relay's own `channel_closed` or publication messages.
#[derive(Debug, Clone, Default)]
pub struct DirFaults {
    /// Frame silently lost.
    pub drop: f64,
    /// Frame delivered twice.
    pub duplicate: f64,
    /// Frame held back for `reorder_delay` so later frames overtake it.
    pub reorder: f64,
    /// One payload byte flipped (digest no longer matches).
    pub corrupt_digest: f64,
    /// Frame truncated to 50 bytes (not a ClientMessage any more).
    pub malformed: f64,
    /// Extra latency on every frame.
    pub delay: Duration,
    /// How long a reordered frame is held (default 0 means 50 ms).
    pub reorder_delay: Duration,
}

impl DirFaults {
    /// True when no fault is configured (the relay then skips the generator).
    pub fn is_clean(&self) -> bool {
        self.drop == 0.0
            && self.duplicate == 0.0
            && self.reorder == 0.0
            && self.corrupt_digest == 0.0
            && self.malformed == 0.0
            && self.delay.is_zero()
    }
}
