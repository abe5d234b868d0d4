//! The tokens a manager was handed, remembered so that an identity equal to one of them is kept
//! only as its fingerprint (issue 11 item 3). Only a keyed 64-bit hash of each token is kept, in
//! memory: this set answers "was this string a token?", and nothing is ever persisted from it.
//! A SHA-256 fingerprint per token cost ~0.5 µs: 5 ms of the JavaScript thread for a
//! `refreshAllFallbacks` over 10,000 accounts.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

/// The tokens of a list still being read off the JavaScript thread: calling it reads the list
/// (or waits for the read under way) and answers them.
pub type PendingTokens = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Tokens rotate a few times a day: the bound only guards a host that mints them in bulk.
const KEPT: usize = 1024;

#[derive(Default)]
pub struct SeenTokens {
    /// Keyed at random per manager, so the hashes mean nothing outside this process.
    keys: std::collections::hash_map::RandomState,
    hashes: Mutex<HashSet<u64>>,
    /// Lists whose tokens are not in `hashes` yet: read before any answer, so a token handed
    /// over is known as one from the moment the call that handed it returned.
    pending: Mutex<Vec<PendingTokens>>,
}

impl SeenTokens {
    pub fn contains(&self, text: &str) -> bool {
        self.read_pending();
        let hash = self.keys.hash_one(text);
        self.lock().contains(&hash)
    }

    /// A list whose tokens count from now on, though it is read later, off the host's thread.
    pub fn expect(&self, tokens: PendingTokens) {
        lock(&self.pending).push(tokens);
    }

    /// Remembers an expected list's tokens, which no longer need reading at the next answer;
    /// `true` when one was new.
    pub fn settle(&self, tokens: &PendingTokens) -> bool {
        lock(&self.pending).retain(|pending| !Arc::ptr_eq(pending, tokens));
        self.remember(tokens().iter().map(String::as_str))
    }

    fn read_pending(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for tokens in pending {
            self.remember(tokens().iter().map(String::as_str));
        }
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
        lock(&self.hashes)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
