//! The standalone commands: `connect`, `exec`, `forward`, `tunnels` and `completions`. They call
//! StartSession themselves (no AWS CLI or Python needed) and then run the very sessions the
//! drop-in form runs. The AWS CLI never passes these words as argv[1] (it passes a JSON
//! response or an environment variable name), so the drop-in contract is untouched.

mod forward;
mod socks;
pub mod spec;
pub mod target;
pub mod tunnels;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::aws::Aws;
use crate::cli::{RequestParameters, SessionArgs, StartSessionResponse};
use crate::config;
use crate::exit::Exit;
use crate::session::{self, Settings};
use crate::ui::{self, Ui};
use spec::{DynamicForward, LocalForward};

/// The words that select a standalone command as argv[1].
pub const COMMANDS: &[&str] = &["connect", "exec", "forward", "tunnels", "completions"];

/// Whether argv[1] names a standalone command.
pub fn is_command(arg: &std::ffi::OsStr) -> bool {
    arg.to_str().is_some_and(|a| COMMANDS.contains(&a))
}

/// Session Manager without the AWS CLI: shells, commands, port forwards, a SOCKS5 proxy and
/// named tunnels, through the same credentials and settings as the AWS CLI.
#[derive(Debug, Parser)]
#[command(
    name = "session-manager-plugin",
    version = crate::cli::CRATE_VERSION,
    after_help = "The drop-in form the AWS CLI runs is unchanged:\n  session-manager-plugin RESPONSE REGION StartSession [PROFILE [PARAMETERS [ENDPOINT]]]"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where and as whom the AWS calls go.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AwsOptions {
    /// AWS profile (default: AWS_PROFILE, else `default`).
    #[arg(long, global = true)]
    profile: Option<String>,
    /// AWS region (default: AWS_REGION, else the profile's).
    #[arg(long, global = true)]
    region: Option<String>,
    /// SSM endpoint URL (like the AWS CLI's --endpoint-url).
    #[arg(long = "endpoint-url", global = true, value_name = "URL")]
    endpoint_url: Option<String>,
    /// Config file with tunnels and target aliases (default:
    /// $XDG_CONFIG_HOME/session-manager-plugin/config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a shell (or any session document) on TARGET, as `aws ssm start-session` would.
    Connect {
        /// Instance or managed-node id, `ecs:CLUSTER_TASK_RUNTIMEID`, a Name tag value,
        /// `tag:KEY=VALUE`, or an alias from the config file.
        target: String,
        /// Session document (default: the account's shell document).
        #[arg(long, value_name = "NAME")]
        document: Option<String>,
        /// Document parameters as JSON, e.g. '{"portNumber":["80"]}'.
        #[arg(long, value_name = "JSON")]
        parameters: Option<String>,
        /// Reason recorded with the session.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        aws: AwsOptions,
    },
    /// Run COMMAND on TARGET without a terminal (AWS-StartNonInteractiveCommand) and exit with
    /// its status; its stdout and stderr stay apart.
    Exec {
        /// Instance or managed-node id, `ecs:CLUSTER_TASK_RUNTIMEID`, a Name tag value,
        /// `tag:KEY=VALUE`, or an alias from the config file.
        target: String,
        /// Session document (default: AWS-StartNonInteractiveCommand).
        #[arg(long, value_name = "NAME")]
        document: Option<String>,
        /// Reason recorded with the session.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
        #[command(flatten)]
        aws: AwsOptions,
    },
    /// Forward local ports to TARGET or through it, each forward its own session, and/or run a
    /// SOCKS5 proxy whose connections leave from TARGET.
    Forward {
        /// Instance or managed-node id, `ecs:CLUSTER_TASK_RUNTIMEID`, a Name tag value,
        /// `tag:KEY=VALUE`, or an alias from the config file.
        target: String,
        /// LOCAL_PORT:REMOTE_PORT, LOCAL_PORT:HOST:REMOTE_PORT or
        /// BIND:LOCAL_PORT:HOST:REMOTE_PORT (ssh's -L; three fields always name a HOST): listen
        /// on LOCAL_PORT (0: any free port) and forward to HOST:REMOTE_PORT as TARGET sees it
        /// (no or an empty HOST: TARGET itself, e.g. 127.0.0.1:8080::80). Repeatable.
        #[arg(short = 'L', value_name = "SPEC")]
        local: Vec<LocalForward>,
        /// [BIND:]PORT: a SOCKS5 proxy (CONNECT, no authentication, names resolved on the remote
        /// side); one session per destination, closed after --socks-idle. Repeatable.
        #[arg(short = 'D', value_name = "SPEC")]
        dynamic: Vec<DynamicForward>,
        /// Seconds a SOCKS5 destination's session may stay without connections before it is
        /// closed.
        #[arg(long, default_value_t = forward::DEFAULT_SOCKS_IDLE_SECS, value_name = "SECONDS")]
        socks_idle: u64,
        /// Reason recorded with the sessions.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        aws: AwsOptions,
    },
    /// Start named tunnels from the config file (all of them when none is named).
    Tunnels {
        /// Tunnel names.
        names: Vec<String>,
        /// List the tunnels and exit.
        #[arg(long)]
        list: bool,
        /// Seconds a SOCKS5 destination's session may stay idle.
        #[arg(long, default_value_t = forward::DEFAULT_SOCKS_IDLE_SECS, value_name = "SECONDS")]
        socks_idle: u64,
        #[command(flatten)]
        aws: AwsOptions,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A failure of a standalone command: the message and the status.
pub(crate) struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }
}

/// Runs a standalone command; `args` is the whole argv.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        // --help and --version are written by us, not clap: its print() ignores a failed
        // stdout, and its printing macros panic on one.
        Err(e) if !e.use_stderr() => {
            return ExitCode::from(ui::print_stdout(e.render().to_string().as_bytes()).code());
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(Exit::Usage.code());
        }
    };
    if let Command::Completions { shell } = cli.command {
        // Into memory first: clap_complete panics when its writer fails.
        let mut script = Vec::new();
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "session-manager-plugin",
            &mut script,
        );
        return ExitCode::from(ui::print_stdout(&script).code());
    }
    let env = config::Env::from_process();
    config::init_logging(&env);
    for w in &env.warnings {
        eprintln!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("session-manager-plugin: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Software.code());
        }
    };
    // Sessions are single-threaded futures; several of them (forwards) share this thread.
    let local = tokio::task::LocalSet::new();
    let exit = local.block_on(&runtime, run(cli.command, env));
    crate::term::restore();
    runtime.shutdown_background();
    ExitCode::from(exit.code())
}

async fn run(command: Command, env: config::Env) -> Exit {
    let result = match command {
        Command::Connect {
            target,
            document,
            parameters,
            reason,
            aws,
        } => connect(&env, &aws, &target, document, parameters, reason).await,
        Command::Exec {
            target,
            document,
            reason,
            command,
            aws,
        } => exec(&env, &aws, &target, document, reason, &command).await,
        Command::Forward {
            target,
            local,
            dynamic,
            socks_idle,
            reason,
            aws,
        } => {
            let plan = forward::Plan {
                target,
                local,
                dynamic,
                socks_idle: std::time::Duration::from_secs(socks_idle),
                reason,
            };
            match config_for(&aws, &plan.target) {
                Ok(cfg) => forward::run(&env, &aws, &cfg, vec![plan]).await,
                Err(f) => Err(f),
            }
        }
        Command::Tunnels {
            names,
            list,
            socks_idle,
            aws,
        } => tunnels(&env, &aws, &names, list, socks_idle).await,
        Command::Completions { .. } => Ok(Exit::Normal),
    };
    match result {
        Ok(exit) => exit,
        Err(f) => {
            eprintln!("session-manager-plugin: {}", f.message);
            f.exit
        }
    }
}

/// The config file (aliases, tunnels): the one named with --config, else the default one if it
/// exists.
fn load_config(aws: &AwsOptions) -> Result<tunnels::Config, Failure> {
    let (path, required) = match &aws.config {
        Some(p) => (p.clone(), true),
        None => match tunnels::default_path() {
            Some(p) => (p, false),
            None => return Ok(tunnels::Config::default()),
        },
    };
    tunnels::Config::load(&path, required).map_err(|e| Failure::new(Exit::Usage, e))
}

/// The config file for a command on `raw_target`: a default file that cannot be used does not
/// stop a command whose target needs no alias (a node id, `ecs:...`, `tag:K=V`); one named with
/// --config always must be usable.
fn config_for(aws: &AwsOptions, raw_target: &str) -> Result<tunnels::Config, Failure> {
    match load_config(aws) {
        Err(f) if aws.config.is_none() && target::is_literal(raw_target) => {
            tracing::debug!("the default config file is not used: {}", f.message);
            Ok(tunnels::Config::default())
        }
        r => r,
    }
}

/// The AWS context of a command, after the checks the AWS CLI makes before any call: the
/// profile named with --profile exists, and a region is known (--region, AWS_REGION, the
/// profile's) and well-formed. Both are the user's to fix, so they exit 64 before any request.
async fn api(aws: &AwsOptions) -> Result<std::sync::Arc<Aws>, Failure> {
    if let Some(p) = &aws.profile {
        crate::aws::check_profile(p)
            .await
            .map_err(|e| Failure::new(Exit::Usage, e))?;
    }
    let region = crate::aws::resolve_region(aws.region.as_deref(), aws.profile.as_deref())
        .await
        .map_err(|e| Failure::new(Exit::Usage, e))?;
    Ok(Aws::for_api(
        &region,
        aws.profile.as_deref(),
        aws.endpoint_url.as_deref(),
    ))
}

/// TARGET as a node id, through aliases and a tag look-up.
async fn resolve_target(
    raw: &str,
    aliases: &BTreeMap<String, String>,
    api: &Aws,
) -> Result<String, Failure> {
    let t = target::parse(raw, aliases).map_err(|e| Failure::new(Exit::Usage, e))?;
    target::resolve(&t, api)
        .await
        .map_err(|e| Failure::new(Exit::Unavailable, e))
}

/// Calls StartSession and makes the settings of the session it started.
pub(crate) async fn start(
    env: &config::Env,
    aws: &AwsOptions,
    api: &Aws,
    request: RequestParameters,
    ui: Ui,
) -> Result<Settings, Failure> {
    let (response, region): (StartSessionResponse, String) = api
        .start_session(&request)
        .await
        .map_err(|e| Failure::new(Exit::Unavailable, e))?;
    let args = SessionArgs {
        response,
        region,
        profile: aws.profile.clone(),
        parameters: Some(request),
        endpoint: aws.endpoint_url.clone(),
        legacy_cli: false,
    };
    Ok(Settings::new(args, env, ui))
}

fn parameters_json(raw: Option<String>) -> Result<BTreeMap<String, Vec<String>>, Failure> {
    let Some(raw) = raw else {
        return Ok(BTreeMap::new());
    };
    let v: serde_json::Value = serde_json::from_str(&raw)
        .map_err(|e| Failure::new(Exit::Usage, format!("--parameters is not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            "--parameters must be a JSON object, e.g. '{\"portNumber\":[\"80\"]}'",
        )
    })?;
    obj.iter()
        .map(|(k, v)| {
            let list = match v {
                serde_json::Value::String(s) => Some(vec![s.clone()]),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
            list.map(|l| (k.clone(), l)).ok_or_else(|| {
                Failure::new(
                    Exit::Usage,
                    format!("--parameters: {k} must be a string or a list of strings"),
                )
            })
        })
        .collect()
}

async fn connect(
    env: &config::Env,
    aws: &AwsOptions,
    raw_target: &str,
    document: Option<String>,
    parameters: Option<String>,
    reason: Option<String>,
) -> Result<Exit, Failure> {
    let cfg = config_for(aws, raw_target)?;
    let api = api(aws).await?;
    let target = resolve_target(raw_target, &cfg.aliases, &api).await?;
    let request = RequestParameters {
        target,
        document_name: document,
        reason,
        parameters: parameters_json(parameters)?,
    };
    let ui = Ui::new(env.messages_to_stderr, env);
    let settings = start(env, aws, &api, request, ui).await?;
    let (outcome, id) = session::run_forwarding(settings, env.port_restarts).await;
    crate::term::restore();
    session::print_end(ui, &id, &outcome);
    Ok(outcome.exit)
}

/// Quotes `word` for the remote shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

async fn exec(
    env: &config::Env,
    aws: &AwsOptions,
    raw_target: &str,
    document: Option<String>,
    reason: Option<String>,
    command: &[String],
) -> Result<Exit, Failure> {
    let cfg = config_for(aws, raw_target)?;
    let api = api(aws).await?;
    let target = resolve_target(raw_target, &cfg.aliases, &api).await?;
    let line = command
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    // ECS targets take only interactive commands (a terminal on the container).
    let document = document.unwrap_or_else(|| {
        if target.starts_with("ecs:") {
            ECS_EXEC_DOCUMENT.into()
        } else {
            EXEC_DOCUMENT.into()
        }
    });
    let (line, marker) = if document == EXEC_DOCUMENT {
        (line, None)
    } else {
        // The document reports no status: the node prints it behind a marker after the
        // command, which the session takes out of the output (`session::core::marker`).
        let marker = format!("__SSM_EXIT_{:016x}__:", rand::random::<u64>());
        let script = format!("{line}; s=$?; printf '\\n%s%d\\n' {marker} \"$s\"; exit \"$s\"");
        (format!("sh -c {}", shell_quote(&script)), Some(marker))
    };
    let mut parameters = BTreeMap::from([("command".to_owned(), vec![line])]);
    if document == EXEC_DOCUMENT {
        // AWS's document declares `separateOutputStream` (default "false"); only with it on does
        // the agent send stderr apart and the EXIT_CODE payload, so `exec` exits with the
        // remote status (agent `shell.go: processCommandsWithOutputStreamSeparate`). Off, it
        // mixes both streams into one file, sends it after the command ends, and no status.
        parameters.insert("separateOutputStream".to_owned(), vec!["true".to_owned()]);
    }
    let request = RequestParameters {
        target,
        document_name: Some(document),
        reason,
        parameters,
    };
    // Our status lines go to stderr: stdout is the command's alone.
    let ui = Ui::new(true, env);
    let mut settings = start(env, aws, &api, request, ui).await?;
    settings.status_marker = marker;
    let id = settings.args.response.session_id.clone();
    let outcome = session::run(settings).await;
    session::print_end(ui, &id, &outcome);
    Ok(outcome.exit)
}

/// The document `exec` runs by default.
const EXEC_DOCUMENT: &str = "AWS-StartNonInteractiveCommand";
/// The document `exec` runs on ECS targets, which allow only interactive commands.
const ECS_EXEC_DOCUMENT: &str = "AWS-StartInteractiveCommand";

async fn tunnels(
    env: &config::Env,
    aws: &AwsOptions,
    names: &[String],
    list: bool,
    socks_idle: u64,
) -> Result<Exit, Failure> {
    let cfg = load_config(aws)?;
    if cfg.files.is_empty() {
        let where_ = aws
            .config
            .clone()
            .or_else(tunnels::default_path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "$XDG_CONFIG_HOME/session-manager-plugin/config.toml".into());
        return Err(Failure::new(
            Exit::Usage,
            format!("no config file at {where_}; see README.md, \"Standalone use\""),
        ));
    }
    if list {
        let mut text = String::new();
        for (name, t) in &cfg.tunnels {
            let mut what: Vec<String> = t.forward.iter().map(|f| format!("-L {f}")).collect();
            what.extend(t.socks.iter().map(|d| format!("-D {d}")));
            let mut extra = String::new();
            if let Some(p) = &t.profile {
                extra.push_str(&format!(" profile={p}"));
            }
            if let Some(r) = &t.region {
                extra.push_str(&format!(" region={r}"));
            }
            text.push_str(&format!(
                "{name}\t{}\t{}{extra}\n",
                t.target,
                what.join(" ")
            ));
        }
        return Ok(ui::print_stdout(text.as_bytes()));
    }
    let chosen: Vec<(&String, &tunnels::Tunnel)> = if names.is_empty() {
        cfg.tunnels.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                cfg.tunnels.get_key_value(n).ok_or_else(|| {
                    Failure::new(
                        Exit::Usage,
                        format!(
                            "no tunnel named {n:?} in {}; `tunnels --list` shows them",
                            cfg.files
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    if chosen.is_empty() {
        return Err(Failure::new(Exit::Usage, "the config file has no tunnels"));
    }
    // Tunnels with their own profile/region run as their own group of forwards.
    let mut groups: Vec<(AwsOptions, Vec<forward::Plan>)> = Vec::new();
    let mut ports = Vec::new();
    for (name, t) in chosen {
        let (local, dynamic) = t.forwards().map_err(|e| Failure::new(Exit::Usage, e))?;
        ports.extend(
            local
                .iter()
                .map(|l| (format!("tunnel {name:?}"), l.bind.clone(), l.local_port)),
        );
        ports.extend(
            dynamic
                .iter()
                .map(|d| (format!("tunnel {name:?}"), d.bind.clone(), d.port)),
        );
        forward::distinct_ports(&ports)?;
        let a = AwsOptions {
            profile: t.profile.clone().or_else(|| aws.profile.clone()),
            region: t.region.clone().or_else(|| aws.region.clone()),
            endpoint_url: t.endpoint_url.clone().or_else(|| aws.endpoint_url.clone()),
            config: aws.config.clone(),
        };
        let plan = forward::Plan {
            target: t.target.clone(),
            local,
            dynamic,
            socks_idle: std::time::Duration::from_secs(socks_idle),
            reason: None,
        };
        match groups.iter_mut().find(|(g, _)| {
            g.profile == a.profile && g.region == a.region && g.endpoint_url == a.endpoint_url
        }) {
            Some((_, plans)) => plans.push(plan),
            None => groups.push((a, vec![plan])),
        }
    }
    if groups.len() == 1 {
        let (a, plans) = groups.remove(0);
        return forward::run(env, &a, &cfg, plans).await;
    }
    let runs = groups
        .iter()
        .map(|(a, plans)| forward::run(env, a, &cfg, plans.clone()));
    let results = futures_util::future::join_all(runs).await;
    let mut worst = Exit::Normal;
    for r in results {
        match r {
            Ok(e) if e != Exit::Normal => worst = e,
            Ok(_) => {}
            Err(f) => {
                eprintln!("session-manager-plugin: {}", f.message);
                worst = f.exit;
            }
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_for_the_remote_shell() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn parameters_take_strings_or_lists() {
        let p = parameters_json(Some(r#"{"a":"1","b":["2","3"]}"#.into()))
            .ok()
            .unwrap();
        assert_eq!(p["a"], vec!["1"]);
        assert_eq!(p["b"], vec!["2", "3"]);
        assert!(parameters_json(Some("[1]".into())).is_err());
        assert!(parameters_json(Some(r#"{"a":1}"#.into())).is_err());
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
