//! The channel's public vocabulary: its settings, what it tells the caller, and its errors.

use std::time::Duration;

use bytes::Bytes;

use crate::wire::PayloadType;

/// Channel settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most messages queued or unacked at once; `send` reports `Full` beyond it. Clamped to
    /// `1..=`[`MAX_OUTGOING_WINDOW`](super::MAX_OUTGOING_WINDOW).
    pub outgoing_window: usize,
    /// Most incoming messages held for delivery or reordering; beyond it new data is not acked,
    /// so the agent resends it once the caller has pulled events.
    pub incoming_capacity: usize,
    /// Pacing of our `input_stream_data` transmissions (first sends and resends); `None` means
    /// unpaced.
    pub frame_budget: Option<FrameBudget>,
    /// Most data messages queued but not yet transmitted (held back by the pacer). Beyond it
    /// `send` reports `Full`, so bulk data waits upstream (in the local socket, where each
    /// connection waits its turn) instead of in one FIFO ahead of the pacer: a keystroke or a
    /// new connection's first bytes then leave within a few frames, not seconds.
    pub max_unsent: usize,
    /// How long the oldest unacked message may stay unacked, counting only time while connected
    /// and not paused, before the channel fails with [`Error::TimedOut`].
    pub give_up_after: Duration,
    /// Unix milliseconds at the `now` passed to [`Channel::new`]: the base of every CreatedDate.
    pub created_epoch_ms: u64,
    /// Seeds the generator of MessageIds and AES-GCM nonces. Production code passes OS entropy;
    /// tests pass a constant to be reproducible.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            outgoing_window: 2048,
            incoming_capacity: 10_000,
            frame_budget: Some(FrameBudget::default()),
            max_unsent: 16,
            give_up_after: Duration::from_secs(120),
            created_epoch_ms: 0,
            seed: 0,
        }
    }
}

/// Token-bucket limits on outgoing data frames. The service is reported to pause and then close
/// sessions sending more than about 1000 data frames per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameBudget {
    /// Sustained frames per second.
    pub per_second: u32,
    /// Frames that may go out back to back after an idle period.
    pub burst: u32,
}

impl FrameBudget {
    /// `per_second` frames with a 20 ms burst: a late timer must not release a bunch of frames.
    pub fn per_second(per_second: u32) -> Self {
        Self {
            per_second,
            burst: (per_second / 50).max(1),
        }
    }
}

impl Default for FrameBudget {
    fn default() -> Self {
        Self::per_second(DEFAULT_FRAME_RATE)
    }
}

/// Under the ~1000 frames/s users report the service tolerates, with a 10% margin: the service
/// counts frames as they arrive, and network or CPU jitter bunches them (at 950/s with a 95-frame
/// burst, two busy seconds in a row were enough to get a session closed in our tests).
pub const DEFAULT_FRAME_RATE: u32 = 900;

/// Release order of queued messages. Sequence numbers are assigned on release, so a `Control`
/// message can overtake queued `Data` without any reordering on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Small, latency-sensitive messages: Size, Flag, handshake replies, keystrokes.
    Control,
    /// Bulk data.
    Data,
}

/// Something the caller should act on, from [`Channel::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An agent message, in sequence order, exactly once, decrypted if the session is encrypted.
    Message {
        /// What the payload is.
        payload_type: PayloadType,
        /// The (plaintext) payload.
        payload: Bytes,
        /// The agent's sequence number for it.
        sequence: i64,
    },
    /// The service ended the session. `output` is empty on a normal end, otherwise the reason to
    /// show the user. The channel is closed after this.
    ChannelClosed {
        /// The reason text from the service.
        output: String,
    },
    /// The service asked us to stop sending (informational: the channel holds data back itself).
    Paused,
    /// Sending resumed.
    Resumed,
    /// The channel failed for good; `send` returns [`SendError::Closed`] from now on.
    Failed(Error),
}

/// Why the channel failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent stopped acknowledging our data.
    #[error(
        "the agent has not acknowledged message {sequence} for {unacked_for:?}: the instance may \
         be unreachable or its SSM agent stopped; check the instance and start a new session"
    )]
    TimedOut {
        /// How long (connected, not paused) the message stayed unacked.
        unacked_for: Duration,
        /// Its sequence number.
        sequence: i64,
    },
    /// The service closed the channel with a message that does not decode.
    #[error("the service closed the session with a channel_closed message that cannot be read; start a new session, and report it if it repeats")]
    BadClose,
    /// An agent payload could not be decrypted with the session key.
    #[error(
        "could not decrypt message {sequence} from the agent (the session's KMS data key does \
         not match or the data is corrupt); start a new session"
    )]
    Decrypt {
        /// The agent's sequence number of the message.
        sequence: i64,
    },
}

/// Why [`Channel::send`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send window is full; wait until `send_capacity() > 0` (acks free it).
    #[error("the send window is full; wait for the agent to acknowledge earlier data")]
    Full,
    /// The channel was closed by the service or failed.
    #[error("the data channel is closed")]
    Closed,
}

/// Counters for logs and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages transmitted for the first time.
    pub sent: u64,
    /// Retransmissions (timeouts and reconnects).
    pub resent: u64,
    /// Our messages acknowledged by the agent.
    pub acked: u64,
    /// Acks we transmitted.
    pub acks_sent: u64,
    /// Acks sent twice because acks were being lost.
    pub acks_repeated: u64,
    /// New agent messages accepted.
    pub received: u64,
    /// Agent messages handed to the caller.
    pub delivered: u64,
    /// Agent messages seen again (re-acked).
    pub duplicates: u64,
    /// Agent messages refused because the incoming buffer was full (not acked).
    pub refused: u64,
    /// Messages waiting to be released.
    pub queued: usize,
    /// Messages released and not yet acked.
    pub unacked: usize,
    /// Agent messages waiting for `poll_event`.
    pub undelivered: usize,
    /// Agent messages buffered ahead of a gap.
    pub reordering: usize,
    /// Smoothed round-trip time.
    pub srtt: Duration,
    /// Round-trip variance.
    pub rttvar: Duration,
    /// Current retransmission timeout.
    pub rto: Duration,
}
