//! The port settings the agent sends in the handshake (SessionType `Properties`), and the choice
//! of forwarding mode they imply. Pure: unit-tested without I/O.

use std::path::PathBuf;

use serde_json::Value;

use crate::session::handshake::version_greater;
use crate::smux::KeepAlive;

/// Agents above this version speak smux inside port sessions (the reference's gate).
pub const MUX_MIN_AGENT: &str = "3.0.196.0";
/// Agents above this version turn smux keep-alive off for new clients, so we must too.
pub const MUX_NO_KEEPALIVE_MIN_AGENT: &str = "3.1.1511.0";
/// The `type` that asks for a local listener.
pub const LOCAL_PORT_FORWARDING: &str = "LocalPortForwarding";

/// The handshake's port properties, with the reference's JSON names. Every field is text on the
/// wire; numbers are accepted too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortParameters {
    /// `portNumber`: the destination port (used by the agent only).
    pub port_number: String,
    /// `localPortNumber`: the local port to listen on; empty or `0` for an ephemeral one.
    pub local_port_number: String,
    /// `localUnixSocket`: the unix socket path when `localConnectionType` is `unix`.
    pub local_unix_socket: String,
    /// `localConnectionType`: `unix` for a unix socket listener, anything else for TCP.
    pub local_connection_type: String,
    /// `type`: `LocalPortForwarding` for a listener, anything else (SSH) for stdin/stdout.
    pub kind: String,
}

impl PortParameters {
    /// Reads the properties; anything missing or of another shape is empty.
    pub fn from_value(v: &Value) -> Self {
        let field = |k: &str| match v.get(k) {
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        Self {
            port_number: field("portNumber"),
            local_port_number: field("localPortNumber"),
            local_unix_socket: field("localUnixSocket"),
            local_connection_type: field("localConnectionType"),
            kind: field("type"),
        }
    }

    /// Where to listen, for the listener modes.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        if self.local_connection_type == "unix" {
            if self.local_unix_socket.is_empty() {
                return Err("the session asks for a unix socket (localConnectionType unix) but gives no localUnixSocket path; pass --parameters localUnixSocket=/path/to/socket".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(&self.local_unix_socket)));
        }
        let p = self.local_port_number.as_str();
        if p.is_empty() {
            return Ok(Endpoint::Tcp(0));
        }
        p.parse::<u16>().map(Endpoint::Tcp).map_err(|_| {
            format!(
                "localPortNumber {p:?} is not a port number; use 1-65535, or 0 for any free port"
            )
        })
    }
}

/// The local side of a listener mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP port (0: ephemeral).
    Tcp(u16),
    /// A unix socket path.
    Unix(PathBuf),
}

/// How the session forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// stdin/stdout carry the connection (SSH ProxyCommand).
    Stdio,
    /// One local connection at a time, raw bytes (agents up to 3.0.196.0).
    Basic,
    /// Many local connections, each an smux stream.
    Mux {
        /// The smux keep-alive both sides must agree on.
        keep_alive: Option<KeepAlive>,
    },
}

/// The reference's choice: a listener only for `LocalPortForwarding`, smux only for agents
/// strictly above 3.0.196.0 (malformed versions count as old).
pub fn choose(params: &PortParameters, agent_version: &str) -> Mode {
    if params.kind != LOCAL_PORT_FORWARDING {
        return Mode::Stdio;
    }
    if !version_greater(agent_version, MUX_MIN_AGENT) {
        return Mode::Basic;
    }
    let keep_alive = if version_greater(agent_version, MUX_NO_KEEPALIVE_MIN_AGENT) {
        None
    } else {
        Some(KeepAlive::DEFAULT)
    };
    Mode::Mux { keep_alive }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_reference_names() {
        let p = PortParameters::from_value(&json!({
            "portNumber": "22", "localPortNumber": 8080, "type": "LocalPortForwarding",
            "localConnectionType": "unix", "localUnixSocket": "/tmp/s"
        }));
        assert_eq!(p.port_number, "22");
        assert_eq!(p.local_port_number, "8080");
        assert_eq!(p.endpoint().unwrap(), Endpoint::Unix("/tmp/s".into()));
        assert_eq!(
            PortParameters::from_value(&Value::Null),
            PortParameters::default()
        );
    }

    #[test]
    fn local_port_defaults_to_ephemeral_and_rejects_garbage() {
        let mut p = PortParameters::default();
        assert_eq!(p.endpoint().unwrap(), Endpoint::Tcp(0));
        p.local_port_number = "0".into();
        assert_eq!(p.endpoint().unwrap(), Endpoint::Tcp(0));
        p.local_port_number = "5432".into();
        assert_eq!(p.endpoint().unwrap(), Endpoint::Tcp(5432));
        p.local_port_number = "70000".into();
        assert!(p.endpoint().unwrap_err().contains("localPortNumber"));
        p.local_connection_type = "unix".into();
        assert!(p.endpoint().unwrap_err().contains("localUnixSocket"));
    }

    #[test]
    fn mode_follows_type_and_agent_version() {
        let lpf = PortParameters {
            kind: LOCAL_PORT_FORWARDING.into(),
            ..Default::default()
        };
        let ssh = PortParameters {
            port_number: "22".into(),
            ..Default::default()
        };
        assert_eq!(choose(&ssh, "3.3.987.0"), Mode::Stdio);
        assert_eq!(choose(&lpf, "3.0.196.0"), Mode::Basic);
        assert_eq!(choose(&lpf, "3.0"), Mode::Basic);
        assert_eq!(choose(&lpf, ""), Mode::Basic);
        assert_eq!(
            choose(&lpf, "3.0.197.0"),
            Mode::Mux {
                keep_alive: Some(KeepAlive::DEFAULT)
            }
        );
        assert_eq!(
            choose(&lpf, "3.1.1511.0"),
            Mode::Mux {
                keep_alive: Some(KeepAlive::DEFAULT)
            }
        );
        assert_eq!(choose(&lpf, "3.1.1512.0"), Mode::Mux { keep_alive: None });
    }
}
