//! Property tests of the wire codec: every message we can build round-trips, and no input,
//! however hostile, makes the decoder panic.

use bytes::Bytes;
use proptest::prelude::*;
use ssm_plugin::wire::{ClientMessage, MessageType, PayloadType, PAYLOAD_OFFSET};

fn message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::InputStreamData),
        Just(MessageType::OutputStreamData),
        Just(MessageType::Acknowledge),
        Just(MessageType::ChannelClosed),
        Just(MessageType::AgentSessionState),
        "[a-z_]{1,32}".prop_map(|s| MessageType::from_name(&s)),
    ]
}

proptest! {
    #[test]
    fn encode_decode_round_trip(
        mt in message_type(),
        seq in any::<i64>(),
        flags in any::<u64>(),
        created in 1u64..,
        id in any::<u128>(),
        pt in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let m = ClientMessage::new(mt, seq, flags, PayloadType(pt), Bytes::from(payload), created, uuid::Uuid::from_u128(id));
        let enc = m.encode();
        let back = ClientMessage::decode(&enc).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode(), enc);
    }

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ClientMessage::decode(&bytes);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let m = ClientMessage::new(MessageType::OutputStreamData, 1, 0, PayloadType::OUTPUT, Bytes::from(payload), 1, uuid::Uuid::nil());
        let mut enc = m.encode();
        for (at, x) in flips {
            let i = at % enc.len();
            enc[i] ^= x;
        }
        enc.truncate(cut % (enc.len() + 1));
        if let Ok(d) = ClientMessage::decode(&enc) {
            // Whatever decodes must be self-consistent.
            prop_assert_eq!(d.payload.len() + PAYLOAD_OFFSET, enc.len());
        }
    }
}
