//! The Session Manager binary message format ("ClientMessage"), as both the plugin and the agent
//! write it, and the JSON payloads carried inside it.
//!
//! Pure data and functions: no I/O, no clock. Decoding never panics and never allocates from a
//! length field it has not checked against the frame it was given, because every byte here comes
//! from the network.
//!
//! Layout (all integers big-endian), offsets into the frame:
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 4 | header length, always 116 (the offset of the payload length) |
//! | 4 | 32 | message type, ASCII right-padded with spaces |
//! | 36 | 4 | schema version (1) |
//! | 40 | 8 | created date, Unix milliseconds |
//! | 48 | 8 | sequence number (i64) |
//! | 56 | 8 | flags |
//! | 64 | 16 | message id: a UUID with its two 8-byte halves swapped |
//! | 80 | 32 | SHA-256 of the payload |
//! | 112 | 4 | payload type |
//! | 116 | 4 | payload length |
//! | 120 | n | payload |

mod json;

pub use json::*;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The header length every known peer writes: the offset of the payload-length field.
pub const HEADER_LENGTH: u32 = 116;
/// Offset of the first payload byte for a standard header.
pub const PAYLOAD_OFFSET: usize = HEADER_LENGTH as usize + 4;
/// Width of the space-padded message type field.
pub const MESSAGE_TYPE_LEN: usize = 32;
/// Largest payload we accept from a peer. Both real peers send at most 1024 plaintext bytes
/// (plus 28 for encryption); the agent's session code accepts far larger ones, so this only
/// guards against nonsense, it is not a protocol limit.
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024 * 1024;

/// `Flags` value of the first stream message a peer sends (the agent sets it on sequence 0).
pub const FLAG_SYN: u64 = 1;
/// `Flags` value marking a final message.
pub const FLAG_FIN: u64 = 2;
/// `Flags` value that both real peers put on every `acknowledge` (SYN|FIN).
pub const FLAG_ACK: u64 = 3;

/// The message types found on the data channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Client to agent stream data (`input_stream_data`).
    InputStreamData,
    /// Agent to client stream data (`output_stream_data`).
    OutputStreamData,
    /// Acknowledgement of one stream data message (`acknowledge`).
    Acknowledge,
    /// The relay service ends the session (`channel_closed`).
    ChannelClosed,
    /// The relay service asks us to resume sending (`start_publication`).
    StartPublication,
    /// The relay service asks us to stop sending for now (`pause_publication`).
    PausePublication,
    /// Agent to relay session state (`agent_session_state`); never meant for the client.
    AgentSessionState,
    /// Any other type (control-channel types and future additions), kept verbatim.
    Other(String),
}

impl MessageType {
    /// The on-the-wire name, without padding.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InputStreamData => "input_stream_data",
            Self::OutputStreamData => "output_stream_data",
            Self::Acknowledge => "acknowledge",
            Self::ChannelClosed => "channel_closed",
            Self::StartPublication => "start_publication",
            Self::PausePublication => "pause_publication",
            Self::AgentSessionState => "agent_session_state",
            Self::Other(s) => s,
        }
    }

    /// Parses a trimmed wire name.
    pub fn from_name(name: &str) -> Self {
        match name {
            "input_stream_data" => Self::InputStreamData,
            "output_stream_data" => Self::OutputStreamData,
            "acknowledge" => Self::Acknowledge,
            "channel_closed" => Self::ChannelClosed,
            "start_publication" => Self::StartPublication,
            "pause_publication" => Self::PausePublication,
            "agent_session_state" => Self::AgentSessionState,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Stream data in either direction: the messages that are sequenced and acknowledged.
    pub fn is_stream_data(&self) -> bool {
        matches!(self, Self::InputStreamData | Self::OutputStreamData)
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a stream message's payload is. A newtype rather than an enum so that a value we do not
/// know survives a decode/encode round trip unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadType(pub u32);

impl PayloadType {
    /// No payload type: what acknowledges and channel_closed carry.
    pub const NONE: Self = Self(0);
    /// Terminal or port bytes.
    pub const OUTPUT: Self = Self(1);
    /// An error text from the agent.
    pub const ERROR: Self = Self(2);
    /// Terminal size, `{"cols":N,"rows":M}`.
    pub const SIZE: Self = Self(3);
    /// Session parameters (unused by current peers).
    pub const PARAMETER: Self = Self(4);
    /// Agent's handshake request.
    pub const HANDSHAKE_REQUEST: Self = Self(5);
    /// Client's handshake response.
    pub const HANDSHAKE_RESPONSE: Self = Self(6);
    /// Agent's handshake completion.
    pub const HANDSHAKE_COMPLETE: Self = Self(7);
    /// Agent's KMS encryption challenge.
    pub const ENC_CHALLENGE_REQUEST: Self = Self(8);
    /// Client's answer to the encryption challenge.
    pub const ENC_CHALLENGE_RESPONSE: Self = Self(9);
    /// A 4-byte big-endian flag value (see [`FlagValue`]).
    pub const FLAG: Self = Self(10);
    /// Standard error of a command, when the agent keeps the streams apart.
    pub const STDERR: Self = Self(11);
    /// `EXIT_CODE: N` from a NonInteractiveCommands session.
    pub const EXIT_CODE: Self = Self(12);

    /// The reference's name for the type, for logs.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "None",
            1 => "Output",
            2 => "Error",
            3 => "Size",
            4 => "Parameter",
            5 => "HandshakeRequest",
            6 => "HandshakeResponse",
            7 => "HandshakeComplete",
            8 => "EncChallengeRequest",
            9 => "EncChallengeResponse",
            10 => "Flag",
            11 => "StdErr",
            12 => "ExitCode",
            _ => "Unknown",
        }
    }

    /// Payload types that belong to the handshake and are never encrypted.
    pub fn is_handshake(self) -> bool {
        matches!(self.0, 5..=9)
    }
}

/// Why a frame could not be decoded. Every variant is the peer's (or the network's) fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    #[error("frame too short: {len} bytes, a message header needs {PAYLOAD_OFFSET}")]
    TooShort {
        /// bytes received
        len: usize,
    },
    /// The header-length field is not one we can parse.
    #[error("bad header length {0} (expected {HEADER_LENGTH})")]
    HeaderLength(u32),
    /// The message type field is empty or not ASCII.
    #[error("bad message type field")]
    MessageType,
    /// The created-date field is 0, which both reference peers reject.
    #[error("message has no creation date")]
    CreatedDate,
    /// The payload-length field disagrees with the bytes in the frame.
    #[error("payload length {declared} does not match the {actual} bytes in the frame")]
    PayloadLength {
        /// the length field
        declared: u32,
        /// bytes actually present after the header
        actual: usize,
    },
    /// The payload is larger than we are willing to hold.
    #[error("payload of {0} bytes is larger than the {MAX_PAYLOAD_LEN}-byte limit")]
    TooLarge(usize),
    /// The SHA-256 digest does not match the payload.
    #[error("payload digest does not match (corrupted message)")]
    Digest,
}

/// One decoded ClientMessage.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// What kind of message this is.
    pub message_type: MessageType,
    /// Always 1 from current peers.
    pub schema_version: u32,
    /// Creation time, Unix milliseconds.
    pub created_date: u64,
    /// Position in the sender's stream (0 for acks and control messages).
    pub sequence_number: i64,
    /// See [`FLAG_SYN`], [`FLAG_FIN`], [`FLAG_ACK`].
    pub flags: u64,
    /// Random per message; acknowledgements echo it.
    pub message_id: Uuid,
    /// The payload type.
    pub payload_type: PayloadType,
    /// The payload bytes (plaintext or, for encrypted sessions, nonce + ciphertext + tag).
    pub payload: Bytes,
}

impl std::fmt::Debug for ClientMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads are user data: show only their size.
        f.debug_struct("ClientMessage")
            .field("type", &self.message_type.as_str())
            .field("seq", &self.sequence_number)
            .field("flags", &self.flags)
            .field("id", &self.message_id)
            .field("payload_type", &self.payload_type.name())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Converts 16 MessageId bytes from the wire into the UUID the peers print: the wire holds the
/// least-significant half first.
pub fn uuid_from_wire(wire: &[u8; 16]) -> Uuid {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&wire[8..]);
    b[8..].copy_from_slice(&wire[..8]);
    Uuid::from_bytes(b)
}

/// The inverse of [`uuid_from_wire`].
pub fn uuid_to_wire(id: &Uuid) -> [u8; 16] {
    let u = id.as_bytes();
    let mut w = [0u8; 16];
    w[..8].copy_from_slice(&u[8..]);
    w[8..].copy_from_slice(&u[..8]);
    w
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    // Callers check the frame is at least PAYLOAD_OFFSET long; every `at` used is below it.
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl ClientMessage {
    /// Builds a message with the standard header values.
    pub fn new(
        message_type: MessageType,
        sequence_number: i64,
        flags: u64,
        payload_type: PayloadType,
        payload: Bytes,
        created_date: u64,
        message_id: Uuid,
    ) -> Self {
        Self {
            message_type,
            schema_version: 1,
            created_date,
            sequence_number,
            flags,
            message_id,
            payload_type,
            payload,
        }
    }

    /// Decodes and validates one websocket message.
    ///
    /// Checks, in order: the frame holds a header, the header length is 116 (the only value any
    /// peer writes; a different one would move every later field), the message type is ASCII
    /// and not empty, the payload length matches the frame exactly, the creation date is set,
    /// and the digest matches the payload. As in the reference, `start_publication` and
    /// `pause_publication` skip the content checks and an empty payload skips the digest.
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        if frame.len() < PAYLOAD_OFFSET {
            return Err(DecodeError::TooShort { len: frame.len() });
        }
        let header_length = be_u32(frame, 0);
        if header_length != HEADER_LENGTH {
            return Err(DecodeError::HeaderLength(header_length));
        }
        let type_field = &frame[4..4 + MESSAGE_TYPE_LEN];
        let type_str = std::str::from_utf8(type_field).map_err(|_| DecodeError::MessageType)?;
        let trimmed = type_str.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        if trimmed.is_empty() || !trimmed.is_ascii() {
            return Err(DecodeError::MessageType);
        }
        let message_type = MessageType::from_name(trimmed);
        let declared = be_u32(frame, 116);
        let actual = frame.len() - PAYLOAD_OFFSET;
        if declared as usize != actual {
            return Err(DecodeError::PayloadLength { declared, actual });
        }
        if actual > MAX_PAYLOAD_LEN {
            return Err(DecodeError::TooLarge(actual));
        }
        let created_date = be_u64(frame, 40);
        let payload = &frame[PAYLOAD_OFFSET..];
        let lenient = matches!(
            message_type,
            MessageType::StartPublication | MessageType::PausePublication
        );
        if !lenient {
            if created_date == 0 {
                return Err(DecodeError::CreatedDate);
            }
            if !payload.is_empty() && Sha256::digest(payload).as_slice() != &frame[80..112] {
                return Err(DecodeError::Digest);
            }
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&frame[64..80]);
        Ok(Self {
            message_type,
            schema_version: be_u32(frame, 36),
            created_date,
            sequence_number: be_u64(frame, 48) as i64,
            flags: be_u64(frame, 56),
            message_id: uuid_from_wire(&id),
            payload_type: PayloadType(be_u32(frame, 112)),
            payload: Bytes::copy_from_slice(payload),
        })
    }

    /// Encodes the message, computing the payload digest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAYLOAD_OFFSET + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        let name = self.message_type.as_str().as_bytes();
        let n = name.len().min(MESSAGE_TYPE_LEN);
        out.extend_from_slice(&name[..n]);
        out.extend(std::iter::repeat_n(b' ', MESSAGE_TYPE_LEN - n));
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        out.extend_from_slice(&self.created_date.to_be_bytes());
        out.extend_from_slice(&self.sequence_number.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&uuid_to_wire(&self.message_id));
        out.extend_from_slice(&Sha256::digest(&self.payload));
        out.extend_from_slice(&self.payload_type.0.to_be_bytes());
        // Payloads we build are bounded far below u32::MAX (MAX_PAYLOAD_LEN).
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// Builds the `acknowledge` for `acked`, exactly as both reference peers do: sequence 0,
    /// flags 3, payload type 0, and the JSON with the acked message's type, id and sequence.
    pub fn acknowledge_for(acked: &Self, created_date: u64, message_id: Uuid) -> Self {
        let content = AcknowledgeContent {
            acknowledged_message_type: acked.message_type.as_str().to_owned(),
            acknowledged_message_id: acked.message_id.hyphenated().to_string(),
            acknowledged_message_sequence_number: acked.sequence_number,
            is_sequential_message: true,
        };
        Self::new(
            MessageType::Acknowledge,
            0,
            FLAG_ACK,
            PayloadType::NONE,
            Bytes::from(content.to_json()),
            created_date,
            message_id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_uuid_vector() {
        let wire: [u8; 16] = hex_array("85c312500a08af29fdba1b381a734d64");
        let id = uuid_from_wire(&wire);
        assert_eq!(id.to_string(), "fdba1b38-1a73-4d64-85c3-12500a08af29");
        assert_eq!(uuid_to_wire(&id), wire);
    }

    fn hex_array(s: &str) -> [u8; 16] {
        let mut a = [0u8; 16];
        for (i, b) in a.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).unwrap();
        }
        a
    }

    fn sample() -> ClientMessage {
        ClientMessage::new(
            MessageType::InputStreamData,
            7,
            0,
            PayloadType::OUTPUT,
            Bytes::from_static(b"hello"),
            1_700_000_000_000,
            Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        )
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let enc = m.encode();
        assert_eq!(enc.len(), PAYLOAD_OFFSET + 5);
        assert_eq!(&enc[4..36], b"input_stream_data               ");
        assert_eq!(ClientMessage::decode(&enc).unwrap(), m);
    }

    #[test]
    fn rejects_bad_frames() {
        let enc = sample().encode();
        assert_eq!(
            ClientMessage::decode(&enc[..50]),
            Err(DecodeError::TooShort { len: 50 })
        );
        let mut bad = enc.clone();
        bad[PAYLOAD_OFFSET] ^= 1;
        assert_eq!(ClientMessage::decode(&bad), Err(DecodeError::Digest));
        let mut bad = enc.clone();
        bad.push(0);
        assert!(matches!(
            ClientMessage::decode(&bad),
            Err(DecodeError::PayloadLength { .. })
        ));
        let mut bad = enc.clone();
        bad[3] = 200;
        assert_eq!(
            ClientMessage::decode(&bad),
            Err(DecodeError::HeaderLength(200))
        );
        let mut bad = enc.clone();
        bad[4..36].fill(b' ');
        assert_eq!(ClientMessage::decode(&bad), Err(DecodeError::MessageType));
        let mut bad = enc;
        bad[40..48].fill(0);
        assert_eq!(ClientMessage::decode(&bad), Err(DecodeError::CreatedDate));
    }
}
