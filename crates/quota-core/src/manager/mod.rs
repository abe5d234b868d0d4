//! The manager (docs/single-flight.md, docs/state-file.md). This file builds it and holds its
//! shared state; each concern is a module of its own, adding its methods.

mod attempt;
mod backoff_book;
mod cache;
mod changes;
mod identity;
mod loading;
mod main_account;
mod outcome;
mod refresh;
mod routes;
mod seeding;
mod single_flight;
mod write_behind;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::backoff::BackoffConfig;
use crate::client::{ConnectionOptions, UsageClient, UsageClientConfig};
use crate::clock::Clock;
use crate::error::ConfigError;
use crate::host::HostStorage;
use crate::redis_store::{RedisConfig, RedisStore};
use crate::shared_store::SharedStore;
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{AdoptionLimits, StateStore, DEFAULT_LOCK_TIMEOUT};

pub use backoff_book::FailClosedResponse;
pub use changes::ChangeCounter;
pub use identity::{MainIdentity, MainTarget, PendingTokens};
pub use outcome::{FetchedEvent, HostEvents, RefreshOutcome};
pub use refresh::Refresh;
pub use seeding::{AwaitedSnapshots, SeedingScope};

use cache::Settings;
use changes::StateGuard;
use identity::SeenTokens;
use loading::Loading;
use routes::Routes;
use write_behind::WriteBehind;

pub const DEFAULT_CHECK_INTERVAL_MINUTES: f64 = 5.0;
pub const DEFAULT_API_CALL_GAP_MS: i64 = 1_000;
pub const DEFAULT_LOCK_TIMEOUT_MS: i64 = 15_000;
pub const DEFAULT_MAX_CONCURRENT_FETCHES: usize = 4;

/// Everything the manager needs besides the host's storage.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub usage: UsageClientConfig,
    /// Overrides `storage.quota.checkIntervalMinutes`.
    pub check_interval_minutes: Option<f64>,
    /// Overrides `storage.quota.refreshEveryNRequests`.
    pub refresh_every_n_requests: Option<i64>,
    pub api_call_gap_ms: i64,
    pub lock_timeout_ms: i64,
    pub max_concurrent_fetches: usize,
    pub backoff: BackoffConfig,
    /// `None` keeps everything in memory.
    pub state_path: Option<std::path::PathBuf>,
    /// The host's transport (`fetchImpl`, `fetchQuotaSnapshot`); `None` polls over HTTP.
    pub transport: Option<crate::transport::Transport>,
    /// Extra trusted roots and the proxy, read from the host's environment by the binding.
    pub connection: ConnectionOptions,
    /// The Redis shared store (several hosts); `None`: the state file alone.
    pub redis: Option<RedisConfig>,
}

/// The longest a state-file read or write on the host's thread waits for the file's lock.
const HOST_THREAD_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// The shortest bound on the state-file lock: a busy machine must not make writes give up.
const MIN_STATE_LOCK_WAIT_MS: i64 = 200;

impl ManagerConfig {
    /// The state-file lock wait: `lockTimeoutMs` in 200 ms..5 s (docs/state-file.md#atomic-writes).
    fn state_lock_wait(&self) -> std::time::Duration {
        let ms = self.lock_timeout_ms.max(MIN_STATE_LOCK_WAIT_MS).unsigned_abs();
        std::time::Duration::from_millis(ms).min(DEFAULT_LOCK_TIMEOUT)
    }
}

/// The mutable state, behind one mutex never held across an await. Mutable borrows bump the
/// change counter ([`changes`]): no interior mutability here, or a change goes unannounced.
struct State {
    closed: bool,
    settings: Settings,
    routes: Routes,
    /// Pacing: token fingerprint → the last time a usage request went out with it here.
    last_call_by_token: HashMap<String, i64>,
    writes: WriteBehind,
}

struct Inner {
    config: ManagerConfig,
    clock: Arc<dyn Clock>,
    client: UsageClient,
    /// The state file: seeding at construction and the write at the host's exit.
    store: Option<StateStore>,
    /// Where route locks and records are shared: Redis, the state file, or nothing.
    shared: SharedStore,
    events: Arc<dyn HostEvents>,
    stats: Arc<Stats>,
    runtime: tokio::runtime::Handle,
    fallback_fetch_slots: Semaphore,
    state: Mutex<State>,
    changes: ChangeCounter,
    /// The state file's load, run off the host's thread; every state access waits for it.
    loading: Loading,
    /// One state-file write at a time, each taking all queued (docs/state-file.md#write-behind).
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The tokens the host handed over (which identities are tokens).
    seen_tokens: SeenTokens,
}

/// The quota manager. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct QuotaManager {
    inner: Arc<Inner>,
}

impl QuotaManager {
    /// A manager seeded from the state file, then the host's storage (docs/state-file.md#seeding).
    pub fn new(
        config: ManagerConfig,
        mut storage: Option<HostStorage>,
        clock: Arc<dyn Clock>,
        events: Arc<dyn HostEvents>,
        stats: Arc<Stats>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, ConfigError> {
        let client = UsageClient::with_options(config.usage.clone(), &config.connection)?;
        let store = config
            .state_path
            .clone()
            .map(|path| StateStore::new(path).with_lock_timeout(config.state_lock_wait()));
        let redis = config.redis.as_ref().map(RedisStore::new).transpose()?;
        let shared = SharedStore::new(store.clone(), redis);
        let manager = Self {
            inner: Arc::new(Inner {
                fallback_fetch_slots: Semaphore::new(config.max_concurrent_fetches.max(1)),
                state: Mutex::new(State {
                    closed: false,
                    settings: Settings::from_config(&config, storage.as_ref()),
                    routes: Routes::default(),
                    last_call_by_token: HashMap::new(),
                    writes: WriteBehind::default(),
                }),
                config,
                clock,
                client,
                store,
                shared,
                events,
                stats,
                runtime,
                changes: ChangeCounter::default(),
                loading: Loading::done(),
                writer: Arc::default(),
                seen_tokens: SeenTokens::default(),
            }),
        };
        if let Some(storage) = storage.as_mut() {
            manager.storage_identities(storage);
        }
        let weak = manager.downgrade();
        let seed = move || {
            if let Some(manager) = weak.upgrade() {
                manager.seed_from_state_file();
                if let Some(storage) = &storage {
                    manager.seed_main(storage, None);
                }
            }
        };
        if manager.inner.store.is_none() {
            seed();
            return Ok(manager);
        }
        // The file is read and seeded on the blocking pool: the constructor returns at once.
        manager.inner.loading.arm(Box::new(seed));
        let weak = Arc::downgrade(&manager.inner);
        manager.inner.runtime.spawn_blocking(move || {
            if let Some(inner) = weak.upgrade() {
                inner.loading.wait();
            }
        });
        Ok(manager)
    }

    /// The manager's clock (a `ManualClock` in tests).
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Bounds for times adopted from the shared file (a clock running ahead, a damaged value).
    fn adoption_limits(&self, interval_ms: i64) -> AdoptionLimits {
        AdoptionLimits::new(&self.inner.config.backoff, interval_ms)
    }

    /// Warnings about the trust store (an unreadable `SSL_CERT_FILE`...), for the host to print.
    pub fn trust_warnings(&self) -> &[String] {
        self.inner.client.trust_warnings()
    }

    fn state(&self) -> StateGuard<'_, State> {
        self.inner.loading.wait();
        let state = StateGuard::new(loading::lock(&self.inner.state), &self.inner.changes);
        // Calls the host answered from its kept `refreshMain` answer, counted on that request
        // before it can change (docs/single-flight.md#in-one-process).
        let joined = self.inner.changes.take_joined();
        if joined > 0 {
            if let Some(flight) = state.routes.main.flights.last_handed() {
                self.count_joiners(flight, joined);
            }
        }
        state
    }

    /// The change counter: it moves whenever a synchronous read's answer may have changed.
    pub fn changes(&self) -> &ChangeCounter {
        &self.inner.changes
    }

    /// The state file for a read or write on the host's thread: its lock waited for 1 s at most.
    fn store_on_host_thread(&self) -> Option<StateStore> {
        let wait = HOST_THREAD_LOCK_WAIT.min(self.inner.config.state_lock_wait());
        Some(self.inner.store.clone()?.with_lock_timeout(wait))
    }

    /// The shared state file, `None` in memory-only mode.
    pub fn state_path(&self) -> Option<&std::path::Path> {
        self.inner.store.as_ref().map(StateStore::path)
    }

    pub fn stats(&self) -> StatsSnapshot {
        // Waits for the state file's load, and counts the host's kept `refreshMain` answers.
        drop(self.state());
        StatsSnapshot {
            shared_store: self.inner.shared.mode(),
            redis_fallbacks: self.inner.shared.redis_fallbacks(),
            ..self.inner.stats.snapshot()
        }
    }

    /// A handle that does not keep the manager alive.
    pub fn downgrade(&self) -> WeakQuotaManager {
        WeakQuotaManager(Arc::downgrade(&self.inner))
    }

    /// Refuses new calls from now on; the future waits for running ones and the last write.
    pub fn begin_close(&self) -> futures::future::BoxFuture<'static, ()> {
        let running = {
            let mut state = self.state();
            state.closed = true;
            state.routes.running_flights()
        };
        let manager = self.clone();
        Box::pin(async move {
            futures::future::join_all(running).await;
            futures::future::join_all(manager.running_writes()).await;
            manager.flush().await;
        })
    }
}

/// A [`QuotaManager`] that may be gone.
pub struct WeakQuotaManager(std::sync::Weak<Inner>);

impl WeakQuotaManager {
    pub fn upgrade(&self) -> Option<QuotaManager> {
        self.0.upgrade().map(|inner| QuotaManager { inner })
    }

    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}
