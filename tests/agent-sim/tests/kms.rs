//! KMS-encrypted shell session: the agent recovers the data key through the resolver, runs the
//! challenge, and encrypts/decrypts with the halves the reference describes.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use common::*;
use ssm_plugin::wire::{
    EncryptionChallenge, HandshakeResponse, PayloadType, ProcessedClientAction,
};

const T: Duration = Duration::from_secs(10);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Fake KMS: one blob, one key, one expected context.
struct Kms {
    blob: Vec<u8>,
    key: Vec<u8>,
    seen: Mutex<Vec<BTreeMap<String, String>>>,
}

impl agent_sim::DataKeyResolver for Kms {
    fn decrypt(&self, blob: &[u8], ctx: &BTreeMap<String, String>) -> Option<Vec<u8>> {
        self.seen.lock().unwrap().push(ctx.clone());
        (blob == self.blob).then(|| self.key.clone())
    }
}

fn seal(key: &[u8], nonce: [u8; 12], plain: &[u8]) -> Vec<u8> {
    let c = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let mut out = nonce.to_vec();
    out.extend(c.encrypt(Nonce::from_slice(&nonce), plain).unwrap());
    out
}

fn open(key: &[u8], wire: &[u8]) -> Vec<u8> {
    let c = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    c.decrypt(Nonce::from_slice(&wire[..12]), &wire[12..])
        .expect("agent ciphertext opens with key[0..32]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_encrypted_shell() {
    let key: Vec<u8> = (0..64u8).collect();
    let kms = Arc::new(Kms {
        blob: b"blob-1".to_vec(),
        key: key.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let mut cfg = fast_config();
    cfg.kms_key_id = Some("alias/test".into());
    let sim = agent_sim::Simulator::start_with_resolver(cfg, Some(kms.clone()))
        .await
        .unwrap();
    let s = start(&sim, None, &[]);
    assert_eq!(
        agent_sim::SessionBackend::kms_key_for(&sim.backend(), &s.session_id).as_deref(),
        Some("alias/test")
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    let req = c.data(T).await.unwrap();
    assert_eq!(req.payload_type, PayloadType::HANDSHAKE_REQUEST);
    let json: serde_json::Value = serde_json::from_slice(&req.payload).unwrap();
    let kms_action = &json["RequestedClientActions"][1];
    assert_eq!(kms_action["ActionType"], "KMSEncryption");
    assert_eq!(kms_action["ActionParameters"]["KMSKeyId"], "alias/test");
    let challenge = kms_action["ActionParameters"]["Challenge"]
        .as_str()
        .unwrap();
    assert_eq!(B64.decode(challenge).unwrap().len(), 16);
    let resp = HandshakeResponse {
        client_version: NEW_CLIENT.into(),
        processed_client_actions: vec![
            ProcessedClientAction {
                action_type: "SessionType".into(),
                action_status: 1,
                action_result: serde_json::Value::Null,
                error: String::new(),
            },
            ProcessedClientAction {
                action_type: "KMSEncryption".into(),
                action_status: 1,
                action_result: serde_json::json!({
                    "KMSCipherTextKey": B64.encode(b"blob-1"),
                    "KMSCipherTextHash": null,
                    "ChallengeAcknowledgement": true,
                }),
                error: String::new(),
            },
        ],
        errors: None,
    };
    c.send(
        PayloadType::HANDSHAKE_RESPONSE,
        &ssm_plugin::wire::to_vec(&resp),
    )
    .await;
    let ch = c.data(T).await.unwrap();
    assert_eq!(ch.payload_type, PayloadType::ENC_CHALLENGE_REQUEST);
    let body: EncryptionChallenge = serde_json::from_slice(&ch.payload).unwrap();
    let plain = open(&key[..32], &B64.decode(body.challenge).unwrap());
    assert_eq!(plain.len(), 64);
    let answer = EncryptionChallenge {
        challenge: B64.encode(seal(&key[32..], [9; 12], &plain)),
    };
    c.send(
        PayloadType::ENC_CHALLENGE_RESPONSE,
        &ssm_plugin::wire::to_vec(&answer),
    )
    .await;
    assert_eq!(
        c.handshake_complete().await,
        "This session is encrypted using AWS KMS."
    );
    let ctx = kms.seen.lock().unwrap()[0].clone();
    assert_eq!(ctx["aws:ssm:SessionId"], s.session_id);
    assert_eq!(ctx["aws:ssm:TargetId"], "i-0123456789abcdef0");
    assert_eq!(ctx["aws:ssm:RandomChallenge"], challenge);
    // Encrypted input and output.
    let cmd = seal(&key[32..], [1; 12], b"echo sec''ret\r");
    c.send(PayloadType::OUTPUT, &cmd).await;
    let mut text = String::new();
    while !text.contains("\nsecret") {
        let m = c.data(T).await.expect("encrypted output");
        assert_eq!(m.payload_type, PayloadType::OUTPUT);
        text.push_str(&String::from_utf8_lossy(&open(&key[..32], &m.payload)));
    }
    sim.shutdown();
}
