//! JSON payloads of the data channel, with the field spellings and field order the Go plugin and
//! the agent use (serde writes fields in declaration order, which is what keeps the bytes equal
//! to the captured frames). Incoming payloads are parsed leniently: a missing field takes its
//! default, as Go's decoder does, so a newer agent adding or omitting a field does not break us.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Payload of an `acknowledge` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AcknowledgeContent {
    /// `output_stream_data` or `input_stream_data`.
    #[serde(rename = "AcknowledgedMessageType")]
    pub acknowledged_message_type: String,
    /// The acked message's id as a lower-case hyphenated UUID.
    #[serde(rename = "AcknowledgedMessageId")]
    pub acknowledged_message_id: String,
    /// The acked message's sequence number: the only field receivers act on.
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub acknowledged_message_sequence_number: i64,
    /// Always true.
    #[serde(rename = "IsSequentialMessage")]
    pub is_sequential_message: bool,
}

impl AcknowledgeContent {
    /// Serialises without spaces, as the peers do.
    pub fn to_json(&self) -> Vec<u8> {
        to_vec(self)
    }
}

/// First (text) frame the client sends on a new websocket: authenticates it with the token.
#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct OpenDataChannelInput {
    /// "1.0".
    #[serde(rename = "MessageSchemaVersion")]
    pub message_schema_version: String,
    /// A fresh UUID per connection attempt.
    #[serde(rename = "RequestId")]
    pub request_id: String,
    /// The session token (a secret: never logged).
    #[serde(rename = "TokenValue")]
    pub token_value: String,
    /// One UUID per plugin process, the same on every reconnection.
    #[serde(rename = "ClientId")]
    pub client_id: String,
    /// The plugin version the agent keys its behaviour on.
    #[serde(rename = "ClientVersion")]
    pub client_version: String,
}

impl std::fmt::Debug for OpenDataChannelInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenDataChannelInput")
            .field("request_id", &self.request_id)
            .field("token_value", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("client_version", &self.client_version)
            .finish()
    }
}

impl OpenDataChannelInput {
    /// Serialises to the text frame's content.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One action the agent asks the client to perform during the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RequestedClientAction {
    /// `SessionType` or `KMSEncryption` (others are answered as unsupported).
    #[serde(rename = "ActionType")]
    pub action_type: String,
    /// Parameters, whose shape depends on the action type.
    #[serde(rename = "ActionParameters")]
    pub action_parameters: Value,
}

/// Agent's HandshakeRequest (payload type 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HandshakeRequest {
    /// The agent's version: decides port mode and flag support.
    #[serde(rename = "AgentVersion")]
    pub agent_version: String,
    /// The actions, SessionType first.
    #[serde(rename = "RequestedClientActions")]
    pub requested_client_actions: Vec<RequestedClientAction>,
}

/// Parameters of the `SessionType` action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SessionTypeRequest {
    /// `Standard_Stream`, `InteractiveCommands`, `NonInteractiveCommands` or `Port`.
    #[serde(rename = "SessionType")]
    pub session_type: String,
    /// For Port: the document's properties (`portNumber`, `type`, ...); otherwise null.
    #[serde(rename = "Properties")]
    pub properties: Value,
}

/// Parameters of the `KMSEncryption` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct KmsEncryptionRequest {
    /// The key to ask GenerateDataKey for.
    #[serde(rename = "KMSKeyId")]
    pub kms_key_id: String,
    /// Newer agents: 16 random bytes, base64, to be bound into the encryption context.
    #[serde(rename = "Challenge", skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

/// `ActionResult` of a successful `KMSEncryption` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct KmsEncryptionResponse {
    /// The data key's ciphertext blob, base64.
    #[serde(rename = "KMSCipherTextKey")]
    pub kms_cipher_text_key: String,
    /// Never set by the reference: always null.
    #[serde(rename = "KMSCipherTextHash")]
    pub kms_cipher_text_hash: Option<String>,
    /// Tells newer agents that the random challenge is in the encryption context.
    #[serde(
        rename = "ChallengeAcknowledgement",
        skip_serializing_if = "Option::is_none"
    )]
    pub challenge_acknowledgement: Option<bool>,
}

/// Status of one processed handshake action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionStatus {
    /// 1
    Success = 1,
    /// 2
    Failed = 2,
    /// 3
    Unsupported = 3,
}

/// One entry of `ProcessedClientActions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProcessedClientAction {
    /// Echoes the request's action type.
    #[serde(rename = "ActionType")]
    pub action_type: String,
    /// See [`ActionStatus`].
    #[serde(rename = "ActionStatus")]
    pub action_status: i32,
    /// Action-specific result, or null.
    #[serde(rename = "ActionResult")]
    pub action_result: Value,
    /// Error text, empty on success.
    #[serde(rename = "Error")]
    pub error: String,
}

/// Client's HandshakeResponse (payload type 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HandshakeResponse {
    /// Our reported version: the agent's version gates read it.
    #[serde(rename = "ClientVersion")]
    pub client_version: String,
    /// One entry per requested action, in order.
    #[serde(rename = "ProcessedClientActions")]
    pub processed_client_actions: Vec<ProcessedClientAction>,
    /// Error texts of failed actions, or null.
    #[serde(rename = "Errors")]
    pub errors: Option<Vec<String>>,
}

/// Agent's HandshakeComplete (payload type 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HandshakeComplete {
    /// Go duration, nanoseconds.
    #[serde(rename = "HandshakeTimeToComplete")]
    pub handshake_time_to_complete: i64,
    /// Shown to the user when not empty.
    #[serde(rename = "CustomerMessage")]
    pub customer_message: String,
}

/// EncChallengeRequest / EncChallengeResponse (payload types 8 and 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EncryptionChallenge {
    /// base64 of nonce + ciphertext + tag.
    #[serde(rename = "Challenge")]
    pub challenge: String,
}

/// Terminal size (payload type 3). Field order `cols`, `rows` as the reference writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SizeData {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

/// Payload of `channel_closed`, sent by the relay service when the session ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ChannelClosed {
    /// Id of the closing message.
    #[serde(rename = "MessageId")]
    pub message_id: String,
    /// RFC 3339 time.
    #[serde(rename = "CreatedDate")]
    pub created_date: String,
    /// The session id.
    #[serde(rename = "DestinationId")]
    pub destination_id: String,
    /// The session id.
    #[serde(rename = "SessionId")]
    pub session_id: String,
    /// "channel_closed".
    #[serde(rename = "MessageType")]
    pub message_type: String,
    /// 1.
    #[serde(rename = "SchemaVersion")]
    pub schema_version: i64,
    /// Empty on a normal end, otherwise the reason to show the user.
    #[serde(rename = "Output")]
    pub output: String,
}

/// Payload of `agent_session_state` (agent to relay service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AgentSessionState {
    /// 1.
    #[serde(rename = "SchemaVersion")]
    pub schema_version: i64,
    /// `Connected` or `Terminating`.
    #[serde(rename = "SessionState")]
    pub session_state: String,
    /// The session id.
    #[serde(rename = "SessionId")]
    pub session_id: String,
}

/// Values of a Flag payload (payload type 10, a 4-byte big-endian integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagValue {
    /// Basic port mode: the local connection closed.
    DisconnectToPort = 1,
    /// The client ends the session (agents from 2.3.722.0).
    TerminateSession = 2,
    /// The agent could not reach the destination port.
    ConnectToPortError = 3,
}

impl FlagValue {
    /// The 4 payload bytes.
    pub fn to_payload(self) -> [u8; 4] {
        (self as u32).to_be_bytes()
    }

    /// Parses a Flag payload.
    pub fn from_payload(p: &[u8]) -> Option<Self> {
        let b: [u8; 4] = p.try_into().ok()?;
        match u32::from_be_bytes(b) {
            1 => Some(Self::DisconnectToPort),
            2 => Some(Self::TerminateSession),
            3 => Some(Self::ConnectToPortError),
            _ => None,
        }
    }
}

/// Parses the agent's `EXIT_CODE: N` text (payload type 12).
pub fn parse_exit_code(payload: &[u8]) -> Option<i32> {
    let s = std::str::from_utf8(payload).ok()?;
    s.trim().strip_prefix("EXIT_CODE:")?.trim().parse().ok()
}

/// Serialises a payload struct; our structs only hold strings, numbers and JSON values, which
/// cannot fail to serialise.
pub fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_response_matches_capture() {
        let r = HandshakeResponse {
            client_version: "1.2.0.0".into(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: "SessionType".into(),
                action_status: 1,
                action_result: Value::Null,
                error: String::new(),
            }],
            errors: None,
        };
        assert_eq!(
            String::from_utf8(to_vec(&r)).unwrap(),
            r#"{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
        );
    }

    #[test]
    fn size_and_flags() {
        assert_eq!(
            to_vec(&SizeData { cols: 80, rows: 24 }),
            br#"{"cols":80,"rows":24}"#
        );
        assert_eq!(FlagValue::TerminateSession.to_payload(), [0, 0, 0, 2]);
        assert_eq!(
            FlagValue::from_payload(&[0, 0, 0, 3]),
            Some(FlagValue::ConnectToPortError)
        );
        assert_eq!(parse_exit_code(b"EXIT_CODE: 3"), Some(3));
        assert_eq!(parse_exit_code(b"EXIT_CODE: -1"), Some(-1));
        assert_eq!(parse_exit_code(b"garbage"), None);
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let o = OpenDataChannelInput {
            token_value: "SECRET".into(),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("SECRET"));
    }
}
