//! The test world: a session, a scripted agent that acknowledges what we send, and a
//! simulated clock that fires every timer on the way.

use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::super::*;
use crate::channel;
use crate::exit::Exit;
use crate::session::handler::HandlerExit;
use crate::wire::{
    AcknowledgeContent, ClientMessage, FlagValue, MessageType, PayloadType, FLAG_ACK, FLAG_SYN,
};

pub(super) const EPOCH: u64 = 1_700_000_000_000;

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A session and a scripted agent around it, on a simulated clock.
pub(super) struct World {
    pub s: Session,
    pub now: Instant,
    /// Next agent sequence number.
    agent_seq: i64,
    /// Whether the agent acknowledges what we send.
    pub acks: bool,
    /// Everything we sent, decoded.
    pub sent: Vec<ClientMessage>,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// What the handler received.
    pub delivered: Vec<(PayloadType, Bytes)>,
    connected: bool,
    /// Whether the service answers our websocket pings.
    pub pongs: bool,
}

impl World {
    pub(super) fn new() -> Self {
        Self::with(|_| {})
    }

    pub(super) fn with(f: impl FnOnce(&mut Config)) -> Self {
        let mut channel = channel::Config {
            frame_budget: None,
            seed: 3,
            ..channel::Config::default()
        };
        channel.created_epoch_ms = EPOCH;
        let mut cfg = Config {
            session_id: "sess-1".into(),
            channel,
            reconnect_timeout: secs(120),
            start_timeout: crate::config::DEFAULT_START_TIMEOUT,
            legacy_cli: false,
            initial_size: None,
            liveness: None,
            status_marker: None,
        };
        f(&mut cfg);
        let now = Instant::now();
        Self {
            s: Session::new(cfg, now, EPOCH),
            now,
            agent_seq: 0,
            acks: true,
            sent: Vec::new(),
            events: Vec::new(),
            delivered: Vec::new(),
            connected: false,
            pongs: true,
        }
    }

    /// Connects the first websocket when asked.
    pub(super) fn connected() -> Self {
        Self::connected_with(|_| {})
    }

    /// [`connected`](Self::connected) with the config changed by `f`.
    pub(super) fn connected_with(f: impl FnOnce(&mut Config)) -> Self {
        let mut w = Self::with(f);
        w.settle();
        assert!(w.took(|e| matches!(e, Event::Connect)));
        w.s.transport_restored(w.now);
        w.connected = true;
        w.settle();
        w
    }

    /// A shell session whose agent sent the handshake (agent 3.3, flag supported).
    pub(super) fn shell() -> Self {
        let mut w = Self::connected();
        w.handshake("Standard_Stream", "3.3.0.0", None);
        w
    }

    /// A shell session with the default liveness checks on.
    pub(super) fn live_shell() -> Self {
        let mut w = Self::connected_with(|c| c.liveness = Some(LivenessConfig::default()));
        w.handshake("Standard_Stream", "3.3.0.0", None);
        w
    }

    /// A resumed link opened (after [`Event::Resume`]).
    pub(super) fn restore(&mut self) {
        self.s.transport_restored(self.now);
        self.connected = true;
        self.settle();
    }

    /// A listener port session.
    pub(super) fn port() -> Self {
        let mut w = Self::connected();
        w.handshake(
            "Port",
            "3.3.0.0",
            Some(serde_json::json!({"type": "LocalPortForwarding", "portNumber": "22", "localPortNumber": "0"})),
        );
        w
    }

    pub(super) fn handshake(
        &mut self,
        kind: &str,
        version: &str,
        props: Option<serde_json::Value>,
    ) {
        let req = serde_json::json!({
            "AgentVersion": version,
            "RequestedClientActions": [{
                "ActionType": "SessionType",
                "ActionParameters": {"SessionType": kind, "Properties": props},
            }],
        });
        self.agent(PayloadType::HANDSHAKE_REQUEST, req.to_string().as_bytes());
        self.agent(
            PayloadType::HANDSHAKE_COMPLETE,
            br#"{"HandshakeTimeToComplete":1000000,"CustomerMessage":""}"#,
        );
        assert!(
            self.took(|e| matches!(e, Event::StartHandler { .. })),
            "{:?}",
            self.events
        );
    }

    /// The agent sends one stream-data message.
    pub(super) fn agent(&mut self, payload_type: PayloadType, payload: &[u8]) {
        let seq = self.agent_seq;
        self.agent_seq += 1;
        let frame = ClientMessage::new(
            MessageType::OutputStreamData,
            seq,
            if seq == 0 { FLAG_SYN } else { 0 },
            payload_type,
            Bytes::copy_from_slice(payload),
            EPOCH,
            Uuid::from_u128(0xabc0_0000 + seq as u128),
        )
        .encode();
        self.s.handle_frame(self.now, &frame);
        self.settle();
    }

    /// The service closes the channel with `output` (a JSON payload, or raw bytes).
    pub(super) fn channel_closed(&mut self, payload: &[u8]) {
        let frame = ClientMessage::new(
            MessageType::ChannelClosed,
            0,
            FLAG_ACK,
            PayloadType::OUTPUT,
            Bytes::copy_from_slice(payload),
            EPOCH,
            Uuid::from_u128(7),
        )
        .encode();
        self.s.handle_frame(self.now, &frame);
        self.settle();
    }

    /// Drains every output: events, deliveries, transmits; the agent acks what we send.
    pub(super) fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(e) = self.s.poll_event() {
                match &e {
                    Event::DropLink => self.connected = false,
                    Event::Ping if self.pongs && self.connected => self.s.link_alive(self.now),
                    Event::Resume | Event::Connect => {}
                    _ => {}
                }
                self.events.push(e);
                moved = true;
            }
            while let Some(d) = self.s.poll_delivery(self.now) {
                self.delivered.push(d);
                moved = true;
            }
            let mut acks = Vec::new();
            while let Some(f) = self.s.poll_transmit(self.now) {
                let m = ClientMessage::decode(&f).expect("we send valid frames");
                if self.acks
                    && m.message_type == MessageType::InputStreamData
                    && m.payload_type != PayloadType::NONE
                {
                    acks.push(m.sequence_number);
                }
                self.sent.push(m);
                moved = true;
            }
            for seq in acks {
                let content = AcknowledgeContent {
                    acknowledged_message_type: "input_stream_data".into(),
                    acknowledged_message_id: Uuid::nil().to_string(),
                    acknowledged_message_sequence_number: seq,
                    is_sequential_message: true,
                };
                let frame = ClientMessage::new(
                    MessageType::Acknowledge,
                    0,
                    FLAG_ACK,
                    PayloadType::NONE,
                    Bytes::from(content.to_json()),
                    EPOCH,
                    Uuid::from_u128(99),
                )
                .encode();
                self.s.handle_frame(self.now, &frame);
            }
            if !moved && !self.s.has_events() {
                return;
            }
        }
        panic!("the session never settles");
    }

    /// Advances the clock by `d`, firing every timer on the way.
    pub(super) fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            match self.s.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.s.handle_timeout(self.now);
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = end;
        self.s.handle_timeout(self.now);
        self.settle();
    }

    pub(super) fn local(&mut self, l: Local) {
        self.s.handle_local(self.now, l);
        self.settle();
    }

    /// Removes and reports the first event matching `f`.
    pub(super) fn took(&mut self, f: impl Fn(&Event) -> bool) -> bool {
        match self.events.iter().position(f) {
            Some(i) => {
                self.events.remove(i);
                true
            }
            None => false,
        }
    }

    pub(super) fn asked_to_stop_handler(&mut self) -> bool {
        self.took(|e| matches!(e, Event::StopHandler))
    }

    /// The handler returns as told, if it was; then the outcome.
    pub(super) fn outcome(&mut self) -> Option<Outcome> {
        if self.asked_to_stop_handler() {
            self.local(Local::HandlerEnded(HandlerExit::Done));
        }
        self.events.iter().find_map(|e| match e {
            Event::Ended(o) => Some(o.clone()),
            _ => None,
        })
    }

    pub(super) fn sent_flag(&self, f: FlagValue) -> bool {
        self.sent
            .iter()
            .any(|m| m.payload_type == PayloadType::FLAG && m.payload[..] == f.to_payload()[..])
    }

    pub(super) fn asked_api(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::TerminateApi))
    }
}

pub(super) fn signal_ended(sig: i32) -> Outcome {
    Outcome {
        lost: false,
        exit: Exit::Signal(sig),
        report: Report::Exiting,
    }
}
