//! Port sessions (port forwarding, SSH over SSM).

use super::{Finish, HandlerContext, HandlerExit, ToAgent};

/// Runs a port session. Not implemented yet: ends the session with a clear message.
pub async fn run(ctx: HandlerContext) -> HandlerExit {
    ctx.ui
        .warn("Port sessions are not supported by this build yet.");
    let _ = ctx.to_agent.send(ToAgent::Finish(Finish::Terminate)).await;
    HandlerExit { code: Some(1) }
}
