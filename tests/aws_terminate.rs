//! Ending a session with the TerminateSession API when the agent cannot take the
//! TerminateSession flag: here a plain shell, whose agent sends no handshake (so no version),
//! ended with `~.` on a terminal. The credentials come from the environment and the SSM
//! endpoint from AWS_ENDPOINT_URL_SSM (argv ENDPOINT is empty), both through the SDK.

mod shell_support;

use std::sync::Arc;
use std::time::Duration;

use agent_sim::api::{serve, ApiOptions};
use shell_support::*;

const KEY: &str = "AKIDTERMINATETEST001";
const SECRET: &str = "terminate/test/secret/EXAMPLEKEY";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tilde_dot_without_an_agent_version_calls_terminate_session() {
    let sim = sim("sh").await;
    let api = serve(
        Arc::new(sim.backend()),
        ApiOptions::with_credentials(KEY, SECRET),
    )
    .await
    .expect("fake API");
    let s = start(&sim, None, &[]);
    let url = api.url();
    let mut p = PtyPlugin::spawn(
        &s,
        (80, 24),
        &[
            ("AWS_ACCESS_KEY_ID", KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_ENDPOINT_URL_SSM", &url),
        ],
    );
    let before = p.modes();
    p.prompt_after(0).await;
    p.run("echo up-$((5*5))", "up-25").await;
    p.type_bytes(b"\r~.");
    assert_eq!(p.wait_exit(T).await, Some(0), "output:\n{}", p.text());
    assert_eq!(p.modes(), before, "terminal settings restored");
    let calls = api
        .wait_for_requests("TerminateSession", 1, Duration::from_secs(5))
        .await
        .expect("TerminateSession was called");
    assert_eq!(calls[0].body["SessionId"], s.session_id.as_str());
    assert_eq!(calls[0].status, 200);
    assert_eq!(calls[0].signed_by.as_ref().unwrap().access_key_id, KEY);
    // The service ended the session on the agent's side too.
    assert!(sim
        .wait_ended(&s.session_id, Duration::from_secs(10))
        .await
        .is_some());
    sim.shutdown();
}
