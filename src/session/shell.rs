//! Shell-like sessions (Standard_Stream, InteractiveCommands, NonInteractiveCommands): local
//! input goes to the remote as Output payloads, remote Output to stdout and StdErr to stderr.
//!
//! This is the plain stdio form: it works with pipes (CI, Ansible) as well as terminals.

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{FromAgent, HandlerContext, HandlerExit, ToAgent};
use crate::channel::Priority;
use crate::wire::PayloadType;

/// End-of-transmission: what a terminal sends for Ctrl-D. At local EOF we pass it on, so the
/// remote shell ends the way `ssh host < script` ends, after running everything before it.
const EOT: u8 = 0x04;

/// Runs the handler until the driver says the session is over.
pub async fn run(mut ctx: HandlerContext) -> HandlerExit {
    let to_agent = ctx.to_agent.clone();
    let max = ctx.max_payload;
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; max];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = to_agent
                        .send(ToAgent::Data {
                            payload_type: PayloadType::OUTPUT,
                            payload: Bytes::from_static(&[EOT]),
                            priority: Priority::Data,
                        })
                        .await;
                    break;
                }
                Ok(n) => {
                    let msg = ToAgent::Data {
                        payload_type: PayloadType::OUTPUT,
                        payload: Bytes::copy_from_slice(&buf[..n]),
                        priority: Priority::Data,
                    };
                    if to_agent.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(msg) = ctx.from_agent.recv().await {
        match msg {
            FromAgent::Message {
                payload_type,
                payload,
            } => {
                let r = match payload_type {
                    PayloadType::OUTPUT => {
                        stdout.write_all(&payload).await.and(stdout.flush().await)
                    }
                    PayloadType::STDERR | PayloadType::ERROR => {
                        stderr.write_all(&payload).await.and(stderr.flush().await)
                    }
                    // The exit code is read by the driver; Flags have no meaning for shells.
                    _ => Ok(()),
                };
                if r.is_err() {
                    // stdout is gone (a closed pipe): nobody can see the session any more.
                    break;
                }
            }
            FromAgent::End => break,
        }
    }
    input.abort();
    HandlerExit::default()
}
