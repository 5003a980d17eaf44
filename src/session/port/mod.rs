//! Port sessions: port forwarding (`AWS-StartPortForwardingSession[ToRemoteHost]`) and SSH over
//! SSM (`AWS-StartSSHSession`).
//!
//! The agent decides everything in the handshake's SessionType `Properties` (argv carries none of
//! it): `type` `LocalPortForwarding` means a local listener, anything else stdin/stdout; agents
//! above 3.0.196.0 multiplex connections with smux, older ones take one connection at a time.
//!
//! Port data is forwarded byte for byte: the reference's rewrite of a lone `\n` into `\r` (meant
//! for keyboards) is never applied here.
//!
//! Flow control runs end to end in both directions through bounded queues: a local socket is
//! read only while the data channel can take more (`to_agent` has room), and the next agent
//! payload is taken only while the local writer's queue has room, which stops the driver from
//! pulling (and acknowledging) more.

mod basic;
mod conn;
mod mux;
pub mod params;
mod stdio;

use super::listen;
pub use super::listen::{Listener, ListenerSlot, LocalConn};

use super::{HandlerContext, HandlerExit};
use crate::exit::Exit;
use params::{Mode, PortParameters};

/// The reference's line when the agent cannot reach the destination.
const CONNECT_ERROR_LINE: &str = "\nConnection to destination port failed, check SSM Agent logs.\n";

/// Runs a port session until the session ends.
pub async fn run(ctx: HandlerContext) -> HandlerExit {
    let params = PortParameters::from_value(&ctx.properties);
    let mode = params::choose(&params, &ctx.agent_version);
    tracing::debug!(?params, ?mode, agent_version = %ctx.agent_version, "port session");
    match mode {
        Mode::Stdio => stdio::run(ctx).await,
        Mode::Basic | Mode::Mux { .. } => {
            let endpoint = match params.endpoint() {
                Ok(e) => e,
                Err(e) => return cannot_start(Exit::Usage, &e),
            };
            // A forward restarted in a new session (or a SOCKS5 destination) keeps its listener.
            let kept = lock(&ctx.listener).clone();
            let listener = match kept {
                Some(l) => l,
                None => {
                    match listen::Listener::open(&endpoint, ctx.bind_address.as_deref()).await {
                        Ok(l) => {
                            let l = std::sync::Arc::new(l);
                            *lock(&ctx.listener) = Some(l.clone());
                            l
                        }
                        Err(listen::OpenError::Usage(e)) => return cannot_start(Exit::Usage, &e),
                        Err(listen::OpenError::Io(e)) => return cannot_start(Exit::Io, &e),
                    }
                }
            };
            match mode {
                Mode::Mux { keep_alive } => mux::run(ctx, listener, keep_alive).await,
                _ => basic::run(ctx, listener).await,
            }
        }
    }
}

/// The slot's lock only guards a swap of one `Option`; a poisoned lock still holds a whole value.
fn lock(slot: &ListenerSlot) -> std::sync::MutexGuard<'_, Option<std::sync::Arc<Listener>>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// The forwarding cannot start: the session machine tells the agent and exits with `exit`.
fn cannot_start(exit: Exit, why: &str) -> HandlerExit {
    HandlerExit::Failed {
        exit,
        message: format!("\nCannot perform start session: {why}\n"),
    }
}
