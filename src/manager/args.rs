//! The checks and conversions of the `QuotaManager` methods' arguments.

use napi::bindgen_prelude::*;
use serde_json::Value;

use crate::js::{describe, is_nullish, to_json, type_error};
use quota_core::host::{FallbackAccount, HostStorage};
use quota_core::snapshot::QuotaEntry;

/// The account argument of the fallback methods: only its `authLineageId` is read (the plugin
/// passes `{ authLineageId }`, or its whole account record).
pub(super) fn optional_account(
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

pub(super) fn accounts(
    env: &Env,
    value: Option<Unknown>,
    name: &str,
) -> Result<Vec<FallbackAccount>> {
    let value = value.ok_or_else(|| type_error(env, format!("{name} must be an array")))?;
    let json = to_json(env, value, name)?;
    FallbackAccount::list_from_value(&json, name).map_err(|e| type_error(env, e))
}

/// An optional identity generation: a non-negative whole number.
pub(super) fn optional_generation(env: &Env, value: Option<Unknown>) -> Result<Option<u64>> {
    match value {
        Some(value) if !is_nullish(&value) => {
            let number =
                crate::js::number_in(env, value, "expectedIdentityGeneration", 0.0, 9.0e15)?;
            Ok(Some(number as u64))
        }
        _ => Ok(None),
    }
}

pub(super) fn optional_storage(
    env: &Env,
    value: Option<Unknown>,
    name: &str,
) -> Result<Option<HostStorage>> {
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
pub(super) fn object_arg(env: &Env, value: Option<Unknown>, name: &str) -> Result<Value> {
    let value =
        value.ok_or_else(|| type_error(env, format!("{name} must be an object, got undefined")))?;
    match value.get_type()? {
        ValueType::Object => to_json(env, value, name),
        other => Err(type_error(env, format!("{name} must be an object, got {}", describe(other)))),
    }
}

/// A cache entry the host hands in; its quota is read field by field.
pub(super) fn entry_arg(env: &Env, value: Option<Unknown>, name: &str) -> Result<QuotaEntry> {
    let json = object_arg(env, value, name)?;
    QuotaEntry::from_host_value(&json).ok_or_else(|| {
        type_error(
            env,
            format!("{name} must be {{ quota: QuotaSnapshot, checkedAt: number, refreshAfter?: number }}"),
        )
    })
}

/// A request count: a non-negative whole number (anything else is a `TypeError`/`RangeError`).
pub(super) fn request_count(env: &Env, value: Option<Unknown>) -> Result<i64> {
    let value =
        value.ok_or_else(|| type_error(env, "requestCount must be a number, got undefined"))?;
    let number = crate::js::number_in(env, value, "requestCount", 0.0, 9.0e15)?;
    Ok(number.trunc() as i64)
}
