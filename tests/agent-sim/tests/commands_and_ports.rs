//! NonInteractiveCommands, handshakes, Port sessions (basic and smux), faults.

mod common;

use std::time::Duration;

use common::*;
use ssm_plugin::wire::{FlagValue, PayloadType};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noninteractive_separate_streams_and_exit_code() {
    let sim = sim(fast_config()).await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[
            ("command", "sh -c 'echo out; echo err 1>&2; exit 3'"),
            ("separateOutputStream", "true"),
        ],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    let req = c.handshake(NEW_CLIENT).await;
    let st = &req["RequestedClientActions"][0]["ActionParameters"];
    assert_eq!(st["SessionType"], "NonInteractiveCommands");
    assert!(st["Properties"].is_null());
    assert_eq!(req["RequestedClientActions"].as_array().unwrap().len(), 1);
    assert_eq!(c.handshake_complete().await, "");
    let (out, data) = c.until_closed(T).await;
    assert_eq!(out, "");
    let pick = |pt| -> String {
        data.iter()
            .filter(|m| m.payload_type == pt)
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    };
    assert_eq!(pick(PayloadType::OUTPUT), "out\n");
    assert_eq!(pick(PayloadType::STDERR), "err\n");
    let last = data.last().unwrap();
    assert_eq!(last.payload_type, PayloadType::EXIT_CODE);
    assert_eq!(ssm_plugin::wire::parse_exit_code(&last.payload), Some(3));
    assert_eq!(&last.payload[..], b"EXIT_CODE: 3");
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noninteractive_combined_and_old_client_warning() {
    let sim = sim(fast_config()).await;
    // Combined output: one Output stream, no StdErr, no ExitCode.
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[
            ("command", "sh -c 'echo out; echo err 1>&2; exit 3'"),
            ("separateOutputStream", "false"),
        ],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, "1.2.0.0").await;
    c.handshake("1.2.0.0").await;
    assert_eq!(c.handshake_complete().await, "");
    let (_, data) = c.until_closed(T).await;
    assert!(data.iter().all(|m| m.payload_type == PayloadType::OUTPUT));
    let text: String = data
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert!(text.contains("out\n") && text.contains("err\n"), "{text:?}");
    // Separate streams for a client <= 1.2.295: the agent's upgrade notice.
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[("command", "true"), ("separateOutputStream", "true")],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, "1.2.0.0").await;
    c.handshake("1.2.0.0").await;
    let msg = c.handshake_complete().await;
    assert!(
        msg.starts_with(
            "Please update session manager plugin version (minimum required version 1.2.312.0)"
        ),
        "{msg:?}"
    );
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_ends_the_session() {
    let mut cfg = fast_config();
    cfg.handshake_timeout = Duration::from_millis(800);
    let sim = sim(cfg).await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[("command", "true")],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    // Client data before the handshake completes is acked and thrown away.
    let junk = c.input(PayloadType::OUTPUT, b"ignored");
    let req = c.data(T).await.unwrap();
    assert_eq!(req.payload_type, PayloadType::HANDSHAKE_REQUEST);
    c.send_raw(junk.encode()).await;
    let (out, _) = c.until_closed(T).await;
    assert!(out.contains("Handshake timed out. Please ensure that you have the latest version of the session manager plugin."), "{out:?}");
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.discarded_during_handshake, 1);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_handshake_properties() {
    let sim = sim(fast_config()).await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            "AWS-StartPortForwardingSession",
            &[("portNumber", "43355")],
            r#"{"portNumber":"43355","type":"LocalPortForwarding"}"#,
        ),
        (
            "AWS-StartPortForwardingSession",
            &[("portNumber", "80"), ("localPortNumber", "9999")],
            r#"{"localPortNumber":"9999","portNumber":"80","type":"LocalPortForwarding"}"#,
        ),
        (
            "AWS-StartPortForwardingSessionToRemoteHost",
            &[("portNumber", "5432"), ("host", "127.0.0.1")],
            r#"{"host":"127.0.0.1","portNumber":"5432","type":"LocalPortForwarding"}"#,
        ),
        (
            "AWS-StartSSHSession",
            &[("portNumber", "22")],
            r#"{"portNumber":"22"}"#,
        ),
    ];
    for (doc, params, props) in cases {
        let s = start(&sim, Some(doc), params);
        let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
        let req = c.data(T).await.unwrap();
        let text = String::from_utf8(req.payload.to_vec()).unwrap();
        let expected = format!(
            r#"{{"AgentVersion":"3.3.987.0","RequestedClientActions":[{{"ActionType":"SessionType","ActionParameters":{{"SessionType":"Port","Properties":{props}}}}}]}}"#
        );
        assert_eq!(text, expected, "{doc}");
        let backend = sim.backend();
        agent_sim::SessionBackend::terminate_session(&backend, &s.session_id).unwrap();
    }
    let err = agent_sim::SessionBackend::start_session(
        &sim.backend(),
        spec(Some("AWS-NoSuchDocument"), &[]),
    )
    .unwrap_err();
    assert_eq!(err.code, "InvalidDocument");
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_basic_echo_disconnect_and_terminate() {
    let mut cfg = fast_config();
    cfg.agent_version = "3.0.0.0".into(); // an agent from before smux: basic forwarding
    let sim = sim(cfg).await;
    let port = echo_server().await;
    let s = start(
        &sim,
        Some("AWS-StartPortForwardingSession"),
        &[("portNumber", &port.to_string())],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    let req = c.handshake(NEW_CLIENT).await;
    assert_eq!(req["AgentVersion"], "3.0.0.0");
    c.handshake_complete().await;
    let data = pattern(3000, 1);
    for chunk in data.chunks(1024) {
        c.send(PayloadType::OUTPUT, chunk).await;
    }
    assert_eq!(read_port_bytes(&mut c, 3000).await, data);
    assert_eq!(sim.stats(&s.session_id).unwrap().port_mode, "basic");
    // DisconnectToPort closes the destination; the next data re-dials it.
    c.send(PayloadType::FLAG, &FlagValue::DisconnectToPort.to_payload())
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = pattern(500, 7);
    c.send(PayloadType::OUTPUT, &again).await;
    assert_eq!(read_port_bytes(&mut c, 500).await, again);
    c.send(PayloadType::FLAG, &FlagValue::TerminateSession.to_payload())
        .await;
    let (out, _) = c.until_closed(T).await;
    assert_eq!(out, "");
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.bytes_to_destination, 3500);
    assert_eq!(st.bytes_from_destination, 3500);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_mux_echo_fin_and_dial_failure() {
    let sim = sim(fast_config()).await;
    let port = echo_server().await;
    let s = start(
        &sim,
        Some("AWS-StartPortForwardingSession"),
        &[("portNumber", &port.to_string())],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.handshake(NEW_CLIENT).await;
    c.handshake_complete().await;
    // SYN + one 3000-byte PSH, written as a byte stream cut at 1024 like the plugin does.
    let data = pattern(3000, 3);
    let mut stream = smux(0, 3, &[]);
    stream.extend(smux(2, 3, &data));
    for chunk in stream.chunks(1024) {
        c.send(PayloadType::OUTPUT, chunk).await;
    }
    let mut buf = Vec::new();
    let mut echoed = Vec::new();
    while echoed.len() < 3000 {
        let m = c.data(T).await.unwrap();
        assert_eq!(m.payload_type, PayloadType::OUTPUT);
        assert!(m.payload.len() <= 1024);
        buf.extend_from_slice(&m.payload);
        for (cmd, sid, d) in smux_frames(&mut buf) {
            assert_eq!((cmd, sid), (2, 3), "only PSH on stream 3 so far");
            echoed.extend(d);
        }
    }
    assert_eq!(echoed, data);
    // Client FIN: the agent closes the destination and FINs the stream back.
    c.send(PayloadType::OUTPUT, &smux(1, 3, &[])).await;
    'fin: loop {
        let m = c.data(T).await.expect("FIN from the agent");
        buf.extend_from_slice(&m.payload);
        for (cmd, sid, _) in smux_frames(&mut buf) {
            if (cmd, sid) == (1, 3) {
                break 'fin;
            }
        }
    }
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.port_mode, "mux");
    assert_eq!(st.smux_frames_in, [1, 1, 1, 0]);
    assert_eq!(
        st.smux_nops_out, 0,
        "keep-alive is off for clients > 1.2.331.0"
    );
    c.send(PayloadType::FLAG, &FlagValue::TerminateSession.to_payload())
        .await;
    assert_eq!(c.until_closed(T).await.0, "");

    // A destination that refuses: Flag ConnectToPortError, then FIN of that stream.
    let closed = closed_port().await;
    let s = start(
        &sim,
        Some("AWS-StartPortForwardingSession"),
        &[("portNumber", &closed.to_string())],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.handshake(NEW_CLIENT).await;
    c.handshake_complete().await;
    c.send(PayloadType::OUTPUT, &smux(0, 3, &[])).await;
    let (mut flag, mut fin) = (false, false);
    let mut buf = Vec::new();
    while !(flag && fin) {
        let m = c.data(T).await.expect("error flag and FIN");
        if m.payload_type == PayloadType::FLAG {
            assert_eq!(
                FlagValue::from_payload(&m.payload),
                Some(FlagValue::ConnectToPortError)
            );
            flag = true;
        } else {
            buf.extend_from_slice(&m.payload);
            fin |= smux_frames(&mut buf).contains(&(1, 3, vec![]));
        }
    }
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_drop_and_duplicate_and_the_channel_recovers() {
    let mut cfg = fast_config();
    cfg.faults.seed = 7;
    cfg.faults.to_client.drop = 0.2;
    cfg.faults.to_client.duplicate = 0.2;
    cfg.faults.to_agent.duplicate = 1.0;
    let sim = sim(cfg).await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[("command", "seq 1 5000")],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.handshake(NEW_CLIENT).await;
    c.handshake_complete().await;
    let (out, data) = c.until_closed(Duration::from_secs(30)).await;
    assert_eq!(out, "");
    let text: String = data
        .iter()
        .filter(|m| m.payload_type == PayloadType::OUTPUT)
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let expected: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    assert_eq!(text, expected, "every line exactly once, in order");
    let st = sim.stats(&s.session_id).unwrap();
    assert!(
        st.to_client.dropped > 0 && st.to_client.duplicated > 0,
        "{st:?}"
    );
    assert!(st.resends > 0, "drops are repaired by resends: {st:?}");
    assert!(c.duplicates > 0);
    // Every client frame went to the agent twice: duplicates re-acked.
    assert!(
        st.to_agent.duplicated > 0 && st.duplicates_seen > 0,
        "{st:?}"
    );
    sim.shutdown();
}
