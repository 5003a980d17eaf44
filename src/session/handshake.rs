//! The agent's handshake, as plain functions: what a HandshakeRequest asks of us, and the
//! HandshakeResponse we answer with. The driver performs the one action that needs I/O (the KMS
//! call) between the two.

use serde_json::Value;

use crate::wire::{
    ActionStatus, HandshakeRequest, HandshakeResponse, KmsEncryptionRequest, ProcessedClientAction,
    SessionTypeRequest,
};

/// Session types the agent may announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// `Standard_Stream`: an interactive shell.
    StandardStream,
    /// `InteractiveCommands`: a command on a pty.
    InteractiveCommands,
    /// `NonInteractiveCommands`: a command with separate output streams and an exit code.
    NonInteractiveCommands,
    /// `Port`: port forwarding or an SSH tunnel.
    Port,
}

impl SessionKind {
    /// Parses the SessionType action's value.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "Standard_Stream" => Some(Self::StandardStream),
            "InteractiveCommands" => Some(Self::InteractiveCommands),
            "NonInteractiveCommands" => Some(Self::NonInteractiveCommands),
            "Port" => Some(Self::Port),
            _ => None,
        }
    }

    /// The wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::StandardStream => "Standard_Stream",
            Self::InteractiveCommands => "InteractiveCommands",
            Self::NonInteractiveCommands => "NonInteractiveCommands",
            Self::Port => "Port",
        }
    }
}

/// What the request asks for, once parsed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The agent's version (decides port mode and the TerminateSession flag).
    pub agent_version: String,
    /// The session type, when the request carried a known one.
    pub kind: Option<SessionKind>,
    /// The SessionType action's `Properties` (port settings), as sent.
    pub properties: Value,
    /// The KMS action's parameters, when encryption is requested.
    pub kms: Option<KmsEncryptionRequest>,
    /// One entry per requested action, in order; KMS entries are filled in by the driver.
    pub actions: Vec<ProcessedClientAction>,
}

fn failed(action_type: &str, status: ActionStatus, error: String) -> ProcessedClientAction {
    ProcessedClientAction {
        action_type: action_type.to_owned(),
        action_status: status as i32,
        action_result: Value::Null,
        error,
    }
}

/// Reads a HandshakeRequest. Actions we do not know are answered `Unsupported` (status 3; the
/// reference swaps status and result there, which the agent reads as status 0).
pub fn plan(req: &HandshakeRequest) -> Plan {
    let mut plan = Plan {
        agent_version: req.agent_version.clone(),
        kind: None,
        properties: Value::Null,
        kms: None,
        actions: Vec::new(),
    };
    for action in &req.requested_client_actions {
        let t = action.action_type.as_str();
        match t {
            "SessionType" => {
                let p: SessionTypeRequest =
                    serde_json::from_value(action.action_parameters.clone()).unwrap_or_default();
                match SessionKind::from_name(&p.session_type) {
                    Some(k) => {
                        plan.kind = Some(k);
                        plan.properties = p.properties;
                        plan.actions.push(ProcessedClientAction {
                            action_type: t.to_owned(),
                            action_status: ActionStatus::Success as i32,
                            action_result: Value::Null,
                            error: String::new(),
                        });
                    }
                    None => plan.actions.push(failed(
                        t,
                        ActionStatus::Failed,
                        format!("Unknown session type {}", p.session_type),
                    )),
                }
            }
            "KMSEncryption" => {
                let p: KmsEncryptionRequest =
                    serde_json::from_value(action.action_parameters.clone()).unwrap_or_default();
                plan.kms = Some(p);
                // Placeholder: the driver replaces it with the KMS outcome.
                plan.actions
                    .push(failed(t, ActionStatus::Failed, String::new()));
            }
            other => plan.actions.push(failed(
                other,
                ActionStatus::Unsupported,
                format!("Unsupported action {other}"),
            )),
        }
    }
    plan
}

/// Builds the response from the processed actions.
pub fn response(client_version: &str, actions: Vec<ProcessedClientAction>) -> HandshakeResponse {
    let errors: Vec<String> = actions
        .iter()
        .filter(|a| a.action_status != ActionStatus::Success as i32 && !a.error.is_empty())
        .map(|a| a.error.clone())
        .collect();
    HandshakeResponse {
        client_version: client_version.to_owned(),
        processed_client_actions: actions,
        errors: (!errors.is_empty()).then_some(errors),
    }
}

/// Compares dotted versions the way the reference plugin does: numeric parts, same number of
/// parts, strictly greater. Anything malformed is "not greater" (the reference's safe default).
pub fn version_greater(version: &str, than: &str) -> bool {
    let parse = |s: &str| -> Option<Vec<u64>> { s.split('.').map(|p| p.parse().ok()).collect() };
    match (parse(version), parse(than)) {
        (Some(a), Some(b)) if a.len() == b.len() => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::to_vec;

    #[test]
    fn port_request_from_capture() {
        let req: HandshakeRequest = serde_json::from_str(r#"{"AgentVersion":"3.3.0.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"43355","type":"LocalPortForwarding"}}}]}"#).unwrap();
        let p = plan(&req);
        assert_eq!(p.kind, Some(SessionKind::Port));
        assert_eq!(p.properties["portNumber"], "43355");
        let r = response("1.2.0.0", p.actions);
        assert_eq!(
            String::from_utf8(to_vec(&r)).unwrap(),
            r#"{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
        );
    }

    #[test]
    fn unknown_things_are_refused_clearly() {
        let req: HandshakeRequest = serde_json::from_str(r#"{"AgentVersion":"3","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Weird"}},{"ActionType":"Teleport","ActionParameters":{}}]}"#).unwrap();
        let p = plan(&req);
        assert_eq!(p.kind, None);
        let r = response("1", p.actions);
        assert_eq!(r.processed_client_actions[0].action_status, 2);
        assert_eq!(r.processed_client_actions[1].action_status, 3);
        assert_eq!(r.errors.unwrap().len(), 2);
    }

    #[test]
    fn versions() {
        assert!(version_greater("3.0.197.0", "3.0.196.0"));
        assert!(!version_greater("3.0.196.0", "3.0.196.0"));
        assert!(!version_greater("3.1", "3.0.196.0"));
        assert!(!version_greater("3.x.0.0", "3.0.196.0"));
        assert!(version_greater("3.3.987.0", "3.1.1511.0"));
    }
}
