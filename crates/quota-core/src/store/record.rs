//! A route's record, the one merge rule of its copies (docs/state-file.md#merge-rule), and the
//! bounds on times adopted from another clock (docs/state-file.md#clock-bounds).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::backoff::{BackoffConfig, BackoffState};
use crate::snapshot::{QuotaEntry, WindowKind};

/// How far ahead of this clock another's time may be dated (docs/state-file.md#clock-bounds).
pub const MAX_CLOCK_SKEW_MS: i64 = 60_000;

/// One route's record, as on disk, its fields as docs/state-file.md#contents says: no token, ever.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteRecord {
    /// Shared, never mutated in place: a new observation is a new `Arc`, so a reader can tell
    /// by pointer whether the entry changed.
    pub entry: Option<Arc<QuotaEntry>>,
    pub token_fingerprint: Option<String>,
    pub backoff: BackoffState,
    pub backoff_updated_at: i64,
    pub lineage: Option<String>,
    pub last_attempt_at: Option<i64>,
    pub last_attempt_token: Option<String>,
}

impl RouteRecord {
    /// Folds another copy of the record into this one (docs/state-file.md#merge-rule).
    pub fn merge(&mut self, incoming: &Self) {
        if incoming.lineage.is_some() && incoming.lineage != self.lineage {
            *self = incoming.clone();
            return;
        }
        // Option's order: any observation is newer than none.
        let observed_at = |record: &Self| record.entry.as_ref().map(|entry| entry.checked_at);
        if observed_at(incoming) > observed_at(self) {
            self.entry.clone_from(&incoming.entry);
            self.token_fingerprint.clone_from(&incoming.token_fingerprint);
        }
        if incoming.backoff_updated_at > self.backoff_updated_at {
            self.backoff = incoming.backoff.clone();
            self.backoff_updated_at = incoming.backoff_updated_at;
        } else if incoming.backoff_updated_at == self.backoff_updated_at {
            self.backoff.merge_from(&incoming.backoff);
        }
        if incoming.last_attempt_at > self.last_attempt_at {
            self.last_attempt_at = incoming.last_attempt_at;
            self.last_attempt_token.clone_from(&incoming.last_attempt_token);
        }
    }

    /// [`RouteRecord::merge`] by a writer trusting times up to `trusted_until`: a snapshot or
    /// backoff change here dated later yields (docs/state-file.md#clock-bounds).
    pub fn merge_as_of(&mut self, incoming: &Self, trusted_until: i64) {
        let from_the_future = |at: i64| at > trusted_until;
        if incoming.entry.is_some()
            && self.entry.as_ref().is_some_and(|e| from_the_future(e.checked_at))
        {
            self.entry = None;
        }
        if incoming.backoff_updated_at > 0 && from_the_future(self.backoff_updated_at) {
            self.backoff_updated_at = i64::MIN;
        }
        self.merge(incoming);
    }

    /// This record with every time bounded relative to `now`, for adoption from the shared file
    /// or Redis (docs/state-file.md#clock-bounds). Saturating arithmetic: any `i64` is safe.
    #[must_use]
    pub fn clamped(&self, now: i64, limits: &AdoptionLimits) -> Self {
        let latest_seen = now.saturating_add(limits.max_clock_skew_ms.max(0));
        let latest_retry = now.saturating_add(limits.max_backoff_ms.max(0));
        let seen = |at: i64| if at > latest_seen { now } else { at };
        let mut record = self.clone();
        if let Some(entry) = record.entry.as_mut().map(Arc::make_mut) {
            let from_the_future = entry.checked_at > latest_seen;
            entry.checked_at = seen(entry.checked_at);
            let fresh_until =
                entry.checked_at.saturating_add(limits.max_refresh_interval_ms.max(0));
            entry.refresh_after =
                if from_the_future { now } else { entry.refresh_after.min(fresh_until) };
            let quota = &mut entry.quota;
            quota.checked_at = quota.checked_at.map(seen);
            for kind in WindowKind::ALL {
                if let Some(window) = quota.window_mut(kind) {
                    window.checked_at = seen(window.checked_at);
                }
            }
            for window in quota.scoped.iter_mut().flatten() {
                window.checked_at = seen(window.checked_at);
            }
        }
        record.backoff_updated_at = seen(record.backoff_updated_at);
        record.last_attempt_at = record.last_attempt_at.map(seen);
        let backoff = &mut record.backoff;
        backoff.next_retry_at = backoff.next_retry_at.map(|at| at.min(latest_retry));
        if let Some(error) = backoff.last_error.as_mut() {
            error.checked_at = seen(error.checked_at);
            error.next_retry_at = error.next_retry_at.map(|at| at.min(latest_retry));
        }
        record
    }
}

/// Bounds applied by [`RouteRecord::clamped`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptionLimits {
    /// How far in the future an observation time may lie.
    pub max_clock_skew_ms: i64,
    /// The longest backoff window this configuration can arm.
    pub max_backoff_ms: i64,
    /// The freshness interval: no entry is fresh longer than this after it was observed.
    pub max_refresh_interval_ms: i64,
}

impl AdoptionLimits {
    /// The limits for this backoff configuration and interval (docs/state-file.md#clock-bounds).
    pub fn new(backoff: &BackoffConfig, refresh_interval_ms: i64) -> Self {
        Self {
            max_clock_skew_ms: MAX_CLOCK_SKEW_MS,
            max_backoff_ms: backoff
                .max_ms
                .max(backoff.non_transient_ms)
                .max(backoff.max_retry_after_ms),
            max_refresh_interval_ms: refresh_interval_ms,
        }
    }
}
