//! The core path end to end: the real binary against the agent simulator, piped stdio.

mod support;

use std::time::Duration;
use support::*;

#[tokio::test]
async fn piped_shell_session_runs_a_script_and_exits_cleanly() {
    let sim = sim(fast_config()).await;
    let started = start(&sim, None, &[]);
    let home = tempfile::tempdir().unwrap();
    let cmd = plugin_command(&started, home.path());
    let out = run_piped(cmd, b"echo core-$((40+2))\nexit\n", Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "status {:?}\nstdout:{}\nstderr:{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.starts_with(&format!(
            "\nStarting session with SessionId: {}\n",
            started.session_id
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("core-42"), "{}", out.stdout);
    assert!(
        out.stdout.ends_with(&format!(
            "\n\nExiting session with sessionId: {}.\n\n",
            started.session_id
        )),
        "{:?}",
        out.stdout
    );
}

#[tokio::test]
async fn noninteractive_command_exit_code_and_stderr_pass_through() {
    let sim = sim(fast_config()).await;
    let started = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        // The agent splits the command into words and runs it without a shell.
        &[
            (
                "command",
                "sh -c 'echo out-line; echo err-line >&2; exit 3'",
            ),
            ("separateOutputStream", "true"),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let out = run_piped(
        plugin_command(&started, home.path()),
        b"",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout:{}\nstderr:{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("out-line"), "{}", out.stdout);
    assert!(!out.stdout.contains("err-line"), "{}", out.stdout);
    assert!(out.stderr.contains("err-line"), "{}", out.stderr);
}

#[tokio::test]
async fn a_rejected_token_is_a_clear_error_not_a_hang() {
    let sim = sim(fast_config()).await;
    let mut started = start(&sim, None, &[]);
    started.token_value = "wrong".into();
    let home = tempfile::tempdir().unwrap();
    let out = run_piped(
        plugin_command(&started, home.path()),
        b"",
        Duration::from_secs(30),
    )
    .await;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("Cannot perform start session"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("wrong"),
        "the token must not be echoed: {}",
        out.stderr
    );
}

#[tokio::test]
async fn an_unreachable_service_fails_fast_with_exit_69() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let started = agent_sim::Started {
        session_id: "s-unreachable".into(),
        token_value: "t".into(),
        stream_url: format!("ws://127.0.0.1:{port}/v1/data-channel/s-unreachable"),
    };
    let home = tempfile::tempdir().unwrap();
    let out = run_piped(
        plugin_command(&started, home.path()),
        b"",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.status.code(), Some(69), "{}", out.stderr);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
}

#[tokio::test]
async fn wss_with_ssl_cert_file_and_a_clear_error_without_it() {
    let sim = sim(agent_sim::SimConfig {
        tls: true,
        ..fast_config()
    })
    .await;
    let cert = sim.cert_file.clone().expect("the simulator wrote its CA");
    let home = tempfile::tempdir().unwrap();

    // Trusting the simulator's CA through SSL_CERT_FILE, as users behind TLS-inspecting proxies do.
    let started = start(&sim, None, &[]);
    assert!(
        started.stream_url.starts_with("wss://"),
        "{}",
        started.stream_url
    );
    let mut cmd = plugin_command(&started, home.path());
    cmd.env("SSL_CERT_FILE", &cert);
    let out = run_piped(cmd, b"echo tls-ok\nexit\n", Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "stdout:{}\nstderr:{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("tls-ok"), "{}", out.stdout);

    // Without it the certificate is unknown: a TLS error that names the fix, exit 69.
    let started = start(&sim, None, &[]);
    let mut cmd = plugin_command(&started, home.path());
    cmd.env("SSL_CERT_FILE", home.path().join("no-such-file.pem"));
    let out = run_piped(cmd, b"", Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(69), "{}", out.stderr);
    assert!(out.stderr.contains("TLS handshake"), "{}", out.stderr);
    assert!(out.stderr.contains("SSL_CERT_FILE"), "{}", out.stderr);
}
