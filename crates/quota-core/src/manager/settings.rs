//! The settings the host keeps in its storage (explicit options on top), and the cache entry
//! they make of a snapshot.

use std::sync::Arc;

use super::{ManagerConfig, DEFAULT_CHECK_INTERVAL_MINUTES};
use crate::freshness;
use crate::host::HostStorage;
use crate::policy::{exhausted_until, MinimumRemaining};
use crate::snapshot::{QuotaEntry, QuotaSnapshot};

#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub interval_ms: i64,
    pub refresh_every_n: i64,
    pub minimum: MinimumRemaining,
    pub fail_closed: bool,
}

impl Settings {
    pub fn from_config(config: &ManagerConfig, storage: Option<&HostStorage>) -> Self {
        let minutes = config
            .check_interval_minutes
            .or_else(|| storage?.check_interval_minutes)
            .unwrap_or(DEFAULT_CHECK_INTERVAL_MINUTES);
        Self {
            interval_ms: (minutes * freshness::MINUTE_MS as f64) as i64,
            refresh_every_n: config
                .refresh_every_n_requests
                .or_else(|| storage?.refresh_every_n_requests)
                .unwrap_or(0),
            minimum: storage.and_then(|s| s.minimum_remaining.clone()).unwrap_or_default(),
            // The plugin's default: unknown quota fails closed.
            fail_closed: storage.and_then(|s| s.fail_closed_on_unknown_quota).unwrap_or(true),
        }
    }

    /// An entry seeded from the host's persisted snapshot: due by its standard windows only (an
    /// old scoped window makes it due for that window's model alone, by the per-model rule).
    pub fn seeded_entry(&self, quota: QuotaSnapshot, checked_at: i64, now: i64) -> Arc<QuotaEntry> {
        let oldest_standard =
            quota.windows().map(|(_, w)| w.checked_at).min().unwrap_or(checked_at).min(checked_at);
        let exhausted = exhausted_until(&quota, &self.minimum, now);
        let refresh_after =
            freshness::refresh_after(&quota, oldest_standard, self.interval_ms, exhausted);
        Arc::new(QuotaEntry { quota, checked_at, refresh_after })
    }

    /// A cache entry whose `refreshAfter` follows docs/freshness.md#refresh-after, measured from
    /// the oldest window so a header push never postpones the poll that the older poll-only
    /// fields need.
    pub fn entry(&self, quota: QuotaSnapshot, checked_at: i64, now: i64) -> Arc<QuotaEntry> {
        let oldest = quota.oldest_window_checked_at().unwrap_or(checked_at).min(checked_at);
        let exhausted = exhausted_until(&quota, &self.minimum, now);
        let refresh_after = freshness::refresh_after(&quota, oldest, self.interval_ms, exhausted);
        Arc::new(QuotaEntry { quota, checked_at, refresh_after })
    }
}
