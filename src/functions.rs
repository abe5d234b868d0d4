//! The package's free functions: routing policy, fingerprints and parsers.

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde::Serialize;
use serde_json::{json, Value};

use super::clock::MAX_TIME_MS;
use super::js::{
    headers_arg, number_in, object_arg, optional, present, required, to_json, type_error, Json,
    OrUndefined,
};
use quota_core::backoff;
use quota_core::clock::{Clock, SystemClock};
use quota_core::fingerprint::fingerprint;
use quota_core::headers::{header_pairs, parse_quota_headers};
use quota_core::policy::{evaluate_quota as evaluate, QuotaPolicy};
use quota_core::route_key::RouteKey;
use quota_core::snapshot::QuotaSnapshot;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Evaluation {
    passes: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked_until: Option<i64>,
}

fn optional_time(env: &Env, value: Option<Unknown>, name: &str) -> Result<i64> {
    match present(value) {
        Some(value) => Ok(number_in(env, value, name, 0.0, MAX_TIME_MS)? as i64),
        None => Ok(SystemClock.now_ms()),
    }
}

/// Does this snapshot allow a request on this model? `blockedUntil` is when the binding window
/// resets.
#[napi(
    catch_unwind,
    ts_args_type = "quota: QuotaSnapshot | null | undefined, policy?: QuotaPolicy, modelId?: string",
    ts_return_type = "QuotaEvaluation"
)]
pub fn evaluate_quota(
    env: Env,
    quota: Option<Unknown>,
    policy: Option<Unknown>,
    model_id: Option<Unknown>,
) -> Result<Json<impl Serialize>> {
    let quota = present(quota).map(|value| {
        let json = to_json(&env, value, "quota")?;
        QuotaSnapshot::from_value_lenient(&json)
            .ok_or_else(|| type_error(&env, "quota must be an object"))
    });
    let quota = quota.transpose()?;
    let policy = present(policy).map(|value| object_arg(&env, Some(value), "policy"));
    // No policy reads as `null`: every field its default.
    let policy = QuotaPolicy::from_value_lenient(&policy.transpose()?.unwrap_or_default());
    let model = optional::<String>(&env, model_id, "modelId")?;
    let result = evaluate(quota.as_ref(), &policy, model.as_deref());
    Ok(Json(Evaluation {
        passes: result.passes,
        reason: result.reason.map(quota_core::policy::BlockReason::as_str),
        blocked_until: result.blocked_until,
    }))
}

/// The first 16 hex characters of the SHA-256 of a token: how the package names a token
/// without storing it.
#[napi(catch_unwind, ts_args_type = "token: string")]
pub fn token_fingerprint(env: Env, token: Option<Unknown>) -> Result<String> {
    Ok(fingerprint(&required::<String>(&env, token, "token")?))
}

/// Reads quota from `anthropic-ratelimit-unified-*` response headers; `null` when they carry
/// no 5-hour or 7-day utilisation.
#[napi(
    catch_unwind,
    js_name = "parseQuotaHeaders",
    ts_args_type = "headers: HeadersInput, nowMs?: number",
    ts_return_type = "QuotaSnapshot | null"
)]
pub fn parse_quota_headers_js(
    env: Env,
    headers: Option<Unknown>,
    now_ms: Option<Unknown>,
) -> Result<Json<Option<QuotaSnapshot>>> {
    let headers = headers_arg(&env, headers, "headers")?;
    let now = optional_time(&env, now_ms, "nowMs")?;
    let pairs = header_pairs(&headers);
    Ok(Json(parse_quota_headers(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), now)))
}

/// A `Retry-After` value (delta seconds or an HTTP date) in milliseconds from now;
/// `undefined` for `0`, negative, past or unparsable values.
#[napi(
    catch_unwind,
    ts_args_type = "value: string, nowMs?: number",
    ts_return_type = "number | undefined"
)]
pub fn parse_retry_after(
    env: Env,
    value: Option<Unknown>,
    now_ms: Option<Unknown>,
) -> Result<OrUndefined<f64>> {
    let value = required::<String>(&env, value, "value")?;
    let now = optional_time(&env, now_ms, "nowMs")?;
    Ok(backoff::parse_retry_after(&value, now).map(|ms| ms as f64).into())
}

/// The state file a manager uses when `statePath` is not given: `anthropic-quota-state.json`
/// beside `$OPENCODE_ANTHROPIC_AUTH_FILE` when that is set, else in `$OPENCODE_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/opencode`, else `~/.config/opencode`; `null` when none of those variables
/// is set. Variables are read from the host's `process.env`.
#[napi(catch_unwind, ts_return_type = "string | null")]
pub fn default_state_path(env: Env) -> Option<String> {
    super::host_env::default_state_path(&env).map(|p| p.display().to_string())
}

/// Reads a state-file route key (`main:<identity>` or `fallback:<id>`); `null` for a key of
/// another kind.
#[napi(
    catch_unwind,
    ts_args_type = "key: string",
    ts_return_type = "{ kind: 'main' | 'fallback'; id: string } | null"
)]
pub fn parse_route_key(env: Env, key: Option<Unknown>) -> Result<Json<Option<Value>>> {
    let key = required::<String>(&env, key, "key")?;
    Ok(Json(RouteKey::parse(&key).map(|key| json!({ "kind": key.kind(), "id": key.id() }))))
}
