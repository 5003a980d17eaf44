//! The standalone commands (`connect`, `exec`, `forward`, `tunnels`, `completions`) against the
//! simulator's fake SSM API and agent: they call StartSession themselves, resolve targets by
//! tag, and run the same sessions the drop-in form runs.

mod aws_support;
mod port_common;

use std::path::Path;
use std::time::Duration;

use agent_sim::api::Instance;
use aws_support::*;
use port_common::{echo_through, server, Behaviour};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(30);

async fn finished(c: tokio::process::Command) -> Finished {
    Running::spawn(c).finish(STEP).await
}

/// `ADDRESS:PORT -> ...` status lines of `forward`, in order.
async fn forward_lines(p: &Running, n: usize) -> Vec<(String, String)> {
    wait_until(&format!("{n} forward lines"), STEP, || {
        p.stderr().lines().filter(|l| l.contains(" via ")).count() >= n
    })
    .await;
    p.stderr()
        .lines()
        .filter(|l| l.contains(" -> ") && l.contains(" via "))
        .map(|l| {
            let (a, b) = l.split_once(" -> ").unwrap();
            (a.to_owned(), b.to_owned())
        })
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn exec_exits_with_the_remote_status_and_keeps_stderr_apart() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    let out = finished(standalone(
        &world,
        &home,
        &[
            "exec",
            TARGET,
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 7",
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(7), "{out}");
    assert_eq!(
        out.stdout, "to-out\n",
        "stdout is the command's alone\n{out}"
    );
    assert!(out.stderr.contains("to-err"), "{out}");
    assert!(
        out.stderr.contains("Starting session with SessionId"),
        "{out}"
    );
    let calls = world.calls("StartSession");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].body["DocumentName"],
        "AWS-StartNonInteractiveCommand"
    );
    assert_eq!(
        calls[0].body["Parameters"]["command"][0],
        "sh -c 'echo to-out; echo to-err >&2; exit 7'"
    );
    // AWS's document sends the status and stderr apart only when asked (its default is off).
    assert_eq!(
        calls[0].body["Parameters"]["separateOutputStream"][0],
        "true"
    );
    assert!(calls[0].signed_by.as_ref().is_some_and(|s| s.verified));
}

/// TLS on 127.0.0.1 in front of the plain-HTTP fake API; the port and the CA's PEM.
async fn https_in_front_of(api_url: &str) -> (u16, String) {
    let (acceptor, ca_pem) = agent_sim::tls_acceptor().expect("test TLS");
    let api = api_url.trim_start_matches("http://").to_owned();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, api) = (acceptor.clone(), api.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&api).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, ca_pem)
}

/// The SDK's own HTTPS client (rustls on ring, the system roots or SSL_CERT_FILE) reaches an
/// HTTPS endpoint and signs for it: the path every real StartSession, ResumeSession and KMS
/// call takes, which the other tests (plain HTTP on loopback) do not.
#[tokio::test]
async fn sdk_calls_go_over_https_trusting_ssl_cert_file() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    let (port, ca_pem) = https_in_front_of(&world.api.url()).await;
    let ca = home.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let endpoint = format!("https://localhost:{port}");
    let run = |trust: Option<&Path>| {
        let mut c = isolated(&world, &home, "standalone-https");
        c.args(["exec", "--region", REGION, "--endpoint-url", &endpoint])
            .args([TARGET, "--", "echo", "over-tls"]);
        if let Some(ca) = trust {
            c.env("SSL_CERT_FILE", ca);
        }
        c
    };
    let out = finished(run(Some(&ca))).await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "over-tls\n", "{out}");
    let calls = world.calls("StartSession");
    assert_eq!(calls.len(), 1);
    assert!(calls[0].signed_by.as_ref().is_some_and(|s| s.verified));
    // Without the CA the certificate is refused, and nothing reaches the API.
    let out = finished(run(None)).await;
    assert_ne!(out.status.code(), Some(0), "{out}");
    assert!(
        out.stderr.contains("invalid peer certificate") && out.stderr.contains("SSL_CERT_FILE"),
        "the reason and the setting that helps\n{out}"
    );
    assert_eq!(world.calls("StartSession").len(), 1, "{out}");
}

#[tokio::test]
async fn connect_runs_a_shell_without_the_aws_cli() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    let mut p = Running::spawn(standalone(
        &world,
        &home,
        &["connect", TARGET, "--reason", "test"],
    ));
    p.wait_stdout("Starting session with SessionId", STEP).await;
    p.write(b"echo standalone-$((40+2))\n").await;
    p.wait_stdout("standalone-42", STEP).await;
    p.write(b"exit\n").await;
    let out = p.finish(STEP).await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains("Exiting session with sessionId"),
        "{out}"
    );
    let calls = world.calls("StartSession");
    assert_eq!(calls[0].body["Target"], TARGET);
    assert_eq!(calls[0].body["Reason"], "test");
    assert!(calls[0].body.get("DocumentName").is_none());
}

#[tokio::test]
async fn targets_by_tag_with_zero_one_and_two_matches() {
    let world = World::start(unpaced_config()).await;
    world.api.set_instances(vec![
        Instance::online("i-0aaaaaaaaaaaaaaa1", &[("Name", "web"), ("Role", "app")]),
        Instance::online(
            "i-0aaaaaaaaaaaaaaa2",
            &[("Name", "worker"), ("Role", "app")],
        ),
        Instance::online("i-0aaaaaaaaaaaaaaa3", &[("Name", "db"), ("Role", "data")]),
    ]);
    let home = Home::with_keys("default", KEY, SECRET);

    let one = finished(standalone(&world, &home, &["exec", "web", "--", "true"])).await;
    assert_eq!(one.status.code(), Some(0), "{one}");
    let by_tag = finished(standalone(
        &world,
        &home,
        &["exec", "tag:Role=data", "--", "true"],
    ))
    .await;
    assert_eq!(by_tag.status.code(), Some(0), "{by_tag}");
    let targets: Vec<String> = world
        .calls("StartSession")
        .iter()
        .map(|c| c.body["Target"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(targets, ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa3"]);

    let none = finished(standalone(&world, &home, &["exec", "nosuch", "--", "true"])).await;
    assert_eq!(none.status.code(), Some(69), "{none}");
    assert!(
        none.stderr
            .contains("no online managed node has the tag Name=nosuch"),
        "{none}"
    );

    let two = finished(standalone(
        &world,
        &home,
        &["exec", "tag:Role=app", "--", "true"],
    ))
    .await;
    assert_eq!(two.status.code(), Some(69), "{two}");
    assert!(
        two.stderr
            .contains("i-0aaaaaaaaaaaaaaa1 (web), i-0aaaaaaaaaaaaaaa2 (worker)"),
        "{two}"
    );
    assert_eq!(
        world.calls("StartSession").len(),
        2,
        "no session for 0 or 2 matches"
    );
    let filters = &world.calls("DescribeInstanceInformation")[0].body["Filters"];
    assert!(filters.to_string().contains("tag:Name"), "{filters}");
    assert!(filters.to_string().contains("PingStatus"), "{filters}");
}

#[tokio::test]
async fn three_forwards_in_one_process() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    let (d1, _s1) = server("127.0.0.1", Behaviour::Echo).await;
    let (d2, _s2) = server("127.0.0.1", Behaviour::Echo).await;
    let (d3, _s3) = server("127.0.0.1", Behaviour::Echo).await;
    let l1 = format!("0:{d1}");
    let l2 = format!("0:127.0.0.1:{d2}");
    let l3 = format!("127.0.0.1:0:localhost:{d3}");
    let p = Running::spawn(standalone(
        &world,
        &home,
        &["forward", TARGET, "-L", &l1, "-L", &l2, "-L", &l3],
    ));
    let lines = forward_lines(&p, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0]
            .1
            .starts_with(&format!("port {d1} via {TARGET} (session ")),
        "{lines:?}"
    );
    assert!(
        lines[1].1.starts_with(&format!("127.0.0.1:{d2} via")),
        "{lines:?}"
    );
    assert!(
        lines[2].1.starts_with(&format!("localhost:{d3} via")),
        "{lines:?}"
    );
    for (i, (addr, _)) in lines.iter().enumerate() {
        echo_through(port_of(addr), 100 + i as u64, 256 * 1024).await;
    }
    let docs: Vec<String> = world
        .calls("StartSession")
        .iter()
        .map(|c| c.body["DocumentName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        docs.iter().filter(|d| d.ends_with("ToRemoteHost")).count(),
        2
    );
    assert_eq!(docs.len(), 3);

    // Ctrl-C ends every session, telling the agent.
    p.signal(libc::SIGINT);
    let out = p.finish(STEP).await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    for id in world.sim.session_ids() {
        assert!(
            world.sim.wait_ended(&id, STEP).await.is_some(),
            "session {id} ended\n{out}"
        );
    }
}

/// A minimal HTTP server answering every request with `body`.
async fn http_server(body: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

async fn curl_socks(proxy: &str, url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--socks5-hostname", proxy, url])
        .output()
        .await
        .expect("curl runs (scripts/ensure-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn socks5_gives_each_destination_a_session_and_reuses_it() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    let h1 = http_server("first destination").await;
    let h2 = http_server("second destination").await;
    let p = Running::spawn(standalone(
        &world,
        &home,
        &["forward", TARGET, "-D", "0", "--socks-idle", "2"],
    ));
    let lines = forward_lines(&p, 1).await;
    let proxy = lines[0].0.clone();
    assert!(
        lines[0].1.starts_with(&format!("SOCKS5 via {TARGET}")),
        "{lines:?}"
    );

    assert_eq!(
        curl_socks(&proxy, &format!("http://localhost:{h1}/")).await,
        "first destination"
    );
    assert_eq!(
        curl_socks(&proxy, &format!("http://127.0.0.1:{h2}/")).await,
        "second destination"
    );
    assert_eq!(
        curl_socks(&proxy, &format!("http://localhost:{h1}/again")).await,
        "first destination"
    );
    let starts = world.calls("StartSession");
    let hosts: Vec<(String, String)> = starts
        .iter()
        .map(|c| {
            (
                c.body["Parameters"]["host"][0].as_str().unwrap().to_owned(),
                c.body["Parameters"]["portNumber"][0]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        [
            ("localhost".to_owned(), h1.to_string()),
            ("127.0.0.1".to_owned(), h2.to_string())
        ],
        "one session per destination, reused by the second request"
    );
    assert!(starts
        .iter()
        .all(|c| c.body["DocumentName"] == "AWS-StartPortForwardingSessionToRemoteHost"));

    // Idle destinations' sessions are closed; a later request starts a new one.
    let first_ids = world.sim.session_ids();
    for id in &first_ids {
        assert!(
            world.sim.wait_ended(id, STEP).await.is_some(),
            "idle session {id} closed\n{}",
            p.stderr()
        );
    }
    assert_eq!(
        curl_socks(&proxy, &format!("http://localhost:{h1}/later")).await,
        "first destination"
    );
    assert_eq!(world.calls("StartSession").len(), 3);

    p.signal(libc::SIGTERM);
    let out = p.finish(STEP).await;
    assert_eq!(out.status.code(), Some(143), "{out}");
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn named_tunnels_from_a_config_file() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    world.api.set_instances(vec![Instance::online(
        "i-0bbbbbbbbbbbbbbb1",
        &[("Name", "bastion")],
    )]);
    let (d1, _s1) = server("127.0.0.1", Behaviour::Echo).await;
    let (d2, _s2) = server("127.0.0.1", Behaviour::Echo).await;
    let dir = home.path().join("xdg/session-manager-plugin");
    write(
        &dir.join("config.toml"),
        &format!(
            "include = [\"team.d\"]\n[aliases]\njump = \"bastion\"\n[tunnels.db]\ntarget = \"jump\"\nforward = [\"0:127.0.0.1:{d1}\"]\n"
        ),
    );
    write(
        &dir.join("team.d/web.toml"),
        &format!(
            "[tunnels.web]\ntarget = \"{TARGET}\"\nforward = [\"0:{d2}\"]\nregion = \"{REGION}\"\n"
        ),
    );
    let list = finished(standalone(&world, &home, &["tunnels", "--list"])).await;
    assert_eq!(list.status.code(), Some(0), "{list}");
    assert_eq!(
        list.stdout,
        format!("db\tjump\t-L 0:127.0.0.1:{d1}\nweb\t{TARGET}\t-L 0:{d2} region={REGION}\n")
    );

    let p = Running::spawn(standalone(&world, &home, &["tunnels", "db"]));
    let lines = forward_lines(&p, 1).await;
    assert!(lines[0].1.contains("via i-0bbbbbbbbbbbbbbb1"), "{lines:?}");
    echo_through(port_of(&lines[0].0), 5, 128 * 1024).await;
    p.signal(libc::SIGINT);
    let out = p.finish(STEP).await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert_eq!(
        world.calls("StartSession").len(),
        1,
        "only the named tunnel"
    );

    let unknown = finished(standalone(&world, &home, &["tunnels", "nope"])).await;
    assert_eq!(unknown.status.code(), Some(64), "{unknown}");
    assert!(
        unknown.stderr.contains("no tunnel named \"nope\""),
        "{unknown}"
    );
}

/// `--help` of every command, compared with tests/data/help/*.txt (`UPDATE_SNAPSHOTS=1`
/// rewrites them).
#[test]
fn help_output_matches_the_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/help");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    for cmd in ["connect", "exec", "forward", "tunnels", "completions"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-manager-plugin"))
            .args([cmd, "--help"])
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd} --help");
        let text = String::from_utf8(out.stdout).unwrap();
        let file = dir.join(format!("{cmd}.txt"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &text).unwrap();
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|_| panic!("{} missing; run with UPDATE_SNAPSHOTS=1", file.display()));
        assert_eq!(
            text, want,
            "{cmd} --help changed; rerun with UPDATE_SNAPSHOTS=1 if meant"
        );
    }
}

#[test]
fn completions_and_usage_errors() {
    let bin = env!("CARGO_BIN_EXE_session-manager-plugin");
    let out = std::process::Command::new(bin)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("session-manager-plugin") && text.contains("forward"),
        "{text}"
    );
    let bad = std::process::Command::new(bin)
        .args(["forward", "i-0123456789abcdef0", "-L", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("LOCAL_PORT"));
    // The drop-in form is untouched: an unknown word is still the reference's error.
    let legacy = std::process::Command::new(bin)
        .args(["frobnicate"])
        .output()
        .unwrap();
    assert_eq!(legacy.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&legacy.stderr).contains("Unknown operation frobnicate"));
}

/// A raw SOCKS5 CONNECT to `host:port` (by name) through `proxy`: the reply's REP byte and the
/// connection, positioned after the reply.
async fn socks5_connect(proxy: &str, host: &str, port: u16) -> (u8, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, 0], "no authentication");
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    tokio::time::timeout(STEP, s.read_exact(&mut reply))
        .await
        .expect("a SOCKS5 reply in time")
        .expect("a whole SOCKS5 reply");
    assert_eq!(reply[0], 5, "{reply:?}");
    (reply[1], s)
}

#[tokio::test]
async fn socks5_refuses_a_destination_the_agent_cannot_reach() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (echo, _) = server("127.0.0.1", Behaviour::Echo).await;
    let (source, _) = server(
        "127.0.0.1",
        Behaviour::Source {
            seed: 21,
            len: 100_000,
        },
    )
    .await;
    let p = Running::spawn(standalone(&world, &home, &["forward", TARGET, "-D", "0"]));
    let proxy = forward_lines(&p, 1).await[0].0.clone();

    // Refused: on the destination's new session, then again on the session it keeps.
    for attempt in 0..2 {
        let (rep, mut s) = socks5_connect(&proxy, "127.0.0.1", closed).await;
        assert!(
            rep == 5 || rep == 4,
            "attempt {attempt}: REP {rep}, not connection refused / host unreachable\n{}",
            p.stderr()
        );
        let mut rest = Vec::new();
        let end = tokio::time::timeout(STEP, s.read_to_end(&mut rest)).await;
        assert!(
            matches!(end, Ok(Err(_)) | Ok(Ok(0))),
            "the refused connection is closed: {end:?} {rest:?}"
        );
    }

    // A working destination is still granted, and its bytes flow both ways.
    let (rep, s) = socks5_connect(&proxy, "127.0.0.1", echo).await;
    assert_eq!(rep, 0, "{}", p.stderr());
    let (mut r, mut w) = s.into_split();
    let reader = tokio::spawn(async move { port_common::read_hash(&mut r, 200_000).await });
    let sent = port_common::write_gen(&mut w, 5, 200_000).await;
    let (n, got) = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
    assert_eq!((n, got), (200_000, sent), "echoed through the proxy");
    w.shutdown().await.unwrap();

    // A destination that speaks first: the success reply comes before its bytes.
    let (rep, mut s) = socks5_connect(&proxy, "127.0.0.1", source).await;
    assert_eq!(rep, 0, "{}", p.stderr());
    let (n, got) = tokio::time::timeout(STEP, port_common::read_hash(&mut s, 200_000))
        .await
        .unwrap();
    assert_eq!(
        (n, got),
        (100_000, port_common::gen_hash(21, 100_000)),
        "the destination's bytes, whole, after the reply"
    );

    p.signal(libc::SIGTERM);
    let out = p.finish(STEP).await;
    assert_eq!(out.status.code(), Some(143), "{out}");
}

/// A document that reports no status (here an interactive command, run in a pty): `exec`
/// wraps the command so the node prints the status behind a marker, which is taken out of the
/// output, and exits with it.
#[tokio::test]
async fn exec_gets_the_status_through_a_marker_where_the_document_reports_none() {
    let world = World::start(unpaced_config()).await;
    let home = Home::with_keys("default", KEY, SECRET);
    let out = finished(standalone(
        &world,
        &home,
        &[
            "exec",
            TARGET,
            "--document",
            "AWS-StartInteractiveCommand",
            "--",
            "sh",
            "-c",
            "printf 'no newline at the end'; exit 4",
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(4), "{out}");
    assert_eq!(out.stdout, "no newline at the end", "{out}");
    assert!(!out.stdout.contains("__SSM_EXIT_"), "{out}");
    let calls = world.calls("StartSession");
    assert_eq!(calls[0].body["DocumentName"], "AWS-StartInteractiveCommand");
    assert!(calls[0].body["Parameters"]
        .get("separateOutputStream")
        .is_none());
    // ECS targets take only interactive commands: the same way there, without --document.
    let out = finished(standalone(
        &world,
        &home,
        &[
            "exec",
            "ecs:c1_t1_r1",
            "--",
            "sh",
            "-c",
            "echo in-the-container; exit 5",
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(5), "{out}");
    assert!(out.stdout.starts_with("in-the-container"), "{out}");
    assert!(!out.stdout.contains("__SSM_EXIT_"), "{out}");
    let calls = world.calls("StartSession");
    assert_eq!(calls[1].body["DocumentName"], "AWS-StartInteractiveCommand");
}
