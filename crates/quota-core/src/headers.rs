//! Quota harvested from the unified rate-limit headers of `/v1/messages` responses (docs/headers.md).
//! The values are untrusted: a garbage value drops its field, and nothing here may panic.

use chrono::{DateTime, SecondsFormat};
use serde_json::Value;

use super::snapshot::{QuotaSnapshot, QuotaSource, QuotaWindow, WindowKind};

const PREFIX: &str = "anthropic-ratelimit-unified-";

/// Longest value parsed as a number: refusing longer ones early keeps a hostile header cheap.
const MAX_NUMBER_LEN: usize = 64;

const MAX_TOKEN_LEN: usize = 64;

/// 9999-12-31T23:59:59Z: a later reset would format with a five-digit year `parse_iso_ms` refuses.
const MAX_RESET_SECONDS: f64 = 253_402_300_799.0;

/// One header frame's fields; `used` and `reset` are indexed like [`WindowKind::ALL`].
#[derive(Default)]
struct Frame {
    used: [Option<f64>; WindowKind::ALL.len()],
    reset: [Option<String>; WindowKind::ALL.len()],
    binding_reset: Option<String>,
    fallback_advised: Option<bool>,
    representative_claim: Option<String>,
}

/// One response's headers as a snapshot; `None` without utilisation (docs/headers.md#parsing).
pub fn parse_quota_headers(
    headers: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<str>)>,
    now_ms: i64,
) -> Option<QuotaSnapshot> {
    let mut frame = Frame::default();
    for (name, value) in headers {
        if let Some(suffix) = strip_prefix_ignore_case(name.as_ref().trim(), PREFIX) {
            frame.read(suffix, value.as_ref().trim());
        }
    }
    frame.into_snapshot(now_ms)
}

impl Frame {
    /// Reads one header (its name after [`PREFIX`]; docs/headers.md#header-names). A field is only
    /// assigned when the value parses, so garbage never erases a valid value.
    fn read(&mut self, suffix: &str, value: &str) {
        let same = |known: &str| suffix.eq_ignore_ascii_case(known);
        if same("reset") {
            self.binding_reset = reset_iso(value).or_else(|| self.binding_reset.take());
        } else if same("fallback") {
            self.fallback_advised = Some(value.eq_ignore_ascii_case("available"));
        } else if same("representative-claim") {
            self.representative_claim = token(value).or_else(|| self.representative_claim.take());
        }
        for (at, kind) in WindowKind::ALL.into_iter().enumerate() {
            let Some(field) = strip_prefix_ignore_case(suffix, kind.spec().header) else {
                continue;
            };
            if field.eq_ignore_ascii_case("-utilization") {
                self.used[at] = used_percent(value).or(self.used[at]);
            } else if field.eq_ignore_ascii_case("-reset") {
                self.reset[at] = reset_iso(value).or_else(|| self.reset[at].take());
            }
        }
    }

    fn into_snapshot(self, now_ms: i64) -> Option<QuotaSnapshot> {
        if self.used.iter().all(Option::is_none) {
            return None;
        }
        let claim = self.representative_claim.as_deref();
        let mut snapshot = QuotaSnapshot {
            binding_window_source: claim.map(|_| QuotaSource::Headers),
            fallback_advised: self.fallback_advised,
            source: Some(QuotaSource::Headers),
            checked_at: Some(now_ms),
            ..QuotaSnapshot::default()
        };
        for (at, kind) in WindowKind::ALL.into_iter().enumerate() {
            // The binding window's reset stands in for the claimed window's missing own one.
            let binding_reset = (claim == Some(kind.name())).then(|| self.binding_reset.clone());
            let reset = self.reset[at].clone().or_else(|| binding_reset.flatten());
            *snapshot.window_mut(kind) =
                self.used[at].map(|used| QuotaWindow::from_used(used, reset, now_ms));
        }
        snapshot.binding_window = self.representative_claim;
        Some(snapshot)
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    // `get` rather than slicing: a multi-byte character straddling the boundary must not panic.
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// A finite, non-negative number; `None` for anything else (including overflow to infinity).
fn non_negative_number(value: &str) -> Option<f64> {
    if value.is_empty() || value.len() > MAX_NUMBER_LEN {
        return None;
    }
    value.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0)
}

/// A utilisation fraction as a whole used percentage (docs/headers.md#parsing).
fn used_percent(value: &str) -> Option<f64> {
    non_negative_number(value).map(|fraction| (fraction * 100.0).round().clamp(0.0, 100.0))
}

/// Unix seconds as an RFC 3339 UTC string; zero is a placeholder (docs/headers.md#parsing).
fn reset_iso(value: &str) -> Option<String> {
    let seconds = non_negative_number(value).filter(|s| *s > 0.0 && *s <= MAX_RESET_SECONDS)?;
    // Whole milliseconds keep fractional seconds without float noise in the output.
    let millis = (seconds * 1000.0).round() as i64;
    DateTime::from_timestamp_millis(millis).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// A short token such as a window's name, lowercased so comparisons need not care about case.
fn token(value: &str) -> Option<String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
    let valid = (1..=MAX_TOKEN_LEN).contains(&value.len()) && value.bytes().all(allowed);
    valid.then(|| value.to_ascii_lowercase())
}

/// The header pairs of a plain `{ name: value }` object (docs/headers.md#header-names).
pub fn header_pairs(value: &Value) -> Vec<(String, String)> {
    let text = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    let fields = value.as_object().into_iter().flatten();
    fields.filter_map(|(name, value)| Some((name.clone(), text(value)?))).collect()
}

/// What a header push carries: headers, or a snapshot the host built, a frame even without
/// windows (docs/headers.md#merging-a-header-frame); `None` for no quota and no snapshot field.
pub fn frame_from_value(value: &Value, now_ms: i64) -> Option<QuotaSnapshot> {
    let object = value.as_object()?;
    let looks_like_headers =
        object.keys().any(|name| name.to_ascii_lowercase().starts_with("anthropic-ratelimit-"));
    if looks_like_headers {
        return parse_quota_headers(header_pairs(value), now_ms);
    }
    let mut value = value.clone();
    for kind in WindowKind::ALL {
        if let Some(window) = value.get_mut(kind.name()).and_then(|w| w.as_object_mut()) {
            window.entry("checkedAt").or_insert_with(|| serde_json::json!(now_ms));
        }
    }
    let mut snapshot = QuotaSnapshot::from_value_lenient(&value)
        .filter(|snapshot| *snapshot != QuotaSnapshot::default())?;
    snapshot.checked_at.get_or_insert(now_ms);
    Some(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_789_000_000_000;

    fn parse(headers: &[(&str, &str)]) -> Option<QuotaSnapshot> {
        parse_quota_headers(headers.iter().copied(), NOW)
    }

    fn full_frame() -> Vec<(&'static str, &'static str)> {
        vec![
            ("anthropic-ratelimit-unified-5h-utilization", "0.09"),
            ("anthropic-ratelimit-unified-5h-reset", "1789351800"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.68"),
            ("anthropic-ratelimit-unified-7d-reset", "1789808400"),
            ("anthropic-ratelimit-unified-fallback", "available"),
            ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
            ("anthropic-ratelimit-unified-status", "allowed_warning"),
            ("anthropic-ratelimit-unified-5h-status", "allowed"),
            ("anthropic-ratelimit-unified-7d-status", "allowed_warning"),
            ("anthropic-ratelimit-unified-reset", "1789351800"),
            ("content-type", "application/json"),
        ]
    }

    #[test]
    fn full_frame_becomes_a_header_snapshot() {
        let snapshot = parse(&full_frame()).unwrap();
        let five = snapshot.five_hour.unwrap();
        assert_eq!(five.used_percent, 9.0);
        assert_eq!(five.remaining_percent, 91.0);
        assert_eq!(five.resets_at.as_deref(), Some("2026-09-14T02:10:00Z"));
        assert_eq!(five.checked_at, NOW);
        let seven = snapshot.seven_day.unwrap();
        assert_eq!(seven.used_percent, 68.0);
        assert_eq!(seven.remaining_percent, 32.0);
        assert_eq!(seven.resets_at.as_deref(), Some("2026-09-19T09:00:00Z"));
        assert_eq!(snapshot.fallback_advised, Some(true));
        assert_eq!(snapshot.binding_window.as_deref(), Some("five_hour"));
        assert_eq!(snapshot.binding_window_source, Some(QuotaSource::Headers));
        assert_eq!(snapshot.source, Some(QuotaSource::Headers));
        assert_eq!(snapshot.checked_at, Some(NOW));
        assert!(snapshot.scoped.is_none(), "headers never introduce scoped");
        assert!(snapshot.extra_usage.is_none());
        assert!(snapshot.account_identity.is_none());
    }

    #[test]
    fn reset_strings_read_back_with_parse_iso_ms() {
        let snapshot = parse(&full_frame()).unwrap();
        assert_eq!(snapshot.five_hour.unwrap().resets_at_ms(), Some(1_789_351_800_000));
    }

    #[test]
    fn names_are_case_insensitive_and_values_trimmed() {
        let snapshot = parse(&[
            ("Anthropic-RateLimit-Unified-5H-Utilization", "  0.5 "),
            ("  ANTHROPIC-RATELIMIT-UNIFIED-5H-RESET ", "\t1789351800\t"),
            ("anthropic-ratelimit-unified-FALLBACK", " Available "),
            ("anthropic-ratelimit-unified-Status", " Rejected "),
        ])
        .unwrap();
        let five = snapshot.five_hour.unwrap();
        assert_eq!(five.used_percent, 50.0);
        assert_eq!(five.resets_at.as_deref(), Some("2026-09-14T02:10:00Z"));
        assert_eq!(snapshot.fallback_advised, Some(true));
        assert!(snapshot.seven_day.is_none());
    }

    #[test]
    fn frame_without_utilisation_is_none() {
        assert_eq!(parse(&[]), None);
        assert_eq!(
            parse(&[
                ("anthropic-ratelimit-unified-5h-reset", "1789351800"),
                ("anthropic-ratelimit-unified-status", "allowed"),
                ("anthropic-ratelimit-unified-fallback", "available"),
            ]),
            None
        );
        assert_eq!(
            parse(&[("anthropic-ratelimit-unified-5h-utilization", "abc")]),
            None,
            "garbage utilisation is no utilisation"
        );
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let used = |fraction: &str| {
            parse(&[("anthropic-ratelimit-unified-7d-utilization", fraction)])
                .unwrap()
                .seven_day
                .unwrap()
                .used_percent
        };
        assert_eq!(used("0.125"), 13.0);
        assert_eq!(used("0.124"), 12.0);
        assert_eq!(used("0.005"), 1.0);
        assert_eq!(used("0.004"), 0.0);
        assert_eq!(used("0"), 0.0);
        assert_eq!(used("1"), 100.0);
    }

    #[test]
    fn fraction_above_one_clamps_to_100() {
        let five = parse(&[("anthropic-ratelimit-unified-5h-utilization", "1.7")])
            .unwrap()
            .five_hour
            .unwrap();
        assert_eq!((five.used_percent, five.remaining_percent), (100.0, 0.0));
    }

    #[test]
    fn garbage_utilisation_is_ignored_field_by_field() {
        let huge = "9".repeat(1 << 20);
        for garbage in
            ["abc", "-1", "-0.5", "1e400", "NaN", "nan", "inf", "-inf", "", huge.as_str()]
        {
            let snapshot = parse(&[
                ("anthropic-ratelimit-unified-5h-utilization", garbage),
                ("anthropic-ratelimit-unified-7d-utilization", "0.25"),
            ])
            .unwrap_or_else(|| panic!("7d must survive 5h garbage {garbage:.10}"));
            assert!(snapshot.five_hour.is_none(), "accepted {garbage:.10}");
            assert_eq!(snapshot.seven_day.unwrap().used_percent, 25.0);
        }
    }

    #[test]
    fn garbage_reset_is_ignored_but_keeps_the_window() {
        let huge = "1".repeat(1 << 20);
        for garbage in
            ["abc", "-1", "-1789351800", "1e400", "NaN", "inf", "0", "1e15", huge.as_str()]
        {
            let five = parse(&[
                ("anthropic-ratelimit-unified-5h-utilization", "0.2"),
                ("anthropic-ratelimit-unified-5h-reset", garbage),
            ])
            .unwrap()
            .five_hour
            .unwrap();
            assert_eq!(five.used_percent, 20.0);
            assert_eq!(five.resets_at, None, "accepted reset {garbage:.10}");
        }
    }

    #[test]
    fn fractional_reset_seconds_keep_milliseconds() {
        let five = parse(&[
            ("anthropic-ratelimit-unified-5h-utilization", "0.2"),
            ("anthropic-ratelimit-unified-5h-reset", "1789351800.5"),
        ])
        .unwrap()
        .five_hour
        .unwrap();
        assert_eq!(five.resets_at.as_deref(), Some("2026-09-14T02:10:00.500Z"));
    }

    #[test]
    fn garbage_never_replaces_a_valid_duplicate() {
        let snapshot = parse(&[
            ("anthropic-ratelimit-unified-5h-utilization", "0.3"),
            ("Anthropic-Ratelimit-Unified-5h-Utilization", "NaN"),
        ])
        .unwrap();
        assert_eq!(snapshot.five_hour.unwrap().used_percent, 30.0);
        let snapshot = parse(&[
            ("anthropic-ratelimit-unified-5h-utilization", "0.3"),
            ("Anthropic-Ratelimit-Unified-5h-Utilization", "0.4"),
        ])
        .unwrap();
        assert_eq!(snapshot.five_hour.unwrap().used_percent, 40.0, "later wins");
    }

    #[test]
    fn fallback_other_than_available_is_false_and_absent_is_none() {
        let advised = |value: Option<&str>| {
            let mut headers = vec![("anthropic-ratelimit-unified-5h-utilization", "0.1")];
            if let Some(value) = value {
                headers.push(("anthropic-ratelimit-unified-fallback", value));
            }
            parse(&headers).unwrap().fallback_advised
        };
        assert_eq!(advised(Some("available")), Some(true));
        assert_eq!(advised(Some("unavailable")), Some(false));
        assert_eq!(advised(Some("")), Some(false));
        assert_eq!(advised(None), None);
    }

    #[test]
    fn representative_claim_accepts_tokens_only() {
        let claim = |value: &str| {
            let snapshot = parse(&[
                ("anthropic-ratelimit-unified-5h-utilization", "0.1"),
                ("anthropic-ratelimit-unified-representative-claim", value),
            ])
            .unwrap();
            (snapshot.binding_window, snapshot.binding_window_source)
        };
        let headers = Some(QuotaSource::Headers);
        assert_eq!(claim("five_hour"), (Some("five_hour".into()), headers));
        assert_eq!(claim(" seven_day "), (Some("seven_day".into()), headers));
        assert_eq!(claim("seven_day_opus"), (Some("seven_day_opus".into()), headers));
        assert_eq!(claim("   "), (None, None));
        assert_eq!(claim("five hour"), (None, None));
        assert_eq!(claim("<script>"), (None, None));
        assert_eq!(claim(&"x".repeat(1 << 20)), (None, None));
    }

    #[test]
    fn binding_reset_fills_the_claimed_window_only() {
        let snapshot = parse(&[
            ("anthropic-ratelimit-unified-5h-utilization", "0.1"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.9"),
            ("anthropic-ratelimit-unified-representative-claim", "seven_day"),
            ("anthropic-ratelimit-unified-reset", "1789808400"),
        ])
        .unwrap();
        assert_eq!(snapshot.five_hour.unwrap().resets_at, None);
        assert_eq!(snapshot.seven_day.unwrap().resets_at.as_deref(), Some("2026-09-19T09:00:00Z"));
    }

    #[test]
    fn non_ascii_names_and_values_do_not_panic() {
        let snapshot = parse(&[
            ("anthropic-ratelimit-unifié-5h-utilization", "0.1"),
            ("anthropic-ratelimit-unified-5h-utilization", "0.１"),
            ("é", "é"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.2"),
            ("anthropic-ratelimit-unified-status", "allowéd"),
        ])
        .unwrap();
        assert!(snapshot.five_hour.is_none());
        assert_eq!(snapshot.seven_day.unwrap().used_percent, 20.0);
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_push_is_read_as_headers_or_as_a_snapshot() {
        let headers = json!({
            "Anthropic-Ratelimit-Unified-5h-Utilization": 0.25,
            "anthropic-ratelimit-unified-7d-utilization": "0.5",
            "anthropic-ratelimit-unified-7d-reset": { "not": "text" }
        });
        let frame = frame_from_value(&headers, 1_000).unwrap();
        assert_eq!(frame.five_hour.unwrap().used_percent, 25.0);
        assert_eq!(frame.seven_day.unwrap().used_percent, 50.0);

        let snapshot = json!({ "five_hour": { "usedPercent": 40 }, "scoped": [] });
        let frame = frame_from_value(&snapshot, 2_000).unwrap();
        assert_eq!(frame.five_hour.unwrap().checked_at, 2_000);
        assert_eq!(frame.checked_at, Some(2_000));

        let windowless = frame_from_value(&json!({ "fallbackAdvised": true }), 3_000).unwrap();
        assert_eq!(windowless.fallback_advised, Some(true));
        assert_eq!(windowless.checked_at, Some(3_000));

        assert!(frame_from_value(&json!({ "content-type": "x" }), 0).is_none());
        assert!(frame_from_value(&json!({ "junk": 1 }), 0).is_none());
        assert!(frame_from_value(&json!({}), 0).is_none());
        assert!(frame_from_value(&json!("text"), 0).is_none());
    }
}
