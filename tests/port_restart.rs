//! A port forward whose session cannot be resumed (ResumeSession refused after a lost
//! websocket) carries on in a new session of the same request, on the same listener.

mod aws_support;
mod port_common;

use std::time::Duration;

use agent_sim::api::Fault;
use aws_support::*;
use port_common::{connect, echo_through, server, Behaviour};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOC: &str = "AWS-StartPortForwardingSession";
const STEP: Duration = Duration::from_secs(30);

/// Reads until the peer closes (or `limit` passes); returns what came.
async fn read_to_close(r: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(all)
}

async fn refused_resume_starts_a_new_session(agent_version: &str) {
    let mut cfg = unpaced_config();
    cfg.agent_version = agent_version.into();
    let world = World::start(cfg).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let params = [
        ("portNumber", dport.to_string()),
        ("localPortNumber", "0".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = world.start_session(TARGET, Some(DOC), &pairs);
    let id = started.session_id.clone();
    let request = serde_json::json!({
        "Target": TARGET,
        "DocumentName": DOC,
        "Parameters": {"portNumber": [dport.to_string()], "localPortNumber": ["0"]},
    });
    let home = Home::with_keys("default", KEY, SECRET);
    let cmd = plugin_request(&world, &started, &home, "", &request, &world.api.url());
    let p = Running::spawn(cmd);
    let port = p.port(&id, STEP).await;

    // A connection in the middle of a transfer when the session is lost.
    let mut old = connect("127.0.0.1", port).await;
    old.write_all(b"before the cut").await.unwrap();
    let mut buf = [0u8; 14];
    tokio::time::timeout(STEP, old.read_exact(&mut buf))
        .await
        .expect("echo before the cut")
        .unwrap();
    assert_eq!(&buf, b"before the cut");

    world.api.set_fault(
        "ResumeSession",
        Fault::error(400, "AccessDeniedException", "credentials expired"),
    );
    assert!(world.sim.cut(&id), "a client was connected");
    // The old session's connection is closed cleanly.
    let rest = read_to_close(&mut old, STEP).await;
    assert!(
        rest.is_some(),
        "the old connection was closed\n{}",
        p.stderr()
    );

    // The listener stays open throughout: a client arriving while the new session starts (it
    // waits a second first) is accepted and served by it.
    let (mut early_r, mut early_w) = connect("127.0.0.1", port).await.into_split();
    early_w
        .write_all(b"waited for the new session")
        .await
        .unwrap();

    let starts = world
        .api
        .wait_for_requests("StartSession", 1, STEP)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", p.stderr(), p.log_tail()));
    let body = &starts[0].body;
    assert_eq!(body["Target"], TARGET);
    assert_eq!(body["DocumentName"], DOC);
    assert_eq!(body["Parameters"], request["Parameters"]);
    assert!(starts[0].signed_by.as_ref().is_some_and(|s| s.verified));

    let mut got = vec![0u8; 26];
    tokio::time::timeout(STEP, early_r.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the early client is served\n{}\n{}",
                p.stderr(),
                p.log_tail()
            )
        })
        .unwrap();
    assert_eq!(&got, b"waited for the new session");
    drop((early_r, early_w));

    // New connections use the new session, byte for byte.
    echo_through(port, 9, 512 * 1024).await;
    let new_ids: Vec<String> = world
        .sim
        .session_ids()
        .into_iter()
        .filter(|s| *s != id)
        .collect();
    assert_eq!(new_ids.len(), 1, "{new_ids:?}");

    p.signal(libc::SIGTERM);
    let out = p.finish(STEP).await;
    assert_eq!(out.status.code(), Some(143), "{out}");
    assert!(out.stderr.contains("starting a new session"), "{out}");
    assert!(
        out.stdout
            .contains(&format!("Port {port} opened for sessionId {}.", new_ids[0])),
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("Exiting session with sessionId: {}.", new_ids[0])),
        "{out}"
    );
}

#[tokio::test]
async fn a_smux_forward_whose_resume_is_refused_continues_in_a_new_session() {
    refused_resume_starts_a_new_session("3.3.987.0").await;
}

#[tokio::test]
async fn a_basic_forward_whose_resume_is_refused_continues_in_a_new_session() {
    refused_resume_starts_a_new_session("3.0.196.0").await;
}

/// A drop-in port forward to an echo server with `SESSION_MANAGER_PLUGIN_PORT_RESTARTS` set to
/// `restarts`, once an echo went through it: the world, the plugin, the session id, and what
/// must live as long as the plugin (its HOME with the credentials, the echo server's handle).
async fn working_forward(
    restarts: &str,
) -> (
    World,
    Running,
    String,
    (
        Home,
        tokio::sync::mpsc::UnboundedReceiver<port_common::Seen>,
    ),
) {
    let world = World::start(unpaced_config()).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let started = world.start_session(TARGET, Some(DOC), &[("portNumber", &dport.to_string())]);
    let id = started.session_id.clone();
    let request = serde_json::json!({
        "Target": TARGET,
        "DocumentName": DOC,
        "Parameters": {"portNumber": [dport.to_string()]},
    });
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = plugin_request(&world, &started, &home, "", &request, &world.api.url());
    cmd.env("SESSION_MANAGER_PLUGIN_PORT_RESTARTS", restarts);
    let p = Running::spawn(cmd);
    let port = p.port(&id, STEP).await;
    echo_through(port, 3, 4096).await;
    (world, p, id, (home, _seen))
}

#[tokio::test]
async fn restarting_can_be_turned_off() {
    let (world, p, id, _keep) = working_forward("0").await;
    world.api.set_fault(
        "ResumeSession",
        Fault::error(400, "AccessDeniedException", "no"),
    );
    assert!(world.sim.cut(&id));
    let out = p.finish(STEP).await;
    assert_eq!(out.status.code(), Some(69), "{out}");
    assert!(out.stderr.contains("cannot be resumed"), "{out}");
    assert!(world.calls("StartSession").is_empty());
}

#[tokio::test]
async fn giving_up_says_no_new_session_started_when_none_did() {
    let (world, p, id, _keep) = working_forward("2").await;
    world.api.set_fault(
        "ResumeSession",
        Fault::error(400, "AccessDeniedException", "no"),
    );
    world.api.set_fault(
        "StartSession",
        Fault::error(400, "AccessDeniedException", "not allowed"),
    );
    assert!(world.sim.cut(&id));
    let out = p.finish(STEP).await;
    assert_eq!(out.status.code(), Some(69), "{out}");
    assert!(
        out.stderr
            .contains("Giving up: 2 attempts to start a new session failed"),
        "{out}"
    );
    // Lost after it had started: not a failure to start it.
    assert!(
        out.stderr.contains(&format!("Session {id} ended: ")),
        "{out}"
    );
    assert!(
        !out.stderr.contains("Cannot perform start session"),
        "{out}"
    );
}
