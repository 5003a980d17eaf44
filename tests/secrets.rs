//! Planted secrets never leak: the session token, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
//! the bytes a user types or forwards are looked for in the log at every level, on stdout and
//! stderr, and in `/proc/PID/environ` and `/proc/PID/cmdline` while the session runs, with the
//! response handed over in argv and in the environment (the AWS CLI's two forms).

mod aws_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_support::{fast_config, response_json, Running, World, KEY, REGION, SECRET, TARGET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);
const SESSION_TOKEN: &str = "PlantedSessionTokenZX81ab9f3c2d1e0PlantedSessionToken";
const TYPED: &str = "typed-password-Qv7x";
const FORWARDED: &str = "forwarded-payload-Jk3p";

#[derive(Clone, Copy, Debug)]
enum Form {
    Argv,
    Environment,
}

fn command(
    world: &World,
    started: &agent_sim::Started,
    home: &Path,
    form: Form,
    level: &str,
    log: &Path,
) -> tokio::process::Command {
    let mut c =
        tokio::process::Command::new(PathBuf::from(env!("CARGO_BIN_EXE_session-manager-plugin")));
    let response = response_json(started);
    let first = match form {
        Form::Argv => response.clone(),
        Form::Environment => "AWS_SSM_START_SESSION_RESPONSE_planted".to_owned(),
    };
    c.arg(first)
        .arg(REGION)
        .arg("StartSession")
        .arg("")
        .arg(serde_json::json!({ "Target": TARGET }).to_string())
        .arg(world.api.url())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_KMS", world.api.url())
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("SESSION_MANAGER_PLUGIN_LOG", level)
        .env("SESSION_MANAGER_PLUGIN_LOG_FILE", log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Form::Environment = form {
        c.env("AWS_SSM_START_SESSION_RESPONSE_planted", response);
    }
    c
}

fn proc_file(pid: u32, name: &str) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/{name}")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\0', " ")
}

/// Where each secret shows up, if anywhere.
fn leaks(place: &str, text: &str, secrets: &[(&str, &str)]) -> Vec<String> {
    secrets
        .iter()
        .filter(|(_, s)| text.contains(s))
        .map(|(what, _)| format!("{what} in {place}"))
        .collect()
}

async fn echo_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

async fn run_one(world: &World, port_session: bool, form: Form, level: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plugin.log");
    let dest = echo_server().await;
    let started = if port_session {
        world.start_session(
            TARGET,
            Some("AWS-StartPortForwardingSession"),
            &[("portNumber", &dest.to_string()), ("localPortNumber", "0")],
        )
    } else {
        world.start_session(TARGET, None, &[])
    };
    let token = started.token_value.clone();
    let mut p = Running::spawn(command(world, &started, dir.path(), form, level, &log));
    let pid = p.pid().expect("running");
    if port_session {
        let port = p.port(&started.session_id, LIMIT).await;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(FORWARDED.as_bytes()).await.unwrap();
        let mut back = vec![0u8; FORWARDED.len()];
        tokio::time::timeout(LIMIT, s.read_exact(&mut back))
            .await
            .expect("echo")
            .unwrap();
        assert_eq!(back, FORWARDED.as_bytes());
    } else {
        p.write(format!("echo {TYPED}-$((1+1))\n").as_bytes()).await;
        p.wait_stdout(&format!("{TYPED}-2"), LIMIT).await;
    }
    let environ = proc_file(pid, "environ");
    let cmdline = proc_file(pid, "cmdline");
    assert!(cmdline.contains("StartSession"), "{cmdline}");
    if port_session {
        p.signal(libc::SIGINT);
    } else {
        p.write(b"exit\n").await;
    }
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    if matches!(level, "debug" | "trace") {
        assert!(!log_text.is_empty(), "a log at {level}");
    }
    let secrets = [
        ("the session token", token.as_str()),
        ("the start of the session token", &token[..24]),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN),
    ];
    let payloads = [("typed input", TYPED), ("forwarded bytes", FORWARDED)];
    let mut found = Vec::new();
    let tag = format!(
        "[{} {form:?} {level}] ",
        if port_session { "port" } else { "shell" }
    );
    found.extend(leaks("the log", &log_text, &secrets));
    found.extend(leaks("the log", &log_text, &payloads));
    found.extend(leaks("stdout", &out.stdout, &secrets));
    found.extend(leaks("stderr", &out.stderr, &secrets));
    found.extend(leaks("stderr", &out.stderr, &payloads));
    found.extend(leaks("/proc/PID/environ", &environ, &secrets));
    found.extend(leaks("/proc/PID/cmdline", &cmdline, &secrets));
    // For the record (`--nocapture`): what was searched, and how much.
    eprintln!(
        "{tag}log {} B, stdout {} B, stderr {} B, environ {} B, cmdline {} B: {} found",
        log_text.len(),
        out.stdout.len(),
        out.stderr.len(),
        environ.len(),
        cmdline.len(),
        found.len()
    );
    found.into_iter().map(|f| format!("{tag}{f}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_nowhere_at_any_level_in_either_form() {
    let world = World::start(fast_config()).await;
    let mut found = Vec::new();
    for level in ["error", "warn", "info", "debug", "trace"] {
        for form in [Form::Argv, Form::Environment] {
            for port in [false, true] {
                found.extend(run_one(&world, port, form, level).await);
            }
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}
