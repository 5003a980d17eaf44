//! Session payload encryption with the KMS data key (AES-256-GCM, as both reference peers do it).
//!
//! The 64-byte data key from KMS GenerateDataKey is split in two: bytes 0..32 encrypt what the
//! agent sends us, bytes 32..64 what we send the agent. Each sealed payload is
//! `nonce (12) || ciphertext || tag (16)` with no associated data. The key bytes never appear in
//! `Debug` output or error text.

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use rand::RngCore;

/// Length of the data key KMS is asked for.
pub const DATA_KEY_LEN: usize = 64;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed payload has beyond its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Why a key could not be used or a payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// KMS returned a key of the wrong size.
    #[error(
        "the KMS data key is {0} bytes, expected {DATA_KEY_LEN}; check the KMS key configured for \
         Session Manager encryption"
    )]
    KeyLength(usize),
    /// A sealed payload is shorter than nonce + tag.
    #[error("encrypted payload of {0} bytes is too short to hold a nonce and tag")]
    TooShort(usize),
    /// Authentication failed: wrong key or corrupted payload.
    #[error(
        "could not decrypt a payload from the agent (the session's KMS data key does not match); \
         start a new session"
    )]
    Open,
    /// The challenge text is not base64.
    #[error("the agent's encryption challenge is not valid base64")]
    ChallengeEncoding,
}

/// The two directional AES-256-GCM keys of one session.
#[derive(Clone)]
pub struct SessionKeys {
    /// Opens agent -> client payloads (data key bytes 0..32).
    decrypt: Aes256Gcm,
    /// Seals client -> agent payloads (data key bytes 32..64).
    encrypt: Aes256Gcm,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

impl SessionKeys {
    /// Splits the 64-byte plaintext data key from KMS.
    pub fn new(data_key: &[u8]) -> Result<Self, CryptoError> {
        if data_key.len() != DATA_KEY_LEN {
            return Err(CryptoError::KeyLength(data_key.len()));
        }
        // Both halves are exactly 32 bytes, the AES-256 key size, so new_from_slice cannot fail.
        let decrypt = Aes256Gcm::new_from_slice(&data_key[..32])
            .map_err(|_| CryptoError::KeyLength(data_key.len()))?;
        let encrypt = Aes256Gcm::new_from_slice(&data_key[32..])
            .map_err(|_| CryptoError::KeyLength(data_key.len()))?;
        Ok(Self { decrypt, encrypt })
    }

    /// Seals a client -> agent payload with a fresh random nonce.
    pub fn encrypt<R: RngCore + ?Sized>(&self, rng: &mut R, plaintext: &[u8]) -> Vec<u8> {
        seal(&self.encrypt, rng, plaintext)
    }

    /// Opens an agent -> client payload.
    pub fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.decrypt, sealed)
    }

    /// Answers the agent's EncChallengeRequest: the `Challenge` text (base64 of a payload sealed
    /// with the agent -> client key) is opened and re-sealed with the client -> agent key, which
    /// proves to the agent that we hold the same data key. Returns the base64 text for the
    /// EncChallengeResponse.
    pub fn answer_challenge<R: RngCore + ?Sized>(
        &self,
        rng: &mut R,
        challenge_b64: &str,
    ) -> Result<String, CryptoError> {
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(challenge_b64.trim())
            .map_err(|_| CryptoError::ChallengeEncoding)?;
        let plain = self.decrypt(&sealed)?;
        let answer = self.encrypt(rng, &plain);
        Ok(base64::engine::general_purpose::STANDARD.encode(answer))
    }
}

fn seal<R: RngCore + ?Sized>(key: &Aes256Gcm, rng: &mut R, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(&nonce);
    // AES-GCM encryption fails only for plaintexts over ~64 GiB, far beyond any payload.
    let ct = key
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .unwrap_or_default();
    out.extend_from_slice(&ct);
    out
}

fn open(key: &Aes256Gcm, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < OVERHEAD {
        return Err(CryptoError::TooShort(sealed.len()));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    key.decrypt(Nonce::from_slice(nonce), ct)
        .map_err(|_| CryptoError::Open)
}

/// Test and simulator helper: the agent's view of the same data key (keys swapped), so that a
/// fake agent can seal what we open and open what we seal.
pub fn agent_side_keys(data_key: &[u8]) -> Result<SessionKeys, CryptoError> {
    if data_key.len() != DATA_KEY_LEN {
        return Err(CryptoError::KeyLength(data_key.len()));
    }
    let mut swapped = [0u8; DATA_KEY_LEN];
    swapped[..32].copy_from_slice(&data_key[32..]);
    swapped[32..].copy_from_slice(&data_key[..32]);
    SessionKeys::new(&swapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn key() -> Vec<u8> {
        (0..64u8).collect()
    }

    #[test]
    fn round_trip_between_client_and_agent() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let client = SessionKeys::new(&key()).unwrap();
        let agent = agent_side_keys(&key()).unwrap();
        let sealed = client.encrypt(&mut rng, b"hello agent");
        assert_eq!(sealed.len(), 11 + OVERHEAD);
        assert_eq!(agent.decrypt(&sealed).unwrap(), b"hello agent");
        // A client cannot open its own direction: the halves differ.
        assert_eq!(client.decrypt(&sealed), Err(CryptoError::Open));
        let back = agent.encrypt(&mut rng, b"hello client");
        assert_eq!(client.decrypt(&back).unwrap(), b"hello client");
    }

    #[test]
    fn nonces_are_fresh() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let client = SessionKeys::new(&key()).unwrap();
        let a = client.encrypt(&mut rng, b"x");
        let b = client.encrypt(&mut rng, b"x");
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            SessionKeys::new(&[0u8; 32]).unwrap_err(),
            CryptoError::KeyLength(32)
        );
        let client = SessionKeys::new(&key()).unwrap();
        assert_eq!(client.decrypt(&[0u8; 27]), Err(CryptoError::TooShort(27)));
        assert_eq!(client.decrypt(&[0u8; 40]), Err(CryptoError::Open));
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(
            client.answer_challenge(&mut rng, "not base64!"),
            Err(CryptoError::ChallengeEncoding)
        );
    }

    #[test]
    fn challenge_answer_is_what_the_agent_expects() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let client = SessionKeys::new(&key()).unwrap();
        let agent = agent_side_keys(&key()).unwrap();
        let secret = [7u8; 64];
        let challenge =
            base64::engine::general_purpose::STANDARD.encode(agent.encrypt(&mut rng, &secret));
        let answer = client.answer_challenge(&mut rng, &challenge).unwrap();
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(answer)
            .unwrap();
        assert_eq!(agent.decrypt(&sealed).unwrap(), secret);
    }

    #[test]
    fn debug_hides_keys() {
        let client = SessionKeys::new(&key()).unwrap();
        assert_eq!(format!("{client:?}"), "SessionKeys(<redacted>)");
    }
}
