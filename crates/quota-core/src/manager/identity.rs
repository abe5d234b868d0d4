//! Who the main route belongs to, and which strings are tokens: an identity that is a token is
//! kept only as `token:<fingerprint>` (docs/compat.md#main-identity, docs/state-file.md#no-tokens).

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use super::loading::lock;
use crate::fingerprint::fingerprint;

const TOKEN_IDENTITY_PREFIX: &str = "token:";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MainIdentity {
    /// An account the host named (`mainAccountId`, or an `identity` argument).
    Account(String),
    /// An account the host named only by its token, kept as the token's fingerprint.
    Token { fingerprint: String },
}

impl MainIdentity {
    /// Reads an identity in its persisted form (see [`MainIdentity::persisted`]).
    pub fn parse(text: &str) -> Self {
        match text.strip_prefix(TOKEN_IDENTITY_PREFIX) {
            Some(fingerprint) => Self::Token { fingerprint: fingerprint.to_owned() },
            None => Self::Account(text.to_owned()),
        }
    }

    pub fn of_token(token: &str) -> Self {
        Self::Token { fingerprint: fingerprint(token) }
    }

    /// The form in route keys and in snapshots' `accountIdentity`.
    pub fn persisted(&self) -> String {
        match self {
            Self::Account(name) => name.clone(),
            Self::Token { fingerprint } => format!("{TOKEN_IDENTITY_PREFIX}{fingerprint}"),
        }
    }

    /// Does the host's `wanted` name this account? A token-named account also answers to its
    /// token. Hashes only for a token-named account: this runs on every request.
    pub(super) fn is_named_by(&self, wanted: &str) -> bool {
        match self {
            Self::Account(name) => name == wanted,
            Self::Token { fingerprint: ours } => {
                wanted.strip_prefix(TOKEN_IDENTITY_PREFIX) == Some(ours.as_str())
                    || fingerprint(wanted) == *ours
            }
        }
    }
}

/// The same account, whichever way it was named (a token and its fingerprint are one).
pub(super) fn same_identity(a: Option<&MainIdentity>, b: Option<&MainIdentity>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b || a.is_named_by(&b.persisted()) || b.is_named_by(&a.persisted())
        }
        _ => false,
    }
}

#[derive(Clone, Copy, Debug)]
pub enum MainTarget<'a> {
    /// Named only by its token (one-argument `refreshMain`).
    Token,
    /// `refreshMain(undefined, token)`: no identity is one of its own (docs/compat.md#signatures).
    Unnamed,
    Named(&'a str),
}

/// The main route's generations (upstream `mainQuotaIdentityGeneration` and friends).
#[derive(Clone, Debug, Default)]
pub(super) struct MainGenerations {
    /// `setMainQuotaAccountIdentity` was called at least once.
    pub known: bool,
    pub strict: bool,
    pub identity: u64,
    pub error: u64,
    /// Only ever grows.
    pub error_cleared_at: Option<i64>,
}

impl MainGenerations {
    /// The error was set: a new error generation.
    pub fn error_set(&mut self) -> u64 {
        self.error += 1;
        self.error
    }

    /// The error was cleared at `now`: a new error generation.
    pub fn error_cleared(&mut self, now: i64) -> u64 {
        self.error_cleared_at = self.error_cleared_at.max(Some(now));
        self.error_set()
    }

    pub fn strict_known(&self) -> bool {
        self.known && self.strict
    }
}

/// The tokens of a list still being read off the host's thread: calling it reads the list (or
/// waits for the read under way) and answers them.
pub type PendingTokens = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Tokens rotate a few times a day: the bound only guards a host that mints them in bulk.
const TOKENS_KEPT: usize = 1024;

/// The tokens a manager was handed, so that an identity equal to one of them is kept only as
/// its fingerprint. Only a keyed 64-bit hash of each is kept, in memory, never persisted (a
/// SHA-256 per token cost 5 ms of the host's thread over 10,000 accounts).
#[derive(Default)]
pub(super) struct SeenTokens {
    /// Keyed at random per manager, so the hashes mean nothing outside this process.
    keys: std::collections::hash_map::RandomState,
    hashes: Mutex<HashSet<u64>>,
    /// Lists whose tokens are not in `hashes` yet: read before any answer, so a token handed
    /// over is known as one from the moment the call that handed it returned.
    pending: Mutex<Vec<PendingTokens>>,
}

impl SeenTokens {
    /// Was `identity` handed over as a token (the lists still being read included)?
    pub fn contains(&self, identity: &str) -> bool {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for tokens in pending {
            self.remember(tokens().iter().map(String::as_str));
        }
        lock(&self.hashes).contains(&self.keys.hash_one(identity))
    }

    pub fn expect(&self, tokens: PendingTokens) {
        lock(&self.pending).push(tokens);
    }

    /// Remembers an expected list's tokens now; `true` when one was new.
    pub fn settle(&self, tokens: &PendingTokens) -> bool {
        lock(&self.pending).retain(|pending| !Arc::ptr_eq(pending, tokens));
        self.remember(tokens().iter().map(String::as_str))
    }

    /// Remembers these tokens (empty ones are not tokens); `true` when one was new.
    pub fn remember<'a>(&self, tokens: impl IntoIterator<Item = &'a str>) -> bool {
        let hashes: Vec<u64> =
            tokens.into_iter().filter(|t| !t.is_empty()).map(|t| self.keys.hash_one(t)).collect();
        let mut seen = lock(&self.hashes);
        let mut any_new = false;
        for hash in hashes {
            if seen.len() >= TOKENS_KEPT && !seen.contains(&hash) {
                seen.clear();
            }
            any_new |= seen.insert(hash);
        }
        any_new
    }
}
