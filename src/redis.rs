//! `readRedisState` (the `redis` option is read with the others, in `options.rs`).

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::js::{optional, quota_error, required, type_error, Json};
use quota_core::error::QuotaError;
use quota_core::redis_store::{RedisConfig, RedisStore};
use quota_core::store::SCHEMA_VERSION;

/// What Redis holds under a key prefix, in the state file's shape (`{ version, routes }`), for
/// `anthropic-quota-manager status --redis URL`, with the keys under `<prefix>route:` that hold
/// no route record (`skipped`: another type than a hash, or a damaged record). Rejects with
/// `QUOTA_STATE_ERROR` when Redis does not answer (within 1 s per call), with a `TypeError` on
/// bad arguments.
#[napi(
    ts_args_type = "url: string, keyPrefix?: string",
    ts_return_type = "Promise<{ version: number; routes: Record<string, unknown>; skipped: Array<{ key: string; reason: string }> }>"
)]
pub fn read_redis_state<'env>(
    env: &'env Env,
    url: Option<Unknown>,
    key_prefix: Option<Unknown>,
) -> Result<Unknown<'env>> {
    // Bad arguments throw here; index.js turns the throw into the rejection.
    let url = required::<String>(env, url, "url")?;
    let key_prefix = optional::<String>(env, key_prefix, "keyPrefix")?;
    let store = RedisStore::new(&RedisConfig::new(url, key_prefix))
        .map_err(|e| type_error(env, e.to_string()))?;
    let target = store.target().to_owned();
    let load = async move {
        let loaded = store.load_all_reporting().await;
        Ok(loaded.map_err(|error| QuotaError::SharedStore { target, reason: error.to_string() }))
    };
    let promise = env.spawn_future_with_callback(load, |env, loaded| {
        let loaded = loaded.map_err(|error| quota_error(env, &error))?;
        Ok(Json(serde_json::json!({
            "version": SCHEMA_VERSION,
            "routes": loaded.routes,
            "skipped": loaded.skipped,
        })))
    })?;
    Ok(promise.to_unknown())
}
