//! The merge rule and the clock bounds, through records and through writes to the file.

use super::*;

#[test]
fn merges_keep_the_newest_snapshot_and_other_routes() {
    let (_dir, store) = store();
    store
        .apply_as_of(&[merge("main:a", record(10)), merge("fallback:x", record(1))], i64::MAX)
        .unwrap();
    store.apply_as_of(&[merge("main:a", record(5))], i64::MAX).unwrap();
    let state = store.load().unwrap().state;
    assert_eq!(state.routes["main:a"].entry.as_ref().unwrap().checked_at, 10);
    assert!(state.routes.contains_key("fallback:x"));
    store.apply_as_of(&[StoreUpdate::Remove { key: "fallback:x".into() }], i64::MAX).unwrap();
    assert!(store.read_route("fallback:x").unwrap().is_none());
}

#[test]
fn the_most_recently_changed_backoff_wins_and_a_new_login_replaces_the_record() {
    let mut ours = record(10);
    ours.backoff.attempts = 3;
    ours.backoff.next_retry_at = Some(99);
    ours.backoff_updated_at = 50;
    let mut cleared = record(60);
    cleared.backoff_updated_at = 60;
    ours.merge(&cleared);
    assert_eq!(ours.backoff, BackoffState::default());
    assert_eq!(ours.entry.as_ref().unwrap().checked_at, 60);

    let mut other_login = record(1);
    other_login.lineage = Some("new".into());
    ours.merge(&other_login);
    assert_eq!(ours, other_login);
}

fn limits() -> AdoptionLimits {
    AdoptionLimits::new(&BackoffConfig::default(), 300_000)
}

#[test]
fn adopted_times_beyond_the_skew_become_now_stale_and_the_configured_maxima_hold() {
    use crate::snapshot::{ApiErrorRecord, QuotaWindow};
    const NOW: i64 = 1_789_000_000_000;
    let year_ahead = NOW + 365 * 24 * 3_600_000;
    let mut far = record(year_ahead);
    let entry = far.entry.as_mut().map(Arc::make_mut).unwrap();
    entry.quota.five_hour = Some(QuotaWindow::from_used(10.0, None, year_ahead));
    far.backoff.next_retry_at = Some(i64::MAX);
    far.backoff.last_error = Some(ApiErrorRecord {
        message: "429".into(),
        checked_at: i64::MAX,
        next_retry_at: Some(i64::MAX),
        retry_count: Some(3),
        status: Some(429),
        retry_after_ms: None,
        account_identity: None,
    });
    far.backoff_updated_at = i64::MAX;
    far.last_attempt_at = Some(i64::MAX);

    let clamped = far.clamped(NOW, &limits());
    let entry = clamped.entry.as_ref().unwrap();
    assert_eq!(entry.checked_at, NOW);
    assert_eq!(entry.quota.checked_at, Some(NOW));
    assert_eq!(entry.quota.five_hour.as_ref().unwrap().checked_at, NOW);
    // Says nothing about now: stale at once.
    assert_eq!(entry.refresh_after, NOW);
    let six_hours = 6 * 3_600_000;
    assert_eq!(clamped.backoff.next_retry_at, Some(NOW + six_hours));
    let error = clamped.backoff.last_error.as_ref().unwrap();
    assert_eq!(error.next_retry_at, Some(NOW + six_hours));
    assert_eq!(error.checked_at, NOW);
    assert_eq!(clamped.backoff_updated_at, NOW);
    assert_eq!(clamped.last_attempt_at, Some(NOW));

    // Within the skew: kept as written, `refreshAfter` bounded by the interval.
    let mut near = record(NOW + MAX_CLOCK_SKEW_MS);
    Arc::make_mut(near.entry.as_mut().unwrap()).refresh_after = i64::MAX;
    let near = near.clamped(NOW, &limits());
    let entry = near.entry.as_ref().unwrap();
    assert_eq!(entry.checked_at, NOW + MAX_CLOCK_SKEW_MS);
    assert_eq!(entry.refresh_after, NOW + MAX_CLOCK_SKEW_MS + 300_000);
    // Without a skew allowance, one millisecond ahead is too far.
    let no_skew = AdoptionLimits { max_clock_skew_ms: 0, ..limits() };
    let ahead = record(NOW + 1).clamped(NOW, &no_skew);
    assert_eq!(ahead.entry.as_ref().unwrap().checked_at, NOW);
    assert_eq!(ahead.entry.as_ref().unwrap().refresh_after, NOW);
    assert_eq!(record(NOW).clamped(NOW, &no_skew), record(NOW));

    // Sane records pass unchanged, and extreme `now` values do not overflow.
    let sane = record(NOW - 1_000);
    assert_eq!(sane.clamped(NOW, &limits()), sane);
    let _ = far.clamped(i64::MAX, &limits());
    let _ = far.clamped(i64::MIN, &limits());
}

/// The merge rule, tie by tie: on equal times what is here stays (the snapshot and its
/// fingerprint, the last attempt's token), equal backoff changes are folded together, an
/// older backoff change is ignored, and an update without a login keeps this one's.
#[test]
fn merge_keeps_what_is_here_on_ties_and_folds_equal_backoff_changes() {
    use crate::backoff::BackoffState;
    let backoff =
        |attempts, next| BackoffState { attempts, next_retry_at: Some(next), last_error: None };
    let mut here = record(5);
    here.token_fingerprint = Some("aaaaaaaaaaaaaaaa".into());
    here.backoff = backoff(3, 100);
    here.backoff_updated_at = 10;
    here.last_attempt_at = Some(7);
    here.last_attempt_token = Some("here".into());
    here.lineage = Some("login-1".into());
    let mut tie = record(5);
    tie.token_fingerprint = Some("bbbbbbbbbbbbbbbb".into());
    tie.backoff = backoff(1, 50);
    tie.backoff_updated_at = 10;
    tie.last_attempt_at = Some(7);
    tie.last_attempt_token = Some("there".into());
    let mut merged = here.clone();
    merged.merge(&tie);
    assert_eq!(merged.entry, here.entry);
    assert_eq!(merged.token_fingerprint, here.token_fingerprint);
    assert_eq!(merged.backoff, backoff(3, 100), "folded, not replaced");
    assert_eq!(merged.last_attempt_token.as_deref(), Some("here"));
    assert_eq!(merged.lineage.as_deref(), Some("login-1"));

    let mut older = tie.clone();
    older.backoff = backoff(9, 900);
    older.backoff_updated_at = 9;
    let mut merged = here.clone();
    merged.merge(&older);
    assert_eq!(merged.backoff, backoff(3, 100), "an older change is ignored");

    let mut newer = record(6);
    newer.backoff = backoff(1, 50);
    newer.backoff_updated_at = 11;
    newer.last_attempt_at = Some(8);
    newer.last_attempt_token = Some("newer".into());
    let mut merged = here;
    merged.merge(&newer);
    assert_eq!(merged.entry, newer.entry);
    assert_eq!(merged.backoff, backoff(1, 50), "a newer change replaces");
    assert_eq!(merged.last_attempt_token.as_deref(), Some("newer"));
    assert_eq!(merged.lineage.as_deref(), Some("login-1"));
}

#[test]
fn a_write_replaces_a_record_dated_after_the_writers_clock() {
    const NOW: i64 = 1_789_000_000_000;
    let (_dir, store) = store();
    let mut skewed = record(NOW + 3_600_000);
    skewed.backoff_updated_at = NOW + 3_600_000;
    store.apply_as_of(&[merge("main:a", skewed.clone())], i64::MAX).unwrap();
    // Without a bound, the later date wins as ever.
    let mut fresh = record(NOW);
    fresh.backoff_updated_at = NOW;
    let written = store.apply_as_of(&[merge("main:a", fresh.clone())], i64::MAX).unwrap();
    assert_eq!(written.state.routes["main:a"], skewed);
    // Written by a process whose clock reads NOW: the record from an hour ahead yields.
    let written = store.apply_as_of(&[merge("main:a", fresh.clone())], NOW).unwrap();
    assert_eq!(written.state.routes["main:a"].entry, fresh.entry);
    assert_eq!(written.state.routes["main:a"].backoff_updated_at, NOW);
    // A record dated up to the bound is newer, and stays.
    let mut near = record(NOW + 10);
    near.backoff_updated_at = NOW + 10;
    store.apply_as_of(&[merge("main:b", near.clone())], i64::MAX).unwrap();
    let written = store.apply_as_of(&[merge("main:b", fresh)], NOW + 10).unwrap();
    assert_eq!(written.state.routes["main:b"], near);
    // An update without an entry or a backoff change leaves a future one alone.
    store.apply_as_of(&[merge("main:c", skewed.clone())], i64::MAX).unwrap();
    let written = store.apply_as_of(&[merge("main:c", RouteRecord::default())], NOW).unwrap();
    assert_eq!(written.state.routes["main:c"], skewed);
}
