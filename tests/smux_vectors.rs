//! The smux byte streams captured between the real Go plugin (smux client) and the real agent
//! (smux server) in tests/data/vectors/port_mux.jsonl, checked against our Mux in both roles.

use sha2::{Digest, Sha256};
use ssm_plugin::smux::{Mux, MuxConfig, MuxEvent, Role};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// The 3000 bytes' SHA-256, as the capture's `smux` annotation gives it.
const DATA_SHA256: &str = "55d14ff6d61a191a5cae8dd7e5576f773d4faf1ea83ccf62258a3bca01d0f596";

struct Capture {
    /// input_stream_data Output payloads in sequence order: the plugin's smux bytes.
    client_to_agent: Vec<u8>,
    /// output_stream_data Output payloads in sequence order: the agent's smux bytes.
    agent_to_client: Vec<u8>,
    /// Every PSH data_sha256 annotation seen.
    annotated_sha256: Vec<String>,
}

fn load() -> Capture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors/port_mux.jsonl");
    let text = std::fs::read_to_string(&path).expect("port_mux.jsonl is in the repo");
    let mut input = BTreeMap::new();
    let mut output = BTreeMap::new();
    let mut annotated_sha256 = Vec::new();
    for line in text.lines().skip(1) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["ws_kind"] != "binary" || v["decoded"]["PayloadType"] != 1 {
            continue;
        }
        let seq = v["decoded"]["SequenceNumber"].as_i64().unwrap();
        let raw = hex::decode(v["raw_hex"].as_str().unwrap()).unwrap();
        let payload = raw[120..].to_vec();
        let map = match v["decoded"]["MessageType"].as_str().unwrap() {
            "input_stream_data" => &mut input,
            "output_stream_data" => &mut output,
            other => panic!("unexpected Output payload in {other}"),
        };
        // Each sequence number once (a resend carries the same bytes).
        map.entry(seq).or_insert(payload);
        for f in v["smux"]["smux_frames_starting_here"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(h) = f["data_sha256"].as_str() {
                annotated_sha256.push(h.to_string());
            }
        }
    }
    let join = |m: BTreeMap<i64, Vec<u8>>| -> Vec<u8> {
        let seqs: Vec<i64> = m.keys().copied().collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "gapless: {seqs:?}"
        );
        m.into_values().flatten().collect()
    };
    Capture {
        client_to_agent: join(input),
        agent_to_client: join(output),
        annotated_sha256,
    }
}

/// Feeds `bytes` in the capture's own 1024-byte Output chunks and collects the events.
fn feed(m: &mut Mux, bytes: &[u8]) -> Vec<MuxEvent> {
    let now = Instant::now();
    let mut events = Vec::new();
    for chunk in bytes.chunks(1024) {
        m.handle_input(now, chunk)
            .expect("captured bytes are valid smux");
        events.extend(std::iter::from_fn(|| m.poll_event()));
    }
    events
}

/// Checks the event shape Opened?, Data..., Fin for stream 3 and returns the data.
fn data_then_fin(events: &[MuxEvent], expect_open: bool) -> Vec<u8> {
    let mut rest = events;
    if expect_open {
        assert_eq!(rest.first(), Some(&MuxEvent::Opened(3)));
        rest = &rest[1..];
    }
    assert_eq!(rest.last(), Some(&MuxEvent::Fin(3)), "{events:?}");
    let mut data = Vec::new();
    for ev in &rest[..rest.len() - 1] {
        match ev {
            MuxEvent::Data(3, d) => data.extend_from_slice(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    data
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn capture_is_what_the_annotations_say() {
    let c = load();
    assert_eq!(c.client_to_agent.len(), 8 + 8 + 3000 + 8);
    assert_eq!(c.agent_to_client.len(), 8 + 3000 + 8);
    assert_eq!(c.annotated_sha256, vec![DATA_SHA256; 2]);
}

#[test]
fn server_mux_decodes_the_plugin_stream() {
    let c = load();
    let mut server = Mux::new(MuxConfig::new(Role::Server, None), Instant::now());
    let events = feed(&mut server, &c.client_to_agent);
    let data = data_then_fin(&events, true);
    assert_eq!(data.len(), 3000);
    assert_eq!(sha256_hex(&data), DATA_SHA256);
    assert!(
        server.poll_output().is_none(),
        "the server does not answer SYN"
    );
}

#[test]
fn client_mux_writes_exactly_what_the_plugin_wrote() {
    let c = load();
    // The payload: the PSH data inside the captured stream (after SYN and PSH headers).
    let data = &c.client_to_agent[16..16 + 3000];
    assert_eq!(sha256_hex(data), DATA_SHA256);

    let mut client = Mux::new(MuxConfig::new(Role::Client, None), Instant::now());
    let id = client.open_stream().unwrap();
    assert_eq!(id, 3);
    client.write(id, data).unwrap();
    client.close_write(id).unwrap();
    let mut out = Vec::new();
    while let Some(b) = client.poll_output() {
        out.extend_from_slice(&b);
    }
    assert_eq!(hex::encode(&out[..8]), "0100000003000000");
    assert_eq!(hex::encode(&out[8..16]), "0102b80b03000000");
    assert_eq!(out, c.client_to_agent, "byte-identical to the Go plugin");
}

#[test]
fn client_mux_decodes_the_agent_echo() {
    let c = load();
    let mut client = Mux::new(MuxConfig::new(Role::Client, None), Instant::now());
    let id = client.open_stream().unwrap();
    let data = &c.client_to_agent[16..16 + 3000];
    client.write(id, data).unwrap();
    client.close_write(id).unwrap();
    while client.poll_output().is_some() {}

    let mut events = feed(&mut client, &c.agent_to_client);
    assert_eq!(
        events.pop(),
        Some(MuxEvent::Closed(3)),
        "FIN went both ways"
    );
    let echo = data_then_fin(&events, false);
    assert_eq!(echo, data);
    assert_eq!(sha256_hex(&echo), DATA_SHA256);
    assert_eq!(client.stream_count(), 0);
}

#[test]
fn server_mux_reproduces_the_agent_stream() {
    // The agent's side of the exchange, replayed through our server role.
    let c = load();
    let mut server = Mux::new(MuxConfig::new(Role::Server, None), Instant::now());
    let events = feed(&mut server, &c.client_to_agent);
    let data = data_then_fin(&events, true);
    server.write(3, &data).unwrap();
    server.close_write(3).unwrap();
    assert_eq!(server.poll_event(), Some(MuxEvent::Closed(3)));
    let out = server.poll_output().unwrap();
    assert_eq!(&out[..], &c.agent_to_client[..]);
}
