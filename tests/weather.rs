//! Bad weather between the plugin and Session Manager (#22): a link that goes silent without a
//! FIN or RST (a frozen relay) is found by the liveness timers and resumed; an idle-cutting
//! middlebox (a NAT entry that expires) is kept open by the keepalive pings; the resumes say
//! nothing on a stderr that is no terminal. Default timings throughout: keepalive 10 s,
//! liveness timeout 8 s, so a frozen link is found 8-18 s after it fell silent.

mod aws_support;
mod port_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_support::*;
use port_common::{connect, echo_through, server, Behaviour, Gen, MIB};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PORT_DOC: &str = "AWS-StartPortForwardingSession";
/// The done criterion of the frozen-link tests: resumed and delivered within this of the freeze.
const RESUMED_WITHIN: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(30);
const LIMIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------------
// The relay
// ---------------------------------------------------------------------------------------------

/// A TCP relay on 127.0.0.1 between the plugin and the simulator's websocket listener.
struct Relay {
    addr: SocketAddr,
    /// One freeze switch per connection accepted so far.
    switches: Arc<Mutex<Vec<watch::Sender<bool>>>>,
    resets: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// When the relay reset connections (idle cuts), relative to the connection's last
    /// client-to-server bytes.
    reset_after: Arc<Mutex<Vec<Duration>>>,
}

impl Relay {
    /// Forwards every accepted connection to `upstream`; with `idle_cut`, resets (RST) any
    /// connection that carried no client-to-server bytes for that long.
    async fn start(upstream: SocketAddr, idle_cut: Option<Duration>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let addr = l.local_addr().unwrap();
        let switches: Arc<Mutex<Vec<watch::Sender<bool>>>> = Arc::default();
        let resets = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let reset_after: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let (sw, rs, ac, ts, ra) = (
            switches.clone(),
            resets.clone(),
            accepted.clone(),
            tasks.clone(),
            reset_after.clone(),
        );
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = l.accept().await else {
                    return;
                };
                ac.fetch_add(1, Ordering::SeqCst);
                let (tx, rx) = watch::channel(false);
                sw.lock().unwrap().push(tx);
                let (rs, ra) = (rs.clone(), ra.clone());
                let t = tokio::spawn(async move {
                    forward(client, upstream, idle_cut, rx, rs, ra).await;
                });
                ts.lock().unwrap().push(t);
            }
        });
        tasks.lock().unwrap().push(acceptor);
        Relay {
            addr,
            switches,
            resets,
            accepted,
            tasks,
            reset_after,
        }
    }

    /// Every connection open now stops forwarding both ways (nothing more is read from either
    /// socket; both stay open). Connections accepted later are forwarded normally.
    fn freeze(&self) {
        for s in self.switches.lock().unwrap().iter() {
            let _ = s.send(true);
        }
    }

    fn resets(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// `url` (`ws://127.0.0.1:PORT/...`) with the relay's host:port.
    fn rewrite(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let at = rest.find('/').unwrap_or(rest.len());
        format!("{scheme}://{}{}", self.addr, &rest[at..])
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// The host:port of a `ws://host:port/...` URL.
fn host_port(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL").1;
    let hp = rest.split('/').next().unwrap();
    hp.parse().expect("an IP:port")
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    idle_cut: Option<Duration>,
    frozen: watch::Receiver<bool>,
    resets: Arc<AtomicU64>,
    reset_after: Arc<Mutex<Vec<Duration>>>,
) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let last_c2s = Mutex::new(Instant::now());
    let cut = {
        let (cr, cw) = client.split();
        let (ur, uw) = up.split();
        let pumps = async {
            tokio::join!(
                pump(cr, uw, frozen.clone(), Some(&last_c2s)),
                pump(ur, cw, frozen.clone(), None)
            )
        };
        let idle = async {
            let Some(limit) = idle_cut else {
                return std::future::pending::<Duration>().await;
            };
            loop {
                let last = *last_c2s.lock().unwrap();
                tokio::time::sleep_until((last + limit).into()).await;
                let quiet = last_c2s.lock().unwrap().elapsed();
                if quiet >= limit {
                    return quiet;
                }
            }
        };
        tokio::select! {
            _ = pumps => None,
            quiet = idle => Some(quiet),
        }
    };
    if let Some(quiet) = cut {
        // RST, as a middlebox that forgot the flow answers.
        let _ = client.set_zero_linger();
        let _ = up.set_zero_linger();
        drop(client);
        drop(up);
        resets.fetch_add(1, Ordering::SeqCst);
        reset_after.lock().unwrap().push(quiet);
        eprintln!(
            "relay: reset a connection after {:.1}s without client-to-server bytes",
            quiet.as_secs_f64()
        );
    }
}

/// Copies `r` to `w` until EOF (then half-closes `w`); once frozen, reads nothing more and
/// never returns.
async fn pump(
    mut r: impl AsyncRead + Unpin,
    mut w: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<bool>,
    last: Option<&Mutex<Instant>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let is_frozen = *frozen.borrow();
        if is_frozen {
            return std::future::pending().await;
        }
        let read = tokio::select! {
            biased;
            _ = async { let _ = frozen.wait_for(|f| *f).await; } => None,
            r = r.read(&mut buf) => Some(r),
        };
        match read {
            None => return std::future::pending().await,
            Some(Ok(0)) | Some(Err(_)) => {
                let _ = w.shutdown().await;
                return;
            }
            Some(Ok(n)) => {
                if let Some(l) = last {
                    *l.lock().unwrap() = Instant::now();
                }
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A session started at the simulator whose StreamUrl points at a relay in front of it.
async fn through_relay(
    world: &World,
    doc: Option<&str>,
    params: &[(&str, &str)],
    idle_cut: Option<Duration>,
) -> (agent_sim::Started, Relay) {
    let mut started = world.start_session(TARGET, doc, params);
    let relay = Relay::start(host_port(&started.stream_url), idle_cut).await;
    started.stream_url = relay.rewrite(&started.stream_url);
    (started, relay)
}

/// The plugin for a port session, with the whole request as the AWS CLI passes it.
fn port_plugin(
    world: &World,
    started: &agent_sim::Started,
    home: &Home,
    dport: u16,
) -> tokio::process::Command {
    let request = serde_json::json!({
        "Target": TARGET,
        "DocumentName": PORT_DOC,
        "Parameters": {"portNumber": [dport.to_string()], "localPortNumber": ["0"]},
    });
    plugin_request(world, started, home, "", &request, &world.api.url())
}

fn connections(world: &World, id: &str) -> u64 {
    world.sim.stats(id).map_or(0, |s| s.connections)
}

/// Waits (bounded) until the simulator saw `n` connections of the session; returns when.
async fn wait_connections(
    world: &World,
    id: &str,
    n: u64,
    limit: Duration,
    p: &Running,
) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if connections(world, id) >= n {
            return Instant::now();
        }
        if Instant::now() >= deadline {
            panic!(
                "the simulator saw {} connections, not {n}, within {limit:?}\n--- stdout\n{}\n--- stderr\n{}\n{}",
                connections(world, id),
                p.stdout(),
                p.stderr(),
                p.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Both frozen-link cases at once: each waits about 18 s for the dead link to be found, and
/// the test harness runs only two tests at a time on two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_link_is_resumed_for_an_idle_shell_and_a_port_transfer() {
    tokio::join!(
        an_idle_shell_behind_a_frozen_link_is_resumed_and_gets_the_typed_line(),
        a_port_transfer_behind_a_frozen_link_resumes_byte_exact(),
    );
}

async fn an_idle_shell_behind_a_frozen_link_is_resumed_and_gets_the_typed_line() {
    let world = World::start(signed_config()).await;
    let (started, relay) = through_relay(&world, None, &[], None).await;
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    cmd.env("SESSION_MANAGER_PLUGIN_MESSAGES", "notices");
    let mut p = Running::spawn(cmd);
    // Arithmetic, so only the shell's output (not the echo of our input) has the marker.
    p.write(b"echo one-$((40+2))\n").await;
    p.wait_stdout("one-42", STEP).await;
    assert_eq!(connections(&world, &id), 1);

    relay.freeze();
    let frozen_at = Instant::now();
    // Typed while the link is silently dead: queued, then delivered once on the new link.
    p.write(b"echo two-$((40+2))\n").await;
    let resumed_at = wait_connections(&world, &id, 2, RESUMED_WITHIN, &p).await;
    let detection = resumed_at - frozen_at;
    eprintln!(
        "frozen shell link: new connection {:.1}s after the freeze",
        detection.as_secs_f64()
    );
    let left = RESUMED_WITHIN.saturating_sub(frozen_at.elapsed());
    p.wait_stdout("two-42", left).await;
    eprintln!(
        "frozen shell link: typed line answered {:.1}s after the freeze",
        frozen_at.elapsed().as_secs_f64()
    );

    p.write(b"exit\n").await;
    let out = p
        .finish_with(LIMIT, || {
            format!("--- simulator\n{:?}", world.sim.stats(&id))
        })
        .await;
    assert!(out.status.success(), "{out}");
    assert_eq!(out.stdout.matches("two-42").count(), 1, "{out}");
    assert_eq!(out.stdout.matches("one-42").count(), 1, "{out}");
    assert!(
        out.stderr.contains("no answer from Session Manager"),
        "{out}"
    );
    assert!(out.stderr.contains("Session resumed."), "{out}");
    let resumes = world.calls("ResumeSession");
    assert_eq!(resumes.len(), 1, "{resumes:?}");
    assert_eq!(connections(&world, &id), 2);
    // The first link went through the relay; the resumed one to ResumeSession's StreamUrl.
    assert!(relay.accepted() >= 1);
}

async fn a_port_transfer_behind_a_frozen_link_resumes_byte_exact() {
    // The service limits stay on: the transfer is paced, so data is in flight at the freeze.
    let world = World::start(signed_config()).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let dp = dport.to_string();
    let (started, relay) =
        through_relay(&world, Some(PORT_DOC), &[("portNumber", &dp)], None).await;
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = port_plugin(&world, &started, &home, dport);
    cmd.env("SESSION_MANAGER_PLUGIN_MESSAGES", "notices");
    let p = Running::spawn(cmd);
    let port = p.port(&id, STEP).await;

    let len = MIB;
    let seed = 22;
    let (mut r, mut w) = connect("127.0.0.1", port).await.into_split();
    let started_at = Instant::now();
    // The client keeps at most WINDOW bytes unanswered, as a protocol with its own window over
    // the tunnel (SSH, say) does. What the agent pushes into the dead link during the freeze
    // comes back only at its resend pace, the oldest unacked message every 100 ms (the real
    // agent's scheduler, which the simulator copies), so an unbounded sender would turn the
    // detection time into a much longer recovery (see the report of issue #22).
    const WINDOW: usize = 32 * 1024;
    const CHUNK: usize = 8 * 1024;
    let (back_tx, mut back_rx) = watch::channel(0usize);
    let writer = tokio::spawn(async move {
        let mut g = Gen::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0;
        while sent < len {
            let _ = back_rx.wait_for(|b| sent - b <= WINDOW - CHUNK).await;
            let n = CHUNK.min(len - sent);
            g.fill(&mut buf[..n]);
            w.write_all(&buf[..n]).await.expect("write to the tunnel");
            sent += n;
        }
        w
    });
    let got = Arc::new(AtomicU64::new(0));
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
            got_r.store(all.len() as u64, Ordering::SeqCst);
            let _ = back_tx.send(all.len());
        }
        all
    });
    wait_until("256 KiB back", STEP, || {
        got.load(Ordering::SeqCst) >= 256 * 1024
    })
    .await;
    relay.freeze();
    let frozen_at = Instant::now();
    let back_at_freeze = got.load(Ordering::SeqCst);
    let first_part = frozen_at - started_at;
    eprintln!(
        "frozen port link: froze with {back_at_freeze} of {len} bytes back after {:.1}s",
        first_part.as_secs_f64()
    );
    assert!(
        back_at_freeze < len as u64,
        "the whole echo came back before the freeze"
    );

    let resumed_at = wait_connections(&world, &id, 2, RESUMED_WITHIN, &p).await;
    eprintln!(
        "frozen port link: new connection {:.1}s after the freeze",
        (resumed_at - frozen_at).as_secs_f64()
    );
    // 30 s, plus the time the whole transfer takes at the pace of its first quarter.
    let bound = RESUMED_WITHIN + first_part * 4;
    let left = bound.saturating_sub(frozen_at.elapsed());
    let back = match tokio::time::timeout(left, reader).await {
        Ok(b) => b.unwrap(),
        Err(_) => panic!(
            "the echo did not complete within {bound:?} of the freeze ({} of {len} bytes back)\n--- stderr\n{}\n{}\n--- simulator\n{:?}",
            got.load(Ordering::SeqCst),
            p.stderr(),
            p.log_tail(),
            world.sim.stats(&id)
        ),
    };
    eprintln!(
        "frozen port link: the whole echo back {:.1}s after the freeze",
        frozen_at.elapsed().as_secs_f64()
    );
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

    assert_eq!(world.calls("ResumeSession").len(), 1);
    assert_eq!(connections(&world, &id), 2);
    // The listener lives on over the resumed link.
    echo_through(port, seed + 1, 64 * 1024).await;
    p.signal(libc::SIGINT);
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stderr.contains("no answer from Session Manager"),
        "{out}"
    );
}

/// An idle port session behind a relay that resets flows silent (client to server) for 12 s;
/// returns (resets, connections at the simulator, ResumeSession calls) after `idle`, and
/// whether an echo still works afterwards.
async fn idle_forward(keepalive: Option<&str>, idle: Duration) -> (u64, u64, usize, Vec<Duration>) {
    let world = World::start(unpaced_config()).await;
    let (dport, _seen) = server("127.0.0.1", Behaviour::Echo).await;
    let dp = dport.to_string();
    let (started, relay) = through_relay(
        &world,
        Some(PORT_DOC),
        &[("portNumber", &dp)],
        Some(Duration::from_secs(12)),
    )
    .await;
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = port_plugin(&world, &started, &home, dport);
    cmd.env("SESSION_MANAGER_PLUGIN_MESSAGES", "notices");
    if let Some(k) = keepalive {
        cmd.env("SESSION_MANAGER_PLUGIN_KEEPALIVE", k);
    }
    let p = Running::spawn(cmd);
    let port = p.port(&id, STEP).await;
    let opened = Instant::now();
    let label = keepalive.map_or("default keepalive".to_owned(), |k| format!("keepalive {k}"));
    if keepalive.is_some() {
        // The control: the relay must cut the silent link.
        wait_until("a reset by the relay", idle, || relay.resets() >= 1).await;
        eprintln!(
            "idle forward ({label}): relay reset the link {:.1}s after the port opened",
            opened.elapsed().as_secs_f64()
        );
        // The plugin resumes from the RST like from any cut.
        wait_connections(&world, &id, 2, STEP, &p).await;
    } else {
        tokio::time::sleep(idle).await;
    }
    let result = (
        relay.resets(),
        connections(&world, &id),
        world.calls("ResumeSession").len(),
        relay.reset_after.lock().unwrap().clone(),
    );
    eprintln!(
        "idle forward ({label}): after {:.1}s: {} resets, {} connections, {} ResumeSession",
        opened.elapsed().as_secs_f64(),
        result.0,
        result.1,
        result.2
    );
    // The forward works either way afterwards.
    echo_through(port, 5, 64 * 1024).await;
    p.signal(libc::SIGINT);
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{label}: {out}");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_forward_is_not_cut_by_an_idle_cutting_relay() {
    let t0 = Instant::now();
    let (kept, control) = tokio::join!(
        // Past the relay's 12 s cut, through two keepalive pings (one every 10 s).
        idle_forward(None, Duration::from_secs(22)),
        // No keepalive: the relay must reset the link after its 12 s (the test can fail).
        idle_forward(Some("0"), Duration::from_secs(25)),
    );
    eprintln!("idle forwards: {:.1}s", t0.elapsed().as_secs_f64());
    assert_eq!(kept.0, 0, "resets of the kept-alive link: {kept:?}");
    assert_eq!(kept.1, 1, "connections at the simulator: {kept:?}");
    assert_eq!(kept.2, 0, "ResumeSession calls: {kept:?}");
    assert!(control.0 >= 1, "the control was never reset: {control:?}");
    assert!(
        control.3[0] >= Duration::from_secs(12),
        "the control was cut before it was idle 12 s: {control:?}"
    );
    assert_eq!(control.2, 1, "the control resumed once: {control:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_are_silent_on_a_stderr_that_is_no_terminal() {
    let world = World::start(signed_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    let cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    let mut p = Running::spawn(cmd);
    p.write(b"V=kept-42\n").await;
    p.write(b"echo m0-$((0+0))-$V\n").await;
    p.wait_stdout("m0-0-kept-42", STEP).await;
    assert!(world.sim.cut(&id), "a client was connected");
    p.write(b"echo m1-$((1+0))-$V\n").await;
    p.wait_stdout("m1-1-kept-42", STEP).await;
    wait_connections(&world, &id, 2, STEP, &p).await;
    assert!(world.sim.close_bye(&id), "a client was connected");
    p.write(b"echo m2-$((2+0))-$V\n").await;
    p.wait_stdout("m2-2-kept-42", STEP).await;
    wait_connections(&world, &id, 3, STEP, &p).await;
    p.write(b"exit\n").await;
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    assert_eq!(out.stderr, "", "{out}");
    assert_eq!(world.calls("ResumeSession").len(), 2);
    for n in 0..=2 {
        assert_eq!(
            out.stdout.matches(&format!("m{n}-{n}-kept-42")).count(),
            1,
            "{out}"
        );
    }
}
