//! Parsing of the usage endpoint's JSON body into a [`QuotaSnapshot`] (docs/endpoint.md#response-body).
//! Fields are read by indexing a `Value`: a missing one, or one of a non-object, reads as `null`.

use std::collections::HashSet;

use serde_json::Value;

use crate::lenient::WindowFields;
use crate::snapshot::{
    finite, non_blank_string, parse_iso_ms, ExtraUsage, QuotaMoney, QuotaSnapshot, QuotaSource,
    QuotaWindow, ScopedQuotaWindow, WindowKind,
};

/// Prefix of every scoped window id, so ids never collide with a standard window's name.
const SCOPED_ID_PREFIX: &str = "claude-weekly-scoped-";
/// The `limits[].kind` of a model-scoped weekly window.
const SCOPED_LIMIT_KIND: &str = "weekly_scoped";
const DEFAULT_CURRENCY: &str = "USD";
const DEFAULT_EXPONENT: u8 = 2;
/// Larger exponents make `10^exponent` overflow the JS number range used for formatting.
const MAX_EXPONENT: u8 = 20;

/// A poll snapshot from a usage body, `scoped` always `Some` (docs/endpoint.md#response-body).
pub fn parse_usage_body(body: &Value, checked_at: i64) -> QuotaSnapshot {
    // Entries that are not objects read as nothing: indexing one gives `null`.
    let limits = body["limits"].as_array().map_or(&[][..], Vec::as_slice);
    let binding_window = binding_window(limits, checked_at);
    let mut snapshot = QuotaSnapshot {
        scoped: Some(scoped_windows(limits, checked_at)),
        extra_usage: extra_usage(body),
        binding_window_source: binding_window.as_ref().map(|_| QuotaSource::Poll),
        binding_window,
        source: Some(QuotaSource::Poll),
        checked_at: Some(checked_at),
        ..Default::default()
    };
    for kind in WindowKind::ALL {
        *snapshot.window_mut(kind) = window(&body[kind.name()], checked_at);
    }
    snapshot.settle_field_sources();
    snapshot
}

/// The usage fields besides the standard windows (docs/endpoint.md#response-body).
const OTHER_USAGE_FIELDS: [&str; 3] = ["seven_day_opus", "limits", "extra_usage"];

/// Checks that a parsed 200 body is a usage answer; the reason when it is not.
pub fn check_usage_body(body: &Value) -> Result<(), String> {
    let object = body.as_object().ok_or("body is not a JSON object")?;
    if object.get("type").and_then(Value::as_str) == Some("error") || object.contains_key("error") {
        return Err("body is an error object, not usage data".into());
    }
    let mut fields = WindowKind::ALL.iter().map(|kind| kind.name()).chain(OTHER_USAGE_FIELDS);
    if !fields.any(|field| object.contains_key(field)) {
        return Err("body has no usage fields".into());
    }
    Ok(())
}

/// JSON as `serde_json` reads it, except that a number overflowing `f64` (`1e400`) reads as `null`.
pub fn parse_json_lenient(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice(bytes).or_else(|error| match null_out_of_range_numbers(bytes) {
        Some(fixed) => serde_json::from_slice(&fixed),
        None => Err(error),
    })
}

/// A copy of `bytes` with each number literal (outside strings) that overflows `f64` replaced by
/// `null`; `None` when there is none, so the original error stands.
fn null_out_of_range_numbers(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut in_string = false;
    let mut rest = bytes;
    while let Some(&byte) = rest.first() {
        let len = if in_string {
            in_string = byte != b'"';
            // An escape and the character it escapes.
            1 + usize::from(byte == b'\\')
        } else if byte == b'-' || byte.is_ascii_digit() {
            rest.iter().position(|b| !b"0123456789+-.eE".contains(b)).unwrap_or(rest.len())
        } else {
            in_string = byte == b'"';
            1
        };
        let (token, tail) = rest.split_at(len.min(rest.len()));
        let overflows = std::str::from_utf8(token)
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
            .is_some_and(f64::is_infinite);
        out.extend_from_slice(if overflows { b"null" } else { token });
        changed |= overflows;
        rest = tail;
    }
    changed.then_some(out)
}

/// Lowercase, runs outside `[a-z0-9]` become one `-`, no leading or trailing `-`.
pub fn slug(text: &str) -> String {
    let lower = text.to_lowercase();
    let is_separator = |c: char| !c.is_ascii_lowercase() && !c.is_ascii_digit();
    let words: Vec<&str> = lower.split(is_separator).filter(|word| !word.is_empty()).collect();
    words.join("-")
}

fn window(value: &Value, checked_at: i64) -> Option<QuotaWindow> {
    let used = finite(&value["utilization"])?;
    Some(QuotaWindow::from_used(used, iso_time(&value["resets_at"]), checked_at))
}

/// A reset time is kept only when it parses, so later reset arithmetic never meets junk.
fn iso_time(value: &Value) -> Option<String> {
    non_blank_string(value).filter(|text| parse_iso_ms(text).is_some())
}

fn scoped_windows(limits: &[Value], checked_at: i64) -> Vec<ScopedQuotaWindow> {
    let mut ids = HashSet::new();
    let windows = limits.iter().filter_map(|e| scoped_window(e, checked_at));
    windows.filter(|window| ids.insert(window.id.clone())).collect()
}

/// A scoped limit as a scoped window; `None` when any required part is missing.
fn scoped_window(entry: &Value, checked_at: i64) -> Option<ScopedQuotaWindow> {
    if entry["kind"] != SCOPED_LIMIT_KIND || entry["group"] != "weekly" {
        return None;
    }
    let model = &entry["scope"]["model"];
    let model_name = non_blank_string(&model["display_name"])?;
    let model_id = non_blank_string(&model["id"]);
    let id_slug = slug(model_id.as_deref().unwrap_or(&model_name));
    // Built by the stored window's reader, so both follow one rule (its default title).
    WindowFields {
        used_percent: finite(&entry["percent"]),
        checked_at: Some(checked_at),
        resets_at: iso_time(&entry["resets_at"]),
        id: (!id_slug.is_empty()).then(|| format!("{SCOPED_ID_PREFIX}{id_slug}")),
        title: None,
        model_id,
        model_name: Some(model_name),
    }
    .scoped()
}

/// Only the first active limit counts (docs/endpoint.md#binding-window).
fn binding_window(limits: &[Value], checked_at: i64) -> Option<String> {
    let active = limits.iter().find(|entry| entry["is_active"] == true)?;
    match active["kind"].as_str()? {
        SCOPED_LIMIT_KIND => scoped_window(active, checked_at).map(|w| w.id),
        kind => WindowKind::ALL
            .into_iter()
            .find(|window| window.spec().limit_kind == kind)
            .map(|window| window.name().to_owned()),
    }
}

fn extra_usage(body: &Value) -> Option<ExtraUsage> {
    let extra = &body["extra_usage"];
    if extra["is_enabled"] != true {
        return None;
    }
    let used = finite(&extra["used_credits"])?;
    let limit = finite(&extra["monthly_limit"])?;
    let spend = &body["spend"];
    let currency =
        currency_code(&spend["limit"]["currency"]).unwrap_or_else(|| DEFAULT_CURRENCY.to_owned());
    let exponent = exponent(&spend["limit"]["exponent"]).unwrap_or(DEFAULT_EXPONENT);
    let money = |amount_minor| QuotaMoney { amount_minor, currency: currency.clone(), exponent };
    Some(ExtraUsage {
        used: money(used),
        limit: money(limit),
        utilization_percent: finite(&extra["utilization"]),
        severity: non_blank_string(&spend["severity"]),
        exhausted: used >= limit,
    })
}

/// An ISO 4217-shaped code; uppercased because formatters and comparisons expect `USD`.
fn currency_code(value: &Value) -> Option<String> {
    let text = value.as_str()?.trim();
    (text.len() == 3 && text.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| text.to_ascii_uppercase())
}

/// A whole number in `0..=MAX_EXPONENT`; `2.0` counts, as it would in JavaScript.
fn exponent(value: &Value) -> Option<u8> {
    let n = finite(value)?;
    (n.fract() == 0.0 && (0.0..=f64::from(MAX_EXPONENT)).contains(&n)).then_some(n as u8)
}

#[cfg(test)]
mod tests;
