//! The quota data model shared by every module. The serde shape *is* the JavaScript shape
//! (docs/api.md#data-types) and the state-file shape: one definition serves binding and store.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_with::skip_serializing_none;

/// A standard quota window, the one table that parsing, merging, evaluation and freshness iterate.
/// A new kind: a variant, its row in `SPECS`, a field in [`QuotaSnapshot`] and [`FieldSources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    FiveHour,
    SevenDay,
}

/// The spellings of one window kind.
#[derive(Clone, Copy)]
pub struct WindowSpec {
    /// Its key in a snapshot and in the usage body (docs/endpoint.md#response-body), its
    /// `representative-claim` and its block reason.
    pub name: &'static str,
    /// Its headers' infix: `anthropic-ratelimit-unified-<infix>-utilization` (docs/headers.md).
    pub header: &'static str,
    /// The plugin's alias of its threshold in `minimumRemaining`.
    pub threshold_alias: &'static str,
    /// The usage body's `limits[].kind` that names it the binding window.
    pub limit_kind: &'static str,
}

/// Each kind's spellings, indexed like [`WindowKind::ALL`].
const SPECS: [WindowSpec; WindowKind::ALL.len()] = [
    WindowSpec { name: "five_hour", header: "5h", threshold_alias: "5h", limit_kind: "session" },
    WindowSpec { name: "seven_day", header: "7d", threshold_alias: "1w", limit_kind: "weekly_all" },
];

impl WindowKind {
    pub const ALL: [Self; 2] = [Self::FiveHour, Self::SevenDay];

    pub const fn spec(self) -> WindowSpec {
        SPECS[self as usize]
    }

    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// Where a snapshot (or its binding window) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaSource {
    Poll,
    Headers,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaWindow {
    pub used_percent: f64,
    pub remaining_percent: f64,
    pub resets_at: Option<String>,
    pub checked_at: i64,
}

impl QuotaWindow {
    /// A window from a used percentage, clamped to 0..=100.
    pub fn from_used(used_percent: f64, resets_at: Option<String>, checked_at: i64) -> Self {
        let used = used_percent.clamp(0.0, 100.0);
        Self { used_percent: used, remaining_percent: 100.0 - used, resets_at, checked_at }
    }

    /// The reset time in Unix milliseconds, when `resets_at` is a valid RFC 3339 time.
    pub fn resets_at_ms(&self) -> Option<i64> {
        self.resets_at.as_deref().and_then(parse_iso_ms)
    }
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopedQuotaWindow {
    pub used_percent: f64,
    pub remaining_percent: f64,
    pub resets_at: Option<String>,
    pub checked_at: i64,
    pub id: String,
    pub title: String,
    pub model_id: Option<String>,
    pub model_name: String,
}

impl ScopedQuotaWindow {
    pub fn resets_at_ms(&self) -> Option<i64> {
        self.resets_at.as_deref().and_then(parse_iso_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaMoney {
    pub amount_minor: f64,
    pub currency: String,
    pub exponent: u8,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtraUsage {
    pub used: QuotaMoney,
    pub limit: QuotaMoney,
    pub utilization_percent: Option<f64>,
    pub severity: Option<String>,
    pub exhausted: bool,
}

/// Where each present field of a snapshot came from (docs/headers.md#field-sources).
#[skip_serializing_none]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldSources {
    #[serde(rename = "five_hour")]
    pub five_hour: Option<QuotaSource>,
    #[serde(rename = "seven_day")]
    pub seven_day: Option<QuotaSource>,
    pub scoped: Option<QuotaSource>,
    pub extra_usage: Option<QuotaSource>,
    pub binding_window: Option<QuotaSource>,
    pub fallback_advised: Option<QuotaSource>,
}

impl FieldSources {
    pub fn window(mut self, kind: WindowKind) -> Option<QuotaSource> {
        *self.window_mut(kind)
    }

    pub fn window_mut(&mut self, kind: WindowKind) -> &mut Option<QuotaSource> {
        match kind {
            WindowKind::FiveHour => &mut self.five_hour,
            WindowKind::SevenDay => &mut self.seven_day,
        }
    }
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSnapshot {
    #[serde(rename = "five_hour")]
    pub five_hour: Option<QuotaWindow>,
    #[serde(rename = "seven_day")]
    pub seven_day: Option<QuotaWindow>,
    /// Only polls know scoped windows; `Some(vec![])` means "the poll saw none".
    pub scoped: Option<Vec<ScopedQuotaWindow>>,
    pub extra_usage: Option<ExtraUsage>,
    pub binding_window: Option<String>,
    pub binding_window_source: Option<QuotaSource>,
    pub fallback_advised: Option<bool>,
    pub source: Option<QuotaSource>,
    pub checked_at: Option<i64>,
    pub account_identity: Option<String>,
    pub field_sources: Option<FieldSources>,
}

impl QuotaSnapshot {
    pub fn window(&self, kind: WindowKind) -> Option<&QuotaWindow> {
        match kind {
            WindowKind::FiveHour => self.five_hour.as_ref(),
            WindowKind::SevenDay => self.seven_day.as_ref(),
        }
    }

    pub fn window_mut(&mut self, kind: WindowKind) -> &mut Option<QuotaWindow> {
        match kind {
            WindowKind::FiveHour => &mut self.five_hour,
            WindowKind::SevenDay => &mut self.seven_day,
        }
    }

    pub fn windows(&self) -> impl Iterator<Item = (WindowKind, &QuotaWindow)> {
        WindowKind::ALL.into_iter().filter_map(|kind| Some((kind, self.window(kind)?)))
    }

    /// Where one field's value came from (docs/headers.md#field-sources).
    pub fn source_of(&self, field: impl Fn(&FieldSources) -> Option<QuotaSource>) -> QuotaSource {
        self.field_sources.as_ref().and_then(field).or(self.source).unwrap_or(QuotaSource::Poll)
    }

    /// Keeps `fieldSources` to the present fields, filling gaps (docs/headers.md#field-sources).
    pub fn settle_field_sources(&mut self) {
        let recorded = self.field_sources.take().unwrap_or_default();
        let fallback = self.source.unwrap_or(QuotaSource::Poll);
        let pick = |present: bool, recorded: Option<QuotaSource>| {
            present.then(|| recorded.unwrap_or(fallback))
        };
        let mut settled = FieldSources {
            scoped: pick(self.scoped.is_some(), recorded.scoped),
            extra_usage: pick(self.extra_usage.is_some(), recorded.extra_usage),
            binding_window: pick(
                self.binding_window.is_some(),
                recorded.binding_window.or(self.binding_window_source),
            ),
            fallback_advised: pick(self.fallback_advised.is_some(), recorded.fallback_advised),
            ..FieldSources::default()
        };
        for kind in WindowKind::ALL {
            *settled.window_mut(kind) = pick(self.window(kind).is_some(), recorded.window(kind));
        }
        self.field_sources = (settled != FieldSources::default()).then_some(settled);
    }

    /// The scoped window that a request on `model` counts against, if any.
    pub fn scoped_window_for(&self, model: &str) -> Option<&ScopedQuotaWindow> {
        self.scoped.as_ref()?.iter().find(|window| model_matches_scoped(model, window))
    }

    pub fn has_windows(&self) -> bool {
        self.windows().next().is_some()
    }

    fn window_checked_ats(&self) -> impl Iterator<Item = i64> + '_ {
        let scoped = self.scoped.iter().flatten().map(|w| w.checked_at);
        self.windows().map(|(_, w)| w.checked_at).chain(scoped)
    }

    /// The oldest `checkedAt` of the snapshot's windows, scoped ones included, else its own.
    pub fn oldest_window_checked_at(&self) -> Option<i64> {
        self.window_checked_ats().min().or(self.checked_at)
    }

    /// The latest `checkedAt`, windows' or its own: how the plugin dates a persisted snapshot.
    pub fn latest_checked_at(&self) -> Option<i64> {
        self.window_checked_ats().chain(self.checked_at).max()
    }

    /// Reads a snapshot out of untrusted JSON, dropping junk fields; `None` for a non-object.
    pub fn from_value_lenient(value: &Value) -> Option<Self> {
        crate::lenient::LenientSnapshot::deserialize(value).ok().and_then(|read| read.0)
    }
}

/// Lowercase ASCII alphanumerics only: `"Claude-Fable 5.1"` becomes `"claudefable51"`.
pub fn normalize_model_text(text: &str) -> String {
    text.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Model families whose scoped window covers every version of the model.
const FAMILY_WORDS: [&str; 2] = ["fable", "mythos"];

/// Does a request on `model` count against this scoped window (docs/freshness.md#model-matching)?
pub fn model_matches_scoped(model: &str, window: &ScopedQuotaWindow) -> bool {
    let model = normalize_model_text(model);
    if model.is_empty() {
        return false;
    }
    let needle =
        FAMILY_WORDS.iter().find(|word| model.contains(*word)).map_or(model.as_str(), |word| word);
    [Some(&window.id), window.model_id.as_ref(), Some(&window.model_name), Some(&window.title)]
        .into_iter()
        .flatten()
        .any(|text| normalize_model_text(text).contains(needle))
}

/// A cache entry: the snapshot, when it was observed, and when the next poll is due.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaEntry {
    pub quota: QuotaSnapshot,
    pub checked_at: i64,
    pub refresh_after: i64,
}

impl QuotaEntry {
    /// An entry the host sets, its `fieldSources` kept as given (docs/headers.md#field-sources).
    pub fn from_host_value(value: &Value) -> Option<Self> {
        let raw_quota = value.get("quota")?;
        let mut quota = QuotaSnapshot::from_value_lenient(raw_quota)?;
        quota.field_sources = FieldSources::deserialize(&raw_quota["fieldSources"]).ok();
        let checked_at = timestamp_from_value(&value["checkedAt"])?;
        let refresh_after = timestamp_from_value(&value["refreshAfter"]).unwrap_or(checked_at);
        Some(Self { quota, checked_at, refresh_after })
    }
}

/// A failure of the usage endpoint as the host sees it (`QuotaApiError` in docs/api.md#data-types).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiErrorRecord {
    pub message: String,
    pub checked_at: i64,
    pub next_retry_at: Option<i64>,
    pub retry_count: Option<u32>,
    pub status: Option<u16>,
    pub retry_after_ms: Option<i64>,
    pub account_identity: Option<String>,
}

impl ApiErrorRecord {
    /// Reads a recorded error out of untrusted JSON; `None` without a `checkedAt`.
    pub fn from_value_lenient(value: &Value) -> Option<Self> {
        Some(Self {
            message: value["message"].as_str().unwrap_or("unknown error").to_owned(),
            checked_at: timestamp_from_value(&value["checkedAt"])?,
            next_retry_at: timestamp_from_value(&value["nextRetryAt"]),
            retry_count: u32::deserialize(&value["retryCount"]).ok(),
            status: u16::deserialize(&value["status"]).ok(),
            retry_after_ms: timestamp_from_value(&value["retryAfterMs"]),
            account_identity: non_blank_string(&value["accountIdentity"]),
        })
    }
}

pub fn finite(value: &Value) -> Option<f64> {
    value.as_f64().filter(|n| n.is_finite())
}

pub fn timestamp_from_value(value: &Value) -> Option<i64> {
    finite(value).and_then(timestamp)
}

/// A non-negative whole-millisecond timestamp below 9e15 (fractions are truncated).
pub fn timestamp(number: f64) -> Option<i64> {
    (0.0..9.0e15).contains(&number).then_some(number as i64)
}

pub fn non_blank_string(value: &Value) -> Option<String> {
    value.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Parses an RFC 3339 / ISO 8601 timestamp into Unix milliseconds.
pub fn parse_iso_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim()).ok().map(|t| t.timestamp_millis())
}

#[cfg(test)]
impl QuotaSnapshot {
    /// The snapshot with [`QuotaSnapshot::settle_field_sources`] applied.
    #[must_use]
    pub fn with_settled_field_sources(mut self) -> Self {
        self.settle_field_sources();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_snapshot_drops_junk_fields_but_keeps_the_rest() {
        let value = json!({
            "five_hour": { "usedPercent": "lots", "remainingPercent": 1, "checkedAt": 5 },
            "seven_day": { "usedPercent": 140, "remainingPercent": -40, "checkedAt": 7 },
            "scoped": [ { "usedPercent": 3, "checkedAt": 9, "id": "x", "modelName": "Fable" }, 4 ],
            "status": 12,
            "checkedAt": 7
        });
        let snapshot = QuotaSnapshot::from_value_lenient(&value).unwrap();
        assert!(snapshot.five_hour.is_none());
        let seven = snapshot.seven_day.unwrap();
        assert_eq!((seven.used_percent, seven.remaining_percent), (100.0, 0.0));
        let scoped = snapshot.scoped.unwrap();
        assert_eq!(scoped.len(), 1);
        assert_eq!(scoped[0].title, "Fable only");
        assert_eq!(snapshot.checked_at, Some(7));
    }

    #[test]
    fn snapshot_round_trips_through_the_js_shape() {
        let snapshot = QuotaSnapshot {
            five_hour: Some(QuotaWindow::from_used(9.0, Some("2026-09-14T02:10:00Z".into()), 1)),
            source: Some(QuotaSource::Poll),
            scoped: Some(vec![]),
            ..Default::default()
        }
        .with_settled_field_sources();
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["five_hour"]["remainingPercent"], 91.0);
        assert_eq!(json["source"], "poll");
        assert_eq!(json["scoped"], json!([]));
        assert!(json.get("seven_day").is_none());
        assert_eq!(QuotaSnapshot::from_value_lenient(&json).unwrap(), snapshot);
    }

    fn scoped(id: &str, model_id: Option<&str>, name: &str) -> ScopedQuotaWindow {
        ScopedQuotaWindow {
            used_percent: 1.0,
            remaining_percent: 99.0,
            resets_at: None,
            checked_at: 0,
            id: id.into(),
            title: format!("{name} only"),
            model_id: model_id.map(Into::into),
            model_name: name.into(),
        }
    }

    #[test]
    fn models_match_scoped_windows_by_normalised_name_or_family_word() {
        let fable =
            scoped("claude-weekly-scoped-claude-fable-5-1", Some("claude-fable-5-1"), "Fable");
        assert!(model_matches_scoped("claude-fable-5-1", &fable));
        assert!(model_matches_scoped("Claude Fable 5.1", &fable));
        assert!(model_matches_scoped("claude-fable-6", &fable), "family word matches");
        assert!(!model_matches_scoped("claude-sonnet-4-5", &fable));
        assert!(!model_matches_scoped("", &fable));
        let opus = scoped("claude-weekly-scoped-opus", None, "Opus");
        assert!(model_matches_scoped("opus", &opus));
        assert!(
            !model_matches_scoped("claude-opus-4-1", &opus),
            "whole model name must be contained"
        );
    }

    #[test]
    fn iso_times_parse_to_millis() {
        assert_eq!(parse_iso_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_iso_ms("2026-09-14T02:10:00+00:00"), parse_iso_ms("2026-09-14T02:10:00Z"));
        assert_eq!(parse_iso_ms("yesterday"), None);
    }
}
