//! Golden vectors: every binary frame captured between the real Go plugin and the real agent
//! (tests/data/vectors, a copy of shared/vectors) must decode, and re-encode to the same bytes.

use ssm_plugin::wire::{self, ClientMessage, MessageType};
use std::path::PathBuf;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors")
}

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector hex")
}

#[test]
fn every_captured_frame_round_trips_byte_exactly() {
    let mut total = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(vectors_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().skip(1) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["ws_kind"] != "binary" {
                continue;
            }
            let raw = hex(v["raw_hex"].as_str().unwrap());
            let m = ClientMessage::decode(&raw)
                .unwrap_or_else(|e| panic!("{}: frame {}: {e}", path.display(), v["i"]));
            let d = &v["decoded"];
            assert_eq!(m.message_type.as_str(), d["MessageType"].as_str().unwrap());
            assert_eq!(m.sequence_number, d["SequenceNumber"].as_i64().unwrap());
            assert_eq!(m.flags, d["Flags"].as_u64().unwrap());
            assert_eq!(m.payload_type.0 as u64, d["PayloadType"].as_u64().unwrap());
            assert_eq!(m.created_date, d["CreatedDate"].as_u64().unwrap());
            assert_eq!(m.message_id.to_string(), d["MessageId"].as_str().unwrap());
            assert_eq!(m.encode(), raw, "{}: frame {}", path.display(), v["i"]);
            total += 1;
        }
    }
    assert_eq!(files, 8);
    assert_eq!(total, 411, "the README counts 411 binary ClientMessages");
}

#[test]
fn uuid_vectors() {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(vectors_dir().join("uuid_vectors.json")).unwrap(),
    )
    .unwrap();
    let mut rows: Vec<&serde_json::Value> = v["rows"].as_array().unwrap().iter().collect();
    rows.push(&v["known_vector"]);
    for row in rows {
        let w: [u8; 16] = hex(row["wire_hex"].as_str().unwrap()).try_into().unwrap();
        let id = wire::uuid_from_wire(&w);
        assert_eq!(id.to_string(), row["uuid"].as_str().unwrap());
        assert_eq!(wire::uuid_to_wire(&id), w);
    }
    // The evidence frames: our acknowledge for the rewritten frame must render the same id.
    for ev in v["known_vector"]["evidence"].as_array().unwrap() {
        let f = ClientMessage::decode(&hex(ev["rewritten_frame"]["raw_hex"].as_str().unwrap()))
            .unwrap();
        let ack =
            ClientMessage::decode(&hex(ev["ack_frame"]["raw_hex"].as_str().unwrap())).unwrap();
        assert_eq!(ack.message_type, MessageType::Acknowledge);
        let ours = ClientMessage::acknowledge_for(&f, ack.created_date, ack.message_id);
        assert_eq!(
            ours.payload, ack.payload,
            "ack JSON must match the real peer's bytes"
        );
        assert_eq!(ours.encode(), ack.encode());
    }
}

#[test]
fn json_payloads_reencode_to_captured_bytes() {
    use wire::*;
    for name in [
        "port_mux.jsonl",
        "noninteractive_commands.jsonl",
        "shell_standard_stream.jsonl",
    ] {
        let text = std::fs::read_to_string(vectors_dir().join(name)).unwrap();
        for line in text.lines().skip(1) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["ws_kind"] != "binary" {
                continue;
            }
            let m = ClientMessage::decode(&hex(v["raw_hex"].as_str().unwrap())).unwrap();
            let p = &m.payload[..];
            let again = match (m.message_type.as_str(), m.payload_type) {
                ("acknowledge", _) => {
                    to_vec(&serde_json::from_slice::<AcknowledgeContent>(p).unwrap())
                }
                ("channel_closed", _) => {
                    to_vec(&serde_json::from_slice::<ChannelClosed>(p).unwrap())
                }
                ("agent_session_state", _) => {
                    to_vec(&serde_json::from_slice::<AgentSessionState>(p).unwrap())
                }
                (_, PayloadType::HANDSHAKE_REQUEST) => {
                    to_vec(&serde_json::from_slice::<HandshakeRequest>(p).unwrap())
                }
                (_, PayloadType::HANDSHAKE_RESPONSE) => {
                    to_vec(&serde_json::from_slice::<HandshakeResponse>(p).unwrap())
                }
                (_, PayloadType::HANDSHAKE_COMPLETE) => {
                    to_vec(&serde_json::from_slice::<HandshakeComplete>(p).unwrap())
                }
                (_, PayloadType::SIZE) => to_vec(&serde_json::from_slice::<SizeData>(p).unwrap()),
                _ => continue,
            };
            assert_eq!(again, p, "{name} frame {}", v["i"]);
        }
    }
}

#[test]
fn open_data_channel_input_matches_the_captured_text_frame() {
    let text = std::fs::read_to_string(vectors_dir().join("port_mux.jsonl")).unwrap();
    let captured = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["ws_kind"] == "text" && v["direction"] == "client->agent")
        .expect("the plugin's first text frame");
    let captured = captured["text"].as_str().unwrap();
    let parsed: wire::OpenDataChannelInput = serde_json::from_str(captured).unwrap();
    // Same keys, same order, same spelling: re-serialising gives the captured bytes.
    assert_eq!(parsed.to_json(), captured);
    assert_eq!(parsed.client_version, "1.2.0.0");
}
