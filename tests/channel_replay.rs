//! Replays the agent side of real captures into a `Channel`.
//!
//! `retransmission_ack_dropped.jsonl`: the relay dropped the Go plugin's ack of agent message 3,
//! so the agent resent it 48 times and the Go plugin never acked it again. We must ack every
//! copy, deliver each message once and in order, and ignore the agent's acks of messages we never
//! sent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ssm_plugin::channel::{Channel, Config, Event};
use ssm_plugin::wire::{AcknowledgeContent, ClientMessage, MessageType};

struct Frame {
    t: f64,
    raw: Vec<u8>,
}

/// The binary agent->client frames the relay actually delivered to the plugin.
fn delivered_to_client(file: &str) -> Vec<Frame> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/vectors")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| {
            v["direction"] == "agent->client"
                && v["ws_kind"] == "binary"
                && !v["relay_action"].as_str().unwrap().starts_with("consumed")
                && !v["relay_action"].as_str().unwrap().starts_with("DROPPED")
        })
        .map(|v| Frame {
            t: v["t"].as_f64().unwrap(),
            raw: hex::decode(v["raw_hex"].as_str().unwrap()).unwrap(),
        })
        .collect()
}

/// Each replayed frame with the sequence numbers our acks of it named.
type AckLog = Vec<(ClientMessage, Vec<i64>)>;

fn replay(file: &str) -> (AckLog, Vec<Event>, Channel) {
    let t0 = Instant::now(); // the one real clock reading; frame times are offsets from it
    let mut ch = Channel::new(
        Config {
            created_epoch_ms: 1_790_000_000_000,
            ..Config::default()
        },
        t0,
    );
    let mut log = vec![];
    let mut events = vec![];
    for f in delivered_to_client(file) {
        let now = t0 + Duration::from_secs_f64(f.t);
        ch.handle_frame(now, &f.raw).unwrap();
        let acks: Vec<i64> = std::iter::from_fn(|| ch.poll_transmit(now))
            .map(|raw| {
                let m = ClientMessage::decode(&raw).unwrap();
                assert_eq!(m.message_type, MessageType::Acknowledge);
                let c: AcknowledgeContent = serde_json::from_slice(&m.payload).unwrap();
                let incoming = ClientMessage::decode(&f.raw).unwrap();
                assert_eq!(c.acknowledged_message_id, incoming.message_id.to_string());
                assert_eq!(c.acknowledged_message_type, "output_stream_data");
                c.acknowledged_message_sequence_number
            })
            .collect();
        events.extend(std::iter::from_fn(|| ch.poll_event()));
        log.push((ClientMessage::decode(&f.raw).unwrap(), acks));
    }
    (log, events, ch)
}

#[test]
fn every_resent_copy_of_a_message_is_acked_again() {
    let (log, events, ch) = replay("retransmission_ack_dropped.jsonl");
    let copies_of_3: Vec<&Vec<i64>> = log
        .iter()
        .filter(|(m, _)| m.message_type == MessageType::OutputStreamData && m.sequence_number == 3)
        .map(|(_, acks)| acks)
        .collect();
    // The original plus the agent's 48 resends; the Go plugin acked only the first. Once a
    // resend shows an ack was lost, acks go out twice for a while.
    assert_eq!(copies_of_3.len(), 49);
    assert_eq!(*copies_of_3[0], [3]);
    assert!(copies_of_3[1..].iter().all(|acks| **acks == [3, 3]));
    for (m, acks) in &log {
        match m.message_type {
            MessageType::OutputStreamData => {
                assert!(!acks.is_empty() && acks.len() <= 2, "{acks:?}");
                assert!(acks.iter().all(|a| *a == m.sequence_number), "{acks:?}");
            }
            // Agent acks of input we never sent are ignored; channel_closed is never acked.
            _ => assert!(acks.is_empty(), "{m:?} drew {acks:?}"),
        }
    }
    let s = ch.stats();
    assert_eq!(s.duplicates, 48);
    assert_eq!(s.acks_sent, s.received + 48 + s.acks_repeated);

    // Each agent message once, in order, then the relay's channel_closed.
    let mut next = 0;
    let mut closed = false;
    for e in &events {
        match e {
            Event::Message { sequence, .. } => {
                assert!(!closed);
                assert_eq!(*sequence, next);
                next += 1;
            }
            Event::ChannelClosed { .. } => closed = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(closed);
    assert_eq!(next, s.received as i64);
    assert_eq!(s.delivered, s.received);
}

#[test]
fn relay_duplicate_and_drop_in_retransmission_capture() {
    let (log, events, ch) = replay("retransmission.jsonl");
    let data: Vec<&(ClientMessage, Vec<i64>)> = log
        .iter()
        .filter(|(m, _)| m.message_type == MessageType::OutputStreamData)
        .collect();
    assert!(data.iter().all(|(m, acks)| !acks.is_empty()
        && acks.len() <= 2
        && acks.iter().all(|a| *a == m.sequence_number)));
    let delivered: Vec<i64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message { sequence, .. } => Some(*sequence),
            _ => None,
        })
        .collect();
    let expected: Vec<i64> = (0..delivered.len() as i64).collect();
    assert_eq!(delivered, expected);
    let s = ch.stats();
    assert!(
        s.duplicates >= 1,
        "the relay delivered one output frame twice: {s:?}"
    );
    assert_eq!(s.received as usize, delivered.len());
}
