//! The reliable data channel: sequencing, acknowledgement, retransmission, reordering, pacing
//! and payload encryption of Session Manager stream messages, as a sans-IO state machine.
//!
//! Nothing here does I/O or reads a clock: every input carries `now`, and the caller moves bytes
//! between [`Channel`] and the websocket. That makes the whole reliability layer testable with
//! simulated time and a simulated lossy link (see `tests/channel_netem.rs`).
//!
//! Where we differ from the Go plugin on purpose (none of it is visible to the agent as a
//! protocol change):
//! - duplicates are re-acked every time, so a lost ack does not make the agent resend forever;
//! - unacked data is never evicted: the send window bounds it instead;
//! - every overdue message is resent (not just the oldest), with its own backoff and with its
//!   last-sent time updated;
//! - transmissions are paced by a token bucket, and `pause_publication` is honoured;
//! - a peer that stops acking makes the channel fail after [`Config::give_up_after`] instead of
//!   hanging.

pub mod crypto;

mod budget;
mod recv;
mod rto;
mod send;
mod types;

pub use rto::{CLOCK_GRANULARITY, INITIAL_RTO, INITIAL_RTT, MAX_RTO};
pub use types::{
    Config, Error, Event, FrameBudget, Priority, SendError, Stats, DEFAULT_FRAME_RATE,
};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::wire::{self, AcknowledgeContent, ClientMessage, MessageType, PayloadType};
use budget::TokenBucket;
use recv::{Incoming, Item, Verdict};
use rto::RttEstimator;
use send::{Outgoing, Queued};

/// How long acks are sent twice after a duplicate showed that one of ours was lost. The agent
/// resends only its oldest unacked message, once per 100 ms tick: with a few percent of acks
/// lost, its backlog of messages waiting only for an ack grows faster than it can clear it, and
/// a message we really miss waits behind all of them. Two copies make a lost ack rare; on a
/// healthy link (no duplicates) acks are sent once.
pub const ACK_COPIES_AFTER_LOSS: Duration = Duration::from_secs(2);

/// How many of the latest acks are repeated on a new websocket: about two seconds of a fast
/// download, more than a dying connection holds in flight.
pub const RECENT_ACKS: usize = 4096;

/// Largest useful send window: the agent's reorder buffer holds 10000 messages, and a window
/// beyond it would let us send messages the agent must drop.
pub const MAX_OUTGOING_WINDOW: usize = 10_000 - CONTROL_RESERVE;

/// Messages beyond the window that only [`Priority::Control`] may use, so a window full of bulk
/// data never holds back a resize, a flag or a TerminateSession (the window plus this reserve
/// still fits the agent's 10000-message reorder buffer).
pub const CONTROL_RESERVE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// channel_closed received.
    Closed,
    /// Event::Failed emitted (or queued).
    Failed,
}

/// A clock that runs only while the give-up rule applies (connected, not paused), so that time
/// spent reconnecting or paused by the service does not count against the agent.
#[derive(Debug, Clone, Copy)]
struct ActiveClock {
    accumulated: Duration,
    running_since: Option<Instant>,
}

impl ActiveClock {
    fn value(&self, now: Instant) -> Duration {
        self.accumulated
            + self
                .running_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    fn set_running(&mut self, now: Instant, running: bool) {
        match (self.running_since, running) {
            (None, true) => self.running_since = Some(now),
            (Some(_), false) => {
                self.accumulated = self.value(now);
                self.running_since = None;
            }
            _ => {}
        }
    }
}

/// The data channel of one session.
///
/// # Driving it
///
/// Inputs are the `handle_*` methods, [`send`](Self::send), [`set_encryption`](Self::set_encryption)
/// and the `transport_*` notifications; outputs are pulled with the `poll_*` methods. After any
/// input call:
/// 1. write every frame from [`poll_transmit`](Self::poll_transmit) to the websocket (binary)
///    until it returns `None`;
/// 2. handle every event from [`poll_event`](Self::poll_event) until it returns `None`;
/// 3. arm a timer for [`poll_timeout`](Self::poll_timeout) and call
///    [`handle_timeout`](Self::handle_timeout) when it fires (`None` = no timer).
///
/// Reading events is the incoming flow control: undelivered messages count against
/// [`Config::incoming_capacity`]. Writing is bounded by [`send_capacity`](Self::send_capacity).
/// Calls with a `now` earlier than one already seen are treated as that later time.
pub struct Channel {
    config: Config,
    start: Instant,
    now: Instant,
    rng: StdRng,
    state: State,
    connected: bool,
    paused: bool,
    keys: Option<crypto::SessionKeys>,
    out: Outgoing,
    inc: Incoming,
    acks: VecDeque<Vec<u8>>,
    /// Until when each ack is sent twice (see [`ACK_COPIES_AFTER_LOSS`]).
    ack_copies_until: Option<Instant>,
    /// The stream messages acked most recently (id, sequence), acked again on a new websocket.
    recent_acks: VecDeque<(Uuid, i64)>,
    rtt: RttEstimator,
    /// The latest websocket restore: the resends it calls for (of messages sent before it)
    /// do not back off the timer.
    rto_epoch: Instant,
    budget: Option<TokenBucket>,
    clock: ActiveClock,
    stats: Stats,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("state", &self.state)
            .field("connected", &self.connected)
            .field("paused", &self.paused)
            .field("encrypted", &self.keys.is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Payload types the agent encrypts (and we decrypt) once encryption is on.
fn agent_encrypts(t: PayloadType) -> bool {
    matches!(
        t,
        PayloadType::OUTPUT | PayloadType::STDERR | PayloadType::EXIT_CODE
    )
}

impl Channel {
    /// A channel with no message sent or received yet, connected (the first websocket is open).
    pub fn new(mut config: Config, now: Instant) -> Self {
        config.outgoing_window = config.outgoing_window.clamp(1, MAX_OUTGOING_WINDOW);
        config.incoming_capacity = config.incoming_capacity.max(1);
        let budget = config
            .frame_budget
            .map(|b| TokenBucket::new(b.per_second, b.burst, now));
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            inc: Incoming::new(config.incoming_capacity),
            config,
            start: now,
            now,
            state: State::Open,
            connected: true,
            paused: false,
            keys: None,
            out: Outgoing::default(),
            acks: VecDeque::new(),
            ack_copies_until: None,
            recent_acks: VecDeque::new(),
            rtt: RttEstimator::default(),
            rto_epoch: now,
            budget,
            clock: ActiveClock {
                accumulated: Duration::ZERO,
                running_since: Some(now),
            },
            stats: Stats::default(),
        }
    }

    /// Handles one incoming websocket message (binary or text). An undecodable frame is returned
    /// as `Err` for the caller to log and drop; it changes nothing.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), wire::DecodeError> {
        let msg = ClientMessage::decode(frame)?;
        self.advance(now);
        if self.state != State::Open {
            tracing::debug!(?msg, "frame after the channel ended, ignored");
            return Ok(());
        }
        match msg.message_type {
            MessageType::OutputStreamData => {
                self.set_paused(false);
                self.on_stream_data(msg);
            }
            MessageType::Acknowledge => {
                self.set_paused(false);
                self.on_ack(&msg);
            }
            MessageType::ChannelClosed => {
                let closed = serde_json::from_slice::<wire::ChannelClosed>(&msg.payload);
                tracing::debug!(ok = closed.is_ok(), "channel_closed from the service");
                self.acks.clear();
                match closed {
                    Ok(c) => {
                        self.state = State::Closed;
                        self.update_clock();
                        self.inc
                            .push_event(Event::ChannelClosed { output: c.output });
                    }
                    // The service ended the session but its reason cannot be read: not a
                    // clean end to report as one.
                    Err(_) => {
                        self.state = State::Failed;
                        self.update_clock();
                        self.inc.push_event(Event::Failed(Error::BadClose));
                    }
                }
            }
            MessageType::PausePublication => self.set_paused(true),
            MessageType::StartPublication => self.set_paused(false),
            MessageType::InputStreamData => {
                tracing::debug!(
                    ?msg,
                    "input_stream_data from the peer (wrong direction), ignored"
                );
            }
            MessageType::AgentSessionState | MessageType::Other(_) => {
                tracing::debug!(?msg, "message type not for the client, ignored");
            }
        }
        Ok(())
    }

    /// Advances time: checks the give-up rule. Resends happen in `poll_transmit`. Calling it
    /// early or often is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// Queues one `input_stream_data` message. `Output` payloads are encrypted once
    /// [`set_encryption`](Self::set_encryption) was called. The payload should be at most 1024
    /// bytes, as the reference peers send.
    pub fn send(
        &mut self,
        now: Instant,
        payload_type: PayloadType,
        payload: Bytes,
        priority: Priority,
    ) -> Result<(), SendError> {
        self.advance(now);
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        let used = self.out.queued_len() + self.out.unacked_len();
        let limit = match priority {
            Priority::Data => self.config.outgoing_window,
            Priority::Control => self.config.outgoing_window + CONTROL_RESERVE,
        };
        if used >= limit
            || (priority == Priority::Data
                && self.out.queued_len() >= self.config.max_unsent.max(1))
        {
            return Err(SendError::Full);
        }
        let payload = match &self.keys {
            Some(keys) if payload_type == PayloadType::OUTPUT => {
                Bytes::from(keys.encrypt(&mut self.rng, &payload))
            }
            _ => payload,
        };
        self.out.queue(
            priority,
            Queued {
                payload_type,
                payload,
            },
        );
        Ok(())
    }

    /// How many more messages [`send`](Self::send) accepts now (0 once closed or failed).
    pub fn send_capacity(&self) -> usize {
        if self.state != State::Open {
            return 0;
        }
        let window = self
            .config
            .outgoing_window
            .saturating_sub(self.out.queued_len() + self.out.unacked_len());
        let unsent = self
            .config
            .max_unsent
            .max(1)
            .saturating_sub(self.out.queued_len());
        window.min(unsent)
    }

    /// Turns payload encryption on with the session keys from the KMS data key.
    pub fn set_encryption(&mut self, keys: crypto::SessionKeys) {
        self.keys = Some(keys);
    }

    /// Answers the agent's encryption challenge (the `Challenge` of an EncChallengeRequest) with
    /// the keys given to [`set_encryption`](Self::set_encryption); returns `None` if there are
    /// none yet.
    pub fn answer_encryption_challenge(
        &mut self,
        challenge_b64: &str,
    ) -> Option<Result<String, crypto::CryptoError>> {
        let keys = self.keys.as_ref()?;
        Some(keys.answer_challenge(&mut self.rng, challenge_b64))
    }

    /// The websocket is gone: nothing is transmitted and the give-up clock stops until
    /// [`transport_restored`](Self::transport_restored). All data and sequence state is kept.
    pub fn transport_lost(&mut self, now: Instant) {
        self.advance(now);
        self.connected = false;
        // Acks not yet written are moot: the agent resends what it did not see acked, and we
        // ack duplicates.
        self.acks.clear();
        self.update_clock();
    }

    /// A new websocket is open: every unacked message is resent, in order, within the frame
    /// budget. A pause from the service applied to the old connection and is lifted.
    pub fn transport_restored(&mut self, now: Instant) {
        self.advance(now);
        self.connected = true;
        // Acks written to the old websocket shortly before it died, and those still queued,
        // may never have reached the agent, which resends only its oldest unacked message once
        // per 100 ms: hundreds of lost acks would hold its stream for tens of seconds. The
        // agent ignores acks for messages it no longer holds, so the recent ones are repeated.
        let recent: Vec<_> = self.recent_acks.iter().copied().collect();
        for (id, seq) in recent {
            let acked = ClientMessage::new(
                MessageType::OutputStreamData,
                seq,
                0,
                PayloadType::NONE,
                Bytes::new(),
                0,
                id,
            );
            let ack =
                ClientMessage::acknowledge_for(&acked, self.created_date(), self.new_message_id());
            self.acks.push_back(ack.encode());
            self.stats.acks_repeated += 1;
        }
        self.out.rearm_all(self.now);
        self.rto_epoch = self.now;
        self.set_paused(false);
        self.update_clock();
    }

    /// False while the queue of messages waiting for [`poll_event`](Self::poll_event) is full.
    /// The caller should then stop reading the transport until events are pulled: the agent's
    /// messages wait in TCP and websocket buffers instead of being refused, which would leave
    /// the agent to resend them one per retransmission timeout (a stalled local reader would
    /// collapse a download to a trickle). The give-up clock stands still meanwhile.
    pub fn wants_input(&self) -> bool {
        !self.inc.is_full()
    }

    /// Nothing queued and nothing unacked: everything sent so far reached the agent.
    pub fn is_idle(&self) -> bool {
        self.out.queued_len() == 0 && self.out.unacked_len() == 0
    }

    /// The next frame to write to the websocket (binary), if any: acks first, then overdue
    /// resends (earliest deadline first), then new messages (control before data).
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.advance(now);
        if self.state != State::Open || !self.connected {
            return None;
        }
        if let Some(ack) = self.acks.pop_front() {
            self.stats.acks_sent += 1;
            return Some(ack);
        }
        if self.paused {
            return None;
        }
        let now = self.now;
        if let Some((deadline, seq)) = self.out.next_resend() {
            if deadline <= now {
                if !self.take_token(now) {
                    return None;
                }
                // A message overtaken by the ack of a later one is lost: resent, the timer
                // untouched. One that nothing later has overtaken may be slow, not lost: it is
                // resent (as TCP resends on a timeout), the timer backs off, and the others
                // of unknown fate wait a full timeout more. Resends a new websocket calls for
                // (sent before `rto_epoch`) are no timeout.
                if self.out.may_be_slow(seq, self.rto_epoch) {
                    self.rtt.on_timeout();
                    let rtt = &self.rtt;
                    self.out.hold_unknown(seq, now, |b| rtt.backed_off(b));
                }
                let rtt = &self.rtt;
                let frame = self.out.resend(seq, now, |b| rtt.backed_off(b));
                if frame.is_some() {
                    self.stats.resent += 1;
                }
                return frame;
            }
        }
        if self.out.queued_len() == 0 || !self.take_token(now) {
            return None;
        }
        let q = self.out.pop_queued()?;
        let msg = ClientMessage::new(
            MessageType::InputStreamData,
            self.out.next_seq(),
            0,
            q.payload_type,
            q.payload,
            self.created_date(),
            self.new_message_id(),
        );
        let frame = msg.encode();
        self.out.push_unacked(
            frame.clone(),
            now,
            self.clock.value(now),
            self.rtt.backed_off(0),
        );
        self.stats.sent += 1;
        Some(frame)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        match self.inc.pop()? {
            Item::Event(e) => Some(e),
            Item::Message(m) => {
                let sequence = m.sequence_number;
                self.update_clock();
                let payload = match &self.keys {
                    Some(keys) if agent_encrypts(m.payload_type) => {
                        match keys.decrypt(&m.payload) {
                            Ok(p) => Bytes::from(p),
                            Err(e) => {
                                tracing::debug!(sequence, error = %e, "decryption failed");
                                // Nothing after an undecryptable message can be trusted or
                                // delivered in order, so this ends the channel.
                                self.inc.clear();
                                self.state = State::Failed;
                                self.update_clock();
                                return Some(Event::Failed(Error::Decrypt { sequence }));
                            }
                        }
                    }
                    _ => m.payload,
                };
                self.stats.delivered += 1;
                Some(Event::Message {
                    payload_type: m.payload_type,
                    payload,
                    sequence,
                })
            }
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next: the earliest resend deadline
    /// (or the token refill, when pacing holds it back), the release of queued messages, and the
    /// give-up deadline. `None` when nothing is pending, when disconnected, or after the end.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Open || !self.connected {
            return None;
        }
        if !self.acks.is_empty() {
            return Some(self.now);
        }
        if self.paused {
            return None;
        }
        let resend = self.out.next_resend().map(|(t, _)| t);
        let release = (self.out.queued_len() > 0).then_some(self.now);
        let want = match (resend, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let transmit = want.map(|w| match &self.budget {
            Some(b) => w.max(b.ready_at()),
            None => w,
        });
        match (transmit, self.give_up_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counters and estimator state.
    pub fn stats(&self) -> Stats {
        Stats {
            queued: self.out.queued_len(),
            unacked: self.out.unacked_len(),
            undelivered: self.inc.queued_messages(),
            reordering: self.inc.ahead_len(),
            srtt: self.rtt.srtt(),
            rttvar: self.rtt.rttvar(),
            rto: self.rtt.rto(),
            ..self.stats.clone()
        }
    }

    /// Sequence number of the next in-order agent message (how far the agent's stream got).
    pub fn expected_sequence(&self) -> i64 {
        self.inc.expected()
    }

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.state != State::Open {
            return;
        }
        if let Some((sequence, e)) = self.out.oldest() {
            let active = self.clock.value(self.now);
            let unacked_for = active.saturating_sub(e.first_active);
            if unacked_for >= self.config.give_up_after {
                tracing::debug!(sequence, ?unacked_for, "giving up on the agent");
                self.state = State::Failed;
                self.acks.clear();
                self.update_clock();
                self.inc.push_event(Event::Failed(Error::TimedOut {
                    unacked_for,
                    sequence,
                }));
            }
        }
    }

    fn give_up_deadline(&self) -> Option<Instant> {
        self.clock.running_since?;
        let (_, e) = self.out.oldest()?;
        let deadline_active = e.first_active + self.config.give_up_after;
        let remaining = deadline_active.saturating_sub(self.clock.value(self.now));
        Some(self.now + remaining)
    }

    fn update_clock(&mut self) {
        // While our delivery queue is full the caller stops reading the transport, so the
        // agent's acks cannot reach us either: that time must not count towards giving up.
        let running =
            self.state == State::Open && self.connected && !self.paused && !self.inc.is_full();
        self.clock.set_running(self.now, running);
    }

    fn set_paused(&mut self, paused: bool) {
        if self.paused == paused {
            return;
        }
        self.paused = paused;
        self.update_clock();
        self.inc.push_event(if paused {
            Event::Paused
        } else {
            Event::Resumed
        });
    }

    fn take_token(&mut self, now: Instant) -> bool {
        self.budget.as_mut().is_none_or(|b| b.try_take(now))
    }

    fn on_stream_data(&mut self, msg: ClientMessage) {
        match self.inc.classify(msg.sequence_number) {
            Verdict::Refuse => {
                self.stats.refused += 1;
                tracing::debug!(seq = msg.sequence_number, "incoming buffer full, not acked");
            }
            Verdict::Duplicate => {
                self.stats.duplicates += 1;
                // The agent resent a message we had acked: our ack was lost (a dropped link,
                // a lossy relay). It resends only its oldest unacked message, once per 100 ms,
                // so every lost ack costs it a tick and enough of them stall its stream for
                // good; for a while each ack goes out twice.
                self.ack_copies_until = Some(self.now + ACK_COPIES_AFTER_LOSS);
                self.queue_ack(&msg);
            }
            Verdict::Accept => {
                self.stats.received += 1;
                self.queue_ack(&msg);
                self.inc.accept(msg);
                self.update_clock();
            }
        }
    }

    fn on_ack(&mut self, msg: &ClientMessage) {
        let content: AcknowledgeContent = match serde_json::from_slice(&msg.payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "unparsable acknowledge, ignored");
                return;
            }
        };
        let seq = content.acknowledged_message_sequence_number;
        match self.out.ack(seq, self.now) {
            Some(acked) => {
                self.stats.acked += 1;
                if let Some(r) = acked.rtt_sample {
                    self.rtt.on_sample(r);
                }
            }
            None => tracing::debug!(seq, "ack for no unacked message, ignored"),
        }
    }

    fn queue_ack(&mut self, msg: &ClientMessage) {
        if self.recent_acks.len() >= RECENT_ACKS {
            self.recent_acks.pop_front();
        }
        self.recent_acks
            .push_back((msg.message_id, msg.sequence_number));
        if !self.connected {
            return;
        }
        let ack = ClientMessage::acknowledge_for(msg, self.created_date(), self.new_message_id());
        self.acks.push_back(ack.encode());
        if self.ack_copies_until.is_some_and(|t| self.now < t) {
            let again =
                ClientMessage::acknowledge_for(msg, self.created_date(), self.new_message_id());
            self.acks.push_back(again.encode());
            self.stats.acks_repeated += 1;
        }
    }

    /// CreatedDate for a message made now. Never 0: peers reject that value.
    fn created_date(&self) -> u64 {
        let elapsed = self.now.saturating_duration_since(self.start).as_millis();
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        self.config.created_epoch_ms.saturating_add(elapsed).max(1)
    }

    fn new_message_id(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }
}

#[cfg(test)]
mod tests;
