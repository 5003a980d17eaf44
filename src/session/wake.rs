//! Noticing that the machine slept: CLOCK_MONOTONIC (every timer of the session) stops while
//! a laptop is suspended, CLOCK_BOOTTIME does not, so the gap between them grows by the time
//! asleep. Checked on every turn of the session loop (at least every keepalive interval); the
//! session then checks its link at once (`Session::woke`) instead of waiting out timers that
//! slept too.

use std::time::Duration;

/// A jump smaller than this is clock noise, not sleep.
const MIN_SLEEP: Duration = Duration::from_secs(2);

/// The boot-minus-monotonic gap last seen.
#[derive(Default)]
pub struct Check {
    gap: Option<Duration>,
}

impl Check {
    /// Starts from the current gap.
    pub fn new() -> Self {
        Self { gap: gap() }
    }

    /// How long the machine slept since the last call, if it did.
    pub fn slept(&mut self) -> Option<Duration> {
        let now = gap()?;
        let before = self.gap.replace(now)?;
        let slept = now.saturating_sub(before);
        (slept >= MIN_SLEEP).then_some(slept)
    }
}

#[cfg(target_os = "linux")]
fn gap() -> Option<Duration> {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we own; no other memory is involved.
        (unsafe { libc::clock_gettime(clock, &mut ts) } == 0)
            .then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    };
    let boot = read(libc::CLOCK_BOOTTIME)?;
    let mono = read(libc::CLOCK_MONOTONIC)?;
    Some(boot.saturating_sub(mono))
}

/// Elsewhere no such pair of clocks is read here: the liveness deadlines alone find a link
/// that died while the machine slept.
#[cfg(not(target_os = "linux"))]
fn gap() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_sleep_no_wake() {
        let mut c = super::Check::new();
        assert_eq!(c.slept(), None);
        assert_eq!(c.slept(), None);
    }
}
