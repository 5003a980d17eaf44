//! Settings read from the environment: the only configuration a plugin started by the AWS CLI
//! can receive. Every variable is documented in README.md ("Environment variables").

use std::time::Duration;

use crate::channel;

/// Moves the `Starting session...`/`Exiting session...` lines to stderr when set to `stderr`.
pub const ENV_MESSAGES: &str = "SESSION_MANAGER_PLUGIN_MESSAGES";
/// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter string).
pub const ENV_LOG: &str = "SESSION_MANAGER_PLUGIN_LOG";
/// Log to this file instead of stderr.
pub const ENV_LOG_FILE: &str = "SESSION_MANAGER_PLUGIN_LOG_FILE";
/// Upper bound on data frames per second we send (the service ends sessions above ~1000/s).
pub const ENV_FRAME_RATE: &str = "SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE";
/// Payload size of data we send (default 1024, the agent's own; larger is untested against AWS).
pub const ENV_PAYLOAD_SIZE: &str = "SESSION_MANAGER_PLUGIN_PAYLOAD_SIZE";
/// Seconds an unacknowledged message may wait before we give up on the agent.
pub const ENV_GIVE_UP: &str = "SESSION_MANAGER_PLUGIN_RESEND_TIMEOUT";
/// Address port-forwarding listeners bind to instead of loopback (`0.0.0.0`, `::`, or one
/// address). Anything that can reach that address can then use the tunnel, with the target's
/// permissions: only for forwarding into containers or to trusted hosts.
pub const ENV_BIND_ADDRESS: &str = "SESSION_MANAGER_PLUGIN_BIND_ADDRESS";
/// The same setting under the name AWS's newer plugin reads (a host name or address); ours wins
/// when both are set.
pub const ENV_BIND_ADDRESS_AWS: &str = "SSM_PLUGIN_LOCAL_HOST";

/// Seconds we keep trying to resume a lost connection (ResumeSession + a new websocket) before
/// giving up (default 120).
pub const ENV_RECONNECT_TIMEOUT: &str = "SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT";
/// Seconds the agent has to start the session (send its handshake or first output).
pub const ENV_START_TIMEOUT: &str = "SESSION_MANAGER_PLUGIN_START_TIMEOUT";
/// Default for [`ENV_START_TIMEOUT`].
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Default for how long we try to resume a lost connection ([`ENV_RECONNECT_TIMEOUT`]).
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// The agent's StreamDataPayloadSize.
pub const DEFAULT_PAYLOAD_SIZE: usize = 1024;
pub use crate::channel::DEFAULT_FRAME_RATE;

/// Values read once at start.
#[derive(Debug, Clone)]
pub struct Env {
    /// Status lines on stderr.
    pub messages_to_stderr: bool,
    /// Log filter.
    pub log: Option<String>,
    /// Log file.
    pub log_file: Option<String>,
    /// Frames per second; 0 disables the limit.
    pub frame_rate: u32,
    /// Payload size.
    pub payload_size: usize,
    /// Give-up time.
    pub give_up: Duration,
    /// How long to try resuming a lost connection.
    pub reconnect_timeout: Duration,
    /// How long the agent has to start the session.
    pub start_timeout: Duration,
    /// Extra hosts the session token may be sent to (`SESSION_MANAGER_PLUGIN_ALLOWED_HOSTS`).
    pub allowed_hosts: Option<String>,
    /// Listener bind address (or host name) for port forwarding; `None` means loopback.
    pub bind_address: Option<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self::from_fn(|k| std::env::var(k).ok())
    }

    /// Reads from any lookup function (tests).
    pub fn from_fn(get: impl Fn(&str) -> Option<String>) -> Self {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<u64>().ok());
        Self {
            messages_to_stderr: get(ENV_MESSAGES).is_some_and(|v| v.eq_ignore_ascii_case("stderr")),
            log: get(ENV_LOG).filter(|v| !v.is_empty()),
            log_file: get(ENV_LOG_FILE).filter(|v| !v.is_empty()),
            frame_rate: num(ENV_FRAME_RATE).map_or(DEFAULT_FRAME_RATE, |v| v.min(1_000_000) as u32),
            payload_size: num(ENV_PAYLOAD_SIZE)
                .map_or(DEFAULT_PAYLOAD_SIZE, |v| (v as usize).clamp(64, 64 * 1024)),
            give_up: Duration::from_secs(num(ENV_GIVE_UP).unwrap_or(300).max(5)),
            reconnect_timeout: num(ENV_RECONNECT_TIMEOUT).map_or(DEFAULT_RECONNECT_TIMEOUT, |v| {
                Duration::from_secs(v.clamp(1, 24 * 3600))
            }),
            start_timeout: num(ENV_START_TIMEOUT).map_or(DEFAULT_START_TIMEOUT, |v| {
                Duration::from_secs(v.clamp(1, 24 * 3600))
            }),
            allowed_hosts: get(crate::transport::allow::ENV_ALLOWED_HOSTS)
                .filter(|v| !v.trim().is_empty()),
            bind_address: [ENV_BIND_ADDRESS, ENV_BIND_ADDRESS_AWS]
                .iter()
                .filter_map(|k| get(k))
                .map(|v| v.trim().to_owned())
                .find(|v| !v.is_empty()),
        }
    }

    /// The channel configuration these settings imply.
    pub fn channel_config(&self) -> channel::Config {
        channel::Config {
            give_up_after: self.give_up,
            frame_budget: (self.frame_rate > 0)
                .then(|| channel::FrameBudget::per_second(self.frame_rate)),
            seed: rand::random(),
            ..channel::Config::default()
        }
    }
}

/// Dependencies whose debug and trace output can carry secrets or session data: tungstenite
/// logs every frame (the OpenDataChannelInput with the token, every payload) and the upgrade
/// request (SigV4 `Authorization` and `x-amz-security-token`); the HTTP and signing stacks log
/// requests and canonical requests. They are capped at `info` whatever level is asked for; our
/// own logs never print a token, a key or payload bytes (only sizes).
pub const LEAKY_LOG_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_types",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio_rustls",
];

fn leaky(target: &str) -> bool {
    LEAKY_LOG_TARGETS
        .iter()
        .any(|t| target == *t || target.strip_prefix(t).is_some_and(|r| r.starts_with("::")))
}

/// Sets up logging: warnings and errors on stderr by default, or the level and file asked for.
/// Colour only on a terminal.
pub fn init_logging(env: &Env) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = EnvFilter::try_new(env.log.as_deref().unwrap_or("warn"))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let cap = filter_fn(|m| !(leaky(m.target()) && *m.level() > tracing::Level::INFO));
    let filter = filter.and(cap);
    if let Some(path) = &env.log_file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => {
                let layer = tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(false)
                    .with_writer(BoxMakeWriter::new(std::sync::Mutex::new(f)))
                    .with_filter(filter);
                let _ = tracing_subscriber::registry().with(layer).try_init();
                return;
            }
            Err(e) => eprintln!("Warning: cannot open the log file {path}: {e}; logging to stderr"),
        }
    }
    // On the user's stderr: one short line per message, no timestamps, colour on a terminal.
    let layer = tracing_subscriber::fmt::layer()
        .without_time()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

#[cfg(test)]
mod tests {
    use super::leaky;

    #[test]
    fn leaky_targets_match_by_crate() {
        assert!(leaky("tungstenite::protocol"));
        assert!(leaky("tungstenite"));
        assert!(leaky("aws_smithy_runtime::client::orchestrator"));
        assert!(!leaky("tungstenite_extra"));
        assert!(!leaky("ssm_plugin::session"));
    }
}
