//! Backoff: the ladder, serving the cache meanwhile, and failing closed.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_climb_the_ladder_once_per_window_and_serve_the_cache_meanwhile() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    manager.refresh_main(Some("alice"), "t").await.unwrap();
    server.status.store(429, Ordering::SeqCst);
    for expected_minutes in [1, 2, 4, 8, 15, 15] {
        clock.advance(20 * 60_000);
        let error = manager.refresh_main(Some("alice"), "t").await.unwrap_err();
        assert_eq!(error.code(), "QUOTA_HTTP_ERROR");
        let record = manager.last_api_error().unwrap();
        assert_eq!(record.next_retry_at.unwrap() - record.checked_at, expected_minutes * 60_000);
        let served = manager.refresh_main(Some("alice"), "t").await.unwrap();
        assert!(!served.fetched, "backed off: served from the cache");
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 7);
    server.status.store(200, Ordering::SeqCst);
    clock.advance(20 * 60_000);
    manager.refresh_main(Some("alice"), "t").await.unwrap();
    assert!(!manager.is_backed_off());
    assert!(manager.last_api_error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_answers_with_the_documented_429() {
    let server = endpoint(0).await;
    server.status.store(429, Ordering::SeqCst);
    let clock = ManualClock::new(START);
    let storage =
        HostStorage { fail_closed_on_unknown_quota: Some(true), ..HostStorage::default() };
    let manager = QuotaManager::new(
        config(&server.url, None),
        Some(storage),
        Arc::new(clock.clone()),
        Arc::new(NoEvents),
        Arc::new(Stats::default()),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    assert!(manager.fail_closed_response().is_none(), "not backed off yet");
    manager.refresh_main(Some("alice"), "t").await.unwrap_err();
    clock.advance(59_500);
    let answer = manager.fail_closed_response().unwrap();
    assert_eq!(answer.retry_after_secs, 1, "rounded up, at least 1");
    assert_eq!(
        answer.body,
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Quota API backed off for 1s after: Claude quota check failed: 429 — nope"}}"#
    );
}

/// docs/compat.md#main-identity: the main route's error generation moves when its backoff error is cleared, a
/// success after a failure included; a success with no error before, or a fallback's, leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_main_success_after_a_failure_moves_the_error_generation_and_nothing_else_does() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let quota = manager(config(&server.url, None), &clock);
    quota.refresh_main(Some("alice"), "t").await.unwrap();
    let start = quota.main_error_generation();
    assert_eq!(start, quota.main_error_generation(), "a success with no error before");

    server.status.store(503, Ordering::SeqCst);
    quota.refresh_fallback("b", "u", None).await.unwrap_err();
    clock.advance(16 * 60_000);
    server.status.store(200, Ordering::SeqCst);
    quota.refresh_fallback("b", "u", None).await.unwrap();
    assert_eq!(quota.main_error_generation(), start, "a fallback's failure and success");

    server.status.store(503, Ordering::SeqCst);
    quota.refresh_main(Some("alice"), "t").await.unwrap_err();
    let failed = quota.main_error_generation();
    clock.advance(16 * 60_000);
    server.status.store(200, Ordering::SeqCst);
    quota.refresh_main(Some("alice"), "t").await.unwrap();
    assert_eq!(quota.main_error_generation(), failed + 1, "the main success after its failure");
    clock.advance(16 * 60_000);
    quota.refresh_main(Some("alice"), "t").await.unwrap();
    assert_eq!(quota.main_error_generation(), failed + 1);
}
