//! Incoming side: the reorder buffer and the queue of things waiting for `poll_event`.
//!
//! Messages and events share one queue so that a `channel_closed` or failure is reported after
//! the data that arrived before it. The number of messages held (queued for delivery plus
//! buffered ahead of sequence) is what `incoming_capacity` bounds: the driver pulling events is
//! the flow-control point, and a full buffer makes us refuse (not ack) new data so the agent
//! resends it later.

use std::collections::{BTreeMap, VecDeque};

use super::Event;
use crate::wire::ClientMessage;

/// What to do with an incoming stream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// New: ack it and keep it.
    Accept,
    /// Seen before (delivered or buffered): ack it again, keep nothing.
    Duplicate,
    /// No room: neither ack nor keep; the agent will resend.
    Refuse,
}

/// An entry of the delivery queue.
#[derive(Debug)]
pub(crate) enum Item {
    Message(ClientMessage),
    Event(Event),
}

#[derive(Debug)]
pub(crate) struct Incoming {
    expected: i64,
    ahead: BTreeMap<i64, ClientMessage>,
    queue: VecDeque<Item>,
    queued_messages: usize,
    capacity: usize,
}

impl Incoming {
    pub fn new(capacity: usize) -> Self {
        Self {
            expected: 0,
            ahead: BTreeMap::new(),
            queue: VecDeque::new(),
            queued_messages: 0,
            capacity: capacity.max(1),
        }
    }

    /// Classifies a message by its sequence number without changing anything.
    ///
    /// The next expected message is refused only when the delivery queue alone is full, never
    /// because of messages buffered ahead of it: otherwise a buffer full of later messages would
    /// wait forever for the one that unblocks it. So at most `capacity + 1` messages are held.
    pub fn classify(&self, seq: i64) -> Verdict {
        if seq < self.expected || self.ahead.contains_key(&seq) {
            Verdict::Duplicate
        } else if seq == self.expected {
            if self.queued_messages < self.capacity {
                Verdict::Accept
            } else {
                Verdict::Refuse
            }
        } else if self.queued_messages + self.ahead.len() < self.capacity {
            Verdict::Accept
        } else {
            Verdict::Refuse
        }
    }

    /// Keeps a message `classify` accepted, moving everything now in order to the queue.
    pub fn accept(&mut self, msg: ClientMessage) {
        if msg.sequence_number != self.expected {
            self.ahead.insert(msg.sequence_number, msg);
            return;
        }
        self.push_in_order(msg);
        while let Some(next) = self.ahead.remove(&self.expected) {
            self.push_in_order(next);
        }
    }

    fn push_in_order(&mut self, msg: ClientMessage) {
        self.queue.push_back(Item::Message(msg));
        self.queued_messages += 1;
        // Saturating: a hostile peer reaching i64::MAX only stalls its own stream.
        self.expected = self.expected.saturating_add(1);
    }

    pub fn push_event(&mut self, event: Event) {
        self.queue.push_back(Item::Event(event));
    }

    pub fn pop(&mut self) -> Option<Item> {
        let item = self.queue.pop_front()?;
        if matches!(item, Item::Message(_)) {
            self.queued_messages -= 1;
        }
        Some(item)
    }

    /// Messages buffered ahead of sequence.
    pub fn ahead_len(&self) -> usize {
        self.ahead.len()
    }

    /// No room for the next in-order message: reading more from the transport only makes work.
    pub fn is_full(&self) -> bool {
        self.queued_messages >= self.capacity
    }

    /// Messages waiting for `poll_event`.
    pub fn queued_messages(&self) -> usize {
        self.queued_messages
    }

    /// Sequence number of the next in-order message.
    pub fn expected(&self) -> i64 {
        self.expected
    }

    /// Forgets everything undelivered (after a terminal failure).
    pub fn clear(&mut self) {
        self.ahead.clear();
        self.queue.clear();
        self.queued_messages = 0;
    }
}
