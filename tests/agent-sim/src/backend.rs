//! The interface between the fake AWS API (another module) and the simulator.

use std::collections::BTreeMap;

/// What StartSession asked for.
#[derive(Debug, Clone, Default)]
pub struct SessionSpec {
    /// `Target` (instance id, or `ecs:<cluster>_<task>_<runtime>` for ECS exec).
    pub target: String,
    /// `DocumentName`; none means `SSM-SessionManagerRunShell`.
    pub document_name: Option<String>,
    /// `Parameters`, as the API receives them (every value is a list of strings).
    pub parameters: BTreeMap<String, Vec<String>>,
    /// `Reason`, unused by the simulator but kept for logs.
    pub reason: Option<String>,
}

/// What StartSession / ResumeSession return.
#[derive(Clone)]
pub struct Started {
    /// The session id.
    pub session_id: String,
    /// A fresh token; only the newest token of a session opens its websocket.
    pub token_value: String,
    /// `ws(s)://127.0.0.1:P/v1/data-channel/<id>?role=publish_subscribe&cell-number=...`.
    pub stream_url: String,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("session_id", &self.session_id)
            .field("token_value", &"<redacted>")
            .field("stream_url", &self.stream_url)
            .finish()
    }
}

/// An AWS-style error: the API helper turns it into the service's JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    /// AWS error code, e.g. `InvalidDocument`.
    pub code: String,
    /// Human readable message.
    pub message: String,
}

impl BackendError {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for BackendError {}

/// The session-level operations of the fake SSM API.
pub trait SessionBackend: Send + Sync + 'static {
    /// Creates the session (the agent starts at once, as the real one does when MGS tells it),
    /// returns its first token and the stream URL.
    fn start_session(&self, spec: SessionSpec) -> Result<Started, BackendError>;
    /// A new token for a live session; `TargetNotConnected` once it has ended.
    fn resume_session(&self, session_id: &str) -> Result<Started, BackendError>;
    /// Ends the session: the agent stops and the relay sends `channel_closed`.
    fn terminate_session(&self, session_id: &str) -> Result<(), BackendError>;
    /// The KMS key id this session's agent asks the client to use, if encryption is on.
    fn kms_key_for(&self, session_id: &str) -> Option<String>;
}

/// How the simulated agent recovers the 64-byte data key the plugin got from the fake KMS
/// (the agent's `kms:Decrypt` call).
pub trait DataKeyResolver: Send + Sync + 'static {
    /// Plaintext of `ciphertext_blob`, if it was issued for exactly this encryption context.
    fn decrypt(
        &self,
        ciphertext_blob: &[u8],
        encryption_context: &BTreeMap<String, String>,
    ) -> Option<Vec<u8>>;
}
