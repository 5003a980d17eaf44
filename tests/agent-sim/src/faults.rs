//! Fault injection: decides, per relayed frame, what the relay does to it.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use crate::config::DirFaults;
use crate::session::DirStats;

/// What happens to one frame: zero, one or two deliveries, each after a delay.
pub(crate) fn apply(
    rng: &mut StdRng,
    f: &DirFaults,
    mut frame: Vec<u8>,
    stats: &mut DirStats,
) -> Vec<(Duration, Vec<u8>)> {
    if f.is_clean() {
        return vec![(Duration::ZERO, frame)];
    }
    if roll(rng, f.drop) {
        stats.dropped += 1;
        return Vec::new();
    }
    if roll(rng, f.corrupt_digest) && frame.len() > ssm_plugin::wire::PAYLOAD_OFFSET {
        // Flip one payload byte: the header digest no longer matches.
        let i = rng.random_range(ssm_plugin::wire::PAYLOAD_OFFSET..frame.len());
        frame[i] ^= 0x55;
        stats.corrupted += 1;
    }
    if roll(rng, f.malformed) {
        frame.truncate(50);
        stats.malformed += 1;
    }
    let mut delay = f.delay;
    if roll(rng, f.reorder) {
        delay += if f.reorder_delay.is_zero() {
            Duration::from_millis(50)
        } else {
            f.reorder_delay
        };
        stats.reordered += 1;
    }
    if !f.delay.is_zero() {
        stats.delayed += 1;
    }
    if roll(rng, f.duplicate) {
        stats.duplicated += 1;
        return vec![(delay, frame.clone()), (delay, frame)];
    }
    vec![(delay, frame)]
}

fn roll(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p.min(1.0))
}
