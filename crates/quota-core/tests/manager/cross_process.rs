//! Managers sharing one state file: route locks, adopted results, shared backoff.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_manager_waits_for_the_first_and_adopts_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(300).await;
    let clock = ManualClock::new(START);
    let first = manager(config(&server.url, Some(state.clone())), &clock);
    let second = manager(config(&server.url, Some(state.clone())), &clock);
    let (a, b) = tokio::join!(first.refresh_main(Some("alice"), "t"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        second.refresh_main(Some("alice"), "t").await
    });
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    assert!(a.unwrap().fetched);
    assert!(!b.unwrap().fetched);
    assert_eq!(second.stats().joined_other_process, 1);
    assert_eq!(second.stats().lock_waits, 1);
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(!text.contains("\"t\""), "no token on disk");

    // A restart of alice's manager seeds from the file: fresh, so no request is needed.
    let restarted = manager_of("alice", config(&server.url, Some(state.clone())), &clock);
    assert!(!restarted.is_main_stale(None));
    assert!(restarted.get_main(Some("alice")).is_some());
    // A manager that was not told its account takes no main route: it may be another's.
    let anonymous = manager(config(&server.url, Some(state)), &clock);
    assert!(anonymous.get_main(None).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_armed_by_one_manager_holds_for_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    server.status.store(503, Ordering::SeqCst);
    let clock = ManualClock::new(START);
    let first = manager(config(&server.url, Some(state.clone())), &clock);
    let second = manager(config(&server.url, Some(state)), &clock);
    first.refresh_main(Some("alice"), "t").await.unwrap_err();
    let error = second.refresh_main(Some("alice"), "t").await.unwrap_err();
    assert_eq!(error.code(), "QUOTA_BACKED_OFF");
    assert!(second.is_backed_off());
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_cleared_by_another_manager_is_seen_by_one_still_backed_off() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    server.status.store(503, Ordering::SeqCst);
    let clock = ManualClock::new(START);
    let first = manager(config(&server.url, Some(state.clone())), &clock);
    let second = manager(config(&server.url, Some(state)), &clock);
    first.refresh_main(Some("alice"), "t").await.unwrap_err();
    second.refresh_main(Some("alice"), "t").await.unwrap_err();
    assert!(second.is_backed_off());

    // docs/compat.md#main-identity: clearMainBackoff clears it in every process, through the state file.
    clock.advance(1_000);
    assert!(first.clear_main_backoff().is_some());
    first.flush().await;
    server.status.store(200, Ordering::SeqCst);
    // Asked while it is still backed off, the other manager looks at the state file again (in
    // the background, at most once a second per route) and takes the clear.
    clock.advance(1_000);
    wait_until("the clear to reach the other manager", || !second.is_backed_off()).await;
    assert!(second.refresh_main(Some("alice"), "t").await.unwrap().fetched);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

/// When, holding the route lock, a refresh may answer with what another process wrote instead
/// of polling (`serve_from_shared_state`): only a result that process produced (newer than the
/// entry this one had) and that is recent (produced while this call waited, or still fresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_polls_unless_another_process_wrote_a_recent_result() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let first = manager(config(&server.url, Some(state.clone())), &clock);
    let second = manager(config(&server.url, Some(state)), &clock);
    let requests = || server.requests.load(Ordering::SeqCst);
    let refresh = |quota: &QuotaManager| {
        let quota = quota.clone();
        async move { quota.refresh_main(Some("alice"), "t").await.unwrap().fetched }
    };

    assert!(refresh(&first).await);
    // Its own entry, fresh as it is, is not another process's answer: an explicit refresh polls.
    clock.advance(1_000);
    assert!(refresh(&first).await);
    assert_eq!(requests(), 2);

    // Written by the other process just now: served.
    assert!(!refresh(&second).await);
    // Written by the other process before this call, and still fresh: served.
    clock.advance(6 * 60_000);
    assert!(refresh(&first).await);
    clock.advance(1_000);
    assert!(!refresh(&second).await);
    assert_eq!(requests(), 3);
    // Written by the other process before this call, and stale by now: polled.
    clock.advance(1_000);
    assert!(refresh(&first).await);
    clock.advance(6 * 60_000);
    assert!(refresh(&second).await);
    assert_eq!(requests(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_from_a_clock_up_to_a_minute_ahead_is_served_and_one_further_ahead_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    let here = ManualClock::new(START);
    let ahead = ManualClock::new(START + 60_000);
    let further = ManualClock::new(START + 60_001);
    let local = manager(config(&server.url, Some(state.clone())), &here);
    let skewed = manager(config(&server.url, Some(state.clone())), &ahead);
    assert!(skewed.refresh_main(Some("alice"), "t").await.unwrap().fetched);
    assert!(!local.refresh_main(Some("alice"), "t").await.unwrap().fetched);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let local = manager(config(&server.url, Some(state.clone())), &here);
    let skewed = manager(config(&server.url, Some(state)), &further);
    assert!(skewed.refresh_main(Some("alice"), "t").await.unwrap().fetched);
    assert!(local.refresh_main(Some("alice"), "t").await.unwrap().fetched);
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
}

/// Issue 17: a manager constructed after another one polled (a process started later) is
/// answered, for the account it names, by the fresh record the other one wrote for exactly that
/// account's route, however it names it; once that record has answered it, a further explicit
/// refresh asks for a newer result; and another account's record never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_started_later_takes_the_fresh_result_of_the_route_it_names() {
    async fn main_fetched(quota: &QuotaManager, id: Option<&str>, token: &str) -> bool {
        quota.refresh_main(id, token).await.unwrap().fetched
    }
    async fn fallback_fetched(quota: &QuotaManager, id: &str, token: &str) -> bool {
        quota.refresh_fallback(id, token, None).await.unwrap().fetched
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let requests = || server.requests.load(Ordering::SeqCst);
    let first = manager(config(&server.url, Some(state.clone())), &clock);
    assert!(main_fetched(&first, Some("alice"), "t").await);
    assert!(main_fetched(&first, None, "t2").await);
    assert!(fallback_fetched(&first, "fb-1", "f").await);
    first.begin_close().await;
    assert_eq!(requests(), 3);
    clock.advance(2_000);

    let later = || manager(config(&server.url, Some(state.clone())), &clock);
    let by_id = later();
    assert!(!main_fetched(&by_id, Some("alice"), "t").await);
    assert!(!main_fetched(&later(), None, "t2").await);
    assert!(!fallback_fetched(&later(), "fb-1", "f").await);
    assert_eq!(requests(), 3);

    clock.advance(2_000);
    assert!(main_fetched(&by_id, Some("alice"), "t").await);
    assert!(main_fetched(&later(), Some("bob"), "t3").await);
    assert!(fallback_fetched(&later(), "fb-2", "f2").await);
    assert_eq!(requests(), 6);
}

fn used_frame(used: f64, at: i64) -> QuotaSnapshot {
    QuotaSnapshot {
        five_hour: Some(quota_core::snapshot::QuotaWindow::from_used(used, None, at)),
        checked_at: Some(at),
        ..QuotaSnapshot::default()
    }
}

fn five_hour_used(quota: &QuotaSnapshot) -> Option<f64> {
    quota.five_hour.as_ref().map(|w| w.used_percent)
}

/// A process whose clock runs an hour ahead wrote 100 %; the endpoint says 9 %. A correct
/// process's poll wins, in its answer, its cache and the file, window after window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_poll_wins_over_a_record_from_a_clock_running_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    let here = ManualClock::new(START);
    let ahead = ManualClock::new(START + 3_600_000);
    let skewed = manager_of("alice", config(&server.url, Some(state.clone())), &ahead);
    skewed.push_main_frame(Some("alice"), used_frame(100.0, START + 3_600_000));
    skewed.flush().await;

    let local = manager_of("alice", config(&server.url, Some(state.clone())), &here);
    // Adopted at construction, but it says nothing about now.
    assert!(local.is_main_stale(None));
    for window in 0..3 {
        let now = START + window * 6 * 60_000;
        let outcome = local.refresh_main(Some("alice"), "t").await.unwrap();
        assert!(outcome.fetched, "window {window}");
        assert_eq!(five_hour_used(&outcome.quota), Some(9.0), "window {window}");
        let cached = local.get_main(Some("alice")).unwrap();
        assert_eq!(five_hour_used(&cached.quota), Some(9.0), "window {window}");
        local.flush().await;
        let file = quota_core::store::StateStore::new(state.clone()).load().unwrap();
        let entry = file.state.routes["main:alice"].entry.clone().unwrap();
        assert_eq!(entry.checked_at, now, "window {window}");
        assert_eq!(five_hour_used(&entry.quota), Some(9.0), "window {window}");
        // The next window: a process starting now gets the true figure, fresh.
        let restarted = manager_of("alice", config(&server.url, Some(state.clone())), &here);
        assert!(!restarted.is_main_stale(None), "window {window}");
        assert_eq!(five_hour_used(&restarted.get_main(Some("alice")).unwrap().quota), Some(9.0));
        here.advance(6 * 60_000);
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
}
