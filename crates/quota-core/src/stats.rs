//! Counters for `stats()`: plain atomics, bumped where the event happens.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Stats {
    pub api_calls: AtomicU64,
    pub joined_in_flight: AtomicU64,
    pub joined_other_process: AtomicU64,
    pub served_during_backoff: AtomicU64,
    pub lock_waits: AtomicU64,
    pub lock_timeouts: AtomicU64,
    pub state_writes: AtomicU64,
    pub callback_errors: AtomicU64,
    pub state_file_quarantines: AtomicU64,
    pub state_errors: AtomicU64,
    pub state_file_newer_schema: AtomicU64,
}

/// A copy of the counters at one moment (`QuotaStats` in docs/api.md#stats, plus two state-file counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    pub api_calls: u64,
    pub joined_in_flight: u64,
    pub joined_other_process: u64,
    pub served_during_backoff: u64,
    pub lock_waits: u64,
    pub lock_timeouts: u64,
    pub state_writes: u64,
    pub callback_errors: u64,
    pub state_file_quarantines: u64,
    pub state_errors: u64,
    /// Reads or writes that left a newer build's state file alone.
    pub state_file_newer_schema: u64,
    /// Where routes are shared right now: `"redis"`, `"file"` (no Redis configured, or Redis
    /// not answering) or `"memory"` (filled in by the manager, not counted here).
    pub shared_store: &'static str,
    /// Times Redis stopped answering and the state file took over.
    pub redis_fallbacks: u64,
}

pub fn bump(counter: &AtomicU64) {
    bump_by(counter, 1);
}

pub fn bump_by(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            api_calls: read(&self.api_calls),
            joined_in_flight: read(&self.joined_in_flight),
            joined_other_process: read(&self.joined_other_process),
            served_during_backoff: read(&self.served_during_backoff),
            lock_waits: read(&self.lock_waits),
            lock_timeouts: read(&self.lock_timeouts),
            state_writes: read(&self.state_writes),
            callback_errors: read(&self.callback_errors),
            state_file_quarantines: read(&self.state_file_quarantines),
            state_errors: read(&self.state_errors),
            state_file_newer_schema: read(&self.state_file_newer_schema),
            shared_store: "",
            redis_fallbacks: 0,
        }
    }
}
