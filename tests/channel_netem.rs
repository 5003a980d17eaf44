//! The channel against a scripted fake agent over a simulated lossy link, in simulated time.
//!
//! `Link` is a seeded "netem": it drops, duplicates, delays and (through random delays) reorders
//! frames. `FakeAgent` follows the agent's rules: it acks every `input_stream_data` it accepts,
//! re-acks duplicates, numbers its `output_stream_data` from 0 with SYN on seq 0, and resends its
//! oldest unacked message after a fixed RTO. Nothing sleeps: the loop jumps to the next instant
//! at which something happens.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use ssm_plugin::channel::{Channel, Config, Error, Event, Priority};
use ssm_plugin::wire::{
    AcknowledgeContent, ClientMessage, MessageType, PayloadType, FLAG_ACK, FLAG_SYN,
};
use uuid::Uuid;

const CHUNK: usize = 1024;

/// splitmix64: tiny, seeded, good enough for fault injection.
#[derive(Clone)]
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug)]
struct Netem {
    loss: f64,
    dup: f64,
    base_delay: Duration,
    /// Uniform extra delay; anything above zero reorders frames.
    jitter: Duration,
}

impl Netem {
    fn perfect() -> Self {
        Self {
            loss: 0.0,
            dup: 0.0,
            base_delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
        }
    }
}

/// One direction of the simulated network.
struct Link {
    netem: Netem,
    rng: Prng,
    up: bool,
    /// Frames in flight by arrival time; the counter keeps equal times in send order.
    in_flight: BTreeMap<(Instant, u64), Vec<u8>>,
    counter: u64,
    delivered: u64,
}

impl Link {
    fn new(netem: Netem, seed: u64) -> Self {
        Self {
            netem,
            rng: Prng(seed),
            up: true,
            in_flight: BTreeMap::new(),
            counter: 0,
            delivered: 0,
        }
    }

    fn send(&mut self, now: Instant, frame: Vec<u8>) {
        if !self.up || self.rng.chance(self.netem.loss) {
            return;
        }
        let copies = if self.rng.chance(self.netem.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = self.netem.jitter.as_micros() as u64;
            let delay = self.netem.base_delay
                + Duration::from_micros(if jitter == 0 {
                    0
                } else {
                    self.rng.below(jitter)
                });
            self.counter += 1;
            self.in_flight
                .insert((now + delay, self.counter), frame.clone());
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.in_flight.keys().next().map(|(t, _)| *t)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        let key = *self.in_flight.keys().next()?;
        if key.0 > now {
            return None;
        }
        self.delivered += 1;
        self.in_flight.remove(&key)
    }

    fn cut(&mut self) {
        self.up = false;
        self.in_flight.clear();
    }
}

/// The agent side, reduced to its data-channel rules.
struct FakeAgent {
    epoch_ms: u64,
    start: Instant,
    ids: Prng,
    rto: Duration,
    window: usize,
    next_seq: i64,
    to_send: VecDeque<Bytes>,
    unacked: BTreeMap<i64, (Vec<u8>, Instant)>,
    expected: i64,
    reorder: BTreeMap<i64, Bytes>,
    received: Vec<u8>,
    out: VecDeque<Vec<u8>>,
    acks_sent: u64,
    duplicates_seen: u64,
}

impl FakeAgent {
    fn new(start: Instant, data: &[u8], seed: u64) -> Self {
        Self {
            epoch_ms: 1_800_000_000_000,
            start,
            ids: Prng(seed ^ 0xa6e7),
            rto: Duration::from_millis(200),
            window: 256,
            next_seq: 0,
            to_send: data.chunks(CHUNK).map(Bytes::copy_from_slice).collect(),
            unacked: BTreeMap::new(),
            expected: 0,
            reorder: BTreeMap::new(),
            received: Vec::new(),
            out: VecDeque::new(),
            acks_sent: 0,
            duplicates_seen: 0,
        }
    }

    fn date(&self, now: Instant) -> u64 {
        self.epoch_ms + (now - self.start).as_millis() as u64
    }

    fn id(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            (u128::from(self.ids.next()) << 64 | u128::from(self.ids.next())).to_be_bytes(),
        )
        .into_uuid()
    }

    fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        let msg = ClientMessage::decode(frame).expect("the channel sends valid frames");
        match msg.message_type {
            MessageType::InputStreamData => {
                assert_eq!(msg.flags, 0);
                let seq = msg.sequence_number;
                if seq < self.expected || self.reorder.contains_key(&seq) {
                    self.duplicates_seen += 1;
                } else if seq == self.expected {
                    self.received.extend_from_slice(&msg.payload);
                    self.expected += 1;
                    while let Some(p) = self.reorder.remove(&self.expected) {
                        self.received.extend_from_slice(&p);
                        self.expected += 1;
                    }
                } else {
                    self.reorder.insert(seq, msg.payload.clone());
                }
                let id = self.id();
                let ack = ClientMessage::acknowledge_for(&msg, self.date(now), id);
                self.out.push_back(ack.encode());
                self.acks_sent += 1;
            }
            MessageType::Acknowledge => {
                assert_eq!(msg.flags, FLAG_ACK);
                let c: AcknowledgeContent = serde_json::from_slice(&msg.payload).unwrap();
                assert_eq!(c.acknowledged_message_type, "output_stream_data");
                self.unacked.remove(&c.acknowledged_message_sequence_number);
            }
            other => panic!("the client sent {other}"),
        }
    }

    fn poll(&mut self, now: Instant) {
        while self.unacked.len() < self.window {
            let Some(payload) = self.to_send.pop_front() else {
                break;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let id = self.id();
            let frame = ClientMessage::new(
                MessageType::OutputStreamData,
                seq,
                if seq == 0 { FLAG_SYN } else { 0 },
                PayloadType::OUTPUT,
                payload,
                self.date(now),
                id,
            )
            .encode();
            self.out.push_back(frame.clone());
            self.unacked.insert(seq, (frame, now));
        }
        if let Some((_, (frame, last))) = self.unacked.iter_mut().next() {
            if now.duration_since(*last) >= self.rto {
                *last = now;
                self.out.push_back(frame.clone());
            }
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.unacked
            .values()
            .next()
            .map(|(_, last)| *last + self.rto)
    }

    fn idle(&self) -> bool {
        self.to_send.is_empty() && self.unacked.is_empty()
    }
}

fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Prng(seed);
    (0..len).map(|_| r.next() as u8).collect()
}

struct Sim {
    t0: Instant,
    now: Instant,
    ch: Channel,
    agent: FakeAgent,
    c2a: Link,
    a2c: Link,
    connected: bool,
    client_data: Vec<u8>,
    client_offset: usize,
    client_received: Vec<u8>,
    /// What the agent sends, to check each delivery against.
    agent_data: Vec<u8>,
    /// How much of `agent.received` was checked against `client_data`.
    agent_checked: usize,
    last_seq: i64,
    events: Vec<Event>,
}

impl Sim {
    fn new(seed: u64, netem: Netem, config: Config, client_len: usize, agent_len: usize) -> Self {
        let t0 = Instant::now(); // the one real clock reading; the rest is simulated
        Self {
            t0,
            now: t0,
            ch: Channel::new(Config { seed, ..config }, t0),
            agent: FakeAgent::new(t0, &test_data(agent_len, seed ^ 2), seed),
            c2a: Link::new(netem, seed ^ 3),
            a2c: Link::new(netem, seed ^ 4),
            connected: true,
            client_data: test_data(client_len, seed ^ 1),
            client_offset: 0,
            client_received: Vec::new(),
            agent_data: test_data(agent_len, seed ^ 2),
            agent_checked: 0,
            last_seq: -1,
            events: Vec::new(),
        }
    }

    /// Runs every output of both ends at the current instant.
    fn flush(&mut self) {
        let now = self.now;
        while self.client_offset < self.client_data.len() && self.ch.send_capacity() > 0 {
            let end = (self.client_offset + CHUNK).min(self.client_data.len());
            let chunk = Bytes::copy_from_slice(&self.client_data[self.client_offset..end]);
            self.ch
                .send(now, PayloadType::OUTPUT, chunk, Priority::Data)
                .unwrap();
            self.client_offset = end;
        }
        while let Some(f) = self.ch.poll_transmit(now) {
            assert!(self.connected, "transmitted while the transport was down");
            self.c2a.send(now, f);
        }
        while let Some(e) = self.ch.poll_event() {
            match e {
                Event::Message {
                    payload_type,
                    payload,
                    sequence,
                } => {
                    assert_eq!(payload_type, PayloadType::OUTPUT);
                    assert_eq!(sequence, self.last_seq + 1, "in order, exactly once");
                    self.last_seq = sequence;
                    let at = self.client_received.len();
                    assert!(
                        self.agent_data.get(at..at + payload.len()) == Some(&payload[..]),
                        "delivered bytes differ from what the agent sent"
                    );
                    self.client_received.extend_from_slice(&payload);
                }
                other => self.events.push(other),
            }
        }
        self.agent.poll(now);
        while let Some(f) = self.agent.out.pop_front() {
            self.a2c.send(now, f);
        }
        let got = self.agent.received.len();
        if got > self.agent_checked {
            assert!(
                self.client_data.get(self.agent_checked..got)
                    == Some(&self.agent.received[self.agent_checked..]),
                "the agent received bytes the client did not send"
            );
            self.agent_checked = got;
        }
    }

    fn next_event(&self) -> Option<Instant> {
        [
            self.ch.poll_timeout(),
            self.agent.next_timeout(),
            self.c2a.next_at(),
            self.a2c.next_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances to `until` or the next event, whichever is first, and handles what is due.
    fn step(&mut self, until: Instant) {
        let next = self.next_event().map_or(until, |t| t.min(until));
        self.now = self.now.max(next);
        let now = self.now;
        while let Some(f) = self.c2a.pop_due(now) {
            self.agent.handle_frame(now, &f);
        }
        while let Some(f) = self.a2c.pop_due(now) {
            if self.connected {
                self.ch.handle_frame(now, &f).unwrap();
            }
        }
        self.ch.handle_timeout(now);
        self.flush();
    }

    fn done(&self) -> bool {
        self.client_offset == self.client_data.len()
            && self.ch.is_idle()
            && self.agent.idle()
            && self.agent.received.len() == self.client_data.len()
            && self.client_received.len() == self.agent_data.len()
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn cut(&mut self) {
        self.ch.transport_lost(self.now);
        self.connected = false;
        self.c2a.cut();
        self.a2c.cut();
    }

    fn restore(&mut self) {
        self.c2a.up = true;
        self.a2c.up = true;
        self.connected = true;
        self.ch.transport_restored(self.now);
        self.flush();
    }

    /// Runs to completion, with an optional transport cut of `outage` once half the client's
    /// data has reached the agent.
    fn run(&mut self, outage: Option<Duration>, limit: Duration) {
        let mut cut_at: Option<Instant> = None;
        let mut restored = false;
        self.flush();
        let mut steps = 0u64;
        while !self.done() {
            steps += 1;
            assert!(
                self.elapsed() < limit && steps < 5_000_000,
                "stuck after {:?} ({steps} steps): {:?}, agent got {} of {} bytes, client got {}",
                self.elapsed(),
                self.ch.stats(),
                self.agent.received.len(),
                self.client_data.len(),
                self.client_received.len()
            );
            if let (Some(_), None) = (outage, cut_at) {
                if self.agent.received.len() >= self.client_data.len() / 2 {
                    self.cut();
                    cut_at = Some(self.now);
                }
            }
            let until = match (outage, cut_at) {
                (Some(d), Some(at)) if !restored => {
                    if self.now >= at + d {
                        self.restore();
                        restored = true;
                        continue;
                    }
                    at + d
                }
                _ => self.now + Duration::from_secs(3600),
            };
            self.step(until);
        }
        assert!(outage.is_none() || restored, "the outage happened");
    }
}

const MIB2: usize = 2 * 1024 * 1024;

fn check_transfer(seed: u64, netem: Netem, outage: Option<Duration>, len: usize) {
    let mut sim = Sim::new(seed, netem, Config::default(), len, len);
    sim.run(outage, Duration::from_secs(3600));
    // Both byte streams, exactly and in order.
    assert!(
        sim.agent.received == sim.client_data,
        "seed {seed}: upload corrupted"
    );
    assert_eq!(sim.client_received.len(), len, "seed {seed}");
    assert!(
        sim.client_received == sim.agent_data,
        "seed {seed}: download corrupted"
    );
    assert!(sim.ch.is_idle());
    let failures: Vec<_> = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::Failed(_)))
        .collect();
    assert!(failures.is_empty(), "seed {seed}: {failures:?}");
    let s = sim.ch.stats();
    let messages = len.div_ceil(CHUNK) as u64;
    assert_eq!(s.sent, messages);
    assert_eq!(s.acked, messages);
    assert_eq!(s.delivered, messages);
    if netem.loss > 0.0 {
        assert!(s.resent > 0, "seed {seed}: loss without resends? {s:?}");
        assert!(s.duplicates > 0 || netem.dup == 0.0, "{s:?}");
    }
}

fn lossy(loss: f64) -> Netem {
    Netem {
        loss,
        dup: 0.05,
        base_delay: Duration::from_millis(15),
        jitter: Duration::from_millis(40),
    }
}

#[test]
fn two_mib_each_way_through_a_perfect_link() {
    check_transfer(1, Netem::perfect(), None, MIB2);
}

#[test]
fn two_mib_each_way_through_loss_duplication_and_reordering() {
    // 2 MiB once per loss rate, then more seeds with smaller (odd-sized) transfers.
    for (i, loss) in [0.05, 0.10, 0.15, 0.20].into_iter().enumerate() {
        for seed in 0..4u64 {
            let len = if seed == 0 {
                MIB2
            } else {
                300_000 + 777 * seed as usize
            };
            check_transfer(1000 * i as u64 + seed, lossy(loss), None, len);
        }
    }
}

#[test]
fn two_mib_each_way_with_a_transport_cut_midway() {
    check_transfer(7000, lossy(0.05), Some(Duration::from_secs(7)), MIB2);
    for seed in 1..4u64 {
        check_transfer(
            7000 + seed,
            lossy(0.1),
            Some(Duration::from_secs(7)),
            500_000,
        );
    }
    // Longer than give_up_after: the outage must not count against the agent.
    check_transfer(7100, Netem::perfect(), Some(Duration::from_secs(200)), MIB2);
}

#[test]
fn a_dead_link_fails_with_timed_out_within_give_up_after() {
    let give_up = Duration::from_secs(120);
    let dead = Netem {
        loss: 1.0,
        ..Netem::perfect()
    };
    for seed in 0..3u64 {
        let mut sim = Sim::new(seed, dead, Config::default(), 5000, 0);
        sim.flush();
        let limit = sim.t0 + give_up * 3;
        while sim.events.is_empty() && sim.now < limit {
            sim.step(limit);
        }
        let failed_at = sim.elapsed();
        match &sim.events[..] {
            [Event::Failed(Error::TimedOut {
                unacked_for,
                sequence,
            })] => {
                assert_eq!(*sequence, 0);
                assert!(*unacked_for >= give_up);
            }
            other => panic!("expected one TimedOut, got {other:?}"),
        }
        assert!(failed_at >= give_up, "{failed_at:?}");
        assert!(
            failed_at <= give_up + Duration::from_secs(1),
            "{failed_at:?}"
        );
        // Resends were backed off to at most one per second per message.
        let s = sim.ch.stats();
        assert!(s.resent <= 5 * 125, "{s:?}");
        assert_eq!(sim.ch.poll_timeout(), None);
        // Nothing more happens.
        sim.step(sim.now + Duration::from_secs(600));
        assert_eq!(sim.events.len(), 1);
    }
}

#[test]
fn a_dead_link_during_an_outage_does_not_count() {
    let dead = Netem {
        loss: 1.0,
        ..Netem::perfect()
    };
    let mut sim = Sim::new(5, dead, Config::default(), 100, 0);
    sim.flush();
    sim.step(sim.t0 + Duration::from_secs(100));
    while sim.now < sim.t0 + Duration::from_secs(100) {
        sim.step(sim.t0 + Duration::from_secs(100));
    }
    sim.cut();
    sim.now += Duration::from_secs(1000);
    sim.restore();
    let limit = sim.now + Duration::from_secs(1000);
    while sim.events.is_empty() && sim.now < limit {
        sim.step(limit);
    }
    assert!(matches!(
        sim.events[..],
        [Event::Failed(Error::TimedOut { .. })]
    ));
    assert_eq!(sim.elapsed(), Duration::from_secs(1120));
}

// ---------------------------------------------------------------------------------------------
// Random interleavings: the operations themselves (sends, deliveries, drops, duplicates, time
// steps, transport cuts) come from proptest, then the link heals and everything must arrive.

#[derive(Debug, Clone)]
enum Op {
    ClientSend(usize),
    AgentSend(usize),
    /// Deliver the i-th frame in flight to the agent (keeping a copy if `dup`).
    ToAgent(usize, bool),
    ToClient(usize, bool),
    DropToAgent(usize),
    DropToClient(usize),
    Advance(u64),
    Cut,
    Restore,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..3000).prop_map(Op::ClientSend),
        (1usize..3000).prop_map(Op::AgentSend),
        (any::<usize>(), any::<bool>()).prop_map(|(i, d)| Op::ToAgent(i, d)),
        (any::<usize>(), any::<bool>()).prop_map(|(i, d)| Op::ToClient(i, d)),
        any::<usize>().prop_map(Op::DropToAgent),
        any::<usize>().prop_map(Op::DropToClient),
        (0u64..1500).prop_map(Op::Advance),
        Just(Op::Cut),
        Just(Op::Restore),
    ]
}

struct Manual {
    now: Instant,
    ch: Channel,
    agent: FakeAgent,
    to_agent: Vec<Vec<u8>>,
    to_client: Vec<Vec<u8>>,
    connected: bool,
    client_sent: Vec<u8>,
    agent_sent: Vec<u8>,
    client_got: Vec<u8>,
    pending_client: VecDeque<Bytes>,
    next_seq: i64,
}

impl Manual {
    fn pump(&mut self) {
        let now = self.now;
        while self.ch.send_capacity() > 0 {
            let Some(p) = self.pending_client.pop_front() else {
                break;
            };
            self.ch
                .send(now, PayloadType::OUTPUT, p, Priority::Data)
                .unwrap();
        }
        while let Some(f) = self.ch.poll_transmit(now) {
            assert!(self.connected);
            self.to_agent.push(f);
        }
        while let Some(e) = self.ch.poll_event() {
            match e {
                Event::Message {
                    payload, sequence, ..
                } => {
                    assert_eq!(sequence, self.next_seq);
                    self.next_seq += 1;
                    self.client_got.extend_from_slice(&payload);
                    assert!(self.agent_sent.starts_with(&self.client_got));
                }
                Event::Failed(e) => panic!("failed: {e}"),
                _ => {}
            }
        }
        self.agent.poll(now);
        let connected = self.connected;
        self.to_client
            .extend(self.agent.out.drain(..).filter(|_| connected));
        assert!(self.client_sent.starts_with(&self.agent.received));
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::ClientSend(n) => {
                let data = test_data(n, self.client_sent.len() as u64);
                self.client_sent.extend_from_slice(&data);
                self.pending_client
                    .extend(data.chunks(CHUNK).map(Bytes::copy_from_slice));
            }
            Op::AgentSend(n) => {
                let data = test_data(n, !(self.agent_sent.len() as u64));
                self.agent_sent.extend_from_slice(&data);
                self.agent
                    .to_send
                    .extend(data.chunks(CHUNK).map(Bytes::copy_from_slice));
            }
            Op::ToAgent(i, dup) if !self.to_agent.is_empty() => {
                let i = i % self.to_agent.len();
                let f = if dup {
                    self.to_agent[i].clone()
                } else {
                    self.to_agent.remove(i)
                };
                self.agent.handle_frame(self.now, &f);
            }
            Op::ToClient(i, dup) if !self.to_client.is_empty() && self.connected => {
                let i = i % self.to_client.len();
                let f = if dup {
                    self.to_client[i].clone()
                } else {
                    self.to_client.remove(i)
                };
                self.ch.handle_frame(self.now, &f).unwrap();
            }
            Op::DropToAgent(i) if !self.to_agent.is_empty() => {
                let i = i % self.to_agent.len();
                self.to_agent.remove(i);
            }
            Op::DropToClient(i) if !self.to_client.is_empty() => {
                let i = i % self.to_client.len();
                self.to_client.remove(i);
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                self.ch.handle_timeout(self.now);
            }
            Op::Cut if self.connected => {
                self.ch.transport_lost(self.now);
                self.connected = false;
                self.to_client.clear();
                self.to_agent.clear();
            }
            Op::Restore if !self.connected => {
                self.connected = true;
                self.ch.transport_restored(self.now);
            }
            _ => {}
        }
        self.pump();
    }

    /// Heals everything and delivers in order until both sides are done.
    fn settle(&mut self) {
        self.apply(Op::Restore);
        for _ in 0..100_000 {
            if self.ch.is_idle()
                && self.pending_client.is_empty()
                && self.agent.idle()
                && self.agent.received.len() == self.client_sent.len()
                && self.client_got.len() == self.agent_sent.len()
            {
                return;
            }
            if !self.to_agent.is_empty() {
                self.apply(Op::ToAgent(0, false));
            } else if !self.to_client.is_empty() {
                self.apply(Op::ToClient(0, false));
            } else {
                let next = [self.ch.poll_timeout(), self.agent.next_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("unfinished work has a timer");
                let ms = next.saturating_duration_since(self.now).as_millis() as u64;
                self.apply(Op::Advance(ms.max(1)));
            }
        }
        panic!("did not settle: {:?}", self.ch.stats());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_never_lose_or_duplicate_data(
        ops in proptest::collection::vec(op(), 1..150),
        seed in any::<u64>(),
        window in 1usize..64,
        capacity in 1usize..16,
    ) {
        let t0 = Instant::now(); // the one real clock reading
        let mut m = Manual {
            now: t0,
            ch: Channel::new(
                Config {
                    outgoing_window: window,
                    incoming_capacity: capacity,
                    seed,
                    give_up_after: Duration::from_secs(1_000_000),
                    ..Config::default()
                },
                t0,
            ),
            agent: FakeAgent::new(t0, &[], seed),
            to_agent: vec![],
            to_client: vec![],
            connected: true,
            client_sent: vec![],
            agent_sent: vec![],
            client_got: vec![],
            pending_client: VecDeque::new(),
            next_seq: 0,
        };
        m.agent.window = 8;
        for op in ops {
            m.apply(op);
        }
        m.settle();
        prop_assert!(m.agent.received == m.client_sent);
        prop_assert!(m.client_got == m.agent_sent);
    }
}
