//! Retransmission timeout: the RFC 6298 estimator with the constants both reference peers use,
//! so that our resend timing looks to the agent like the Go plugin's (minus its bugs).

use std::time::Duration;

/// Smoothed RTT before the first sample.
pub const INITIAL_RTT: Duration = Duration::from_millis(100);
/// RTO before the first sample (not derived from [`INITIAL_RTT`]: the reference hard-codes it).
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
/// Clock granularity term `G` of RFC 6298: the smallest variance allowance.
pub const CLOCK_GRANULARITY: Duration = Duration::from_millis(10);
/// Upper bound on the RTO, and on the backed-off resend interval of one message.
pub const MAX_RTO: Duration = Duration::from_secs(1);

/// Round-trip estimator. Feed it only samples from messages transmitted once (Karn's rule):
/// an ack of a resent message cannot say which transmission it answers.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Duration,
    rttvar: Duration,
    rto: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self {
            srtt: INITIAL_RTT,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
        }
    }
}

impl RttEstimator {
    /// Folds in one round-trip sample `r`:
    /// `RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - r|`, then `SRTT = 7/8 SRTT + 1/8 r`,
    /// then `RTO = SRTT + max(G, 4 RTTVAR)`, capped at [`MAX_RTO`].
    pub fn on_sample(&mut self, r: Duration) {
        let diff = self.srtt.abs_diff(r);
        self.rttvar = self.rttvar * 3 / 4 + diff / 4;
        self.srtt = self.srtt * 7 / 8 + r / 8;
        let var = (self.rttvar * 4).max(CLOCK_GRANULARITY);
        self.rto = (self.srtt + var).min(MAX_RTO);
    }

    /// Current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Smoothed round-trip time.
    pub fn srtt(&self) -> Duration {
        self.srtt
    }

    /// Round-trip variance estimate.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// Resend interval for a message already resent `backoff` times on timeout: the RTO doubled
    /// per timeout, never above [`MAX_RTO`], so a dead peer sees at most one copy per second.
    pub fn backed_off(&self, backoff: u32) -> Duration {
        let factor = 1u32.checked_shl(backoff.min(16)).unwrap_or(u32::MAX);
        self.rto.saturating_mul(factor).min(MAX_RTO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_at_reference_values() {
        let e = RttEstimator::default();
        assert_eq!(e.srtt(), ms(100));
        assert_eq!(e.rttvar(), ms(0));
        assert_eq!(e.rto(), ms(200));
    }

    #[test]
    fn samples_match_hand_computed_values() {
        let mut e = RttEstimator::default();
        // r = 20 ms: RTTVAR = 0 + 80/4 = 20; SRTT = 87.5 + 2.5 = 90; RTO = 90 + 80 = 170.
        e.on_sample(ms(20));
        assert_eq!(e.rttvar(), ms(20));
        assert_eq!(e.srtt(), ms(90));
        assert_eq!(e.rto(), ms(170));
        // r = 90 ms: RTTVAR = 15 + 0 = 15; SRTT = 78.75 + 11.25 = 90; RTO = 90 + 60 = 150.
        e.on_sample(ms(90));
        assert_eq!(e.rttvar(), ms(15));
        assert_eq!(e.srtt(), ms(90));
        assert_eq!(e.rto(), ms(150));
    }

    #[test]
    fn granularity_floor_applies_when_variance_is_tiny() {
        let mut e = RttEstimator::default();
        for _ in 0..200 {
            e.on_sample(ms(100));
        }
        // Variance decays to ~0, so RTO = SRTT + G.
        assert_eq!(e.srtt(), ms(100));
        assert_eq!(e.rto(), ms(110));
    }

    #[test]
    fn capped_at_one_second() {
        let mut e = RttEstimator::default();
        // r = 5 s: RTTVAR = 4.9/4 = 1.225 s; RTO would be far above 1 s.
        e.on_sample(Duration::from_secs(5));
        assert_eq!(e.rto(), MAX_RTO);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let e = RttEstimator::default();
        assert_eq!(e.backed_off(0), ms(200));
        assert_eq!(e.backed_off(1), ms(400));
        assert_eq!(e.backed_off(2), ms(800));
        assert_eq!(e.backed_off(3), MAX_RTO);
        assert_eq!(e.backed_off(u32::MAX), MAX_RTO);
    }
}
