//! Where route locks and records are shared: Redis ([`crate::redis_store`]) while it answers, else
//! the state file ([`crate::store`]), reported once per outage (docs/redis.md#failure-behaviour).

use std::fs::File;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::QuotaError;
use crate::redis_store::{RedisRouteLock, RedisStore};
use crate::store::{Loaded, RouteRecord, StateStore, StoreUpdate, MAX_CLOCK_SKEW_MS};

/// How often a Redis that stopped answering is asked again.
pub const REDIS_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Holds a route's lock until released (Redis: also wakes the waiters) or dropped.
#[derive(Debug)]
pub enum RouteGuard {
    /// The open lock file of [`StateStore::lock_route`].
    File(File),
    Redis(RedisRouteLock),
}

impl RouteGuard {
    /// Lets the route go. A Redis lock is deleted (if still ours) and its notice published.
    pub async fn release(self) {
        if let Self::Redis(lock) = self {
            let _ = lock.release().await;
        }
    }
}

/// A route lock taken, and the route's record read under it.
#[derive(Debug, Default)]
pub struct LockedRoute {
    /// `None` when the lock cannot be used (docs/single-flight.md#without-a-shared-store).
    pub guard: Option<RouteGuard>,
    pub record: Option<RouteRecord>,
    /// Why the lock or the record could not be used, for the host's report.
    pub problem: Option<QuotaError>,
}

/// Why a call to a shared store failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Redis unreachable, silent past the operation timeout, or refusing: the file takes over.
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
    /// A fenced write whose lock had expired: the newer holder's result stands.
    #[error("the route lock expired before the write")]
    StaleLock,
    /// The Redis record kept changing under a compare-and-set for every retry.
    #[error("the route record kept changing during the write")]
    Contended,
    #[error("{0}")]
    State(#[from] QuotaError),
}

/// Where one call goes: Redis, the state file, or nowhere (memory only).
#[derive(Clone, Copy)]
enum Backend<'a> {
    Redis(&'a RedisStore),
    File(&'a StateStore),
    Memory,
}

impl Backend<'_> {
    /// Takes the route's lock, waiting up to `wait` (the file on the blocking pool, letting go a
    /// lock taken too late), and reads its record under it; `None` when another holder kept it.
    async fn lock_route(
        self,
        key: &str,
        wait: Duration,
    ) -> Result<Option<LockedRoute>, StoreError> {
        Ok(match self {
            Self::Redis(redis) => redis.lock_route(key, wait).await?.map(|(lock, record)| {
                LockedRoute { guard: Some(RouteGuard::Redis(lock)), record, problem: None }
            }),
            Self::File(file) => match lock_and_read(file, key, false).await {
                None if !wait.is_zero() => {
                    tokio::time::timeout(wait, lock_and_read(file, key, true)).await.ok().flatten()
                }
                tried => tried,
            },
            Self::Memory => Some(LockedRoute::default()),
        })
    }

    async fn read_route(self, key: &str) -> Result<Option<RouteRecord>, StoreError> {
        match self {
            Self::Redis(redis) => Ok(redis.read_route(key).await?),
            Self::File(file) => {
                let (file, key) = (file.clone(), key.to_owned());
                Ok(on_blocking_pool(move || file.read_route(&key)).await?)
            }
            Self::Memory => Ok(None),
        }
    }

    /// Folds the updates in ([`RouteRecord::merge_as_of`]) by a writer whose clock reads `now`.
    /// Redis fences the route `guard` holds; the file needs no fence (docs/redis.md#writes).
    async fn apply(
        self,
        updates: &[StoreUpdate],
        guard: Option<&RouteGuard>,
        now: i64,
    ) -> Result<Loaded, StoreError> {
        let trusted_until = now.saturating_add(MAX_CLOCK_SKEW_MS);
        match self {
            Self::Redis(redis) => {
                let lock = match guard {
                    Some(RouteGuard::Redis(lock)) => Some(lock),
                    _ => None,
                };
                redis.apply_as_of(updates, lock, trusted_until).await?;
                Ok(Loaded::default())
            }
            Self::File(file) => {
                let (file, updates) = (file.clone(), updates.to_vec());
                Ok(on_blocking_pool(move || file.apply_as_of(&updates, trusted_until)).await?)
            }
            Self::Memory => Ok(Loaded::default()),
        }
    }
}

/// Runs a state-file call on tokio's blocking pool: file I/O never runs on a runtime worker.
async fn on_blocking_pool<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, QuotaError> + Send + 'static,
) -> Result<T, QuotaError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|e| Err(QuotaError::State { path: String::new(), reason: e.to_string() }))
}

/// [`StateStore::lock_route`] and the record read under it, in one trip to the blocking pool;
/// `None` when held. A lock that cannot be used at all still reads the record.
async fn lock_and_read(file: &StateStore, key: &str, wait: bool) -> Option<LockedRoute> {
    let (file, key) = (file.clone(), key.to_owned());
    let locked = on_blocking_pool(move || {
        let (guard, lock_problem) = match file.lock_route(&key, wait) {
            Ok(Some(lock)) => (Some(RouteGuard::File(lock)), None),
            Ok(None) => return Ok(None),
            Err(error) => (None, Some(error)),
        };
        let read = file.read_route(&key);
        let problem = lock_problem.or_else(|| read.as_ref().err().cloned());
        Ok(Some(LockedRoute { guard, record: read.ok().flatten(), problem }))
    });
    locked.await.unwrap_or_else(|problem| {
        Some(LockedRoute { problem: Some(problem), ..Default::default() })
    })
}

struct RedisSide {
    store: RedisStore,
    /// Redis stopped answering: calls go to the file until the probe hears it again.
    down: AtomicBool,
    /// Times the store fell back to the file (`stats().redisFallbacks`).
    fallbacks: AtomicU64,
}

/// The manager's shared store: Redis first, the state file (also its write-through copy), or none.
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

    pub fn is_memory_only(&self) -> bool {
        self.file.is_none() && self.redis.is_none()
    }

    /// Where the routes are shared now (`stats().sharedStore`): `"redis"`, `"file"` or `"memory"`.
    pub fn mode(&self) -> &'static str {
        match self.live_redis() {
            Some(_) => "redis",
            None if self.file.is_some() => "file",
            None => "memory",
        }
    }

    /// How many times Redis stopped answering and the file took over.
    pub fn redis_fallbacks(&self) -> u64 {
        self.redis.as_ref().map_or(0, |side| side.fallbacks.load(Ordering::SeqCst))
    }

    fn live_redis(&self) -> Option<&Arc<RedisSide>> {
        self.redis.as_ref().filter(|side| !side.down.load(Ordering::SeqCst))
    }

    /// The state file, or memory when there is none.
    fn local(&self) -> Backend<'_> {
        self.file.as_ref().map_or(Backend::Memory, Backend::File)
    }

    /// `call` on Redis while it answers; `None` when it is down or stops answering now (reported).
    async fn on_live_redis<'s, T, F>(
        &'s self,
        call: impl FnOnce(Backend<'s>) -> F,
    ) -> Option<Result<T, StoreError>>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let side = self.live_redis()?;
        match call(Backend::Redis(&side.store)).await {
            Err(error @ (StoreError::Unavailable(_) | StoreError::Contended)) => {
                self.redis_failed(side, &error.to_string());
                None
            }
            answer => Some(answer),
        }
    }

    /// `call` where the routes are shared now: Redis while it answers, else the file (or memory).
    async fn redis_first<'s, T, F>(
        &'s self,
        call: impl Fn(Backend<'s>) -> F + Sync,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        match self.on_live_redis(&call).await {
            Some(answer) => answer,
            None => call(self.local()).await,
        }
    }

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
        log::warn!(
            "Redis shared store unavailable ({reason}); using {fallback} until it answers again"
        );
        let side = Arc::downgrade(side);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REDIS_PROBE_INTERVAL).await;
                let Some(side) = side.upgrade() else { return };
                if side.store.ping().await.is_ok() {
                    side.down.store(false, Ordering::SeqCst);
                    log::warn!(
                        "Redis shared store {} answers again; sharing across hosts resumed",
                        side.store.target()
                    );
                    return;
                }
            }
        });
    }

    /// Takes the route's lock where the routes are shared now (see [`Backend::lock_route`]).
    pub async fn lock_route(
        &self,
        key: &str,
        wait: Duration,
    ) -> Result<Option<LockedRoute>, StoreError> {
        self.redis_first(|backend| backend.lock_route(key, wait)).await
    }

    /// One route's record, without a lock, from where the routes are shared now.
    pub async fn read_route(&self, key: &str) -> Result<Option<RouteRecord>, StoreError> {
        self.redis_first(|backend| backend.read_route(key)).await
    }

    /// Writes the updates to Redis while it answers and to the state file ([`Backend::apply`]):
    /// the file's result, or [`StoreError::StaleLock`] (after the file was written).
    pub async fn apply_as_of(
        &self,
        updates: &[StoreUpdate],
        guard: Option<&RouteGuard>,
        now: i64,
    ) -> Result<Loaded, StoreError> {
        let shared = self.on_live_redis(|redis| redis.apply(updates, guard, now)).await;
        let written = self.local().apply(updates, None, now).await;
        match shared {
            Some(Err(error)) => Err(error),
            _ => written,
        }
    }
}

#[cfg(test)]
mod tests;
