//! Outgoing side: messages waiting to be released (by priority) and released messages waiting
//! for their ack, with one resend deadline each.
//!
//! Released messages have consecutive sequence numbers, so the unacked buffer is a deque indexed
//! by `seq - base_seq`; an acked slot becomes `None` until everything before it is acked too.
//! Deadlines live in an ordered set so finding the next due resend is O(log n), whatever the
//! window size.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Priority;
use crate::wire::PayloadType;

/// A message accepted by `send` but not yet on the wire (no sequence number yet).
#[derive(Debug)]
pub(crate) struct Queued {
    pub payload_type: PayloadType,
    pub payload: Bytes,
}

/// A message on the wire and not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Unacked {
    /// The exact bytes sent, reused byte for byte by every resend.
    pub frame: Vec<u8>,
    /// Time of the latest transmission.
    pub last_sent: Instant,
    /// Value of the give-up clock at the first transmission.
    pub first_active: Duration,
    /// Transmissions so far (1 = never resent; only those give RTT samples).
    pub transmissions: u32,
    /// Timeouts since the last transport restore: the exponent of the resend backoff.
    pub backoff: u32,
    /// When this message is next resent (its key in `resend_at`).
    pub deadline: Instant,
}

/// Outcome of an ack that matched an unacked message.
#[derive(Debug)]
pub(crate) struct Acked {
    /// Round-trip sample, when the message was sent exactly once (Karn's rule).
    pub rtt_sample: Option<Duration>,
}

#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    control: VecDeque<Queued>,
    data: VecDeque<Queued>,
    unacked: VecDeque<Option<Unacked>>,
    /// Sequence number of `unacked[0]` (or the next one to assign when empty).
    base_seq: i64,
    unacked_count: usize,
    resend_at: BTreeSet<(Instant, i64)>,
    /// The latest first transmission acked, as (time sent, sequence number): an unacked
    /// message transmitted before it is presumed lost (the agent acks each message as it
    /// comes), one transmitted after it may just be slow. By time, not only by sequence, in
    /// the spirit of RACK (RFC 8985).
    rack_first: Option<(Instant, i64)>,
    /// The latest resend acked. Its ack is ambiguous (Karn): if it answers the resend, every
    /// message transmitted before the resend and still unacked is lost (an agent that refused
    /// messages until it was ready acks only what comes after); if it answers an earlier
    /// transmission, the agent was only slow. The ack of a first transmission sent before the
    /// resend settles it the second way (the timeout was spurious, as F-RTO, RFC 5682, infers
    /// it), and this is cleared.
    rack_resent: Option<(Instant, i64)>,
}

impl Outgoing {
    pub fn queue(&mut self, priority: Priority, q: Queued) {
        match priority {
            Priority::Control => self.control.push_back(q),
            Priority::Data => self.data.push_back(q),
        }
    }

    pub fn queued_len(&self) -> usize {
        self.control.len() + self.data.len()
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked_count
    }

    /// Next message to release: control before data.
    pub fn pop_queued(&mut self) -> Option<Queued> {
        self.control.pop_front().or_else(|| self.data.pop_front())
    }

    /// Sequence number the next released message gets.
    pub fn next_seq(&self) -> i64 {
        // The deque never holds more than the window (<= 10000) entries.
        self.base_seq + self.unacked.len() as i64
    }

    /// Records a message just released with sequence `next_seq()`.
    pub fn push_unacked(&mut self, frame: Vec<u8>, now: Instant, active: Duration, rto: Duration) {
        let seq = self.next_seq();
        let deadline = now + rto;
        self.resend_at.insert((deadline, seq));
        self.unacked.push_back(Some(Unacked {
            frame,
            last_sent: now,
            first_active: active,
            transmissions: 1,
            backoff: 0,
            deadline,
        }));
        self.unacked_count += 1;
    }

    /// Removes the message with sequence `seq`, if it is unacked.
    pub fn ack(&mut self, seq: i64, now: Instant) -> Option<Acked> {
        let idx = usize::try_from(seq.checked_sub(self.base_seq)?).ok()?;
        let entry = self.unacked.get_mut(idx)?.take()?;
        self.unacked_count -= 1;
        let key = (entry.last_sent, seq);
        if entry.transmissions == 1 {
            if self.rack_resent.is_some_and(|r| key < r) {
                self.rack_resent = None;
            }
            self.rack_first = self.rack_first.max(Some(key));
        } else {
            self.rack_resent = self.rack_resent.max(Some(key));
        }
        self.resend_at.remove(&(entry.deadline, seq));
        while matches!(self.unacked.front(), Some(None)) {
            self.unacked.pop_front();
            self.base_seq += 1;
        }
        Some(Acked {
            rtt_sample: (entry.transmissions == 1)
                .then(|| now.saturating_duration_since(entry.last_sent)),
        })
    }

    /// The earliest resend deadline and its sequence number.
    pub fn next_resend(&self) -> Option<(Instant, i64)> {
        self.resend_at.first().copied()
    }

    fn entry(&self, seq: i64) -> Option<&Unacked> {
        let idx = usize::try_from(seq.checked_sub(self.base_seq)?).ok()?;
        self.unacked.get(idx)?.as_ref()
    }

    fn entry_mut(&mut self, seq: i64) -> Option<&mut Unacked> {
        let idx = usize::try_from(seq.checked_sub(self.base_seq)?).ok()?;
        self.unacked.get_mut(idx)?.as_mut()
    }

    /// Marks `seq` resent at `now` after a timeout and returns its bytes. The next deadline is
    /// the RTO backed off by the number of timeouts (see `RttEstimator::backed_off`).
    pub fn resend(
        &mut self,
        seq: i64,
        now: Instant,
        interval: impl Fn(u32) -> Duration,
    ) -> Option<Vec<u8>> {
        let entry = self.entry_mut(seq)?;
        let old = entry.deadline;
        entry.transmissions = entry.transmissions.saturating_add(1);
        entry.backoff = entry.backoff.saturating_add(1);
        entry.last_sent = now;
        entry.deadline = now + interval(entry.backoff);
        let (deadline, frame) = (entry.deadline, entry.frame.clone());
        self.resend_at.remove(&(old, seq));
        self.resend_at.insert((deadline, seq));
        Some(frame)
    }

    /// Whether `seq` is unacked, was last transmitted at or after `since`, and no later
    /// transmission has been acked: it may be slow rather than lost.
    pub fn may_be_slow(&self, seq: i64, since: Instant) -> bool {
        self.entry(seq).is_some_and(|e| {
            e.last_sent >= since && !passed([self.rack_first, self.rack_resent], (e.last_sent, seq))
        })
    }

    /// Makes every message not overtaken by an ack, except `seq`, wait at least its (backed
    /// off) timeout from `now`. Called when such a message times out: a peer that is slow
    /// rather than lossy then gets one resend per timeout, the oldest, as TCP's single timer
    /// gives, instead of a copy of the whole flight; the messages that come back acked
    /// meanwhile give the samples the estimate lacked. Once a resend is acked, the messages
    /// held behind it count as overtaken and go at their held deadline.
    pub fn hold_unknown(&mut self, seq: i64, now: Instant, interval: impl Fn(u32) -> Duration) {
        let racks = [self.rack_first, self.rack_resent];
        for (s, e) in (self.base_seq..).zip(self.unacked.iter_mut()) {
            let Some(e) = e else { continue };
            let later = now + interval(e.backoff);
            if s != seq && !passed(racks, (e.last_sent, s)) && later > e.deadline {
                self.resend_at.remove(&(e.deadline, s));
                e.deadline = later;
                self.resend_at.insert((later, s));
            }
        }
    }

    /// Makes every unacked message due at `now` (in sequence order) and resets its backoff:
    /// used on a new websocket, where nothing sent on the old one can be assumed delivered.
    pub fn rearm_all(&mut self, now: Instant) {
        self.resend_at.clear();
        for (seq, e) in (self.base_seq..).zip(self.unacked.iter_mut()) {
            if let Some(e) = e {
                e.deadline = now;
                e.backoff = 0;
                self.resend_at.insert((now, seq));
            }
        }
    }

    /// The oldest unacked message and its sequence number.
    pub fn oldest(&self) -> Option<(i64, &Unacked)> {
        // The front slot is always Some when the deque is not empty (see `ack`).
        match self.unacked.front() {
            Some(Some(e)) => Some((self.base_seq, e)),
            _ => None,
        }
    }
}

/// Whether an acked transmission (`racks`: the latest first transmission and the latest resend
/// acked) came after the one with this key (time sent, sequence number).
fn passed(racks: [Option<(Instant, i64)>; 2], key: (Instant, i64)) -> bool {
    racks.into_iter().flatten().any(|r| key < r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(b: &'static [u8]) -> Queued {
        Queued {
            payload_type: PayloadType::OUTPUT,
            payload: Bytes::from_static(b),
        }
    }

    #[test]
    fn acks_in_any_order_free_the_front() {
        let t0 = Instant::now(); // the one real clock reading
        let rto = Duration::from_millis(200);
        let mut o = Outgoing::default();
        for i in 0..4u8 {
            o.queue(Priority::Data, q(b"x"));
            let _ = o.pop_queued();
            o.push_unacked(vec![i], t0, Duration::ZERO, rto);
        }
        assert_eq!(o.next_seq(), 4);
        assert!(o.ack(2, t0).is_some());
        assert!(
            o.ack(2, t0).is_none(),
            "second ack of the same seq is ignored"
        );
        assert_eq!(o.oldest().unwrap().0, 0);
        assert!(o.ack(0, t0).is_some());
        assert_eq!(o.oldest().unwrap().0, 1);
        assert!(o.ack(1, t0).is_some());
        assert_eq!(o.oldest().unwrap().0, 3);
        assert!(o.ack(-1, t0).is_none());
        assert!(o.ack(i64::MAX, t0).is_none());
        assert!(o.ack(i64::MIN, t0).is_none());
        assert!(o.ack(3, t0).is_some());
        assert!(o.oldest().is_none());
        assert_eq!(o.unacked_len(), 0);
        assert_eq!(o.next_seq(), 4);
        assert!(o.next_resend().is_none());
    }
}
