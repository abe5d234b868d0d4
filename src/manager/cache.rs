//! Cache reads and writes, the main identity, freshness, backoff and the fail-closed answer; the
//! facade's hot path over them.

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::{json, Value};

use crate::js::{headers_arg, optional, required_non_empty, retry_after_secs, Json, OrUndefined};
use quota_core::headers::frame_from_value;
use quota_core::snapshot::ApiErrorRecord;

use super::{entry_arg, optional_account, request_count, QuotaManager};

#[napi]
impl QuotaManager {
    /// The main cache entry. With an id: `null` unless the entry belongs to it (and, while the
    /// identity is strict, is stamped with it). Without: `null` while an identity is bound (as
    /// the plugin's). The object is frozen, and the same one is returned until it changes.
    #[napi(
        catch_unwind,
        ts_args_type = "mainAccountId?: string | undefined",
        ts_return_type = "QuotaEntry | null"
    )]
    pub fn get_main<'env>(
        &self,
        env: &'env Env,
        main_account_id: Option<Unknown>,
    ) -> Result<Option<Unknown<'env>>> {
        self.tick(env)?;
        let identity = self.main_identity(env, main_account_id, "mainAccountId")?;
        self.views.get(env, None, self.core.get_main(identity.as_deref()))
    }

    /// A fallback's cache entry. Passing the account (or `{ authLineageId }`) drops the entry
    /// first if its login was replaced (a different `authLineageId`).
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string, account?: FallbackAccountLineage | FallbackAccount | undefined",
        ts_return_type = "QuotaEntry | null"
    )]
    pub fn get_fallback<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Option<Unknown<'env>>> {
        let id = self.tick_fallback(env, account_id)?;
        let account = optional_account(env, &id, account)?;
        self.views.get(env, Some(&id), self.core.get_fallback(&id, account.as_ref()))
    }

    /// Every cached fallback entry, as `[id, entry]` pairs: the facade makes them the `Map` its
    /// type promises (`src/types.d.ts`).
    #[napi(catch_unwind, skip_typescript)]
    pub fn get_all_fallbacks<'env>(&self, env: &'env Env) -> Result<Vec<(String, Unknown<'env>)>> {
        let pairs = self.tick(env)?.all_fallbacks().into_iter().map(|(id, entry)| {
            let view = self.views.view(env, Some(&id), entry)?;
            Ok((id, view))
        });
        pairs.collect()
    }

    /// Binds the main identity (docs/compat.md#main-identity). Returns the new error generation when a backoff
    /// error recorded for another identity was cleared, else `undefined`.
    #[napi(
        catch_unwind,
        ts_args_type = "identity: string | undefined, strict?: boolean | undefined, force?: boolean | undefined",
        ts_return_type = "number | undefined"
    )]
    pub fn set_main_quota_account_identity(
        &self,
        env: Env,
        identity: Option<Unknown>,
        strict: Option<Unknown>,
        force: Option<Unknown>,
    ) -> Result<OrUndefined<f64>> {
        self.tick(&env)?;
        let identity = self.main_identity(&env, identity, "identity")?;
        let strict = optional::<bool>(&env, strict, "strict")?.unwrap_or(true);
        let force = optional::<bool>(&env, force, "force")?.unwrap_or(false);
        Ok(self.core.set_main_identity(identity.as_deref(), strict, force).map(|g| g as f64).into())
    }

    /// Bumped whenever the bound main identity changes.
    #[napi(catch_unwind)]
    pub fn get_main_quota_identity_generation(&self, env: Env) -> Result<f64> {
        Ok(self.tick(&env)?.main_identity_generation() as f64)
    }

    /// Bumped whenever the main backoff error is set or cleared.
    #[napi(catch_unwind)]
    pub fn get_main_quota_error_generation(&self, env: Env) -> Result<f64> {
        Ok(self.tick(&env)?.main_error_generation() as f64)
    }

    /// When the main backoff error was last cleared.
    #[napi(catch_unwind, ts_return_type = "number | undefined")]
    pub fn get_main_quota_error_cleared_at(&self, env: Env) -> Result<OrUndefined<f64>> {
        Ok(self.tick(&env)?.main_error_cleared_at().map(|t| t as f64).into())
    }

    /// Unbinds the main identity and drops the main entry.
    #[napi(catch_unwind)]
    pub fn clear_main(&self, env: Env) -> Result<()> {
        self.tick(&env)?.clear_main();
        Ok(())
    }

    /// Clears the main backoff, here and (through the state file) in every process. Returns the
    /// new error generation, or `undefined` when no error was set.
    #[napi(catch_unwind, ts_return_type = "number | undefined")]
    pub fn clear_main_backoff(&self, env: Env) -> Result<OrUndefined<f64>> {
        Ok(self.tick(&env)?.clear_main_backoff().map(|g| g as f64).into())
    }

    /// `true` when polls go through `fetchQuotaSnapshot`: only then may a refresh be called
    /// with an empty token.
    #[napi(catch_unwind)]
    pub fn can_fetch_without_access_token(&self) -> bool {
        self.core.can_fetch_without_access_token()
    }

    /// Replaces the main cache entry (for example with one the host persisted).
    #[napi(catch_unwind, ts_args_type = "mainAccountId: string | undefined, entry: QuotaEntry")]
    pub fn set_main(
        &self,
        env: Env,
        main_account_id: Option<Unknown>,
        entry: Option<Unknown>,
    ) -> Result<()> {
        self.tick(&env)?;
        let identity = self.main_identity(&env, main_account_id, "mainAccountId")?;
        let entry = entry_arg(&env, entry)?;
        self.core.set_main(identity.as_deref(), entry);
        Ok(())
    }

    /// Replaces a fallback's cache entry.
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string, entry: QuotaEntry, account?: FallbackAccountLineage | FallbackAccount | undefined"
    )]
    pub fn set_fallback(
        &self,
        env: Env,
        account_id: Option<Unknown>,
        entry: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<()> {
        let id = self.tick_fallback(&env, account_id)?;
        let entry = entry_arg(&env, entry)?;
        let account = optional_account(&env, &id, account)?;
        self.core.set_fallback(&id, entry, account.as_ref());
        Ok(())
    }

    /// Forgets a fallback's cache and backoff, here and in the state file.
    #[napi(catch_unwind, ts_args_type = "accountId: string")]
    pub fn clear_fallback(&self, env: Env, account_id: Option<Unknown>) -> Result<()> {
        self.core.clear_fallback(&self.tick_fallback(&env, account_id)?);
        Ok(())
    }

    /// Harvests quota from a response's `anthropic-ratelimit-unified-*` headers (or a snapshot)
    /// into the main cache, without any request. `null` when headers carry no quota; a snapshot
    /// is merged even without windows, as in the plugin's manager.
    #[napi(
        catch_unwind,
        ts_args_type = "mainAccountId: string | undefined, headers: HeadersInput | QuotaSnapshot",
        ts_return_type = "QuotaEntry | null"
    )]
    pub fn push_main_from_headers<'env>(
        &self,
        env: &'env Env,
        main_account_id: Option<Unknown>,
        headers: Option<Unknown>,
    ) -> Result<Option<Unknown<'env>>> {
        self.tick(env)?;
        let identity = self.main_identity(env, main_account_id, "mainAccountId")?;
        let headers = headers_arg(env, headers, "headers")?;
        let entry = frame_from_value(&headers, self.core.now_ms())
            .and_then(|frame| self.core.push_main_frame(identity.as_deref(), frame));
        entry.map(|entry| self.views.view(env, None, entry)).transpose()
    }

    /// Harvests quota from response headers (or a snapshot) into a fallback's cache. `null` when
    /// headers carry no quota, or the observation is of a login that was replaced; a snapshot
    /// is merged even without windows.
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string, headers: HeadersInput | QuotaSnapshot, account?: FallbackAccountLineage | FallbackAccount | undefined",
        ts_return_type = "QuotaEntry | null"
    )]
    pub fn push_fallback_from_headers<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        headers: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Option<Unknown<'env>>> {
        let id = self.tick_fallback(env, account_id)?;
        let headers = headers_arg(env, headers, "headers")?;
        let account = optional_account(env, &id, account)?;
        let entry = frame_from_value(&headers, self.core.now_ms())
            .and_then(|frame| self.core.push_fallback_frame(&id, frame, account.as_ref()));
        entry.map(|entry| self.views.view(env, Some(&id), entry)).transpose()
    }

    /// Is the main entry missing or due (for this model's scoped window too, when given)?
    #[napi(catch_unwind, ts_args_type = "modelId?: string | undefined")]
    pub fn is_main_stale(&self, env: Env, model_id: Option<Unknown>) -> Result<bool> {
        self.tick(&env)?;
        let model = optional::<String>(&env, model_id, "modelId")?;
        Ok(self.core.is_main_stale(model.as_deref()))
    }

    /// Is a fallback's entry missing or due? The token argument is unused (kept for the plugin).
    /// Passing the account (or `{ authLineageId }`) binds its login first.
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string, accessToken?: string | undefined, modelId?: string | undefined, account?: FallbackAccountLineage | FallbackAccount | undefined"
    )]
    pub fn is_fallback_stale(
        &self,
        env: Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        model_id: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<bool> {
        let id = self.tick_fallback(&env, account_id)?;
        optional::<String>(&env, access_token, "accessToken")?;
        let model = optional::<String>(&env, model_id, "modelId")?;
        if let Some(account) = optional_account(&env, &id, account)? {
            self.core.get_fallback(&id, Some(&account));
        }
        Ok(self.core.is_fallback_stale(&id, model.as_deref()))
    }

    /// True every `refreshEveryNRequests` requests (never when that setting is 0).
    #[napi(catch_unwind, ts_args_type = "requestCount: number")]
    pub fn should_refresh_on_request_count(
        &self,
        env: Env,
        count: Option<Unknown>,
    ) -> Result<bool> {
        self.tick(&env)?;
        let count = request_count(&env, count)?;
        Ok(self.core.should_refresh_on_request_count(count))
    }

    /// `isMainStale(modelId) || shouldRefreshOnRequestCount(requestCount)`.
    #[napi(catch_unwind, ts_args_type = "requestCount: number, modelId?: string | undefined")]
    pub fn needs_refresh(
        &self,
        env: Env,
        count: Option<Unknown>,
        model_id: Option<Unknown>,
    ) -> Result<bool> {
        self.tick(&env)?;
        let count = request_count(&env, count)?;
        let model = optional::<String>(&env, model_id, "modelId")?;
        Ok(self.core.needs_refresh(count, model.as_deref()))
    }

    /// Is the main route backed off?
    #[napi(catch_unwind)]
    pub fn is_backed_off(&self, env: Env) -> Result<bool> {
        Ok(self.tick(&env)?.is_backed_off())
    }

    /// Is this fallback's route backed off?
    #[napi(catch_unwind, ts_args_type = "accountId: string")]
    pub fn is_fallback_backed_off(&self, env: Env, account_id: Option<Unknown>) -> Result<bool> {
        Ok(self.core.is_fallback_backed_off(&self.tick_fallback(&env, account_id)?))
    }

    /// The main route's last backoff-arming failure.
    #[napi(catch_unwind, ts_return_type = "QuotaApiError | undefined")]
    pub fn get_last_api_error(&self, env: Env) -> Result<OrUndefined<Json<Value>>> {
        Ok(self.tick(&env)?.last_api_error().map(|e| Json(with_seconds(e))).into())
    }

    /// A fallback route's last backoff-arming failure.
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string",
        ts_return_type = "QuotaApiError | undefined"
    )]
    pub fn get_fallback_api_error(
        &self,
        env: Env,
        account_id: Option<Unknown>,
    ) -> Result<OrUndefined<Json<ApiErrorRecord>>> {
        let id = required_non_empty(&env, account_id, "accountId")?;
        Ok(self.core.fallback_api_error(&id).map(Json).into())
    }

    /// The 429 answer the plugin sends itself when it fails closed: main backed off, nothing
    /// cached, and `failClosedOnUnknownQuota` set. `null` otherwise.
    #[napi(
        catch_unwind,
        ts_return_type = "{ status: 429; headers: Record<string, string>; body: string } | null"
    )]
    pub fn fail_closed_response(&self, env: Env) -> Result<Json<Option<FailClosedAnswer>>> {
        Ok(Json(self.tick(&env)?.fail_closed_response().map(|answer| {
            let retry_after = answer.retry_after_secs.to_string();
            let headers = json!({ "retry-after": retry_after, "content-type": "application/json" });
            FailClosedAnswer { status: 429, headers, body: answer.body }
        })))
    }
}

/// Its fields in the plugin's order (a `json!` object would sort them).
#[derive(serde::Serialize)]
pub struct FailClosedAnswer {
    status: u16,
    headers: Value,
    body: String,
}

/// A main API error as the plugin reads it: `retryAfter` in seconds beside `retryAfterMs`.
fn with_seconds(error: ApiErrorRecord) -> Value {
    let retry_after = error.retry_after_ms.map(retry_after_secs);
    let mut value = json!(error);
    if let Some(seconds) = retry_after {
        value["retryAfter"] = json!(seconds);
    }
    value
}

/// The facade's hot path (`index.js`; not part of the typed API).
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
