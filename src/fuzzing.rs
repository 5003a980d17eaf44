//! Drivers shared by the fuzz targets (`fuzz/`, cargo-fuzz on nightly) and their bounded stable
//! runs in `tests/fuzz_stable.rs` (proptest): arbitrary bytes become frames, time and local
//! events for the sans-IO machines, which must never panic, and a session must always reach its
//! end within its timers once the user leaves. Not part of the plugin's API.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::channel::{self, Channel, Priority};
use crate::session::core::{Config, Event, Local, ResumeFailure, Session, Signal};
use crate::session::handler::{HandlerExit, LocalEnd};
use crate::wire::{AcknowledgeContent, ClientMessage, MessageType, PayloadType};

const EPOCH: u64 = 1_700_000_000_000;

/// Reads `data` as a sequence of small instructions.
struct Tape<'a>(&'a [u8]);

impl Tape<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.byte().unwrap_or(0)) << 8 | u16::from(self.byte().unwrap_or(0))
    }
}

/// A frame from the tape: raw bytes, or a well-formed message with fuzzed fields (so the
/// fuzzer gets past the digest check into the state machine).
fn frame(t: &mut Tape<'_>) -> Vec<u8> {
    let kind = t.byte().unwrap_or(0);
    let len = usize::from(t.byte().unwrap_or(0));
    if kind % 5 == 0 {
        return t.bytes(len).to_vec();
    }
    let message_type = match kind % 5 {
        1 => MessageType::OutputStreamData,
        2 => MessageType::Acknowledge,
        3 => MessageType::ChannelClosed,
        _ => {
            if kind & 0x80 == 0 {
                MessageType::PausePublication
            } else {
                MessageType::StartPublication
            }
        }
    };
    let seq = i64::from(t.u16() % 64);
    let payload_type = PayloadType(u32::from(t.byte().unwrap_or(1) % 20));
    let payload = if message_type == MessageType::Acknowledge && kind & 0x40 != 0 {
        AcknowledgeContent {
            acknowledged_message_type: "input_stream_data".into(),
            acknowledged_message_id: uuid::Uuid::nil().to_string(),
            acknowledged_message_sequence_number: seq,
            is_sequential_message: true,
        }
        .to_json()
    } else {
        t.bytes(len).to_vec()
    };
    ClientMessage::new(
        message_type,
        seq,
        u64::from(kind & 3),
        payload_type,
        Bytes::from(payload),
        EPOCH,
        uuid::Uuid::from_u128(u128::from(t.u16())),
    )
    .encode()
}

/// The channel alone: frames, time, sends, losses. Never panics.
pub fn channel_frames(data: &[u8]) {
    let t0 = Instant::now();
    let cfg = channel::Config {
        frame_budget: None,
        created_epoch_ms: EPOCH,
        ..channel::Config::default()
    };
    let mut ch = Channel::new(cfg, t0);
    let mut now = t0;
    let mut t = Tape(data);
    while let Some(op) = t.byte() {
        match op % 6 {
            0 | 1 => {
                let f = frame(&mut t);
                let _ = ch.handle_frame(now, &f);
            }
            2 => {
                now += Duration::from_millis(u64::from(t.u16()));
                ch.handle_timeout(now);
            }
            3 => {
                let n = usize::from(t.byte().unwrap_or(0));
                let payload = Bytes::copy_from_slice(t.bytes(n));
                let prio = if op & 0x80 == 0 {
                    Priority::Data
                } else {
                    Priority::Control
                };
                let _ = ch.send(now, PayloadType::OUTPUT, payload, prio);
            }
            4 => ch.transport_lost(now),
            _ => ch.transport_restored(now),
        }
        while ch.poll_transmit(now).is_some() {}
        while ch.poll_event().is_some() {}
        let _ = ch.poll_timeout();
    }
}

/// The session machine: frames, time, link events, resume answers, signals, handler ends. It
/// never panics, and after a SIGTERM it ends within its timers however the tape left it.
/// Returns how much simulated time the end took.
pub fn session_machine(data: &[u8]) -> Duration {
    let t0 = Instant::now();
    let channel = channel::Config {
        frame_budget: None,
        seed: 1,
        ..channel::Config::default()
    };
    let cfg = Config {
        session_id: "fuzz".into(),
        channel,
        reconnect_timeout: crate::config::DEFAULT_RECONNECT_TIMEOUT,
        start_timeout: crate::config::DEFAULT_START_TIMEOUT,
        legacy_cli: false,
        initial_size: None,
        liveness: Some(crate::session::core::LivenessConfig::default()),
        status_marker: None,
    };
    let mut s = Session::new(cfg, t0, EPOCH);
    let mut now = t0;
    let mut t = Tape(data);
    let drain = |s: &mut Session, now: Instant| {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(e) = s.poll_event() {
                moved = true;
                if let Event::NeedDataKey { .. } = e {
                    s.data_key(now, Err("fuzz".into()));
                }
            }
            while s.poll_delivery(now).is_some() {
                moved = true;
            }
            while s.poll_transmit(now).is_some() {
                moved = true;
            }
            if !moved && !s.has_events() {
                return;
            }
        }
        panic!("the session machine never settles");
    };
    drain(&mut s, now);
    while let Some(op) = t.byte() {
        match op % 12 {
            0..=3 => {
                let f = frame(&mut t);
                s.handle_frame(now, &f);
            }
            4 => {
                now += Duration::from_millis(u64::from(t.u16()) * 4);
                s.handle_timeout(now);
            }
            5 => s.transport_lost(now, "fuzz", op & 0x80 != 0),
            6 => s.transport_restored(now),
            7 => {
                let f = match t.byte().unwrap_or(0) % 4 {
                    0 => ResumeFailure::Expired,
                    1 => ResumeFailure::Network("x".into()),
                    2 => ResumeFailure::Service {
                        status: Some(500),
                        code: None,
                        message: "x".into(),
                    },
                    _ => ResumeFailure::Service {
                        status: Some(400),
                        code: None,
                        message: "x".into(),
                    },
                };
                s.resume_failed(now, &f);
            }
            8 => {
                let sig = [
                    Signal::Interrupt,
                    Signal::Quit,
                    Signal::Suspend,
                    Signal::Terminate,
                    Signal::HangUp,
                ][usize::from(t.byte().unwrap_or(0) % 5)];
                s.handle_local(now, Local::Signal(sig));
            }
            9 => {
                let n = usize::from(t.byte().unwrap_or(0));
                let payload = Bytes::copy_from_slice(t.bytes(n));
                let input = match op & 0xc0 {
                    0x00 => Local::Send {
                        payload_type: PayloadType::OUTPUT,
                        payload,
                        priority: Priority::Data,
                    },
                    0x40 => Local::InputEnded,
                    0x80 => Local::End(LocalEnd::Escape),
                    _ => Local::Flag(crate::wire::FlagValue::DisconnectToPort),
                };
                s.handle_local(now, input);
            }
            10 => {
                let exit = match t.byte().unwrap_or(0) % 3 {
                    0 => HandlerExit::Done,
                    1 => HandlerExit::OutputClosed,
                    _ => HandlerExit::OutputFailed("x".into()),
                };
                s.handle_local(now, Local::HandlerEnded(exit));
            }
            _ => {
                if op & 1 == 0 {
                    s.terminate_done(now);
                } else {
                    s.connect_failed(now, "x".into(), op & 2 != 0);
                }
            }
        }
        drain(&mut s, now);
    }
    // The user leaves; nobody answers anything any more.
    let left = now;
    s.handle_local(now, Local::Signal(Signal::Terminate));
    drain(&mut s, now);
    while !s.is_ended() {
        let Some(next) = s.poll_timeout() else {
            panic!("no timer, and not ended");
        };
        now = now.max(next) + Duration::from_millis(1);
        assert!(
            now - left <= Duration::from_secs(30),
            "still not ended 30 s after SIGTERM"
        );
        // No handler ever returns here: the machine's own deadlines must end it.
        s.handle_timeout(now);
        drain(&mut s, now);
    }
    assert!(s.poll_timeout().is_none(), "an ended session has no timers");
    now - left
}
