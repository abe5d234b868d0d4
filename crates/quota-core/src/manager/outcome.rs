//! What a refresh ends with: its callers' answer, and the host's callbacks once its locks are free.

use std::sync::atomic::AtomicU64;

use futures::future::BoxFuture;

use crate::error::QuotaError;
use crate::snapshot::{ApiErrorRecord, QuotaSnapshot};
use crate::stats::Stats;
use crate::store::RouteRecord;

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

/// A successful poll, as reported to the host.
#[derive(Clone, Debug)]
pub struct FetchedEvent {
    pub quota: QuotaSnapshot,
    pub checked_at: i64,
    pub token_fingerprint: String,
    pub fetch_started_at: i64,
    /// The main error generation after this success (docs/compat.md#callbacks); 0 for fallbacks.
    pub error_generation: u64,
    /// The main route's cleared-at time after this success.
    pub error_cleared_at: Option<i64>,
}

/// The host's callbacks. Each returns when the host has handled the event, so results reach
/// callers only after the host saw them.
pub trait HostEvents: Send + Sync {
    fn main_quota_fetched(&self, event: FetchedEvent) -> BoxFuture<'static, ()>;
    /// `error_generation`: the main route's error generation after this error.
    fn api_error(&self, error: ApiErrorRecord, error_generation: u64) -> BoxFuture<'static, ()>;
    fn fallback_quota_fetched(
        &self,
        account_id: String,
        event: FetchedEvent,
    ) -> BoxFuture<'static, ()>;
    fn fallback_api_error(
        &self,
        account_id: String,
        error: ApiErrorRecord,
    ) -> BoxFuture<'static, ()>;
}

pub(super) type Settled = (Served, Result<RefreshOutcome, QuotaError>);

/// The answer while the route is backed off (docs/backoff.md#while-backed-off); `None` when not.
pub(super) fn backed_off_answer(record: &RouteRecord, now: i64) -> Option<Settled> {
    if !record.backoff.is_open(now) {
        return None;
    }
    let answer = if let Some(entry) = &record.entry {
        Ok(RefreshOutcome { quota: entry.quota.clone(), fetched: false })
    } else {
        let next_retry_at = record.backoff.next_retry_at.unwrap_or(now);
        Err(QuotaError::BackedOff { next_retry_at, retry_after_ms: (next_retry_at - now).max(0) })
    };
    Some((Served::DuringBackoff, answer))
}
