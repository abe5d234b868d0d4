//! What a refresh ends with, shared by the modules that start, run and answer it.

use crate::error::QuotaError;
use crate::snapshot::QuotaSnapshot;

/// What a refresh hands back.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshOutcome {
    pub quota: QuotaSnapshot,
    /// `false` when served from the cache (backoff) or from another process's result.
    pub fetched: bool,
}

/// How a refresh was answered, so every caller waiting on it is counted where it belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// By a request this process sent (or tried to send).
    Request,
    /// By another process's result, read from the state file.
    OtherProcess,
    /// From the cache, or refused, because the route is backed off.
    DuringBackoff,
}

pub(super) type Settled = (Served, Result<RefreshOutcome, QuotaError>);
