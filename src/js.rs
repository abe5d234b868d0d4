//! Conversions between JavaScript values and the core's types, and the JavaScript errors the
//! package throws. This is the one place where core errors become `Error` objects with a `code`.

use napi::bindgen_prelude::*;
use napi::{JsRangeError, JsTypeError};
use serde::Serialize;
use serde_json::Value;

use quota_core::error::{ConfigError, QuotaError};

/// A serde value handed to JavaScript as plain data (objects, arrays, numbers, strings).
pub struct Json<T>(pub T);

impl<T: Serialize> ToNapiValue for Json<T> {
    /// Serialised in Rust and rebuilt by V8's own `JSON.parse`: several times faster than
    /// creating the objects property by property through N-API, on the hot path of every read.
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> Result<sys::napi_value> {
        let text =
            serde_json::to_string(&value.0).map_err(|e| Error::from_reason(e.to_string()))?;
        let env = Env::from_raw(env);
        let parse: Function<String, Unknown> = global_function(&env, "JSON", "parse")?;
        Ok(parse.call(text)?.raw())
    }
}

/// A static method of a global (`JSON.parse`, `Object.keys`).
pub fn global_function<'env, Args: JsValuesTupleIntoVec, Return: FromNapiValue>(
    env: &'env Env,
    global: &str,
    name: &str,
) -> Result<Function<'env, Args, Return>> {
    // Unchecked: `Object` is a function, which the checked read refuses as an object.
    let global: Object = env.get_global()?.get_named_property_unchecked(global)?;
    global.get_named_property(name)
}

/// A `TypeError` naming the culprit, with Node's `ERR_INVALID_ARG_TYPE` code.
pub fn type_error(env: &Env, message: impl Into<String>) -> Error {
    let error = JsTypeError::from(Error::new(Status::InvalidArg, message.into()));
    with_fields(error.into_unknown(*env), |error| error.set("code", "ERR_INVALID_ARG_TYPE"))
}

/// A `RangeError` naming the culprit, with Node's `ERR_OUT_OF_RANGE` code.
pub fn range_error(env: &Env, message: impl Into<String>) -> Error {
    let error = JsRangeError::from(Error::new(Status::InvalidArg, message.into()));
    with_fields(error.into_unknown(*env), |error| error.set("code", "ERR_OUT_OF_RANGE"))
}

/// The error for an option the core refused: a `RangeError` for a value outside its range, a
/// `TypeError` otherwise, naming the option as the host wrote it (`options.backoff.maxMs`).
pub fn config_error(env: &Env, error: &ConfigError) -> Error {
    let message = match error {
        ConfigError::HttpClient(reason) => reason.clone(),
        named => format!("options.{named}"),
    };
    if error.is_range() {
        range_error(env, message)
    } else {
        type_error(env, message)
    }
}

/// `error` with the fields `set` writes on it (the ones it fails to write are left out).
fn with_fields(error: Unknown, set: impl FnOnce(&mut Object) -> Result<()>) -> Error {
    if let Ok(mut object) = error.coerce_to_object() {
        let _ = set(&mut object);
    }
    Error::from(error)
}

/// The JavaScript `Error` for a core error: the human message, a stable `code`, and the extra
/// fields docs/api.md#error-fields lists for that code.
pub fn quota_error(env: &Env, error: &QuotaError) -> Error {
    let reason = Error::new(Status::GenericFailure, error.to_string());
    // A value the host passed that cannot be used (a token with a line break) is its bug.
    let value = if matches!(error, QuotaError::InvalidArgument(_)) {
        JsTypeError::from(reason).into_unknown(*env)
    } else {
        napi::JsError::from(reason).into_unknown(*env)
    };
    with_fields(value, |object| {
        object.set("code", error.code())?;
        if let Some(status) = error.status() {
            object.set("status", u32::from(status))?;
        }
        if let Some(retry_after_ms) = error.retry_after_ms() {
            object.set("retryAfterMs", retry_after_ms as f64)?;
            object.set("retryAfter", retry_after_secs(retry_after_ms))?;
        }
        if let QuotaError::BackedOff { next_retry_at, .. } = error {
            object.set("nextRetryAt", *next_retry_at as f64)?;
        }
        if let Some(path) = error.path() {
            object.set("path", path)?;
        }
        Ok(())
    })
}

/// `Retry-After` in whole seconds, rounded up, as the plugin reads it.
pub fn retry_after_secs(ms: i64) -> f64 {
    (ms.max(0) as f64 / 1000.0).ceil()
}

/// Reads any JavaScript value as JSON-like data, through V8's own `JSON.stringify` (much faster
/// than walking the object through N-API); `Err` is a `TypeError` naming `name` (a cycle, a
/// `BigInt`, or a value with no JSON form). A throw inside `stringify` is caught by `call`.
pub fn to_json(env: &Env, value: Unknown, name: &str) -> Result<Value> {
    let unreadable =
        |reason: &str| type_error(env, format!("{name} could not be read as plain data: {reason}"));
    let stringify: Function<Unknown, Option<String>> = global_function(env, "JSON", "stringify")?;
    let text = stringify.call(value).map_err(|e| unreadable(&e.reason))?;
    let text = text.ok_or_else(|| unreadable("it has no JSON form"))?;
    serde_json::from_str(&text).map_err(|e| unreadable(&e.to_string()))
}

/// An object argument, read as plain data.
pub fn object_arg(env: &Env, value: Option<Unknown>, name: &str) -> Result<Value> {
    let object: Object = required(env, value, name)?;
    to_json(env, object.to_unknown(), name)
}

/// Response headers (or a snapshot) as plain data: a `Headers` or a `Map` (anything with an
/// `entries()` method that is not an array) through `Object.fromEntries`, another object as it is.
pub fn headers_arg(env: &Env, value: Option<Unknown>, name: &str) -> Result<Value> {
    let actual = value.as_ref().map_or(Ok(ValueType::Undefined), Unknown::get_type)?;
    let (Some(value), ValueType::Object) = (value, actual) else {
        let message =
            format!("{name} must be an object, a Headers or a Map, got {}", describe(actual));
        return Err(type_error(env, message));
    };
    let entries: Unknown = value.coerce_to_object()?.get_named_property("entries")?;
    if !value.is_array()? && entries.get_type()? == ValueType::Function {
        let from_entries: Function<Unknown, Unknown> =
            global_function(env, "Object", "fromEntries")?;
        let plain = from_entries
            .call(value)
            .map_err(|e| type_error(env, format!("{name} could not be read: {}", e.reason)))?;
        return to_json(env, plain, name);
    }
    to_json(env, value, name)
}

pub fn is_nullish(value: &Unknown) -> bool {
    matches!(value.get_type(), Ok(ValueType::Undefined | ValueType::Null))
}

/// An optional argument, with `undefined` and `null` read as absent.
pub fn present(value: Option<Unknown>) -> Option<Unknown> {
    value.filter(|value| !is_nullish(value))
}

/// An optional argument of one JavaScript type.
pub fn optional<T: FromNapiValue + TypeName>(
    env: &Env,
    value: Option<Unknown>,
    name: &str,
) -> Result<Option<T>> {
    present(value).map(|value| of_type(env, value, name)).transpose()
}

/// A value of one JavaScript type; another type is a `TypeError` naming the argument.
pub fn of_type<T: FromNapiValue + TypeName>(env: &Env, value: Unknown, name: &str) -> Result<T> {
    let (expected, actual) = (T::value_type(), value.get_type()?);
    if actual != expected {
        let message = format!("{name} must be {}, got {}", describe(expected), describe(actual));
        return Err(type_error(env, message));
    }
    unsafe { value.cast::<T>() }
}

pub fn required<T: FromNapiValue + TypeName>(
    env: &Env,
    value: Option<Unknown>,
    name: &str,
) -> Result<T> {
    let missing = || format!("{name} must be {}, got undefined", describe(T::value_type()));
    optional(env, value, name)?.ok_or_else(|| type_error(env, missing()))
}

/// A required non-empty string argument (ids and tokens).
pub fn required_non_empty(env: &Env, value: Option<Unknown>, name: &str) -> Result<String> {
    non_blank(env, required(env, value, name)?, name)
}

pub fn non_blank(env: &Env, text: String, name: &str) -> Result<String> {
    if text.trim().is_empty() {
        return Err(type_error(env, format!("{name} must be a non-empty string")));
    }
    Ok(text)
}

/// A finite number argument, within `min..=max`.
pub fn number_in(env: &Env, value: Unknown, name: &str, min: f64, max: f64) -> Result<f64> {
    let number: f64 = of_type(env, value, name)?;
    if !number.is_finite() || number < min || number > max {
        return Err(range_error(
            env,
            format!("{name} must be a finite number from {min} to {max}, got {number}"),
        ));
    }
    Ok(number)
}

pub fn describe(value_type: ValueType) -> &'static str {
    match value_type {
        ValueType::Undefined => "undefined",
        ValueType::Null => "null",
        ValueType::Boolean => "a boolean",
        ValueType::Number => "a number",
        ValueType::String => "a string",
        ValueType::Symbol => "a symbol",
        ValueType::Object => "an object",
        ValueType::Function => "a function",
        ValueType::External => "an external",
        ValueType::BigInt => "a bigint",
        ValueType::Unknown => "an unknown value",
    }
}

/// `undefined` when absent (docs/api.md#methods); napi-rs converts an `Option` into it.
pub type OrUndefined<T> = Either<T, Undefined>;

/// A Promise or another thenable: an object or function with a callable `then`.
pub fn is_thenable(value: &Unknown) -> Result<bool> {
    if !matches!(value.get_type()?, ValueType::Object | ValueType::Function) {
        return Ok(false);
    }
    let then: Unknown = value.coerce_to_object()?.get_named_property("then")?;
    Ok(then.get_type()? == ValueType::Function)
}
