//! Routes: identity and login binding, and slots dropped under a running poll.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_identity_drops_the_old_cache() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    manager.refresh_main(Some("alice"), "t1").await.unwrap();
    manager.refresh_main(Some("bob"), "t2").await.unwrap();
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
    assert!(manager.get_main(Some("alice")).is_none());
    assert!(manager.get_main(Some("bob")).is_some());
    manager.refresh_main(None, "raw-token").await.unwrap();
    let entry = manager.get_main(Some("raw-token")).expect("found by its token");
    assert_ne!(entry.quota.account_identity.as_deref(), Some("raw-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_login_drops_the_slot_and_refuses_old_observations() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    let old = FallbackAccount {
        id: "fb".into(),
        enabled: true,
        auth_lineage_id: Some("login-1".into()),
        ..Default::default()
    };
    let new = FallbackAccount { auth_lineage_id: Some("login-2".into()), ..old.clone() };
    manager.refresh_fallback("fb", "t", Some(&old)).await.unwrap();
    assert!(manager.get_fallback("fb", Some(&old)).is_some());
    assert!(manager.get_fallback("fb", Some(&new)).is_none(), "new login starts empty");
    let frame = QuotaSnapshot {
        five_hour: Some(quota_core::snapshot::QuotaWindow::from_used(5.0, None, START)),
        ..Default::default()
    };
    assert!(manager.push_fallback_frame("fb", frame.clone(), Some(&old)).is_none());
    assert!(manager.push_fallback_frame("fb", frame, Some(&new)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_running_while_its_account_is_cleared_caches_nothing() {
    let server = endpoint(200).await;
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    let running = manager.refresh_fallback("fb", "t", None);
    let clear = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        manager.clear_fallback("fb");
    };
    let (result, ()) = tokio::join!(running, clear);
    assert!(result.unwrap().fetched, "its caller still gets the answer");
    assert!(manager.get_fallback("fb", None).is_none());
    assert!(manager.all_fallbacks().is_empty());
}
