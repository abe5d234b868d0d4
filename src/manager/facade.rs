//! The facade's hot path (`index.js`; not part of the typed API).

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::js::{optional_string, required_non_empty};

use super::QuotaManager;

#[napi]
impl QuotaManager {
    /// The change counter as an `Int32Array` of length 1 in shared memory, once per manager;
    /// `null` on a second call or where the runtime refuses external buffers.
    #[napi(catch_unwind, js_name = "_changeCounter", skip_typescript)]
    pub fn change_counter<'env>(&self, env: &'env Env) -> Option<Unknown<'env>> {
        if self.counter_shown.replace(true) {
            return None;
        }
        crate::hot_path::shared_view(env, self.core.changes().shared())
    }

    /// The id of the main route's running request (0: none), published by the core on every
    /// change, as an `Int32Array` of length 1 in shared memory, once per manager.
    #[napi(catch_unwind, js_name = "_mainFlightId", skip_typescript)]
    pub fn main_flight_id<'env>(&self, env: &'env Env) -> Option<Unknown<'env>> {
        if self.flight_id_shown.replace(true) {
            return None;
        }
        crate::hot_path::shared_view(env, self.core.changes().shared_main_flight())
    }

    /// The main route's running request as `[id, callers]`, `callers` a `BigUint64Array` over
    /// the count the core tallies its callers with (the facade adds the callers it joins to it
    /// itself); `null` when none runs, or when this request's count was already handed out.
    #[napi(catch_unwind, js_name = "_mainFlight", skip_typescript)]
    pub fn main_flight<'env>(&self, env: &'env Env) -> Result<Option<Unknown<'env>>> {
        let Some((id, callers)) = self.core.main_flight() else {
            return Ok(None);
        };
        if self.flight_shown.replace(id) == id {
            return Ok(None);
        }
        let Some(view) = crate::hot_path::shared_view(env, callers) else {
            return Ok(None);
        };
        let mut pair = env.create_array(2)?;
        pair.set(0, id as f64)?;
        pair.set(1, view)?;
        Ok(Some(pair.coerce_to_object()?.to_unknown()))
    }

    /// The `now` option's last sample as a `BigInt64Array` of length 1 in shared memory, once
    /// per manager (`null` without a `now` option): the facade samples `now` itself at each
    /// entry and stores the sample there, exactly as every native entry does.
    #[napi(catch_unwind, js_name = "_sharedNow", skip_typescript)]
    pub fn shared_now<'env>(&self, env: &'env Env) -> Option<Unknown<'env>> {
        let clock = self.js_now.as_ref()?.clock();
        if self.now_shown.replace(true) {
            return None;
        }
        crate::hot_path::shared_view(env, clock.shared())
    }

    /// The first instant (manager's clock, ms) at which `isMainStale(modelId)` turns true while
    /// the change counter stays put; `-Infinity` when it already is whatever the time.
    #[napi(catch_unwind, js_name = "_mainStaleFrom", skip_typescript)]
    pub fn main_stale_from(&self, env: Env, model_id: Option<Unknown>) -> Result<f64> {
        self.tick(&env)?;
        let model = optional_string(&env, model_id, "modelId")?;
        Ok(stale_from_ms(self.core.main_stale_from(model.as_deref())))
    }

    /// `_mainStaleFrom` for `isFallbackStale(accountId, token, modelId)` without an account.
    #[napi(catch_unwind, js_name = "_fallbackStaleFrom", skip_typescript)]
    pub fn fallback_stale_from(
        &self,
        env: Env,
        account_id: Option<Unknown>,
        model_id: Option<Unknown>,
    ) -> Result<f64> {
        self.tick(&env)?;
        let id = required_non_empty(&env, account_id, "accountId")?;
        let model = optional_string(&env, model_id, "modelId")?;
        Ok(stale_from_ms(self.core.fallback_stale_from(&id, model.as_deref())))
    }

    /// `refreshEveryNRequests` in force (0: off).
    #[napi(catch_unwind, js_name = "_refreshEveryN", skip_typescript)]
    pub fn refresh_every_n(&self) -> f64 {
        self.core.refresh_every_n() as f64
    }
}

/// A stale-from instant for JavaScript: `i64::MIN` (stale whatever the time) as `-Infinity`.
fn stale_from_ms(from: i64) -> f64 {
    if from == i64::MIN {
        f64::NEG_INFINITY
    } else {
        from as f64
    }
}
