//! The argv and environment contract of `session-manager-plugin`, exactly as the AWS CLI
//! (`aws ssm start-session`, `aws ecs execute-command`) and tools such as Ansible's aws_ssm
//! connection call it.
//!
//! The contract is positional and its arity rules are the reference's own (no args = install
//! check, `--version`, 2-3 args = unknown operation, 4 = legacy form, 5-7 = current form), which
//! no argument-parsing crate (clap included) can express without fighting it; so this small
//! parser is written out here, and the rules are unit-tested one by one.

use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;

/// The AWS plugin release whose wire behaviour we implement: what `--version` prints and what we
/// send as ClientVersion. The AWS CLI passes the session response in an environment variable
/// only above 1.2.497.0 and warns below 1.2.764.0; the agent turns smux keep-alive off only for
/// clients above 1.2.331.0. Our own crate version is separate ([`CRATE_VERSION`]).
pub const WIRE_VERSION: &str = "1.2.764.0";

/// This implementation's own version, shown by `--help`.
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Prefix of the environment variable name the AWS CLI passes instead of the response JSON.
pub const RESPONSE_ENV_PREFIX: &str = "AWS_SSM_START_SESSION_RESPONSE";

/// The banner `aws ecs execute-command` expects from a bare call.
pub const INSTALLED_BANNER: &str =
    "\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n\n";

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// No arguments: the install check.
    Banner,
    /// `--version`.
    Version,
    /// `--help` / `-h` (our addition; the reference treats it as an unknown operation).
    Help,
    /// Start a session.
    Session(Box<SessionArgs>),
}

/// A secret string (the session token): never printed by `Debug` or `Display`, and zeroed in
/// memory when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The StartSession (or ECS ExecuteCommand `session`) response.
#[derive(Debug, Clone)]
pub struct StartSessionResponse {
    /// The session id.
    pub session_id: String,
    /// The data-channel token.
    pub token_value: Secret,
    /// The websocket URL.
    pub stream_url: String,
}

/// The StartSession request parameters the CLI passes as argv[5].
#[derive(Debug, Clone, Default)]
pub struct RequestParameters {
    /// Instance id, managed node id, or `ecs:<cluster>_<task>_<runtime>`.
    pub target: String,
    /// The SSM document, if any.
    pub document_name: Option<String>,
    /// The reason, if any.
    pub reason: Option<String>,
    /// Document parameters; values are lists of strings.
    pub parameters: BTreeMap<String, Vec<String>>,
}

/// Everything a session needs from argv.
#[derive(Debug, Clone)]
pub struct SessionArgs {
    /// The session response.
    pub response: StartSessionResponse,
    /// argv[2].
    pub region: String,
    /// argv[4]; `None` when empty.
    pub profile: Option<String>,
    /// argv[5], when given.
    pub parameters: Option<RequestParameters>,
    /// argv[6]; `None` when empty. The SSM endpoint for `aws ssm`, the ECS one for ECS Exec.
    pub endpoint: Option<String>,
    /// The 4-argument form of CLIs from before 2019: no profile, target or endpoint, and no KMS.
    pub legacy_cli: bool,
}

/// A command-line error: the reference's text, which we print on stderr before a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// 2 or 3 arguments that are not `--version`.
    #[error(
        "\nUnknown operation {0}. \nUse session-manager-plugin --version to check the version.\n"
    )]
    UnknownOperation(String),
    /// An operation other than StartSession.
    #[error("Invalid Operation")]
    InvalidOperation,
    /// The response or parameters could not be used.
    #[error("Cannot perform start session: {0}")]
    StartSession(String),
}

/// Parses argv (including argv[0]). `getenv` reads the environment; the caller removes the
/// response variable from the process environment afterwards ([`response_env_name`]).
pub fn parse(
    args: &[OsString],
    getenv: impl Fn(&str) -> Option<String>,
) -> Result<Invocation, CliError> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match args.len() {
        0 | 1 => return Ok(Invocation::Banner),
        2 if args[1] == "--version" => return Ok(Invocation::Version),
        2 if args[1] == "--help" || args[1] == "-h" => return Ok(Invocation::Help),
        2 | 3 => return Err(CliError::UnknownOperation(args[1].clone())),
        _ => {}
    }
    if args[3] != "StartSession" {
        return Err(CliError::InvalidOperation);
    }
    let raw_response = if args[1].starts_with(RESPONSE_ENV_PREFIX) {
        match getenv(&args[1]).filter(|v| !v.trim().is_empty()) {
            Some(v) => v,
            None => {
                return Err(CliError::StartSession(format!(
                    "the environment variable {} that should hold the StartSession response is not set or empty",
                    args[1]
                )))
            }
        }
    } else {
        args[1].clone()
    };
    let response = parse_response(&raw_response)?;
    let legacy_cli = args.len() == 4;
    let nonempty = |i: usize| args.get(i).filter(|s| !s.is_empty()).cloned();
    let parameters = match args.get(5) {
        Some(p) => Some(parse_parameters(p)?),
        None => None,
    };
    Ok(Invocation::Session(Box::new(SessionArgs {
        response,
        region: args[2].clone(),
        profile: if legacy_cli { None } else { nonempty(4) },
        parameters,
        endpoint: nonempty(6).map(|e| e.trim_end_matches('/').to_owned()),
        legacy_cli,
    })))
}

/// The name of the environment variable holding the response, if argv[1] is one; the caller
/// removes it so no child process ever sees the token.
pub fn response_env_name(args: &[OsString]) -> Option<String> {
    let a = args.get(1)?.to_string_lossy();
    (args.len() >= 4 && a.starts_with(RESPONSE_ENV_PREFIX)).then(|| a.into_owned())
}

/// Finds a key case-insensitively, as Go's JSON decoder does (SSM sends PascalCase, ECS camelCase).
fn get_ci<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn json_error(e: &serde_json::Error) -> String {
    if e.is_eof() {
        // The reference's (Go's) wording for an empty or cut-off document.
        "unexpected end of JSON input".to_owned()
    } else {
        format!("invalid JSON: {e}")
    }
}

/// Parses the StartSession response (argv[1] or the environment variable's value).
pub fn parse_response(raw: &str) -> Result<StartSessionResponse, CliError> {
    let v: Value = serde_json::from_str(raw).map_err(|e| CliError::StartSession(json_error(&e)))?;
    let obj = v.as_object().ok_or_else(|| {
        CliError::StartSession("the session response is not a JSON object".to_owned())
    })?;
    let field = |name: &str| -> Result<String, CliError> {
        match get_ci(obj, name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => Err(CliError::StartSession(
                format!("the session response has no {name}; pass the whole StartSession response"),
            )),
            Some(_) => Err(CliError::StartSession(format!(
                "{name} in the session response is not a string"
            ))),
        }
    };
    Ok(StartSessionResponse {
        session_id: field("SessionId")?,
        token_value: Secret::new(field("TokenValue")?),
        stream_url: field("StreamUrl")?,
    })
}

/// Parses argv[5], the StartSession request parameters.
pub fn parse_parameters(raw: &str) -> Result<RequestParameters, CliError> {
    let v: Value = serde_json::from_str(raw).map_err(|e| {
        CliError::StartSession(format!("the session parameters: {}", json_error(&e)))
    })?;
    let obj = v.as_object().ok_or_else(|| {
        CliError::StartSession("the session parameters are not a JSON object".to_owned())
    })?;
    let target = match obj.get("Target") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(CliError::StartSession(format!(
                "Target in the session parameters is not a string (it is {other})"
            )))
        }
        None => {
            return Err(CliError::StartSession(
                "the session parameters have no Target".to_owned(),
            ))
        }
    };
    let opt_str = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut parameters = BTreeMap::new();
    if let Some(Value::Object(p)) = obj.get("Parameters") {
        for (k, v) in p {
            let values = match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect(),
                Value::String(s) => vec![s.clone()],
                other => vec![other.to_string()],
            };
            parameters.insert(k.clone(), values);
        }
    }
    Ok(RequestParameters {
        target,
        document_name: opt_str("DocumentName"),
        reason: opt_str("Reason"),
        parameters,
    })
}

/// The `--help` text: our own version and the environment variables we read.
pub fn help_text() -> String {
    format!(
        "session-manager-plugin {CRATE_VERSION} (speaks the Session Manager protocol of AWS plugin {WIRE_VERSION})

A drop-in replacement for AWS's Session Manager plugin. It is started by the AWS CLI:
  aws ssm start-session --target i-0123456789abcdef0
  aws ecs execute-command --cluster C --task T --command sh --interactive

Direct use (what the AWS CLI runs):
  session-manager-plugin RESPONSE REGION StartSession [PROFILE [PARAMETERS [ENDPOINT]]]
  session-manager-plugin --version

Standalone use (no AWS CLI needed; `COMMAND --help` for each):
  session-manager-plugin connect TARGET            a shell (or any document)
  session-manager-plugin exec TARGET -- COMMAND    a command; exits with its status
  session-manager-plugin forward TARGET -L LPORT:[HOST:]RPORT [-D [BIND:]PORT]
  session-manager-plugin tunnels [NAME...]         named tunnels from the config file
  session-manager-plugin completions bash|zsh|fish|elvish|powershell

See README.md for the environment variables, exit codes and troubleshooting.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }
    fn noenv(_: &str) -> Option<String> {
        None
    }

    const RESP: &str =
        r#"{"SessionId": "s-1", "TokenValue": "tok", "StreamUrl": "wss://x/v1/data-channel/s-1"}"#;

    #[test]
    fn arity() {
        assert!(matches!(parse(&os(&["p"]), noenv), Ok(Invocation::Banner)));
        assert!(matches!(
            parse(&os(&["p", "--version"]), noenv),
            Ok(Invocation::Version)
        ));
        assert_eq!(
            parse(&os(&["p", "x"]), noenv).unwrap_err(),
            CliError::UnknownOperation("x".into())
        );
        assert_eq!(
            parse(&os(&["p", "x", "y"]), noenv).unwrap_err(),
            CliError::UnknownOperation("x".into())
        );
        assert_eq!(
            parse(&os(&["p", RESP, "us-east-1", "Other"]), noenv).unwrap_err(),
            CliError::InvalidOperation
        );
    }

    #[test]
    fn current_form_from_env() {
        let args = os(&[
            "p",
            "AWS_SSM_START_SESSION_RESPONSE",
            "eu-west-1",
            "StartSession",
            "",
            r#"{"Target": "i-1", "DocumentName": "AWS-StartPortForwardingSession", "Parameters": {"portNumber": ["80"]}}"#,
            "http://127.0.0.1:5/",
        ]);
        let Invocation::Session(s) = parse(&args, |k| {
            (k == "AWS_SSM_START_SESSION_RESPONSE").then(|| RESP.to_owned())
        })
        .unwrap() else {
            panic!("not a session")
        };
        assert_eq!(s.response.session_id, "s-1");
        assert_eq!(s.response.token_value.expose(), "tok");
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.profile, None);
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:5"));
        let p = s.parameters.unwrap();
        assert_eq!(p.target, "i-1");
        assert_eq!(p.parameters["portNumber"], vec!["80"]);
        assert!(!format!("{:?}", s.response).contains("tok\""));
        assert_eq!(
            response_env_name(&args).as_deref(),
            Some("AWS_SSM_START_SESSION_RESPONSE")
        );
    }

    #[test]
    fn ecs_camel_case_and_legacy() {
        let ecs = r#"{"sessionId": "ecs-1", "streamUrl": "wss://x", "tokenValue": "t"}"#;
        let Invocation::Session(s) =
            parse(&os(&["p", ecs, "us-east-1", "StartSession"]), noenv).unwrap()
        else {
            panic!()
        };
        assert!(s.legacy_cli);
        assert_eq!(s.response.session_id, "ecs-1");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse(
            &os(&[
                "p",
                "AWS_SSM_START_SESSION_RESPONSE_X",
                "r",
                "StartSession",
                "",
            ]),
            noenv,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Cannot perform start session: the environment variable AWS_SSM_START_SESSION_RESPONSE_X that should hold the StartSession response is not set or empty"
        );
        let e = parse(
            &os(&["p", r#"{"SessionId":"a"}"#, "r", "StartSession", ""]),
            noenv,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no TokenValue"), "{e}");
        let e = parse(&os(&["p", RESP, "r", "StartSession", "", "{}"]), noenv).unwrap_err();
        assert!(e.to_string().contains("no Target"), "{e}");
    }

    #[test]
    fn a_target_that_is_no_string_says_so() {
        let e = parse_parameters(r#"{"Target":5}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("Target in the session parameters is not a string (it is 5)"),
            "{e}"
        );
    }
}
