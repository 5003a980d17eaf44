//! Shell and command sessions without a terminal (CI, scripts, Ansible): stdin, stdout and
//! stderr are pipes.

mod shell_support;

use std::time::Duration;

use shell_support::*;

const LONG: Duration = Duration::from_secs(40);

/// A script of commands in, their output out; end of input ends the shell, status 0; the
/// status lines are on stdout, byte-identical to the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_in_output_out() {
    let sim = sim("sh").await;
    let s = start(&sim, None, &[]);
    let r = run_piped(
        &s,
        &[],
        b"echo one-$((1))\necho two-$((1+1))\nstty size\necho last-$((5))",
        LONG,
    )
    .await;
    assert_eq!(
        r.status,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    for want in ["one-1", "two-2", "last-5", "100 300"] {
        assert!(r.stdout.contains(want), "no {want:?} in:\n{}", r.stdout);
    }
    let id = &s.session_id;
    assert!(
        r.stdout
            .starts_with(&format!("\nStarting session with SessionId: {id}\n")),
        "{:?}",
        r.stdout
    );
    assert!(
        r.stdout
            .ends_with(&format!("\n\nExiting session with sessionId: {id}.\n\n")),
        "{:?}",
        r.stdout
    );
    sim.shutdown();
}

/// With bash (Amazon Linux's `sh`), a Ctrl-D that arrives while a command runs is turned into
/// a NUL by the pty and readline ignores it; the plugin sends another once the remote goes
/// quiet, so the session still ends after the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_input_ends_bash_after_a_slow_command() {
    if std::process::Command::new("bash")
        .arg("-c")
        .arg("true")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("skipped: no bash");
        return;
    }
    let sim = sim("bash").await;
    let s = start(&sim, None, &[]);
    let r = run_piped(&s, &[], b"sleep 1\necho done-$((3*3))\n", LONG).await;
    assert_eq!(
        r.status,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("done-9"), "{}", r.stdout);
    sim.shutdown();
}

/// SESSION_MANAGER_PLUGIN_MESSAGES=stderr: stdout carries only the remote output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lines_can_move_to_stderr() {
    let sim = sim("sh").await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[
            ("command", "echo only-this"),
            ("separateOutputStream", "true"),
        ],
    );
    let r = run_piped(
        &s,
        &[("SESSION_MANAGER_PLUGIN_MESSAGES", "stderr")],
        b"",
        LONG,
    )
    .await;
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout, "only-this\n");
    let id = &s.session_id;
    assert!(
        r.stderr
            .contains(&format!("\nStarting session with SessionId: {id}\n")),
        "{:?}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("\n\nExiting session with sessionId: {id}.\n\n")),
        "{:?}",
        r.stderr
    );
    sim.shutdown();
}

/// AWS-StartNonInteractiveCommand as its document declares it by default
/// (`separateOutputStream` "false"): the agent mixes stderr into the output, sends it once the
/// command is done, and no status, so the plugin can only exit 0 (as the real agent makes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_without_separate_streams_mixes_them_and_has_no_status() {
    let sim = sim("sh").await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[(
            "command",
            "sh -c 'echo out-$((1)); echo err-$((2)) >&2; exit 7'",
        )],
    );
    let r = run_piped(
        &s,
        &[("SESSION_MANAGER_PLUGIN_MESSAGES", "stderr")],
        b"",
        LONG,
    )
    .await;
    assert_eq!(
        r.status,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.stdout, "out-1\nerr-2\n");
    sim.shutdown();
}

/// NonInteractiveCommands with separate streams: stdout and stderr kept apart, the remote
/// exit code becomes ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_exit_code_and_streams() {
    let sim = sim("sh").await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[
            (
                "command",
                "sh -c 'echo out-$((1)); echo err-$((2)) >&2; exit 7'",
            ),
            ("separateOutputStream", "true"),
        ],
    );
    let r = run_piped(
        &s,
        &[("SESSION_MANAGER_PLUGIN_MESSAGES", "stderr")],
        b"",
        LONG,
    )
    .await;
    assert_eq!(
        r.status,
        Some(7),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.stdout, "out-1\n");
    assert!(r.stderr.contains("err-2"), "{}", r.stderr);
    assert!(!r.stderr.contains("EXIT_CODE"), "{}", r.stderr);
    sim.shutdown();
}

/// Ctrl-C from `kill` reaches a NonInteractiveCommands command (the agent signals it) and does
/// not end the plugin itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_interrupts_the_remote_command() {
    let sim = sim("sh").await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[(
            "command",
            "sh -c 'trap \"echo got-int; exit 5\" INT; echo armed; while :; do sleep 0.1; done'",
        ), ("separateOutputStream", "true")],
    );
    let r = run_piped_with(&s, &[], LONG, |pid, out| {
        if out.contains("armed") {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
            true
        } else {
            false
        }
    })
    .await;
    assert_eq!(
        r.status,
        Some(5),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("got-int"), "{}", r.stdout);
    sim.shutdown();
}
