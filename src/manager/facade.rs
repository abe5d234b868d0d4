//! The facade's hot path (`index.js`; not part of the typed API).

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::QuotaManager;

#[napi]
impl QuotaManager {
    /// The change counter and the calls answered from the kept `refreshMain` answer, as an
    /// `Int32Array` of length 2 in shared memory (`null`: see `hot_path::shared_view`).
    #[napi(catch_unwind, js_name = "_changeCounter", skip_typescript)]
    pub fn change_counter<'env>(&self, env: &'env Env) -> Option<Unknown<'env>> {
        crate::hot_path::shared_view(env, &self.counter_shown, self.core.changes().shared())
    }

    /// The request a `refreshMain` like the last one would join now (0: none; see `index.js`).
    #[napi(catch_unwind, js_name = "_mainJoinable", skip_typescript)]
    pub fn main_joinable(&self) -> f64 {
        self.core.main_joinable() as f64
    }

    /// The `now` option's last sample as a `BigInt64Array` of length 1 in shared memory (`null`
    /// without one), where the facade stores its own samples, as every native entry does.
    #[napi(catch_unwind, js_name = "_sharedNow", skip_typescript)]
    pub fn shared_now<'env>(&self, env: &'env Env) -> Option<Unknown<'env>> {
        let time = self.js_now.as_ref()?.clock.shared();
        crate::hot_path::shared_view(env, &self.now_shown, time)
    }

    /// The first instant (manager's clock, ms) at which `isMainStale(modelId)` turns true while
    /// the change counter stays put (`i64::MIN`, below any time: already). The facade passes a
    /// string or `undefined` model only.
    #[napi(catch_unwind, js_name = "_mainStaleFrom", skip_typescript)]
    pub fn main_stale_from(&self, env: Env, model_id: Option<String>) -> Result<f64> {
        Ok(self.tick(&env)?.main_stale_from(model_id.as_deref()) as f64)
    }

    /// `_mainStaleFrom` for `isFallbackStale(accountId, token, modelId)` without an account.
    #[napi(catch_unwind, js_name = "_fallbackStaleFrom", skip_typescript)]
    pub fn fallback_stale_from(
        &self,
        env: Env,
        account_id: Option<Unknown>,
        model_id: Option<String>,
    ) -> Result<f64> {
        let id = self.tick_fallback(&env, account_id)?;
        Ok(self.core.fallback_stale_from(&id, model_id.as_deref()) as f64)
    }

    /// `refreshEveryNRequests` in force (0: off).
    #[napi(catch_unwind, js_name = "_refreshEveryN", skip_typescript)]
    pub fn refresh_every_n(&self) -> f64 {
        self.core.refresh_every_n() as f64
    }
}
