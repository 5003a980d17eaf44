//! The agent's block cipher (`agent/session/crypto/blockcipher.go`, `nonce.go`): AES-256-GCM,
//! no AAD, wire form `nonce(12) || ciphertext || tag(16)`. The agent encrypts with the first 32
//! bytes of the data key and decrypts with the last 32; its nonces are a 12-byte counter that
//! starts at a random value and counts up little-endian.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;

pub(crate) struct AgentCipher {
    enc: Aes256Gcm,
    dec: Aes256Gcm,
    nonce: [u8; 12],
}

impl AgentCipher {
    /// `None` unless the key is exactly 64 bytes.
    pub(crate) fn new(data_key: &[u8]) -> Option<Self> {
        if data_key.len() != 64 {
            return None;
        }
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        Some(Self {
            enc: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&data_key[..32])),
            dec: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&data_key[32..])),
            nonce,
        })
    }

    pub(crate) fn encrypt(&mut self, plain: &[u8]) -> Vec<u8> {
        for b in self.nonce.iter_mut() {
            *b = b.wrapping_add(1);
            if *b != 0 {
                break;
            }
        }
        let mut out = self.nonce.to_vec();
        // AES-GCM encryption only fails for inputs beyond 64 GiB.
        out.extend(
            self.enc
                .encrypt(Nonce::from_slice(&self.nonce), plain)
                .unwrap_or_default(),
        );
        out
    }

    pub(crate) fn decrypt(&self, wire: &[u8]) -> Result<Vec<u8>, String> {
        if wire.len() < 12 + 16 {
            return Err("ciphertext too short".into());
        }
        self.dec
            .decrypt(Nonce::from_slice(&wire[..12]), &wire[12..])
            .map_err(|_| "cipher: message authentication failed".to_owned())
    }
}
