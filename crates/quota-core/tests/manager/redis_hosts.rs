//! Managers standing for hosts: each with a state file of its own, sharing only a real
//! `redis-server` (127.0.0.1, random port). Skipped loudly where redis-server is not installed,
//! a failure under CI (`.ci/run` installs it).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use quota_core::redis_store::{RedisConfig, RedisStore};

use crate::support::*;

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Self> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed; CI installs it (scripts/ci-redis.sh)"
            );
            eprintln!("\n!!! SKIPPED: redis-server is not installed; the manager's Redis tests did not run\n");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { child, port, _dir: dir });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_config(url: &str, redis_url: &str, dir: &tempfile::TempDir) -> ManagerConfig {
    ManagerConfig {
        redis: Some(RedisConfig::new(redis_url, Some("hosts:".into()))),
        ..config(url, Some(dir.path().join("state.json")))
    }
}

/// Hosts' clocks may disagree by up to a minute: a result another host dated that far ahead is
/// its answer; one further ahead is not, and the poll made here replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_from_a_host_up_to_a_minute_ahead_is_served_and_one_further_ahead_is_not() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let server = endpoint(0).await;
    let here = ManualClock::new(START);
    let fetched = |quota: QuotaManager| async move {
        quota.refresh_main(Some("alice"), "t").await.unwrap().fetched
    };
    for (ahead_ms, served) in [(60_000, true), (60_001, false)] {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ahead = ManualClock::new(START + ahead_ms);
        let prefix = format!("skew{ahead_ms}:");
        let with_prefix = |dir| ManagerConfig {
            redis: Some(RedisConfig::new(redis.url(), Some(prefix.clone()))),
            ..host_config(&server.url, &redis.url(), dir)
        };
        let skewed = manager(with_prefix(&dir_a), &ahead);
        let local = manager(with_prefix(&dir_b), &here);
        assert!(fetched(skewed).await);
        assert_eq!(!fetched(local).await, served, "{ahead_ms} ms ahead");
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
}

/// A record dated 9e15 in Redis (written by hand, or by a broken clock) is not fresh, and the
/// first poll replaces it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_dated_far_ahead_in_redis_is_stale_and_replaced_by_the_next_poll() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let shared = RedisStore::new(&RedisConfig::new(redis.url(), Some("hosts:".into()))).unwrap();
    let far = 9_000_000_000_000_000;
    let frame = QuotaSnapshot {
        five_hour: Some(quota_core::snapshot::QuotaWindow::from_used(100.0, None, far)),
        checked_at: Some(far),
        ..QuotaSnapshot::default()
    };
    let record = quota_core::store::RouteRecord {
        entry: Some(Arc::new(quota_core::snapshot::QuotaEntry {
            quota: frame,
            checked_at: far,
            refresh_after: far + 300_000,
        })),
        ..Default::default()
    };
    shared
        .apply_as_of(
            &[quota_core::store::StoreUpdate::Merge {
                key: "main:alice".into(),
                record: Box::new(record),
            }],
            None,
            i64::MAX,
        )
        .await
        .unwrap();
    let host = manager_of("alice", host_config(&server.url, &redis.url(), &dir), &clock);
    assert!(host.is_main_stale(None));
    let outcome = host.refresh_main(Some("alice"), "t").await.unwrap();
    assert!(outcome.fetched);
    assert_eq!(outcome.quota.five_hour.as_ref().map(|w| w.used_percent), Some(9.0));
    host.flush().await;
    let stored = shared.read_route("main:alice").await.unwrap().unwrap();
    assert_eq!(stored.entry.as_ref().unwrap().checked_at, START);
    assert!(!host.is_main_stale(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_one_request_and_one_backoff_through_redis() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = endpoint(300).await;
    let clock = ManualClock::new(START);
    let a = manager(host_config(&server.url, &redis.url(), &dir_a), &clock);
    let b = manager(host_config(&server.url, &redis.url(), &dir_b), &clock);
    let (first, second) = tokio::join!(a.refresh_main(Some("alice"), "t"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.refresh_main(Some("alice"), "t").await
    });
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    assert!(first.unwrap().fetched);
    assert!(!second.unwrap().fetched);
    assert_eq!(b.stats().joined_other_process, 1);
    assert_eq!(b.stats().lock_waits, 1);
    assert_eq!(a.stats().shared_store, "redis");
    let shared = RedisStore::new(&RedisConfig::new(redis.url(), Some("hosts:".into()))).unwrap();
    let record = shared.read_route("main:alice").await.unwrap().unwrap();
    assert!(record.entry.is_some());
    // The polling host's own file has the record too (its local copy).
    let text = std::fs::read_to_string(dir_a.path().join("state.json")).unwrap();
    assert!(text.contains("main:alice"), "{text}");

    // A failure on one host backs the route off on the other, without a request.
    server.status.store(503, Ordering::SeqCst);
    a.refresh_main(Some("bob"), "t2").await.unwrap_err();
    let error = b.refresh_main(Some("bob"), "t2").await.unwrap_err();
    assert_eq!(error.code(), "QUOTA_BACKED_OFF");
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_degrades_to_the_state_file_within_its_timeout() {
    let closed_port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let server = endpoint(0).await;
    let clock = ManualClock::new(START);
    let redis_url = format!("redis://127.0.0.1:{closed_port}/");
    let host = manager(host_config(&server.url, &redis_url, &dir), &clock);
    let other = manager(host_config(&server.url, &redis_url, &dir), &clock);
    let answer =
        tokio::time::timeout(Duration::from_secs(10), host.refresh_main(Some("alice"), "t"))
            .await
            .expect("a refresh hung on an unreachable Redis");
    assert!(answer.unwrap().fetched);
    let stats = host.stats();
    assert_eq!((stats.shared_store, stats.redis_fallbacks), ("file", 1));
    // The file still gives machine-wide single flight: the other manager adopts the result.
    assert!(!other.refresh_main(Some("alice"), "t").await.unwrap().fetched);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    assert_eq!(other.stats().joined_other_process, 1);
    assert!(std::fs::read_to_string(dir.path().join("state.json")).unwrap().contains("main:alice"));
}
