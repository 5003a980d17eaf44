//! Basic port forwarding (agents up to 3.0.196.0): one local connection at a time, the
//! DisconnectToPort flag between connections, and the reference's listener lines.

mod port_common;

use std::time::Duration;

use port_common::*;

const DOC: &str = "AWS-StartPortForwardingSession";
const OLD_AGENT: &str = "3.0.196.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_echo_without_service_limits() {
    basic_echo_session(false, big_mib()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_and_one_connection_after_another() {
    let sim = sim(sim_config(true, OLD_AGENT)).await;
    let (dport, mut seen) = server("127.0.0.1", Behaviour::Echo).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let mut p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![],
        stdio: false,
    });
    let id = st.session_id.clone();
    let port = p.port(&id).await;
    for i in 0..3u64 {
        echo_through(port, 30 + i, 50_000).await;
        let at = recv_seen(&mut seen, T).await;
        assert_eq!(at.bytes, 50_000, "connection {i}");
    }
    let out = p.wait_for("Connection accepted", T).await;
    assert!(
        out.ends_with(&format!(
            "Port {port} opened for sessionId {id}.\nConnection accepted for session {id}.\n"
        )),
        "{out:?}"
    );
    p.signal(libc::SIGINT);
    assert!(p.wait(T).await.success());
    let out = p.stdout.text();
    assert!(
        out.contains(&format!(
            "Terminate signal received, exiting.\n\n\nExiting session with sessionId: {id}.\n\n"
        )),
        "{out:?}"
    );
    // The agent (2.3.722.0 and later) got the TerminateSession flag and ended the session.
    assert!(sim.wait_ended(&id, T).await.is_some());
    tokio::time::sleep(Duration::from_millis(10)).await;
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_local_reader_gets_everything_and_the_session_goes_on() {
    let sim = sim(sim_config(false, OLD_AGENT)).await;
    let len = 24 * MIB;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Source { seed: 33, len }).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let mut p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![("SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE", "0".to_string())],
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    stalled_download(&p, port, 33, len, Duration::from_secs(8)).await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "plugin still running"
    );
    p.signal(libc::SIGINT);
    assert!(p.wait(T).await.success());
    sim.shutdown();
}
