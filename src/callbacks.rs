//! The host's callbacks (docs/compat.md#callbacks, docs/state-file.md#host-callbacks), called
//! from the core's threads.

use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, UnknownReturnValue};

use super::js::Json;
use super::options::Fields;
use quota_core::manager::{FetchedEvent, HostEvents};
use quota_core::snapshot::{ApiErrorRecord, QuotaSnapshot};
use quota_core::stats::{bump, Stats};

/// A host function the core's threads call with its arguments: weak (it never keeps Node alive),
/// not callee-handled (its throw is the call's error).
pub type HostFunction<Args, Return> = ThreadsafeFunction<Args, Return, Args, Status, false, true>;

pub fn host_function<Args: 'static + JsValuesTupleIntoVec, Return: FromNapiValue>(
    function: &Function<Args, Return>,
) -> Result<HostFunction<Args, Return>> {
    function.build_threadsafe_function().weak::<true>().callee_handled::<false>().build()
}

type Callback<Args> = HostFunction<Args, CallbackReturn>;

/// How long a callback's promise may keep a refresh's callers waiting (`awaitCallbacks`).
const CALLBACK_PROMISE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a callback's promise is watched for a rejection when nobody waits for it.
const CALLBACK_PROMISE_WATCH: std::time::Duration = std::time::Duration::from_mins(1);

/// What a callback returned: a promise (an `async` callback) is awaited so its rejection is
/// caught and counted instead of becoming an unhandled rejection in the host.
enum CallbackReturn {
    Value,
    Promise(Promise<UnknownReturnValue>),
}

impl FromNapiValue for CallbackReturn {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        let mut is_promise = false;
        check_status!(unsafe { sys::napi_is_promise(env, value, &raw mut is_promise) })?;
        if is_promise {
            Ok(Self::Promise(unsafe { Promise::from_napi_value(env, value) }?))
        } else {
            Ok(Self::Value)
        }
    }
}

type MainFetchedArgs = FnArgs<(Json<QuotaSnapshot>, f64, String, f64, f64, Option<f64>)>;
type ApiErrorArgs = FnArgs<(Json<ApiErrorRecord>, f64)>;
type FallbackFetchedArgs = FnArgs<(String, Json<QuotaSnapshot>, f64, f64)>;
type FallbackErrorArgs = FnArgs<(String, Json<ApiErrorRecord>)>;

#[derive(Default)]
struct Slots {
    main_fetched: Option<Arc<Callback<MainFetchedArgs>>>,
    api_error: Option<Arc<Callback<ApiErrorArgs>>>,
    fallback_fetched: Option<Arc<Callback<FallbackFetchedArgs>>>,
    fallback_error: Option<Arc<Callback<FallbackErrorArgs>>>,
}

/// The four optional host callbacks, until `release` drops them.
pub struct JsCallbacks {
    slots: Mutex<Slots>,
    /// Where callback failures are counted: the manager's stats.
    pub stats: Arc<Stats>,
    await_promises: bool,
}

impl JsCallbacks {
    /// The callbacks in `options`, by their option names, then `awaitCallbacks`.
    pub fn new(options: &Fields) -> Result<Self> {
        let slots = Slots {
            main_fetched: build(options.function("onMainQuotaFetched")?)?,
            api_error: build(options.function("onApiError")?)?,
            fallback_fetched: build(options.function("onFallbackQuotaFetched")?)?,
            fallback_error: build(options.function("onFallbackApiError")?)?,
        };
        let await_promises = options.get("awaitCallbacks")?.unwrap_or(false);
        Ok(Self { slots: Mutex::new(slots), stats: Arc::new(Stats::default()), await_promises })
    }

    /// Drops every callback, so nothing the host passed in outlives `close()`.
    pub fn release(&self) {
        *self.slots() = Slots::default();
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls the callback in `slot`, if any (it has run when this returns).
    fn invoke<Args: 'static + Send + JsValuesTupleIntoVec>(
        &self,
        slot: impl FnOnce(&Slots) -> Option<Arc<Callback<Args>>>,
        args: Args,
        name: &'static str,
    ) -> BoxFuture<'static, ()> {
        let callback = slot(&self.slots());
        let stats = self.stats.clone();
        let await_promise = self.await_promises;
        async move {
            let Some(callback) = callback else {
                return;
            };
            let promise = match callback.call_async_catch(args).await {
                Ok(CallbackReturn::Promise(promise)) => promise,
                Ok(CallbackReturn::Value) => return,
                Err(error) => return report(&error, name, &stats),
            };
            let wait = if await_promise { CALLBACK_PROMISE_WAIT } else { CALLBACK_PROMISE_WATCH };
            let watch = async move {
                // Still pending after `wait`, it is let go (it may never settle): a later
                // rejection is still caught (the promise keeps its handlers), just not counted.
                if let Ok(Err(error)) = tokio::time::timeout(wait, promise).await {
                    report(&error, name, &stats);
                }
            };
            if await_promise {
                watch.await;
            } else {
                napi::bindgen_prelude::spawn(watch);
            }
        }
        .boxed()
    }
}

fn build<Args: 'static + JsValuesTupleIntoVec>(
    function: Option<Function<Args, CallbackReturn>>,
) -> Result<Option<Arc<Callback<Args>>>> {
    function.map(|function| Ok(Arc::new(host_function(&function)?))).transpose()
}

/// Counts and logs a callback failure; a promise collected unsettled (Bun) and Node shutting down
/// are none (docs/compat.md#callbacks).
fn report(error: &Error, name: &str, stats: &Stats) {
    if error.status == Status::Closing || error.reason.contains("canceled") {
        return;
    }
    bump(&stats.callback_errors);
    log::warn!("{name} failed: {}", error.reason);
}

impl HostEvents for JsCallbacks {
    fn main_quota_fetched(&self, event: FetchedEvent) -> BoxFuture<'static, ()> {
        let args = (
            Json(event.quota),
            event.checked_at as f64,
            event.token_fingerprint,
            event.fetch_started_at as f64,
            event.error_generation as f64,
            event.error_cleared_at.map(|t| t as f64),
        );
        self.invoke(|s| s.main_fetched.clone(), args.into(), "onMainQuotaFetched")
    }

    fn api_error(&self, error: ApiErrorRecord, error_generation: u64) -> BoxFuture<'static, ()> {
        let args = (Json(error), error_generation as f64);
        self.invoke(|s| s.api_error.clone(), args.into(), "onApiError")
    }

    fn fallback_quota_fetched(&self, id: String, event: FetchedEvent) -> BoxFuture<'static, ()> {
        let args = (id, Json(event.quota), event.checked_at as f64, event.fetch_started_at as f64);
        self.invoke(|s| s.fallback_fetched.clone(), args.into(), "onFallbackQuotaFetched")
    }

    fn fallback_api_error(&self, id: String, error: ApiErrorRecord) -> BoxFuture<'static, ()> {
        self.invoke(|s| s.fallback_error.clone(), (id, Json(error)).into(), "onFallbackApiError")
    }
}
