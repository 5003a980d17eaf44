//! Throughput of port forwarding (smux mode) against the simulator; run by
//! `scripts/bench-port.sh` with a release build. Ignored in normal test runs: it measures, it
//! does not assert speed.

mod port_common;

use std::time::{Duration, Instant};

use port_common::*;
use tokio::io::AsyncWriteExt;

const DOC: &str = "AWS-StartPortForwardingSession";

async fn measure(limits: bool, mib: usize) {
    let len = mib * MIB;
    let env = if limits {
        vec![]
    } else {
        vec![("SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE", "0".to_string())]
    };
    let setting = if limits {
        "service limits on (agent pacing, frame-rate limit; our default 900 frames/s)"
    } else {
        "service limits off (and our frame budget off)"
    };
    // Upload: local client -> destination.
    {
        let sim = sim(sim_config(limits, "3.3.987.0")).await;
        let (dport, mut seen) = server("127.0.0.1", Behaviour::Sink).await;
        let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
        let p = Plugin::spawn(Launch {
            started: &st,
            request: &req,
            env: env.clone(),
            stdio: false,
        });
        let port = p.port(&st.session_id).await;
        let mut s = connect("127.0.0.1", port).await;
        let t0 = Instant::now();
        let sent = write_gen(&mut s, 1, len).await;
        // The destination reports at EOF, which our half-close brings after the data.
        s.shutdown().await.unwrap();
        let at = recv_seen(&mut seen, Duration::from_secs(3600)).await;
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!((at.bytes, at.sha), (len, sent));
        let stats = sim.stats(&st.session_id).unwrap();
        println!(
            "BENCH upload   {mib} MiB, {setting}: {:.2} MB/s ({secs:.1} s, pauses {})",
            len as f64 / secs / 1e6,
            stats.pause_publication_sent
        );
        sim.shutdown();
    }
    // Download: destination -> local client.
    {
        let sim = sim(sim_config(limits, "3.3.987.0")).await;
        let (dport, _seen) = server("127.0.0.1", Behaviour::Source { seed: 2, len }).await;
        let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
        let p = Plugin::spawn(Launch {
            started: &st,
            request: &req,
            env: env.clone(),
            stdio: false,
        });
        let port = p.port(&st.session_id).await;
        let t0 = Instant::now();
        let mut s = connect("127.0.0.1", port).await;
        let (n, sha) = read_hash(&mut s, len).await;
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!((n, sha), (len, gen_hash(2, len)));
        println!(
            "BENCH download {mib} MiB, {setting}: {:.2} MB/s ({secs:.1} s)",
            len as f64 / secs / 1e6
        );
        sim.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-port.sh"]
async fn bench_port_throughput() {
    let limited = std::env::var("BENCH_LIMITED_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let unlimited = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    measure(true, limited).await;
    measure(false, unlimited).await;
}
