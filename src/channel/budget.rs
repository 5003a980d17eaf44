//! Token bucket pacing our `input_stream_data` frames. The service is reported to pause and then
//! close sessions that send more than about 1000 data frames per second, so every transmission
//! (first sends and resends alike) spends one token. Integer arithmetic keeps it exact and
//! deterministic: one token is `UNIT` credits and the bucket gains `per_second` credits per
//! nanosecond.

use std::time::{Duration, Instant};

const UNIT: u128 = 1_000_000_000;

/// Token bucket with explicit time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: u128,
    capacity: u128,
    credits: u128,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_second` tokens per second. Zero values are
    /// raised to 1 so the bucket can always make progress.
    pub fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        let capacity = u128::from(burst.max(1)) * UNIT;
        Self {
            per_second: u128::from(per_second.max(1)),
            capacity,
            credits: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.updated {
            return;
        }
        let elapsed = now.duration_since(self.updated).as_nanos();
        self.credits = self
            .credits
            .saturating_add(elapsed.saturating_mul(self.per_second))
            .min(self.capacity);
        self.updated = now;
    }

    /// Spends one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.credits >= UNIT {
            self.credits -= UNIT;
            true
        } else {
            false
        }
    }

    /// The earliest instant at which a token is available (possibly in the past).
    pub fn ready_at(&self) -> Instant {
        if self.credits >= UNIT {
            return self.updated;
        }
        let missing = UNIT - self.credits;
        // Round up so that try_take at the returned instant succeeds.
        let nanos = missing.div_ceil(self.per_second);
        // `missing` < UNIT and per_second >= 1, so nanos < 1e9 and fits in u64.
        self.updated + Duration::from_nanos(nanos as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now(); // the one real clock reading; everything else is simulated
        let mut b = TokenBucket::new(950, 100, t0);
        for _ in 0..100 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0));
        let ready = b.ready_at();
        // 1/950 s, rounded up to the nanosecond.
        assert_eq!(ready - t0, Duration::from_nanos(1_052_632));
        assert!(!b.try_take(ready - Duration::from_nanos(1)));
        assert!(b.try_take(ready));
        assert!(!b.try_take(ready));
    }

    #[test]
    fn never_more_than_rate_times_time_plus_burst() {
        let t0 = Instant::now(); // the one real clock reading
        let mut b = TokenBucket::new(950, 100, t0);
        let mut n = 0u64;
        let mut now = t0;
        while now - t0 <= Duration::from_secs(10) {
            while b.try_take(now) {
                n += 1;
            }
            now += Duration::from_micros(137);
        }
        assert!(n <= 950 * 10 + 100, "{n}");
        assert!(n >= 950 * 10, "{n}");
    }
}
