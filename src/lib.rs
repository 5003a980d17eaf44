//! `session-manager-plugin`: a drop-in replacement for AWS's Session Manager plugin.
//!
//! Layers, with dependencies pointing one way (`wire` <- `channel` <- `smux` <- `session` <-
//! `cli`/`main`):
//! - [`wire`]: the binary ClientMessage codec and its JSON payloads. Pure.
//! - [`channel`]: the reliable, sequenced, acknowledged data channel as a sans-IO state machine
//!   driven with explicit time.
//! - [`smux`]: the stream multiplexer spoken inside port sessions with newer agents. Pure.
//! - [`transport`]: the websocket connection (TLS, proxy, timeouts).
//! - [`session`]: the tokio drivers that glue a channel to a terminal, a listener or stdio.
//! - [`aws`]: credentials, SigV4, KMS and ResumeSession through the AWS SDK.
//! - [`cli`]: the argv/environment contract the AWS CLI relies on.

pub mod aws;
pub mod channel;
pub mod cli;
pub mod config;
pub mod session;
pub mod smux;
pub mod transport;
pub mod wire;
