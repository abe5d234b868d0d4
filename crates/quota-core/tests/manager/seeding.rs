//! Seeding from the host's storage.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_error_older_than_the_persisted_poll_is_not_a_backoff() {
    let clock = ManualClock::new(START);
    let seeded = manager(config("http://127.0.0.1:9/usage", None), &clock);
    let error = ApiErrorRecord {
        message: "Claude quota check failed: 429 — x".into(),
        checked_at: START - 60_000,
        next_retry_at: Some(START + 3_600_000),
        retry_count: Some(1),
        status: Some(429),
        retry_after_ms: Some(3_600_000),
        account_identity: None,
    };
    let polled = QuotaSnapshot {
        five_hour: Some(quota_core::snapshot::QuotaWindow::from_used(
            5.0, None, START,
        )),
        source: Some(QuotaSource::Poll),
        checked_at: Some(START),
        ..Default::default()
    };
    let mut storage = HostStorage {
        main_account_id: Some("alice".into()),
        main_last_error: Some(error.clone()),
        ..HostStorage::default()
    };
    seeded.seed_main(&storage, None);
    assert!(
        seeded.is_backed_off(),
        "an active persisted backoff is honoured"
    );

    let fresh = manager(config("http://127.0.0.1:9/usage", None), &clock);
    storage.main_quota = Some(polled);
    fresh.seed_main(&storage, None);
    assert!(
        !fresh.is_backed_off(),
        "a later successful poll supersedes it"
    );
}
