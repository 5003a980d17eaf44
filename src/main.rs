//! `session-manager-plugin` entry point: parses argv, runs the session, and maps how it ended
//! to the process status through the one table in [`ssm_plugin::exit`].

use std::ffi::OsString;
use std::process::ExitCode;

use ssm_plugin::cli::{self, CliError, Invocation};
use ssm_plugin::config;
use ssm_plugin::exit::Exit;
use ssm_plugin::session::{self, Settings};
use ssm_plugin::ui::{self, Ui};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The standalone commands (`connect`, `exec`, ...): words the AWS CLI never passes.
    if args.len() >= 2 && ssm_plugin::client::is_command(&args[1]) {
        return ssm_plugin::client::main(args);
    }
    let invocation = cli::parse(&args, |k| std::env::var(k).ok());
    // Still single-threaded: the token and AWS secrets leave the blocks other processes can
    // read (/proc/PID/environ, /proc/PID/cmdline) and the response variable leaves our
    // environment, so no child process (ssh, shells) sees it either.
    ssm_plugin::scrub::secrets(cli::response_env_name(&args).as_deref());
    match invocation {
        Ok(Invocation::Banner) => {
            ExitCode::from(ui::print_stdout(cli::INSTALLED_BANNER.as_bytes()).code())
        }
        Ok(Invocation::Version) => {
            ExitCode::from(ui::print_stdout(format!("{}\n", cli::WIRE_VERSION).as_bytes()).code())
        }
        Ok(Invocation::Help) => {
            ExitCode::from(ui::print_stdout(cli::help_text().as_bytes()).code())
        }
        Err(e) => {
            eprintln!("{e}");
            let exit = match e {
                CliError::UnknownOperation(_) | CliError::InvalidOperation => Exit::Usage,
                CliError::StartSession(_) => Exit::Usage,
            };
            ExitCode::from(exit.code())
        }
        Ok(Invocation::Session(args)) => run_session(*args),
    }
}

fn run_session(args: cli::SessionArgs) -> ExitCode {
    let settings_env = config::Env::from_process();
    config::init_logging(&settings_env);
    for w in &settings_env.warnings {
        eprintln!("{w}");
    }
    let ui = Ui::new(settings_env.messages_to_stderr, &settings_env);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Cannot perform start session: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Software.code());
        }
    };
    let settings = Settings::new(args, &settings_env, ui);
    let (result, session_id) = runtime.block_on(session::run_forwarding(
        settings,
        settings_env.port_restarts,
    ));
    // Whatever happened (an error return leaves the shell handler unfinished), the terminal
    // goes back to how the user had it before anything below is printed.
    ssm_plugin::term::restore();
    // Background tasks (stdin readers) must not keep the process alive.
    runtime.shutdown_background();
    session::print_end(ui, &session_id, &result);
    ExitCode::from(result.exit.code())
}
