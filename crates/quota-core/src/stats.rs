//! Counters for `stats()`: plain atomics, bumped where the event happens.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Declares each counter once: an atomic of [`Stats`] and a field of its copy [`StatsSnapshot`].
macro_rules! counters {
    ($($name:ident,)*) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment (`QuotaStats` in docs/api.md#stats).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "camelCase")]
        pub struct StatsSnapshot {
            $(pub $name: u64,)*
            /// With `redis_fallbacks`, filled in by the manager (docs/redis.md#failure-behaviour).
            pub shared_store: &'static str,
            pub redis_fallbacks: u64,
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    ..StatsSnapshot::default()
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
    state_file_newer_schema,
}

pub fn bump(counter: &AtomicU64) {
    bump_by(counter, 1);
}

pub fn bump_by(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
