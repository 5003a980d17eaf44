//! Forwarding to a local unix socket (`localConnectionType` `unix`).
//!
//! The simulator's documents carry no `localUnixSocket` property, so a small websocket relay
//! between the plugin and the simulator adds it to the agent's HandshakeRequest (re-encoded with
//! a fresh digest), as an agent running a custom document would send it.

// The websocket handshake callback's error type is tungstenite's, not ours.
#![allow(clippy::result_large_err)]

mod port_common;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use port_common::*;
use ssm_plugin::wire::{ClientMessage, MessageType, PayloadType};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

const AGENT: &str = "3.3.987.0";

/// Relays one websocket to `upstream` (ws://host:port), merging `extra` into the SessionType
/// properties of the HandshakeRequest. Returns the relay's ws:// base.
async fn rewriting_relay(upstream: String, extra: serde_json::Value) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let path = Arc::new(Mutex::new(String::new()));
        let p2 = path.clone();
        let client =
            tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
                *p2.lock().unwrap() = req.uri().to_string();
                Ok(resp)
            })
            .await
            .unwrap();
        let url = format!("{upstream}{}", path.lock().unwrap());
        let (server, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut cs, mut cr) = client.split();
        let (mut ss, mut sr) = server.split();
        tokio::spawn(async move {
            while let Some(Ok(m)) = cr.next().await {
                if ss.send(m).await.is_err() {
                    return;
                }
            }
        });
        while let Some(Ok(m)) = sr.next().await {
            let m = match m {
                Message::Binary(b) => Message::Binary(rewrite(&b, &extra).into()),
                other => other,
            };
            if cs.send(m).await.is_err() {
                return;
            }
        }
    });
    base
}

fn rewrite(frame: &[u8], extra: &serde_json::Value) -> Vec<u8> {
    let Ok(mut m) = ClientMessage::decode(frame) else {
        return frame.to_vec();
    };
    if m.message_type != MessageType::OutputStreamData
        || m.payload_type != PayloadType::HANDSHAKE_REQUEST
    {
        return frame.to_vec();
    }
    let mut req: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    for a in req["RequestedClientActions"].as_array_mut().unwrap() {
        if a["ActionType"] == "SessionType" {
            let props = a["ActionParameters"]["Properties"].as_object_mut().unwrap();
            for (k, v) in extra.as_object().unwrap() {
                props.insert(k.clone(), v.clone());
            }
        }
    }
    m.payload = serde_json::to_vec(&req).unwrap().into();
    m.encode()
}

async fn unix_case(agent: &str) {
    let sim = sim(sim_config(true, agent)).await;
    let (dport, mut seen) = server("127.0.0.1", Behaviour::Echo).await;
    let (mut st, req) = start(
        &sim,
        "AWS-StartPortForwardingSession",
        &[("portNumber", &dport.to_string())],
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fwd.sock");
    let relay = rewriting_relay(
        sim.ws_url.clone(),
        serde_json::json!({"localConnectionType": "unix", "localUnixSocket": sock.to_str().unwrap()}),
    )
    .await;
    st.stream_url = st.stream_url.replace(&sim.ws_url, &relay);
    let mut p = Plugin::spawn(Launch {
        started: &st,
        request: &req,
        env: vec![],
        stdio: false,
    });
    p.wait_for(
        &format!(
            "Unix socket {} opened for sessionId {}.",
            sock.display(),
            st.session_id
        ),
        T,
    )
    .await;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the user may use the socket");
    let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let len = 200_000;
    let reader = tokio::spawn(async move { read_hash(&mut r, len).await });
    let sent = write_gen(&mut w, 51, len).await;
    let (n, got) = tokio::time::timeout(T, reader).await.unwrap().unwrap();
    assert_eq!((n, got), (len, sent));
    w.shutdown().await.unwrap();
    assert_eq!(recv_seen(&mut seen, T).await.bytes, len);
    p.signal(libc::SIGINT);
    assert!(p.wait(T).await.success());
    assert!(!sock.exists(), "the socket file is removed at exit");
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener_smux() {
    unix_case(AGENT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener_basic() {
    unix_case("3.0.196.0").await;
}
