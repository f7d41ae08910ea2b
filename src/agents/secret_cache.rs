//! Agent secrets known to be good, in memory, so that an agent connecting
//! costs no database read: the SHA-256 of each enrolled host's secret (what
//! the database stores, hex-encoded) to its host id. Loaded at server start
//! and filled on each database hit; a miss (an unknown secret, a host
//! enrolled since) reads the database as before.
//!
//! A secret stops working when its host is removed or re-enrolled: both
//! paths call [`SecretCache::forget_host`] after their commit. A lookup that
//! read the database before such a change and would insert after it is
//! refused by the generation check, so a forgotten secret never comes back.
//!
//! Memory: 40 bytes of key and id a host plus the map's control byte (about
//! 50–90 bytes a host by load factor; 10,000 hosts ≈ 0.7 MB).
use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use sea_orm::ConnectionTrait;
use sha2::{Digest, Sha256};

use crate::store;

#[derive(Default)]
struct Inner {
    /// Bumped by every forget.
    generation: u64,
    by_hash: HashMap<[u8; 32], i64>,
}

#[derive(Default)]
pub struct SecretCache {
    inner: Mutex<Inner>,
}

/// The digest the cache is keyed by (the database stores its hex).
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn decode(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash).ok()?.try_into().ok()
}

impl SecretCache {
    /// Every enrolled host's secret hash, in one query.
    pub async fn load<C: ConnectionTrait>(db: &C) -> store::Result<SecretCache> {
        let rows = store::hosts::secret_hashes(db).await?;
        let cache = SecretCache::default();
        cache.lock().by_hash.extend(
            rows.into_iter()
                .filter_map(|(id, hash)| Some((decode(&hash)?, id))),
        );
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is a single insert or retain.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host with this secret digest, if known.
    pub fn get(&self, digest: &[u8; 32]) -> Option<i64> {
        self.lock().by_hash.get(digest).copied()
    }

    /// Take before the database read whose hit goes to [`Self::insert`].
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Records a database hit, unless a host was forgotten since
    /// `generation` was taken (the hit may be stale).
    pub fn insert(&self, generation: u64, digest: [u8; 32], host_id: i64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.by_hash.insert(digest, host_id);
        }
    }

    /// The host was removed or given a new secret: its old one stops here.
    pub fn forget_host(&self, host_id: i64) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.by_hash.retain(|_, id| *id != host_id);
    }

    pub fn len(&self) -> usize {
        self.lock().by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_host_is_gone_and_a_stale_hit_is_not_put_back() {
        let cache = SecretCache::default();
        let (a, b) = (digest("secret-a"), digest("secret-b"));
        cache.insert(cache.generation(), a, 1);
        cache.insert(cache.generation(), b, 2);
        assert_eq!((cache.get(&a), cache.get(&b)), (Some(1), Some(2)));
        // A lookup read the database, then host 1 was re-enrolled.
        let before = cache.generation();
        cache.forget_host(1);
        assert_eq!((cache.get(&a), cache.get(&b)), (None, Some(2)));
        cache.insert(before, a, 1);
        assert_eq!(cache.get(&a), None);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            decode(&hex::encode(digest("x"))),
            Some(digest("x")),
            "keys match what the database stores"
        );
    }
}
