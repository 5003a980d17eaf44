//! `session-manager-plugin`: a drop-in replacement for AWS's Session Manager plugin.
//!
//! Layers, with dependencies pointing one way (`wire` <- `channel` <- `smux` <- `session` <-
//! `main`); `exit`, `ui` and `config` are leaves everything may use, `cli` and `aws` sit below
//! `session` and `transport` beside it:
//! - [`wire`]: the binary ClientMessage codec and its JSON payloads. Pure.
//! - [`channel`]: the reliable, sequenced, acknowledged data channel as a sans-IO state machine
//!   driven with explicit time.
//! - [`smux`]: the stream multiplexer spoken inside port sessions with newer agents. Pure.
//! - [`session::core`]: the session lifecycle (start, outage, end, the exit status) as a sans-IO
//!   state machine above the channel.
//! - [`session`]: the thin tokio driver around it, and the handlers that glue it to a terminal,
//!   a listener or stdio (`session::shell`, `session::port`).
//! - [`transport`]: dialing the websocket (TLS, proxy, timeouts) and the live link.
//! - [`aws`]: credentials, SigV4, KMS, ResumeSession and TerminateSession through the AWS SDK.
//! - [`cli`]: the argv/environment contract the AWS CLI relies on; [`client`]: the standalone
//!   commands (`connect`, `exec`, `forward`, `tunnels`) that start sessions themselves.
//! - [`config`]: the `SESSION_MANAGER_PLUGIN_*` settings.
//! - [`exit`]: the one table of exit statuses; [`ui`]: the lines the user sees; [`term`]: the
//!   local terminal (raw mode, size) and its restore on every way out.

pub mod aws;
pub mod channel;
pub mod cli;
pub mod client;
pub mod config;
pub mod exit;
#[doc(hidden)]
pub mod fuzzing;
pub mod scrub;
pub mod session;
pub mod smux;
pub mod term;
pub mod transport;
pub mod ui;
pub mod wire;
