//! Fault injection: decides, per relayed frame, what the relay does to it.

use std::future::Future;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::DirFaults;
use crate::session::DirStats;

/// When a frame is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// Now, in order.
    Now,
    /// After this delay, in order with the other delayed frames: a slow link is still a
    /// FIFO, so latency alone must never reorder.
    InLine(Duration),
    /// Held back this long on its own, so that later frames overtake it.
    Aside(Duration),
}

/// What happens to one frame: zero, one or two deliveries.
pub(crate) fn apply(
    rng: &mut StdRng,
    f: &DirFaults,
    mut frame: Vec<u8>,
    stats: &mut DirStats,
) -> Vec<(When, Vec<u8>)> {
    if f.is_clean() {
        return vec![(When::Now, frame)];
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
    let mut when = if f.delay.is_zero() {
        When::Now
    } else {
        stats.delayed += 1;
        When::InLine(f.delay)
    };
    if roll(rng, f.reorder) {
        let hold = if f.reorder_delay.is_zero() {
            Duration::from_millis(50)
        } else {
            f.reorder_delay
        };
        when = When::Aside(f.delay + hold);
        stats.reordered += 1;
    }
    if roll(rng, f.duplicate) {
        stats.duplicated += 1;
        return vec![(when, frame.clone()), (when, frame)];
    }
    vec![(when, frame)]
}

/// The input end of a [`delay_line`]: (due time, frame).
pub(crate) type DelayLine = mpsc::UnboundedSender<(Instant, Vec<u8>)>;

/// A delay line: frames come out in the order they went in, each no earlier than its due
/// time. `deliver` runs on one task, so deliveries never race each other.
pub(crate) fn delay_line<D, Fut>(rt: &tokio::runtime::Handle, mut deliver: D) -> DelayLine
where
    D: FnMut(Vec<u8>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    rt.spawn(async move {
        while let Some((due, frame)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            deliver(frame).await;
        }
    });
    tx
}

fn roll(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p.min(1.0))
}
