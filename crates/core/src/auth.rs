//! API keys: generated once, shown once, stored only as a SHA-256 hash.

use crate::{now_ms, random_id, Result};
use rnr_store::{KeyLimits, Store};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of a whole key, as stored.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A key as returned to its creator, the only time the secret is visible.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub name: String,
    pub key: String,
}

/// Creates and stores a new key named `name`, with its own quotas where `limits` sets
/// them.
pub async fn new_api_key(store: &Store, name: &str, limits: KeyLimits) -> Result<NewApiKey> {
    let id = format!("k-{}", random_id(10));
    // 32 base-32 chars = 160 bits of secret.
    let key = format!("rnr_{}", random_id(32));
    store
        .insert_api_key(&id, name, &hash_key(&key), limits, now_ms())
        .await?;
    Ok(NewApiKey {
        id,
        name: name.to_string(),
        key,
    })
}
