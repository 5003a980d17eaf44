//! stdin/stdout forwarding (`AWS-StartSSHSession` as an OpenSSH ProxyCommand): stdin goes to
//! the remote port, the remote port's bytes to stdout.
//!
//! At stdin EOF the session ends once the agent has acknowledged everything, the last message
//! being a TerminateSession flag (agents above 2.3.722.0) so the agent closes the destination at
//! once. The reference exits at once, can lose the tail, and leaves the session to time out.
//! When the remote side closes, the agent ends the session and the driver tells us.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::channel::Priority;
use crate::session::core::TERMINATE_FLAG_MIN_AGENT;
use crate::session::handshake::version_greater;
use crate::session::{FromAgent, HandlerContext, HandlerExit, ToAgent};
use crate::wire::{FlagValue, PayloadType};

/// Runs until the session ends.
pub async fn run(mut ctx: HandlerContext) -> HandlerExit {
    let to_agent = ctx.to_agent.clone();
    let max = ctx.max_payload;
    let terminate_flag = version_greater(&ctx.agent_version, TERMINATE_FLAG_MIN_AGENT);
    // The reader is a task because stdin reads cannot be cancelled; it owns the upload.
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = BytesMut::new();
        loop {
            let Ok(permit) = to_agent.reserve().await else {
                return;
            };
            buf.reserve(max);
            match (&mut stdin).take(max as u64).read_buf(&mut buf).await {
                Ok(0) => {
                    // The local side is done (ssh closed the tunnel): after everything sent so
                    // far, in sequence, ask the agent to end the session so it closes the
                    // destination at once instead of waiting for the service to notice.
                    if terminate_flag {
                        permit.send(ToAgent::Data {
                            payload_type: PayloadType::FLAG,
                            payload: Bytes::copy_from_slice(
                                &FlagValue::TerminateSession.to_payload(),
                            ),
                            priority: Priority::Data,
                        });
                        let _ = to_agent.send(ToAgent::InputEnded).await;
                    } else {
                        permit.send(ToAgent::InputEnded);
                    }
                    return;
                }
                Ok(_) => permit.send(ToAgent::Data {
                    payload_type: PayloadType::OUTPUT,
                    payload: buf.split().freeze(),
                    priority: Priority::Data,
                }),
                Err(e) => {
                    tracing::warn!("reading stdin failed: {e}; ending the session");
                    permit.send(ToAgent::InputEnded);
                    return;
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let exit = loop {
        match ctx.from_agent.recv().await {
            Some(FromAgent::Message {
                payload_type,
                payload,
            }) => {
                if payload_type != PayloadType::OUTPUT {
                    tracing::debug!(
                        "ignoring a {} payload in a stdio port session",
                        payload_type.name()
                    );
                    continue;
                }
                let mut r = stdout.write_all(&payload).await;
                // Flush when nothing else is waiting: batches writes under load, no latency
                // when idle.
                if r.is_ok() && ctx.from_agent.is_empty() {
                    r = stdout.flush().await;
                }
                if let Err(e) = r {
                    tracing::debug!("writing stdout failed: {e}; ending the session");
                    break crate::session::handler::output_error(&e);
                }
            }
            None => {
                let _ = stdout.flush().await;
                break HandlerExit::Done;
            }
        }
    };
    input.abort();
    exit
}
