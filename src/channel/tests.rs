//! Unit tests of the channel, written as a specification: each drives a `Channel` with simulated
//! time and asserts exactly what the `poll_*` methods return.

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
        ch.send(
            t0,
            PayloadType::OUTPUT,
            Bytes::copy_from_slice(p),
            Priority::Data,
        )
        .unwrap();
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
        ch.send(
            t0,
            PayloadType::OUTPUT,
            Bytes::copy_from_slice(p),
            Priority::Data,
        )
        .unwrap();
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
    // Message 1 times out at 200 ms (the RTO when it was sent) and is resent; its ack must not
    // produce a sample.
    let resent = drain(&mut ch, t0 + ms(200));
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].sequence_number, 1);
    ch.handle_frame(t0 + ms(230), &ack_of(1)).unwrap();
    let s = ch.stats();
    assert_eq!((s.srtt, s.rttvar, s.rto), (ms(90), ms(20), ms(170)));
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
    let resent: Vec<i64> = drain(&mut ch, t0 + ms(250))
        .iter()
        .map(|m| m.sequence_number)
        .collect();
    assert_eq!(resent, vec![0, 2, 3]);
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

#[test]
fn duplicates_are_reacked_and_delivered_once_in_order() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    for seq in [0, 0, 2, 2, 1, 0, 2, 3] {
        ch.handle_frame(t0, &data(seq, format!("m{seq}").as_bytes()))
            .unwrap();
    }
    assert_eq!(
        acked_seqs(&drain(&mut ch, t0)),
        vec![0, 0, 2, 2, 1, 0, 2, 3],
        "every copy is acked, including duplicates"
    );
    let got: Vec<i64> = events(&mut ch)
        .into_iter()
        .map(|e| match e {
            Event::Message { sequence, .. } => sequence,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3]);
    let s = ch.stats();
    assert_eq!((s.received, s.duplicates, s.delivered), (4, 4, 4));
    assert_eq!(ch.expected_sequence(), 4);
}

#[test]
fn full_incoming_buffer_refuses_without_ack_until_events_are_pulled() {
    let t0 = start();
    let mut ch = Channel::new(
        Config {
            incoming_capacity: 2,
            ..config()
        },
        t0,
    );
    ch.handle_frame(t0, &data(1, b"1")).unwrap();
    ch.handle_frame(t0, &data(2, b"2")).unwrap();
    ch.handle_frame(t0, &data(3, b"3")).unwrap(); // ahead and no room: refused
                                                  // The next expected message is still taken, so the gap can close.
    ch.handle_frame(t0, &data(0, b"0")).unwrap();
    assert_eq!(acked_seqs(&drain(&mut ch, t0)), vec![1, 2, 0]);
    assert_eq!(ch.stats().refused, 1);
    // Three undelivered messages: even the next expected one (3) is refused now.
    ch.handle_frame(t0, &data(3, b"3")).unwrap();
    assert!(drain(&mut ch, t0).is_empty());
    assert_eq!(events(&mut ch).len(), 3);
    ch.handle_frame(t0, &data(3, b"3")).unwrap();
    assert_eq!(acked_seqs(&drain(&mut ch, t0)), vec![3]);
    assert_eq!(events(&mut ch), vec![message(3, b"3")]);
}

#[test]
fn a_full_delivery_queue_asks_for_no_input_and_stops_the_give_up_clock() {
    let t0 = start();
    let mut ch = Channel::new(
        Config {
            incoming_capacity: 2,
            ..config()
        },
        t0,
    );
    send(&mut ch, t0, b"up");
    assert_eq!(drain(&mut ch, t0).len(), 1);
    assert!(ch.wants_input());
    ch.handle_frame(t0, &data(0, b"0")).unwrap();
    assert!(ch.wants_input(), "one of two places taken");
    ch.handle_frame(t0, &data(1, b"1")).unwrap();
    assert!(!ch.wants_input(), "the caller must stop reading");
    // 1000 s with nobody pulling events (a stalled local reader): the acks for our data sit
    // unread behind the agent's messages, so this time does not count towards giving up.
    let mut now = t0;
    while now < t0 + Duration::from_secs(1000) {
        now += Duration::from_millis(500);
        ch.handle_timeout(now);
        let _ = drain_raw(&mut ch, now);
    }
    let later = now;
    assert_eq!(
        events(&mut ch),
        vec![message(0, b"0"), message(1, b"1")],
        "no failure queued behind the data"
    );
    assert!(ch.wants_input());
    ch.handle_frame(later, &ack_of(0)).unwrap();
    let (_, evs) = run_timers(&mut ch, later, later + Duration::from_secs(1000));
    assert!(evs.is_empty(), "acked in time: {evs:?}");
    assert_eq!(ch.stats().refused, 0);
}

/// Drives the channel from timer to timer until `stop` holds or the timer disappears.
fn run_timers(ch: &mut Channel, mut now: Instant, until: Instant) -> (Instant, Vec<Event>) {
    let mut evs = vec![];
    while let Some(t) = ch.poll_timeout() {
        if t > until {
            break;
        }
        now = now.max(t);
        ch.handle_timeout(now);
        let _ = drain_raw(ch, now);
        evs.extend(events(ch));
    }
    (now, evs)
}

#[test]
fn gives_up_once_counting_only_connected_time() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    send(&mut ch, t0, b"lost");
    assert_eq!(drain(&mut ch, t0).len(), 1);
    // 60 s connected, then 1000 s without a websocket: the clock stops.
    let (_, evs) = run_timers(&mut ch, t0, t0 + Duration::from_secs(60));
    assert!(evs.is_empty());
    ch.transport_lost(t0 + Duration::from_secs(60));
    assert_eq!(ch.poll_timeout(), None);
    ch.handle_timeout(t0 + Duration::from_secs(1060));
    assert!(events(&mut ch).is_empty());
    ch.transport_restored(t0 + Duration::from_secs(1060));
    let (now, evs) = run_timers(&mut ch, t0, t0 + Duration::from_secs(100_000));
    assert_eq!(
        evs,
        vec![Event::Failed(Error::TimedOut {
            unacked_for: Duration::from_secs(120),
            sequence: 0
        })]
    );
    assert_eq!(now - t0, Duration::from_secs(1120));
    assert_eq!(ch.poll_timeout(), None);
    assert!(ch.poll_transmit(now).is_none());
    ch.handle_timeout(now + Duration::from_secs(500));
    assert!(events(&mut ch).is_empty(), "failed exactly once");
    assert_eq!(
        ch.send(now, PayloadType::OUTPUT, Bytes::new(), Priority::Data),
        Err(SendError::Closed)
    );
    assert_eq!(ch.send_capacity(), 0);
    let text = Error::TimedOut {
        unacked_for: Duration::from_secs(120),
        sequence: 0,
    }
    .to_string();
    assert!(text.contains("start a new session"), "{text}");
}

#[test]
fn acked_data_never_times_out() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    let mut now = t0;
    for i in 0..300 {
        send(&mut ch, now, b"k");
        assert_eq!(drain(&mut ch, now).len(), 1);
        now += Duration::from_secs(1);
        ch.handle_frame(now, &ack_of(i)).unwrap();
    }
    assert!(events(&mut ch).is_empty());
    assert!(ch.is_idle());
}

#[test]
fn transport_restore_resends_every_unacked_message_in_order() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    for p in [&b"0"[..], b"1", b"2", b"3", b"4"] {
        ch.send(
            t0,
            PayloadType::OUTPUT,
            Bytes::copy_from_slice(p),
            Priority::Data,
        )
        .unwrap();
    }
    let originals = drain_raw(&mut ch, t0);
    ch.handle_frame(t0 + ms(5), &ack_of(2)).unwrap();
    ch.handle_frame(t0 + ms(5), &data(0, b"in")).unwrap();
    ch.transport_lost(t0 + ms(6));
    assert!(
        drain_raw(&mut ch, t0 + ms(6)).is_empty(),
        "pending ack dropped"
    );
    send(&mut ch, t0 + ms(7), b"5");
    assert!(drain_raw(&mut ch, t0 + Duration::from_secs(30)).is_empty());
    assert_eq!(ch.poll_timeout(), None);
    ch.transport_restored(t0 + Duration::from_secs(30));
    let out = drain_raw(&mut ch, t0 + Duration::from_secs(30));
    assert_eq!(out.len(), 5);
    assert_eq!(
        out[..4],
        [
            originals[0].clone(),
            originals[1].clone(),
            originals[3].clone(),
            originals[4].clone()
        ]
    );
    let new = ClientMessage::decode(&out[4]).unwrap();
    assert_eq!((new.sequence_number, &new.payload[..]), (5, &b"5"[..]));
}

#[test]
fn channel_closed_is_reported_after_earlier_data_and_never_acked() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    ch.handle_frame(t0, &data(0, b"bye\r\n")).unwrap();
    let closed = wire::to_vec(&wire::ChannelClosed {
        message_type: "channel_closed".into(),
        schema_version: 1,
        output: "Session terminated".into(),
        ..Default::default()
    });
    ch.handle_frame(t0, &control(MessageType::ChannelClosed, &closed))
        .unwrap();
    assert_eq!(acked_seqs(&drain(&mut ch, t0)), Vec::<i64>::new());
    assert_eq!(
        events(&mut ch),
        vec![
            message(0, b"bye\r\n"),
            Event::ChannelClosed {
                output: "Session terminated".into()
            }
        ]
    );
    assert_eq!(
        ch.send(t0, PayloadType::OUTPUT, Bytes::new(), Priority::Data),
        Err(SendError::Closed)
    );
    assert_eq!(ch.poll_timeout(), None);

    let mut ch = Channel::new(config(), t0);
    ch.handle_frame(t0, &control(MessageType::ChannelClosed, b"{not json"))
        .unwrap();
    // A close whose reason cannot be read is not a clean end.
    assert_eq!(events(&mut ch), vec![Event::Failed(Error::BadClose)]);
}

#[test]
fn frames_not_for_us_are_ignored() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    let state = wire::to_vec(&wire::AgentSessionState {
        schema_version: 1,
        session_state: "Terminating".into(),
        session_id: "s-1".into(),
    });
    ch.handle_frame(t0, &control(MessageType::AgentSessionState, &state))
        .unwrap();
    ch.handle_frame(t0, &control(MessageType::Other("agent_job".into()), b"{}"))
        .unwrap();
    let wrong_way = ClientMessage::new(
        MessageType::InputStreamData,
        0,
        0,
        PayloadType::OUTPUT,
        Bytes::from_static(b"x"),
        EPOCH,
        Uuid::from_u128(1),
    )
    .encode();
    ch.handle_frame(t0, &wrong_way).unwrap();
    ch.handle_frame(t0, &control(MessageType::Acknowledge, b"garbage"))
        .unwrap();
    assert!(drain_raw(&mut ch, t0).is_empty());
    assert!(events(&mut ch).is_empty());
    assert_eq!(ch.expected_sequence(), 0);
}

#[test]
fn undecodable_frames_are_errors_that_change_nothing() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    let mut bad = data(0, b"abc");
    bad[crate::wire::PAYLOAD_OFFSET] ^= 0xff;
    assert_eq!(
        ch.handle_frame(t0, &bad),
        Err(crate::wire::DecodeError::Digest)
    );
    assert!(ch.handle_frame(t0, b"").is_err());
    assert!(drain_raw(&mut ch, t0).is_empty());
    assert!(events(&mut ch).is_empty());
}

fn test_key() -> Vec<u8> {
    (100..164u8).collect()
}

#[test]
fn encryption_covers_output_only_outgoing_and_output_stderr_exitcode_incoming() {
    let t0 = start();
    let mut rng = StdRng::seed_from_u64(9);
    let agent = crypto::agent_side_keys(&test_key()).unwrap();
    let mut ch = Channel::new(config(), t0);
    ch.set_encryption(crypto::SessionKeys::new(&test_key()).unwrap());
    ch.send(
        t0,
        PayloadType::OUTPUT,
        Bytes::from_static(b"ls\r"),
        Priority::Control,
    )
    .unwrap();
    ch.send(
        t0,
        PayloadType::SIZE,
        Bytes::from_static(b"{}"),
        Priority::Control,
    )
    .unwrap();
    let out = drain(&mut ch, t0);
    assert_eq!(out[0].payload.len(), 3 + crypto::OVERHEAD);
    assert_eq!(agent.decrypt(&out[0].payload).unwrap(), b"ls\r");
    assert_eq!(&out[1].payload[..], b"{}", "Size stays plaintext");

    let sealed = |p: &[u8], rng: &mut StdRng| agent.encrypt(rng, p);
    ch.handle_frame(
        t0,
        &agent_frame(0, PayloadType::OUTPUT, &sealed(b"out", &mut rng)),
    )
    .unwrap();
    ch.handle_frame(
        t0,
        &agent_frame(1, PayloadType::STDERR, &sealed(b"err", &mut rng)),
    )
    .unwrap();
    ch.handle_frame(
        t0,
        &agent_frame(
            2,
            PayloadType::EXIT_CODE,
            &sealed(b"EXIT_CODE: 3", &mut rng),
        ),
    )
    .unwrap();
    ch.handle_frame(t0, &agent_frame(3, PayloadType::FLAG, &[0, 0, 0, 3]))
        .unwrap();
    let payloads: Vec<(PayloadType, Bytes)> = events(&mut ch)
        .into_iter()
        .map(|e| match e {
            Event::Message {
                payload_type,
                payload,
                ..
            } => (payload_type, payload),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        payloads,
        vec![
            (PayloadType::OUTPUT, Bytes::from_static(b"out")),
            (PayloadType::STDERR, Bytes::from_static(b"err")),
            (PayloadType::EXIT_CODE, Bytes::from_static(b"EXIT_CODE: 3")),
            (PayloadType::FLAG, Bytes::from_static(&[0, 0, 0, 3])),
        ]
    );
}

#[test]
fn undecryptable_payload_fails_the_channel_once() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    ch.set_encryption(crypto::SessionKeys::new(&test_key()).unwrap());
    ch.handle_frame(t0, &data(0, &[0u8; 40])).unwrap();
    ch.handle_frame(t0, &data(1, &[0u8; 40])).unwrap();
    assert_eq!(
        events(&mut ch),
        vec![Event::Failed(Error::Decrypt { sequence: 0 })]
    );
    assert_eq!(
        ch.send(t0, PayloadType::OUTPUT, Bytes::new(), Priority::Data),
        Err(SendError::Closed)
    );
    assert_eq!(ch.poll_timeout(), None);
}

#[test]
fn answers_the_encryption_challenge_with_its_keys() {
    let t0 = start();
    let mut rng = StdRng::seed_from_u64(10);
    let agent = crypto::agent_side_keys(&test_key()).unwrap();
    let mut ch = Channel::new(config(), t0);
    let secret = [0x5au8; 64];
    let challenge =
        base64::engine::general_purpose::STANDARD.encode(agent.encrypt(&mut rng, &secret));
    assert!(ch.answer_encryption_challenge(&challenge).is_none());
    ch.set_encryption(crypto::SessionKeys::new(&test_key()).unwrap());
    let answer = ch.answer_encryption_challenge(&challenge).unwrap().unwrap();
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(answer)
        .unwrap();
    assert_eq!(agent.decrypt(&sealed).unwrap(), secret);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn any_type() -> impl Strategy<Value = MessageType> {
        prop_oneof![
            Just(MessageType::OutputStreamData),
            Just(MessageType::Acknowledge),
            Just(MessageType::ChannelClosed),
            Just(MessageType::PausePublication),
            Just(MessageType::StartPublication),
            Just(MessageType::InputStreamData),
            Just(MessageType::AgentSessionState),
            "[a-z_]{1,32}".prop_map(MessageType::Other),
        ]
    }

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            (
                any_type(),
                any::<i64>(),
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..80),
                any::<u64>(),
            )
                .prop_map(|(t, seq, flags, pt, payload, date)| ClientMessage::new(
                    t,
                    seq,
                    flags,
                    PayloadType(pt),
                    Bytes::from(payload),
                    date,
                    Uuid::from_u128(u128::from(date)),
                )
                .encode()),
            (any::<i64>(), "[ -~]{0,20}").prop_map(|(seq, junk)| {
                let json = format!(
                    r#"{{"AcknowledgedMessageSequenceNumber":{seq},"AcknowledgedMessageId":"{junk}"}}"#
                );
                control(MessageType::Acknowledge, json.as_bytes())
            }),
        ]
    }

    proptest! {
        #[test]
        fn hostile_frames_never_panic(
            frames in proptest::collection::vec((frame(), 0u64..3000), 1..40),
            encrypted in any::<bool>(),
        ) {
            let t0 = start();
            let mut ch = Channel::new(Config { incoming_capacity: 8, ..config() }, t0);
            if encrypted {
                ch.set_encryption(crypto::SessionKeys::new(&test_key()).unwrap());
            }
            send(&mut ch, t0, b"hello");
            let mut now = t0;
            for (f, dt) in frames {
                now += ms(dt);
                let _ = ch.handle_frame(now, &f);
                let _ = drain_raw(&mut ch, now);
                let _ = events(&mut ch);
                let _ = ch.poll_timeout();
                let _ = ch.stats();
            }
        }
    }
}
