//! Whether the websocket still reaches the service, as timers in simulated time.
//!
//! A cut with a FIN or RST is noticed by the socket; a link that goes silent (a laptop that
//! sleeps, a Wi-Fi or VPN switch, a NAT entry that expires, a load balancer dropping the flow)
//! is not: TCP keeps the socket open and writes fill its buffer. So the session keeps the time
//! it last heard anything (a frame, an ack, a pong) and last sent anything:
//! - after [`Liveness::keepalive`] without hearing or without sending, it asks the driver for a
//!   websocket Ping (so client-to-server bytes also flow at that interval, which keeps idle
//!   middleboxes such as NAT gateways and VPC endpoints from cutting the flow);
//! - if nothing at all arrives within [`Liveness::timeout`] of that ping, the link is dead and
//!   is handled exactly like a cut (ResumeSession, same sequence state);
//! - after a wake from sleep (the driver sees CLOCK_BOOTTIME run ahead of CLOCK_MONOTONIC,
//!   which stops while suspended) it pings at once with a short deadline instead of waiting out
//!   timers that slept too.
//!
//! The service answers pings even while the agent says nothing for hours, so a healthy idle
//! session is never declared dead.

use std::time::{Duration, Instant};

/// Default seconds of silence (either way) before a ping (`SESSION_MANAGER_PLUGIN_KEEPALIVE`).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);
/// Default seconds a ping may go unanswered before the link is dead
/// (`SESSION_MANAGER_PLUGIN_LIVENESS_TIMEOUT`): a dead link is found 8-18 s after it fell
/// silent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(8);
/// The answer deadline of the check made right after a wake.
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The liveness settings; `None` in [`super::Config`] turns the whole check off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Silence (either way) before a ping.
    pub keepalive: Duration,
    /// How long a ping may go unanswered.
    pub timeout: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            keepalive: DEFAULT_KEEPALIVE,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What a timer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Alive,
    /// Send a websocket Ping now.
    Ping,
    /// Nothing arrived for this long, a ping included: the link is dead.
    Dead(Duration),
}

/// The timers of one websocket (a new one starts with each connection).
#[derive(Debug, Clone)]
pub struct Liveness {
    cfg: LivenessConfig,
    heard: Instant,
    sent: Instant,
    /// A ping is out: dead if nothing is heard by then.
    answer_by: Option<Instant>,
}

impl Liveness {
    /// A link that opened at `now`.
    pub fn new(cfg: LivenessConfig, now: Instant) -> Self {
        Self {
            cfg,
            heard: now,
            sent: now,
            answer_by: None,
        }
    }

    /// Silence before a ping.
    pub fn keepalive(&self) -> Duration {
        self.cfg.keepalive
    }

    /// How long a ping may go unanswered.
    pub fn timeout(&self) -> Duration {
        self.cfg.timeout
    }

    /// Something arrived (a frame or a pong): the link works.
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
        self.answer_by = None;
    }

    /// Something left (a frame or a ping).
    pub fn sent(&mut self, now: Instant) {
        self.sent = now;
    }

    /// The machine woke from sleep: check the link now, with a short deadline.
    pub fn woke(&mut self, now: Instant) -> Verdict {
        let by = now + WAKE_TIMEOUT.min(self.cfg.timeout);
        self.answer_by = Some(self.answer_by.map_or(by, |b| b.min(by)));
        self.sent = now;
        Verdict::Ping
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to decide.
    pub fn poll_timeout(&self) -> Instant {
        match self.answer_by {
            Some(by) => by,
            None => self.heard.min(self.sent) + self.cfg.keepalive,
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Verdict {
        if let Some(by) = self.answer_by {
            return if now >= by {
                Verdict::Dead(now.saturating_duration_since(self.heard))
            } else {
                Verdict::Alive
            };
        }
        if now >= self.heard.min(self.sent) + self.cfg.keepalive {
            // Quiet inbound: ask whether the service is still there. Quiet outbound: the
            // ping is the keepalive. Either way one ping does both.
            if now >= self.heard + self.cfg.keepalive {
                self.answer_by = Some(now + self.cfg.timeout);
            }
            self.sent = now;
            return Verdict::Ping;
        }
        Verdict::Alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Runs the timers from `t0` to `until`, answering each ping after `answer` (`None`: never);
    /// returns the pings sent and when the link was declared dead.
    fn run(
        l: &mut Liveness,
        t0: Instant,
        until: Duration,
        answer: Option<Duration>,
    ) -> (Vec<Instant>, Option<Instant>) {
        let mut now = t0;
        let mut pings = Vec::new();
        let mut pong_at: Option<Instant> = None;
        while now < t0 + until {
            let next = l.poll_timeout();
            let next = pong_at.map_or(next, |p| p.min(next));
            now = next.max(now);
            if pong_at.is_some_and(|p| now >= p) {
                pong_at = None;
                l.heard(now);
                continue;
            }
            match l.handle_timeout(now) {
                Verdict::Alive => {}
                Verdict::Ping => {
                    pings.push(now);
                    pong_at = answer.map(|a| now + a);
                }
                Verdict::Dead(_) => return (pings, Some(now)),
            }
        }
        (pings, None)
    }

    #[test]
    fn an_idle_link_whose_service_answers_pings_stays_up_for_hours() {
        let t0 = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        let (pings, dead) = run(&mut l, t0, secs(6 * 3600), Some(Duration::from_millis(40)));
        assert_eq!(dead, None);
        // A ping every keepalive interval, as the keepalive that idle middleboxes need.
        assert_eq!(pings.len(), 6 * 3600 / 10);
        for w in pings.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap <= secs(11) && gap >= secs(10), "{gap:?}");
        }
    }

    #[test]
    fn a_silent_link_is_declared_dead_at_the_deadline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        let (pings, dead) = run(&mut l, t0, secs(60), None);
        assert_eq!(pings, [t0 + secs(10)]);
        assert_eq!(dead, Some(t0 + secs(18)));
    }

    #[test]
    fn anything_heard_just_before_the_deadline_keeps_it() {
        let t0 = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        assert_eq!(l.handle_timeout(t0 + secs(10)), Verdict::Ping);
        assert_eq!(l.poll_timeout(), t0 + secs(18));
        // A frame (not even the pong) just before the deadline.
        l.heard(t0 + secs(18) - Duration::from_millis(1));
        assert_eq!(l.handle_timeout(t0 + secs(18)), Verdict::Alive);
        // Then silence again: the keepalive for our side's quiet (from the last ping), then
        // the check for the service's quiet with a new deadline.
        let (pings, dead) = run(&mut l, t0 + secs(18), secs(60), None);
        assert_eq!(
            pings,
            [t0 + secs(20), t0 + secs(28) - Duration::from_millis(1)]
        );
        assert!(dead.unwrap() <= t0 + secs(18) + secs(10) + secs(8));
    }

    #[test]
    fn a_busy_upload_with_acks_coming_never_pings() {
        let t0 = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        for ms in (0..120_000).step_by(50) {
            let now = t0 + Duration::from_millis(ms);
            l.sent(now);
            l.heard(now);
            assert_eq!(l.handle_timeout(now), Verdict::Alive);
        }
    }

    #[test]
    fn sending_without_hearing_is_noticed_too() {
        // An upload into a frozen link: our frames leave (into the socket buffer), no ack comes.
        let t0 = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        let mut now = t0;
        let mut verdicts = Vec::new();
        while now < t0 + secs(30) {
            now += Duration::from_millis(100);
            l.sent(now);
            match l.handle_timeout(now) {
                Verdict::Alive => {}
                v => verdicts.push((now - t0, v)),
            }
        }
        assert_eq!(verdicts[0], (secs(10), Verdict::Ping));
        assert!(matches!(verdicts[1], (t, Verdict::Dead(_)) if t == secs(18)));
    }

    #[test]
    fn keepalive_goes_out_when_only_the_agent_talks() {
        // Agent output keeps coming, we send nothing: a ping every interval keeps the flow
        // alive for middleboxes that time out on client-to-server silence, and no deadline.
        let t0 = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        let mut pings = 0;
        for s in 1..=100u64 {
            let now = t0 + secs(s);
            l.heard(now);
            match l.handle_timeout(now) {
                Verdict::Ping => pings += 1,
                Verdict::Alive => {}
                Verdict::Dead(_) => panic!("dead while hearing"),
            }
        }
        assert_eq!(pings, 10);
    }

    #[test]
    fn a_wake_checks_at_once_with_a_short_deadline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        // Two seconds in (monotonic time; the machine slept for an hour meanwhile).
        let now = t0 + secs(2);
        assert_eq!(l.woke(now), Verdict::Ping);
        assert_eq!(l.poll_timeout(), now + WAKE_TIMEOUT);
        assert!(matches!(
            l.handle_timeout(now + WAKE_TIMEOUT),
            Verdict::Dead(_)
        ));
        // Answered in time, it stays up.
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        l.woke(now);
        l.heard(now + secs(1));
        assert_eq!(l.handle_timeout(now + WAKE_TIMEOUT), Verdict::Alive);
    }
}
