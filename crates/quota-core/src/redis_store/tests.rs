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

mod records;

pub struct RedisServer {
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

/// What the tests look at in a store and a held lock.
impl RedisStore {
    fn key_prefix(&self) -> &str {
        &self.inner.config.key_prefix
    }
}

impl RedisRouteLock {
    /// The fencing token: larger than every earlier holder's.
    fn fence(&self) -> i64 {
        self.fence
    }

    fn key(&self) -> &str {
        &self.key
    }

    /// Stops renewing without releasing, as a holder that died would.
    fn abandon(mut self) {
        self.renewal.abort();
        self.released = true;
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
    assert_eq!(error, StoreError::StaleLock);
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
    assert_eq!(error, StoreError::StaleLock);
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

/// A lock dropped without `release` (an early return, a cancelled future) is released in the
/// background: with a 30 s TTL, only that release lets the next holder in within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lock_is_released_without_waiting_for_its_ttl() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut long = config(&server);
    long.lock_ttl = Duration::from_secs(30);
    let (a, b) = (RedisStore::new(&long).unwrap(), RedisStore::new(&long).unwrap());
    let (held, _) = acquire(&a, "main:acct").await;
    assert_eq!(
        format!("{held:?}"),
        format!("RedisRouteLock {{ key: \"main:acct\", fence: {}, .. }}", held.fence())
    );
    assert_eq!(held.key(), "main:acct");
    drop(held);
    let taken = b.lock_route("main:acct", Duration::from_secs(5)).await.unwrap();
    assert!(taken.is_some(), "the dropped lock was never released");
}

/// A store that is dropped stops its listener: the `events` subscription goes away with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_unsubscribes_from_the_notices() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    let _ = s.notices();
    let subscribers = || async {
        let reply: (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("test:events")
            .query_async(&mut raw(&server).await)
            .await
            .unwrap();
        reply.1
    };
    for _ in 0..200 {
        if s.is_listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(subscribers().await, 1);
    drop(s);
    for _ in 0..100 {
        if subscribers().await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the dropped store's listener is still subscribed");
}

/// A holder whose lock was taken from it learns so at its next renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_learns_its_lock_was_lost() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    let (held, _) = acquire(&s, "main:acct").await;
    let _: () = redis::cmd("DEL")
        .arg("test:lock:main:acct")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    for _ in 0..100 {
        if held.is_lost() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the renewal never noticed that the lock was gone");
}
