//! Where route locks and route records are shared: the state file (the processes of one
//! machine, [`crate::store`]) or Redis (several hosts, [`crate::redis_store`]). Both implement
//! [`RouteStore`]; [`SharedStore`] is what the manager holds: Redis while it answers, the state
//! file when it does not (reported once per outage), and Redis again when it is back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::time::Instant;

use crate::error::QuotaError;
use crate::redis_store::{RedisRouteLock, RedisStore, RedisStoreError};
use crate::store::{Loaded, RouteLock, RouteRecord, StateStore, StoreUpdate, MAX_CLOCK_SKEW_MS};

/// How often a Redis that stopped answering is asked again.
pub const REDIS_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// The file lock has no notices: a waiter blocks on it on the blocking pool (the OS wakes it);
/// where that fails it polls: first pause, doubling up to the last.
const FILE_POLL_FIRST: Duration = Duration::from_millis(5);
const FILE_POLL_LAST: Duration = Duration::from_millis(50);

/// Holds a route's lock until released (Redis: also wakes the waiters) or dropped.
#[derive(Debug)]
pub enum RouteGuard {
    File(RouteLock),
    Redis(RedisRouteLock),
}

impl RouteGuard {
    /// Lets the route go. A Redis lock is deleted (if still ours) and its notice published.
    pub async fn release(self) {
        match self {
            Self::File(lock) => drop(lock),
            Self::Redis(lock) => {
                let _ = lock.release().await;
            }
        }
    }
}

/// A route lock taken, and the route's record read under it.
#[derive(Debug)]
pub struct LockedRoute {
    /// `None` when the lock could not be used at all (the file's `.locks` directory is
    /// unusable...): the request goes on without it, single flight still holds in-process.
    pub guard: Option<RouteGuard>,
    pub record: Option<RouteRecord>,
    /// Why the lock or the record could not be used, for the host's report.
    pub problem: Option<QuotaError>,
}

/// What a wait for a route lock gave.
#[derive(Debug)]
pub struct LockOutcome {
    /// `None`: another holder kept it for the whole wait.
    pub locked: Option<LockedRoute>,
    /// The first try found it held.
    pub waited: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StoreError {
    /// Redis did not answer (or refused): the composite store falls back to the file.
    Unavailable(String),
    /// A fenced write whose lock had expired: rejected, the newer holder's result stands.
    StaleLock,
    /// The state file could not be used.
    State(QuotaError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(reason) => write!(f, "Redis unavailable: {reason}"),
            Self::StaleLock => write!(f, "the route lock expired before the write"),
            Self::State(error) => write!(f, "{error}"),
        }
    }
}

impl From<RedisStoreError> for StoreError {
    fn from(error: RedisStoreError) -> Self {
        match error {
            RedisStoreError::StaleLock => Self::StaleLock,
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// A home for route locks and route records shared beyond this process.
pub trait RouteStore: Send + Sync {
    /// Takes the route's lock, waiting up to `wait` for another holder (Redis: woken by its
    /// release notice or its TTL running out; file: a blocking wait the OS ends, polled where
    /// that fails), and reads the route's record
    /// under it. This is the manager's only wait on another process.
    fn lock_route<'a>(
        &'a self,
        key: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<LockOutcome, StoreError>>;

    /// One route's record, without a lock.
    fn read_route<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<RouteRecord>, StoreError>>;

    /// Every route.
    fn load_routes(&self) -> BoxFuture<'_, Result<BTreeMap<String, RouteRecord>, StoreError>>;

    /// Folds the updates in with [`RouteRecord::merge_as_of`], written by a process whose clock
    /// reads `now`. The update of the route `guard` holds is fenced (Redis rejects it when the
    /// lock expired meanwhile).
    fn apply<'a>(
        &'a self,
        updates: &'a [StoreUpdate],
        guard: Option<&'a RouteGuard>,
        now: i64,
    ) -> BoxFuture<'a, Result<Loaded, StoreError>>;
}

/// Runs a state-file call on tokio's blocking pool: file I/O never runs on a runtime worker.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, QuotaError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|e| Err(QuotaError::State { path: String::new(), reason: e.to_string() }))
        .map_err(StoreError::State)
}

impl StateStore {
    /// One try at the route's lock with the record read in the same trip to the blocking pool;
    /// `None` when held. A lock that cannot be used at all still reads the record.
    fn lock_and_read(&self, key: &str) -> Option<LockedRoute> {
        let (guard, lock_problem) = match self.try_lock_route(key) {
            Ok(Some(lock)) => (Some(RouteGuard::File(lock)), None),
            Ok(None) => return None,
            Err(error) => (None, Some(error)),
        };
        let (record, read_problem) = match self.read_route(key) {
            Ok(record) => (record, None),
            Err(error) => (None, Some(error)),
        };
        Some(LockedRoute { guard, record, problem: lock_problem.or(read_problem) })
    }
}

/// Waits, on a thread of the blocking pool (never a runtime worker, never the host's thread),
/// until the route's file lock is free: the OS wakes the waiter the moment the holder unlocks or
/// dies, where polling woke it up to 50 ms late. The lock is let go again at once: the caller
/// then takes it (or finds another process took it first) by its usual try. `false` when the
/// wait could not be made (a lock error): the caller polls. Past `limit` the caller stops
/// waiting; the thread goes on until the lock is free, then lets it go.
async fn wait_until_route_free(store: &StateStore, key: &str, limit: Duration) -> bool {
    let (store, key) = (store.clone(), key.to_owned());
    let waiter = tokio::task::spawn_blocking(move || store.lock_route_blocking(&key).map(drop));
    match tokio::time::timeout(limit, waiter).await {
        Ok(Ok(Ok(()))) | Err(_) => true,
        Ok(Ok(Err(_)) | Err(_)) => false,
    }
}

impl RouteStore for StateStore {
    fn lock_route<'a>(
        &'a self,
        key: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<LockOutcome, StoreError>> {
        async move {
            let deadline = Instant::now() + wait;
            let mut pause = FILE_POLL_FIRST;
            let mut waited = false;
            loop {
                let (store, owned_key) = (self.clone(), key.to_owned());
                let tried = tokio::task::spawn_blocking(move || store.lock_and_read(&owned_key))
                    .await
                    .unwrap_or_else(|e| {
                        Some(LockedRoute {
                            guard: None,
                            record: None,
                            problem: Some(QuotaError::State {
                                path: String::new(),
                                reason: e.to_string(),
                            }),
                        })
                    });
                if let Some(locked) = tried {
                    return Ok(LockOutcome { locked: Some(locked), waited });
                }
                waited = true;
                let now = Instant::now();
                if now >= deadline {
                    return Ok(LockOutcome { locked: None, waited });
                }
                if !wait_until_route_free(self, key, deadline - now).await {
                    // No blocking lock here (an error): poll instead.
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(FILE_POLL_LAST);
                }
            }
        }
        .boxed()
    }

    fn read_route<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<RouteRecord>, StoreError>> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || store.read_route(&key)).boxed()
    }

    fn load_routes(&self) -> BoxFuture<'_, Result<BTreeMap<String, RouteRecord>, StoreError>> {
        let store = self.clone();
        blocking(move || store.load().map(|loaded| loaded.state.routes)).boxed()
    }

    fn apply<'a>(
        &'a self,
        updates: &'a [StoreUpdate],
        _guard: Option<&'a RouteGuard>,
        now: i64,
    ) -> BoxFuture<'a, Result<Loaded, StoreError>> {
        // Under the file lock, with the route lock held by the caller: no fence needed.
        let (store, updates) = (self.clone(), updates.to_vec());
        let trusted_until = now.saturating_add(MAX_CLOCK_SKEW_MS);
        blocking(move || store.apply_as_of(&updates, trusted_until)).boxed()
    }
}

impl RouteStore for RedisStore {
    fn lock_route<'a>(
        &'a self,
        key: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<LockOutcome, StoreError>> {
        async move {
            let (locked, waited) = RedisStore::lock_route_waited(self, key, wait).await?;
            Ok(LockOutcome {
                locked: locked.map(|(lock, record)| LockedRoute {
                    guard: Some(RouteGuard::Redis(lock)),
                    record,
                    problem: None,
                }),
                waited,
            })
        }
        .boxed()
    }

    fn read_route<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<RouteRecord>, StoreError>> {
        async move { Ok(RedisStore::read_route(self, key).await?) }.boxed()
    }

    fn load_routes(&self) -> BoxFuture<'_, Result<BTreeMap<String, RouteRecord>, StoreError>> {
        async move { Ok(self.load_all().await?) }.boxed()
    }

    fn apply<'a>(
        &'a self,
        updates: &'a [StoreUpdate],
        guard: Option<&'a RouteGuard>,
        now: i64,
    ) -> BoxFuture<'a, Result<Loaded, StoreError>> {
        async move {
            let lock = match guard {
                Some(RouteGuard::Redis(lock)) => Some(lock),
                _ => None,
            };
            let trusted_until = now.saturating_add(MAX_CLOCK_SKEW_MS);
            RedisStore::apply_as_of(self, updates, lock, trusted_until).await?;
            Ok(Loaded::default())
        }
        .boxed()
    }
}

/// Which store the composite uses right now (`stats().sharedStore`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    /// Redis answers: locks and records are shared across hosts.
    Redis,
    /// The state file (no Redis configured, or Redis does not answer).
    File,
    /// Neither: this process keeps everything in memory.
    Memory,
}

impl StoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::File => "file",
            Self::Memory => "memory",
        }
    }
}

struct RedisSide {
    store: RedisStore,
    /// Redis stopped answering: calls go to the file until the probe hears it again.
    down: AtomicBool,
    /// Times the store fell back to the file (`stats().redisFallbacks`).
    fallbacks: AtomicU64,
}

/// The manager's shared store: Redis first when configured, the state file when Redis does not
/// answer (and as the write-through copy), or nothing (memory only).
#[derive(Clone)]
pub struct SharedStore {
    file: Option<StateStore>,
    redis: Option<Arc<RedisSide>>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("file", &self.file.as_ref().map(StateStore::path))
            .field("redis", &self.redis.as_ref().map(|r| r.store.target()))
            .field("mode", &self.mode())
            .finish()
    }
}

impl SharedStore {
    pub fn new(file: Option<StateStore>, redis: Option<RedisStore>) -> Self {
        Self {
            file,
            redis: redis.map(|store| {
                Arc::new(RedisSide {
                    store,
                    down: AtomicBool::new(false),
                    fallbacks: AtomicU64::new(0),
                })
            }),
        }
    }

    pub fn file(&self) -> Option<&StateStore> {
        self.file.as_ref()
    }

    pub fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_ref().map(|side| &side.store)
    }

    /// Nothing is shared: memory only.
    pub fn is_memory_only(&self) -> bool {
        self.file.is_none() && self.redis.is_none()
    }

    pub fn mode(&self) -> StoreMode {
        match (&self.redis, &self.file) {
            (Some(side), _) if !side.down.load(Ordering::SeqCst) => StoreMode::Redis,
            (_, Some(_)) => StoreMode::File,
            (_, None) => StoreMode::Memory,
        }
    }

    /// How many times Redis stopped answering and the file took over.
    pub fn redis_fallbacks(&self) -> u64 {
        self.redis.as_ref().map_or(0, |side| side.fallbacks.load(Ordering::SeqCst))
    }

    /// Redis while it is up.
    fn live_redis(&self) -> Option<&Arc<RedisSide>> {
        self.redis.as_ref().filter(|side| !side.down.load(Ordering::SeqCst))
    }

    /// Redis did not answer: the file takes over, reported once for this outage, and a probe
    /// hands back to Redis when it answers again.
    fn redis_failed(&self, side: &Arc<RedisSide>, reason: &str) {
        if side.down.swap(true, Ordering::SeqCst) {
            return;
        }
        side.fallbacks.fetch_add(1, Ordering::SeqCst);
        let fallback = if self.file.is_some() {
            "the local state file (single flight on this machine only)"
        } else {
            "memory (single flight in this process only)"
        };
        eprintln!(
            "anthropic-quota-manager: Redis shared store unavailable ({reason}); using {fallback} until it answers again"
        );
        let side = Arc::downgrade(side);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REDIS_PROBE_INTERVAL).await;
                let Some(side) = side.upgrade() else { return };
                if side.store.ping().await.is_ok() {
                    side.down.store(false, Ordering::SeqCst);
                    eprintln!(
                        "anthropic-quota-manager: Redis shared store {} answers again; sharing across hosts resumed",
                        side.store.target()
                    );
                    return;
                }
            }
        });
    }

    /// Takes the route's lock where the routes are shared now. `Ok` with `locked: None` and
    /// `waited` set when another holder kept it; memory-only mode takes no lock.
    pub async fn lock_route(&self, key: &str, wait: Duration) -> Result<LockOutcome, StoreError> {
        if let Some(side) = self.live_redis() {
            match RouteStore::lock_route(&side.store, key, wait).await {
                Err(StoreError::Unavailable(reason)) => self.redis_failed(side, &reason),
                answer => return answer,
            }
        }
        match &self.file {
            Some(file) => RouteStore::lock_route(file, key, wait).await,
            None => Ok(LockOutcome {
                locked: Some(LockedRoute { guard: None, record: None, problem: None }),
                waited: false,
            }),
        }
    }

    /// One route's record, without a lock, from where the routes are shared now.
    pub async fn read_route(&self, key: &str) -> Result<Option<RouteRecord>, StoreError> {
        if let Some(side) = self.live_redis() {
            match RouteStore::read_route(&side.store, key).await {
                Err(StoreError::Unavailable(reason)) => self.redis_failed(side, &reason),
                answer => return answer,
            }
        }
        match &self.file {
            Some(file) => RouteStore::read_route(file, key).await,
            None => Ok(None),
        }
    }

    /// Writes the updates to Redis (fenced by `guard`) while it answers, and to the state file.
    /// The file's result is returned (its quarantine and schema reports); a rejected fenced
    /// write is returned as [`StoreError::StaleLock`] after the file was written.
    pub async fn apply(
        &self,
        updates: &[StoreUpdate],
        guard: Option<&RouteGuard>,
    ) -> Result<Loaded, StoreError> {
        self.apply_as_of(updates, guard, i64::MAX).await
    }

    /// [`SharedStore::apply`] by a process whose clock reads `now`: a record dated after it,
    /// beyond the skew allowed, yields to the update.
    pub async fn apply_as_of(
        &self,
        updates: &[StoreUpdate],
        guard: Option<&RouteGuard>,
        now: i64,
    ) -> Result<Loaded, StoreError> {
        let mut shared = Ok(());
        if let Some(side) = self.live_redis() {
            match RouteStore::apply(&side.store, updates, guard, now).await {
                Ok(_) => {}
                Err(StoreError::Unavailable(reason)) => self.redis_failed(side, &reason),
                Err(other) => shared = Err(other),
            }
        }
        let written = match &self.file {
            Some(file) => RouteStore::apply(file, updates, None, now).await,
            None => Ok(Loaded::default()),
        };
        shared.and(written)
    }

    /// Every route: from Redis while it answers, else from the file.
    pub async fn load_routes(&self) -> Result<BTreeMap<String, RouteRecord>, StoreError> {
        if let Some(side) = self.live_redis() {
            match side.store.load_routes().await {
                Err(StoreError::Unavailable(reason)) => self.redis_failed(side, &reason),
                answer => return answer,
            }
        }
        match &self.file {
            Some(file) => file.load_routes().await,
            None => Ok(BTreeMap::new()),
        }
    }
}

#[cfg(test)]
mod tests;
