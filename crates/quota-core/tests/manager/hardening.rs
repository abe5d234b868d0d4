//! Issue 11, the manager's part: never hang on a lock, never hammer after an identity switch,
//! never adopt another account's route, never trust the file's clock, and keep working when the
//! state file cannot be used.

use crate::support::*;
use quota_core::snapshot::QuotaWindow;
use std::sync::OnceLock;

const YEAR_MS: i64 = 365 * 24 * 3_600_000;

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Holds `<state>.lock` from another open file description, as a stopped process would.
fn hold_state_lock(state: &std::path::Path) -> std::fs::File {
    let mut name = state.file_name().unwrap().to_os_string();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.with_file_name(name))
        .unwrap();
    file.try_lock().unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_result_reaches_its_caller_while_a_stopped_process_holds_the_state_lock() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let held = hold_state_lock(&state);
    let quota = manager(config(&server.url, Some(state.clone())), &clock);
    // The write waits for the lock (up to 5 s here); the caller must not.
    let outcome =
        tokio::time::timeout(Duration::from_secs(3), quota.refresh_main(Some("alice"), "t"))
            .await
            .expect("the result is delivered while the write still waits")
            .unwrap();
    assert!(outcome.fetched);
    assert!(!state.exists(), "the write is still waiting for the lock");
    // Once the holder goes, close() lets the write finish: nothing is lost.
    drop(held);
    quota.begin_close().await;
    let file = read_json(&state);
    assert!(file["routes"]["main:alice"]["entry"]["checkedAt"].is_i64());
    assert_eq!(quota.stats().state_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn construction_does_not_wait_long_for_a_held_lock_to_set_a_corrupt_file_aside() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, b"{ not json").unwrap();
    let _held = hold_state_lock(&state);
    let clock = ManualClock::new(START);
    let started = Instant::now();
    let quota = manager(config("http://127.0.0.1:9/usage", Some(state.clone())), &clock);
    // The default wait of the store is 5 s; construction runs on the host's thread.
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(quota.stats().state_errors, 1);
    assert_eq!(std::fs::read(&state).unwrap(), b"{ not json", "left for later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_ahead_record_in_the_file_does_not_freeze_polling() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let writer = manager_of("alice", config(&server.url, Some(state.clone())), &clock);
    writer.refresh_main(Some("alice"), "t").await.unwrap();
    // Another process's clock ran a year ahead (and one wrote a ten-year backoff for bob).
    let mut file = read_json(&state);
    let entry = &mut file["routes"]["main:alice"]["entry"];
    entry["checkedAt"] = (START + YEAR_MS).into();
    entry["refreshAfter"] = (START + YEAR_MS + 300_000).into();
    std::fs::write(&state, serde_json::to_vec(&file).unwrap()).unwrap();

    let seeded = manager_of("alice", config(&server.url, Some(state.clone())), &clock);
    // Dated ahead of this machine's clock: it says nothing about now (issue 19), so it is due
    // at once, not in a year.
    assert!(seeded.is_main_stale(None), "due now");
    let before = server.requests.load(Ordering::SeqCst);
    assert!(seeded.refresh_main(Some("alice"), "t").await.unwrap().fetched);
    assert_eq!(server.requests.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_years_ahead_in_the_file_is_cut_to_the_longest_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    server.status.store(503, Ordering::SeqCst);
    let clock = ManualClock::new(START);
    let first = manager(config(&server.url, Some(state.clone())), &clock);
    first.refresh_main(Some("alice"), "t").await.unwrap_err();
    let mut file = read_json(&state);
    file["routes"]["main:alice"]["backoff"]["nextRetryAt"] = i64::MAX.into();
    std::fs::write(&state, serde_json::to_vec(&file).unwrap()).unwrap();

    let second = manager(config(&server.url, Some(state.clone())), &clock);
    let error = second.refresh_main(Some("alice"), "t").await.unwrap_err();
    let QuotaError::BackedOff { next_retry_at, .. } = error else { panic!("{error:?}") };
    let longest = BackoffConfig::default().max_retry_after_ms;
    assert!(next_retry_at <= START + longest, "{next_retry_at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_file_is_left_alone_reported_once_and_the_manager_works_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let content = br#"{"version": 99, "routes": {"main:alice": {"future": true}}}"#;
    std::fs::write(&state, content).unwrap();
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let quota = manager(config(&server.url, Some(state.clone())), &clock);
    for _ in 0..3 {
        quota.refresh_main(Some("alice"), "t").await.unwrap();
        clock.advance(10 * 60_000);
    }
    quota.begin_close().await;
    assert_eq!(std::fs::read(&state).unwrap(), content);
    assert!(quota.get_main(Some("alice")).is_some());
    let stats = quota.stats();
    assert_eq!(stats.state_errors, 0);
    assert_eq!(stats.state_writes, 0);
    assert_eq!(stats.state_file_quarantines, 0);
    assert!(stats.state_file_newer_schema >= 1);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".corrupt-")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_state_file_is_reported_and_refreshes_keep_working_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    // The route locks' directory is a file, and the state file is a directory.
    std::fs::write(dir.path().join("state.json.locks"), b"in the way").unwrap();
    std::fs::create_dir(&state).unwrap();
    let server = endpoint(100).await;
    let clock = ManualClock::new(START);
    let quota = manager(config(&server.url, Some(state.clone())), &clock);
    let calls = (0..3).map(|_| quota.refresh_main(Some("alice"), "t"));
    for outcome in futures::future::join_all(calls).await {
        outcome.unwrap();
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 1, "single flight holds");
    clock.advance(10 * 60_000);
    assert!(quota.refresh_main(Some("alice"), "t").await.unwrap().fetched);
    assert!(quota.get_main(Some("alice")).is_some());
    assert!(quota.stats().state_errors >= 1);
}

/// Records every `onApiError`.
#[derive(Default)]
struct ApiErrors(std::sync::Mutex<Vec<ApiErrorRecord>>);
impl HostEvents for ApiErrors {
    fn main_quota_fetched(&self, _: FetchedEvent) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
    fn api_error(&self, error: ApiErrorRecord, _error_generation: u64) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(error);
        async {}.boxed()
    }
    fn fallback_quota_fetched(&self, _: String, _: FetchedEvent) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
    fn fallback_api_error(&self, _: String, _: ApiErrorRecord) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
}

fn frame(used: f64, at: i64) -> QuotaSnapshot {
    QuotaSnapshot {
        five_hour: Some(QuotaWindow::from_used(used, None, at)),
        checked_at: Some(at),
        ..QuotaSnapshot::default()
    }
}

async fn identity_switch_during_a_429(state_path: Option<std::path::PathBuf>) {
    let server = endpoint(150).await;
    server.status.store(429, Ordering::SeqCst);
    let clock = ManualClock::new(START);
    let events = Arc::new(ApiErrors::default());
    let quota = manager_with(config(&server.url, state_path), None, &clock, events.clone());
    for _ in 0..5 {
        // The host names the account by its token, then by the token as an identity (the two
        // ways the API allows), re-binding the main slot while the request runs.
        let polled = quota.begin_refresh_main(None, "tok").wait;
        tokio::time::sleep(Duration::from_millis(30)).await;
        quota.push_main_frame(Some("tok"), frame(10.0, quota.now_ms()));
        let _ = polled.await;
        clock.advance(1_000);
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 1, "the backoff holds");
    assert_eq!(events.0.lock().unwrap().len(), 1, "onApiError once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_switch_during_a_request_keeps_its_failure_in_memory() {
    identity_switch_during_a_429(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_switch_during_a_request_keeps_its_failure_in_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    identity_switch_during_a_429(Some(dir.path().join("state.json"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_never_writes_under_another_accounts_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let bob = manager(config(&server.url, Some(state.clone())), &clock);
    bob.refresh_main(Some("bob"), "bob-token").await.unwrap();
    bob.begin_close().await;
    let bobs = read_json(&state)["routes"]["main:bob"].clone();

    let anonymous = manager(config(&server.url, Some(state.clone())), &clock);
    assert!(anonymous.get_main(None).is_none(), "bob's route is not ours");
    anonymous
        .background_main_refresh("alice-token")
        .expect("nothing runs, nothing is backed off")
        .await;
    anonymous.begin_close().await;
    let routes = read_json(&state)["routes"].clone();
    assert_eq!(routes["main:bob"], bobs, "bob's route untouched");
    let alice = format!("main:token:{}", quota_core::fingerprint::fingerprint("alice-token"));
    assert!(routes[alice.as_str()]["entry"].is_object(), "{routes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fallbacks_sharing_one_token_are_paced() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let paced = ManagerConfig { api_call_gap_ms: 400, ..config(&server.url, None) };
    let quota = manager(paced, &clock);
    let account = |id: &str| FallbackAccount {
        id: id.to_owned(),
        enabled: true,
        access: Some("shared".to_owned()),
        ..FallbackAccount::default()
    };
    quota.refresh_main(Some("alice"), "shared").await.unwrap();
    let started = Instant::now();
    quota.refresh_all_fallbacks(vec![account("a"), account("b")]).await;
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    // Three requests with one token: the second and the third each waited out a full gap.
    assert!(started.elapsed() >= Duration::from_millis(790), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_push_in_the_same_millisecond_as_a_poll_reaches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let quota = manager(config(&server.url, Some(state.clone())), &clock);
    quota.refresh_main(Some("alice"), "t").await.unwrap();
    let pushed = quota.push_main_frame(Some("alice"), frame(77.0, START)).unwrap();
    quota.flush().await;
    let file = read_json(&state);
    let entry = &file["routes"]["main:alice"]["entry"];
    assert_eq!(entry["checkedAt"], pushed.checked_at);
    assert_eq!(entry["quota"]["five_hour"]["usedPercent"], 77.0);
}

/// Refreshes the main route from inside `onMainQuotaFetched`, as a host may.
#[derive(Default)]
struct RefreshesItself {
    manager: OnceLock<QuotaManager>,
    inner: Arc<std::sync::Mutex<Option<bool>>>,
}
impl HostEvents for RefreshesItself {
    fn main_quota_fetched(&self, _: FetchedEvent) -> BoxFuture<'static, ()> {
        let manager = self.manager.get().unwrap().clone();
        let refresh = manager.begin_refresh_main(Some("alice"), "t").wait;
        let inner = self.inner.clone();
        async move {
            *inner.lock().unwrap() = refresh.await.map(|o| o.fetched).ok();
        }
        .boxed()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_refreshes_its_own_route_gets_the_result_without_a_deadlock() {
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let events = Arc::new(RefreshesItself::default());
    let quota = manager_with(config(&server.url, None), None, &clock, events.clone());
    events.manager.set(quota.clone()).ok().unwrap();
    let outcome =
        tokio::time::timeout(Duration::from_secs(3), quota.refresh_main(Some("alice"), "t"))
            .await
            .expect("no deadlock between the callback and its route's request")
            .unwrap();
    assert!(outcome.fetched);
    assert_eq!(*events.inner.lock().unwrap(), Some(true), "the same request's result");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

/// Writes that nobody awaits (header pushes, host writes, a forgotten account) reach the file
/// by themselves, coalesced a moment later; the host's exit writes what is still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_reach_the_file_by_themselves_and_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let clock = ManualClock::new(START);
    let quota = manager(config("http://127.0.0.1:9/usage", Some(state.clone())), &clock);
    let read_routes = || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .map(|file| file["routes"].clone())
    };
    let entry = |checked_at| quota_core::snapshot::QuotaEntry {
        quota: frame(30.0, checked_at),
        checked_at,
        refresh_after: checked_at + 60_000,
    };

    quota.push_main_frame(Some("alice"), frame(55.0, START)).unwrap();
    quota.set_fallback("b", entry(START), None);
    wait_until("a header push and a host write reaching the file", || {
        read_routes()
            .is_some_and(|r| r.get("main:alice").is_some() && r.get("fallback:b").is_some())
    })
    .await;
    quota.clear_fallback("b");
    wait_until("a forgotten account leaving the file", || {
        read_routes().is_some_and(|r| r.get("fallback:b").is_none())
    })
    .await;

    // At exit no task runs any more: the queue is written on the calling thread. The count is
    // read once the writer is idle: a write shows in the file a moment before it is counted.
    quota.flush().await;
    quota.set_fallback("c", entry(START + 1), None);
    let written = quota.stats().state_writes;
    quota.flush_now();
    assert!(read_routes().unwrap().get("fallback:c").is_some());
    assert_eq!(quota.stats().state_writes, written + 1, "each write is counted");
}
