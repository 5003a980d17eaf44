//! Receiving, giving up, reconnection, closing, encryption and hostile input.

use super::*;

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
        vec![0, 0, 0, 2, 2, 2, 2, 1, 1, 0, 0, 2, 2, 3, 3],
        "every copy is acked, including duplicates; after the first duplicate (a lost ack) \
         each ack goes out twice"
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
fn acks_are_doubled_only_for_a_while_after_a_duplicate() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    ch.handle_frame(t0, &data(0, b"0")).unwrap();
    ch.handle_frame(t0, &data(1, b"1")).unwrap();
    assert_eq!(
        acked_seqs(&drain(&mut ch, t0)),
        vec![0, 1],
        "a healthy link: one ack each"
    );
    ch.handle_frame(t0, &data(0, b"0")).unwrap();
    ch.handle_frame(t0, &data(2, b"2")).unwrap();
    assert_eq!(acked_seqs(&drain(&mut ch, t0)), vec![0, 0, 2, 2]);
    let later = t0 + ACK_COPIES_AFTER_LOSS;
    ch.handle_frame(later, &data(3, b"3")).unwrap();
    assert_eq!(acked_seqs(&drain(&mut ch, later)), vec![3]);
    assert_eq!(ch.stats().acks_repeated, 2);
}

#[test]
fn a_new_websocket_repeats_the_recent_acks_and_drops_unwritten_ones() {
    let t0 = start();
    let mut ch = Channel::new(config(), t0);
    for seq in 0..3 {
        ch.handle_frame(t0, &data(seq, b"x")).unwrap();
    }
    // Acks 0..3 are queued but the link dies before they are written.
    ch.transport_lost(t0);
    assert!(drain(&mut ch, t0).is_empty());
    ch.transport_restored(t0 + ms(500));
    assert_eq!(
        acked_seqs(&drain(&mut ch, t0 + ms(500))),
        vec![0, 1, 2],
        "the agent hears about every recent message again"
    );
    // Only the latest RECENT_ACKS are kept.
    for seq in 3..(RECENT_ACKS as i64 + 10) {
        ch.handle_frame(t0, &data(seq, b"x")).unwrap();
        let _ = events(&mut ch);
    }
    let _ = drain(&mut ch, t0);
    ch.transport_lost(t0);
    ch.transport_restored(t0 + ms(600));
    let again = acked_seqs(&drain(&mut ch, t0 + ms(600)));
    assert_eq!(again.len(), RECENT_ACKS);
    assert_eq!(again[0], 10);
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
        send(&mut ch, t0, p);
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
    let mut out = drain_raw(&mut ch, t0 + Duration::from_secs(30));
    // First the ack of agent message 0 again (its first one was never written), then ours.
    assert_eq!(
        acked_seqs(&[ClientMessage::decode(&out[0]).unwrap()]),
        vec![0]
    );
    out.remove(0);
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
