//! What a first-time user tripped over (issue #21), each run through the real binary: output
//! that cannot be written, sessions refused before they start, forward specs read as ssh reads
//! them, config-file messages, signals before a session, wording.

mod aws_support;

use std::process::Stdio;
use std::time::Duration;

use aws_support::*;

const LIMIT: Duration = Duration::from_secs(40);

fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_session-manager-plugin"));
    let home = std::env::temp_dir().join("ssm-plugin-newcomer-home");
    let _ = std::fs::create_dir_all(&home);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join("xdg"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null());
    c
}

fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full")
}

/// A pipe whose reader is already gone.
fn closed_pipe() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills both descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors from pipe(2), owned once each.
    let (r, w) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(r);
    w
}

/// Every way the binary prints to stdout outside a session.
const PRINTERS: &[&[&str]] = &[
    &["--version"],
    &["--help"],
    &[],
    &["completions", "bash"],
    &["completions", "fish"],
    &["connect", "--help"],
    &["exec", "--help"],
];

#[test]
fn a_full_stdout_outside_a_session_is_one_line_and_74() {
    for args in PRINTERS {
        let out = bin()
            .args(*args)
            .stdout(dev_full())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(
            stderr.contains("cannot write to stdout") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_closed_reader_outside_a_session_is_a_quiet_success() {
    for args in PRINTERS {
        for _ in 0..3 {
            let out = bin()
                .args(*args)
                .stdout(closed_pipe())
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
            assert_eq!(stderr, "", "{args:?}");
        }
    }
}

/// A port session whose stdout is `out`: the status lines cannot be written.
async fn port_session_with_stdout(out: impl Into<Stdio>) -> (std::process::ExitStatus, String) {
    let world = World::start(fast_config()).await;
    let started = world.start_session(
        TARGET,
        Some("AWS-StartPortForwardingSession"),
        &[("portNumber", "22"), ("localPortNumber", "0")],
    );
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    cmd.stdout(out).stderr(Stdio::piped()).stdin(Stdio::null());
    let child = cmd.spawn().unwrap();
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the plugin ends by itself when its stdout fails")
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_session_with_a_full_stdout_ends_with_74_and_says_so() {
    let (status, stderr) = port_session_with_stdout(dev_full()).await;
    assert_eq!(status.code(), Some(74), "{stderr}");
    assert!(
        stderr.contains("cannot write the session's output"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_session_whose_reader_went_away_ends_quietly() {
    let (status, stderr) = port_session_with_stdout(closed_pipe()).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.trim(), "", "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refused_before_connecting_never_says_it_started() {
    let world = World::start(fast_config()).await;
    let mut started = world.start_session(TARGET, None, &[]);
    let home = Home::with_keys("default", KEY, SECRET);
    for url in [
        "wss://relay.corp.example/v1/data-channel/x",
        "https://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/x",
    ] {
        started.stream_url = url.to_owned();
        let out = Running::spawn(plugin(
            &world,
            &started,
            &home,
            "",
            TARGET,
            &world.api.url(),
        ))
        .finish(LIMIT)
        .await;
        assert_eq!(out.status.code(), Some(64), "{out}");
        assert!(!out.stdout.contains("Starting session"), "{out}");
        assert!(!out.stderr.contains("Starting session"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_files_that_do_not_exist_put_nothing_on_stderr() {
    let world = World::start(signed_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let home = Home::empty();
    let mut cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    // As a tool runs it: the default log level, no log file.
    cmd.env_remove("SESSION_MANAGER_PLUGIN_LOG")
        .env_remove("SESSION_MANAGER_PLUGIN_LOG_FILE")
        .env("AWS_CONFIG_FILE", home.path().join("no-such-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("no-such-credentials"),
        )
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET);
    let mut p = Running::spawn(cmd);
    p.write(b"echo files-$((40+2))\nexit\n").await;
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("files-42"), "{out}");
    assert_eq!(out.stderr, "", "nothing on stderr\n{out}");
}

#[test]
fn a_forward_spec_is_read_as_ssh_reads_it_and_the_error_shows_the_meant_form() {
    let out = bin()
        .args(["forward", "i-0123456789abcdef0", "-L", "127.0.0.1:8080:80"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("with three fields -L is LOCAL_PORT:HOST:REMOTE_PORT, as in ssh")
            && stderr.contains("write 127.0.0.1:8080::80"),
        "{stderr}"
    );
    let help = bin().args(["forward", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("BIND:LOCAL_PORT:HOST:REMOTE_PORT"), "{help}");
}

fn write_default_config(home: &Home, text: &str) {
    let dir = home.path().join("xdg/session-manager-plugin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tunnels_on_one_local_port_are_named_before_anything_binds() {
    let world = World::start(fast_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    write_default_config(
        &home,
        "[tunnels.a]\ntarget = \"i-0123456789abcdef0\"\nforward = [\"15432:db:5432\"]\n\
         [tunnels.b]\ntarget = \"i-0123456789abcdef0\"\nforward = [\"15432:db2:5432\"]\n",
    );
    let out = Running::spawn(standalone(&world, &home, &["tunnels"]))
        .finish(LIMIT)
        .await;
    assert_eq!(out.status.code(), Some(64), "{out}");
    assert!(
        out.stderr
            .contains("local port 15432: tunnel \"a\" and tunnel \"b\" both listen on it"),
        "{out}"
    );
    assert!(!out.stderr.contains("another program"), "{out}");
    assert!(world.calls("StartSession").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_default_config_does_not_stop_a_command_that_needs_none() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    write_default_config(&home, "[tunnels.a\n");
    let out = Running::spawn(standalone(
        &world,
        &home,
        &["exec", TARGET, "--", "echo", "fine"],
    ))
    .finish(LIMIT)
    .await;
    assert!(out.status.success(), "{out}");
    assert_eq!(out.stdout, "fine\n", "{out}");
    // A target that needs the aliases still reports the file, in one line, with 64.
    let out = Running::spawn(standalone(&world, &home, &["exec", "web-1", "--", "true"]))
        .finish(LIMIT)
        .await;
    assert_eq!(out.status.code(), Some(64), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains("config.toml:1:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_shaped_target_that_is_no_id_says_so() {
    let world = World::start(fast_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    let out = Running::spawn(standalone(
        &world,
        &home,
        &["exec", "i-bogus", "--", "true"],
    ))
    .finish(LIMIT)
    .await;
    assert_ne!(out.status.code(), Some(0), "{out}");
    assert!(
        out.stderr.contains("\"i-bogus\" is not a managed node id"),
        "{out}"
    );
}
