//! Shared by the fake-API tests: a trivial in-memory session backend.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use agent_sim::api::{BackendError, SessionBackend, SessionSpec, Started};

/// What the backend was asked to do, for assertions.
#[derive(Default, Debug, Clone)]
pub struct Calls {
    pub started: Vec<SessionSpec>,
    pub resumed: Vec<String>,
    pub terminated: Vec<String>,
}

/// Hands out sequential session ids and a fresh token on every start and resume.
#[derive(Default)]
pub struct FakeBackend {
    calls: Mutex<Calls>,
    issued: Mutex<BTreeMap<String, Started>>,
    /// The KMS key every session is encrypted with, if any.
    pub kms_key: Option<String>,
}

impl FakeBackend {
    pub fn with_kms_key(key: &str) -> Self {
        Self {
            kms_key: Some(key.to_owned()),
            ..Self::default()
        }
    }

    pub fn calls(&self) -> Calls {
        self.calls.lock().unwrap().clone()
    }

    /// The last start/resume answer for a session.
    pub fn issued(&self, session_id: &str) -> Option<Started> {
        self.issued.lock().unwrap().get(session_id).cloned()
    }

    fn issue(&self, session_id: String) -> Started {
        let token = format!("FAKETOKEN-{:016x}", rand::random::<u64>());
        let s = Started {
            stream_url: format!(
                "ws://127.0.0.1:9/v1/data-channel/{session_id}?role=publish_subscribe&cell-number=FAKECELL"
            ),
            session_id: session_id.clone(),
            token_value: token,
        };
        self.issued.lock().unwrap().insert(session_id, s.clone());
        s
    }
}

impl SessionBackend for FakeBackend {
    fn start_session(&self, spec: SessionSpec) -> Result<Started, BackendError> {
        if spec.target.starts_with("i-ffff") {
            return Err(BackendError::new(
                "TargetNotConnected",
                format!("{} is not connected.", spec.target),
            ));
        }
        let n = {
            let mut c = self.calls.lock().unwrap();
            c.started.push(spec.clone());
            c.started.len()
        };
        let prefix = if spec.target.starts_with("ecs:") {
            "ecs-execute-command"
        } else {
            "test-user"
        };
        Ok(self.issue(format!("{prefix}-{n:017x}")))
    }

    fn resume_session(&self, session_id: &str) -> Result<Started, BackendError> {
        if !self.issued.lock().unwrap().contains_key(session_id) {
            return Err(BackendError::new(
                "DoesNotExistException",
                format!("Session {session_id} does not exist"),
            ));
        }
        self.calls
            .lock()
            .unwrap()
            .resumed
            .push(session_id.to_owned());
        Ok(self.issue(session_id.to_owned()))
    }

    fn terminate_session(&self, session_id: &str) -> Result<(), BackendError> {
        self.calls
            .lock()
            .unwrap()
            .terminated
            .push(session_id.to_owned());
        Ok(())
    }

    fn kms_key_for(&self, session_id: &str) -> Option<String> {
        if self.issued.lock().unwrap().contains_key(session_id) {
            self.kms_key.clone()
        } else {
            None
        }
    }
}
