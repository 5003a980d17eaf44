//! The session's edges, end to end: leaving during an outage, telling the agent when we go, and
//! every row of README.md's exit-code table, each run through the real binary against the
//! simulator, the fake AWS API, or a scripted websocket peer on loopback.

mod aws_support;
mod shell_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_sim::api::Fault;
use aws_support::{fast_config, plugin, Home, Running, World, KEY, SECRET, TARGET};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(40);
/// The issue's bound for acting on `~.`, Ctrl-C, SIGTERM or SIGHUP (2 s), plus room for a
/// loaded CI machine running a debug build.
const QUICK: Duration = Duration::from_secs(4);

/// The plugin on a pseudo-terminal, its SSM and KMS calls going to the fake API with the test
/// keys from the environment.
fn pty_plugin(world: &World, started: &agent_sim::Started) -> shell_support::PtyPlugin {
    let api = world.api.url();
    let env = [
        ("AWS_ENDPOINT_URL_SSM", api.as_str()),
        ("AWS_ENDPOINT_URL_KMS", api.as_str()),
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ];
    shell_support::PtyPlugin::spawn(started, (80, 24), &env)
}

/// A ResumeSession that keeps failing with a retryable 500 after the websocket was cut.
async fn cut_with_failing_resume(world: &World, id: &str) {
    world.api.set_fault(
        "ResumeSession",
        Fault::error(
            500,
            "InternalServerError",
            "the service is having a bad day",
        ),
    );
    assert!(world.sim.cut(id), "a client was connected");
    world
        .api
        .wait_for_requests("ResumeSession", 1, Duration::from_secs(20))
        .await
        .expect("the plugin tries to resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_during_an_outage_ends_the_session_at_once_and_at_the_agent() {
    let world = World::start(fast_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let mut p = pty_plugin(&world, &started);
    p.run("echo ready-$((6*7))", "ready-42").await;
    cut_with_failing_resume(&world, &started.session_id).await;
    let t0 = Instant::now();
    p.type_bytes(b"\r~.");
    let code = p.wait_exit(QUICK).await;
    assert_eq!(
        code,
        Some(0),
        "ended {:?} after ~.; screen:\n{}",
        t0.elapsed(),
        p.text()
    );
    eprintln!("~. during an outage ended the plugin in {:?}", t0.elapsed());
    assert!(
        !world.calls("TerminateSession").is_empty(),
        "the agent must be told (no link: the API)"
    );
    assert!(world
        .sim
        .wait_ended(&started.session_id, Duration::from_secs(10))
        .await
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_an_outage_ends_a_port_session() {
    let world = World::start(fast_config()).await;
    let started = world.start_session(
        TARGET,
        Some("AWS-StartPortForwardingSession"),
        &[("portNumber", "22"), ("localPortNumber", "0")],
    );
    let home = Home::with_keys("default", KEY, SECRET);
    let p = Running::spawn(plugin(
        &world,
        &started,
        &home,
        "",
        TARGET,
        &world.api.url(),
    ));
    p.port(&started.session_id, Duration::from_secs(20)).await;
    cut_with_failing_resume(&world, &started.session_id).await;
    let t0 = Instant::now();
    p.signal(libc::SIGINT);
    let out = p.finish(QUICK).await;
    eprintln!(
        "SIGINT during an outage ended the plugin in {:?}",
        t0.elapsed()
    );
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains("Terminate signal received, exiting."),
        "{out}"
    );
    assert!(!world.calls("TerminateSession").is_empty(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_on_a_terminal_tells_the_agent_then_exits_129() {
    let world = World::start(fast_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let mut p = pty_plugin(&world, &started);
    let before = p.modes();
    p.run("echo ready-$((6*7))", "ready-42").await;
    assert_ne!(p.modes(), before, "raw mode while the session runs");
    // SAFETY: kill(2) on our child.
    assert_eq!(unsafe { libc::kill(p.pid(), libc::SIGHUP) }, 0);
    assert_eq!(p.wait_exit(QUICK).await, Some(129));
    assert_eq!(p.modes(), before, "the terminal is restored");
    assert_eq!(world.calls("TerminateSession").len(), 1);
    assert!(world
        .sim
        .wait_ended(&started.session_id, Duration::from_secs(10))
        .await
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_stdout_that_goes_away_ends_the_remote_command() {
    let world = World::start(fast_config()).await;
    let started = world.start_session(
        TARGET,
        Some("AWS-StartNonInteractiveCommand"),
        &[("command", "yes"), ("separateOutputStream", "true")],
    );
    let home = Home::with_keys("default", KEY, SECRET);
    let inner = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    let std = inner.as_std();
    // `plugin ... | head -c1`, the status of the pipeline being the plugin's.
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg("\"$@\" | head -c1 >/dev/null; echo \"plugin=${PIPESTATUS[0]}\"")
        .arg("_")
        .arg(std.get_program())
        .args(std.get_args())
        .env_clear()
        .envs(std.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("the pipeline ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.trim(), "plugin=0", "stderr:\n{stderr}");
    assert!(
        !stderr.contains("Cannot perform") && !stderr.contains("Error"),
        "a broken pipe is a quiet end:\n{stderr}"
    );
    assert!(world
        .sim
        .wait_ended(&started.session_id, Duration::from_secs(10))
        .await
        .is_some());
    assert!(!world.calls("TerminateSession").is_empty());
}

/// Runs the plugin with stdout on `/dev/full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_on_a_full_disk_is_an_error_not_a_silent_success() {
    let world = World::start(fast_config()).await;
    let started = world.start_session(
        TARGET,
        Some("AWS-StartNonInteractiveCommand"),
        &[
            ("command", "sh -c 'echo some-output; exit 3'"),
            ("separateOutputStream", "true"),
        ],
    );
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    cmd.stdout(std::fs::File::create("/dev/full").expect("/dev/full"));
    cmd.stdin(Stdio::null());
    // Not `output()`: it would put stdout back on a pipe.
    let child = cmd.spawn().expect("plugin starts");
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the plugin ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "stderr:\n{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
}

// ----- the exit-code table, row by row -----

/// A scripted websocket peer on loopback: accepts one connection, reads the plugin's
/// OpenDataChannelInput, then plays `script` (frames to send; `None` means "stay silent").
async fn scripted_peer(script: Vec<Vec<u8>>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://{}/v1/data-channel/s-1",
        listener.local_addr().unwrap()
    );
    let task = tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        let _open = ws.next().await;
        for frame in script {
            let _ = ws.send(Message::Binary(frame.into())).await;
        }
        // Keep the connection open (and read what comes) until the plugin goes.
        while let Some(Ok(_)) = ws.next().await {}
    });
    (url, task)
}

fn response(url: &str) -> String {
    serde_json::json!({"SessionId": "s-1", "TokenValue": "tok", "StreamUrl": url}).to_string()
}

/// Runs the binary with `args` in an empty environment (plus `env`), stdin closed.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_session-manager-plugin"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("the plugin ends")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn session_args(resp: &str) -> Vec<String> {
    vec![
        resp.to_owned(),
        "us-east-1".into(),
        "StartSession".into(),
        String::new(),
        serde_json::json!({"Target": TARGET}).to_string(),
        // An endpoint nobody listens on: TerminateSession fails fast and bounded.
        "http://127.0.0.1:9".into(),
    ]
}

#[tokio::test]
async fn exit_64_for_arguments_and_session_responses_we_cannot_use() {
    let (code, _, err) = run(&["a", "b"], &[]).await;
    assert_eq!(code, Some(64), "unknown operation: {err}");
    let (code, _, err) = run(&["{}", "us-east-1", "StopSession"], &[]).await;
    assert_eq!(code, Some(64), "invalid operation: {err}");
    let (code, _, err) = run(&[r#"{"SessionId":5}"#, "us-east-1", "StartSession"], &[]).await;
    assert_eq!(code, Some(64), "bad response: {err}");
    let args = session_args(&response("https://example.invalid/not-a-websocket"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args, &[]).await;
    assert_eq!(code, Some(64), "StreamUrl that is no ws/wss URL: {err}");
    assert!(err.contains("ws://"), "{err}");
    // A host that is not Session Manager never gets the token.
    let args = session_args(&response("wss://collector.example.com/v1/data-channel/s-1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args, &[]).await;
    assert_eq!(code, Some(64), "not a Session Manager host: {err}");
    assert!(
        err.contains("collector.example.com")
            && err.contains("SESSION_MANAGER_PLUGIN_ALLOWED_HOSTS"),
        "{err}"
    );
}

#[tokio::test]
async fn exit_69_when_the_service_cannot_be_reached() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/v1/data-channel/s-1", dead.local_addr().unwrap());
    drop(dead);
    let args = session_args(&response(&url));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args, &[]).await;
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn exit_69_when_the_agent_never_starts_the_session() {
    let (url, _peer) = scripted_peer(vec![]).await;
    let args = session_args(&response(&url));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args, &[("SESSION_MANAGER_PLUGIN_START_TIMEOUT", "1")]).await;
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("did not start the session within 1 seconds"),
        "{err}"
    );
}

#[tokio::test]
async fn exit_76_when_the_service_breaks_the_protocol() {
    use ssm_plugin::wire::{ClientMessage, MessageType, PayloadType, FLAG_ACK};
    let close = ClientMessage::new(
        MessageType::ChannelClosed,
        0,
        FLAG_ACK,
        PayloadType::NONE,
        bytes::Bytes::from_static(b"this is not JSON"),
        1_700_000_000_000,
        uuid::Uuid::new_v4(),
    )
    .encode();
    let (url, _peer) = scripted_peer(vec![close]).await;
    let args = session_args(&response(&url));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args, &[]).await;
    assert_eq!(code, Some(76), "{err}");
    assert!(err.contains("channel_closed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_0_n_69_77_129_143_through_the_simulator() {
    let world = World::start(fast_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    let spawn = |started: &agent_sim::Started| {
        Running::spawn(plugin(&world, started, &home, "", TARGET, &world.api.url()))
    };

    // 0: a normal end.
    let s = world.start_session(TARGET, None, &[]);
    let mut p = spawn(&s);
    p.write(b"exit\n").await;
    let out = p.finish(LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "normal end: {out}");

    // N: the remote command's status.
    let s = world.start_session(
        TARGET,
        Some("AWS-StartNonInteractiveCommand"),
        &[
            ("command", "sh -c 'exit 5'"),
            ("separateOutputStream", "true"),
        ],
    );
    let out = spawn(&s).finish(LIMIT).await;
    assert_eq!(out.status.code(), Some(5), "remote exit: {out}");

    // 69: the service refused the token.
    let mut s = world.start_session(TARGET, None, &[]);
    s.token_value = "not-the-token".into();
    let out = spawn(&s).finish(LIMIT).await;
    assert_eq!(out.status.code(), Some(69), "refused: {out}");

    // 129 and 143: SIGHUP and SIGTERM, after telling the agent.
    for (sig, code) in [(libc::SIGHUP, 129), (libc::SIGTERM, 143)] {
        let s = world.start_session(TARGET, None, &[]);
        let mut p = spawn(&s);
        p.write(b"echo up-$((1+1))\n").await;
        p.wait_stdout("up-2", LIMIT).await;
        p.signal(sig);
        let out = p.finish(QUICK).await;
        assert_eq!(out.status.code(), Some(code), "signal {sig}: {out}");
        assert!(world
            .sim
            .wait_ended(&s.session_id, Duration::from_secs(10))
            .await
            .is_some());
    }

    // 0 for Ctrl-C in a port session, 143 for SIGTERM there.
    for (sig, code) in [(libc::SIGINT, 0), (libc::SIGTERM, 143)] {
        let s = world.start_session(
            TARGET,
            Some("AWS-StartPortForwardingSession"),
            &[("portNumber", "22"), ("localPortNumber", "0")],
        );
        let p = spawn(&s);
        p.port(&s.session_id, LIMIT).await;
        p.signal(sig);
        let out = p.finish(QUICK).await;
        assert_eq!(out.status.code(), Some(code), "port, signal {sig}: {out}");
        assert!(world
            .sim
            .wait_ended(&s.session_id, Duration::from_secs(10))
            .await
            .is_some());
    }

    // 64: port parameters that cannot be used.
    let s = world.start_session(
        TARGET,
        Some("AWS-StartPortForwardingSession"),
        &[("portNumber", "22"), ("localPortNumber", "not-a-port")],
    );
    let out = spawn(&s).finish(LIMIT).await;
    assert_eq!(out.status.code(), Some(64), "bad port parameters: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_77_when_kms_refuses_the_key() {
    let mut cfg = fast_config();
    cfg.kms_key_id = Some("alias/session-key".into());
    let world = World::start(cfg).await;
    world
        .api
        .set_fault("GenerateDataKey", Fault::access_denied());
    let s = world.start_session(TARGET, None, &[]);
    let home = Home::with_keys("default", KEY, SECRET);
    let out = Running::spawn(plugin(&world, &s, &home, "", TARGET, &world.api.url()))
        .finish(LIMIT)
        .await;
    assert_eq!(out.status.code(), Some(77), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_stderr_stays_quiet() {
    let world = World::start(fast_config()).await;
    let s = world.start_session(TARGET, None, &[]);
    let home = Home::empty();
    let mut cmd = plugin(&world, &s, &home, "", TARGET, &world.api.url());
    cmd.env_remove("SESSION_MANAGER_PLUGIN_LOG")
        .env_remove("SESSION_MANAGER_PLUGIN_LOG_FILE");
    let mut p = Running::spawn(cmd);
    p.write(b"echo up-$((1+1))\n").await;
    p.wait_stdout("up-2", LIMIT).await;
    // Ending tells the agent through the API, which cannot be signed here.
    p.signal(libc::SIGTERM);
    let out = p.finish(LIMIT).await;
    assert_eq!(out.status.code(), Some(143), "{out}");
    // One actionable line about the credentials, no SDK dump, no colour in a pipe.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("no credentials found (looked in:"),
        "{out}"
    );
    assert!(!out.stderr.contains('\x1b'), "{out}");
}
