//! When a cached snapshot is due for a new poll (docs/freshness.md). Whether an account is
//! exhausted, and until when, is the routing policy's answer, passed in as a reset time.

use super::clock::MINUTE_MS;
use super::snapshot::{QuotaEntry, QuotaSnapshot, QuotaSource};

/// The wait after an exhausted window's reset (docs/freshness.md#refresh-after).
pub const EXHAUSTED_GRACE_MS: i64 = MINUTE_MS;

/// When a new poll of `quota`, observed at `checked_at`, is due (docs/freshness.md#refresh-after).
pub fn refresh_after(
    quota: &QuotaSnapshot,
    checked_at: i64,
    interval_ms: i64,
    exhausted_until: Option<i64>,
) -> i64 {
    match exhausted_until {
        Some(reset) if reset > checked_at => {
            let oldest = quota.oldest_window_checked_at().unwrap_or(checked_at);
            reset.saturating_add(EXHAUSTED_GRACE_MS).min(oldest.saturating_add(interval_ms))
        }
        _ => checked_at.saturating_add(interval_ms),
    }
}

/// Is a poll due (docs/freshness.md#staleness)?
pub fn is_stale(
    entry: Option<&QuotaEntry>,
    now_ms: i64,
    interval_ms: i64,
    model: Option<&str>,
) -> bool {
    now_ms >= stale_from(entry, interval_ms, model)
}

/// When [`is_stale`] first turns true, `i64::MIN` without an entry (docs/freshness.md#staleness).
pub fn stale_from(entry: Option<&QuotaEntry>, interval_ms: i64, model: Option<&str>) -> i64 {
    entry.map_or(i64::MIN, |entry| {
        let scoped = model.and_then(|model| entry.quota.scoped_window_for(model));
        let due = entry.refresh_after;
        scoped.map_or(due, |window| window.checked_at.saturating_add(interval_ms).min(due))
    })
}

/// When a header-only main entry is due (docs/freshness.md#header-only-staleness), if it is one.
pub fn header_only_due_from(
    quota: &QuotaSnapshot,
    last_attempt_at: Option<i64>,
    interval_ms: i64,
) -> Option<i64> {
    let header_only = quota.source == Some(QuotaSource::Headers) && quota.scoped.is_none();
    header_only.then(|| last_attempt_at.map_or(i64::MIN, |at| at.saturating_add(interval_ms)))
}

/// The main route's [`stale_from`], which also applies [`header_only_due_from`].
pub fn main_stale_from(
    entry: Option<&QuotaEntry>,
    last_attempt_at: Option<i64>,
    interval_ms: i64,
    model: Option<&str>,
) -> i64 {
    let by_time = stale_from(entry, interval_ms, model);
    entry
        .and_then(|entry| header_only_due_from(&entry.quota, last_attempt_at, interval_ms))
        .map_or(by_time, |due| due.min(by_time))
}

/// The `refreshEveryNRequests` trigger (docs/freshness.md#request-count).
pub fn should_refresh_on_request_count(request_count: i64, every_n: i64) -> bool {
    request_count > 0 && every_n > 0 && request_count % every_n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{QuotaWindow, ScopedQuotaWindow};

    const T0: i64 = 1_789_351_800_000;
    const INTERVAL: i64 = 5 * MINUTE_MS;

    fn window(checked_at: i64) -> QuotaWindow {
        QuotaWindow::from_used(100.0, None, checked_at)
    }

    fn scoped(model: &str, checked_at: i64) -> ScopedQuotaWindow {
        ScopedQuotaWindow {
            used_percent: 10.0,
            remaining_percent: 90.0,
            resets_at: None,
            checked_at,
            id: format!("claude-weekly-scoped-{model}"),
            title: format!("{model} only"),
            model_id: Some(model.into()),
            model_name: model.into(),
        }
    }

    fn snapshot(windows_at: i64, scoped_windows: Vec<ScopedQuotaWindow>) -> QuotaSnapshot {
        QuotaSnapshot {
            five_hour: Some(window(windows_at)),
            seven_day: Some(window(windows_at)),
            scoped: Some(scoped_windows),
            checked_at: Some(windows_at),
            ..Default::default()
        }
    }

    fn entry(quota: QuotaSnapshot, checked_at: i64, exhausted_until: Option<i64>) -> QuotaEntry {
        QuotaEntry {
            refresh_after: refresh_after(&quota, checked_at, INTERVAL, exhausted_until),
            quota,
            checked_at,
        }
    }

    #[test]
    fn refresh_is_normally_due_one_interval_after_the_check() {
        let quota = snapshot(T0, vec![]);
        assert_eq!(refresh_after(&quota, T0, INTERVAL, None), T0 + INTERVAL);
        let empty = QuotaSnapshot::default();
        assert_eq!(refresh_after(&empty, T0, INTERVAL, None), T0 + INTERVAL);
    }

    #[test]
    fn an_exhausted_account_is_polled_a_minute_after_its_reset() {
        let quota = snapshot(T0, vec![]);
        let reset = T0 + 2 * MINUTE_MS;
        assert_eq!(refresh_after(&quota, T0, INTERVAL, Some(reset)), reset + EXHAUSTED_GRACE_MS);
    }

    #[test]
    fn a_far_reset_is_capped_by_the_oldest_window_including_scoped_ones() {
        let reset = T0 + 3 * 24 * 60 * MINUTE_MS;
        let quota = snapshot(T0, vec![]);
        assert_eq!(refresh_after(&quota, T0, INTERVAL, Some(reset)), T0 + INTERVAL);
        // Headers renewed 5h/7d at T0, the scoped window is from a poll two minutes earlier.
        let mut mixed = snapshot(T0, vec![scoped("opus", T0 - 2 * MINUTE_MS)]);
        assert_eq!(refresh_after(&mixed, T0, INTERVAL, Some(reset)), T0 - 2 * MINUTE_MS + INTERVAL);
        // A reset sooner than the cap still wins.
        let soon = T0 + MINUTE_MS;
        assert_eq!(refresh_after(&mixed, T0, INTERVAL, Some(soon)), soon + EXHAUSTED_GRACE_MS);
        // No windows at all: the entry's own check time bounds it.
        mixed = QuotaSnapshot::default();
        assert_eq!(refresh_after(&mixed, T0, INTERVAL, Some(reset)), T0 + INTERVAL);
    }

    #[test]
    fn a_reset_already_past_is_no_exhaustion() {
        let quota = snapshot(T0 - 4 * MINUTE_MS, vec![]);
        for reset in [T0 - MINUTE_MS, T0] {
            assert_eq!(
                refresh_after(&quota, T0, INTERVAL, Some(reset)),
                T0 + INTERVAL,
                "reset {reset}"
            );
        }
    }

    #[test]
    fn staleness_follows_refresh_after() {
        assert!(is_stale(None, T0, INTERVAL, None));
        let fresh = entry(snapshot(T0, vec![]), T0, None);
        assert!(!is_stale(Some(&fresh), T0, INTERVAL, None));
        assert!(!is_stale(Some(&fresh), T0 + INTERVAL - 1, INTERVAL, None));
        assert!(is_stale(Some(&fresh), T0 + INTERVAL, INTERVAL, None));

        let exhausted = entry(snapshot(T0, vec![]), T0, Some(T0 + MINUTE_MS));
        assert!(!is_stale(Some(&exhausted), T0 + 2 * MINUTE_MS - 1, INTERVAL, None));
        assert!(is_stale(Some(&exhausted), T0 + 2 * MINUTE_MS, INTERVAL, None));
    }

    #[test]
    fn an_old_scoped_window_makes_only_its_own_model_stale() {
        // 5h/7d renewed by headers just now; the scoped windows came from a poll 6 minutes ago.
        let old = T0 - 6 * MINUTE_MS;
        let quota = snapshot(T0, vec![scoped("claude-fable-5-1", old), scoped("opus", T0)]);
        let cached = QuotaEntry { refresh_after: T0 + INTERVAL, quota, checked_at: T0 };
        let now = T0 + MINUTE_MS;
        assert!(is_stale(Some(&cached), now, INTERVAL, Some("claude-fable-5-1")));
        assert!(is_stale(Some(&cached), now, INTERVAL, Some("Claude Fable 6")));
        assert!(!is_stale(Some(&cached), now, INTERVAL, Some("opus")));
        assert!(!is_stale(Some(&cached), now, INTERVAL, Some("claude-sonnet-4-5")));
        assert!(!is_stale(Some(&cached), now, INTERVAL, None));
        assert!(!is_stale(Some(&cached), now, INTERVAL, Some("")));

        // Exactly one interval old is stale; a moment less is not.
        let edge = old + INTERVAL;
        assert!(is_stale(Some(&cached), edge, INTERVAL, Some("fable")));
        assert!(!is_stale(Some(&cached), edge - 1, INTERVAL, Some("fable")));
    }

    #[test]
    fn stale_from_is_the_first_instant_is_stale_turns_true() {
        assert_eq!(stale_from(None, INTERVAL, None), i64::MIN);
        let old = T0 - 6 * MINUTE_MS;
        let cached = QuotaEntry {
            refresh_after: T0 + INTERVAL,
            quota: snapshot(T0, vec![scoped("claude-fable-5-1", old)]),
            checked_at: T0,
        };
        assert_eq!(stale_from(Some(&cached), INTERVAL, None), T0 + INTERVAL);
        assert_eq!(stale_from(Some(&cached), INTERVAL, Some("opus")), T0 + INTERVAL);
        let scoped_due = old + INTERVAL;
        assert_eq!(stale_from(Some(&cached), INTERVAL, Some("fable")), scoped_due);
        for model in [None, Some("fable"), Some("opus")] {
            let from = stale_from(Some(&cached), INTERVAL, model);
            assert!(!is_stale(Some(&cached), from - 1, INTERVAL, model));
            assert!(is_stale(Some(&cached), from, INTERVAL, model));
        }
    }

    #[test]
    fn request_count_trigger() {
        assert!(should_refresh_on_request_count(5, 5));
        assert!(should_refresh_on_request_count(10, 5));
        assert!(should_refresh_on_request_count(1, 1));
        assert!(!should_refresh_on_request_count(7, 5));
        assert!(!should_refresh_on_request_count(0, 5), "request 0");
        assert!(!should_refresh_on_request_count(5, 0), "off by default");
        assert!(!should_refresh_on_request_count(0, 0));
        assert!(!should_refresh_on_request_count(-5, 5));
        assert!(!should_refresh_on_request_count(5, -5));
        assert!(!should_refresh_on_request_count(-10, -5));
        assert!(should_refresh_on_request_count(i64::MAX, 1));
    }

    #[test]
    fn a_header_only_entry_is_due_until_a_poll_was_attempted_an_interval_ago_at_most() {
        let headers = QuotaSnapshot {
            five_hour: Some(window(T0)),
            source: Some(QuotaSource::Headers),
            ..QuotaSnapshot::default()
        };
        assert_eq!(header_only_due_from(&headers, None, INTERVAL), Some(i64::MIN));
        assert_eq!(header_only_due_from(&headers, Some(T0), INTERVAL), Some(T0 + INTERVAL));
        let polled_nothing_scoped = QuotaSnapshot { scoped: Some(Vec::new()), ..headers.clone() };
        assert_eq!(
            header_only_due_from(&polled_nothing_scoped, None, INTERVAL),
            None,
            "an empty scoped list is a poll's answer"
        );
        let poll = QuotaSnapshot { source: Some(QuotaSource::Poll), ..headers };
        assert_eq!(header_only_due_from(&poll, None, INTERVAL), None);
    }

    #[test]
    fn the_main_route_is_due_at_the_earlier_of_its_time_and_the_header_only_rule() {
        let headers = QuotaSnapshot {
            five_hour: Some(window(T0)),
            source: Some(QuotaSource::Headers),
            ..QuotaSnapshot::default()
        };
        let fresh = entry(headers, T0, None);
        assert_eq!(stale_from(Some(&fresh), INTERVAL, None), T0 + INTERVAL);
        assert_eq!(main_stale_from(Some(&fresh), None, INTERVAL, None), i64::MIN, "never polled");
        assert_eq!(
            main_stale_from(Some(&fresh), Some(T0 - MINUTE_MS), INTERVAL, None),
            T0 - MINUTE_MS + INTERVAL
        );
        assert_eq!(
            main_stale_from(Some(&fresh), Some(T0 + MINUTE_MS), INTERVAL, None),
            T0 + INTERVAL,
            "an attempt never makes an entry fresher than its own time"
        );
        assert_eq!(main_stale_from(None, Some(T0), INTERVAL, None), i64::MIN);
    }
}
