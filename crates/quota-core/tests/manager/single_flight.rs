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

/// A host answers its callers later than the request ends (a JS promise settles on the event
/// loop): a call made before the first caller was answered (two calls in one synchronous run of
/// JS, the thread stalled between them on a busy machine) is concurrent with it and shares its
/// request, even though the request is already done. Once answered, a call is a new request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_before_the_first_caller_was_answered_shares_its_finished_request() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    let first = manager.begin_refresh_main(Some("alice"), "token");
    let first_id = first.attempt_id;
    // The request is over once its wait ends; the caller keeps its hold (not answered yet).
    let first_result = first.wait.await.unwrap();
    let first_hold = first.hold;
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    let second = manager.begin_refresh_main(Some("alice"), "token");
    assert_eq!(second.attempt_id, first_id, "the same request, the same promise");
    assert_eq!(second.answer().await.unwrap(), first_result);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    assert_eq!(manager.stats().joined_in_flight, 1);
    assert_eq!(manager.stats().api_calls, 1);

    drop(first_hold);
    let third = manager.begin_refresh_main(Some("alice"), "token");
    assert_ne!(third.attempt_id, first_id);
    assert!(third.answer().await.unwrap().fetched);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}
