//! Test support: a simulator of the SSM agent's session code and of the Session Manager relay
//! service (MGS) it talks through, so the plugin can be tested end to end on 127.0.0.1.
//!
//! The agent half follows amazon-ssm-agent's `agent/session/` sources (data channel, handshake,
//! shell, command and port plugins); README.md lists each reproduced behaviour with its source
//! file. The relay half is our best model of MGS from captures and field reports.
//!
//! Layout:
//! - [`backend`]: the interface the fake AWS API calls (StartSession, ResumeSession, ...).
//! - [`config`]: every knob: versions, limits, faults, timings.
//! - `relay`: the websocket endpoint (ws and wss), token checks, channel_closed, faults.
//! - `datachannel`: the agent's reliable channel (sequence numbers, acks, RTO resends, handshake).
//! - `plugins`: Standard_Stream / InteractiveCommands / NonInteractiveCommands / Port.
//! - `smux`: our own minimal server side of the smux v1 multiplexer used by Port sessions.

pub mod api;
pub mod backend;
pub mod config;
mod crypto;
mod datachannel;
mod faults;
mod plugins;
mod relay;
mod session;
mod sim;
mod smux;
pub mod version;

pub use backend::{BackendError, DataKeyResolver, SessionBackend, SessionSpec, Started};
pub use config::{DirFaults, Faults, Limits, SimConfig};
pub use session::{Stats, UpgradeAuth};
pub use sim::{parameters, tls_acceptor, SimBackend, SimHandle, Simulator};
