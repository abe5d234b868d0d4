//! `QuotaManagerOptions` (docs/api.md#options): each field's JavaScript type is checked here, its
//! value by the core's `ManagerConfig::new` (docs/api.md#bad-input).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use napi::bindgen_prelude::*;

use super::callbacks::JsCallbacks;
use super::clock::ManualClock;
use super::host_env::default_state_path;
use super::host_fetch::HostFetch;
use super::js::{
    config_error, global_function, is_nullish, non_blank, of_type, optional, present, to_json,
    type_error,
};
use super::js_now::JsNow;
use quota_core::clock::{Clock, SystemClock};
use quota_core::config::{BackoffOptions, ManagerOptions};
use quota_core::host::HostStorage;
use quota_core::manager::ManagerConfig;
use quota_core::redis_store::RedisConfig;

/// Everything the constructor needs, read from the options object.
pub struct ParsedOptions {
    pub config: ManagerConfig,
    pub storage: Option<HostStorage>,
    pub clock: Arc<dyn Clock>,
    /// The host's `now` function, sampled on the JavaScript thread into `clock`.
    pub js_now: Option<JsNow>,
    pub callbacks: JsCallbacks,
}

/// One options object, every field optional; a key no reader asked for is refused
/// (docs/api.md#bad-input).
pub struct Fields<'a> {
    env: &'a Env,
    object: Option<Object<'a>>,
    prefix: &'static str,
    read: RefCell<Vec<&'static str>>,
}

impl<'a> Fields<'a> {
    /// `value` must be an object, `undefined` or `null`.
    fn new(env: &'a Env, value: Option<Unknown<'a>>, prefix: &'static str) -> Result<Self> {
        let object = optional(env, value, prefix)?;
        Ok(Self { env, object, prefix, read: RefCell::default() })
    }

    /// Refuses the own enumerable keys (`Object.keys`) not read: N-API's key listing also walks
    /// the prototype chain, and an enumerable `Object.prototype` property is not an option given.
    fn reject_unknown_keys(&self) -> Result<()> {
        let Some(object) = &self.object else {
            return Ok(());
        };
        let own_keys: Function<Object, Vec<String>> = global_function(self.env, "Object", "keys")?;
        for key in own_keys.call(*object)? {
            if !self.read.borrow().contains(&key.as_str()) && object.get::<Unknown>(&key)?.is_some()
            {
                let message = format!("{} is not a known option", self.name(&key));
                return Err(type_error(self.env, message));
            }
        }
        Ok(())
    }

    fn name(&self, field: &str) -> String {
        format!("{}.{field}", self.prefix)
    }

    /// The raw value, `None` when missing or `undefined` (`null` is kept: it can mean "off").
    fn raw(&self, field: &'static str) -> Result<Option<Unknown<'a>>> {
        self.read.borrow_mut().push(field);
        self.object.as_ref().map_or(Ok(None), |object| object.get(field))
    }

    /// A field of one JavaScript type; `null` is a wrong type.
    pub fn get<T: FromNapiValue + TypeName>(&self, field: &'static str) -> Result<Option<T>> {
        let name = self.name(field);
        self.raw(field)?.map(|value| of_type(self.env, value, &name)).transpose()
    }

    /// A string that is not blank.
    fn string(&self, field: &'static str) -> Result<Option<String>> {
        let name = self.name(field);
        self.get(field)?.map(|text| non_blank(self.env, text, &name)).transpose()
    }

    /// A function; `null` means none.
    pub fn function<Args: JsValuesTupleIntoVec, Return: FromNapiValue>(
        &self,
        field: &'static str,
    ) -> Result<Option<Function<'a, Args, Return>>> {
        optional(self.env, self.raw(field)?, &self.name(field))
    }
}

pub fn parse_options(env: &Env, options: Option<Unknown>) -> Result<ParsedOptions> {
    let fields = Fields::new(env, options, "options")?;
    let storage = present(fields.raw("storage")?).map(|value| {
        let json = to_json(env, value, "options.storage")?;
        HostStorage::from_value(&json).map_err(|e| type_error(env, format!("options.{e}")))
    });
    let storage = storage.transpose()?;
    let options = ManagerOptions {
        usage_url: fields.string("usageUrl")?,
        user_agent: fields.string("userAgent")?,
        request_timeout_ms: fields.get("requestTimeoutMs")?,
        check_interval_minutes: fields.get("checkIntervalMinutes")?,
        refresh_every_n_requests: fields.get("refreshEveryNRequests")?,
        api_call_gap_ms: fields.get("apiCallGapMs")?,
        lock_timeout_ms: fields.get("lockTimeoutMs")?,
        max_concurrent_fetches: fields.get("maxConcurrentFetches")?,
        backoff: parse_backoff(env, fields.raw("backoff")?)?,
        redis: parse_redis(env, fields.raw("redis")?)?,
    };
    let config = ManagerConfig::new(options).map_err(|e| config_error(env, &e))?;
    let (clock, js_now) = parse_clock(env, &fields)?;
    let transport = HostFetch::from_options(env, &fields, js_now.as_ref())?;
    let state_path = parse_state_path(env, &fields)?;
    let callbacks = JsCallbacks::new(&fields)?;
    fields.reject_unknown_keys()?;
    Ok(ParsedOptions {
        config: ManagerConfig { state_path, transport, ..config },
        storage,
        clock,
        js_now,
        callbacks,
    })
}

fn parse_backoff(env: &Env, value: Option<Unknown>) -> Result<BackoffOptions> {
    let fields = Fields::new(env, value, "options.backoff")?;
    let options = BackoffOptions {
        initial_ms: fields.get("initialMs")?,
        max_ms: fields.get("maxMs")?,
        non_transient_ms: fields.get("nonTransientMs")?,
        jitter: fields.get("jitter")?,
        max_retry_after_ms: fields.get("maxRetryAfterMs")?,
    };
    fields.reject_unknown_keys()?;
    Ok(options)
}

/// `options.redis`: `{ url, keyPrefix? }`, or absent/`null` (the state file alone).
fn parse_redis(env: &Env, value: Option<Unknown>) -> Result<Option<RedisConfig>> {
    let Some(value) = present(value) else {
        return Ok(None);
    };
    let fields = Fields::new(env, Some(value), "options.redis")?;
    let missing = "options.redis.url must be a non-empty string (redis:// or rediss://)";
    let url = fields.string("url")?.ok_or_else(|| type_error(env, missing))?;
    let key_prefix = optional(env, fields.raw("keyPrefix")?, &fields.name("keyPrefix"))?;
    fields.reject_unknown_keys()?;
    Ok(Some(RedisConfig::new(url, key_prefix)))
}

/// `undefined`: the default, resolved now; `null`: memory only (docs/state-file.md#location).
fn parse_state_path(env: &Env, fields: &Fields) -> Result<Option<PathBuf>> {
    match fields.raw("statePath")? {
        None => Ok(default_state_path(env)),
        Some(value) if is_nullish(&value) => Ok(None),
        Some(_) => {
            let path = PathBuf::from(fields.string("statePath")?.unwrap_or_default());
            if path.is_absolute() {
                return Ok(Some(path));
            }
            let cwd = std::env::current_dir()
                .map_err(|e| type_error(env, format!("options.statePath: {e}")))?;
            Ok(Some(cwd.join(path)))
        }
    }
}

fn parse_clock(env: &Env, fields: &Fields) -> Result<(Arc<dyn Clock>, Option<JsNow>)> {
    let manual = present(fields.raw("clock")?);
    if let Some(now) = fields.function("now")? {
        if manual.is_some() {
            return Err(type_error(env, "options.clock and options.now cannot both be set"));
        }
        let js_now = JsNow::new(env, now)?;
        return Ok((Arc::new(js_now.clock.clone()), Some(js_now)));
    }
    let Some(value) = manual else {
        return Ok((Arc::new(SystemClock), None));
    };
    if !ManualClock::instance_of(env, &value)? {
        return Err(type_error(env, "options.clock must be a ManualClock"));
    }
    let clock = unsafe { value.cast::<ClassInstance<ManualClock>>() }?;
    Ok((Arc::new(clock.clock.clone()), None))
}
