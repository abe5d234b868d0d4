//! The `QuotaManager` class and the argument readers its method modules share: checks and
//! conversions around the core manager. No quota logic lives here.

mod cache;
mod refreshes;
mod storage;

use std::cell::Cell;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::callbacks::JsCallbacks;
use crate::js::{
    number_in, object_arg, optional, present, required_non_empty, to_json, type_error, Json,
};
use crate::js_now::JsNow;
use crate::options::parse_options;
use crate::shared::SharedPromises;
use crate::views::EntryViews;
use quota_core::host::{FallbackAccount, HostStorage};
use quota_core::manager::QuotaManager as CoreManager;
use quota_core::snapshot::QuotaEntry;

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
    /// Whether the change counter and the `now` clock's time were shown (`hot_path::shared_view`).
    counter_shown: Cell<bool>,
    now_shown: Cell<bool>,
}

impl ObjectFinalize for QuotaManager {
    fn finalize(self, env: Env) -> Result<()> {
        self.views.release(&env);
        Ok(())
    }
}

#[napi]
impl QuotaManager {
    /// Builds a manager. Throws a `TypeError` or `RangeError` naming the option for bad options.
    #[napi(catch_unwind, constructor, ts_args_type = "options?: QuotaManagerOptions | null")]
    pub fn new(env: Env, options: Option<Unknown>) -> Result<Self> {
        let mut parsed = parse_options(&env, options)?;
        parsed.config.connection = crate::host_env::connection_options(&env)?;
        let callbacks = Arc::new(parsed.callbacks);
        let core = CoreManager::new(
            parsed.config,
            parsed.storage,
            parsed.clock,
            callbacks.clone(),
            callbacks.stats.clone(),
            within_runtime_if_available(tokio::runtime::Handle::current),
        )
        .map_err(|e| crate::js::config_error(&env, &e))?;
        crate::host_env::print_trust_warnings_once(core.trust_warnings());
        if core.state_path().is_some() {
            crate::exit::flush_at_exit(&core);
        }
        Ok(Self {
            core,
            callbacks,
            views: EntryViews::default(),
            promises: SharedPromises::default(),
            js_now: parsed.js_now,
            counter_shown: Cell::new(false),
            now_shown: Cell::new(false),
        })
    }

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
        let all_settled = self.promises.all_settled();
        env.spawn_future(async move {
            closing.await;
            // The running calls' promises settle first: `await close()` sees them settled.
            all_settled.await;
            callbacks.release();
            Ok(())
        })
    }
}

impl QuotaManager {
    /// Samples the host's `now` (when given) into the core clock, then hands out the core: every
    /// entry calls it first.
    pub(crate) fn tick(&self, env: &Env) -> Result<&CoreManager> {
        self.js_now.as_ref().map_or(Ok(()), |now| now.sample(env))?;
        Ok(&self.core)
    }

    /// `tick`, then the `accountId` argument of a method about one fallback.
    fn tick_fallback(&self, env: &Env, account_id: Option<Unknown>) -> Result<String> {
        self.tick(env)?;
        required_non_empty(env, account_id, "accountId")
    }

    /// An optional main identity argument, in the form the core keys routes by.
    fn main_identity(
        &self,
        env: &Env,
        value: Option<Unknown>,
        name: &str,
    ) -> Result<Option<String>> {
        Ok(self.core.identity_form(optional(env, value, name)?, None))
    }

    /// The `storage` argument, its identities in the form the core keys routes by.
    fn storage_arg(&self, env: &Env, value: Option<Unknown>) -> Result<Option<HostStorage>> {
        let Some(value) = present(value) else {
            return Ok(None);
        };
        let mut storage = HostStorage::from_value(&to_json(env, value, "storage")?)
            .map_err(|e| type_error(env, format!("storage: {e}")))?;
        self.core.storage_identities(&mut storage);
        Ok(Some(storage))
    }

    /// `token`, remembered as a token, unless it is empty while no host transport brings its own
    /// credentials: then a `TypeError` saying `unavailable`.
    fn usable_token(&self, env: &Env, token: String, unavailable: &str) -> Result<String> {
        if token.trim().is_empty() && !self.core.can_fetch_without_access_token() {
            return Err(type_error(env, unavailable));
        }
        self.core.remember_tokens([token.as_str()]);
        Ok(token)
    }
}

/// The largest count or generation taken: whole numbers up to it are exact in a double.
const MAX_WHOLE: f64 = 9.0e15;

/// The `account` argument of the fallback methods: only its `authLineageId` is read (the plugin
/// passes `{ authLineageId }`, or its whole account record).
fn optional_account(
    env: &Env,
    id: &str,
    value: Option<Unknown>,
) -> Result<Option<FallbackAccount>> {
    let read = |value| {
        let json = to_json(env, value, "account")?;
        FallbackAccount::lineage_of(&json, id, "account").map_err(|e| type_error(env, e))
    };
    present(value).map(read).transpose()
}

/// An optional identity generation: a non-negative whole number.
fn optional_generation(env: &Env, value: Option<Unknown>) -> Result<Option<u64>> {
    let read = |value| number_in(env, value, "expectedIdentityGeneration", 0.0, MAX_WHOLE);
    Ok(present(value).map(read).transpose()?.map(|number| number as u64))
}

/// A cache entry the host hands in; its quota is read field by field.
fn entry_arg(env: &Env, value: Option<Unknown>) -> Result<QuotaEntry> {
    const SHAPE: &str = "{ quota: QuotaSnapshot, checkedAt: number, refreshAfter?: number }";
    let json = object_arg(env, value, "entry")?;
    QuotaEntry::from_host_value(&json)
        .ok_or_else(|| type_error(env, format!("entry must be {SHAPE}")))
}

/// A request count: a non-negative whole number (anything else is a `TypeError`/`RangeError`).
fn request_count(env: &Env, value: Option<Unknown>) -> Result<i64> {
    let value =
        value.ok_or_else(|| type_error(env, "requestCount must be a number, got undefined"))?;
    Ok(number_in(env, value, "requestCount", 0.0, MAX_WHOLE)? as i64)
}
