//! The tokens a manager was handed, remembered so that an identity equal to one of them is kept
//! only as its fingerprint (issue 11 item 3). Only a keyed 64-bit hash of each token is kept, in
//! memory: this set answers "was this string a token?", and nothing is ever persisted from it.
//! A SHA-256 fingerprint per token cost ~0.5 µs: 5 ms of the JavaScript thread for a
//! `refreshAllFallbacks` over 10,000 accounts.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

/// Tokens rotate a few times a day: the bound only guards a host that mints them in bulk.
const KEPT: usize = 1024;

#[derive(Default)]
pub struct SeenTokens {
    /// Keyed at random per manager, so the hashes mean nothing outside this process.
    keys: std::collections::hash_map::RandomState,
    hashes: Mutex<HashSet<u64>>,
}

impl SeenTokens {
    pub fn contains(&self, text: &str) -> bool {
        let hash = self.keys.hash_one(text);
        self.lock().contains(&hash)
    }

    /// Remembers these tokens (empty ones are not tokens); `true` when one was new.
    pub fn remember<'a>(&self, tokens: impl IntoIterator<Item = &'a str>) -> bool {
        let hashes: Vec<u64> = tokens
            .into_iter()
            .filter(|token| !token.is_empty())
            .map(|token| self.keys.hash_one(token))
            .collect();
        let mut seen = self.lock();
        let mut any_new = false;
        for hash in hashes {
            if seen.len() >= KEPT && !seen.contains(&hash) {
                seen.clear();
            }
            any_new |= seen.insert(hash);
        }
        any_new
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.hashes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
