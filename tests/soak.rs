//! Fault soak: an echo through a port forward while the simulated relay drops, reorders and
//! duplicates frames and the websocket is cut 5 times. Every byte must come back once, in
//! order, and the plugin's peak RSS must stay bounded. The figures are printed for the record.
//!
//! The agent resends only its oldest unacknowledged message, once per 100 ms tick
//! (`ResendStreamDataMessageScheduler`, as simulated). Two consequences shape these runs:
//! - every *data* frame lost on its way to us costs about 100 ms whatever we do, so with 5 % of
//!   the agent's frames lost a download moves about 0.1 MiB/s: `all_faults_both_ways` (5 %
//!   drop, 5 % reorder, 2 % duplicates each way) stays small (`SOAK_LOSSY_MIB`, default 2);
//! - every *ack* of ours that is lost costs the agent a tick too, and at 5 % loss its backlog of
//!   messages waiting only for an ack outgrew what it clears, stalling the stream for minutes
//!   (16 MiB did not finish in 6 minutes). The channel now sends each ack twice for a while
//!   after a duplicate shows one was lost, and repeats its recent acks on every new websocket
//!   (`channel::ACK_COPIES_AFTER_LOSS`, `channel::RECENT_ACKS`). `a_large_transfer`: 5 % drop,
//!   5 % reorder, 2 % duplicates on our frames, 5 % reorder and 2 % duplicates on the agent's,
//!   5 cuts, `SOAK_MIB` (default 256; ignored in CI, run with `--ignored`). Measured: 256 MiB in
//!   218 s (debug build, on a loaded 2-core machine), peak RSS 34.8 MB, 45 519 of our frames
//!   dropped, 5 resumes; 16 MiB in 6.3 s.
//!
//! Why it is not in CI: every cut loses the frames queued on the dying websocket (the relay's
//! writer queue), and the agent recovers each lost frame of its own only as its oldest
//! unacknowledged one, ten per second. On a machine busy with other work that queue is long,
//! a cut loses thousands of frames and the echo needs minutes to recover: the run then
//! measures the machine's load (it passed alone, and stalled twice beside a compiler). Nothing
//! on the client side can ask the agent for a frame sooner; the protocol has no negative ack.

mod aws_support;
mod port_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sim::DirFaults;
use aws_support::*;
use port_common::{connect, server, write_gen, Behaviour, Gen, MIB};
use tokio::io::AsyncReadExt;

const STEP: Duration = Duration::from_secs(120);

fn mib(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn faults(drop: f64) -> DirFaults {
    DirFaults {
        drop,
        reorder: 0.05,
        duplicate: 0.02,
        ..DirFaults::default()
    }
}

/// One soak at a time: two at once on a 2-core machine starve each other's simulator and
/// plugin, which measures the machine, not the protocol.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_faults_both_ways() {
    let _one = ONE_AT_A_TIME.lock().await;
    soak(mib("SOAK_LOSSY_MIB", 2), faults(0.05), faults(0.05)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long; run with --ignored (see the module doc)"]
async fn a_large_transfer() {
    let _one = ONE_AT_A_TIME.lock().await;
    soak(mib("SOAK_MIB", 256), faults(0.0), faults(0.05)).await;
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Echoes `mib` MiB with these faults on the frames to us and to the agent, cutting the
/// websocket 5 times.
async fn soak(mib: usize, to_client: DirFaults, to_agent: DirFaults) {
    let mut cfg = fast_config();
    cfg.ws_credentials = ws_credentials();
    cfg.require_signed_upgrade = true;
    cfg.limits.port_pacing = false;
    cfg.limits.frame_rate_limit = None;
    cfg.faults.seed = 7;
    cfg.faults.to_client = to_client;
    cfg.faults.to_agent = to_agent;
    let world = World::start(cfg).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let started = world.start_session(
        TARGET,
        Some("AWS-StartPortForwardingSession"),
        &[("portNumber", &dport.to_string())],
    );
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    cmd.env(
        "SESSION_MANAGER_PLUGIN_LOG",
        std::env::var("SOAK_LOG").unwrap_or_else(|_| "info".into()),
    )
    .env("SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE", "0");
    let p = Running::spawn(cmd);
    let pid = p.pid().expect("running");
    let port = p.port(&id, Duration::from_secs(30)).await;

    let len = mib * MIB;
    let seed = 91;
    let t0 = Instant::now();
    let (mut r, mut w) = connect("127.0.0.1", port).await.into_split();
    let writer = tokio::spawn(async move {
        write_gen(&mut w, seed, len).await;
        w
    });
    // Compared as it comes, so the test holds no copy of the data.
    let got = Arc::new(AtomicUsize::new(0));
    let got_r = got.clone();
    let reader = tokio::spawn(async move {
        let mut expect = Gen::new(seed);
        let mut want = vec![0u8; 64 * 1024];
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        // Gen produces 8 bytes per step: keep a carry of generated bytes not yet compared.
        let mut pending: Vec<u8> = Vec::new();
        while total < len {
            let k = r.read(&mut buf).await.expect("read from the tunnel");
            if k == 0 {
                break;
            }
            while pending.len() < k {
                expect.fill(&mut want);
                pending.extend_from_slice(&want);
            }
            if let Some(at) = buf[..k].iter().zip(&pending[..k]).position(|(a, b)| a != b) {
                return Err(total + at);
            }
            pending.drain(..k);
            total += k;
            got_r.store(total, Ordering::SeqCst);
        }
        Ok(total)
    });

    for k in 1..=5u64 {
        let at = len / 6 * k as usize;
        let deadline = Instant::now() + STEP;
        let mut trace_at = Instant::now();
        while got.load(Ordering::SeqCst) < at && !reader.is_finished() {
            if std::env::var_os("SOAK_TRACE").is_some() && Instant::now() > trace_at {
                trace_at = Instant::now() + Duration::from_secs(2);
                let s = world.sim.stats(&id).unwrap();
                eprintln!(
                    "soak trace: back {} data_in {} data_out {} acks_in {} resends {} dups {} ooo {} not_ready {}",
                    got.load(Ordering::SeqCst), s.data_in, s.data_out, s.acks_in, s.resends, s.duplicates_seen, s.out_of_order, s.not_ready
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {at} bytes back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if reader.is_finished() {
            // It stopped early (a difference, or the tunnel closed): reported below.
            break;
        }
        assert!(world.sim.cut(&id), "a client was connected");
        // The cut is queued behind the frames already on their way; wait for the plugin's
        // new connection before the next one, so each cut is an outage of its own.
        wait_until(&format!("connection {}", k + 1), STEP, || {
            world.sim.stats(&id).is_some_and(|s| s.connections > k)
        })
        .await;
    }
    let result = tokio::time::timeout(STEP, reader)
        .await
        .expect("the echo completes")
        .unwrap();
    let elapsed = t0.elapsed();
    let rss = peak_rss_kib(pid);
    let _w = writer.await.unwrap();
    let stats = world.sim.stats(&id).expect("stats");
    eprintln!(
        "soak: {} MiB echoed in {:.1} s; faults to client {:?}, to agent {:?}; agent resends {}, duplicates seen {}; connections {} (resumes {}); plugin peak RSS {} KiB",
        len / MIB,
        elapsed.as_secs_f64(),
        stats.to_client,
        stats.to_agent,
        stats.resends,
        stats.duplicates_seen,
        stats.connections,
        world.calls("ResumeSession").len(),
        rss
    );
    match result {
        Ok(n) => assert_eq!(n, len, "bytes back (those received are right)"),
        Err(at) => panic!("the echo differs from byte {at}"),
    }
    assert!(
        stats.to_agent.dropped > 0
            && stats.to_client.duplicated > 0
            && stats.to_client.reordered > 0,
        "{stats:?}"
    );
    assert_eq!(world.calls("ResumeSession").len(), 5);
    // Bounded: the send window and queues, not the transfer size, decide the memory.
    assert!(rss < 96 * 1024, "peak RSS {rss} KiB");
    p.signal(libc::SIGINT);
    let out = p.finish(Duration::from_secs(30)).await;
    assert!(out.status.success(), "{out}");
}
