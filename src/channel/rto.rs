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
///
/// Karn's rule alone has a blind spot: when the peer slows down (a queue builds up), the
/// messages that take longer than the RTO are resent and give no sample, so the estimate is
/// drawn only from the fast ones and never grows; every message is then resent once for
/// nothing. Hence the timer back-off of RFC 6298 (5.5): each timeout doubles the RTO until a
/// message sent once is acked and gives a fresh sample.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Duration,
    rttvar: Duration,
    rto: Duration,
    /// Timer back-offs since the last sample: the RTO in force is `rto * 2^timeouts`.
    timeouts: u32,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self {
            srtt: INITIAL_RTT,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
            timeouts: 0,
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
        self.timeouts = 0;
    }

    /// A message timed out: the RTO in force doubles (up to [`MAX_RTO`]) until the next sample.
    pub fn on_timeout(&mut self) {
        self.timeouts = self.timeouts.saturating_add(1).min(16);
    }

    /// The retransmission timeout in force (backed off after timeouts).
    pub fn rto(&self) -> Duration {
        self.backed_off(0)
    }

    /// Smoothed round-trip time.
    pub fn srtt(&self) -> Duration {
        self.srtt
    }

    /// Round-trip variance estimate.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// Resend interval for a message already resent `backoff` times on timeout: the estimated
    /// RTO doubled per timeout, of the message or of the timer, whichever is more, never above
    /// [`MAX_RTO`], so a dead peer sees at most one copy per second.
    pub fn backed_off(&self, backoff: u32) -> Duration {
        let doublings = backoff.max(self.timeouts).min(16);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
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

    #[test]
    fn timeouts_back_off_the_timer_until_the_next_sample() {
        let mut e = RttEstimator::default();
        e.on_sample(ms(20)); // RTO 170
        e.on_timeout();
        assert_eq!(e.rto(), ms(340));
        assert_eq!(
            e.backed_off(0),
            ms(340),
            "new messages wait the backed-off RTO"
        );
        assert_eq!(
            e.backed_off(2),
            ms(680),
            "a message's own back-off wins when larger"
        );
        e.on_timeout();
        assert_eq!(e.rto(), ms(680));
        e.on_timeout();
        assert_eq!(e.rto(), MAX_RTO);
        // A sample (90 ms, as in samples_match_hand_computed_values) ends the back-off.
        e.on_sample(ms(90));
        assert_eq!(e.rto(), ms(150));
    }
}
