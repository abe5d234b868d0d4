//! Pacing between requests with one token.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_holds_across_managers_sharing_the_state_file_even_after_an_auth_failure() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    server.status.store(401, Ordering::SeqCst);
    let clock = ManualClock::new(START);
    let paced = |path: &std::path::Path| ManagerConfig {
        api_call_gap_ms: 400,
        ..config(&server.url, Some(path.to_owned()))
    };
    let first = manager(paced(&state), &clock);
    let second = manager(paced(&state), &clock);
    first.refresh_main(Some("alice"), "t").await.unwrap_err();
    let started = Instant::now();
    let error = second.refresh_main(Some("alice"), "t").await.unwrap_err();
    assert_eq!(error.code(), "QUOTA_AUTH_ERROR", "no backoff: it fetched itself");
    assert!(started.elapsed() >= Duration::from_millis(390), "{:?}", started.elapsed());
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}
