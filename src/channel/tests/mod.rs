//! Unit tests of the channel, written as a specification: each drives a `Channel` with simulated
//! time and asserts exactly what the `poll_*` methods return. This file: sending (sequencing,
//! acks, timers, the window, pacing, pauses); `receive.rs`: receiving, give-up, reconnection,
//! closing, encryption and hostile input.

use super::*;
use crate::wire::{FLAG_ACK, FLAG_SYN};
use base64::Engine as _;

/// The single real clock reading of a test; every later instant is `start + Duration`.
fn start() -> Instant {
    Instant::now()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const EPOCH: u64 = 1_700_000_000_000;

fn config() -> Config {
    Config {
        frame_budget: None,
        created_epoch_ms: EPOCH,
        seed: 7,
        // Most tests are about the window; `unsent_data_is_capped_so_control_goes_first` is
        // about this cap.
        max_unsent: usize::MAX,
        ..Config::default()
    }
}

#[test]
fn unsent_data_is_capped_so_bulk_waits_upstream() {
    let t0 = start();
    let mut ch = Channel::new(
        Config {
            frame_budget: Some(FrameBudget::per_second(100)),
            max_unsent: 4,
            ..config()
        },
        t0,
    );
    // The burst goes out at once; then the pacer holds data back, at most 4 messages of it.
    let mut accepted = 0;
    while ch.send_capacity() > 0 && accepted < 100 {
        send(&mut ch, t0, b"bulk");
        accepted += 1;
        drain_raw(&mut ch, t0);
    }
    assert_eq!(ch.stats().queued, 4, "{:?}", ch.stats());
    assert_eq!(
        ch.send(
            t0,
            PayloadType::OUTPUT,
            Bytes::from_static(b"more"),
            Priority::Data
        ),
        Err(SendError::Full)
    );
    // A keystroke or resize still gets in, ahead of the queued bulk.
    assert_eq!(
        ch.send(
            t0,
            PayloadType::OUTPUT,
            Bytes::from_static(b"k"),
            Priority::Control
        ),
        Ok(())
    );
    let next = ch.poll_timeout().expect("pacer");
    let first = drain(&mut ch, next);
    assert_eq!(first.first().map(|m| &m.payload[..]), Some(&b"k"[..]));
}

fn agent_id(seq: i64) -> Uuid {
    Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_0000 | seq as u128 & 0xffff)
}

fn agent_frame(seq: i64, payload_type: PayloadType, payload: &[u8]) -> Vec<u8> {
    ClientMessage::new(
        MessageType::OutputStreamData,
        seq,
        if seq == 0 { FLAG_SYN } else { 0 },
        payload_type,
        Bytes::copy_from_slice(payload),
        EPOCH,
        agent_id(seq),
    )
    .encode()
}

fn data(seq: i64, payload: &[u8]) -> Vec<u8> {
    agent_frame(seq, PayloadType::OUTPUT, payload)
}

fn control(t: MessageType, payload: &[u8]) -> Vec<u8> {
    ClientMessage::new(
        t,
        0,
        FLAG_ACK,
        PayloadType::NONE,
        Bytes::copy_from_slice(payload),
        EPOCH,
        Uuid::from_u128(42),
    )
    .encode()
}

fn ack_of(seq: i64) -> Vec<u8> {
    let content = AcknowledgeContent {
        acknowledged_message_type: "input_stream_data".into(),
        acknowledged_message_id: Uuid::nil().to_string(),
        acknowledged_message_sequence_number: seq,
        is_sequential_message: true,
    };
    control(MessageType::Acknowledge, &content.to_json())
}

fn drain(ch: &mut Channel, now: Instant) -> Vec<ClientMessage> {
    std::iter::from_fn(|| ch.poll_transmit(now))
        .map(|f| ClientMessage::decode(&f).expect("we encode valid frames"))
        .collect()
}

fn drain_raw(ch: &mut Channel, now: Instant) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| ch.poll_transmit(now)).collect()
}

fn events(ch: &mut Channel) -> Vec<Event> {
    std::iter::from_fn(|| ch.poll_event()).collect()
}

fn acked_seqs(frames: &[ClientMessage]) -> Vec<i64> {
    frames
        .iter()
        .map(|m| {
            assert_eq!(m.message_type, MessageType::Acknowledge);
            serde_json::from_slice::<AcknowledgeContent>(&m.payload)
                .unwrap()
                .acknowledged_message_sequence_number
        })
        .collect()
}

fn message(seq: i64, payload: &'static [u8]) -> Event {
    Event::Message {
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from_static(payload),
        sequence: seq,
    }
}

fn send(ch: &mut Channel, now: Instant, payload: &'static [u8]) {
    ch.send(
        now,
        PayloadType::OUTPUT,
        Bytes::from_static(payload),
        Priority::Data,
    )
    .unwrap();
}

#[test]
fn ack_has_the_reference_format() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    ch.handle_frame(t0 + ms(1500), &data(0, b"$ ")).unwrap();
    let out = drain(&mut ch, t0 + ms(1500));
    assert_eq!(out.len(), 1);
    let ack = &out[0];
    assert_eq!(ack.message_type, MessageType::Acknowledge);
    assert_eq!(ack.schema_version, 1);
    assert_eq!(ack.sequence_number, 0);
    assert_eq!(ack.flags, 3);
    assert_eq!(ack.payload_type, PayloadType::NONE);
    assert_eq!(ack.created_date, EPOCH + 1500);
    assert_eq!(ack.message_id.get_version_num(), 4);
    assert_eq!(
        std::str::from_utf8(&ack.payload).unwrap(),
        format!(
            r#"{{"AcknowledgedMessageType":"output_stream_data","AcknowledgedMessageId":"{}","AcknowledgedMessageSequenceNumber":0,"IsSequentialMessage":true}}"#,
            agent_id(0)
        )
    );
    assert_eq!(events(&mut ch), vec![message(0, b"$ ")]);
}

#[test]
fn created_date_is_never_zero() {
    let t0 = start();
    let mut ch = Channel::new(Config::default(), t0);
    send(&mut ch, t0, b"a");
    let m = drain(&mut ch, t0);
    assert_eq!(m[0].created_date, 1);
}

#[test]
fn sequence_numbers_count_from_zero_without_gaps() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    for p in [&b"a"[..], b"b", b"c"] {
        send(&mut ch, t0, p);
    }
    ch.send(
        t0,
        PayloadType::SIZE,
        Bytes::from_static(br#"{"cols":80,"rows":24}"#),
        Priority::Data,
    )
    .unwrap();
    let out = drain(&mut ch, t0 + ms(5));
    assert_eq!(out.len(), 4);
    let mut ids = std::collections::HashSet::new();
    for (i, m) in out.iter().enumerate() {
        assert_eq!(m.message_type, MessageType::InputStreamData);
        assert_eq!(m.sequence_number, i as i64);
        assert_eq!(m.flags, 0, "the plugin sends Flags 0, even on seq 0");
        assert_eq!(m.schema_version, 1);
        assert_eq!(m.created_date, EPOCH + 5);
        assert_eq!(m.message_id.get_version_num(), 4);
        assert!(ids.insert(m.message_id));
    }
    assert_eq!(&out[1].payload[..], b"b");
    assert_eq!(out[3].payload_type, PayloadType::SIZE);
    assert_eq!(ch.stats().sent, 4);
    assert_eq!(ch.stats().unacked, 4);
}

#[test]
fn control_overtakes_queued_data_and_takes_the_next_sequence_number() {
    let t0 = start();
    let mut ch = Channel::new(
        Config {
            frame_budget: Some(FrameBudget {
                per_second: 1000,
                burst: 1,
            }),
            ..config()
        },
        t0,
    );
    for p in [&b"d0"[..], b"d1", b"d2"] {
        send(&mut ch, t0, p);
    }
    let first = drain(&mut ch, t0);
    assert_eq!(first.len(), 1, "burst of 1");
    assert_eq!(&first[0].payload[..], b"d0");
    ch.send(
        t0,
        PayloadType::SIZE,
        Bytes::from_static(b"size"),
        Priority::Control,
    )
    .unwrap();
    let mut got = vec![];
    while got.len() < 3 {
        let now = ch.poll_timeout().unwrap();
        assert!(now - t0 < ms(10), "paced at 1 ms, well before any resend");
        ch.handle_timeout(now);
        got.extend(drain(&mut ch, now));
    }
    let seen: Vec<(i64, &[u8])> = got
        .iter()
        .map(|m| (m.sequence_number, &m.payload[..]))
        .collect();
    assert_eq!(seen, vec![(1, &b"size"[..]), (2, b"d1"), (3, b"d2")]);
}

#[test]
fn rto_follows_rfc6298_from_karn_samples_only() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    send(&mut ch, t0, b"a");
    send(&mut ch, t0, b"b");
    assert_eq!(drain(&mut ch, t0).len(), 2);
    ch.handle_frame(t0 + ms(20), &ack_of(0)).unwrap();
    let s = ch.stats();
    assert_eq!((s.srtt, s.rttvar, s.rto), (ms(90), ms(20), ms(170)));
    // Message 1 times out at 200 ms (the RTO when it was sent) and is resent, and as nothing
    // after it was acked the timer backs off (170 -> 340 ms); its ack must not produce a
    // sample, so the back-off stays until the next one.
    let resent = drain(&mut ch, t0 + ms(200));
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].sequence_number, 1);
    ch.handle_frame(t0 + ms(230), &ack_of(1)).unwrap();
    let s = ch.stats();
    assert_eq!((s.srtt, s.rttvar, s.rto), (ms(90), ms(20), ms(340)));
    assert_eq!(s.acked, 2);
    // Next sample: 90 ms -> RTTVAR 15, SRTT 90, RTO 150.
    send(&mut ch, t0 + ms(300), b"c");
    assert_eq!(drain(&mut ch, t0 + ms(300)).len(), 1);
    ch.handle_frame(t0 + ms(390), &ack_of(2)).unwrap();
    let s = ch.stats();
    assert_eq!((s.srtt, s.rttvar, s.rto), (ms(90), ms(15), ms(150)));
    // Acks of unknown or already-acked sequences change nothing.
    ch.handle_frame(t0 + ms(400), &ack_of(2)).unwrap();
    ch.handle_frame(t0 + ms(400), &ack_of(99)).unwrap();
    ch.handle_frame(t0 + ms(400), &ack_of(-1)).unwrap();
    assert_eq!(ch.stats().acked, 3);
    assert!(ch.is_idle());
}

#[test]
fn resends_byte_identical_copies_with_backoff_capped_at_one_second() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    send(&mut ch, t0, b"x");
    let original = drain_raw(&mut ch, t0);
    assert_eq!(original.len(), 1);
    let mut times = vec![];
    let mut now = t0;
    while times.len() < 6 {
        now = ch.poll_timeout().unwrap();
        // Nothing a nanosecond early.
        assert!(drain_raw(&mut ch, now - Duration::from_nanos(1)).is_empty());
        ch.handle_timeout(now);
        let frames = drain_raw(&mut ch, now);
        assert_eq!(frames, original, "a resend repeats the exact bytes");
        times.push(now - t0);
    }
    assert_eq!(
        times,
        vec![
            ms(200),
            ms(200 + 400),
            ms(600 + 800),
            ms(1400 + 1000),
            ms(2400 + 1000),
            ms(3400 + 1000)
        ]
    );
    assert_eq!(ch.stats().resent, 6);
    ch.handle_frame(now + ms(1), &ack_of(0)).unwrap();
    assert!(ch.is_idle());
    assert_eq!(ch.poll_timeout(), None);
}

#[test]
fn every_overdue_message_is_resent_oldest_first() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    for _ in 0..4 {
        send(&mut ch, t0, b"m");
    }
    assert_eq!(drain(&mut ch, t0).len(), 4);
    ch.handle_frame(t0 + ms(10), &ack_of(1)).unwrap();
    let seqs =
        |ms: Vec<ClientMessage>| -> Vec<i64> { ms.iter().map(|m| m.sequence_number).collect() };
    assert_eq!(ch.stats().rto, ms(178) + Duration::from_micros(750));
    // At 250 ms all three are overdue. 0 was overtaken by the ack of 1: lost, resent. 2 may
    // only be slow: resent, and the timer backs off to 357.5 ms; 3 now waits that long.
    assert_eq!(seqs(drain(&mut ch, t0 + ms(250))), vec![0, 2]);
    let rto = ms(357) + Duration::from_micros(500);
    assert_eq!(ch.stats().rto, rto);
    assert!(drain(&mut ch, t0 + ms(250) + rto - ms(1)).is_empty());
    // Then 0's resend has timed out too, and nothing sent after it was acked: it may be slow
    // as well, so it alone goes again, and 2 and 3 wait behind it for as long as nothing
    // answers.
    assert_eq!(seqs(drain(&mut ch, t0 + ms(250) + rto)), vec![0]);
}

#[test]
fn messages_refused_while_the_agent_was_not_ready_all_follow_once_it_answers() {
    // The agent refuses (does not ack) everything for its first second, as when its port
    // connection is not up yet, then acks whatever arrives. The timer backs off meanwhile and
    // holds the messages behind the oldest; once the oldest's resend is acked, the others were
    // sent before an acked transmission, so they are lost, not slow: they must follow within
    // about a backed-off timeout, not one per timeout.
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    for _ in 0..20 {
        send(&mut ch, t0, b"early");
    }
    assert_eq!(drain(&mut ch, t0).len(), 20);
    let ready = t0 + Duration::from_secs(1);
    let mut now = t0;
    while !ch.is_idle() {
        now += ms(5);
        assert!(
            now < ready + Duration::from_secs(3),
            "still unacked 3 s after the agent became ready: {:?}",
            ch.stats()
        );
        ch.handle_timeout(now);
        for m in drain(&mut ch, now) {
            if now >= ready {
                ch.handle_frame(now + ms(1), &ack_of(m.sequence_number))
                    .unwrap();
            }
        }
    }
}

#[test]
fn a_slow_flight_is_resent_once_not_message_by_message() {
    // A peer whose acks suddenly take 300 ms (a queue building up) while the RTO is ~20 ms:
    // without the timer back-off every message of the flight would be resent for nothing,
    // and the samples would never show the new delay (Karn's rule drops resent messages).
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    let mut now = t0;
    // A fast start: 50 messages acked after 2 ms each.
    for i in 0..50i64 {
        send(&mut ch, now, b"fast");
        assert_eq!(drain(&mut ch, now).len(), 1);
        now += ms(2);
        ch.handle_frame(now, &ack_of(i)).unwrap();
    }
    assert!(ch.stats().rto < ms(30), "{:?}", ch.stats());
    // Then a flight of 100 messages whose acks all come back 300 ms after their send.
    let flight_start = now;
    let mut resent = 0;
    for _ in 0..100 {
        send(&mut ch, now, b"slow");
        resent += drain(&mut ch, now).len() - 1;
        now += ms(1);
    }
    let mut next_ack = 50i64;
    while next_ack < 150 {
        now += ms(1);
        ch.handle_timeout(now);
        resent += drain(&mut ch, now).len();
        let due = flight_start + ms(300) + ms(u64::try_from(next_ack - 50).unwrap());
        if now >= due {
            ch.handle_frame(now, &ack_of(next_ack)).unwrap();
            next_ack += 1;
        }
    }
    assert!(resent <= 5, "resent {resent} of a slow flight of 100");
    assert!(
        ch.stats().srtt > ms(30),
        "the delay shows: {:?}",
        ch.stats()
    );
}

#[test]
fn window_bounds_queued_plus_unacked() {
    let t0 = start();
    let mut ch = Channel::new(
        Config {
            outgoing_window: 3,
            ..config()
        },
        t0,
    );
    assert_eq!(ch.send_capacity(), 3);
    send(&mut ch, t0, b"1");
    send(&mut ch, t0, b"2");
    assert_eq!(drain(&mut ch, t0).len(), 2);
    send(&mut ch, t0, b"3");
    assert_eq!(ch.send_capacity(), 0);
    assert_eq!(
        ch.send(
            t0,
            PayloadType::OUTPUT,
            Bytes::from_static(b"x"),
            Priority::Data
        ),
        Err(SendError::Full)
    );
    // Control messages may still use the small reserve above the window (a flag or a resize
    // must never wait behind bulk data), and no more.
    for _ in 0..CONTROL_RESERVE {
        ch.send(
            t0,
            PayloadType::SIZE,
            Bytes::from_static(b"{}"),
            Priority::Control,
        )
        .unwrap();
    }
    assert_eq!(
        ch.send(
            t0,
            PayloadType::SIZE,
            Bytes::from_static(b"{}"),
            Priority::Control
        ),
        Err(SendError::Full)
    );
    assert_eq!(ch.send_capacity(), 0);
    ch.handle_frame(t0 + ms(5), &ack_of(1)).unwrap();
    assert_eq!(ch.send_capacity(), 0, "the reserve is used up first");
    // Oversized windows are clamped to what the agent can reorder.
    let big = Channel::new(
        Config {
            outgoing_window: 1 << 40,
            ..config()
        },
        t0,
    );
    assert_eq!(big.send_capacity(), MAX_OUTGOING_WINDOW);
}

#[test]
fn frame_budget_paces_new_sends_and_resends() {
    let t0 = start();
    let budget = FrameBudget::default();
    let mut ch = Channel::new(
        Config {
            frame_budget: Some(budget),
            outgoing_window: 10_000,
            ..config()
        },
        t0,
    );
    let end = t0 + Duration::from_secs(10);
    let mut now = t0;
    let mut transmitted = 0u64;
    let mut blocked_waits = 0;
    while now <= end {
        while ch.send_capacity() > 0 {
            send(&mut ch, now, b"payload");
        }
        transmitted += drain_raw(&mut ch, now).len() as u64;
        let next = ch.poll_timeout().expect("work is pending");
        assert!(next > now, "after draining, the timer is in the future");
        if ch.stats().queued > 0 {
            blocked_waits += 1;
        }
        now = next;
        ch.handle_timeout(now);
    }
    let s = ch.stats();
    assert_eq!(transmitted, s.sent + s.resent);
    assert!(s.resent > 0, "the silent peer forces resends");
    assert!(
        transmitted <= u64::from(budget.per_second) * 10 + u64::from(budget.burst),
        "{transmitted}"
    );
    assert!(
        transmitted >= u64::from(budget.per_second) * 10,
        "{transmitted}"
    );
    assert!(
        blocked_waits > 1000,
        "poll_timeout reported the token refill"
    );
}

#[test]
fn blocked_on_tokens_reports_the_refill_time() {
    let t0 = start();
    let mut ch = Channel::new(
        Config {
            frame_budget: Some(FrameBudget {
                per_second: 4,
                burst: 1,
            }),
            ..config()
        },
        t0,
    );
    send(&mut ch, t0, b"1");
    send(&mut ch, t0, b"2");
    assert_eq!(drain(&mut ch, t0).len(), 1);
    assert_eq!(ch.poll_timeout(), Some(t0 + ms(250)));
    assert!(drain(&mut ch, t0 + ms(249)).is_empty());
    assert_eq!(drain(&mut ch, t0 + ms(250)).len(), 1);
}

#[test]
fn pause_holds_data_but_not_acks() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    send(&mut ch, t0, b"1");
    assert_eq!(drain(&mut ch, t0).len(), 1);
    ch.handle_frame(t0, &data(0, b"out")).unwrap();
    ch.handle_frame(t0, &control(MessageType::PausePublication, b""))
        .unwrap();
    assert_eq!(events(&mut ch), vec![message(0, b"out"), Event::Paused]);
    send(&mut ch, t0, b"2");
    // The pending ack still goes out; nothing else, not even the overdue resend.
    assert_eq!(acked_seqs(&drain(&mut ch, t0 + ms(500))), vec![0]);
    assert_eq!(ch.poll_timeout(), None, "no timers while paused");
    // Paused time does not count against the agent.
    ch.handle_timeout(t0 + Duration::from_secs(1000));
    assert!(events(&mut ch).is_empty());
    ch.handle_frame(
        t0 + Duration::from_secs(1000),
        &control(MessageType::StartPublication, b""),
    )
    .unwrap();
    assert_eq!(events(&mut ch), vec![Event::Resumed]);
    let out = drain(&mut ch, t0 + Duration::from_secs(1000));
    let seqs: Vec<i64> = out.iter().map(|m| m.sequence_number).collect();
    assert_eq!(
        seqs,
        vec![0, 1],
        "the overdue resend, then the held message"
    );
}

#[test]
fn incoming_data_or_ack_lifts_a_pause() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    ch.handle_frame(t0, &control(MessageType::PausePublication, b""))
        .unwrap();
    ch.handle_frame(t0, &control(MessageType::PausePublication, b""))
        .unwrap();
    ch.handle_frame(t0, &ack_of(5)).unwrap();
    ch.handle_frame(t0, &control(MessageType::PausePublication, b""))
        .unwrap();
    ch.handle_frame(t0, &data(0, b"x")).unwrap();
    assert_eq!(
        events(&mut ch),
        vec![
            Event::Paused,
            Event::Resumed,
            Event::Paused,
            Event::Resumed,
            message(0, b"x")
        ]
    );
}

mod receive;
