//! Single flight: callers of one route share one request.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_of_one_route_share_one_request() {
    let server = endpoint(100).await;
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    let calls = (0..200).map(|_| manager.refresh_main(Some("alice"), "token"));
    let results = futures::future::join_all(calls).await;
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    assert!(results.iter().all(|r| r.as_ref().unwrap().fetched));
    assert_eq!(manager.stats().joined_in_flight, 199);
    let entry = manager.get_main(Some("alice")).unwrap();
    assert_eq!(entry.refresh_after, START + 5 * 60_000);
    assert_eq!(entry.quota.account_identity.as_deref(), Some("alice"));
    assert!(manager.get_main(Some("bob")).is_none());
}
