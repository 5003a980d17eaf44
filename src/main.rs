//! `session-manager-plugin` entry point: every exit status is decided here, in one place.

use std::ffi::OsString;
use std::process::ExitCode;

use ssm_plugin::cli::{self, CliError, Invocation};
use ssm_plugin::session::{self, Ended, SessionError, Settings, Ui};
use ssm_plugin::{channel, config, transport};

/// Exit statuses (documented in README.md, "Exit codes").
mod exit {
    /// Session ended normally.
    pub const OK: u8 = 0;
    /// The service closed the session with an error message.
    pub const CLOSED_WITH_ERROR: u8 = 1;
    /// Wrong arguments or an unusable session response (sysexits EX_USAGE).
    pub const USAGE: u8 = 64;
    /// The service could not be reached, or the connection was lost for good (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// An internal error (EX_SOFTWARE).
    pub const SOFTWARE: u8 = 70;
    /// A local I/O error: terminal, socket, file (EX_IOERR).
    pub const IO: u8 = 74;
    /// The agent or service broke the protocol, or the handshake failed (EX_PROTOCOL).
    pub const PROTOCOL: u8 = 76;
    /// Encryption (KMS) was refused or failed (EX_NOPERM).
    pub const NOPERM: u8 = 77;
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let invocation = cli::parse(&args, |k| std::env::var(k).ok());
    if let Some(name) = cli::response_env_name(&args) {
        // Still single-threaded: no other thread can be reading the environment. Removing it
        // keeps the token away from every child process (ssh, shells) we may start.
        std::env::remove_var(name);
    }
    match invocation {
        Ok(Invocation::Banner) => {
            print!("{}", cli::INSTALLED_BANNER);
            ExitCode::from(exit::OK)
        }
        Ok(Invocation::Version) => {
            println!("{}", cli::WIRE_VERSION);
            ExitCode::from(exit::OK)
        }
        Ok(Invocation::Help) => {
            print!("{}", cli::help_text());
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(match e {
                CliError::UnknownOperation(_) | CliError::InvalidOperation => exit::USAGE,
                CliError::StartSession(_) => exit::USAGE,
            })
        }
        Ok(Invocation::Session(args)) => run_session(*args),
    }
}

fn run_session(args: cli::SessionArgs) -> ExitCode {
    let settings_env = config::Env::from_process();
    config::init_logging(&settings_env);
    let ui = Ui {
        to_stderr: settings_env.messages_to_stderr,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Cannot perform start session: cannot start the runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let session_id = args.response.session_id.clone();
    let url = url::Url::parse(&args.response.stream_url).ok();
    let settings = Settings {
        client_id: uuid::Uuid::new_v4(),
        ui,
        channel: settings_env.channel_config(),
        connect: transport::ConnectOptions {
            timeouts: transport::Timeouts::default(),
            proxy: url
                .as_ref()
                .and_then(|u| transport::proxy_for(u, |k| std::env::var(k).ok())),
            tls: transport::tls_config(),
            extra_headers: Vec::new(),
        },
        max_payload: settings_env.payload_size,
        aws: ssm_plugin::aws::Aws::new(&args),
        reconnect_timeout: settings_env.reconnect_timeout,
        args,
    };
    let result = runtime.block_on(session::run(settings));
    // Whatever happened (an error return leaves the shell handler unfinished), the terminal
    // goes back to how the user had it before anything below is printed.
    session::shell::restore_terminal();
    // Background tasks (stdin readers) must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(Ended::Closed { output, exit_code }) => {
            if output.is_empty() {
                ui.status(&format!(
                    "\n\nExiting session with sessionId: {session_id}.\n\n"
                ));
                ExitCode::from(exit_code.map_or(exit::OK, clamp_status))
            } else {
                ui.status(&format!("\n\nSessionId: {session_id} : {output}\n\n"));
                ExitCode::from(exit_code.map_or(exit::CLOSED_WITH_ERROR, clamp_status))
            }
        }
        Ok(Ended::Local { code }) => {
            ui.status(&format!(
                "\n\nExiting session with sessionId: {session_id}.\n\n"
            ));
            ExitCode::from(code.map_or(exit::OK, clamp_status))
        }
        Err(SessionError::SessionExpired(text)) => {
            // The reference's own words when ResumeSession says the session is over.
            eprintln!("\n{text}\n");
            ExitCode::from(exit::UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("\nCannot perform start session: {e}\n");
            ExitCode::from(match e {
                SessionError::Connect(_)
                | SessionError::ConnectionLost(_)
                | SessionError::SessionExpired(_) => exit::UNAVAILABLE,
                SessionError::Channel(channel::Error::TimedOut { .. }) => exit::UNAVAILABLE,
                SessionError::Channel(_) | SessionError::Protocol(_) => exit::PROTOCOL,
                SessionError::Encryption(_) => exit::NOPERM,
                SessionError::Io(_) => exit::IO,
            })
        }
    }
}

/// Exit statuses are 8 bits; a remote status outside 0..=255 is reported as the shell would.
fn clamp_status(code: i32) -> u8 {
    (code & 0xff) as u8
}
