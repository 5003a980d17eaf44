//! The fake KMS: data keys handed out by GenerateDataKey are remembered so that Decrypt (from the
//! plugin side, over HTTP) and the simulated agent (in process, through [`DataKeyResolver`]) get
//! the same plaintext back, and only with the same encryption context, as with real KMS.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use rand::RngCore;

use crate::backend::DataKeyResolver;

/// Fake ciphertext blobs start with this so they are recognisable in captures; the rest is random.
const BLOB_MAGIC: &[u8] = b"fake-kms:v1:";
/// Random bytes after the magic: enough that two blobs never collide.
const BLOB_RANDOM_LEN: usize = 32;

struct DataKey {
    plaintext: Vec<u8>,
    context: BTreeMap<String, String>,
    key_arn: String,
}

/// Why a decrypt failed, as KMS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsError {
    /// Unknown blob or a different encryption context (KMS cannot tell these apart either).
    InvalidCiphertext,
    /// The request named a key other than the one the blob was made with.
    IncorrectKey,
}

/// Remembers every data key this fake issued: blob → (plaintext, context, key).
#[derive(Default)]
pub struct KmsStore {
    keys: Mutex<HashMap<Vec<u8>, DataKey>>,
}

/// Hand-written so data keys never reach a log.
impl fmt::Debug for KmsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsStore")
            .field("data_keys", &self.len())
            .finish()
    }
}

impl KmsStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of data keys issued so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, DataKey>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts), so
        // a poisoned lock is still safe to use.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a random data key of `len` bytes bound to `key_arn` and `context`; returns
    /// (ciphertext blob, plaintext).
    pub fn generate_data_key(
        &self,
        key_arn: &str,
        len: usize,
        context: BTreeMap<String, String>,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut rng = rand::rng();
        let mut plaintext = vec![0u8; len];
        rng.fill_bytes(&mut plaintext);
        let mut blob = BLOB_MAGIC.to_vec();
        let mut random = [0u8; BLOB_RANDOM_LEN];
        rng.fill_bytes(&mut random);
        blob.extend_from_slice(&random);
        self.lock().insert(
            blob.clone(),
            DataKey {
                plaintext: plaintext.clone(),
                context,
                key_arn: key_arn.to_owned(),
            },
        );
        (blob, plaintext)
    }

    /// KMS Decrypt semantics: the context must match exactly; `key_id`, when given, must name the
    /// key the blob was made with. Returns (plaintext, key ARN).
    pub fn decrypt_with_key(
        &self,
        blob: &[u8],
        context: &BTreeMap<String, String>,
        key_id: Option<&str>,
    ) -> Result<(Vec<u8>, String), KmsError> {
        let keys = self.lock();
        let k = keys.get(blob).ok_or(KmsError::InvalidCiphertext)?;
        if &k.context != context {
            return Err(KmsError::InvalidCiphertext);
        }
        if let Some(id) = key_id {
            if !key_matches(id, &k.key_arn) {
                return Err(KmsError::IncorrectKey);
            }
        }
        Ok((k.plaintext.clone(), k.key_arn.clone()))
    }
}

impl DataKeyResolver for KmsStore {
    fn decrypt(
        &self,
        ciphertext_blob: &[u8],
        encryption_context: &BTreeMap<String, String>,
    ) -> Option<Vec<u8>> {
        self.decrypt_with_key(ciphertext_blob, encryption_context, None)
            .ok()
            .map(|(p, _)| p)
    }
}

/// The ARN KMS reports for a key id, alias name or ARN as given in a request.
pub fn key_arn(key_id: &str, region: &str, account: &str) -> String {
    if key_id.starts_with("arn:") {
        key_id.to_owned()
    } else if key_id.starts_with("alias/") {
        format!("arn:aws:kms:{region}:{account}:{key_id}")
    } else {
        format!("arn:aws:kms:{region}:{account}:key/{key_id}")
    }
}

/// True when two key references (bare id, `alias/x`, or ARN) name the same key, comparing the
/// resource part (`key/<id>` or `alias/<name>`) when one side is not an ARN.
pub fn key_matches(a: &str, b: &str) -> bool {
    fn resource(k: &str) -> String {
        if k.starts_with("arn:") {
            // arn:aws:kms:region:account:key/id → key/id
            k.splitn(6, ':').nth(5).unwrap_or(k).to_owned()
        } else if k.starts_with("alias/") {
            k.to_owned()
        } else {
            format!("key/{k}")
        }
    }
    a == b || resource(a) == resource(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_needs_same_context_and_key() {
        let s = KmsStore::new();
        let ctx = BTreeMap::from([("aws:ssm:SessionId".to_owned(), "s-1".to_owned())]);
        let arn = key_arn("k1", "us-east-1", "123456789012");
        let (blob, pt) = s.generate_data_key(&arn, 64, ctx.clone());
        assert_eq!(pt.len(), 64);
        assert!(blob.starts_with(BLOB_MAGIC));
        assert_eq!(DataKeyResolver::decrypt(&s, &blob, &ctx), Some(pt.clone()));
        assert_eq!(s.decrypt_with_key(&blob, &ctx, Some("k1")).unwrap().0, pt);
        assert_eq!(
            s.decrypt_with_key(&blob, &ctx, Some("k2")),
            Err(KmsError::IncorrectKey)
        );
        assert_eq!(DataKeyResolver::decrypt(&s, &blob, &BTreeMap::new()), None);
        assert_eq!(DataKeyResolver::decrypt(&s, b"other", &ctx), None);
        assert!(!format!("{s:?}").contains(&hex::encode(&pt)));
    }

    #[test]
    fn key_references_compare_by_resource() {
        assert!(key_matches("k1", "arn:aws:kms:us-east-1:1:key/k1"));
        assert!(key_matches("alias/a", "arn:aws:kms:us-east-1:1:alias/a"));
        assert!(!key_matches("k1", "arn:aws:kms:us-east-1:1:key/k2"));
        assert!(!key_matches("alias/k1", "k1"));
    }
}
