//! The `QuotaManager` class: argument checks and conversions around the core manager. No quota
//! logic lives here.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde::Serialize;
use serde_json::Value;

use super::callbacks::JsCallbacks;
use super::js::{
    describe, is_nullish, optional_string, required_non_empty, to_json, type_error, Json,
    OrUndefined,
};
use super::options::parse_options;
use super::shared::{Shape, SharedPromises};
use super::views::EntryViews;
use quota_core::headers::frame_from_value;
use quota_core::host::{FallbackAccount, HostStorage};
use quota_core::manager::QuotaManager as CoreManager;
use quota_core::snapshot::{ApiErrorRecord, QuotaEntry};
use quota_core::stats::Stats;

/// Keeps Claude accounts' usage quota: one usage call per account per freshness window on the
/// whole machine, a backoff shared by every process, and a locked state file.
#[napi(custom_finalize)]
pub struct QuotaManager {
    core: CoreManager,
    callbacks: Arc<JsCallbacks>,
    views: EntryViews,
    promises: SharedPromises,
    /// Whether the change counter was shown to JavaScript (V8 allows one buffer per memory).
    counter_shown: std::cell::Cell<bool>,
}

impl ObjectFinalize for QuotaManager {
    fn finalize(self, env: Env) -> Result<()> {
        self.views.release(&env);
        Ok(())
    }
}

#[derive(Serialize)]
pub struct FailClosedAnswer {
    status: u16,
    headers: std::collections::BTreeMap<&'static str, String>,
    body: String,
}

/// A promise that resolves with `undefined` when `work` is done (it cannot fail).
fn void_promise(
    env: &Env,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<PromiseRaw<'_, ()>> {
    env.spawn_future_with_callback(
        async move {
            work.await;
            Ok(())
        },
        |_, ()| Ok(()),
    )
}

fn optional_account(
    env: &Env,
    value: Option<Unknown>,
    name: &str,
) -> Result<Option<FallbackAccount>> {
    match value {
        Some(value) if !is_nullish(&value) => {
            let json = to_json(env, value, name)?;
            FallbackAccount::from_value(&json, name)
                .map(Some)
                .map_err(|e| type_error(env, e))
        }
        _ => Ok(None),
    }
}

fn accounts(env: &Env, value: Option<Unknown>, name: &str) -> Result<Vec<FallbackAccount>> {
    let value = value.ok_or_else(|| type_error(env, format!("{name} must be an array")))?;
    let json = to_json(env, value, name)?;
    FallbackAccount::list_from_value(&json, name).map_err(|e| type_error(env, e))
}

fn optional_storage(env: &Env, value: Option<Unknown>, name: &str) -> Result<Option<HostStorage>> {
    match value {
        Some(value) if !is_nullish(&value) => {
            let json = to_json(env, value, name)?;
            HostStorage::from_value(&json)
                .map(Some)
                .map_err(|e| type_error(env, format!("{name}: {e}")))
        }
        _ => Ok(None),
    }
}

/// An object argument, read as plain data.
fn object_arg(env: &Env, value: Option<Unknown>, name: &str) -> Result<Value> {
    let value =
        value.ok_or_else(|| type_error(env, format!("{name} must be an object, got undefined")))?;
    match value.get_type()? {
        ValueType::Object => to_json(env, value, name),
        other => Err(type_error(
            env,
            format!("{name} must be an object, got {}", describe(other)),
        )),
    }
}

/// A cache entry the host hands in; its quota is read field by field.
fn entry_arg(env: &Env, value: Option<Unknown>, name: &str) -> Result<QuotaEntry> {
    let json = object_arg(env, value, name)?;
    QuotaEntry::from_value_lenient(&json).ok_or_else(|| {
        type_error(
            env,
            format!("{name} must be {{ quota: QuotaSnapshot, checkedAt: number, refreshAfter?: number }}"),
        )
    })
}

/// A request count: a non-negative whole number (anything else is a `TypeError`/`RangeError`).
fn request_count(env: &Env, value: Option<Unknown>) -> Result<i64> {
    let value =
        value.ok_or_else(|| type_error(env, "requestCount must be a number, got undefined"))?;
    let number = super::js::number_in(env, value, "requestCount", 0.0, 9.0e15)?;
    Ok(number.trunc() as i64)
}

#[napi]
impl QuotaManager {
    /// Builds a manager. Throws a `TypeError` or `RangeError` naming the option for bad options.
    #[napi(constructor, ts_args_type = "options?: QuotaManagerOptions | null")]
    pub fn new(env: Env, options: Option<Unknown>) -> Result<Self> {
        let parsed = parse_options(&env, options)?;
        let stats = Arc::new(Stats::default());
        let callbacks = Arc::new(parsed.callbacks.with_stats(stats.clone()));
        let runtime =
            napi::bindgen_prelude::within_runtime_if_available(tokio::runtime::Handle::current);
        let core = CoreManager::new(
            parsed.config,
            parsed.storage,
            parsed.clock,
            callbacks.clone(),
            stats,
            runtime,
        )
        .map_err(|e| match e.option() {
            Some(option) => type_error(&env, format!("options.{option}: {e}")),
            None => type_error(&env, e.to_string()),
        })?;
        if core.state_path().is_some() {
            super::exit::flush_at_exit(&env, &core)?;
        }
        Ok(Self {
            core,
            callbacks,
            views: EntryViews::default(),
            promises: SharedPromises::default(),
            counter_shown: std::cell::Cell::new(false),
        })
    }

    // ----- cache reads ---------------------------------------------------------------------

    /// The main cache entry; `null` unless it belongs to `mainAccountId` (when given). The
    /// object is frozen, and the same one is returned until the entry changes.
    #[napi(
        ts_args_type = "mainAccountId?: string",
        ts_return_type = "QuotaEntry | null"
    )]
    pub fn get_main<'env>(
        &self,
        env: &'env Env,
        main_account_id: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let identity = optional_string(env, main_account_id, "mainAccountId")?;
        self.views
            .get(env, None, self.core.get_main(identity.as_deref()))
    }

    /// A fallback's cache entry. Passing the account drops the entry first if its login was
    /// replaced (a different `authLineageId`).
    #[napi(
        ts_args_type = "accountId: string, account?: FallbackAccount",
        ts_return_type = "QuotaEntry | null"
    )]
    pub fn get_fallback<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let id = required_non_empty(env, account_id, "accountId")?;
        let account = optional_account(env, account, "account")?;
        let entry = self.core.get_fallback(&id, account.as_ref());
        self.views.get(env, Some(&id), entry)
    }

    /// Every cached fallback entry, by account id.
    #[napi(ts_return_type = "Map<string, QuotaEntry>")]
    pub fn get_all_fallbacks<'env>(&self, env: &'env Env) -> Result<Unknown<'env>> {
        let global = env.get_global()?;
        let map_class: Function<(), Unknown> = global.get_named_property("Map")?;
        let map = map_class.new_instance(())?;
        let set: Function<FnArgs<(String, Unknown)>, Unknown> =
            map.coerce_to_object()?.get_named_property("set")?;
        for (id, entry) in self.core.all_fallbacks() {
            let view = self.views.get(env, Some(&id), Some(entry))?;
            set.apply(map, FnArgs::from((id, view)))?;
        }
        Ok(map)
    }

    // ----- cache writes --------------------------------------------------------------------

    /// Replaces the main cache entry (for example with one the host persisted).
    #[napi(ts_args_type = "mainAccountId: string | undefined, entry: QuotaEntry")]
    pub fn set_main(
        &self,
        env: Env,
        main_account_id: Option<Unknown>,
        entry: Option<Unknown>,
    ) -> Result<()> {
        let identity = optional_string(&env, main_account_id, "mainAccountId")?;
        let entry = entry_arg(&env, entry, "entry")?;
        self.core.set_main(identity.as_deref(), entry);
        Ok(())
    }

    /// Replaces a fallback's cache entry.
    #[napi(ts_args_type = "accountId: string, entry: QuotaEntry, account?: FallbackAccount")]
    pub fn set_fallback(
        &self,
        env: Env,
        account_id: Option<Unknown>,
        entry: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<()> {
        let id = required_non_empty(&env, account_id, "accountId")?;
        let entry = entry_arg(&env, entry, "entry")?;
        let account = optional_account(&env, account, "account")?;
        self.core.set_fallback(&id, entry, account.as_ref());
        Ok(())
    }

    /// Forgets a fallback's cache and backoff, here and in the state file.
    #[napi(ts_args_type = "accountId: string")]
    pub fn clear_fallback(&self, env: Env, account_id: Option<Unknown>) -> Result<()> {
        let id = required_non_empty(&env, account_id, "accountId")?;
        self.core.clear_fallback(&id);
        Ok(())
    }

    /// Harvests quota from a response's `anthropic-ratelimit-unified-*` headers (or a snapshot)
    /// into the main cache, without any request. `null` when they carry no quota.
    #[napi(
        ts_args_type = "mainAccountId: string | undefined, headers: Record<string, string> | QuotaSnapshot",
        ts_return_type = "QuotaEntry | null"
    )]
    pub fn push_main_from_headers<'env>(
        &self,
        env: &'env Env,
        main_account_id: Option<Unknown>,
        headers: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let identity = optional_string(env, main_account_id, "mainAccountId")?;
        let headers = object_arg(env, headers, "headers")?;
        let entry = frame_from_value(&headers, self.core.now_ms())
            .and_then(|frame| self.core.push_main_frame(identity.as_deref(), frame));
        self.views.show(env, None, entry)
    }

    /// Harvests quota from response headers (or a snapshot) into a fallback's cache. `null` when
    /// they carry no quota, or carry a login that was replaced.
    #[napi(
        ts_args_type = "accountId: string, headers: Record<string, string> | QuotaSnapshot, account?: FallbackAccount",
        ts_return_type = "QuotaEntry | null"
    )]
    pub fn push_fallback_from_headers<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        headers: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let id = required_non_empty(env, account_id, "accountId")?;
        let headers = object_arg(env, headers, "headers")?;
        let account = optional_account(env, account, "account")?;
        let entry = frame_from_value(&headers, self.core.now_ms())
            .and_then(|frame| self.core.push_fallback_frame(&id, frame, account.as_ref()));
        self.views.show(env, Some(&id), entry)
    }

    // ----- polls ---------------------------------------------------------------------------

    /// Polls the usage endpoint for the main account (deduplicated, paced, backed off, shared
    /// across processes). With one argument, it is both the identity and the access token.
    /// Callers of one request get the same promise and the same frozen snapshot.
    #[napi(
        ts_args_type = "mainAccountIdOrAccessToken: string, accessToken?: string",
        ts_return_type = "Promise<QuotaSnapshot>"
    )]
    pub fn refresh_main<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        self.poll_main(env, first, access_token, Shape::Snapshot)
    }

    /// `refreshMain`, telling whether a request was sent (`fetched`) or the cache served.
    #[napi(
        ts_args_type = "mainAccountIdOrAccessToken: string, accessToken?: string",
        ts_return_type = "Promise<QuotaRefreshResult>"
    )]
    pub fn refresh_main_with_metadata<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        self.poll_main(env, first, access_token, Shape::WithMetadata)
    }

    /// Polls the usage endpoint for one fallback account.
    #[napi(
        ts_args_type = "accountId: string, accessToken: string, account?: FallbackAccount",
        ts_return_type = "Promise<QuotaSnapshot>"
    )]
    pub fn refresh_fallback<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        self.poll_fallback(env, account_id, access_token, account, Shape::Snapshot)
    }

    /// `refreshFallback`, telling whether a request was sent.
    #[napi(
        ts_args_type = "accountId: string, accessToken: string, account?: FallbackAccount",
        ts_return_type = "Promise<QuotaRefreshResult>"
    )]
    pub fn refresh_fallback_with_metadata<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        self.poll_fallback(env, account_id, access_token, account, Shape::WithMetadata)
    }

    /// Refreshes every enabled account with a token whose quota is due, a few at a time.
    /// Failures are recorded on each account's route, never thrown.
    #[napi(
        ts_args_type = "accounts: FallbackAccount[]",
        ts_return_type = "Promise<void>"
    )]
    pub fn refresh_all_fallbacks<'env>(
        &self,
        env: &'env Env,
        accounts_value: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, ()>> {
        let accounts = accounts(env, accounts_value, "accounts")?;
        void_promise(env, self.core.begin_refresh_all_fallbacks(&accounts))
    }

    /// Starts a main refresh nobody awaits. Never rejects; does nothing while one runs or while
    /// the route is backed off.
    #[napi(ts_args_type = "accessToken: string")]
    pub fn refresh_main_in_background(
        &self,
        env: Env,
        access_token: Option<Unknown>,
    ) -> Result<()> {
        let token = required_non_empty(&env, access_token, "accessToken")?;
        if let Some(refresh) = self.core.background_main_refresh(&token) {
            napi::bindgen_prelude::spawn(refresh);
        }
        Ok(())
    }

    // ----- freshness -----------------------------------------------------------------------

    /// Is the main entry missing or due (for this model's scoped window too, when given)?
    #[napi(ts_args_type = "modelId?: string")]
    pub fn is_main_stale(&self, env: Env, model_id: Option<Unknown>) -> Result<bool> {
        let model = optional_string(&env, model_id, "modelId")?;
        Ok(self.core.is_main_stale(model.as_deref()))
    }

    /// Is a fallback's entry missing or due? The token argument is unused (kept for the plugin).
    #[napi(ts_args_type = "accountId: string, accessToken?: string, modelId?: string")]
    pub fn is_fallback_stale(
        &self,
        env: Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        model_id: Option<Unknown>,
    ) -> Result<bool> {
        let id = required_non_empty(&env, account_id, "accountId")?;
        optional_string(&env, access_token, "accessToken")?;
        let model = optional_string(&env, model_id, "modelId")?;
        Ok(self.core.is_fallback_stale(&id, model.as_deref()))
    }

    /// True every `refreshEveryNRequests` requests (never when that setting is 0).
    #[napi(ts_args_type = "requestCount: number")]
    pub fn should_refresh_on_request_count(
        &self,
        env: Env,
        count: Option<Unknown>,
    ) -> Result<bool> {
        let count = request_count(&env, count)?;
        Ok(self.core.should_refresh_on_request_count(count))
    }

    /// `isMainStale(modelId) || shouldRefreshOnRequestCount(requestCount)`.
    #[napi(ts_args_type = "requestCount: number, modelId?: string")]
    pub fn needs_refresh(
        &self,
        env: Env,
        count: Option<Unknown>,
        model_id: Option<Unknown>,
    ) -> Result<bool> {
        let count = request_count(&env, count)?;
        let model = optional_string(&env, model_id, "modelId")?;
        Ok(self.core.needs_refresh(count, model.as_deref()))
    }

    // ----- backoff -------------------------------------------------------------------------

    /// Is the main route backed off?
    #[napi]
    pub fn is_backed_off(&self) -> bool {
        self.core.is_backed_off()
    }

    /// Is this fallback's route backed off?
    #[napi(ts_args_type = "accountId: string")]
    pub fn is_fallback_backed_off(&self, env: Env, account_id: Option<Unknown>) -> Result<bool> {
        let id = required_non_empty(&env, account_id, "accountId")?;
        Ok(self.core.is_fallback_backed_off(&id))
    }

    /// The main route's last backoff-arming failure.
    #[napi(ts_return_type = "QuotaApiError | undefined")]
    pub fn get_last_api_error(&self) -> OrUndefined<Json<ApiErrorRecord>> {
        OrUndefined(self.core.last_api_error().map(Json))
    }

    /// A fallback route's last backoff-arming failure.
    #[napi(
        ts_args_type = "accountId: string",
        ts_return_type = "QuotaApiError | undefined"
    )]
    pub fn get_fallback_api_error(
        &self,
        env: Env,
        account_id: Option<Unknown>,
    ) -> Result<OrUndefined<Json<ApiErrorRecord>>> {
        let id = required_non_empty(&env, account_id, "accountId")?;
        Ok(OrUndefined(self.core.fallback_api_error(&id).map(Json)))
    }

    // ----- host storage --------------------------------------------------------------------

    /// Takes the host's settings (interval, thresholds, fail-closed) and seeds main from it.
    #[napi(ts_args_type = "storage: AccountStorage | null")]
    pub fn update_storage(&self, env: Env, storage: Option<Unknown>) -> Result<()> {
        let storage = optional_storage(&env, storage, "storage")?;
        self.core.update_storage(storage.as_ref());
        Ok(())
    }

    /// Adopts the host's persisted main snapshot (when newer) and backoff (when active).
    #[napi(ts_args_type = "storage: AccountStorage | null, mainAccountId?: string")]
    pub fn seed_main_from_storage(
        &self,
        env: Env,
        storage: Option<Unknown>,
        main_account_id: Option<Unknown>,
    ) -> Result<()> {
        let storage = optional_storage(&env, storage, "storage")?;
        let identity = optional_string(&env, main_account_id, "mainAccountId")?;
        if let Some(storage) = storage {
            self.core.seed_main(&storage, identity.as_deref());
        }
        Ok(())
    }

    /// Adopts each account's persisted quota and backoff; forgets accounts no longer listed.
    #[napi(ts_args_type = "accounts: FallbackAccount[]")]
    pub fn seed_fallbacks_from_accounts(
        &self,
        env: Env,
        accounts_value: Option<Unknown>,
    ) -> Result<()> {
        let accounts = accounts(&env, accounts_value, "accounts")?;
        self.core.seed_fallbacks(&accounts);
        Ok(())
    }

    // ----- routing -------------------------------------------------------------------------

    /// The 429 answer the plugin sends itself when it fails closed: main backed off, nothing
    /// cached, and `failClosedOnUnknownQuota` set. `null` otherwise.
    #[napi(
        ts_return_type = "{ status: 429; headers: Record<string, string>; body: string } | null"
    )]
    pub fn fail_closed_response(&self) -> Json<Option<FailClosedAnswer>> {
        Json(self.core.fail_closed_response().map(|answer| {
            FailClosedAnswer {
                status: 429,
                headers: [
                    ("retry-after", answer.retry_after_secs.to_string()),
                    ("content-type", "application/json".to_owned()),
                ]
                .into_iter()
                .collect(),
                body: answer.body,
            }
        }))
    }

    // ----- the facade's hot path (index.js; not part of the typed API) ----------------------

    /// The change counter as an `Int32Array` of length 1 in shared memory, once per manager;
    /// `null` on a second call or where the runtime refuses external buffers.
    #[napi(js_name = "_changeCounter", skip_typescript)]
    pub fn change_counter<'env>(&self, env: &'env Env) -> Option<Unknown<'env>> {
        if self.counter_shown.replace(true) {
            return None;
        }
        super::hot_path::shared_view(env, self.core.changes().shared())
    }

    /// The first instant (manager's clock, ms) at which `isMainStale(modelId)` turns true while
    /// the change counter stays put; `-Infinity` when it already is whatever the time.
    #[napi(js_name = "_mainStaleFrom", skip_typescript)]
    pub fn main_stale_from(&self, env: Env, model_id: Option<Unknown>) -> Result<f64> {
        let model = optional_string(&env, model_id, "modelId")?;
        Ok(match self.core.main_stale_from(model.as_deref()) {
            i64::MIN => f64::NEG_INFINITY,
            from => from as f64,
        })
    }

    /// `refreshEveryNRequests` in force (0: off).
    #[napi(js_name = "_refreshEveryN", skip_typescript)]
    pub fn refresh_every_n(&self) -> f64 {
        self.core.refresh_every_n() as f64
    }

    // ----- observability and lifecycle -----------------------------------------------------

    /// The shared state file this manager uses (resolved at construction), or `null` when it
    /// keeps everything in memory.
    #[napi(getter, ts_return_type = "string | null")]
    pub fn state_path(&self) -> Option<String> {
        self.core.state_path().map(|p| p.display().to_string())
    }

    /// Counters since construction.
    #[napi(ts_return_type = "QuotaStats")]
    pub fn stats(&self) -> Json<quota_core::stats::StatsSnapshot> {
        Json(self.core.stats())
    }

    /// Lets running calls settle, writes unsaved state, and drops the callbacks. Later calls
    /// reject with `QUOTA_CLOSED`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let closing = self.core.begin_close();
        let callbacks = self.callbacks.clone();
        void_promise(env, async move {
            closing.await;
            callbacks.release();
        })
    }
}

impl QuotaManager {
    /// `refreshMain` and `refreshMainWithMetadata`, which differ only in what they resolve with.
    fn poll_main<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
        shape: Shape,
    ) -> Result<Unknown<'env>> {
        let (identity, token) = main_arguments(env, first, access_token)?;
        let refresh = self.core.begin_refresh_main(identity.as_deref(), &token);
        self.promises.promise(env, refresh, shape)
    }

    /// `refreshFallback` and `refreshFallbackWithMetadata`.
    fn poll_fallback<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        account: Option<Unknown>,
        shape: Shape,
    ) -> Result<Unknown<'env>> {
        let (id, token, account) = fallback_arguments(env, account_id, access_token, account)?;
        let refresh = self
            .core
            .begin_refresh_fallback(&id, &token, account.as_ref());
        self.promises.promise(env, refresh, shape)
    }
}

fn main_arguments(
    env: &Env,
    first: Option<Unknown>,
    access_token: Option<Unknown>,
) -> Result<(Option<String>, String)> {
    let first = required_non_empty(env, first, "mainAccountIdOrAccessToken")?;
    Ok(match optional_string(env, access_token, "accessToken")? {
        Some(token) if !token.trim().is_empty() => (Some(first), token),
        Some(_) => return Err(type_error(env, "accessToken must be a non-empty string")),
        None => (None, first),
    })
}

fn fallback_arguments(
    env: &Env,
    account_id: Option<Unknown>,
    access_token: Option<Unknown>,
    account: Option<Unknown>,
) -> Result<(String, String, Option<FallbackAccount>)> {
    Ok((
        required_non_empty(env, account_id, "accountId")?,
        required_non_empty(env, access_token, "accessToken")?,
        optional_account(env, account, "account")?,
    ))
}
