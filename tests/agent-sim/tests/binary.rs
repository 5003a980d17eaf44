//! The `agent-sim` binary: its JSON line, the fake AWS API behind `--api`, and its flags,
//! each observed through a session started with a plain HTTP StartSession call.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use ssm_plugin::wire::PayloadType;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_agent-sim");

/// A running `agent-sim` and its JSON line.
struct Proc {
    child: Child,
    info: Value,
}

impl Proc {
    async fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("agent-sim starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(T, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("agent-sim prints its JSON line in time")
            .unwrap();
        let info: Value = serde_json::from_str(&line).expect("one JSON line");
        Proc { child, info }
    }

    fn get(&self, key: &str) -> &str {
        self.info[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in {}", self.info))
    }

    /// A plain, unsigned AWS JSON 1.1 call.
    async fn call(&self, target: &str, body: Value) -> (u16, Value) {
        aws_call(self.get("api_url"), target, &body).await
    }

    async fn start_session(&self, body: Value) -> (String, String, String) {
        let (status, out) = self.call("AmazonSSM.StartSession", body).await;
        assert_eq!(status, 200, "{out}");
        let get = |k: &str| out[k].as_str().unwrap().to_owned();
        (get("SessionId"), get("TokenValue"), get("StreamUrl"))
    }

    /// Waits for the process to exit; returns whether it succeeded.
    async fn exit(mut self) -> bool {
        tokio::time::timeout(T, self.child.wait())
            .await
            .expect("agent-sim exits in time")
            .unwrap()
            .success()
    }
}

async fn aws_call(api_url: &str, target: &str, body: &Value) -> (u16, Value) {
    let hostport = api_url.strip_prefix("http://").expect("http api_url");
    let body = body.to_string();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {hostport}\r\nX-Amz-Target: {target}\r\n\
         Content-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(hostport).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(T, tcp.read_to_end(&mut resp))
        .await
        .expect("API answers in time")
        .unwrap();
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "the fake API sends whole bodies"
    );
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The stream URL re-pointed at the plain ws:// listener (both listeners serve every session).
fn plain(url: &str, plain_ws_url: &str) -> String {
    let path = &url[url.find("/v1/").expect("data channel path")..];
    format!("{plain_ws_url}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_smoke_start_session_opens_the_websocket() {
    let p = Proc::spawn(&["--api", "--pty-start-delay-ms", "100"]).await;
    assert!(p.get("api_url").starts_with("http://127.0.0.1:"));
    assert!(p.get("ws_url").starts_with("ws://127.0.0.1:"));
    assert_eq!(p.get("ws_url"), p.get("plain_ws_url"));
    assert!(p.info["cert_file"].is_null());
    let (id, token, url) = p
        .start_session(json!({"Target": "i-0123456789abcdef0"}))
        .await;
    assert!(url.starts_with(&format!("{}/v1/data-channel/{id}", p.get("ws_url"))));
    let mut c = Client::connect(&url, &token, NEW_CLIENT).await;
    // The websocket is open and a shell runs behind it.
    let first = c.data(T).await.expect("shell output");
    assert_eq!(first.payload_type, PayloadType::OUTPUT);
    assert_eq!((first.sequence_number, first.flags), (0, 1));
    let (status, _) = p
        .call("AmazonSSM.TerminateSession", json!({"SessionId": id}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.until_closed(T).await.0, "");
    // EOF on stdin stops it.
    let Proc { mut child, info } = p;
    drop(child.stdin.take());
    assert!(Proc { child, info }.exit().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_version_timeouts_output_and_resume_flags() {
    let p = Proc::spawn(&[
        "--api",
        "--tls",
        "--agent-version",
        "2.9.1.0",
        "--handshake-timeout-ms",
        "300",
        "--separate-output-stream",
        "false",
        "--resume-window-secs",
        "1",
    ])
    .await;
    assert!(p.get("ws_url").starts_with("wss://127.0.0.1:"));
    let plain_ws = p.get("plain_ws_url").to_owned();
    assert!(plain_ws.starts_with("ws://127.0.0.1:"));
    let cert = p.get("cert_file").to_owned();
    assert!(std::fs::read_to_string(&cert)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let command = |c: &str| {
        json!({
            "Target": "i-0123456789abcdef0",
            "DocumentName": "AWS-StartNonInteractiveCommand",
            "Parameters": {"command": [c]},
        })
    };

    // --agent-version, --separate-output-stream false: one Output stream, no ExitCode.
    let (_, token, url) = p
        .start_session(command("sh -c 'echo out; echo err 1>&2; exit 3'"))
        .await;
    assert!(url.starts_with("wss://"), "{url}");
    let mut c = Client::connect(&plain(&url, &plain_ws), &token, NEW_CLIENT).await;
    let req = c.handshake(NEW_CLIENT).await;
    assert_eq!(req["AgentVersion"], "2.9.1.0");
    c.handshake_complete().await;
    let (out, data) = c.until_closed(T).await;
    assert_eq!(out, "");
    assert!(data.iter().all(|m| m.payload_type == PayloadType::OUTPUT));
    let text: String = data
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert!(text.contains("out\n") && text.contains("err\n"), "{text:?}");

    // --handshake-timeout-ms: an unanswered HandshakeRequest ends the session.
    let (_, token, url) = p.start_session(command("true")).await;
    let mut c = Client::connect(&plain(&url, &plain_ws), &token, NEW_CLIENT).await;
    let t0 = Instant::now();
    let (out, _) = c.until_closed(T).await;
    assert!(out.contains("Handshake timed out"), "{out:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the 15 s default was used"
    );

    // --resume-window-secs: a dropped client may resume for one second, then not.
    let (id, token, url) = p.start_session(command("sleep 30")).await;
    let mut c = Client::connect(&plain(&url, &plain_ws), &token, NEW_CLIENT).await;
    c.handshake(NEW_CLIENT).await;
    c.handshake_complete().await;
    drop(c);
    let deadline = Instant::now() + T;
    let code = loop {
        assert!(Instant::now() < deadline, "the session never expired");
        let (status, out) = p
            .call("AmazonSSM.ResumeSession", json!({"SessionId": id}))
            .await;
        if status != 200 {
            break out["__type"].as_str().unwrap_or_default().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(code.ends_with("TargetNotConnected"), "{code}");

    // SIGTERM stops it and removes the certificate.
    let pid = p.child.id().unwrap() as libc::pid_t;
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(p.exit().await);
    assert!(!std::path::Path::new(&cert).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_key_and_ws_lifetime_flags() {
    let p = Proc::spawn(&[
        "--api",
        "--kms-key-id",
        "alias/agent-sim-test",
        "--ws-lifetime-secs",
        "1",
    ])
    .await;
    let (_, token, url) = p
        .start_session(json!({"Target": "i-0123456789abcdef0"}))
        .await;
    let t0 = Instant::now();
    let mut c = Client::connect(&url, &token, NEW_CLIENT).await;
    // With a KMS key even a shell starts with a handshake asking for encryption.
    let req = c.data(T).await.expect("HandshakeRequest");
    assert_eq!(req.payload_type, PayloadType::HANDSHAKE_REQUEST);
    let req: Value = serde_json::from_slice(&req.payload).unwrap();
    let actions = req["RequestedClientActions"].as_array().unwrap();
    assert_eq!(actions[1]["ActionType"], "KMSEncryption");
    assert_eq!(
        actions[1]["ActionParameters"]["KMSKeyId"],
        "alias/agent-sim-test"
    );
    assert_eq!(c.until_ws_closed(T).await, Some((1000, "Bye".into())));
    assert!(t0.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_flag_answers_nothing() {
    let p = Proc::spawn(&["--api", "--stall"]).await;
    let (_, token, url) = p
        .start_session(json!({"Target": "i-0123456789abcdef0"}))
        .await;
    let mut c = Client::connect(&url, &token, NEW_CLIENT).await;
    c.ping().await;
    let e = c.next(Duration::from_millis(800)).await;
    assert!(e.is_none(), "{e:?}");
    assert_eq!(c.pongs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_flags_reach_the_relay() {
    // Every client frame truncated: the agent never reads the HandshakeResponse.
    let p = Proc::spawn(&[
        "--api",
        "--faults-to-agent",
        "malformed=1",
        "--handshake-timeout-ms",
        "300",
    ])
    .await;
    let (_, token, url) = p
        .start_session(json!({
            "Target": "i-0123456789abcdef0",
            "DocumentName": "AWS-StartNonInteractiveCommand",
            "Parameters": {"command": ["true"]},
        }))
        .await;
    let mut c = Client::connect(&url, &token, NEW_CLIENT).await;
    c.handshake(NEW_CLIENT).await;
    let (out, _) = c.until_closed(T).await;
    assert!(out.contains("Handshake timed out"), "{out:?}");

    // A bad fault spec is refused at start with a message naming it.
    let out = tokio::time::timeout(
        T,
        Command::new(BIN)
            .args(["--faults-to-client", "bogus=1"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("exits in time")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown fault `bogus`"), "{err}");
    assert!(out.stdout.is_empty(), "no JSON line on a refused start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_credentials_flag_requires_signatures() {
    let p = Proc::spawn(&[
        "--api",
        "--api-access-key-id",
        "AKIDAGENTSIMTEST",
        "--api-secret-access-key",
        "agent-sim-test-secret",
    ])
    .await;
    let (status, out) = p
        .call(
            "AmazonSSM.StartSession",
            json!({"Target": "i-0123456789abcdef0"}),
        )
        .await;
    assert_eq!(status, 403, "{out}");
    assert_eq!(out["__type"], "MissingAuthenticationTokenException");
}
