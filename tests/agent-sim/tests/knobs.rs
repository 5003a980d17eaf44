//! The simulator's limits and knobs: the relay's frame-rate limit and websocket lifetime, the
//! smux keep-alive and receive buffer, port read pacing, the SSH document, the stall fault.
//! Windows and limits are shrunk through `SimConfig` so each test takes a few seconds.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sim::{SessionBackend, SimHandle, Started};
use common::*;
use ssm_plugin::wire::{FlagValue, MessageType, PayloadType};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);
/// A client version at the smux keep-alive gate: the agent keeps smux keep-alive on for it.
const KEEPALIVE_CLIENT: &str = "1.2.331.0";
/// The first client version after the gate: keep-alive off.
const NO_KEEPALIVE_CLIENT: &str = "1.2.332.0";

/// Starts a session, connects, and completes the handshake.
async fn open(
    sim: &SimHandle,
    doc: &str,
    params: &[(&str, &str)],
    version: &str,
) -> (Started, Client) {
    let s = start(sim, Some(doc), params);
    let mut c = Client::connect(&s.stream_url, &s.token_value, version).await;
    c.handshake(version).await;
    c.handshake_complete().await;
    (s, c)
}

/// A destination that reads and counts everything sent to it.
async fn counting_sink() -> (u16, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = n2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    n.fetch_add(k as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (port, n)
}

/// A destination that writes `data` as soon as a connection arrives, recording the instant
/// just before the write, then holds the connection open (reading and discarding).
async fn blob_server(data: Vec<u8>) -> (u16, Arc<Mutex<Option<Instant>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let t0 = Arc::new(Mutex::new(None));
    let t = t0.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            *t.lock().unwrap() = Some(Instant::now());
            let data = data.clone();
            tokio::spawn(async move {
                if s.write_all(&data).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(k) if k > 0) {}
            });
        }
    });
    (port, t0)
}

fn output_text(data: &[ssm_plugin::wire::ClientMessage]) -> Vec<u8> {
    data.iter()
        .filter(|m| m.payload_type == PayloadType::OUTPUT)
        .flat_map(|m| m.payload.to_vec())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Relay: frame-rate limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_pauses_publication_then_closes_and_the_session_resumes() {
    let mut cfg = fast_config();
    cfg.agent_version = "3.0.0.0".into(); // basic forwarding: client bytes go straight to the sink
    cfg.limits.frame_rate_limit = Some(20);
    assert_eq!(cfg.limits.frame_rate_window, Duration::from_secs(2));
    let sim = sim(cfg).await;
    let (port, sunk) = counting_sink().await;
    let port = port.to_string();
    let (s, mut c) = open(
        &sim,
        "AWS-StartPortForwardingSession",
        &[("portNumber", &port)],
        NEW_CLIENT,
    )
    .await;
    // 50 one-byte frames a second, 2.5 times the limit, until the relay pauses the client.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0u64;
    let mut sent_at_pause = None;
    let deadline = tokio::time::Instant::now() + T;
    while sent_at_pause.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no throttling after {sent} frames"
        );
        tick.tick().await;
        c.send(PayloadType::OUTPUT, b"x").await;
        sent += 1;
        while let Some(e) = c.next(Duration::from_millis(1)).await {
            match e {
                Event::Other(m) if m.message_type == MessageType::PausePublication => {
                    sent_at_pause = Some(sent);
                }
                Event::Closed(cl) => panic!("closed before pause_publication: {cl:?}"),
                Event::ChannelClosed(o) => panic!("the session must survive throttling: {o:?}"),
                _ => {}
            }
        }
    }
    // A client that ignores the pause: the relay discards what follows (the close comes
    // 0.5 s after the pause, so these writes still reach the relay).
    for _ in 0..5 {
        c.send(PayloadType::OUTPUT, b"x").await;
        sent += 1;
    }
    let close = loop {
        match c.next(T).await.expect("the relay closes the websocket") {
            Event::Closed(close) => break close,
            Event::Other(m) => panic!("a second {:?}", m.message_type),
            Event::ChannelClosed(o) => panic!("the session must survive throttling: {o:?}"),
            _ => {}
        }
    };
    assert!(
        sent_at_pause.is_some(),
        "pause_publication before the close"
    );
    assert_eq!(close, Some((1008, "Rate exceeded".into())));
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.pause_publication_sent, 1);
    // Two whole seconds above the limit went through (each 1 s bucket held more than 20
    // frames; the frame that tripped the limit was discarded) ...
    assert!(st.bytes_to_destination >= 41, "{st:?}");
    // ... and the frame that tripped the limit and everything after it were discarded.
    let at_pause = sent_at_pause.unwrap();
    assert!(
        st.bytes_to_destination < at_pause && st.bytes_to_destination + 6 <= sent,
        "{} of {sent} delivered (pause after {at_pause})",
        st.bytes_to_destination
    );
    assert_eq!(st.data_in, 1 + st.bytes_to_destination, "handshake + bytes");
    assert!(
        st.end_output.is_none(),
        "throttling does not end the session"
    );

    // The session resumes on a new connection, with a fresh rate window. The agent expects
    // the first discarded frame next (seq 0 was the HandshakeResponse).
    let r = sim.backend().resume_session(&s.session_id).unwrap();
    let mut c2 = Client::connect(&r.stream_url, &r.token_value, NEW_CLIENT).await;
    c2.seq = 1 + st.bytes_to_destination as i64;
    let m = c2.send(PayloadType::OUTPUT, b"y").await;
    loop {
        match c2.next(T).await.expect("ack on the resumed connection") {
            Event::Ack(seq) if seq == m.sequence_number => break,
            Event::Closed(c) => panic!("resumed connection closed: {c:?}"),
            _ => {}
        }
    }
    let want = st.bytes_to_destination + 1;
    let deadline = Instant::now() + T;
    while sunk.load(Ordering::SeqCst) < want {
        assert!(Instant::now() < deadline, "sink got {sunk:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.stats(&s.session_id).unwrap().connections, 2);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spares_slow_clients_and_can_be_switched_off() {
    let mut cfg = fast_config();
    cfg.agent_version = "3.0.0.0".into();
    cfg.limits.frame_rate_limit = Some(20);
    let sim = sim(cfg.clone()).await;
    let (port, _) = counting_sink().await;
    let port = port.to_string();
    let params = [("portNumber", port.as_str())];
    // 12.5 frames a second, for longer than the window: never throttled.
    let (s, mut c) = open(&sim, "AWS-StartPortForwardingSession", &params, NEW_CLIENT).await;
    let mut tick = tokio::time::interval(Duration::from_millis(80));
    // A late tick must not turn into a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..35 {
        tick.tick().await;
        c.send(PayloadType::OUTPUT, b"x").await;
        while let Some(e) = c.next(Duration::from_millis(1)).await {
            assert!(
                !matches!(e, Event::Other(_) | Event::Closed(_)),
                "slow client throttled: {e:?}"
            );
        }
    }
    // Without a limit, a fast burst well over the old limit for over a second goes through.
    cfg.limits.frame_rate_limit = None;
    sim.set_config(cfg);
    let mut sent = 35u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..300 {
        tick.tick().await;
        c.send(PayloadType::OUTPUT, b"x").await;
        sent += 1;
    }
    let last = c.seq - 1;
    loop {
        match c.next(T).await.expect("ack of the last frame") {
            Event::Ack(seq) if seq == last => break,
            Event::Other(m) => panic!("unexpected {:?}", m.message_type),
            Event::Closed(cl) => panic!("closed: {cl:?}"),
            _ => {}
        }
    }
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.pause_publication_sent, 0);
    assert_eq!(st.bytes_to_destination, sent);
    sim.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Relay: websocket lifetime

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_lifetime_closes_with_bye_and_the_session_resumes() {
    let mut cfg = fast_config();
    cfg.limits.ws_lifetime = Some(Duration::from_millis(700));
    let sim = sim(cfg).await;
    let s = start(&sim, None, &[]);
    let t0 = Instant::now();
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.prompt(T).await;
    c.send_text("Y=7''3; echo y-$Y\r").await;
    c.output_until("y-73", T).await;
    assert_eq!(c.until_ws_closed(T).await, Some((1000, "Bye".into())));
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "not before the lifetime"
    );
    // The session is still there: resume, and every new connection gets the same lifetime.
    let r = sim.backend().resume_session(&s.session_id).unwrap();
    let t1 = Instant::now();
    let mut c2 = Client::connect(&r.stream_url, &r.token_value, NEW_CLIENT).await;
    c2.seq = c.seq;
    c2.expected = c.expected;
    c2.send_text("echo again-$Y\r").await;
    c2.output_until("again-73", T).await;
    assert_eq!(c2.until_ws_closed(T).await, Some((1000, "Bye".into())));
    assert!(t1.elapsed() >= Duration::from_millis(700));
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.connections, 2);
    assert!(st.end_output.is_none());
    sim.shutdown();
}

// ---------------------------------------------------------------------------------------------
// smux keep-alive and receive buffer

fn smux_keepalive_config() -> agent_sim::SimConfig {
    let mut cfg = fast_config();
    cfg.limits.smux_keepalive_interval = Duration::from_millis(100);
    cfg.limits.smux_keepalive_timeout = Duration::from_millis(600);
    cfg
}

/// Counts the agent's smux NOPs (stream 0) in Output messages that arrive within `wait`,
/// sending a client NOP every `client_nop` when given.
async fn watch_nops(c: &mut Client, wait: Duration, client_nop: Option<Duration>) -> usize {
    let mut buf = Vec::new();
    let mut nops = 0;
    let end = Instant::now() + wait;
    let mut next_nop = Instant::now();
    while Instant::now() < end {
        if let Some(every) = client_nop {
            if Instant::now() >= next_nop {
                c.send(PayloadType::OUTPUT, &smux(SMUX_NOP, 0, &[])).await;
                next_nop += every;
            }
        }
        match c.next(Duration::from_millis(20)).await {
            Some(Event::Data(m)) => {
                assert_eq!(m.payload_type, PayloadType::OUTPUT);
                buf.extend_from_slice(&m.payload);
                for f in smux_frames(&mut buf) {
                    assert_eq!(f, (SMUX_NOP, 0, vec![]), "only keep-alives from the agent");
                    nops += 1;
                }
            }
            Some(Event::ChannelClosed(o)) => panic!("session ended early: {o:?}"),
            Some(Event::Closed(cl)) => panic!("websocket closed early: {cl:?}"),
            _ => {}
        }
    }
    nops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smux_keepalive_for_old_clients_nops_and_timeout() {
    let sim = sim(smux_keepalive_config()).await;
    let port = echo_server().await.to_string();
    let (s, mut c) = open(
        &sim,
        "AWS-StartPortForwardingSession",
        &[("portNumber", &port)],
        KEEPALIVE_CLIENT,
    )
    .await;
    // While the client sends NOPs the session outlives several keep-alive timeouts, and the
    // agent sends its own NOPs every interval.
    let nops = watch_nops(
        &mut c,
        Duration::from_millis(1500),
        Some(Duration::from_millis(100)),
    )
    .await;
    assert!(nops >= 3, "agent NOPs seen: {nops}");
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.port_mode, "mux");
    assert!(st.end_output.is_none(), "{st:?}");
    assert!(st.smux_frames_in[SMUX_NOP as usize] >= 10, "{st:?}");
    assert!(st.smux_nops_out as usize >= nops);
    // A silent client: the agent's smux session times out and the Port session ends.
    let t0 = Instant::now();
    let (out, _) = c.until_closed(T).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "not before the timeout"
    );
    // The agent reports a failure (WritePump's exit code 1); the text is the simulator's.
    assert!(!out.is_empty(), "the session failed: {out:?}");
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smux_keepalive_off_for_new_clients() {
    let sim = sim(smux_keepalive_config()).await;
    let port = echo_server().await.to_string();
    let (s, mut c) = open(
        &sim,
        "AWS-StartPortForwardingSession",
        &[("portNumber", &port)],
        NO_KEEPALIVE_CLIENT,
    )
    .await;
    // Silent for three keep-alive timeouts: no NOPs, no timeout.
    let nops = watch_nops(&mut c, Duration::from_millis(1200), None).await;
    assert_eq!(nops, 0);
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!((st.port_mode.as_str(), st.smux_nops_out), ("mux", 0));
    assert!(st.end_output.is_none());
    c.send(PayloadType::FLAG, &FlagValue::TerminateSession.to_payload())
        .await;
    assert_eq!(c.until_closed(T).await.0, "");
    sim.shutdown();
}

/// A destination whose kernel receive buffer is small and that reads nothing until
/// released; then it reads `n` bytes and returns them.
async fn stalled_sink(
    n: usize,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<u8>>,
) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(4).unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = rx.await;
        let mut got = vec![0u8; n];
        s.read_exact(&mut got).await.unwrap();
        got
    });
    (port, tx, task)
}

/// Reads events until no ack came for `quiet` (other traffic, like keep-alive NOPs, does not
/// count), or until `target` is acked; returns the highest acked sequence number.
async fn acks_until_quiet(c: &mut Client, mut last: i64, quiet: Duration, target: i64) -> i64 {
    let give_up = Instant::now() + T;
    let mut quiet_until = Instant::now() + quiet;
    while last < target {
        let now = Instant::now();
        assert!(now < give_up, "acks never settled (last {last})");
        if now >= quiet_until {
            break;
        }
        match c.next(quiet_until - now).await {
            Some(Event::Ack(seq)) if seq > last => {
                last = seq;
                quiet_until = Instant::now() + quiet;
            }
            Some(Event::ChannelClosed(o)) => panic!("session ended: {o:?}"),
            Some(Event::Closed(cl)) => panic!("websocket closed: {cl:?}"),
            _ => {}
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smux_receive_buffer_backpressure_holds_acks_and_loses_nothing() {
    let mut cfg = smux_keepalive_config();
    cfg.limits.frame_rate_limit = None;
    const RECEIVE_BUFFER: usize = 64 * 1024;
    cfg.limits.smux_receive_buffer = RECEIVE_BUFFER;
    let sim = sim(cfg).await;
    const TOTAL: usize = 8 << 20;
    const CHUNK: usize = 16 * 1024;
    let (port, release, sink) = stalled_sink(TOTAL).await;
    let port = port.to_string();
    // A keep-alive client: the stall lasts longer than the keep-alive timeout, which must not
    // close the smux session while its reader is blocked on a full receive buffer.
    let (s, mut c) = open(
        &sim,
        "AWS-StartPortForwardingSession",
        &[("portNumber", &port)],
        KEEPALIVE_CLIENT,
    )
    .await;
    let data = pattern(TOTAL, 9);
    c.send(PayloadType::OUTPUT, &smux(SMUX_SYN, 3, &[])).await;
    for chunk in data.chunks(CHUNK) {
        c.send(PayloadType::OUTPUT, &smux(SMUX_PSH, 3, chunk)).await;
    }
    let last_seq = c.seq - 1;
    // The agent stops taking client data: acks stop short of the last frame.
    let acked = acks_until_quiet(&mut c, 0, Duration::from_millis(1200), last_seq).await;
    assert!(
        acked < last_seq,
        "every frame was acked ({acked}) while the destination read nothing"
    );
    // What the agent took beyond what the destination's kernel buffers absorbed is bounded
    // by the smux receive buffer (plus the 64 KiB channel pipe and the frames in hand).
    let st = sim.stats(&s.session_id).unwrap();
    assert!(
        st.end_output.is_none(),
        "keep-alive closed a blocked session"
    );
    let taken = (acked as u64 - 1) * CHUNK as u64; // seq 0 handshake, seq 1 SYN
    let beyond = taken.saturating_sub(st.bytes_to_destination);
    assert!(
        beyond <= (RECEIVE_BUFFER + 64 * 1024 + 2 * CHUNK) as u64,
        "{beyond} bytes held for a stalled destination ({taken} taken, {} written)",
        st.bytes_to_destination
    );
    // Released: everything arrives, in order, and every frame gets acked (a keep-alive
    // timeout during the stall would have broken the pipe and lost data).
    release.send(()).unwrap();
    let got = tokio::time::timeout(T, sink).await.unwrap().unwrap();
    assert!(got == data, "destination bytes differ");
    let acked = acks_until_quiet(&mut c, acked, T, last_seq).await;
    assert_eq!(acked, last_seq);
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.bytes_to_destination, TOTAL as u64);
    sim.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Port read pacing: at most 1024 bytes per message, 1 ms between reads

/// Reads `n` bytes of Output; returns the payload sizes.
async fn collect_output(c: &mut Client, n: usize, mux: bool) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut sizes = Vec::new();
    let mut buf = Vec::new();
    while bytes.len() < n {
        let m = c.data(T).await.expect("port output");
        assert_eq!(m.payload_type, PayloadType::OUTPUT);
        sizes.push(m.payload.len());
        if mux {
            buf.extend_from_slice(&m.payload);
            for (cmd, sid, d) in smux_frames(&mut buf) {
                assert_eq!((cmd, sid), (SMUX_PSH, 3));
                bytes.extend(d);
            }
        } else {
            bytes.extend_from_slice(&m.payload);
        }
    }
    (bytes, sizes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_reads_are_paced_basic_and_mux() {
    const N: usize = 64 * 1024;
    for mux in [false, true] {
        let mut cfg = fast_config();
        if !mux {
            cfg.agent_version = "3.0.0.0".into();
        }
        let sim = sim(cfg).await;
        let blob = pattern(N, 5);
        let (port, t0) = blob_server(blob.clone()).await;
        let port = port.to_string();
        let (s, mut c) = open(
            &sim,
            "AWS-StartPortForwardingSession",
            &[("portNumber", &port)],
            NEW_CLIENT,
        )
        .await;
        if mux {
            c.send(PayloadType::OUTPUT, &smux(SMUX_SYN, 3, &[])).await;
        }
        let (bytes, sizes) = collect_output(&mut c, N, mux).await;
        let done = Instant::now();
        assert!(bytes == blob, "mux={mux}: bytes differ");
        assert!(sizes.iter().all(|&n| n <= 1024), "mux={mux}: {sizes:?}");
        assert!(
            sizes.len() >= N / 1024,
            "mux={mux}: {} messages",
            sizes.len()
        );
        // Each read is followed by a 1 ms sleep: the last message cannot leave before
        // (messages - 1) ms after the destination wrote its first byte.
        let t0 = t0.lock().unwrap().expect("destination connected");
        let floor = Duration::from_millis(sizes.len() as u64 - 1);
        assert!(
            done - t0 >= floor,
            "mux={mux}: {} messages in {:?}",
            sizes.len(),
            done - t0
        );
        assert_eq!(
            sim.stats(&s.session_id).unwrap().port_mode,
            if mux { "mux" } else { "basic" }
        );
        sim.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// SSH document

/// An SSH-like destination: a banner, one echoed line, then EOF.
async fn ssh_like_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                w.write_all(b"SSH-2.0-agent-sim-test\r\n").await.unwrap();
                let mut line = String::new();
                let mut r = tokio::io::BufReader::new(r);
                if r.read_line(&mut line).await.is_ok() {
                    let _ = w.write_all(line.as_bytes()).await;
                }
                // Dropping both halves closes the connection.
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_document_is_basic_and_destination_eof_ends_with_success() {
    let sim = sim(fast_config()).await;
    let port = ssh_like_server().await.to_string();
    let s = start(&sim, Some("AWS-StartSSHSession"), &[("portNumber", &port)]);
    // Even a mux-capable client gets basic forwarding: the document has no `type`.
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    let req = c.handshake(NEW_CLIENT).await;
    assert_eq!(
        req["RequestedClientActions"][0]["ActionParameters"]["Properties"],
        serde_json::json!({ "portNumber": port })
    );
    c.handshake_complete().await;
    let banner = b"SSH-2.0-agent-sim-test\r\n";
    assert_eq!(read_port_bytes(&mut c, banner.len()).await, banner);
    c.send(PayloadType::OUTPUT, b"hello agent\n").await;
    let (out, data) = c.until_closed(T).await;
    assert_eq!(out, "", "destination EOF is a successful end");
    assert_eq!(output_text(&data), b"hello agent\n");
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.port_mode, "basic");
    assert_eq!(st.end_output.as_deref(), Some(""));
    // Port sessions never report Terminating.
    assert_eq!(st.session_states, vec!["Connected"]);

    // Default port 22 in the properties; a destination that refuses fails the session.
    let closed = closed_port().await.to_string();
    let s = start(&sim, Some("AWS-StartSSHSession"), &[]);
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    // (Not answered: the agent would dial port 22 after the handshake.)
    let req = c.data(T).await.expect("HandshakeRequest");
    let req: serde_json::Value = serde_json::from_slice(&req.payload).unwrap();
    assert_eq!(
        req["RequestedClientActions"][0]["ActionParameters"]["Properties"],
        serde_json::json!({ "portNumber": "22" })
    );
    sim.backend().terminate_session(&s.session_id).unwrap();
    c.until_closed(T).await;
    let s = start(
        &sim,
        Some("AWS-StartSSHSession"),
        &[("portNumber", &closed)],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.handshake(NEW_CLIENT).await;
    c.handshake_complete().await;
    let (out, _) = c.until_closed(T).await;
    assert!(
        out.starts_with("Unable to connect to specified port: "),
        "{out:?}"
    );
    sim.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Stall

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_accepts_and_never_answers() {
    let mut cfg = fast_config();
    cfg.faults.stall = true;
    let sim = sim(cfg.clone()).await;
    let s = start(&sim, None, &[]);
    // The websocket upgrade succeeds; then nothing: no output, no pong, no close.
    let mut stalled = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    stalled.ping().await;
    stalled.send_text("echo hi\r").await;
    let e = stalled.next(Duration::from_millis(1500)).await;
    assert!(e.is_none(), "a stalled relay sent {e:?}");
    assert_eq!(stalled.pongs, 0);
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!((st.connections, st.data_in), (0, 0));
    // Switched off live: the next connection works, and gets the output queued meanwhile.
    cfg.faults.stall = false;
    sim.set_config(cfg);
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.ping().await;
    let first = c.data(T).await.unwrap();
    assert_eq!(first.sequence_number, 0);
    let deadline = Instant::now() + T;
    while c.pongs == 0 {
        assert!(Instant::now() < deadline, "no pong once the stall is off");
        c.next(Duration::from_millis(50)).await;
    }
    // The stalled connection is only dropped when the simulator stops.
    sim.shutdown();
    assert!(stalled.until_ws_closed(T).await.is_none());
}
