//! Counters for `stats()`: plain atomics, bumped where the event happens.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Declares each counter once: as an atomic of [`Stats`] and as a field of its copy,
/// [`StatsSnapshot`].
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment (`QuotaStats` in docs/api.md#stats, plus two
        /// state-file counters).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "camelCase")]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// Where routes are shared right now: `"redis"`, `"file"` (no Redis configured, or
            /// Redis not answering) or `"memory"` (filled in by the manager, not counted here).
            pub shared_store: &'static str,
            /// Times Redis stopped answering and the state file took over.
            pub redis_fallbacks: u64,
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    shared_store: "",
                    redis_fallbacks: 0,
                }
            }
        }
    };
}

counters! {
    api_calls,
    joined_in_flight,
    joined_other_process,
    served_during_backoff,
    lock_waits,
    lock_timeouts,
    state_writes,
    callback_errors,
    state_file_quarantines,
    state_errors,
    /// Reads or writes that left a newer build's state file alone.
    state_file_newer_schema,
}

pub fn bump(counter: &AtomicU64) {
    bump_by(counter, 1);
}

pub fn bump_by(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
