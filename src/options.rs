//! `QuotaManagerOptions`: read field by field so a bad option throws a `TypeError` or
//! `RangeError` that names it, at construction.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;

use super::callbacks::JsCallbacks;
use super::clock::ManualClock;
use super::host_env::host_var;
use super::host_fetch::HostFetch;
use super::js::{describe, is_nullish, number_in, to_json, type_error};
use super::js_now::JsNow;
use super::redis::parse_redis_option;
use quota_core::backoff::BackoffConfig;
use quota_core::client::{UsageClientConfig, DEFAULT_USAGE_URL, DEFAULT_USER_AGENT};
use quota_core::clock::{Clock, SystemClock};
use quota_core::host::HostStorage;
use quota_core::manager::{
    ManagerConfig, DEFAULT_API_CALL_GAP_MS, DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_MAX_CONCURRENT_FETCHES,
};
use quota_core::store::default_state_path;
use quota_core::transport::Transport;

const HOUR_MS: f64 = 3_600_000.0;
const DEFAULT_REQUEST_TIMEOUT_MS: f64 = 10_000.0;

/// Every key `QuotaManagerOptions` has; any other key is a `TypeError` (a misspelt `fetchImpl`
/// must not silently poll the real endpoint).
const OPTION_KEYS: &[&str] = &[
    "storage",
    "statePath",
    "usageUrl",
    "userAgent",
    "checkIntervalMinutes",
    "refreshEveryNRequests",
    "apiCallGapMs",
    "requestTimeoutMs",
    "lockTimeoutMs",
    "maxConcurrentFetches",
    "backoff",
    "clock",
    "now",
    "fetchImpl",
    "fetchQuotaSnapshot",
    "awaitCallbacks",
    "onMainQuotaFetched",
    "onApiError",
    "onFallbackQuotaFetched",
    "onFallbackApiError",
    "redis",
];

const BACKOFF_KEYS: &[&str] =
    &["initialMs", "maxMs", "nonTransientMs", "jitter", "maxRetryAfterMs"];

/// Everything the constructor needs, read from the options object.
pub struct ParsedOptions {
    pub config: ManagerConfig,
    pub storage: Option<HostStorage>,
    pub clock: Arc<dyn Clock>,
    /// The host's `now` function, sampled on the JavaScript thread into `clock`.
    pub js_now: Option<JsNow>,
    pub callbacks: JsCallbacks,
}

/// Reads one options object; every field optional.
struct Fields<'a> {
    env: &'a Env,
    object: Option<Object<'a>>,
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn new(env: &'a Env, value: Option<Unknown<'a>>, name: &'static str) -> Result<Self> {
        let object = match value {
            Some(value) if !is_nullish(&value) => match value.get_type()? {
                ValueType::Object => Some(value.coerce_to_object()?),
                other => {
                    return Err(type_error(
                        env,
                        format!("{name} must be an object, got {}", describe(other)),
                    ))
                }
            },
            _ => None,
        };
        Ok(Self { env, object, prefix: name })
    }

    /// Refuses keys that are not options (a key whose value is `undefined` counts as absent).
    /// Only the object's own enumerable keys (`Object.keys`): N-API's key listing also walks the
    /// prototype chain, and an enumerable `Object.prototype` property is not an option given.
    fn reject_unknown_keys(&self, known: &[&str]) -> Result<()> {
        let Some(object) = &self.object else {
            return Ok(());
        };
        let object_class: Unknown = self.env.get_global()?.get_named_property("Object")?;
        let own_keys: Function<Object, Vec<String>> =
            object_class.coerce_to_object()?.get_named_property("keys")?;
        let keys = own_keys.call(*object)?;
        for key in keys {
            if known.contains(&key.as_str()) || self.raw(&key)?.is_none() {
                continue;
            }
            return Err(type_error(self.env, format!("{} is not a known option", self.name(&key))));
        }
        Ok(())
    }

    fn boolean(&self, field: &str) -> Result<Option<bool>> {
        match self.raw(field)? {
            None => Ok(None),
            Some(value) if value.get_type()? == ValueType::Boolean => {
                Ok(Some(unsafe { value.cast::<bool>() }?))
            }
            Some(value) => Err(type_error(
                self.env,
                format!(
                    "{} must be a boolean, got {}",
                    self.name(field),
                    describe(value.get_type()?)
                ),
            )),
        }
    }

    fn name(&self, field: &str) -> String {
        format!("{}.{field}", self.prefix)
    }

    /// The raw value, `None` when missing or `undefined` (`null` is kept: it can mean "off").
    fn raw(&self, field: &str) -> Result<Option<Unknown<'a>>> {
        let Some(object) = &self.object else {
            return Ok(None);
        };
        let value: Option<Unknown> = object.get(field)?;
        Ok(value.filter(|v| !matches!(v.get_type(), Ok(ValueType::Undefined))))
    }

    fn number(&self, field: &str, min: f64, max: f64) -> Result<Option<f64>> {
        match self.raw(field)? {
            None => Ok(None),
            Some(value) => number_in(self.env, value, &self.name(field), min, max).map(Some),
        }
    }

    fn integer(&self, field: &str, min: f64, max: f64) -> Result<Option<i64>> {
        let Some(number) = self.number(field, min, max)? else {
            return Ok(None);
        };
        if number.fract() != 0.0 {
            return Err(super::js::range_error(
                self.env,
                format!("{} must be a whole number, got {number}", self.name(field)),
            ));
        }
        Ok(Some(number as i64))
    }

    fn string(&self, field: &str) -> Result<Option<String>> {
        match self.raw(field)? {
            None => Ok(None),
            Some(value) => match value.get_type()? {
                ValueType::String => {
                    let text = unsafe { value.cast::<String>() }?;
                    if text.trim().is_empty() {
                        return Err(type_error(
                            self.env,
                            format!("{} must be a non-empty string", self.name(field)),
                        ));
                    }
                    Ok(Some(text))
                }
                other => Err(type_error(
                    self.env,
                    format!("{} must be a string, got {}", self.name(field), describe(other)),
                )),
            },
        }
    }

    fn function(&self, field: &str) -> Result<Option<Unknown<'a>>> {
        match self.raw(field)? {
            Some(value) if !is_nullish(&value) => match value.get_type()? {
                ValueType::Function => Ok(Some(value)),
                other => Err(type_error(
                    self.env,
                    format!("{} must be a function, got {}", self.name(field), describe(other)),
                )),
            },
            _ => Ok(None),
        }
    }
}

pub fn parse_options(env: &Env, options: Option<Unknown>) -> Result<ParsedOptions> {
    let fields = Fields::new(env, options, "options")?;
    fields.reject_unknown_keys(OPTION_KEYS)?;
    let storage = match fields.raw("storage")? {
        Some(value) if !is_nullish(&value) => {
            let json = to_json(env, value, "options.storage")?;
            Some(
                HostStorage::from_value(&json)
                    .map_err(|e| type_error(env, format!("options.{e}")))?,
            )
        }
        _ => None,
    };
    let usage = UsageClientConfig {
        url: fields.string("usageUrl")?.unwrap_or_else(|| DEFAULT_USAGE_URL.to_owned()),
        user_agent: fields.string("userAgent")?.unwrap_or_else(|| DEFAULT_USER_AGENT.to_owned()),
        timeout: Duration::from_millis(
            fields
                .number("requestTimeoutMs", 1.0, 10.0 * 60_000.0)?
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS) as u64,
        ),
    };
    let config = ManagerConfig {
        usage,
        check_interval_minutes: fields.number("checkIntervalMinutes", 1.0, 7.0 * 24.0 * 60.0)?,
        refresh_every_n_requests: fields.integer("refreshEveryNRequests", 0.0, 1e9)?,
        api_call_gap_ms: fields
            .integer("apiCallGapMs", 0.0, HOUR_MS)?
            .unwrap_or(DEFAULT_API_CALL_GAP_MS),
        lock_timeout_ms: fields
            .integer("lockTimeoutMs", 0.0, HOUR_MS)?
            .unwrap_or(DEFAULT_LOCK_TIMEOUT_MS),
        max_concurrent_fetches: fields
            .integer("maxConcurrentFetches", 1.0, 64.0)?
            .map_or(DEFAULT_MAX_CONCURRENT_FETCHES, |n| n as usize),
        backoff: parse_backoff(env, fields.raw("backoff")?)?,
        state_path: parse_state_path(env, &fields)?,
        transport: None,
        connection: quota_core::client::ConnectionOptions::default(),
        redis: parse_redis_option(env, fields.raw("redis")?)?,
    };
    let (clock, js_now) = parse_clock(env, &fields)?;
    let transport = HostFetch::from_options(
        env,
        fields.function("fetchImpl")?,
        fields.function("fetchQuotaSnapshot")?,
        fields.function("now")?,
        js_now.as_ref().map(JsNow::clock),
    )?;
    let config = ManagerConfig { transport: transport.map(|t| Transport(Arc::new(t))), ..config };
    Ok(ParsedOptions {
        config,
        storage,
        clock,
        js_now,
        callbacks: JsCallbacks::new(
            env,
            fields.function("onMainQuotaFetched")?,
            fields.function("onApiError")?,
            fields.function("onFallbackQuotaFetched")?,
            fields.function("onFallbackApiError")?,
            fields.boolean("awaitCallbacks")?.unwrap_or(false),
        )?,
    })
}

fn parse_backoff(env: &Env, value: Option<Unknown>) -> Result<BackoffConfig> {
    let fields = Fields::new(env, value, "options.backoff")?;
    fields.reject_unknown_keys(BACKOFF_KEYS)?;
    let defaults = BackoffConfig::default();
    let initial_ms =
        fields.integer("initialMs", 1.0, 24.0 * HOUR_MS)?.unwrap_or(defaults.initial_ms);
    let max_ms = fields
        .integer("maxMs", 1.0, 24.0 * HOUR_MS)?
        .unwrap_or_else(|| defaults.max_ms.max(initial_ms));
    if max_ms < initial_ms {
        return Err(super::js::range_error(
            env,
            format!("options.backoff.maxMs ({max_ms}) must not be below options.backoff.initialMs ({initial_ms})"),
        ));
    }
    Ok(BackoffConfig {
        initial_ms,
        max_ms,
        non_transient_ms: fields
            .integer("nonTransientMs", 0.0, 24.0 * HOUR_MS)?
            .unwrap_or(defaults.non_transient_ms),
        jitter: fields.number("jitter", 0.0, 1.0)?.unwrap_or(defaults.jitter),
        max_retry_after_ms: fields
            .integer("maxRetryAfterMs", 0.0, 7.0 * 24.0 * HOUR_MS)?
            .unwrap_or(defaults.max_retry_after_ms),
    })
}

/// `undefined`: the `OpenCode` config dir, resolved now so later environment changes cannot move
/// it. `null`: memory only.
fn parse_state_path(env: &Env, fields: &Fields) -> Result<Option<PathBuf>> {
    match fields.raw("statePath")? {
        None => Ok(default_state_path(|name| host_var(env, name).ok().flatten())),
        Some(value) if is_nullish(&value) => Ok(None),
        Some(_) => {
            let path = PathBuf::from(fields.string("statePath")?.unwrap_or_default());
            Ok(Some(if path.is_absolute() {
                path
            } else {
                std::env::current_dir()
                    .map_err(|e| type_error(env, format!("options.statePath: {e}")))?
                    .join(path)
            }))
        }
    }
}

fn parse_clock(env: &Env, fields: &Fields) -> Result<(Arc<dyn Clock>, Option<JsNow>)> {
    let manual = fields.raw("clock")?.filter(|v| !is_nullish(v));
    if let Some(now) = fields.function("now")? {
        if manual.is_some() {
            return Err(type_error(env, "options.clock and options.now cannot both be set"));
        }
        let js_now = JsNow::new(env, now)?;
        return Ok((Arc::new(js_now.clock()), Some(js_now)));
    }
    let Some(value) = manual else {
        return Ok((Arc::new(SystemClock), None));
    };
    if !ManualClock::instance_of(env, &value)? {
        return Err(type_error(env, "options.clock must be a ManualClock"));
    }
    let clock = unsafe { value.cast::<ClassInstance<ManualClock>>() }?;
    Ok((Arc::new(clock.core_clock()), None))
}
