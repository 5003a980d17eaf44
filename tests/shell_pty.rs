//! Shell and command sessions on a real pseudo-terminal, against the simulator's real shell.

mod shell_support;

use std::time::Duration;

use shell_support::*;

/// A command runs and its output shows; the very first `stty size` already shows the local
/// size; a resize reaches the remote; Ctrl-C (as a key, and as a signal from `kill`)
/// interrupts a remote `sleep` and the session lives on; `exit` ends the session with status
/// 0; the terminal settings are the same before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_on_a_terminal() {
    let sim = sim("sh").await;
    let s = start(&sim, None, &[]);
    let mut p = PtyPlugin::spawn(&s, (101, 33), &[]);
    let before = p.modes();
    p.expect(&format!(
        "Starting session with SessionId: {}",
        s.session_id
    ))
    .await;
    p.prompt_after(0).await;
    assert_ne!(
        p.modes(),
        before,
        "the terminal is in raw mode during the session"
    );
    p.run("stty size", "33 101").await;
    p.run("echo out-$((6*7))", "out-42").await;

    // Resize: SIGWINCH (or the poll) sends the new size; retry the check a few times, as the
    // new size and the typed command race inside the plugin.
    p.resize(120, 40);
    let mut resized = false;
    for _ in 0..10 {
        let mark = p.mark();
        p.type_bytes(b"stty size\r");
        if p.expect_after(mark, "40 120", Duration::from_secs(2)).await {
            resized = true;
            break;
        }
    }
    assert!(
        resized,
        "the new size never reached the remote:\n{}",
        p.text()
    );

    // Ctrl-C typed as a key.
    let mark = p.mark();
    p.type_bytes(b"sleep 30\r");
    assert!(p.expect_after(mark, "sleep 30", T).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.type_bytes(&[0x03]);
    p.run("echo alive-$((1+1))", "alive-2").await;

    // SIGINT from kill (ignored by the AWS CLI, replaced by the plugin's own handling).
    let mark = p.mark();
    p.type_bytes(b"sleep 31\r");
    assert!(p.expect_after(mark, "sleep 31", T).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(p.pid(), libc::SIGINT) }, 0);
    p.run("echo alive-$((1+2))", "alive-3").await;

    p.type_bytes(b"exit\r");
    let status = p.wait_exit(T).await;
    assert_eq!(status, Some(0), "output:\n{}", p.text());
    p.expect(&format!(
        "\r\n\r\nExiting session with sessionId: {}.\r\n\r\n",
        s.session_id
    ))
    .await;
    assert_eq!(p.modes(), before, "terminal settings restored");
    sim.shutdown();
}

/// `~.` ends a session whose remote ignores input (a NonInteractiveCommands `sleep`); `~?`
/// lists the escapes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tilde_dot_ends_a_session_that_ignores_input() {
    let sim = sim("sh").await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[
            ("command", "sh -c 'echo ready-$((2*2)); sleep 60'"),
            ("separateOutputStream", "true"),
        ],
    );
    let mut p = PtyPlugin::spawn(&s, (80, 24), &[]);
    let before = p.modes();
    p.expect("ready-4").await;
    // Ignored input, then a newline and the escape.
    p.type_bytes(b"hello\r");
    let mark = p.mark();
    p.type_bytes(b"~?");
    assert!(
        p.expect_after(mark, "~.  - end the session", T).await,
        "{}",
        p.text()
    );
    p.type_bytes(b"~.");
    let status = p.wait_exit(T).await;
    assert_eq!(status, Some(0), "output:\n{}", p.text());
    assert_eq!(p.modes(), before, "terminal settings restored");
    // The size the plugin sends first of all reached the agent during the handshake, which
    // drops it harmlessly (the command has no terminal).
    let st = sim.stats(&s.session_id).expect("stats");
    assert_eq!(st.discarded_during_handshake, 1);
    sim.shutdown();
}

/// SIGTERM restores the terminal and exits 143.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_restores_the_terminal() {
    let sim = sim("sh").await;
    let s = start(&sim, None, &[]);
    let mut p = PtyPlugin::spawn(&s, (80, 24), &[]);
    let before = p.modes();
    p.prompt_after(0).await;
    p.run("echo up-$((3*3))", "up-9").await;
    assert_ne!(p.modes(), before);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(p.pid(), libc::SIGTERM) }, 0);
    assert_eq!(p.wait_exit(T).await, Some(143));
    assert_eq!(p.modes(), before, "terminal settings restored");
    sim.shutdown();
}

/// A lost websocket that cannot be resumed (here: no credentials and no SSM endpoint for
/// ResumeSession) ends the session with an error, and the terminal is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_loss_restores_the_terminal() {
    let sim = sim("sh").await;
    let s = start(&sim, None, &[]);
    let mut p = PtyPlugin::spawn(
        &s,
        (80, 24),
        &[("SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT", "2")],
    );
    let before = p.modes();
    p.prompt_after(0).await;
    p.run("echo up-$((4*4))", "up-16").await;
    assert_ne!(p.modes(), before);
    assert!(sim.cut(&s.session_id), "the simulator cut the websocket");
    let status = p.wait_exit(Duration::from_secs(60)).await;
    assert!(
        matches!(status, Some(c) if c != 0),
        "status {status:?}, output:\n{}",
        p.text()
    );
    assert_eq!(p.modes(), before, "terminal settings restored");
    sim.shutdown();
}

/// InteractiveCommands: the command gets the keys and, by the time it has read them, the
/// local size (it starts before the plugin connects, so it cannot have it earlier); the end of
/// the command ends the session with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_command_on_a_terminal() {
    let sim = sim("sh").await;
    let s = start(
        &sim,
        Some("AWS-StartInteractiveCommand"),
        &[(
            "command",
            "sh -c 'printf \"name? \"; read n; stty size; echo \"hi-$n\"'",
        )],
    );
    let mut p = PtyPlugin::spawn(&s, (99, 31), &[]);
    let before = p.modes();
    p.expect("name? ").await;
    p.type_bytes(b"bob\r");
    p.expect("31 99").await;
    p.expect("hi-bob").await;
    assert_eq!(p.wait_exit(T).await, Some(0), "output:\n{}", p.text());
    assert_eq!(p.modes(), before, "terminal settings restored");
    sim.shutdown();
}
