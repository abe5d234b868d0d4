//! The `QuotaManager` class: argument checks and conversions around the core manager. No quota
//! logic lives here.

use std::collections::HashSet;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde::Serialize;
use serde_json::Value;

use super::callbacks::JsCallbacks;
use super::js::rejected;
use super::js::{
    describe, headers_arg, is_nullish, is_thenable, optional_bool, optional_string,
    required_non_empty, to_json, type_error, Json, OrUndefined,
};
use super::js_now::JsNow;
use super::options::parse_options;
use super::shared::{Shape, SharedPromises};
use super::views::EntryViews;
use quota_core::headers::frame_from_value;
use quota_core::host::{FallbackAccount, HostStorage};
use quota_core::manager::{MainTarget, QuotaManager as CoreManager};
use quota_core::snapshot::{ApiErrorRecord, QuotaEntry};
use quota_core::stats::Stats;

/// Keeps Claude accounts' usage quota: one usage call per account per freshness window on the
/// whole machine, a backoff shared by every process, and a locked state file.
#[napi(custom_finalize)]
pub struct QuotaManager {
    pub(crate) core: CoreManager,
    callbacks: Arc<JsCallbacks>,
    views: EntryViews,
    promises: SharedPromises,
    /// The host's `now` option, sampled at every entry (see `js_now.rs`).
    js_now: Option<JsNow>,
    /// Whether the change counter and the `now` clock's time were shown to JavaScript (V8 allows
    /// one buffer per memory).
    counter_shown: std::cell::Cell<bool>,
    now_shown: std::cell::Cell<bool>,
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
pub(crate) fn void_promise(
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

/// The account argument of the fallback methods: only its `authLineageId` is read (the plugin
/// passes `{ authLineageId }`, or its whole account record).
fn optional_account(
    env: &Env,
    id: &str,
    value: Option<Unknown>,
    name: &str,
) -> Result<Option<FallbackAccount>> {
    match value {
        Some(value) if !is_nullish(&value) => {
            let json = to_json(env, value, name)?;
            FallbackAccount::lineage_of(&json, id, name).map(Some).map_err(|e| type_error(env, e))
        }
        _ => Ok(None),
    }
}

fn accounts(env: &Env, value: Option<Unknown>, name: &str) -> Result<Vec<FallbackAccount>> {
    let value = value.ok_or_else(|| type_error(env, format!("{name} must be an array")))?;
    let json = to_json(env, value, name)?;
    FallbackAccount::list_from_value(&json, name).map_err(|e| type_error(env, e))
}

/// A promise-returning method's body: a bad argument rejects the promise, never throws.
fn or_rejected<'env>(env: &'env Env, body: Result<Unknown<'env>>) -> Result<Unknown<'env>> {
    match body {
        Ok(promise) => Ok(promise),
        Err(error) => rejected(env, error),
    }
}

/// An optional identity generation: a non-negative whole number.
fn optional_generation(env: &Env, value: Option<Unknown>) -> Result<Option<u64>> {
    match value {
        Some(value) if !is_nullish(&value) => {
            let number =
                super::js::number_in(env, value, "expectedIdentityGeneration", 0.0, 9.0e15)?;
            Ok(Some(number as u64))
        }
        _ => Ok(None),
    }
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
        other => Err(type_error(env, format!("{name} must be an object, got {}", describe(other)))),
    }
}

/// A cache entry the host hands in; its quota is read field by field.
fn entry_arg(env: &Env, value: Option<Unknown>, name: &str) -> Result<QuotaEntry> {
    let json = object_arg(env, value, name)?;
    QuotaEntry::from_host_value(&json).ok_or_else(|| {
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
    #[napi(catch_unwind, constructor, ts_args_type = "options?: QuotaManagerOptions | null")]
    pub fn new(env: Env, options: Option<Unknown>) -> Result<Self> {
        let mut parsed = parse_options(&env, options)?;
        parsed.config.connection = super::host_env::connection_options(&env)?;
        let js_now = parsed.js_now;
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
        super::host_env::print_trust_warnings_once(core.trust_warnings());
        if core.state_path().is_some() {
            super::exit::flush_at_exit(&env, &core)?;
        }
        Ok(Self {
            core,
            callbacks,
            views: EntryViews::default(),
            promises: SharedPromises::default(),
            js_now,
            counter_shown: std::cell::Cell::new(false),
            now_shown: std::cell::Cell::new(false),
        })
    }

    // ----- cache reads ---------------------------------------------------------------------

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
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let identity = optional_string(env, main_account_id, "mainAccountId")?;
        let identity = self.core.identity_form(identity, None);
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
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let id = required_non_empty(env, account_id, "accountId")?;
        let account = optional_account(env, &id, account, "account")?;
        let entry = self.core.get_fallback(&id, account.as_ref());
        self.views.get(env, Some(&id), entry)
    }

    /// Every cached fallback entry, by account id.
    #[napi(catch_unwind, ts_return_type = "Map<string, QuotaEntry>")]
    pub fn get_all_fallbacks<'env>(&self, env: &'env Env) -> Result<Unknown<'env>> {
        self.tick(env)?;
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

    // ----- main identity -------------------------------------------------------------------

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
        let identity = optional_string(&env, identity, "identity")?;
        let identity = self.core.identity_form(identity, None);
        let strict = optional_bool(&env, strict, "strict")?.unwrap_or(true);
        let force = optional_bool(&env, force, "force")?.unwrap_or(false);
        Ok(OrUndefined(
            self.core.set_main_identity(identity.as_deref(), strict, force).map(|g| g as f64),
        ))
    }

    /// Bumped whenever the bound main identity changes.
    #[napi(catch_unwind)]
    pub fn get_main_quota_identity_generation(&self, env: Env) -> Result<f64> {
        self.tick(&env)?;
        Ok(self.core.main_identity_generation() as f64)
    }

    /// Bumped whenever the main backoff error is set or cleared.
    #[napi(catch_unwind)]
    pub fn get_main_quota_error_generation(&self, env: Env) -> Result<f64> {
        self.tick(&env)?;
        Ok(self.core.main_error_generation() as f64)
    }

    /// When the main backoff error was last cleared.
    #[napi(catch_unwind, ts_return_type = "number | undefined")]
    pub fn get_main_quota_error_cleared_at(&self, env: Env) -> Result<OrUndefined<f64>> {
        self.tick(&env)?;
        Ok(OrUndefined(self.core.main_error_cleared_at().map(|t| t as f64)))
    }

    /// Unbinds the main identity and drops the main entry.
    #[napi(catch_unwind)]
    pub fn clear_main(&self, env: Env) -> Result<()> {
        self.tick(&env)?;
        self.core.clear_main();
        Ok(())
    }

    /// Clears the main backoff, here and (through the state file) in every process. Returns the
    /// new error generation, or `undefined` when no error was set.
    #[napi(catch_unwind, ts_return_type = "number | undefined")]
    pub fn clear_main_backoff(&self, env: Env) -> Result<OrUndefined<f64>> {
        self.tick(&env)?;
        Ok(OrUndefined(self.core.clear_main_backoff().map(|g| g as f64)))
    }

    /// `true` when polls go through `fetchQuotaSnapshot`: only then may a refresh be called
    /// with an empty token.
    #[napi(catch_unwind)]
    pub fn can_fetch_without_access_token(&self) -> bool {
        self.core.can_fetch_without_access_token()
    }

    // ----- cache writes --------------------------------------------------------------------

    /// Replaces the main cache entry (for example with one the host persisted).
    #[napi(catch_unwind, ts_args_type = "mainAccountId: string | undefined, entry: QuotaEntry")]
    pub fn set_main(
        &self,
        env: Env,
        main_account_id: Option<Unknown>,
        entry: Option<Unknown>,
    ) -> Result<()> {
        self.tick(&env)?;
        let identity = optional_string(&env, main_account_id, "mainAccountId")?;
        let identity = self.core.identity_form(identity, None);
        let entry = entry_arg(&env, entry, "entry")?;
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
        self.tick(&env)?;
        let id = required_non_empty(&env, account_id, "accountId")?;
        let entry = entry_arg(&env, entry, "entry")?;
        let account = optional_account(&env, &id, account, "account")?;
        self.core.set_fallback(&id, entry, account.as_ref());
        Ok(())
    }

    /// Forgets a fallback's cache and backoff, here and in the state file.
    #[napi(catch_unwind, ts_args_type = "accountId: string")]
    pub fn clear_fallback(&self, env: Env, account_id: Option<Unknown>) -> Result<()> {
        self.tick(&env)?;
        let id = required_non_empty(&env, account_id, "accountId")?;
        self.core.clear_fallback(&id);
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
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let identity = optional_string(env, main_account_id, "mainAccountId")?;
        let identity = self.core.identity_form(identity, None);
        let headers = headers_arg(env, headers, "headers")?;
        let entry = frame_from_value(&headers, self.core.now_ms())
            .and_then(|frame| self.core.push_main_frame(identity.as_deref(), frame));
        self.views.show(env, None, entry)
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
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let id = required_non_empty(env, account_id, "accountId")?;
        let headers = headers_arg(env, headers, "headers")?;
        let account = optional_account(env, &id, account, "account")?;
        let entry = frame_from_value(&headers, self.core.now_ms())
            .and_then(|frame| self.core.push_fallback_frame(&id, frame, account.as_ref()));
        self.views.show(env, Some(&id), entry)
    }

    // ----- polls ---------------------------------------------------------------------------

    /// Polls the usage endpoint for the main account (one request per identity and token,
    /// paced, backed off, shared across processes). `mainAccountId` `undefined` is an identity
    /// of its own, as in the plugin's manager (a bound identity is unbound first); with one
    /// argument, it is both the identity and the access token. With
    /// `expectedIdentityGeneration`, rejects (no request) when the identity moved on. Callers of
    /// one request get the same promise and the same frozen snapshot. Bad arguments reject.
    #[napi(
        catch_unwind,
        ts_args_type = "mainAccountId: string | undefined, accessToken?: string | undefined, expectedIdentityGeneration?: number | undefined",
        ts_return_type = "Promise<QuotaSnapshot>"
    )]
    pub fn refresh_main<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
        generation: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let body = self.poll_main(env, first, access_token, generation, Shape::Snapshot);
        or_rejected(env, body)
    }

    /// `refreshMain`, telling whether a request was sent (`fetched`) or the cache served.
    #[napi(
        catch_unwind,
        ts_args_type = "mainAccountId: string | undefined, accessToken?: string | undefined, expectedIdentityGeneration?: number | undefined",
        ts_return_type = "Promise<QuotaRefreshResult>"
    )]
    pub fn refresh_main_with_metadata<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
        generation: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let body = self.poll_main(env, first, access_token, generation, Shape::WithMetadata);
        or_rejected(env, body)
    }

    /// Polls the usage endpoint for one fallback account. `accessToken` may be `''` when
    /// `canFetchWithoutAccessToken()`. Bad arguments reject.
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string, accessToken: string, account?: FallbackAccountLineage | FallbackAccount | undefined",
        ts_return_type = "Promise<QuotaSnapshot>"
    )]
    pub fn refresh_fallback<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let body = self.poll_fallback(env, account_id, access_token, account, Shape::Snapshot);
        or_rejected(env, body)
    }

    /// `refreshFallback`, telling whether a request was sent.
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string, accessToken: string, account?: FallbackAccountLineage | FallbackAccount | undefined",
        ts_return_type = "Promise<QuotaRefreshResult>"
    )]
    pub fn refresh_fallback_with_metadata<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let body = self.poll_fallback(env, account_id, access_token, account, Shape::WithMetadata);
        or_rejected(env, body)
    }

    /// Refreshes every enabled OAuth account whose quota is due, a few at a time. The token is
    /// `resolveAccessToken(account)` when given (only its answer counts), else `access` while
    /// `expires` is in the future; accounts without one, and `type: 'api'` accounts, are
    /// skipped. Failures are recorded on each account's route, never thrown.
    #[napi(
        ts_generic_types = "A extends FallbackAccount",
        ts_args_type = "accounts: readonly A[], resolveAccessToken?: ((account: A) => string | undefined) | undefined",
        ts_return_type = "Promise<void>"
    )]
    pub fn refresh_all_fallbacks<'env>(
        &self,
        env: &'env Env,
        accounts_value: Option<Unknown>,
        resolver: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let body = self.tick(env).and_then(|()| {
            let accounts = self.resolved_accounts(env, accounts_value, resolver)?;
            let work = self.core.refresh_all_fallbacks(accounts);
            Ok(void_promise(env, work)?.to_unknown())
        });
        or_rejected(env, body)
    }

    /// Starts a main refresh nobody awaits. Never rejects; does nothing while one runs or while
    /// the route is backed off.
    #[napi(catch_unwind, ts_args_type = "accessToken: string")]
    pub fn refresh_main_in_background(
        &self,
        env: Env,
        access_token: Option<Unknown>,
    ) -> Result<()> {
        self.tick(&env)?;
        let token = self.token_arg(&env, access_token, "accessToken")?;
        if let Some(refresh) = self.core.background_main_refresh(&token) {
            napi::bindgen_prelude::spawn(refresh);
        }
        Ok(())
    }

    // ----- freshness -----------------------------------------------------------------------

    /// Is the main entry missing or due (for this model's scoped window too, when given)?
    #[napi(catch_unwind, ts_args_type = "modelId?: string | undefined")]
    pub fn is_main_stale(&self, env: Env, model_id: Option<Unknown>) -> Result<bool> {
        self.tick(&env)?;
        let model = optional_string(&env, model_id, "modelId")?;
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
        self.tick(&env)?;
        let id = required_non_empty(&env, account_id, "accountId")?;
        optional_string(&env, access_token, "accessToken")?;
        let model = optional_string(&env, model_id, "modelId")?;
        let account = optional_account(&env, &id, account, "account")?;
        if account.is_some() {
            self.core.get_fallback(&id, account.as_ref());
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
        let model = optional_string(&env, model_id, "modelId")?;
        Ok(self.core.needs_refresh(count, model.as_deref()))
    }

    // ----- backoff -------------------------------------------------------------------------

    /// Is the main route backed off?
    #[napi(catch_unwind)]
    pub fn is_backed_off(&self, env: Env) -> Result<bool> {
        self.tick(&env)?;
        Ok(self.core.is_backed_off())
    }

    /// Is this fallback's route backed off?
    #[napi(catch_unwind, ts_args_type = "accountId: string")]
    pub fn is_fallback_backed_off(&self, env: Env, account_id: Option<Unknown>) -> Result<bool> {
        self.tick(&env)?;
        let id = required_non_empty(&env, account_id, "accountId")?;
        Ok(self.core.is_fallback_backed_off(&id))
    }

    /// The main route's last backoff-arming failure.
    #[napi(catch_unwind, ts_return_type = "QuotaApiError | undefined")]
    pub fn get_last_api_error(&self, env: Env) -> Result<OrUndefined<Json<Value>>> {
        self.tick(&env)?;
        Ok(OrUndefined(self.core.last_api_error().map(|e| Json(with_seconds(e)))))
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
        Ok(OrUndefined(self.core.fallback_api_error(&id).map(Json)))
    }

    // ----- host storage --------------------------------------------------------------------

    /// Takes the host's settings (interval, thresholds, fail-closed) and seeds main from it.
    #[napi(catch_unwind, ts_args_type = "storage: AccountStorage | null")]
    pub fn update_storage(&self, env: Env, storage: Option<Unknown>) -> Result<()> {
        self.tick(&env)?;
        let storage = optional_storage(&env, storage, "storage")?.map(|mut storage| {
            self.core.storage_identities(&mut storage);
            storage
        });
        self.core.update_storage(storage.as_ref());
        Ok(())
    }

    /// Adopts the host's persisted main snapshot (when newer) and backoff (when active).
    #[napi(
        catch_unwind,
        ts_args_type = "storage: AccountStorage | null, mainAccountId?: string | undefined"
    )]
    pub fn seed_main_from_storage(
        &self,
        env: Env,
        storage: Option<Unknown>,
        main_account_id: Option<Unknown>,
    ) -> Result<()> {
        self.tick(&env)?;
        let storage = optional_storage(&env, storage, "storage")?.map(|mut storage| {
            self.core.storage_identities(&mut storage);
            storage
        });
        let identity = optional_string(&env, main_account_id, "mainAccountId")?;
        let identity = self.core.identity_form(identity, None);
        if let Some(storage) = storage {
            self.core.seed_main(&storage, identity.as_deref());
        }
        Ok(())
    }

    /// Adopts each account's persisted quota and backoff; forgets accounts no longer listed.
    #[napi(catch_unwind, ts_args_type = "accounts: readonly FallbackAccount[]")]
    pub fn seed_fallbacks_from_accounts(
        &self,
        env: Env,
        accounts_value: Option<Unknown>,
    ) -> Result<()> {
        self.tick(&env)?;
        let accounts = accounts(&env, accounts_value, "accounts")?;
        self.core.seed_fallbacks(accounts);
        Ok(())
    }

    // ----- routing -------------------------------------------------------------------------

    /// The 429 answer the plugin sends itself when it fails closed: main backed off, nothing
    /// cached, and `failClosedOnUnknownQuota` set. `null` otherwise.
    #[napi(
        catch_unwind,
        ts_return_type = "{ status: 429; headers: Record<string, string>; body: string } | null"
    )]
    pub fn fail_closed_response(&self, env: Env) -> Result<Json<Option<FailClosedAnswer>>> {
        self.tick(&env)?;
        Ok(Json(self.core.fail_closed_response().map(|answer| {
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
        })))
    }

    // ----- the facade's hot path (index.js; not part of the typed API) ----------------------

    /// The change counter and the calls answered from the kept `refreshMain` answer as an
    /// `Int32Array` of length 2 in shared memory, once per manager;
    /// `null` on a second call or where the runtime refuses external buffers.
    #[napi(catch_unwind, js_name = "_changeCounter", skip_typescript)]
    pub fn change_counter<'env>(&self, env: &'env Env) -> Option<Unknown<'env>> {
        if self.counter_shown.replace(true) {
            return None;
        }
        super::hot_path::shared_view(env, self.core.changes().shared())
    }

    /// Whether the last `refreshMain` call is attached to a request (see `index.js`).
    #[napi(catch_unwind, js_name = "_mainJoinable", skip_typescript)]
    pub fn main_joinable(&self) -> bool {
        self.core.main_joinable()
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
        super::hot_path::shared_view(env, clock.shared())
    }

    /// The first instant (manager's clock, ms) at which `isMainStale(modelId)` turns true while
    /// the change counter stays put; `-Infinity` when it already is whatever the time.
    #[napi(catch_unwind, js_name = "_mainStaleFrom", skip_typescript)]
    pub fn main_stale_from(&self, env: Env, model_id: Option<Unknown>) -> Result<f64> {
        self.tick(&env)?;
        let model = optional_string(&env, model_id, "modelId")?;
        Ok(match self.core.main_stale_from(model.as_deref()) {
            i64::MIN => f64::NEG_INFINITY,
            from => from as f64,
        })
    }

    /// `refreshEveryNRequests` in force (0: off).
    #[napi(catch_unwind, js_name = "_refreshEveryN", skip_typescript)]
    pub fn refresh_every_n(&self) -> f64 {
        self.core.refresh_every_n() as f64
    }

    // ----- observability and lifecycle -----------------------------------------------------

    /// The shared state file this manager uses (resolved at construction), or `null` when it
    /// keeps everything in memory.
    #[napi(catch_unwind, getter, ts_return_type = "string | null")]
    pub fn state_path(&self) -> Option<String> {
        self.core.state_path().map(|p| p.display().to_string())
    }

    /// Counters since construction.
    #[napi(catch_unwind, ts_return_type = "QuotaStats")]
    pub fn stats(&self) -> Json<quota_core::stats::StatsSnapshot> {
        Json(self.core.stats())
    }

    /// Lets running calls settle, writes unsaved state, and drops the callbacks. Later calls
    /// reject with `QUOTA_CLOSED`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let closing = self.core.begin_close();
        let callbacks = self.callbacks.clone();
        let unsettled = self.promises.unsettled();
        void_promise(env, async move {
            closing.await;
            // The running calls' promises settle first: `await close()` sees them settled.
            unsettled.all_settled().await;
            callbacks.release();
        })
    }
}

impl QuotaManager {
    /// Samples the host's `now` (when given) into the core clock; every entry calls it first.
    pub(crate) fn tick(&self, env: &Env) -> Result<()> {
        match &self.js_now {
            Some(now) => now.sample(env),
            None => Ok(()),
        }
    }

    /// An access token: a string, non-empty unless a host transport brings its own credentials.
    fn token_arg(&self, env: &Env, value: Option<Unknown>, name: &str) -> Result<String> {
        let token = optional_string(env, value, name)?.unwrap_or_default();
        if token.trim().is_empty() && !self.core.can_fetch_without_access_token() {
            return Err(type_error(env, format!("{name} must be a non-empty string")));
        }
        self.core.remember_tokens([token.as_str()]);
        Ok(token)
    }

    /// `refreshMain` and `refreshMainWithMetadata`, which differ only in what they resolve with.
    fn poll_main<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
        generation: Option<Unknown>,
        shape: Shape,
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let first = optional_string(env, first, "mainAccountId")?;
        let token = optional_string(env, access_token, "accessToken")?;
        let expected = optional_generation(env, generation)?;
        // One argument: it is both the identity and the token. `undefined` as the identity is
        // an identity of its own, as in the plugin's manager: the slot is unbound for it.
        let one_argument = first.is_some() && token.is_none();
        let (identity, token) = match (first, token) {
            (Some(first), None) => (None, first),
            (first, Some(token)) => (first, token),
            (None, None) => (None, String::new()),
        };
        if token.trim().is_empty() && !self.core.can_fetch_without_access_token() {
            return Err(type_error(
                env,
                "Main OAuth access token is unavailable: accessToken must be a non-empty string",
            ));
        }
        self.core.remember_tokens([token.as_str()]);
        let identity = self.core.identity_form(identity, Some(&token));
        let target = match &identity {
            Some(id) => MainTarget::Named(id),
            None if one_argument => MainTarget::Token,
            None => MainTarget::Unnamed,
        };
        let refresh = self.core.begin_refresh_main_for(target, &token, expected);
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
        self.tick(env)?;
        let id = required_non_empty(env, account_id, "accountId")?;
        let token = self.token_arg(env, access_token, "accessToken").map_err(|_| {
            type_error(
                env,
                "Fallback OAuth access token is unavailable: accessToken must be a non-empty string",
            )
        })?;
        let account = optional_account(env, &id, account, "account")?;
        let refresh = self.core.begin_refresh_fallback(&id, &token, account.as_ref());
        self.promises.promise(env, refresh, shape)
    }

    /// The accounts of `refreshAllFallbacks`, each with the token to use in `access` (or none).
    fn resolved_accounts(
        &self,
        env: &Env,
        value: Option<Unknown>,
        resolver: Option<Unknown>,
    ) -> Result<Vec<FallbackAccount>> {
        let value = value.ok_or_else(|| type_error(env, "accounts must be an array"))?;
        if !value.is_array()? {
            return Err(type_error(env, "accounts must be an array"));
        }
        let resolver = match resolver {
            Some(r) if !is_nullish(&r) => {
                if r.get_type()? != ValueType::Function {
                    return Err(type_error(env, "resolveAccessToken must be a function"));
                }
                Some(unsafe { r.cast::<Function<Unknown, Unknown>>() }?)
            }
            _ => None,
        };
        let array = unsafe { value.cast::<Array>() }?;
        let now = self.core.now_ms();
        // One JSON trip for the whole list (a call into JSON.stringify per account cost more than
        // the work itself with thousands of accounts); the items themselves only for a resolver.
        let all = to_json(env, value, "accounts")?;
        let items = all.as_array().map_or(&[][..], Vec::as_slice);
        let mut accounts: Vec<FallbackAccount> = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        for (index, json) in items.iter().enumerate() {
            if FallbackAccount::is_api_key_account(json) {
                continue;
            }
            let name = format!("accounts[{index}]");
            let mut account =
                FallbackAccount::from_value(json, &name).map_err(|e| type_error(env, e))?;
            if !seen.insert(account.id.clone()) {
                continue;
            }
            account.access = match &resolver {
                Some(resolve) => {
                    let item: Unknown = array
                        .get(index as u32)?
                        .ok_or_else(|| type_error(env, format!("{name} must be an object")))?;
                    let answer = resolve.call(item)?;
                    match answer.get_type()? {
                        ValueType::String => Some(unsafe { answer.cast::<String>() }?),
                        // Polling nothing, silently, would hide the host's mistake.
                        ValueType::Object | ValueType::Function if is_thenable(&answer)? => {
                            return Err(type_error(
                                env,
                                format!(
                                    "resolveAccessToken must return the token (a string) or \
                                     undefined, not a Promise ({name}): resolve tokens before \
                                     calling refreshAllFallbacks"
                                ),
                            ));
                        }
                        _ => None,
                    }
                }
                None => {
                    account.access.take().filter(|_| account.expires.is_some_and(|at| at > now))
                }
            }
            .filter(|token| !token.is_empty());
            accounts.push(account);
        }
        self.core.remember_tokens(accounts.iter().filter_map(|a| a.access.as_deref()));
        Ok(accounts)
    }
}

/// A main API error as the plugin reads it: `retryAfter` in seconds beside `retryAfterMs`.
fn with_seconds(error: ApiErrorRecord) -> serde_json::Value {
    let retry_after = error.retry_after_ms.map(|ms| (ms.max(0) as f64 / 1000.0).ceil());
    let mut value = serde_json::to_value(&error).unwrap_or(Value::Null);
    if let (Some(seconds), Some(object)) = (retry_after, value.as_object_mut()) {
        object.insert("retryAfter".into(), serde_json::json!(seconds));
    }
    value
}
