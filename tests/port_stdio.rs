//! stdin/stdout port sessions (`AWS-StartSSHSession`, as OpenSSH's ProxyCommand runs them).

mod port_common;

use port_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOC: &str = "AWS-StartSSHSession";
const AGENT: &str = "3.3.987.0";

fn launch<'a>(st: &'a agent_sim::Started, req: &'a str) -> Launch<'a> {
    Launch {
        started: st,
        request: req,
        // Status lines out of the tunnel, so stdout carries only the remote bytes.
        env: vec![("SESSION_MANAGER_PLUGIN_MESSAGES", "stderr".to_string())],
        stdio: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_to_remote_and_back_then_clean_exit_at_stdin_eof() {
    let sim = sim(sim_config(true, AGENT)).await;
    let (dport, seen) = server("127.0.0.1", Behaviour::Echo).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let mut p = Plugin::spawn(launch(&st, &req));
    let mut stdin = p.child.stdin.take().unwrap();
    let mut stdout = p.child.stdout.take().unwrap();
    let len = 2 * MIB;
    let reader = tokio::spawn(async move {
        let r = read_hash(&mut stdout, len).await;
        (r, stdout)
    });
    let sent = write_gen(&mut stdin, 41, len).await;
    let ((n, got), mut stdout) = tokio::time::timeout(T * 4, reader).await.unwrap().unwrap();
    assert_eq!((n, got), (len, sent));
    // One lone newline must reach the remote unchanged (no Enter rewrite on port data).
    stdin.write_all(b"\n").await.unwrap();
    let mut nl = [0u8; 1];
    tokio::time::timeout(T, stdout.read_exact(&mut nl))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&nl, b"\n");
    drop(stdin);
    let status = p.wait(T).await;
    assert!(status.success(), "{status:?}; stderr {:?}", p.stderr.text());
    assert!(p.stderr.text().contains("Starting session with SessionId"));
    // Everything reached the destination, and the TerminateSession flag sent after it ended
    // the session at the agent.
    assert!(sim.wait_ended(&st.session_id, T).await.is_some());
    // (The simulator keeps its destination connection open after the session ends, so the
    // destination's own report is not awaited.)
    let to_dest = sim.stats(&st.session_id).unwrap().bytes_to_destination;
    assert_eq!(to_dest, len as u64 + 1);
    drop(seen);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_close_ends_the_session_after_all_output() {
    let sim = sim(sim_config(true, AGENT)).await;
    let len = 1_000_000;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Source { seed: 43, len }).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let mut p = Plugin::spawn(launch(&st, &req));
    let _stdin = p.child.stdin.take().unwrap();
    let mut stdout = p.child.stdout.take().unwrap();
    let (n, got) = tokio::time::timeout(T * 2, read_hash(&mut stdout, usize::MAX))
        .await
        .unwrap();
    assert_eq!((n, got), (len, gen_hash(43, len)));
    let status = p.wait(T).await;
    assert!(status.success(), "{status:?}");
    assert!(p.stderr.text().contains("Exiting session with sessionId"));
    sim.shutdown();
}

/// Stdin ends with much still to send (a low frame budget keeps ~10 s of data queued): the
/// plugin waits while the agent keeps acknowledging, instead of a fixed 5 s, so nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_tail_after_stdin_eof_is_delivered_whole() {
    let sim = sim(sim_config(true, AGENT)).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Sink).await;
    let (st, req) = start(&sim, DOC, &[("portNumber", &dport.to_string())]);
    let mut l = launch(&st, &req);
    l.env
        .push(("SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE", "200".to_string()));
    let mut p = Plugin::spawn(l);
    let mut stdin = p.child.stdin.take().unwrap();
    let _stdout = p.child.stdout.take().unwrap();
    let len = 2 * MIB;
    let t0 = std::time::Instant::now();
    write_gen(&mut stdin, 47, len).await;
    drop(stdin);
    let status = p.wait(T * 2).await;
    eprintln!(
        "2 MiB at 200 messages/s: exit after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(status.success(), "{status:?}; stderr {:?}", p.stderr.text());
    assert!(
        !p.stderr.text().contains("did not acknowledge"),
        "{}",
        p.stderr.text()
    );
    // Acknowledged means written to the destination; allow the counter a moment.
    let mut to_dest = 0;
    for _ in 0..50 {
        to_dest = sim.stats(&st.session_id).unwrap().bytes_to_destination;
        if to_dest >= len as u64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(to_dest, len as u64);
    sim.shutdown();
}
