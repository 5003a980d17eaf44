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
mod listen;
mod mux;
pub mod params;
mod stdio;

use futures_util::StreamExt;

use super::{Finish, FromAgent, HandlerContext, HandlerExit, ToAgent};
use params::{Mode, PortParameters};

/// Exit status when the forwarding could not start or broke locally (sysexits EX_IOERR).
const EXIT_IO: i32 = 74;
/// Exit status when the agent broke the smux protocol (sysexits EX_PROTOCOL).
const EXIT_PROTOCOL: i32 = 76;

/// The reference's line on Ctrl-C / SIGTERM / SIGHUP.
const TERMINATE_LINE: &str = "Terminate signal received, exiting.\n";
/// The reference's line when the agent cannot reach the destination.
const CONNECT_ERROR_LINE: &str = "\nConnection to destination port failed, check SSM Agent logs.\n";

/// Runs a port session until the session ends.
pub async fn run(ctx: HandlerContext) -> HandlerExit {
    let params = PortParameters::from_value(&ctx.properties);
    let mode = params::choose(&params, &ctx.agent_version);
    tracing::debug!(?params, ?mode, agent_version = %ctx.agent_version, "port session");
    let signals = Interrupts::install();
    match mode {
        Mode::Stdio => stdio::run(ctx, signals).await,
        Mode::Basic | Mode::Mux { .. } => {
            let endpoint = match params.endpoint() {
                Ok(e) => e,
                Err(e) => return fail(ctx, &e, EXIT_IO).await,
            };
            let bind = crate::config::Env::from_process().bind_address;
            let listener = match listen::Listener::open(&endpoint, bind.as_deref()).await {
                Ok(l) => l,
                Err(e) => return fail(ctx, &e, EXIT_IO).await,
            };
            match mode {
                Mode::Mux { keep_alive } => mux::run(ctx, signals, listener, keep_alive).await,
                _ => basic::run(ctx, signals, listener).await,
            }
        }
    }
}

/// Ctrl-C, SIGTERM, SIGHUP and SIGQUIT. The AWS CLI starts us with SIGINT ignored, so handlers
/// are installed explicitly (installing one replaces an inherited "ignore").
struct Interrupts(Option<signal_hook_tokio::Signals>);

impl Interrupts {
    fn install() -> Self {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        match signal_hook_tokio::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT]) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                tracing::warn!(
                    "cannot install signal handlers ({e}); Ctrl-C will not end the session cleanly"
                );
                Self(None)
            }
        }
    }

    /// Waits for the next signal (forever when none could be installed).
    async fn recv(&mut self) {
        match self.0.as_mut() {
            Some(s) => {
                if s.next().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// Ends the session from our side and waits for the driver to finish it, discarding whatever
/// the agent still sends. Returning only when the driver closes our queue keeps the exit status
/// ours.
async fn finish(ctx: &mut HandlerContext, how: Finish) {
    let _ = ctx.to_agent.send(ToAgent::Finish(how)).await;
    while let Some(m) = ctx.from_agent.recv().await {
        if matches!(m, FromAgent::End) {
            break;
        }
    }
}

/// The session cannot go on: say why, end it, exit with `code`.
async fn fail(mut ctx: HandlerContext, why: &str, code: i32) -> HandlerExit {
    ctx.ui
        .warn(&format!("\nCannot perform start session: {why}\n"));
    finish(&mut ctx, Finish::Terminate).await;
    HandlerExit { code: Some(code) }
}
