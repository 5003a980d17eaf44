//! Port forwarding with the AWS side in play: a large transfer through websocket cuts and the
//! hourly 1000 "Bye" (ResumeSession, signed upgrades), and a KMS-encrypted port session.

mod aws_support;
mod port_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_support::*;
use port_common::{connect, echo_through, server, write_gen, Behaviour, Gen, MIB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOC: &str = "AWS-StartPortForwardingSession";
const STEP: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(40);

/// Signed upgrades, resumable, service limits off (this is about reconnection, not pacing).
fn config(agent_version: &str) -> agent_sim::SimConfig {
    let mut cfg = fast_config();
    cfg.agent_version = agent_version.into();
    cfg.ws_credentials = ws_credentials();
    cfg.require_signed_upgrade = true;
    cfg.limits.port_pacing = false;
    cfg.limits.frame_rate_limit = None;
    cfg
}

/// MiB sent through the cut transfer: `PORT_TEST_RECONNECT_MIB`, else 16. Both directions
/// and both agent kinds, with the hourly Bye among the cuts; the bulk (256 MiB through 5 cuts
/// and lossy links) is `soak::a_large_upload`, so this one stays short (64 MiB took 80 s).
fn reconnect_mib() -> usize {
    std::env::var("PORT_TEST_RECONNECT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

async fn wait_connections(world: &World, id: &str, n: u64) {
    wait_until(&format!("{n} connections"), STEP, || {
        world.sim.stats(id).is_some_and(|s| s.connections >= n)
    })
    .await;
}

/// Echoes `len` bytes through the tunnel while the websocket is cut three times and closed
/// once with 1000 "Bye", each when another fifth of the data has come back.
async fn transfer_through_cuts(agent_version: &str) {
    let world = World::start(config(agent_version)).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let started = world.start_session(TARGET, Some(DOC), &[("portNumber", &dport.to_string())]);
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    // The resume notices are asked for: stderr is no terminal here.
    cmd.env("SESSION_MANAGER_PLUGIN_MESSAGES", "notices");
    // The debug log of a long transfer is big and slows the debug build; errors are enough.
    cmd.env("SESSION_MANAGER_PLUGIN_LOG", "info");
    let p = Running::spawn(cmd);
    let port = p.port(&id, STEP).await;

    let len = reconnect_mib() * MIB;
    let seed = 71;
    let (mut r, mut w) = connect("127.0.0.1", port).await.into_split();
    // The client closes only after reading everything back: the agent closes the destination
    // connection when the client's stream ends, dropping what was still on its way.
    let writer = tokio::spawn(async move {
        write_gen(&mut w, seed, len).await;
        w
    });
    let got = Arc::new(AtomicUsize::new(0));
    let got_r = got.clone();
    let reader = tokio::spawn(async move {
        let mut all = Vec::with_capacity(len);
        let mut buf = vec![0u8; 64 * 1024];
        while all.len() < len {
            let k = r.read(&mut buf).await.expect("read from the tunnel");
            if k == 0 {
                break;
            }
            all.extend_from_slice(&buf[..k]);
            got_r.store(all.len(), Ordering::SeqCst);
        }
        all
    });

    for k in 1..=4u64 {
        let at = len / 5 * k as usize;
        wait_until(&format!("{at} bytes back"), STEP, || {
            got.load(Ordering::SeqCst) >= at
        })
        .await;
        if k < 4 {
            assert!(world.sim.cut(&id), "a client was connected");
        } else {
            assert!(world.sim.close_bye(&id), "a client was connected");
        }
        wait_connections(&world, &id, k + 1).await;
    }
    let back = tokio::time::timeout(STEP * 2, reader)
        .await
        .expect("the echo completes")
        .unwrap();
    let mut sent = vec![0u8; len];
    Gen::new(seed).fill(&mut sent);
    if let Some(at) = back.iter().zip(&sent).position(|(a, b)| a != b) {
        panic!(
            "the echo differs from byte {at} on ({} of {len} bytes back)",
            back.len()
        );
    }
    assert_eq!(back.len(), len, "bytes back (those received are right)");
    let mut w = writer.await.unwrap();
    w.shutdown().await.expect("close");

    // The listener lives on: a new connection works on the resumed session.
    echo_through(port, seed + 1, 256 * 1024).await;

    // SIGTERM: the agent is told, and the status says what ended us (128 + 15).
    p.signal(libc::SIGTERM);
    let out = p.finish(LIMIT).await;
    assert_eq!(out.status.code(), Some(143), "{out}");
    assert!(
        out.stdout
            .contains(&format!("Exiting session with sessionId: {id}.")),
        "{out}"
    );
    assert_eq!(out.stderr.matches("Session resumed.").count(), 4, "{out}");
    assert!(out.stderr.contains("1000 Bye"), "{out}");
    assert_eq!(world.calls("ResumeSession").len(), 4);
    let stats = world.sim.stats(&id).unwrap();
    assert_eq!(stats.connections, 5);
    assert!(stats
        .upgrades
        .iter()
        .all(|u| u.signed_by.as_ref().is_some_and(|b| b.verified)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smux_transfer_survives_three_cuts_and_the_hourly_bye() {
    transfer_through_cuts("3.3.987.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_transfer_survives_three_cuts_and_the_hourly_bye() {
    transfer_through_cuts("3.0.196.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_port_session_is_byte_exact() {
    let mut cfg = config("3.3.987.0");
    cfg.kms_key_id = Some("alias/session-key".into());
    cfg.require_kms_challenge = true;
    // Not what the real agent does (it never encrypts port sessions), but what a plugin that
    // is asked to must get right over bulk data.
    cfg.kms_for_port_sessions = true;
    let world = World::start(cfg).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let started = world.start_session(TARGET, Some(DOC), &[("portNumber", &dport.to_string())]);
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    let p = Running::spawn(plugin(
        &world,
        &started,
        &home,
        "",
        TARGET,
        &world.api.url(),
    ));
    let port = p.port(&id, STEP).await;
    assert!(
        p.stdout()
            .contains("This session is encrypted using AWS KMS."),
        "{}",
        p.stdout()
    );
    // Two connections, one after the other, each its own stream under the same keys.
    echo_through(port, 5, 4 * MIB).await;
    echo_through(port, 6, MIB).await;
    let calls = world.calls("GenerateDataKey");
    assert_eq!(calls.len(), 1, "one data key per session");
    assert_eq!(
        calls[0].body["EncryptionContext"]["aws:ssm:SessionId"],
        id.as_str()
    );
    p.signal(libc::SIGINT);
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
}
