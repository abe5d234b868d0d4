//! What every manager test needs: a local usage endpoint, a manager on a manual clock.

pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};

pub use futures::future::{BoxFuture, FutureExt};
pub use quota_core::backoff::BackoffConfig;
pub use quota_core::client::UsageClientConfig;
pub use quota_core::clock::ManualClock;
pub use quota_core::error::QuotaError;
pub use quota_core::host::{FallbackAccount, HostStorage};
pub use quota_core::manager::{
    FetchedEvent, HostEvents, MainTarget, ManagerConfig, QuotaManager, Refresh, RefreshOutcome,
};
pub use quota_core::snapshot::{ApiErrorRecord, QuotaSnapshot, QuotaSource};
pub use quota_core::stats::Stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The refresh calls of a Rust caller: `begin_refresh_main` registers at the call (`identity`
/// `None`: the account named only by its token); the others are awaited where they are called,
/// registered when first polled.
pub trait Refreshes {
    fn begin_refresh_main(&self, identity: Option<&str>, token: &str) -> Refresh;

    fn refresh_main<'a>(
        &'a self,
        identity: Option<&'a str>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<RefreshOutcome, QuotaError>>;

    fn refresh_fallback<'a>(
        &'a self,
        id: &'a str,
        token: &'a str,
        account: Option<&'a FallbackAccount>,
    ) -> BoxFuture<'a, Result<RefreshOutcome, QuotaError>>;
}

impl Refreshes for QuotaManager {
    fn begin_refresh_main(&self, identity: Option<&str>, token: &str) -> Refresh {
        let target = identity.map_or(MainTarget::Token, MainTarget::Named);
        self.begin_refresh_main_for(target, token, None)
    }

    fn refresh_main<'a>(
        &'a self,
        identity: Option<&'a str>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<RefreshOutcome, QuotaError>> {
        async move { self.begin_refresh_main(identity, token).answer().await }.boxed()
    }

    fn refresh_fallback<'a>(
        &'a self,
        id: &'a str,
        token: &'a str,
        account: Option<&'a FallbackAccount>,
    ) -> BoxFuture<'a, Result<RefreshOutcome, QuotaError>> {
        async move { self.begin_refresh_fallback(id, token, account).answer().await }.boxed()
    }
}

pub const START: i64 = 1_800_000_000_000;
pub const BODY: &str = r#"{"five_hour":{"utilization":9},"seven_day":{"utilization":68},
    "limits":[{"kind":"weekly_scoped","group":"weekly","percent":22,"is_active":true,
    "scope":{"model":{"id":"claude-fable-5-1","display_name":"Fable"}}}]}"#;

/// A local usage endpoint answering every request with `status` after `delay_ms`.
pub struct Endpoint {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    pub status: Arc<AtomicUsize>,
}

pub async fn endpoint(delay_ms: u64) -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/usage", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let status = Arc::new(AtomicUsize::new(200));
    let (counter, answer) = (requests.clone(), status.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (counter, answer) = (counter.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let status = answer.load(Ordering::SeqCst);
                let body = if status == 200 { BODY } else { "nope" };
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Endpoint { url, requests, status }
}

pub struct NoEvents;
impl HostEvents for NoEvents {
    fn main_quota_fetched(&self, _: FetchedEvent) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
    fn api_error(&self, _: ApiErrorRecord, _: u64) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
    fn fallback_quota_fetched(&self, _: String, _: FetchedEvent) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
    fn fallback_api_error(&self, _: String, _: ApiErrorRecord) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
}

/// Waits (5 s at most) for something a background task does.
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn config(url: &str, state_path: Option<std::path::PathBuf>) -> ManagerConfig {
    ManagerConfig {
        usage: UsageClientConfig {
            url: url.to_owned(),
            user_agent: "test/1".to_owned(),
            timeout: Duration::from_secs(5),
        },
        check_interval_minutes: None,
        refresh_every_n_requests: None,
        api_call_gap_ms: 0,
        lock_timeout_ms: 5_000,
        max_concurrent_fetches: 4,
        backoff: BackoffConfig { jitter: 0.0, ..BackoffConfig::default() },
        state_path,
        transport: None,
        connection: quota_core::client::ConnectionOptions::default(),
        redis: None,
    }
}

pub fn manager(config: ManagerConfig, clock: &ManualClock) -> QuotaManager {
    manager_with(config, None, clock, Arc::new(NoEvents))
}

/// A manager of the main account `identity` (the host's `mainAccountId`).
pub fn manager_of(identity: &str, config: ManagerConfig, clock: &ManualClock) -> QuotaManager {
    let storage =
        HostStorage { main_account_id: Some(identity.to_owned()), ..HostStorage::default() };
    manager_with(config, Some(storage), clock, Arc::new(NoEvents))
}

pub fn manager_with(
    config: ManagerConfig,
    storage: Option<HostStorage>,
    clock: &ManualClock,
    events: Arc<dyn HostEvents>,
) -> QuotaManager {
    QuotaManager::new(
        config,
        storage,
        Arc::new(clock.clone()),
        events,
        Arc::new(Stats::default()),
        tokio::runtime::Handle::current(),
    )
    .unwrap()
}
