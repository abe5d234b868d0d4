//! The main identity and its generations (docs/compat.md#main-identity), and the host transport (docs/endpoint.md#host-transports).

use crate::support::*;
use quota_core::manager::MainTarget;
use quota_core::transport::{HostAnswer, HostTransport, PollRequest, Transport};

#[tokio::test]
async fn identity_generation_moves_only_on_a_change_and_a_new_identity_clears_the_old_backoff() {
    let server = endpoint(0).await;
    server.status.store(429, Ordering::SeqCst);
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    assert_eq!(manager.set_main_identity(Some("a"), true, false), None);
    assert_eq!(manager.set_main_identity(Some("a"), true, false), None);
    assert_eq!(manager.main_identity_generation(), 1);
    manager.refresh_main(Some("a"), "t").await.unwrap_err();
    assert!(manager.is_backed_off());
    clock.advance(1_000);
    assert_eq!(manager.main_error_generation(), 1, "the error set it once");
    assert_eq!(manager.set_main_identity(Some("b"), true, false), Some(2));
    assert_eq!(manager.main_identity_generation(), 2);
    assert!(!manager.is_backed_off());
    assert_eq!(manager.main_error_cleared_at(), Some(START + 1_000));
}

#[tokio::test]
async fn a_request_bound_refresh_rejects_once_the_identity_moved_on() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    manager.set_main_identity(Some("a"), true, false);
    let generation = manager.main_identity_generation();
    manager.set_main_identity(Some("b"), true, false);
    let error = manager
        .begin_refresh_main_for(MainTarget::Named("a"), "t", Some(generation))
        .wait
        .await
        .unwrap_err();
    assert_eq!(error.code(), "QUOTA_IDENTITY_CHANGED");
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn seeding_keeps_a_newer_in_memory_error_over_a_persisted_clear() {
    let server = endpoint(0).await;
    server.status.store(429, Ordering::SeqCst);
    let clock = ManualClock::new(START);
    let manager = manager(config(&server.url, None), &clock);
    manager.refresh_main(Some("a"), "t").await.unwrap_err();
    let cleared_before_the_error = HostStorage::from_value(&serde_json::json!({
        "mainAccountId": "a",
        "quota": { "mainQuotaErrorGeneration": 0, "mainQuotaErrorClearedAt": START - 1 }
    }))
    .unwrap();
    manager.update_storage(Some(&cleared_before_the_error));
    assert!(manager.is_backed_off(), "a clear older than the error cannot erase it");
    let cleared_after = HostStorage::from_value(&serde_json::json!({
        "mainAccountId": "a",
        "quota": { "mainQuotaErrorGeneration": 5, "mainQuotaErrorClearedAt": START + 1 }
    }))
    .unwrap();
    manager.update_storage(Some(&cleared_after));
    assert!(!manager.is_backed_off());
    assert_eq!(manager.main_error_generation(), 5);
}

/// A transport answering every poll with a fixed host answer.
struct Answering(HostAnswer);

impl HostTransport for Answering {
    fn poll(&self, _: PollRequest) -> BoxFuture<'static, HostAnswer> {
        let answer = self.0.clone();
        async move { answer }.boxed()
    }
    fn fetches_without_token(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_host_transport_replaces_only_the_poll() {
    let clock = ManualClock::new(START);
    let transport = |answer| Some(Transport(Arc::new(Answering(answer))));
    let limited = manager(
        ManagerConfig {
            transport: transport(HostAnswer::Rejected {
                status: Some(429),
                network: false,
                retry_after_ms: Some(120_000),
                message: "slow down".into(),
            }),
            ..config("http://127.0.0.1:9/usage", None)
        },
        &clock,
    );
    assert!(limited.can_fetch_without_access_token());
    let error = limited.refresh_fallback("a", "", None).await.unwrap_err();
    assert_eq!(error.code(), "QUOTA_HTTP_ERROR");
    assert_eq!(limited.fallback_api_error("a").unwrap().next_retry_at, Some(START + 120_000));
    let polled = manager(
        ManagerConfig {
            transport: transport(HostAnswer::Response {
                status: 200,
                retry_after: None,
                body: BODY.into(),
            }),
            ..config("http://127.0.0.1:9/usage", None)
        },
        &clock,
    );
    let outcome = polled.refresh_main(Some("a"), "t").await.unwrap();
    assert!(outcome.fetched);
    assert_eq!(outcome.quota.five_hour.unwrap().used_percent, 9.0);
}
