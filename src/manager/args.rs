//! The checks and conversions of the `QuotaManager` methods' arguments.

use napi::bindgen_prelude::*;

use crate::js::{number_in, object_arg, present, to_json, type_error};
use quota_core::host::FallbackAccount;
use quota_core::snapshot::QuotaEntry;

/// The largest count or generation taken: whole numbers up to it are exact in a double.
const MAX_WHOLE: f64 = 9.0e15;

/// The `account` argument of the fallback methods: only its `authLineageId` is read (the plugin
/// passes `{ authLineageId }`, or its whole account record).
pub(super) fn optional_account(
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
pub(super) fn optional_generation(env: &Env, value: Option<Unknown>) -> Result<Option<u64>> {
    let read = |value| number_in(env, value, "expectedIdentityGeneration", 0.0, MAX_WHOLE);
    Ok(present(value).map(read).transpose()?.map(|number| number as u64))
}

/// A cache entry the host hands in; its quota is read field by field.
pub(super) fn entry_arg(env: &Env, value: Option<Unknown>) -> Result<QuotaEntry> {
    const SHAPE: &str = "{ quota: QuotaSnapshot, checkedAt: number, refreshAfter?: number }";
    let json = object_arg(env, value, "entry")?;
    QuotaEntry::from_host_value(&json)
        .ok_or_else(|| type_error(env, format!("entry must be {SHAPE}")))
}

/// A request count: a non-negative whole number (anything else is a `TypeError`/`RangeError`).
pub(super) fn request_count(env: &Env, value: Option<Unknown>) -> Result<i64> {
    let value =
        value.ok_or_else(|| type_error(env, "requestCount must be a number, got undefined"))?;
    Ok(number_in(env, value, "requestCount", 0.0, MAX_WHOLE)? as i64)
}
