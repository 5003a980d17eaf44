//! The seam between the fake AWS API ([`crate::api`]) and the simulated agent/relay.
//!
//! The API only translates JSON requests into these calls; everything about what a session *is*
//! (its id, token, stream URL, KMS key) belongs to the simulator behind [`SessionBackend`]. Both
//! sides compile against this one definition so either can be tested with a stand-in for the other.

use std::collections::BTreeMap;
use std::fmt;

/// What a StartSession (or ECS ExecuteCommand) asked for, as the API received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// `i-…` for EC2, `ecs:<cluster>_<taskId>_<runtimeId>` for ECS exec, `mi-…` for hybrid.
    pub target: String,
    /// `None` means the default shell document (`SSM-SessionManagerRunShell`).
    pub document_name: Option<String>,
    /// Document parameters; SSM always models values as lists of strings.
    pub parameters: BTreeMap<String, Vec<String>>,
    pub reason: Option<String>,
}

/// The three values a client needs to open the data channel.
#[derive(Clone, PartialEq, Eq)]
pub struct Started {
    pub session_id: String,
    pub token_value: String,
    pub stream_url: String,
}

/// Hand-written so the token never reaches a log or a test failure message.
impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("session_id", &self.session_id)
            .field("token_value", &"<redacted>")
            .field("stream_url", &self.stream_url)
            .finish()
    }
}

/// The simulator's side of the session lifecycle. Methods are synchronous and the API calls them
/// from a blocking thread, so an implementation may block (e.g. on a std mutex or a channel).
pub trait SessionBackend: Send + Sync + 'static {
    fn start_session(&self, spec: SessionSpec) -> Result<Started, BackendError>;
    fn resume_session(&self, session_id: &str) -> Result<Started, BackendError>;
    fn terminate_session(&self, session_id: &str) -> Result<(), BackendError>;
    /// The KMS key the agent will request for this session, if the session is encrypted.
    fn kms_key_for(&self, session_id: &str) -> Option<String>;
}

/// An AWS-style error: `code` becomes the `__type` the SDKs match on (e.g. `TargetNotConnected`,
/// `DoesNotExistException`), `message` the human text after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    pub code: String,
    pub message: String,
}

impl BackendError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for BackendError {}

/// Lets the simulated agent recover a data key the plugin obtained from the fake KMS, the way the
/// real agent calls KMS Decrypt with the same encryption context.
pub trait DataKeyResolver: Send + Sync + 'static {
    fn decrypt(
        &self,
        ciphertext_blob: &[u8],
        encryption_context: &BTreeMap<String, String>,
    ) -> Option<Vec<u8>>;
}
