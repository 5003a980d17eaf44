//! Port forwarding through smux (agents above 3.0.196.0), end to end: the real binary against
//! the in-process simulator, local clients and destination servers on 127.0.0.x.

mod port_common;

use std::time::Duration;

use port_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOC: &str = "AWS-StartPortForwardingSession";
const AGENT: &str = "3.3.987.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_echo_both_directions_without_service_limits() {
    mux_echo_session(false, big_mib()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_lines_and_fifty_concurrent_connections() {
    let sim = sim(sim_config(true, AGENT)).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![],
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    let id = &st.session_id;
    let out = p.wait_for("Waiting for connections...\n", T).await;
    assert!(
        out.ends_with(&format!(
            "Port {port} opened for sessionId {id}.\nWaiting for connections...\n"
        )),
        "{out:?}"
    );
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        tasks.push(tokio::spawn(echo_through(
            port,
            100 + i,
            32 * 1024 + i as usize * 77,
        )));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("all connections finish")
            .unwrap();
    }
    let out = p.stdout.text();
    assert_eq!(
        out.matches(&format!("\nConnection accepted for session [{id}]\n"))
            .count(),
        1,
        "{out:?}"
    );
    let stats = sim.stats(id).unwrap();
    assert_eq!(stats.smux_frames_in[0], 50, "one SYN per connection");
    sim.shutdown();
}

/// A session (limits on, agent half-close) to a Digest server; the plugin and its local port.
async fn digest_session() -> (agent_sim::SimHandle, Plugin, u16) {
    let mut cfg = sim_config(true, AGENT);
    cfg.mux_half_close = true;
    let sim = sim(cfg).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Digest).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![],
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    (sim, p, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_closes_and_reads_the_answer() {
    let (sim, _p, port) = digest_session().await;
    let mut s = connect("127.0.0.1", port).await;
    let len = 300_000;
    let sent = write_gen(&mut s, 3, len).await;
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut answer))
        .await
        .expect("answer and EOF arrive")
        .unwrap();
    assert_eq!(answer, format!("{len} {}", hex::encode(sent)));
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_host_forwarding_reaches_a_second_server() {
    let sim = sim(sim_config(true, AGENT)).await;
    let (dport, mut seen) = server("127.0.0.2", Behaviour::Sink).await;
    let (st, req) = start(
        &sim,
        "AWS-StartPortForwardingSessionToRemoteHost",
        &[("portNumber", &dport.to_string()), ("host", "127.0.0.2")],
    );
    let p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![],
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    let mut s = connect("127.0.0.1", port).await;
    let sent = write_gen(&mut s, 5, 200_000).await;
    s.shutdown().await.unwrap();
    let at = recv_seen(&mut seen, T).await;
    assert_eq!((at.bytes, at.sha), (200_000, sent));
    sim.shutdown();
}

async fn bind_case(bind: &str, reach: &str, refused: Option<&str>) {
    let sim = sim(sim_config(true, AGENT)).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![("SESSION_MANAGER_PLUGIN_BIND_ADDRESS", bind.to_string())],
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    let s = connect(reach, port).await;
    let (mut r, mut w) = s.into_split();
    w.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    tokio::time::timeout(T, r.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"hello");
    if let Some(other) = refused {
        assert!(
            tokio::net::TcpStream::connect((other, port)).await.is_err(),
            "{other}:{port} must not be listening"
        );
    }
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_address_any_is_reachable_through_loopback() {
    bind_case("0.0.0.0", "127.0.0.1", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_address_limits_the_listener_to_that_address() {
    bind_case("127.0.0.2", "127.0.0.2", Some("127.0.0.1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_destination_is_reported_and_the_connection_closed() {
    let sim = sim(sim_config(true, AGENT)).await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dport = closed.local_addr().unwrap().port();
    drop(closed);
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![],
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    let mut s = connect("127.0.0.1", port).await;
    let _ = s.write_all(b"x").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("the connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    p.wait_for(
        "\nConnection to destination port failed, check SSM Agent logs.\n",
        T,
    )
    .await;
    sim.shutdown();
}

/// A destination that stops reading must not make the plugin buffer the upload: the local
/// client's writes must block instead (TCP back-pressure), and memory stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_destination_pushes_back_on_the_local_client() {
    let sim = sim(sim_config(false, AGENT)).await;
    let stall = Duration::from_secs(5);
    let (dport, mut seen) = server("127.0.0.1", Behaviour::StalledSink { stall }).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![("SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE", "0".to_string())],
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    let base = p.rss_kib();
    let s = connect("127.0.0.1", port).await;
    let len = 48 * MIB;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = written.clone();
    let writer = tokio::spawn(async move {
        let mut s = s;
        let mut g = Gen::new(21);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            g.fill(&mut buf[..n]);
            s.write_all(&buf[..n]).await.unwrap();
            w2.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            left -= n;
        }
        s.shutdown().await.unwrap();
        s
    });
    tokio::time::sleep(stall - Duration::from_secs(1)).await;
    let during = written.load(std::sync::atomic::Ordering::SeqCst);
    let rss = p.rss_kib();
    eprintln!("while the destination stalls: {during} bytes accepted, rss {base} -> {rss} KiB");
    assert!(
        during < 24 * MIB,
        "{during} bytes accepted while nothing was delivered"
    );
    assert!(rss < base + 32 * 1024, "rss grew from {base} to {rss} KiB");
    let at = recv_seen(&mut seen, Duration::from_secs(600)).await;
    assert_eq!((at.bytes, at.sha), (len, gen_hash(21, len)));
    drop(writer);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_local_reader_gets_everything_and_the_session_goes_on() {
    let sim = sim(sim_config(false, AGENT)).await;
    let len = 24 * MIB;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Source { seed: 31, len }).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let mut p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![("SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE", "0".to_string())],
        stdio: false,
    });
    let port = p.port(&st.session_id).await;
    stalled_download(&p, port, 31, len, Duration::from_secs(8)).await;
    // Still one healthy session: a new connection gets its own stream from the start.
    let mut again = connect("127.0.0.1", port).await;
    let (n, got) = tokio::time::timeout(T, read_hash(&mut again, MIB))
        .await
        .expect("second read");
    assert_eq!((n, got), (MIB, gen_hash(31, MIB)));
    drop(again);
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "plugin still running"
    );
    p.signal(libc::SIGINT);
    assert!(p.wait(T).await.success());
    sim.shutdown();
}

/// Sends `len` generated bytes on a new connection, half-closes, and waits for the Digest
/// server's answer; how long that took.
async fn upload(port: u16, seed: u64, len: usize) -> Duration {
    let t0 = std::time::Instant::now();
    let (mut r, mut w) = connect("127.0.0.1", port).await.into_split();
    write_gen(&mut w, seed, len).await;
    w.shutdown().await.expect("half-close");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_string(&mut answer))
        .await
        .expect("the digest comes back")
        .expect("read");
    assert!(answer.starts_with(&format!("{len} ")), "{answer}");
    t0.elapsed()
}

/// With the default upload pacing (900 frames/s), a bulk upload on one connection must not
/// queue a second connection's first bytes behind it. Checked as a ratio, not a time: the small
/// upload's round trip must be a small fraction of the bulk upload's duration (queued behind a
/// 2 MiB FIFO it took about half of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_upload_beside_a_bulk_upload_is_not_queued_behind_it() {
    let (sim, p, port) = digest_session().await;
    let bulk = tokio::spawn(upload(port, 5, 4 * MIB));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let small = upload(port, 6, 1024).await;
    let bulk = bulk.await.unwrap();
    eprintln!("small upload beside the bulk one: {small:?}; bulk (4 MiB): {bulk:?}");
    assert!(
        small * 5 < bulk,
        "the small upload took {small:?} beside a bulk upload of {bulk:?}"
    );
    drop(p);
    sim.shutdown();
}

/// Three uploads started together share the paced link: they finish together, not one after
/// another (one after another, the last would take three times as long as the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_share_the_link_and_finish_together() {
    let (sim, p, port) = digest_session().await;
    let tasks: Vec<_> = (0..3)
        .map(|i| tokio::spawn(upload(port, 20 + i, MIB)))
        .collect();
    let mut took = Vec::new();
    for t in tasks {
        took.push(t.await.unwrap());
    }
    eprintln!("three concurrent 1 MiB uploads took {took:?}");
    let (min, max) = (took.iter().min().unwrap(), took.iter().max().unwrap());
    assert!(
        max.as_secs_f64() < min.as_secs_f64() * 1.5,
        "uploads did not share the link: {took:?}"
    );
    drop(p);
    sim.shutdown();
}
