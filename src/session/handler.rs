//! The contract between the session driver and a session handler (shell, port): what flows
//! each way, and how a handler ends. Handlers never decide an exit status on their own: they
//! report how they ended ([`HandlerExit`]) and the session machine decides.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::handshake::SessionKind;
use crate::channel::Priority;
use crate::exit::Exit;
use crate::ui::Ui;
use crate::wire::{FlagValue, PayloadType};

/// A message from the agent for the session handler.
#[derive(Debug)]
pub enum FromAgent {
    /// An in-order payload.
    Message {
        /// Its type.
        payload_type: PayloadType,
        /// Its bytes (decrypted).
        payload: Bytes,
    },
}

/// A message from the session handler for the agent, in order with its data.
#[derive(Debug)]
pub enum ToAgent {
    /// Send a payload.
    Data {
        /// Its type.
        payload_type: PayloadType,
        /// Its bytes (at most `max_payload`).
        payload: Bytes,
        /// Control messages overtake queued data.
        priority: Priority,
    },
    /// Send a Flag payload.
    Flag(FlagValue),
    /// The local input ended (stdin closed): end once everything sent is acknowledged.
    InputEnded,
}

/// Something the user did that ends the session at once, whatever is queued (`~.`, a terminal
/// that went away). It travels apart from [`ToAgent`] so a full data queue (an outage) can
/// never hold it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEnd {
    /// The `~.` escape.
    Escape,
    /// The local terminal went away (read error or end of input on a raw terminal).
    TerminalGone,
    /// The process no longer needs the session (a SOCKS5 destination left idle).
    Released,
}

/// How a handler ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerExit {
    /// It was told the session is over (its queue closed) and has flushed.
    Done,
    /// Nobody reads our output any more (a broken pipe, `| head -c1`): a quiet end.
    OutputClosed,
    /// Writing the session's output failed otherwise (a full disk): the output is lost.
    OutputFailed(String),
    /// It cannot go on (bad port parameters, a listener that cannot bind, a broken smux stream).
    Failed {
        /// The status this deserves.
        exit: Exit,
        /// What went wrong and what to do, for stderr.
        message: String,
    },
}

/// How a failed write of the session's output (or of a port session's status lines) ends the
/// handler: a reader that went away is a quiet end, anything else loses output and is an error.
pub fn output_error(e: &std::io::Error) -> HandlerExit {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        HandlerExit::OutputClosed
    } else {
        HandlerExit::OutputFailed(e.to_string())
    }
}

/// What a handler gets.
pub struct HandlerContext {
    /// The session id.
    pub session_id: String,
    /// The session type.
    pub kind: SessionKind,
    /// SessionType Properties from the handshake (port settings), or null.
    pub properties: serde_json::Value,
    /// The agent's version, empty when it sent no handshake.
    pub agent_version: String,
    /// Payloads from the agent; closed when the session is over.
    pub from_agent: mpsc::Receiver<FromAgent>,
    /// Payloads for the agent.
    pub to_agent: mpsc::Sender<ToAgent>,
    /// Ends the session now (`~.`).
    pub end: mpsc::UnboundedSender<LocalEnd>,
    /// Status lines.
    pub ui: Ui,
    /// Largest payload to send.
    pub max_payload: usize,
    /// The user's bind address for port listeners (`SESSION_MANAGER_PLUGIN_BIND_ADDRESS`).
    pub bind_address: Option<String>,
    /// The port listener, when it outlives the session (a restarted forward, a SOCKS5
    /// destination); a port session that opens one leaves it here.
    pub listener: super::listen::ListenerSlot,
}
