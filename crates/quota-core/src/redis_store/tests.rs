//! Against a real `redis-server` on 127.0.0.1 (a random free port, no persistence, a temp dir).
//! When `redis-server` is not installed the tests say so loudly and pass, except under CI
//! (`CI` set), where `.ci/run` installs it and a missing server is a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::snapshot::QuotaEntry;

pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A fresh server, or `None` (after a loud message) when `redis-server` is not installed.
    pub(crate) fn start() -> Option<Self> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed; CI installs it (scripts/ci-redis.sh)"
            );
            eprintln!(
                "\n!!! SKIPPED: redis-server is not installed, so the Redis store tests did not run. \
                 Install it (apt-get install redis-server, or scripts/ci-redis.sh).\n"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut server = Self { child: None, port, dir: tempfile::tempdir().expect("temp dir") };
        server.run();
        Some(server)
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..500 {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The same port again, empty (no persistence).
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.run();
    }

    #[cfg(unix)]
    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        #[cfg(unix)]
        if self.child.is_some() {
            self.signal(libc::SIGCONT);
        }
        self.kill();
    }
}

fn config(server: &RedisServer) -> RedisConfig {
    let mut config = RedisConfig::new(server.url(), Some("test:".into()));
    config.op_timeout = Duration::from_millis(500);
    config.lock_ttl = Duration::from_millis(600);
    config
}

fn store(server: &RedisServer) -> RedisStore {
    RedisStore::new(&config(server)).expect("a valid URL")
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

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
        token_fingerprint: Some("0123456789abcdef".into()),
        ..RouteRecord::default()
    }
}

fn merge(key: &str, record: RouteRecord) -> StoreUpdate {
    StoreUpdate::Merge { key: key.into(), record: Box::new(record) }
}

async fn acquire(store: &RedisStore, key: &str) -> (RedisRouteLock, Option<RouteRecord>) {
    match store.try_lock_route(key).await.expect("redis answers") {
        LockTry::Acquired(locked) => *locked,
        LockTry::Held { .. } => panic!("{key} is held"),
    }
}

fn checked_at(record: Option<&RouteRecord>) -> Option<i64> {
    Some(record?.entry.as_ref()?.checked_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_lock_excludes_a_second_holder_until_released_and_fences_grow() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (store(&server), store(&server));
    let (first, _) = acquire(&a, "main:acct").await;
    assert!(matches!(
        b.try_lock_route("main:acct").await.unwrap(),
        LockTry::Held { expires_in } if expires_in <= Duration::from_millis(600)
    ));
    let (other_route, _) = acquire(&b, "fallback:x").await;
    let first_fence = first.fence();
    assert!(first.release().await.unwrap());
    let (second, _) = acquire(&b, "main:acct").await;
    assert!(second.fence() > first_fence);
    assert!(second.fence() > other_route.fence());
    drop(other_route);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_renewed_past_its_ttl_and_a_dead_holders_lock_expires() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (store(&server), store(&server));
    let (held, _) = acquire(&a, "main:acct").await;
    // Twice the TTL: only renewal keeps it.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(matches!(b.try_lock_route("main:acct").await.unwrap(), LockTry::Held { .. }));
    assert!(!held.is_lost());
    // The holder dies: no renewal, no release. The waiter gets the lock within the TTL.
    held.abandon();
    let waited = tokio::time::Instant::now();
    let taken = b.lock_route("main:acct", Duration::from_secs(5)).await.unwrap();
    assert!(taken.is_some(), "the dead holder's lock never expired");
    assert!(waited.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_rejects_the_write_of_a_holder_whose_lock_expired() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (store(&server), store(&server));
    let (stale, _) = acquire(&a, "main:acct").await;
    // A's lock runs out while A is paused (deleted here rather than waited for) and B takes it.
    let _: () = redis::cmd("DEL")
        .arg("test:lock:main:acct")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    let (fresh, _) = acquire(&b, "main:acct").await;
    b.apply_as_of(&[merge("main:acct", record(100))], Some(&fresh), i64::MAX).await.unwrap();
    // A wakes with an observation it thinks is newer: rejected, B's result stands.
    let error = a
        .apply_as_of(&[merge("main:acct", record(200))], Some(&stale), i64::MAX)
        .await
        .unwrap_err();
    assert_eq!(error, RedisStoreError::StaleLock);
    let stored = b.read_route("main:acct").await.unwrap();
    assert_eq!(checked_at(stored.as_ref()), Some(100));
    // Released by its owner only: A's release leaves B's lock alone.
    assert!(!stale.release().await.unwrap());
    assert!(matches!(a.try_lock_route("main:acct").await.unwrap(), LockTry::Held { .. }));
    assert!(fresh.release().await.unwrap());
}

/// Redis restarted empty (or flushed): the fence counter starts again, but a paused holder from
/// before and the new holder never share a fence, so the paused one's write and release fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_stay_unique_when_redis_is_flushed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (store(&server), store(&server));
    let (stale, _) = acquire(&a, "main:acct").await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw(&server).await).await.unwrap();
    let (fresh, _) = acquire(&b, "main:acct").await;
    assert!(fresh.fence() > stale.fence(), "{} then {}", stale.fence(), fresh.fence());
    b.apply_as_of(&[merge("main:acct", record(300))], Some(&fresh), i64::MAX).await.unwrap();
    let error = a
        .apply_as_of(&[merge("main:acct", record(200))], Some(&stale), i64::MAX)
        .await
        .unwrap_err();
    assert_eq!(error, RedisStoreError::StaleLock);
    assert!(!stale.release().await.unwrap());
    assert!(matches!(a.try_lock_route("main:acct").await.unwrap(), LockTry::Held { .. }));
    let stored = b.read_route("main:acct").await.unwrap();
    assert_eq!(checked_at(stored.as_ref()), Some(300));
    let next = fresh.fence();
    assert!(fresh.release().await.unwrap());
    // The counter carries on from there: the next holder's fence is larger still.
    let (after, _) = acquire(&a, "main:acct").await;
    assert!(after.fence() > next);
    // A fence crosses as an integer, whatever its size (the lock holds the same text).
    let held: String = redis::cmd("GET")
        .arg("test:lock:main:acct")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert_eq!(held, after.fence().to_string());
    assert!(after.release().await.unwrap());
}

/// A lock key written by hand without an expiry gets a holder's lease: it blocks the route for
/// one lease at most, not forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_without_expiry_gets_a_lease() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    let mut connection = raw(&server).await;
    let _: () = redis::cmd("SET")
        .arg("test:lock:main:acct")
        .arg("by-hand")
        .query_async(&mut connection)
        .await
        .unwrap();
    // The lease it was given, to the millisecond: the waiter sleeps that long.
    assert!(matches!(
        s.try_lock_route("main:acct").await.unwrap(),
        LockTry::Held { expires_in } if expires_in == Duration::from_millis(600)
    ));
    let pttl: i64 =
        redis::cmd("PTTL").arg("test:lock:main:acct").query_async(&mut connection).await.unwrap();
    assert!(pttl > 0 && pttl <= 600, "{pttl}");
    let locked = s.lock_route("main:acct", Duration::from_secs(5)).await.unwrap();
    assert!(locked.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_under_the_route_prefix_that_is_no_hash_is_skipped_and_reported() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    s.apply_as_of(&[merge("main:acct", record(1))], None, i64::MAX).await.unwrap();
    let mut connection = raw(&server).await;
    let _: () = redis::cmd("SET")
        .arg("test:route:main:string")
        .arg("x")
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("test:route:main:bad")
        .arg("record")
        .arg("{not json")
        .query_async(&mut connection)
        .await
        .unwrap();
    let loaded = s.load_all_reporting().await.unwrap();
    assert_eq!(loaded.routes.keys().collect::<Vec<_>>(), ["main:acct"]);
    let mut skipped = loaded.skipped;
    skipped.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(
        skipped,
        [
            SkippedKey {
                key: "test:route:main:bad".into(),
                reason: "its record is not a route record".into()
            },
            SkippedKey { key: "test:route:main:string".into(), reason: "not a hash".into() },
        ]
    );
    assert_eq!(s.load_all_reporting().await.unwrap().routes.len(), 1);

    // Any other refusal is an error, not a skipped key: a client that may not read hashes.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("no-hget")
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-hget")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut limited = config(&server);
    limited.url = format!("redis://no-hget:secret@127.0.0.1:{}/", server.port);
    let limited = RedisStore::new(&limited).unwrap();
    assert!(matches!(limited.load_all_reporting().await, Err(RedisStoreError::Unavailable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_notice_wakes_a_waiter_long_before_the_ttl() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut long = config(&server);
    long.lock_ttl = Duration::from_secs(30);
    let (a, b) = (RedisStore::new(&long).unwrap(), RedisStore::new(&long).unwrap());
    let _ = b.notices();
    for _ in 0..200 {
        if b.is_listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.is_listening(), "the notice channel was never subscribed");
    let (held, _) = acquire(&a, "main:acct").await;
    let waiter =
        tokio::spawn(async move { b.lock_route("main:acct", Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.apply_as_of(&[merge("main:acct", record(7))], Some(&held), i64::MAX).await.unwrap();
    assert!(held.release().await.unwrap());
    // With a 30 s TTL and a 10 s wait, only the notice can have woken it.
    let (lock, record) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was not woken")
        .unwrap()
        .unwrap()
        .expect("the waiter got the lock");
    assert_eq!(checked_at(record.as_ref()), Some(7));
    drop(lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unfenced_merges_lose_no_update_and_follow_the_merge_rule() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let writers: Vec<_> = (1..=20)
        .map(|i| {
            let store = store(&server);
            tokio::spawn(async move {
                let mut update = RouteRecord {
                    last_attempt_at: Some(i),
                    last_attempt_token: Some(format!("fp{i}")),
                    ..RouteRecord::default()
                };
                if i == 7 {
                    update = record(500);
                }
                store.apply_as_of(&[merge("main:acct", update)], None, i64::MAX).await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let stored = store(&server).read_route("main:acct").await.unwrap().unwrap();
    assert_eq!(stored.last_attempt_at, Some(20));
    assert_eq!(stored.last_attempt_token.as_deref(), Some("fp20"));
    assert_eq!(checked_at(Some(&stored)), Some(500));
    // An older observation does not replace a newer one.
    let s = store(&server);
    s.apply_as_of(&[merge("main:acct", record(400))], None, i64::MAX).await.unwrap();
    assert_eq!(checked_at(s.read_route("main:acct").await.unwrap().as_ref()), Some(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_the_state_files_json_under_the_documented_keys() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    let (lock, _) = acquire(&s, "main:acct").await;
    s.apply_as_of(
        &[
            merge("main:acct", record(1)),
            merge("fallback:f1", record(2)),
            merge("fallback:gone", record(3)),
        ],
        Some(&lock),
        i64::MAX,
    )
    .await
    .unwrap();
    s.apply_as_of(&[StoreUpdate::Remove { key: "fallback:gone".into() }], None, i64::MAX)
        .await
        .unwrap();
    lock.release().await.unwrap();
    let mut connection = raw(&server).await;
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg("*").query_async(&mut connection).await.unwrap();
    keys.sort();
    assert_eq!(keys, ["test:fence", "test:route:fallback:f1", "test:route:main:acct"]);
    let json: String = redis::cmd("HGET")
        .arg("test:route:main:acct")
        .arg("record")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(json, serde_json::to_string(&record(1)).unwrap());
    let all = s.load_all_reporting().await.unwrap().routes;
    assert_eq!(all.keys().collect::<Vec<_>>(), ["fallback:f1", "main:acct"]);
    assert_eq!(all["fallback:f1"], record(2));
    // A damaged record reads as none, alone.
    let _: () = redis::cmd("HSET")
        .arg("test:route:main:bad")
        .arg("record")
        .arg("{not json")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(s.load_all_reporting().await.unwrap().routes.len(), 2);
    assert_eq!(s.read_route("main:bad").await.unwrap(), None);
}

/// Every call of `store` settles within `bound`, with an error.
async fn every_call_fails_within(store: &RedisStore, bound: Duration) {
    let calls: Vec<(&str, futures::future::BoxFuture<'_, bool>)> = vec![
        ("ping", Box::pin(async { store.ping().await.is_err() })),
        ("try_lock", Box::pin(async { store.try_lock_route("main:acct").await.is_err() })),
        (
            "lock_route",
            Box::pin(async {
                store.lock_route("main:acct", Duration::from_secs(30)).await.is_err()
            }),
        ),
        ("read", Box::pin(async { store.read_route("main:acct").await.is_err() })),
        ("load_all", Box::pin(async { store.load_all_reporting().await.is_err() })),
        (
            "apply",
            Box::pin(async {
                store.apply_as_of(&[merge("main:acct", record(9))], None, i64::MAX).await.is_err()
            }),
        ),
    ];
    for (name, call) in calls {
        let failed =
            tokio::time::timeout(bound, call).await.unwrap_or_else(|_| panic!("{name} hung"));
        assert!(failed, "{name} succeeded without Redis");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_killed_redis_fails_every_call_within_its_timeout_and_a_restart_heals() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    s.apply_as_of(&[merge("main:acct", record(1))], None, i64::MAX).await.unwrap();

    // Stops answering (SIGSTOP, which has no Windows form): connected, silent.
    #[cfg(unix)]
    {
        let (held, _) = acquire(&s, "main:held").await;
        server.signal(libc::SIGSTOP);
        every_call_fails_within(&s, Duration::from_secs(3)).await;
        assert!(tokio::time::timeout(Duration::from_secs(3), held.release())
            .await
            .expect("release hung")
            .is_err());
        server.signal(libc::SIGCONT);
    }

    // Gone (connection refused).
    server.kill();
    every_call_fails_within(&s, Duration::from_secs(3)).await;

    // Back (empty): the same store works again, notices included.
    server.restart();
    let mut healed = false;
    for _ in 0..50 {
        if s.ping().await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healed, "the store never reconnected");
    s.apply_as_of(&[merge("main:acct", record(2))], None, i64::MAX).await.unwrap();
    assert_eq!(checked_at(s.read_route("main:acct").await.unwrap().as_ref()), Some(2));
    let (lock, _) = acquire(&s, "main:acct").await;
    assert!(lock.release().await.unwrap());
}

#[test]
fn urls_are_redacted_and_prefix_globs_escaped() {
    assert_eq!(redact("redis://user:secret@h:6380/2"), "redis://h:6380/2");
    assert_eq!(redact("rediss://:p%40ss@host"), "rediss://host");
    assert_eq!(redact("redis://127.0.0.1:1/"), "redis://127.0.0.1:1/");
    assert_eq!(redact("no scheme"), "<redis url>");
    let keys = Keys { prefix: "a*[b]:".into() };
    assert_eq!(keys.route_pattern(), r"a\*\[b\]:route:*");
    assert!(matches!(
        RedisStore::new(&RedisConfig::new("http://x", None)),
        Err(RedisStoreError::BadUrl(_))
    ));
}
