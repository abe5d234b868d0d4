//! Header frames merged into a polled entry.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_pushes_keep_poll_only_fields_and_the_poll_deadline() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    manager.refresh_main(Some("alice"), "t").await.unwrap();
    clock.advance(60_000);
    let frame = QuotaSnapshot {
        five_hour: Some(quota_core::snapshot::QuotaWindow::from_used(50.0, None, START + 60_000)),
        checked_at: Some(START + 60_000),
        ..Default::default()
    };
    let entry = manager.push_main_frame(Some("alice"), frame).unwrap();
    assert_eq!(entry.quota.five_hour.as_ref().unwrap().used_percent, 50.0);
    assert_eq!(entry.quota.scoped.as_ref().unwrap().len(), 1, "scoped kept from the poll");
    assert_eq!(entry.refresh_after, START + 5 * 60_000, "still due when the poll ages");
    assert!(!manager.is_main_stale(None));
}
