//! `ManualClock`: time that moves only when told, for tests and simulations.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::js::number_in;
use quota_core::clock::{Clock, ManualClock as CoreManualClock};

/// The largest time JavaScript dates can hold, in milliseconds.
pub const MAX_TIME_MS: f64 = 8.64e15;

/// Time that moves only when told. Pass it as `options.clock` and every timestamp and deadline
/// the manager keeps (freshness, backoff, pacing) follows it, so tests never wait for real.
#[napi]
pub struct ManualClock {
    pub(crate) clock: CoreManualClock,
    /// Whether the time was shown to JavaScript (V8 allows one buffer per memory).
    time_shown: std::cell::Cell<bool>,
}

#[napi]
impl ManualClock {
    /// @param startMs - the starting time in Unix milliseconds
    #[napi(catch_unwind, constructor, ts_args_type = "startMs: number")]
    pub fn new(env: Env, start_ms: Unknown) -> Result<Self> {
        let start = number_in(&env, start_ms, "startMs", 0.0, MAX_TIME_MS)?;
        Ok(Self {
            clock: CoreManualClock::new(start as i64),
            time_shown: std::cell::Cell::new(false),
        })
    }

    /// The current time in Unix milliseconds.
    #[napi(catch_unwind)]
    pub fn now(&self) -> f64 {
        self.clock.now_ms() as f64
    }

    /// Moves time forward by `ms` milliseconds.
    #[napi(catch_unwind, ts_args_type = "ms: number")]
    pub fn advance(&self, env: Env, ms: Unknown) -> Result<()> {
        let ms = number_in(&env, ms, "ms", 0.0, MAX_TIME_MS)?;
        self.clock.advance(ms as i64);
        Ok(())
    }

    /// Sets the time to `ms` Unix milliseconds.
    #[napi(catch_unwind, ts_args_type = "ms: number")]
    pub fn set(&self, env: Env, ms: Unknown) -> Result<()> {
        let ms = number_in(&env, ms, "ms", 0.0, MAX_TIME_MS)?;
        self.clock.set(ms as i64);
        Ok(())
    }

    /// The time as a `BigInt64Array` of length 1 in shared memory, for the facade (`index.js`),
    /// once per clock; `null` on a second call or where the runtime refuses external buffers.
    #[napi(catch_unwind, js_name = "_sharedTime", skip_typescript)]
    pub fn shared_time<'env>(&self, env: &'env Env) -> Option<Unknown<'env>> {
        super::hot_path::shared_view(env, &self.time_shown, self.clock.shared())
    }
}
