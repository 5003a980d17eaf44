//! Relay fault injection beyond drop/duplicate: delay, reorder, corrupt digest, malformed
//! frames, each checked by what the two ends see and by the simulator's counters.

mod common;

use std::time::{Duration, Instant};

use agent_sim::{SimConfig, SimHandle, Started};
use common::*;
use ssm_plugin::wire::PayloadType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

/// Basic port forwarding (an agent from before smux): client bytes go straight to the
/// destination and back, one data message per client message.
fn basic_config() -> SimConfig {
    let mut cfg = fast_config();
    cfg.agent_version = "3.0.0.0".into();
    cfg
}

async fn open_port(sim: &SimHandle, port: u16) -> (Started, Client) {
    let port = port.to_string();
    let s = start(
        sim,
        Some("AWS-StartPortForwardingSession"),
        &[("portNumber", &port)],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.handshake(NEW_CLIENT).await;
    c.handshake_complete().await;
    (s, c)
}

/// A destination that writes `blob` on connect, then echoes.
async fn blob_then_echo(blob: Vec<u8>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let blob = blob.clone();
            tokio::spawn(async move {
                if s.write_all(&blob).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_adds_latency_and_keeps_order() {
    let mut cfg = basic_config();
    cfg.faults.to_agent.delay = Duration::from_millis(30);
    cfg.faults.to_client.delay = Duration::from_millis(30);
    let sim = sim(cfg).await;
    let (s, mut c) = open_port(&sim, echo_server().await).await;
    // An echo crosses the relay twice.
    let t0 = Instant::now();
    c.send(PayloadType::OUTPUT, b"ping").await;
    assert_eq!(read_port_bytes(&mut c, 4).await, b"ping");
    assert!(
        t0.elapsed() >= Duration::from_millis(60),
        "{:?}",
        t0.elapsed()
    );
    // A burst: a delayed websocket is still a FIFO, so nobody sees a gap.
    let data = pattern(6000, 2);
    for chunk in data.chunks(100) {
        c.send(PayloadType::OUTPUT, chunk).await;
    }
    assert_eq!(read_port_bytes(&mut c, data.len()).await, data);
    let st = sim.stats(&s.session_id).unwrap();
    assert!(
        st.to_agent.delayed >= 61 && st.to_client.delayed >= 2,
        "{st:?}"
    );
    assert_eq!(
        st.out_of_order, 0,
        "the agent saw client frames out of order"
    );
    assert_eq!(
        c.out_of_order, 0,
        "the client saw agent frames out of order"
    );
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorder_is_repaired_in_both_directions() {
    let mut cfg = basic_config();
    cfg.faults.seed = 11;
    for d in [&mut cfg.faults.to_agent, &mut cfg.faults.to_client] {
        d.reorder = 0.5;
        d.reorder_delay = Duration::from_millis(40);
    }
    let sim = sim(cfg).await;
    // 32 KiB from the destination: at least 32 agent messages, 1 ms apart.
    let blob = pattern(32 * 1024, 4);
    let (s, mut c) = open_port(&sim, blob_then_echo(blob.clone()).await).await;
    assert!(read_port_bytes(&mut c, blob.len()).await == blob);
    let data = pattern(3000, 8);
    for chunk in data.chunks(100) {
        c.send(PayloadType::OUTPUT, chunk).await;
    }
    assert_eq!(read_port_bytes(&mut c, data.len()).await, data);
    let st = sim.stats(&s.session_id).unwrap();
    assert!(
        st.to_agent.reordered > 0 && st.to_client.reordered > 0,
        "{st:?}"
    );
    assert!(st.out_of_order > 0, "the agent buffered nothing: {st:?}");
    assert!(c.out_of_order > 0, "the client buffered nothing");
    assert_eq!(st.bytes_to_destination, 3000);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_digest_towards_the_agent_is_not_checked() {
    let sim = sim(basic_config()).await;
    let (s, mut c) = open_port(&sim, echo_server().await).await;
    // From now on every client frame has one payload byte flipped.
    let mut cfg = sim.config();
    cfg.faults.to_agent.corrupt_digest = 1.0;
    sim.set_config(cfg);
    let data = pattern(1000, 6);
    for chunk in data.chunks(100) {
        c.send(PayloadType::OUTPUT, chunk).await;
    }
    // The agent used every frame as it was: each 100-byte message comes back with exactly
    // one byte XOR 0x55.
    let echoed = read_port_bytes(&mut c, data.len()).await;
    for (i, (got, sent)) in echoed.chunks(100).zip(data.chunks(100)).enumerate() {
        let diffs: Vec<u8> = got
            .iter()
            .zip(sent)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(diffs, vec![0x55], "message {i}");
    }
    let st = sim.stats(&s.session_id).unwrap();
    assert!(st.bad_digest_in >= 10, "{st:?}");
    assert_eq!(st.bad_digest_in, st.to_agent.corrupted, "{st:?}");
    assert_eq!(st.unparsable_in, 0);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_towards_the_agent_are_ignored_until_resent() {
    let sim = sim(basic_config()).await;
    let (s, mut c) = open_port(&sim, echo_server().await).await;
    let mut cfg = sim.config();
    cfg.faults.to_agent.malformed = 1.0;
    sim.set_config(cfg.clone());
    let frames: Vec<_> = (0..5)
        .map(|i| c.input(PayloadType::OUTPUT, &pattern(200, i)))
        .collect();
    for f in &frames {
        c.send_raw(f.encode()).await;
    }
    // Truncated to 50 bytes: the agent cannot parse them, so nothing is acked or forwarded.
    let e = c.next(Duration::from_millis(500)).await;
    assert!(e.is_none(), "{e:?}");
    // (The client's ack of HandshakeComplete may have been caught by the fault too.)
    let st = sim.stats(&s.session_id).unwrap();
    assert!(st.unparsable_in >= 5, "{st:?}");
    assert_eq!(st.unparsable_in, st.to_agent.malformed);
    assert_eq!(st.bytes_to_destination, 0);
    // The client resends once the fault is gone.
    cfg.faults.to_agent.malformed = 0.0;
    sim.set_config(cfg);
    for f in &frames {
        c.send_raw(f.encode()).await;
    }
    let want: Vec<u8> = (0..5).flat_map(|i| pattern(200, i)).collect();
    assert_eq!(read_port_bytes(&mut c, want.len()).await, want);
    assert_eq!(sim.stats(&s.session_id).unwrap().bytes_to_destination, 1000);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_malformed_towards_the_client_are_dropped_and_resent() {
    let mut cfg = fast_config();
    cfg.faults.seed = 3;
    cfg.faults.to_client.corrupt_digest = 0.1;
    cfg.faults.to_client.malformed = 0.1;
    let sim = sim(cfg).await;
    let s = start(
        &sim,
        Some("AWS-StartNonInteractiveCommand"),
        &[("command", "seq 1 10000")],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.handshake(NEW_CLIENT).await;
    c.handshake_complete().await;
    let (out, data) = c.until_closed(T).await;
    assert_eq!(out, "");
    let text: String = data
        .iter()
        .filter(|m| m.payload_type == PayloadType::OUTPUT)
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let expected: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    assert!(text == expected, "output damaged or incomplete");
    let st = sim.stats(&s.session_id).unwrap();
    // The client (like the plugin) drops frames whose digest fails or that do not parse; the
    // agent's resends repair both.
    assert!(c.bad_digest > 0 && c.malformed > 0, "{st:?}");
    assert!(c.bad_digest <= st.to_client.corrupted, "{st:?}");
    assert!(c.malformed <= st.to_client.malformed, "{st:?}");
    assert!(st.resends > 0, "{st:?}");
    sim.shutdown();
}
