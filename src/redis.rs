//! The Redis shared store's binding pieces: the `redis` option, and `readRedisState` for the
//! CLI's `status --redis URL`.

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::Value;

use super::js::{is_nullish, optional, quota_error, required, to_json, type_error, Json};
use quota_core::error::QuotaError;
use quota_core::redis_store::{LoadedRoutes, RedisConfig, RedisStore};
use quota_core::shared_store::StoreError;
use quota_core::store::SCHEMA_VERSION;

const REDIS_KEYS: &[&str] = &["url", "keyPrefix"];
/// Longest key prefix: a prefix is a namespace, not data.
const MAX_KEY_PREFIX_CHARS: usize = 256;

/// `options.redis`: `{ url: string; keyPrefix?: string }`, or absent/`null` (the state file
/// alone). The URL is checked here; Redis is first reached at the first refresh.
pub fn parse_redis_option(env: &Env, value: Option<Unknown>) -> Result<Option<RedisConfig>> {
    let Some(value) = value.filter(|v| !is_nullish(v)) else {
        return Ok(None);
    };
    let json = to_json(env, value, "options.redis")?;
    let Value::Object(fields) = json else {
        return Err(type_error(
            env,
            "options.redis must be an object { url: string; keyPrefix?: string }",
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !REDIS_KEYS.contains(&k.as_str())) {
        return Err(type_error(env, format!("options.redis.{unknown} is not a known option")));
    }
    let url = match fields.get("url") {
        Some(Value::String(url)) if !url.trim().is_empty() => url.clone(),
        _ => {
            return Err(type_error(
                env,
                "options.redis.url must be a non-empty string (redis:// or rediss://)",
            ))
        }
    };
    let key_prefix = match fields.get("keyPrefix") {
        None | Some(Value::Null) => None,
        Some(Value::String(prefix)) if prefix.chars().count() <= MAX_KEY_PREFIX_CHARS => {
            Some(prefix.clone())
        }
        Some(_) => {
            return Err(type_error(
                env,
                format!("options.redis.keyPrefix must be a string of at most {MAX_KEY_PREFIX_CHARS} characters"),
            ))
        }
    };
    let config = RedisConfig::new(url, key_prefix);
    validate(env, &config, "options.redis.url")?;
    Ok(Some(config))
}

fn validate(env: &Env, config: &RedisConfig, name: &str) -> Result<()> {
    let scheme_ok = config.url.starts_with("redis://") || config.url.starts_with("rediss://");
    match RedisStore::new(config) {
        Ok(_) if scheme_ok => Ok(()),
        Ok(store) => Err(type_error(
            env,
            format!("{name} must start with redis:// or rediss://, got {}", store.target()),
        )),
        Err(error) => Err(type_error(env, format!("{name}: {error}"))),
    }
}

/// What Redis holds under a key prefix, in the state file's shape (`{ version, routes }`), for
/// `anthropic-quota-manager status --redis URL`, with the keys under `<prefix>route:` that hold
/// no route record (`skipped`: another type than a hash, or a damaged record). Rejects with
/// `QUOTA_STATE_ERROR` when Redis does not answer (within 1 s per call).
#[napi(
    ts_args_type = "url: string, keyPrefix?: string",
    ts_return_type = "Promise<{ version: number; routes: Record<string, unknown>; skipped: Array<{ key: string; reason: string }> }>"
)]
pub fn read_redis_state<'env>(
    env: &'env Env,
    url: Option<Unknown>,
    key_prefix: Option<Unknown>,
) -> Result<Unknown<'env>> {
    let read = || -> Result<RedisStore> {
        let url = required::<String>(env, url, "url")?;
        let key_prefix = optional::<String>(env, key_prefix, "keyPrefix")?;
        let config = RedisConfig::new(url, key_prefix);
        validate(env, &config, "url")?;
        RedisStore::new(&config).map_err(|e| type_error(env, e.to_string()))
    };
    let store = match read() {
        Ok(store) => store,
        Err(error) => return super::js::rejected(env, error),
    };
    let target = store.target().to_owned();
    let promise = env.spawn_future_with_callback(
        async move { Ok(store.load_all_reporting().await) },
        move |env, loaded: std::result::Result<LoadedRoutes, StoreError>| {
            let loaded = loaded.map_err(|error| {
                quota_error(
                    env,
                    &QuotaError::SharedStore { target: target.clone(), reason: error.to_string() },
                )
            })?;
            let skipped: Vec<Value> = loaded
                .skipped
                .into_iter()
                .map(|k| serde_json::json!({ "key": k.key, "reason": k.reason }))
                .collect();
            Ok(Json(serde_json::json!({
                "version": SCHEMA_VERSION,
                "routes": loaded.routes,
                "skipped": skipped,
            })))
        },
    )?;
    Ok(promise.to_unknown())
}
