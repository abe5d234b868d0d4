use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::redis_store::tests::RedisServer;
use crate::redis_store::RedisConfig;
use crate::snapshot::QuotaEntry;

fn record(checked_at: i64) -> RouteRecord {
    RouteRecord {
        entry: Some(Arc::new(QuotaEntry {
            quota: crate::snapshot::QuotaSnapshot {
                checked_at: Some(checked_at),
                ..Default::default()
            },
            checked_at,
            refresh_after: checked_at + 300_000,
        })),
        ..RouteRecord::default()
    }
}

fn merge(key: &str, checked_at: i64) -> StoreUpdate {
    StoreUpdate::Merge { key: key.into(), record: Box::new(record(checked_at)) }
}

fn checked_at(record: Option<&RouteRecord>) -> Option<i64> {
    Some(record?.entry.as_ref()?.checked_at)
}

fn redis(server: &RedisServer) -> RedisStore {
    let mut config = RedisConfig::new(server.url(), Some("t:".into()));
    config.op_timeout = Duration::from_millis(300);
    config.lock_ttl = Duration::from_millis(600);
    RedisStore::new(&config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_backend_excludes_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let file = StateStore::new(dir.path().join("state.json"));
    let store = Backend::File(&file);
    let first = store.lock_route("main:a", Duration::ZERO).await.unwrap();
    let held = first.expect("free").guard.expect("usable");
    let second = store.lock_route("main:a", Duration::from_millis(30)).await.unwrap();
    assert!(second.is_none());
    store.apply(&[merge("main:a", 5)], Some(&held), i64::MAX).await.unwrap();
    held.release().await;
    // Not a bare try: the second caller's blocking wait, abandoned after 30 ms, may still take
    // and drop the lock once it is free (under load, just as the third asks).
    let third = store.lock_route("main:a", Duration::from_secs(1)).await.unwrap();
    assert_eq!(checked_at(third.unwrap().record.as_ref()), Some(5));
    assert_eq!(file.load().unwrap().state.routes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_first_then_the_file_while_it_is_down_then_redis_again() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = StateStore::new(dir.path().join("state.json"));
    let shared = SharedStore::new(Some(file.clone()), Some(redis(&server)));
    assert_eq!(shared.mode(), "redis");
    assert_eq!(shared.redis_fallbacks(), 0);

    // Up: the lock is Redis's, the write lands in Redis and in the file.
    let locked = shared.lock_route("main:a", Duration::ZERO).await.unwrap();
    let guard = locked.unwrap().guard.unwrap();
    assert!(matches!(guard, RouteGuard::Redis(_)));
    shared.apply_as_of(&[merge("main:a", 1)], Some(&guard), i64::MAX).await.unwrap();
    guard.release().await;
    let in_redis = redis(&server).read_route("main:a").await.unwrap();
    assert_eq!(checked_at(in_redis.as_ref()), Some(1));
    assert_eq!(checked_at(file.read_route("main:a").unwrap().as_ref()), Some(1));

    // Down: every call settles, on the file; one fallback however many calls.
    server.kill();
    for at in 2..5 {
        let locked = tokio::time::timeout(
            Duration::from_secs(3),
            shared.lock_route("main:a", Duration::from_secs(10)),
        )
        .await
        .expect("the lock hung without Redis")
        .unwrap();
        let guard = locked.unwrap().guard.unwrap();
        assert!(matches!(guard, RouteGuard::File(_)));
        shared.apply_as_of(&[merge("main:a", at)], Some(&guard), i64::MAX).await.unwrap();
        guard.release().await;
    }
    assert_eq!(shared.mode(), "file");
    assert_eq!(shared.redis_fallbacks(), 1);
    assert_eq!(checked_at(file.read_route("main:a").unwrap().as_ref()), Some(4));

    // Back (empty): the probe hands over to Redis again.
    server.restart();
    for _ in 0..60 {
        if shared.mode() == "redis" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shared.mode(), "redis", "never returned to Redis");
    let locked = shared.lock_route("main:a", Duration::ZERO).await.unwrap();
    let guard = locked.unwrap().guard.unwrap();
    assert!(matches!(guard, RouteGuard::Redis(_)));
    shared.apply_as_of(&[merge("main:a", 9)], Some(&guard), i64::MAX).await.unwrap();
    guard.release().await;
    let in_redis = redis(&server).read_route("main:a").await.unwrap();
    assert_eq!(checked_at(in_redis.as_ref()), Some(9));
    assert_eq!(shared.redis_fallbacks(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_fenced_write_is_rejected_in_redis_but_kept_in_the_local_file() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = StateStore::new(dir.path().join("state.json"));
    let shared = SharedStore::new(Some(file.clone()), Some(redis(&server)));
    let locked = shared.lock_route("main:a", Duration::ZERO).await.unwrap();
    let stale = locked.unwrap().guard.unwrap();
    let other = redis(&server);
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL").arg("t:lock:main:a").query_async(&mut raw).await.unwrap();
    let (fresh, _) = other.lock_route("main:a", Duration::ZERO).await.unwrap().unwrap();
    other.apply_as_of(&[merge("main:a", 10)], Some(&fresh), i64::MAX).await.unwrap();
    let error =
        shared.apply_as_of(&[merge("main:a", 20)], Some(&stale), i64::MAX).await.unwrap_err();
    assert_eq!(error, StoreError::StaleLock);
    assert_eq!(shared.mode(), "redis", "a stale lock is no outage");
    let in_redis = other.read_route("main:a").await.unwrap();
    assert_eq!(checked_at(in_redis.as_ref()), Some(10));
    assert_eq!(checked_at(file.read_route("main:a").unwrap().as_ref()), Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_only_takes_no_lock_and_writes_nothing() {
    let shared = SharedStore::new(None, None);
    assert_eq!(shared.mode(), "memory");
    let locked = shared.lock_route("main:a", Duration::ZERO).await.unwrap();
    assert!(locked.unwrap().guard.is_none());
    assert!(shared.apply_as_of(&[merge("main:a", 1)], None, i64::MAX).await.is_ok());
    assert_eq!(shared.read_route("main:a").await.unwrap(), None);
}

#[test]
fn only_a_store_with_neither_a_file_nor_redis_is_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = || Some(StateStore::new(dir.path().join("state.json")));
    let redis = || Some(RedisStore::new(&RedisConfig::new("redis://127.0.0.1:1/", None)).unwrap());
    assert!(SharedStore::new(None, None).is_memory_only());
    assert!(!SharedStore::new(file(), None).is_memory_only());
    assert!(!SharedStore::new(None, redis()).is_memory_only());
    assert!(!SharedStore::new(file(), redis()).is_memory_only());
}

/// A waiter on the file's route lock gets it when the holder lets go within its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_lock_waiter_gets_the_lock_its_holder_lets_go_of() {
    let dir = tempfile::tempdir().unwrap();
    let file = StateStore::new(dir.path().join("state.json"));
    let held = file.lock_route("main:a", false).unwrap().expect("free");
    let waiter = {
        let file = file.clone();
        tokio::spawn(async move {
            Backend::File(&file).lock_route("main:a", Duration::from_secs(10)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter hung")
        .unwrap()
        .unwrap();
    assert!(outcome.expect("taken within the wait").guard.is_some());
}

/// When `release` resolves, the route is free: another host may take it at once. The check is
/// a blocking round trip on this single-threaded runtime, so no task of this process (a
/// release left to the background) can run before it.
#[tokio::test]
async fn a_released_redis_guard_has_freed_the_route_when_release_resolves() {
    use std::io::{Read, Write};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let shared = SharedStore::new(None, Some(redis(&server)));
    let locked = shared.lock_route("main:a", Duration::ZERO).await.unwrap();
    let guard = locked.unwrap().guard.unwrap();
    assert!(matches!(guard, RouteGuard::Redis(_)));
    guard.release().await;
    let address = server.url().trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(b"EXISTS t:lock:main:a\r\n").unwrap();
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b":0\r\n", "the lock was still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_is_read_without_a_lock_from_where_the_routes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = StateStore::new(dir.path().join("state.json"));
    Backend::File(&file).apply(&[merge("main:a", 5)], None, i64::MAX).await.unwrap();
    let read = Backend::File(&file).read_route("main:a").await.unwrap();
    assert_eq!(checked_at(read.as_ref()), Some(5));
    let shared = SharedStore::new(Some(file), None);
    assert_eq!(checked_at(shared.read_route("main:a").await.unwrap().as_ref()), Some(5));
    assert_eq!(shared.read_route("main:b").await.unwrap(), None);
    assert_eq!(SharedStore::new(None, None).read_route("main:a").await.unwrap(), None);
}

#[test]
fn modes_errors_and_the_store_describe_themselves() {
    assert_eq!(StoreError::Unavailable("refused".into()).to_string(), "Redis unavailable: refused");
    assert_eq!(StoreError::StaleLock.to_string(), "the route lock expired before the write");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let shared = SharedStore::new(Some(StateStore::new(path.clone())), None);
    let described = format!("{shared:?}");
    assert!(described.starts_with("SharedStore {"), "{described}");
    assert!(described.contains(&format!("{path:?}")), "{described}");
    assert!(described.contains(r#"mode: "file""#), "{described}");
}
