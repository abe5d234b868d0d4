//! What a refresh ends with, shared by the modules that start, run and answer it.

use std::sync::atomic::AtomicU64;

use crate::error::QuotaError;
use crate::snapshot::QuotaSnapshot;
use crate::stats::Stats;

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

impl Served {
    /// Where a caller served this way is counted (a request's starter is counted nowhere).
    pub fn counter(self, stats: &Stats) -> &AtomicU64 {
        match self {
            Self::Request => &stats.joined_in_flight,
            Self::OtherProcess => &stats.joined_other_process,
            Self::DuringBackoff => &stats.served_during_backoff,
        }
    }
}

pub(super) type Settled = (Served, Result<RefreshOutcome, QuotaError>);
