//! Settings read from the environment: the only configuration a plugin started by the AWS CLI
//! can receive. Every variable is documented in README.md ("Environment variables").

use std::time::Duration;

use crate::channel;

/// Comma-separated: `stderr` moves the `Starting session...`/`Exiting session...` lines to
/// stderr; `notices` shows the reconnection notices on stderr even when it is not a terminal.
pub const ENV_MESSAGES: &str = "SESSION_MANAGER_PLUGIN_MESSAGES";
/// Seconds of silence (either way) on the websocket before a ping; 0 turns the keepalive and
/// the liveness check off.
pub const ENV_KEEPALIVE: &str = "SESSION_MANAGER_PLUGIN_KEEPALIVE";
/// Seconds a ping may go unanswered before the link counts as dead and is resumed.
pub const ENV_LIVENESS_TIMEOUT: &str = "SESSION_MANAGER_PLUGIN_LIVENESS_TIMEOUT";
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
/// How many times in a row a port forward whose connection is lost for good is started again
/// as a new session, keeping its listener (default 5; 0 turns it off).
pub const ENV_PORT_RESTARTS: &str = "SESSION_MANAGER_PLUGIN_PORT_RESTARTS";
/// Default for [`ENV_PORT_RESTARTS`].
pub const DEFAULT_PORT_RESTARTS: u32 = 5;
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
    /// Reconnection notices on stderr even when it is not a terminal.
    pub notices: bool,
    /// The websocket's liveness checks; `None`: off.
    pub liveness: Option<crate::session::core::LivenessConfig>,
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
    /// New sessions a lost port forward may start in a row ([`ENV_PORT_RESTARTS`]).
    pub port_restarts: u32,
    /// Listener bind address (or host name) for port forwarding; `None` means loopback.
    pub bind_address: Option<String>,
    /// One line per setting whose value could not be used, for stderr.
    pub warnings: Vec<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self::from_fn(|k| std::env::var(k).ok())
    }

    /// Reads from any lookup function (tests).
    pub fn from_fn(get: impl Fn(&str) -> Option<String>) -> Self {
        let mut warnings = Vec::new();
        // A number within `min..=max`; anything else is reported with the value used instead.
        let mut num = |k: &str, default: u64, min: u64, max: u64, unit: &str| -> u64 {
            let Some(raw) = get(k).filter(|v| !v.trim().is_empty()) else {
                return default;
            };
            match raw.trim().parse::<u64>() {
                Ok(v) if (min..=max).contains(&v) => v,
                Ok(v) => {
                    let used = v.clamp(min, max);
                    warnings.push(format!(
                        "Warning: {k}={raw} is outside {min}..={max}{unit}; using {used}."
                    ));
                    used
                }
                Err(_) => {
                    warnings.push(format!(
                        "Warning: {k}={raw} is not a whole number{unit}; using the default {default}."
                    ));
                    default
                }
            }
        };
        let frame_rate = num(
            ENV_FRAME_RATE,
            u64::from(DEFAULT_FRAME_RATE),
            0,
            1_000_000,
            " (frames per second)",
        ) as u32;
        let payload_size = num(
            ENV_PAYLOAD_SIZE,
            DEFAULT_PAYLOAD_SIZE as u64,
            64,
            64 * 1024,
            " (bytes)",
        ) as usize;
        let give_up = Duration::from_secs(num(ENV_GIVE_UP, 300, 5, 24 * 3600, " (seconds)"));
        let reconnect_timeout = Duration::from_secs(num(
            ENV_RECONNECT_TIMEOUT,
            DEFAULT_RECONNECT_TIMEOUT.as_secs(),
            1,
            24 * 3600,
            " (seconds)",
        ));
        let start_timeout = Duration::from_secs(num(
            ENV_START_TIMEOUT,
            DEFAULT_START_TIMEOUT.as_secs(),
            1,
            24 * 3600,
            " (seconds)",
        ));
        let port_restarts = num(
            ENV_PORT_RESTARTS,
            u64::from(DEFAULT_PORT_RESTARTS),
            0,
            1000,
            " (attempts)",
        ) as u32;
        use crate::session::core::liveness;
        let keepalive = num(
            ENV_KEEPALIVE,
            liveness::DEFAULT_KEEPALIVE.as_secs(),
            0,
            3600,
            " (seconds)",
        );
        let liveness_timeout = num(
            ENV_LIVENESS_TIMEOUT,
            liveness::DEFAULT_TIMEOUT.as_secs(),
            1,
            3600,
            " (seconds)",
        );
        let liveness = (keepalive > 0).then(|| crate::session::core::LivenessConfig {
            keepalive: Duration::from_secs(keepalive),
            timeout: Duration::from_secs(liveness_timeout),
        });
        let mut messages_to_stderr = false;
        let mut notices = false;
        let raw_messages = get(ENV_MESSAGES).unwrap_or_default();
        for v in raw_messages
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            match v.to_ascii_lowercase().as_str() {
                "stderr" => messages_to_stderr = true,
                "stdout" => messages_to_stderr = false,
                "notices" => notices = true,
                _ => warnings.push(format!(
                    "Warning: {ENV_MESSAGES}={raw_messages}: {v:?} is none of stdout, stderr, notices; ignored."
                )),
            }
        }
        let log = get(ENV_LOG).filter(|v| !v.is_empty());
        if let Some(l) = &log {
            if log_filter(l).is_none() {
                warnings.push(format!(
                    "Warning: {ENV_LOG}={l} is not a log level or filter (error, warn, info, debug, trace); using warn."
                ));
            }
        }
        Self {
            messages_to_stderr,
            notices,
            liveness,
            log,
            log_file: get(ENV_LOG_FILE).filter(|v| !v.is_empty()),
            frame_rate,
            payload_size,
            give_up,
            reconnect_timeout,
            start_timeout,
            port_restarts,
            allowed_hosts: get(crate::transport::allow::ENV_ALLOWED_HOSTS)
                .filter(|v| !v.trim().is_empty()),
            bind_address: [ENV_BIND_ADDRESS, ENV_BIND_ADDRESS_AWS]
                .iter()
                .filter_map(|k| get(k))
                .map(|v| v.trim().to_owned())
                .find(|v| !v.is_empty()),
            warnings,
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

/// The AWS SDK's crates, whose warnings are off by default (see [`init_logging`]).
const SDK_LOG_TARGETS: &[&str] = &[
    "aws_config",
    "aws_runtime",
    "aws_sdk_ssm",
    "aws_sdk_kms",
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_http_client",
    "aws_credential_types",
];

/// The filter of `SESSION_MANAGER_PLUGIN_LOG`: comma-separated `LEVEL` or `TARGET=LEVEL`
/// directives, or `None` if any is neither. Checked here because `Targets` takes any word as
/// a target name, so a misspelt level ("debgu") would silently log nothing it asked for.
fn log_filter(text: &str) -> Option<tracing_subscriber::filter::Targets> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let target = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
    };
    let ok = text.split(',').all(|d| match d.split_once('=') {
        Some((t, l)) => target(t.trim()) && level(l),
        None => level(d),
    });
    if !ok {
        return None;
    }
    text.parse().ok()
}

/// Sets up logging: warnings and errors on stderr by default, or the level and file asked for.
/// Colour only on a terminal.
pub fn init_logging(env: &Env) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{filter_fn, FilterExt, Targets};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    // `Targets` ("debug", "info,ssm_plugin::channel=trace"): the level and per-target
    // directives users set, without EnvFilter's span and field matching and the regex engine it
    // brings (about 0.3 MB of code).
    let filter = env.log.as_deref().and_then(log_filter).unwrap_or_else(|| {
        // By default the AWS SDK's own warnings stay off stderr (errors still show): tools that
        // drive the plugin fail on any stderr byte (Ansible's aws_ssm connection), and the SDK
        // warns about things the AWS CLI passes over silently, such as AWS_CONFIG_FILE naming a
        // file that does not exist. SESSION_MANAGER_PLUGIN_LOG=warn (or any level) shows them.
        SDK_LOG_TARGETS.iter().fold(
            Targets::new().with_default(tracing::Level::WARN),
            |t, target| t.with_target(*target, tracing::Level::ERROR),
        )
    });
    // The cap only narrows what the level filter lets through, so its hint is "anything": the
    // combined hint is then the level filter's own, and tracing skips disabled call sites
    // (tungstenite's per-frame trace lines) before building them. Without it the combined hint
    // is unknown, i.e. TRACE, and about a tenth of a bulk transfer's instructions went to
    // formatting trace records only to throw them away.
    let cap = filter_fn(|m| !(leaky(m.target()) && *m.level() > tracing::Level::INFO))
        .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE);
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
    use super::{leaky, log_filter, Env};

    #[test]
    fn unusable_values_are_reported_with_the_value_used() {
        let env = Env::from_fn(|k| match k {
            "SESSION_MANAGER_PLUGIN_PAYLOAD_SIZE" => Some("10".into()),
            "SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT" => Some("soon".into()),
            "SESSION_MANAGER_PLUGIN_MESSAGES" => Some("screen".into()),
            "SESSION_MANAGER_PLUGIN_LOG" => Some("loud[".into()),
            "SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE" => Some("500".into()),
            _ => None,
        });
        assert_eq!(env.payload_size, 64);
        assert_eq!(env.reconnect_timeout.as_secs(), 120);
        assert_eq!(env.frame_rate, 500);
        let w = env.warnings.join("\n");
        assert_eq!(env.warnings.len(), 4, "{w}");
        assert!(
            w.contains(
                "SESSION_MANAGER_PLUGIN_PAYLOAD_SIZE=10 is outside 64..=65536 (bytes); using 64."
            ),
            "{w}"
        );
        assert!(w.contains("SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT=soon is not a whole number (seconds); using the default 120."), "{w}");
        assert!(w.contains("SESSION_MANAGER_PLUGIN_MESSAGES=screen"), "{w}");
        assert!(w.contains("SESSION_MANAGER_PLUGIN_LOG=loud["), "{w}");
        assert!(Env::from_fn(|_| None).warnings.is_empty());
        let env = Env::from_fn(|k| match k {
            "SESSION_MANAGER_PLUGIN_MESSAGES" => Some("stderr, notices".into()),
            "SESSION_MANAGER_PLUGIN_KEEPALIVE" => Some("0".into()),
            _ => None,
        });
        assert!(env.messages_to_stderr && env.notices && env.liveness.is_none());
        assert!(env.warnings.is_empty(), "{:?}", env.warnings);
        let env = Env::from_fn(|k| match k {
            "SESSION_MANAGER_PLUGIN_KEEPALIVE" => Some("4".into()),
            "SESSION_MANAGER_PLUGIN_LIVENESS_TIMEOUT" => Some("3".into()),
            _ => None,
        });
        let l = env.liveness.expect("on");
        assert_eq!((l.keepalive.as_secs(), l.timeout.as_secs()), (4, 3));
        assert!(!env.notices);
    }

    #[test]
    fn log_filters_are_levels_or_target_levels() {
        for good in [
            "debug",
            "TRACE",
            "off",
            "info,ssm_plugin::channel=trace",
            "warn, h2=off",
        ] {
            assert!(log_filter(good).is_some(), "{good}");
        }
        for bad in [
            "loud[",
            "debgu",
            "",
            "info,",
            "=debug",
            "ssm_plugin",
            "a b=info",
        ] {
            assert!(log_filter(bad).is_none(), "{bad}");
        }
        let f = log_filter("info,ssm_plugin::channel=trace").unwrap();
        assert!(f.would_enable("ssm_plugin::channel::send", &tracing::Level::TRACE));
        assert!(!f.would_enable("ssm_plugin::session", &tracing::Level::DEBUG));
    }

    #[test]
    fn leaky_targets_match_by_crate() {
        assert!(leaky("tungstenite::protocol"));
        assert!(leaky("tungstenite"));
        assert!(leaky("aws_smithy_runtime::client::orchestrator"));
        assert!(!leaky("tungstenite_extra"));
        assert!(!leaky("ssm_plugin::session"));
    }
}
