//! Combining header frames and polls into one cached snapshot (docs/headers.md).

use super::snapshot::{FieldSources, QuotaSnapshot, QuotaSource, WindowKind};

/// Merges one header frame into the cached snapshot, if any
/// (docs/headers.md#merging-a-header-frame); `accountIdentity` is the cache's, else the frame's.
pub fn merge_header_frame(cached: Option<&QuotaSnapshot>, frame: &QuotaSnapshot) -> QuotaSnapshot {
    // Nothing cached: poll-only fields stay absent, even those of a pushed whole snapshot.
    let nothing = QuotaSnapshot::default();
    let cached = cached.unwrap_or(&nothing);
    let headers = Some(QuotaSource::Headers);
    let poll_binding = cached.binding_window.is_some()
        && cached.binding_window_source.or(cached.source) == Some(QuotaSource::Poll);
    let (binding_window, binding_window_source) = if poll_binding {
        (cached.binding_window.clone(), Some(QuotaSource::Poll))
    } else {
        (frame.binding_window.clone(), frame.binding_window.as_ref().map(|_| QuotaSource::Headers))
    };
    let mut field_sources = FieldSources {
        scoped: Some(cached.source_of(|f| f.scoped)),
        extra_usage: Some(cached.source_of(|f| f.extra_usage)),
        fallback_advised: headers,
        ..FieldSources::default()
    };
    let identity = cached.account_identity.as_ref().or(frame.account_identity.as_ref());
    let mut merged = QuotaSnapshot {
        scoped: cached.scoped.clone(),
        extra_usage: cached.extra_usage.clone(),
        binding_window,
        binding_window_source,
        fallback_advised: frame.fallback_advised,
        source: Some(QuotaSource::Headers),
        checked_at: frame.checked_at,
        account_identity: identity.cloned(),
        ..QuotaSnapshot::default()
    };
    for kind in WindowKind::ALL {
        let (from_frame, from_cache) = (frame.window(kind), cached.window(kind));
        // A cached window observed strictly later than the frame's stays, with its source.
        let frame_wins =
            from_frame.is_some_and(|f| from_cache.is_none_or(|c| c.checked_at <= f.checked_at));
        *merged.window_mut(kind) = if frame_wins { from_frame } else { from_cache }.cloned();
        *field_sources.window_mut(kind) =
            if frame_wins { headers } else { Some(cached.source_of(|s| s.window(kind))) };
    }
    merged.field_sources = Some(field_sources);
    merged.settle_field_sources();
    merged
}

/// Merges a finished poll into the cached snapshot, if any (docs/headers.md#merging-a-poll).
pub fn merge_poll_result(cached: Option<&QuotaSnapshot>, poll: &QuotaSnapshot) -> QuotaSnapshot {
    let mut merged = poll.clone();
    if merged.binding_window.is_some() && merged.binding_window_source.is_none() {
        merged.binding_window_source = Some(QuotaSource::Poll);
    }
    let nothing = QuotaSnapshot::default();
    let cached = cached.unwrap_or(&nothing);
    let mut field_sources = FieldSources::default();
    for kind in WindowKind::ALL {
        let (from_cache, from_poll) = (cached.window(kind), poll.window(kind));
        let poll_time =
            poll.checked_at.or_else(|| from_poll.map(|w| w.checked_at)).unwrap_or(i64::MIN);
        // A window the poll lacks is kept while its period still runs.
        let cache_wins = from_cache.is_some_and(|c| {
            c.checked_at > poll_time
                || (from_poll.is_none() && c.resets_at_ms().is_some_and(|reset| reset > poll_time))
        });
        *merged.window_mut(kind) = if cache_wins { from_cache } else { from_poll }.cloned();
        *field_sources.window_mut(kind) =
            Some(if cache_wins { cached.source_of(|s| s.window(kind)) } else { QuotaSource::Poll });
    }
    // `None < Some(_)`: a poll without a time is older than any cached time.
    if cached.source == Some(QuotaSource::Headers)
        && cached.checked_at > poll.checked_at
        && merged.fallback_advised.is_none()
        && cached.fallback_advised.is_some()
    {
        merged.fallback_advised = cached.fallback_advised;
        field_sources.fallback_advised = Some(cached.source_of(|f| f.fallback_advised));
    }
    if merged.account_identity.is_none() {
        merged.account_identity.clone_from(&cached.account_identity);
    }
    merged.field_sources = Some(field_sources);
    merged.settle_field_sources();
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ExtraUsage, QuotaMoney, QuotaWindow, ScopedQuotaWindow};

    fn window(used: f64, checked_at: i64) -> QuotaWindow {
        QuotaWindow::from_used(used, Some("2026-09-14T02:10:00Z".into()), checked_at)
    }

    fn money(amount: f64) -> QuotaMoney {
        QuotaMoney { amount_minor: amount, currency: "USD".into(), exponent: 2 }
    }

    fn poll(checked_at: i64) -> QuotaSnapshot {
        QuotaSnapshot {
            five_hour: Some(window(10.0, checked_at)),
            seven_day: Some(window(60.0, checked_at)),
            scoped: Some(vec![ScopedQuotaWindow {
                used_percent: 22.0,
                remaining_percent: 78.0,
                resets_at: None,
                checked_at,
                id: "claude-weekly-scoped-claude-fable-5-1".into(),
                title: "Fable only".into(),
                model_id: Some("claude-fable-5-1".into()),
                model_name: "Fable".into(),
            }]),
            extra_usage: Some(ExtraUsage {
                used: money(1261.0),
                limit: money(10000.0),
                utilization_percent: Some(12.61),
                severity: None,
                exhausted: false,
            }),
            binding_window: Some("seven_day".into()),
            binding_window_source: Some(QuotaSource::Poll),
            source: Some(QuotaSource::Poll),
            checked_at: Some(checked_at),
            account_identity: Some("main@example".into()),
            ..Default::default()
        }
        .with_settled_field_sources()
    }

    fn frame(checked_at: i64) -> QuotaSnapshot {
        QuotaSnapshot {
            five_hour: Some(window(40.0, checked_at)),
            seven_day: Some(window(70.0, checked_at)),
            binding_window: Some("five_hour".into()),
            binding_window_source: Some(QuotaSource::Headers),
            fallback_advised: Some(true),
            source: Some(QuotaSource::Headers),
            checked_at: Some(checked_at),
            ..Default::default()
        }
        .with_settled_field_sources()
    }

    #[test]
    fn field_sources_say_which_source_each_present_field_came_from() {
        let merged = merge_header_frame(Some(&poll(100)), &frame(200));
        let sources = merged.field_sources.unwrap();
        assert_eq!(sources.five_hour, Some(QuotaSource::Headers));
        assert_eq!(sources.scoped, Some(QuotaSource::Poll));
        assert_eq!(sources.extra_usage, Some(QuotaSource::Poll));
        assert_eq!(sources.binding_window, Some(QuotaSource::Poll));
        assert_eq!(sources.fallback_advised, Some(QuotaSource::Headers));
        let polled = merge_poll_result(Some(&frame(300)), &poll(200));
        let sources = polled.field_sources.unwrap();
        assert_eq!(sources.five_hour, Some(QuotaSource::Headers), "the newer header window stays");
        assert_eq!(sources.scoped, Some(QuotaSource::Poll));
    }

    #[test]
    fn a_snapshot_pushed_as_headers_with_nothing_cached_says_headers_throughout() {
        // A host pushing a whole poll snapshot through the headers path: it is a header frame.
        let pushed = poll(200);
        let merged = merge_header_frame(None, &pushed);
        assert_eq!(merged.source, Some(QuotaSource::Headers));
        assert_eq!(merged.binding_window_source, Some(QuotaSource::Headers));
        let sources = merged.field_sources.unwrap();
        assert_eq!(sources.five_hour, Some(QuotaSource::Headers));
        assert_eq!(sources.binding_window, Some(QuotaSource::Headers));
        let mut unbound = frame(200);
        unbound.binding_window = None;
        assert_eq!(merge_header_frame(None, &unbound).binding_window_source, None);
    }

    #[test]
    fn a_kept_cached_window_keeps_its_source_and_a_tie_goes_to_the_frame() {
        // The cached 5h window is newer than the frame's: it stays, and so does its source.
        let mut late = frame(200);
        late.seven_day = Some(window(70.0, 400));
        let merged = merge_header_frame(Some(&poll(300)), &late);
        let sources = merged.field_sources.unwrap();
        assert_eq!(merged.five_hour, Some(window(10.0, 300)));
        assert_eq!(sources.five_hour, Some(QuotaSource::Poll));
        assert_eq!(sources.seven_day, Some(QuotaSource::Headers));
        // Observed in the same millisecond: the frame's window and source win.
        let merged = merge_header_frame(Some(&poll(300)), &frame(300));
        assert_eq!(merged.five_hour, Some(window(40.0, 300)));
        assert_eq!(merged.field_sources.unwrap().five_hour, Some(QuotaSource::Headers));
    }

    #[test]
    fn a_poll_without_a_binding_window_records_no_binding_source() {
        let mut unbound = poll(200);
        unbound.binding_window = None;
        unbound.binding_window_source = None;
        assert_eq!(merge_poll_result(None, &unbound).binding_window_source, None);
        let mut unsourced = poll(200);
        unsourced.binding_window_source = None;
        assert_eq!(
            merge_poll_result(None, &unsourced).binding_window_source,
            Some(QuotaSource::Poll)
        );
    }

    #[test]
    fn a_poll_keeps_newer_header_windows_with_their_source_and_its_own_advice() {
        let merged = merge_poll_result(Some(&frame(300)), &poll(200));
        let sources = merged.field_sources.unwrap();
        assert_eq!(merged.seven_day, Some(window(70.0, 300)));
        assert_eq!(sources.seven_day, Some(QuotaSource::Headers));
        // The poll gave advice of its own: it stands, even against a newer header frame's.
        let mut advising = poll(200);
        advising.fallback_advised = Some(false);
        let merged = merge_poll_result(Some(&frame(300)), &advising);
        assert_eq!(merged.fallback_advised, Some(false));
    }

    #[test]
    fn a_window_the_poll_lacks_is_kept_only_while_its_reset_is_strictly_ahead() {
        // `window()` resets at 2026-09-14T02:10:00Z.
        let reset = QuotaWindow::from_used(1.0, Some("2026-09-14T02:10:00Z".into()), 0)
            .resets_at_ms()
            .unwrap();
        let mut cached = poll(reset - 1_000);
        cached.seven_day = Some(window(60.0, reset - 1_000));
        let mut at_reset = poll(reset);
        at_reset.seven_day = None;
        assert_eq!(merge_poll_result(Some(&cached), &at_reset).seven_day, None);
        let mut before_reset = poll(reset - 1);
        before_reset.seven_day = None;
        assert_eq!(merge_poll_result(Some(&cached), &before_reset).seven_day, cached.seven_day);
    }

    #[test]
    fn header_windows_replace_cached_windows() {
        let merged = merge_header_frame(Some(&poll(100)), &frame(200));
        assert_eq!(merged.five_hour, Some(window(40.0, 200)));
        assert_eq!(merged.seven_day, Some(window(70.0, 200)));
        assert_eq!(merged.source, Some(QuotaSource::Headers));
        assert_eq!(merged.checked_at, Some(200));
    }

    #[test]
    fn window_absent_from_frame_keeps_cached_window() {
        let mut partial = frame(200);
        partial.seven_day = None;
        let merged = merge_header_frame(Some(&poll(100)), &partial);
        assert_eq!(merged.five_hour, Some(window(40.0, 200)));
        assert_eq!(merged.seven_day, Some(window(60.0, 100)));
    }

    #[test]
    fn late_frame_does_not_roll_back_a_newer_cached_window() {
        let merged = merge_header_frame(Some(&poll(300)), &frame(200));
        assert_eq!(merged.five_hour, Some(window(10.0, 300)));
        assert_eq!(merged.seven_day, Some(window(60.0, 300)));
    }

    #[test]
    fn scoped_and_extra_usage_are_kept_from_cache() {
        let cached = poll(100);
        let merged = merge_header_frame(Some(&cached), &frame(200));
        assert_eq!(merged.scoped, cached.scoped);
        assert_eq!(merged.extra_usage, cached.extra_usage);
    }

    #[test]
    fn headers_never_introduce_poll_only_fields() {
        let mut pushed = frame(200);
        pushed.scoped = Some(vec![]);
        pushed.extra_usage = poll(1).extra_usage;
        let merged = merge_header_frame(None, &pushed);
        assert_eq!(merged.scoped, None);
        assert_eq!(merged.extra_usage, None);

        let mut cached = poll(100);
        cached.scoped = None;
        cached.extra_usage = None;
        let merged = merge_header_frame(Some(&cached), &pushed);
        assert_eq!(merged.scoped, None);
        assert_eq!(merged.extra_usage, None);
    }

    #[test]
    fn poll_binding_window_survives_headers() {
        let merged = merge_header_frame(Some(&poll(100)), &frame(200));
        assert_eq!(merged.binding_window.as_deref(), Some("seven_day"));
        assert_eq!(merged.binding_window_source, Some(QuotaSource::Poll));
    }

    #[test]
    fn unsourced_binding_window_of_a_poll_snapshot_counts_as_poll() {
        let mut cached = poll(100);
        cached.binding_window_source = None;
        let merged = merge_header_frame(Some(&cached), &frame(200));
        assert_eq!(merged.binding_window.as_deref(), Some("seven_day"));
        assert_eq!(merged.binding_window_source, Some(QuotaSource::Poll));
    }

    #[test]
    fn header_binding_window_is_replaced_by_the_frame() {
        let older = frame(100);
        let mut newer = frame(200);
        newer.binding_window = Some("seven_day".into());
        let merged = merge_header_frame(Some(&older), &newer);
        assert_eq!(merged.binding_window.as_deref(), Some("seven_day"));
        assert_eq!(merged.binding_window_source, Some(QuotaSource::Headers));

        newer.binding_window = None;
        newer.binding_window_source = None;
        let merged = merge_header_frame(Some(&older), &newer);
        assert_eq!(merged.binding_window, None);
        assert_eq!(merged.binding_window_source, None);
    }

    #[test]
    fn fallback_comes_from_the_frame() {
        let mut cached = frame(100);
        cached.fallback_advised = Some(true);
        let mut newer = frame(200);
        newer.fallback_advised = Some(false);
        let merged = merge_header_frame(Some(&cached), &newer);
        assert_eq!(merged.fallback_advised, Some(false));
    }

    #[test]
    fn account_identity_is_kept_from_cache() {
        let mut pushed = frame(200);
        pushed.account_identity = Some("other".into());
        let merged = merge_header_frame(Some(&poll(100)), &pushed);
        assert_eq!(merged.account_identity.as_deref(), Some("main@example"));
    }

    #[test]
    fn frame_without_cache_is_a_header_snapshot() {
        let merged = merge_header_frame(None, &frame(200));
        assert_eq!(merged, frame(200));
    }

    #[test]
    fn poll_wins_whole_over_older_cache() {
        let merged = merge_poll_result(Some(&frame(100)), &poll(200));
        assert_eq!(merged, poll(200));
    }

    #[test]
    fn poll_wins_over_window_observed_at_the_same_time() {
        let merged = merge_poll_result(Some(&frame(200)), &poll(200));
        assert_eq!(merged, poll(200));
    }

    #[test]
    fn poll_keeps_newer_header_windows_and_takes_poll_only_fields() {
        let cached = merge_header_frame(Some(&poll(100)), &frame(300));
        let fresh_poll = poll(200);
        let merged = merge_poll_result(Some(&cached), &fresh_poll);
        assert_eq!(merged.five_hour, Some(window(40.0, 300)));
        assert_eq!(merged.seven_day, Some(window(70.0, 300)));
        assert_eq!(merged.scoped, fresh_poll.scoped);
        assert_eq!(merged.extra_usage, fresh_poll.extra_usage);
        assert_eq!(merged.binding_window.as_deref(), Some("seven_day"));
        assert_eq!(merged.binding_window_source, Some(QuotaSource::Poll));
        assert_eq!(merged.source, Some(QuotaSource::Poll));
        assert_eq!(merged.checked_at, Some(200));
        assert_eq!(merged.fallback_advised, Some(true));
    }

    #[test]
    fn poll_keeps_only_the_windows_that_are_newer() {
        let mut cached = poll(100);
        cached.five_hour = Some(window(40.0, 300));
        let merged = merge_poll_result(Some(&cached), &poll(200));
        assert_eq!(merged.five_hour, Some(window(40.0, 300)));
        assert_eq!(merged.seven_day, Some(window(60.0, 200)));
    }

    #[test]
    fn newer_header_window_survives_a_poll_that_lacks_it() {
        let mut fresh_poll = poll(200);
        fresh_poll.five_hour = None;
        let merged = merge_poll_result(Some(&frame(300)), &fresh_poll);
        assert_eq!(merged.five_hour, Some(window(40.0, 300)));

        // The fixtures' windows reset in September 2026, long after t=200.
        let merged = merge_poll_result(Some(&frame(100)), &fresh_poll);
        assert_eq!(merged.five_hour, Some(window(40.0, 100)));
    }

    #[test]
    fn a_poll_never_erases_a_running_window_it_did_not_observe() {
        const AFTER_RESET: i64 = 1_789_351_800_001; // just after 2026-09-14T02:10:00Z
        let mut cached = poll(100);
        cached.five_hour =
            Some(QuotaWindow::from_used(100.0, Some("2026-09-14T02:10:00Z".into()), 100));
        let mut blind = poll(200);
        blind.five_hour = None;
        blind.seven_day = None;
        let merged = merge_poll_result(Some(&cached), &blind);
        assert_eq!(merged.five_hour, cached.five_hour, "a known 100 % window was erased");
        assert_eq!(merged.seven_day, cached.seven_day);

        let mut after_reset = blind.clone();
        after_reset.checked_at = Some(AFTER_RESET);
        let merged = merge_poll_result(Some(&cached), &after_reset);
        assert_eq!(merged.five_hour, None, "a window whose period ended is not kept");
        let mut no_reset = cached;
        no_reset.seven_day = Some(QuotaWindow::from_used(50.0, None, 100));
        let merged = merge_poll_result(Some(&no_reset), &blind);
        assert_eq!(merged.seven_day, None, "a window of unknown period is not kept");
    }

    #[test]
    fn poll_replaces_cached_scoped_even_with_none() {
        let mut fresh_poll = poll(200);
        fresh_poll.scoped = Some(vec![]);
        fresh_poll.extra_usage = None;
        fresh_poll.binding_window = None;
        fresh_poll.binding_window_source = None;
        let merged = merge_poll_result(Some(&poll(100)), &fresh_poll);
        assert_eq!(merged.scoped, Some(vec![]));
        assert_eq!(merged.extra_usage, None);
        assert_eq!(merged.binding_window, None);
    }
}
