//! The manager's state machine: per-route cache, backoff and single flight, the shared state
//! file, pacing, and the host callbacks. Every route (the main account of one identity, or one
//! fallback account) is refreshed by at most one request at a time in this process, and, through
//! the route's OS lock, on the whole machine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use super::backoff::{self, BackoffConfig, BackoffState};
use super::client::{UsageClient, UsageClientConfig};
use super::clock::Clock;
use super::error::QuotaError;
use super::fingerprint::fingerprint;
use super::freshness;
use super::host::{FallbackAccount, HostStorage};
use super::merge::{merge_header_frame, merge_poll_result};
use super::policy::{exhausted_until, MinimumRemaining, QuotaPolicy};
use super::snapshot::{ApiErrorRecord, QuotaEntry, QuotaSnapshot, QuotaSource};
use super::stats::{bump, bump_by, Stats, StatsSnapshot};
use super::store::{
    fallback_key, is_newer, main_key, RouteLock, RouteRecord, StateStore, StoreUpdate,
};

pub const DEFAULT_CHECK_INTERVAL_MINUTES: f64 = 5.0;
pub const DEFAULT_API_CALL_GAP_MS: i64 = 1_000;
pub const DEFAULT_LOCK_TIMEOUT_MS: i64 = 15_000;
pub const DEFAULT_MAX_CONCURRENT_FETCHES: usize = 4;
/// How long header pushes and host writes wait to be written together.
const WRITE_COALESCE_MS: u64 = 250;
/// Fallback slots remember this many replaced logins, to recognise late observations of them.
const RETIRED_LINEAGES_KEPT: usize = 8;
/// The main identity used when the host passes only a token: named by the token's
/// fingerprint, so the identity can be persisted without the token.
const TOKEN_IDENTITY_PREFIX: &str = "token:";

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
}

/// What a refresh hands back.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshOutcome {
    pub quota: QuotaSnapshot,
    /// `false` when served from the cache (backoff) or from another process's result.
    pub fetched: bool,
}

/// A successful poll, as reported to the host.
#[derive(Clone, Debug)]
pub struct FetchedEvent {
    pub quota: QuotaSnapshot,
    pub checked_at: i64,
    pub token_fingerprint: String,
    pub fetch_started_at: i64,
}

/// The host's callbacks. Each returns when the host has handled the event, so results reach
/// callers only after the host saw them.
pub trait HostEvents: Send + Sync {
    fn main_quota_fetched(&self, event: FetchedEvent) -> BoxFuture<'static, ()>;
    fn api_error(&self, error: ApiErrorRecord) -> BoxFuture<'static, ()>;
    fn fallback_quota_fetched(
        &self,
        account_id: String,
        event: FetchedEvent,
    ) -> BoxFuture<'static, ()>;
    fn fallback_api_error(
        &self,
        account_id: String,
        error: ApiErrorRecord,
    ) -> BoxFuture<'static, ()>;
}

/// The answer the plugin sends itself when it fails closed (SPEC §7).
#[derive(Clone, Debug, PartialEq)]
pub struct FailClosedResponse {
    pub retry_after_secs: i64,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RouteId {
    Main,
    Fallback(String),
}

/// How a refresh was answered, so every caller waiting on it is counted where it belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    /// By a request this process sent (or tried to send).
    Request,
    /// By another process's result, read from the state file.
    OtherProcess,
    /// From the cache, or refused, because the route is backed off.
    DuringBackoff,
}

type Settled = (Served, Result<RefreshOutcome, QuotaError>);
/// A caller's wait for a refresh that is already registered.
pub type RefreshFuture = BoxFuture<'static, Result<RefreshOutcome, QuotaError>>;
type SharedRefresh = Shared<BoxFuture<'static, Settled>>;

/// The request a route is waiting on, and its id (unique within the manager).
struct InFlight {
    id: u64,
    shared: SharedRefresh,
    /// Everyone waiting on it, its starter included; counted into `stats()` when it is done.
    callers: Arc<AtomicU64>,
}

/// A refresh registered at the call.
pub struct Refresh {
    /// Resolves with the caller's result.
    pub wait: RefreshFuture,
    /// The request the call is attached to (it started it or joined it); `None` when it was
    /// answered at once (backed off, closed). Calls with the same id get the same result.
    pub attempt_id: Option<u64>,
}

impl Refresh {
    fn ready(result: Result<RefreshOutcome, QuotaError>) -> Self {
        Self {
            wait: futures::future::ready(result).boxed(),
            attempt_id: None,
        }
    }
}

/// One route's cache, backoff and running request.
#[derive(Default)]
struct RouteSlot {
    /// Main: the account identity. Fallback: the login (`authLineageId`) the slot is bound to.
    owner: Option<String>,
    retired_owners: Vec<String>,
    /// Shared, never mutated in place: a new observation is a new `Arc`, so a reader can tell
    /// by pointer whether the entry changed.
    entry: Option<Arc<QuotaEntry>>,
    token_fingerprint: Option<String>,
    backoff: BackoffState,
    backoff_updated_at: i64,
    last_attempt_at: Option<i64>,
    last_attempt_token: Option<String>,
    /// Bumped whenever the slot is dropped, so a request started before cannot write into it.
    generation: u64,
    in_flight: Option<InFlight>,
}

impl RouteSlot {
    fn to_record(&self) -> RouteRecord {
        RouteRecord {
            entry: self.entry.as_deref().cloned(),
            token_fingerprint: self.token_fingerprint.clone(),
            backoff: self.backoff.clone(),
            backoff_updated_at: self.backoff_updated_at,
            lineage: None,
            last_attempt_at: self.last_attempt_at,
            last_attempt_token: self.last_attempt_token.clone(),
        }
    }

    /// Folds another observer's record (the state file) into the slot: newer snapshot, newer
    /// backoff.
    fn adopt(&mut self, record: &RouteRecord) {
        if is_newer(self.entry.as_deref(), record.entry.as_ref()) {
            self.entry = record.entry.clone().map(Arc::new);
            self.token_fingerprint = record.token_fingerprint.clone();
        }
        if record.backoff_updated_at > self.backoff_updated_at {
            self.backoff = record.backoff.clone();
            self.backoff_updated_at = record.backoff_updated_at;
        }
        if record.last_attempt_at > self.last_attempt_at {
            self.last_attempt_at = record.last_attempt_at;
            self.last_attempt_token = record.last_attempt_token.clone();
        }
    }

    fn served_from_cache(&self, now: i64) -> Result<RefreshOutcome, QuotaError> {
        match &self.entry {
            Some(entry) => Ok(RefreshOutcome {
                quota: entry.quota.clone(),
                fetched: false,
            }),
            None => {
                let next_retry_at = self.backoff.next_retry_at.unwrap_or(now);
                Err(QuotaError::BackedOff {
                    next_retry_at,
                    retry_after_ms: (next_retry_at - now).max(0),
                })
            }
        }
    }
}

/// Settings that come from the host's storage, with explicit options on top.
#[derive(Clone, Debug)]
struct Settings {
    interval_ms: i64,
    refresh_every_n: i64,
    minimum: MinimumRemaining,
    fail_closed: bool,
}

struct State {
    closed: bool,
    settings: Settings,
    main: RouteSlot,
    fallbacks: HashMap<String, RouteSlot>,
    /// Token fingerprint → the last time a usage request went out with it.
    last_call_by_token: HashMap<String, i64>,
    /// One counter for slot generations and request ids, so neither ever repeats.
    last_id: u64,
    /// Routes whose changes wait for the next coalesced write.
    unsaved: HashMap<String, StoreUpdate>,
    flush_scheduled: bool,
    quarantine_reported: bool,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    fn slot(&self, route: &RouteId) -> Option<&RouteSlot> {
        match route {
            RouteId::Main => Some(&self.main),
            RouteId::Fallback(id) => self.fallbacks.get(id),
        }
    }

    /// The route's slot, created when missing. A new slot gets a generation of its own, so a
    /// request started for a slot that was cleared meanwhile can never write into it.
    fn slot_mut(&mut self, route: &RouteId) -> &mut RouteSlot {
        match route {
            RouteId::Main => &mut self.main,
            RouteId::Fallback(id) => {
                if !self.fallbacks.contains_key(id) {
                    let generation = self.next_id();
                    self.fallbacks.insert(
                        id.clone(),
                        RouteSlot {
                            generation,
                            ..RouteSlot::default()
                        },
                    );
                }
                self.fallbacks.get_mut(id).expect("inserted above")
            }
        }
    }

    /// The slot a request was started for, unless it was dropped or replaced since.
    fn attempt_slot(&mut self, attempt: &Attempt) -> Option<&mut RouteSlot> {
        let slot = match &attempt.route {
            RouteId::Main => &mut self.main,
            RouteId::Fallback(id) => self.fallbacks.get_mut(id)?,
        };
        (slot.generation == attempt.generation).then_some(slot)
    }

    /// Drops a route's cache, backoff and running request (a new identity or a new login).
    fn reset_slot(&mut self, route: &RouteId, owner: Option<String>) {
        let generation = self.next_id();
        let slot = self.slot_mut(route);
        let mut retired = std::mem::take(&mut slot.retired_owners);
        retired.extend(slot.owner.take());
        let excess = retired.len().saturating_sub(RETIRED_LINEAGES_KEPT);
        retired.drain(..excess);
        *slot = RouteSlot {
            owner,
            retired_owners: retired,
            generation,
            ..RouteSlot::default()
        };
    }

    /// Binds the main slot to `identity`, dropping another identity's data.
    fn bind_main(&mut self, identity: &str) {
        match &self.main.owner {
            Some(owner) if owner == identity => {}
            Some(_) => self.reset_slot(&RouteId::Main, Some(identity.to_owned())),
            None => self.main.owner = Some(identity.to_owned()),
        }
    }

    /// Binds a fallback slot to the account's login. A new login drops the slot; an old one
    /// (replaced earlier) is refused with `false`.
    fn bind_fallback(&mut self, id: &str, lineage: Option<&str>) -> bool {
        let route = RouteId::Fallback(id.to_owned());
        let Some(lineage) = lineage.map(fingerprint) else {
            self.slot_mut(&route);
            return true;
        };
        let slot = self.slot_mut(&route);
        match &slot.owner {
            Some(owner) if *owner == lineage => true,
            _ if slot.retired_owners.contains(&lineage) => false,
            Some(_) => {
                self.reset_slot(&route, Some(lineage));
                true
            }
            None => {
                slot.owner = Some(lineage);
                true
            }
        }
    }

    fn main_matches(&self, identity: Option<&str>) -> bool {
        match (identity, &self.main.owner) {
            (None, _) => true,
            (Some(wanted), Some(owner)) => {
                // Hash only when the slot was named by a token: this runs on every request.
                owner == wanted
                    || (owner.starts_with(TOKEN_IDENTITY_PREFIX)
                        && *owner == token_identity(wanted))
            }
            (Some(_), None) => false,
        }
    }
}

/// The identity of a main account the host named only by its token.
fn token_identity(token: &str) -> String {
    format!("{TOKEN_IDENTITY_PREFIX}{}", fingerprint(token))
}

struct Inner {
    config: ManagerConfig,
    clock: Arc<dyn Clock>,
    client: UsageClient,
    store: Option<StateStore>,
    events: Arc<dyn HostEvents>,
    stats: Arc<Stats>,
    runtime: tokio::runtime::Handle,
    fallback_fetch_slots: Semaphore,
    state: Mutex<State>,
}

/// The quota manager. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct QuotaManager {
    inner: Arc<Inner>,
}

impl QuotaManager {
    /// Builds a manager and seeds it from the state file, then from the host's storage. The
    /// state file is read here, once; a corrupt one is set aside and reported.
    pub fn new(
        config: ManagerConfig,
        storage: Option<HostStorage>,
        clock: Arc<dyn Clock>,
        events: Arc<dyn HostEvents>,
        stats: Arc<Stats>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let client = UsageClient::new(config.usage.clone())?;
        let settings = settings_from(&config, storage.as_ref());
        let store = config.state_path.clone().map(StateStore::new);
        let state = State {
            closed: false,
            settings,
            main: RouteSlot::default(),
            fallbacks: HashMap::new(),
            last_call_by_token: HashMap::new(),
            last_id: 0,
            unsaved: HashMap::new(),
            flush_scheduled: false,
            quarantine_reported: false,
        };
        let manager = Self {
            inner: Arc::new(Inner {
                fallback_fetch_slots: Semaphore::new(config.max_concurrent_fetches.max(1)),
                config,
                clock,
                client,
                store,
                events,
                stats,
                runtime,
                state: Mutex::new(state),
            }),
        };
        let main_identity = storage.as_ref().and_then(|s| s.main_account_id.clone());
        manager.seed_from_state_file(main_identity.as_deref());
        if let Some(storage) = &storage {
            manager.seed_main(storage, None);
        }
        Ok(manager)
    }

    /// The manager's clock (a `ManualClock` in tests).
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    fn now(&self) -> i64 {
        self.now_ms()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than refusing every later call would.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ----- cache reads ---------------------------------------------------------------------

    pub fn get_main(&self, identity: Option<&str>) -> Option<Arc<QuotaEntry>> {
        let state = self.state();
        if !state.main_matches(identity) {
            return None;
        }
        state.main.entry.clone()
    }

    pub fn get_fallback(
        &self,
        id: &str,
        account: Option<&FallbackAccount>,
    ) -> Option<Arc<QuotaEntry>> {
        let mut state = self.state();
        if let Some(account) = account {
            if !state.bind_fallback(id, account.auth_lineage_id.as_deref()) {
                return None;
            }
        }
        state.fallbacks.get(id)?.entry.clone()
    }

    pub fn all_fallbacks(&self) -> Vec<(String, Arc<QuotaEntry>)> {
        let state = self.state();
        let mut entries: Vec<_> = state
            .fallbacks
            .iter()
            .filter_map(|(id, slot)| Some((id.clone(), slot.entry.clone()?)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    // ----- cache writes --------------------------------------------------------------------

    pub fn set_main(&self, identity: Option<&str>, entry: QuotaEntry) {
        let mut state = self.state();
        if let Some(identity) = identity {
            state.bind_main(identity);
        }
        state.main.entry = Some(Arc::new(entry));
        self.mark_unsaved(&mut state, &RouteId::Main);
    }

    pub fn set_fallback(&self, id: &str, entry: QuotaEntry, account: Option<&FallbackAccount>) {
        let mut state = self.state();
        let lineage = account.and_then(|a| a.auth_lineage_id.as_deref());
        if !state.bind_fallback(id, lineage) {
            return;
        }
        let route = RouteId::Fallback(id.to_owned());
        state.slot_mut(&route).entry = Some(Arc::new(entry));
        self.mark_unsaved(&mut state, &route);
    }

    pub fn clear_fallback(&self, id: &str) {
        let mut state = self.state();
        // A poll still running for it finds no slot of its generation and caches nothing.
        if state.fallbacks.remove(id).is_some() {
            state.unsaved.insert(
                fallback_key(id),
                StoreUpdate::Remove {
                    key: fallback_key(id),
                },
            );
            self.schedule_flush(&mut state);
        }
    }

    /// Merges a header frame (or a host-supplied snapshot) into the main cache. A frame for
    /// another identity starts that identity from nothing.
    pub fn push_main_frame(
        &self,
        identity: Option<&str>,
        frame: QuotaSnapshot,
    ) -> Option<Arc<QuotaEntry>> {
        if !frame.has_windows() {
            return None;
        }
        let mut state = self.state();
        if let Some(identity) = identity {
            state.bind_main(identity);
        }
        Some(self.merge_frame(&mut state, &RouteId::Main, frame))
    }

    /// Merges a header frame into a fallback's cache; `None` for a frame without windows or one
    /// carrying a login that was already replaced.
    pub fn push_fallback_frame(
        &self,
        id: &str,
        frame: QuotaSnapshot,
        account: Option<&FallbackAccount>,
    ) -> Option<Arc<QuotaEntry>> {
        if !frame.has_windows() {
            return None;
        }
        let mut state = self.state();
        let lineage = account.and_then(|a| a.auth_lineage_id.as_deref());
        if !state.bind_fallback(id, lineage) {
            return None;
        }
        Some(self.merge_frame(&mut state, &RouteId::Fallback(id.to_owned()), frame))
    }

    fn merge_frame(
        &self,
        state: &mut State,
        route: &RouteId,
        mut frame: QuotaSnapshot,
    ) -> Arc<QuotaEntry> {
        frame.source = Some(QuotaSource::Headers);
        let now = self.now();
        let checked_at = frame.checked_at.unwrap_or(now);
        let settings = state.settings.clone();
        let owner = account_identity(route, state);
        let slot = state.slot_mut(route);
        let mut quota = merge_header_frame(slot.entry.as_ref().map(|e| &e.quota), &frame);
        if quota.account_identity.is_none() {
            quota.account_identity = owner;
        }
        let entry = make_entry(quota, checked_at, &settings, now);
        slot.entry = Some(entry.clone());
        self.mark_unsaved(state, route);
        entry
    }

    // ----- polls ---------------------------------------------------------------------------

    /// Refreshes the main route. `identity` `None` means the host named the account only by
    /// its token.
    pub async fn refresh_main(
        &self,
        identity: Option<&str>,
        token: &str,
    ) -> Result<RefreshOutcome, QuotaError> {
        self.begin_refresh_main(identity, token).wait.await
    }

    /// Joins or starts the main refresh now, at the call, and returns the wait for its result.
    /// Registering synchronously keeps the call's place: a `close()` or an identity switch
    /// issued after it cannot overtake it.
    pub fn begin_refresh_main(&self, identity: Option<&str>, token: &str) -> Refresh {
        let identity = identity.map_or_else(|| token_identity(token), str::to_owned);
        let mut state = self.state();
        if state.closed {
            return Refresh::ready(Err(QuotaError::Closed));
        }
        state.bind_main(&identity);
        let started = self.join_or_start(&mut state, RouteId::Main, token);
        self.settle(started)
    }

    pub async fn refresh_fallback(
        &self,
        id: &str,
        token: &str,
        account: Option<&FallbackAccount>,
    ) -> Result<RefreshOutcome, QuotaError> {
        self.begin_refresh_fallback(id, token, account).wait.await
    }

    /// `begin_refresh_main` for a fallback account.
    pub fn begin_refresh_fallback(
        &self,
        id: &str,
        token: &str,
        account: Option<&FallbackAccount>,
    ) -> Refresh {
        let mut state = self.state();
        if state.closed {
            return Refresh::ready(Err(QuotaError::Closed));
        }
        let lineage = account.and_then(|a| a.auth_lineage_id.as_deref());
        if !state.bind_fallback(id, lineage) {
            // A refresh for a login that was replaced: answer for the current one instead.
            state.bind_fallback(id, None);
        }
        let started = self.join_or_start(&mut state, RouteId::Fallback(id.to_owned()), token);
        self.settle(started)
    }

    /// Refreshes every enabled account with a token whose quota is due, a few at a time.
    /// Failures are recorded on each route (backoff, callbacks), never returned.
    pub async fn refresh_all_fallbacks(&self, accounts: &[FallbackAccount]) {
        self.begin_refresh_all_fallbacks(accounts).await
    }

    /// Starts the due refreshes now; the future waits for all of them.
    pub fn begin_refresh_all_fallbacks(
        &self,
        accounts: &[FallbackAccount],
    ) -> BoxFuture<'static, ()> {
        let refreshes: Vec<RefreshFuture> = accounts
            .iter()
            .filter(|a| a.enabled && a.access.is_some())
            .filter(|a| self.is_fallback_due(a))
            .map(|account| {
                let token = account.access.as_deref().unwrap_or_default();
                self.begin_refresh_fallback(&account.id, token, Some(account))
                    .wait
            })
            .collect();
        async move {
            // Errors are on each route now; the caller asked for none.
            futures::future::join_all(refreshes).await;
        }
        .boxed()
    }

    fn is_fallback_due(&self, account: &FallbackAccount) -> bool {
        let now = self.now();
        let mut state = self.state();
        if !state.bind_fallback(&account.id, account.auth_lineage_id.as_deref()) {
            return false;
        }
        let interval = state.settings.interval_ms;
        let Some(slot) = state.fallbacks.get(&account.id) else {
            return true;
        };
        !slot.backoff.is_open(now)
            && slot.in_flight.is_none()
            && freshness::is_stale(slot.entry.as_deref(), now, interval, None)
    }

    /// A refresh of the main route that nobody awaits: `None` when one is running already,
    /// the route is backed off, or the manager is closed.
    pub fn background_main_refresh(&self, token: &str) -> Option<BoxFuture<'static, ()>> {
        let now = self.now();
        let identity = {
            let state = self.state();
            if state.closed || state.main.in_flight.is_some() || state.main.backoff.is_open(now) {
                return None;
            }
            state.main.owner.clone()
        };
        let refresh = self.begin_refresh_main(identity.as_deref(), token).wait;
        Some(
            async move {
                let _ = refresh.await;
            }
            .boxed(),
        )
    }

    /// The caller's wait: counted, when it ends, by how it was served.
    fn settle(&self, started: Started) -> Refresh {
        let stats = self.inner.stats.clone();
        let Started {
            shared,
            callers,
            attempt_id,
        } = started;
        let wait = async move {
            let (served, result) = shared.await;
            // Only the caller that started the request counts: once it is done nobody can join
            // it any more, so the tally is final before any caller hears the result.
            if let Some(callers) = callers {
                let callers = callers.load(Ordering::SeqCst);
                match served {
                    Served::OtherProcess => bump_by(&stats.joined_other_process, callers),
                    Served::DuringBackoff => bump_by(&stats.served_during_backoff, callers),
                    Served::Request => bump_by(&stats.joined_in_flight, callers - 1),
                }
            }
            result
        };
        Refresh {
            wait: wait.boxed(),
            attempt_id,
        }
    }

    /// Joins the route's running request, or starts one. Served from the cache when backed off.
    fn join_or_start(&self, state: &mut State, route: RouteId, token: &str) -> Started {
        let now = self.now();
        let slot = state.slot_mut(&route);
        if slot.backoff.is_open(now) {
            let served = (Served::DuringBackoff, slot.served_from_cache(now));
            bump(&self.inner.stats.served_during_backoff);
            return Started {
                shared: futures::future::ready(served).boxed().shared(),
                callers: None,
                attempt_id: None,
            };
        }
        if let Some(running) = &slot.in_flight {
            running.callers.fetch_add(1, Ordering::SeqCst);
            return Started {
                shared: running.shared.clone(),
                callers: None,
                attempt_id: Some(running.id),
            };
        }
        let attempt = Attempt {
            identity: match &route {
                RouteId::Main => slot.owner.clone(),
                RouteId::Fallback(id) => Some(id.clone()),
            },
            route: route.clone(),
            key: route_key(&route, slot),
            token: token.to_owned(),
            generation: slot.generation,
            started_at: now,
            baseline_checked_at: slot.entry.as_ref().map(|e| e.checked_at),
        };
        let manager = self.clone();
        let task = self
            .inner
            .runtime
            .spawn(async move { manager.run_attempt(attempt).await });
        let shared = async move {
            task.await.unwrap_or_else(|e| {
                let failure = QuotaError::Network(format!("refresh task failed: {e}"));
                (Served::Request, Err(failure))
            })
        }
        .boxed()
        .shared();
        let callers = Arc::new(AtomicU64::new(1));
        let attempt_id = state.next_id();
        state.slot_mut(&route).in_flight = Some(InFlight {
            id: attempt_id,
            shared: shared.clone(),
            callers: callers.clone(),
        });
        Started {
            shared,
            callers: Some(callers),
            attempt_id: Some(attempt_id),
        }
    }

    async fn run_attempt(&self, attempt: Attempt) -> Settled {
        let (settled, announcement) = self.attempt_under_locks(&attempt).await;
        // The route lock is released by now: other processes need not wait for our host.
        if let Some(announcement) = announcement {
            self.announce(&attempt, announcement).await;
        }
        if let Some(slot) = self.state().attempt_slot(&attempt) {
            slot.in_flight = None;
        }
        settled
    }

    async fn attempt_under_locks(&self, attempt: &Attempt) -> (Settled, Option<Announcement>) {
        let failed = |error| ((Served::Request, Err(error)), None);
        let _fetch_slot = match attempt.route {
            RouteId::Fallback(_) => match self.inner.fallback_fetch_slots.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return failed(QuotaError::Closed),
            },
            RouteId::Main => None,
        };
        let _route_lock = match &self.inner.store {
            Some(store) => match self.lock_route(store, &attempt.key).await {
                Ok(lock) => Some(lock),
                Err(error) => return failed(error),
            },
            None => None,
        };
        match self.serve_from_shared_state(attempt) {
            Ok(Some(settled)) => return (settled, None),
            Ok(None) => {}
            Err(error) => return failed(error),
        }
        self.wait_for_pacing(attempt).await;
        let (result, announcement) = self.fetch_and_record(attempt).await;
        ((Served::Request, result), announcement)
    }

    /// Takes the route's cross-process lock, waiting (without blocking a thread) for another
    /// process's refresh to finish.
    async fn lock_route(&self, store: &StateStore, key: &str) -> Result<RouteLock, QuotaError> {
        let timeout = Duration::from_millis(self.inner.config.lock_timeout_ms.max(0) as u64);
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        let mut counted_wait = false;
        loop {
            let attempt = store.try_lock_route(key);
            match attempt {
                Ok(Some(lock)) => return Ok(lock),
                Ok(None) => {}
                Err(error) => {
                    bump(&self.inner.stats.state_errors);
                    return Err(error);
                }
            }
            if !counted_wait {
                counted_wait = true;
                bump(&self.inner.stats.lock_waits);
            }
            let now = Instant::now();
            if now >= deadline {
                bump(&self.inner.stats.lock_timeouts);
                return Err(QuotaError::Timeout(format!(
                    "waited {} ms for another process's quota refresh",
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// With the route lock held: folds in what other processes wrote, then answers from it
    /// when it makes a request pointless (an open shared backoff, or a result produced while
    /// this call waited). `Ok(None)` means: fetch.
    fn serve_from_shared_state(&self, attempt: &Attempt) -> Result<Option<Settled>, QuotaError> {
        let Some(store) = &self.inner.store else {
            return Ok(None);
        };
        let record = store.read_route(&attempt.key).inspect_err(|_| {
            bump(&self.inner.stats.state_errors);
        })?;
        let now = self.now();
        let mut state = self.state();
        let interval = state.settings.interval_ms;
        let Some(slot) = state.attempt_slot(attempt) else {
            return Ok(None);
        };
        if let Some(record) = &record {
            slot.adopt(record);
        }
        if slot.backoff.is_open(now) {
            return Ok(Some((Served::DuringBackoff, slot.served_from_cache(now))));
        }
        let Some(entry) = &slot.entry else {
            return Ok(None);
        };
        let produced_by_another = attempt
            .baseline_checked_at
            .is_none_or(|b| entry.checked_at > b);
        let recent = entry.checked_at >= attempt.started_at
            || !freshness::is_stale(Some(entry), now, interval, None);
        if produced_by_another && recent {
            let outcome = RefreshOutcome {
                quota: entry.quota.clone(),
                fetched: false,
            };
            return Ok(Some((Served::OtherProcess, Ok(outcome))));
        }
        Ok(None)
    }

    /// Keeps at least `apiCallGapMs` between two requests with one token. A route's last
    /// attempt (time and token fingerprint) comes from the state file, so the gap holds across
    /// processes too, even after a failure that left no snapshot. The gap is measured on the
    /// manager's clock but waited out in real time, so a frozen test clock never hangs.
    async fn wait_for_pacing(&self, attempt: &Attempt) {
        let gap = self.inner.config.api_call_gap_ms;
        if gap <= 0 {
            return;
        }
        let token_fingerprint = fingerprint(&attempt.token);
        let last_call = {
            let state = self.state();
            let by_token = state.last_call_by_token.get(&token_fingerprint).copied();
            let by_route = state
                .slot(&attempt.route)
                .filter(|slot| slot.last_attempt_token.as_deref() == Some(&token_fingerprint))
                .and_then(|slot| slot.last_attempt_at);
            by_token.max(by_route)
        };
        if let Some(last_call) = last_call {
            let wait = (gap - (self.now() - last_call)).clamp(0, gap);
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
    }

    async fn fetch_and_record(
        &self,
        attempt: &Attempt,
    ) -> (Result<RefreshOutcome, QuotaError>, Option<Announcement>) {
        let token_fingerprint = fingerprint(&attempt.token);
        let fetch_started_at = self.now();
        {
            let mut state = self.state();
            state
                .last_call_by_token
                .insert(token_fingerprint.clone(), fetch_started_at);
            if let Some(slot) = state.attempt_slot(attempt) {
                slot.last_attempt_at = Some(fetch_started_at);
                slot.last_attempt_token = Some(token_fingerprint.clone());
            }
        }
        bump(&self.inner.stats.api_calls);
        let clock = self.inner.clock.clone();
        let result = self
            .inner
            .client
            .fetch(&attempt.token, move || clock.now_ms())
            .await;
        match result {
            Ok(snapshot) => {
                let (quota, cached) = self.record_success(attempt, snapshot, &token_fingerprint);
                self.persist_route(attempt).await;
                // A poll overtaken by a new identity or login is its callers' alone.
                let announcement = cached.then(|| {
                    Announcement::Fetched(Box::new(FetchedEvent {
                        checked_at: quota.checked_at.unwrap_or(fetch_started_at),
                        quota: quota.clone(),
                        token_fingerprint,
                        fetch_started_at,
                    }))
                });
                let outcome = RefreshOutcome {
                    quota,
                    fetched: true,
                };
                (Ok(outcome), announcement)
            }
            Err(error) => {
                let armed = self.record_failure(attempt, &error);
                self.persist_route(attempt).await;
                (Err(error), armed.map(Announcement::Failed))
            }
        }
    }

    /// Caches a poll, merged with newer header windows, and clears the backoff, unless the
    /// route was dropped or replaced meanwhile. Returns the snapshot to hand out, and whether
    /// it was cached.
    fn record_success(
        &self,
        attempt: &Attempt,
        mut snapshot: QuotaSnapshot,
        token_fingerprint: &str,
    ) -> (QuotaSnapshot, bool) {
        let now = self.now();
        let checked_at = snapshot.checked_at.unwrap_or(now);
        snapshot.account_identity = attempt.identity.clone();
        let mut state = self.state();
        let settings = state.settings.clone();
        let Some(slot) = state.attempt_slot(attempt) else {
            return (snapshot, false);
        };
        let quota = merge_poll_result(slot.entry.as_ref().map(|e| &e.quota), &snapshot);
        slot.entry = Some(make_entry(quota.clone(), checked_at, &settings, now));
        slot.token_fingerprint = Some(token_fingerprint.to_owned());
        slot.backoff.record_success();
        slot.backoff_updated_at = now;
        (quota, true)
    }

    /// Arms the route's backoff for an endpoint failure; the record to report when it did.
    fn record_failure(&self, attempt: &Attempt, error: &QuotaError) -> Option<ApiErrorRecord> {
        let now = self.now();
        let mut state = self.state();
        let slot = state.attempt_slot(attempt)?;
        let was_open = slot.backoff.is_open(now);
        let armed = slot.backoff.record_failure(
            error,
            now,
            &self.inner.config.backoff,
            rand::random::<f64>(),
            attempt.identity.as_deref(),
        );
        if armed.is_some() && !was_open {
            slot.backoff_updated_at = now;
        }
        armed.filter(|_| !was_open)
    }

    /// Tells the host, and waits until it has handled it.
    async fn announce(&self, attempt: &Attempt, announcement: Announcement) {
        let events = &self.inner.events;
        match (&attempt.route, announcement) {
            (RouteId::Main, Announcement::Fetched(event)) => {
                events.main_quota_fetched(*event).await
            }
            (RouteId::Main, Announcement::Failed(record)) => events.api_error(record).await,
            (RouteId::Fallback(id), Announcement::Fetched(event)) => {
                events.fallback_quota_fetched(id.clone(), *event).await
            }
            (RouteId::Fallback(id), Announcement::Failed(record)) => {
                events.fallback_api_error(id.clone(), record).await
            }
        }
    }

    // ----- persistence ---------------------------------------------------------------------

    /// Writes the route now (other processes wait on its lock for exactly this), together with
    /// anything else waiting to be written.
    async fn persist_route(&self, attempt: &Attempt) {
        if self.inner.store.is_none() {
            return;
        }
        {
            let mut state = self.state();
            if state.attempt_slot(attempt).is_none() {
                return;
            }
            let record = self.record_for(&state, &attempt.route);
            state.unsaved.insert(
                attempt.key.clone(),
                StoreUpdate::Merge {
                    key: attempt.key.clone(),
                    record: Box::new(record),
                },
            );
        }
        self.flush().await;
    }

    fn record_for(&self, state: &State, route: &RouteId) -> RouteRecord {
        let slot = state.slot(route).expect("route exists");
        let mut record = slot.to_record();
        if let RouteId::Fallback(_) = route {
            record.lineage = slot.owner.clone();
        }
        record
    }

    fn mark_unsaved(&self, state: &mut State, route: &RouteId) {
        if self.inner.store.is_none() {
            return;
        }
        let Some(slot) = state.slot(route) else {
            return;
        };
        let key = route_key(route, slot);
        let record = self.record_for(state, route);
        state.unsaved.insert(
            key.clone(),
            StoreUpdate::Merge {
                key,
                record: Box::new(record),
            },
        );
        self.schedule_flush(state);
    }

    /// Coalesces writes: the first change schedules one write a moment later that carries
    /// every change made until then.
    fn schedule_flush(&self, state: &mut State) {
        if self.inner.store.is_none() || state.flush_scheduled {
            return;
        }
        state.flush_scheduled = true;
        let manager = self.clone();
        self.inner.runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(WRITE_COALESCE_MS)).await;
            manager.flush().await;
        });
    }

    /// Writes everything waiting to be written and adopts what other processes wrote meanwhile.
    pub async fn flush(&self) {
        let Some((store, updates)) = self.take_unsaved() else {
            return;
        };
        let written = tokio::task::spawn_blocking(move || store.apply(&updates))
            .await
            .unwrap_or_else(|e| {
                Err(QuotaError::State {
                    path: String::new(),
                    reason: e.to_string(),
                })
            });
        self.after_write(written);
    }

    /// `flush`, on the calling thread: for the host's exit, when no task will run any more.
    pub fn flush_now(&self) {
        if let Some((store, updates)) = self.take_unsaved() {
            self.after_write(store.apply(&updates));
        }
    }

    fn take_unsaved(&self) -> Option<(StateStore, Vec<StoreUpdate>)> {
        let store = self.inner.store.clone()?;
        let mut state = self.state();
        state.flush_scheduled = false;
        let updates: Vec<StoreUpdate> = state.unsaved.drain().map(|(_, update)| update).collect();
        (!updates.is_empty()).then_some((store, updates))
    }

    fn after_write(&self, written: Result<super::store::Loaded, QuotaError>) {
        match written {
            Ok(loaded) => {
                bump(&self.inner.stats.state_writes);
                if let Some(aside) = loaded.quarantined {
                    self.report_quarantine(&aside);
                }
            }
            Err(error) => {
                bump(&self.inner.stats.state_errors);
                eprintln!("anthropic-quota-manager: could not write the quota state: {error}");
            }
        }
    }

    /// A handle that does not keep the manager alive.
    pub fn downgrade(&self) -> WeakQuotaManager {
        WeakQuotaManager(Arc::downgrade(&self.inner))
    }

    fn report_quarantine(&self, aside: &std::path::Path) {
        bump(&self.inner.stats.state_file_quarantines);
        let mut state = self.state();
        if !state.quarantine_reported {
            state.quarantine_reported = true;
            eprintln!(
                "anthropic-quota-manager: the quota state file could not be read; it was moved to {} and the manager starts empty",
                aside.display()
            );
        }
    }

    fn seed_from_state_file(&self, main_identity: Option<&str>) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let loaded = match store.load() {
            Ok(loaded) => loaded,
            Err(error) => {
                bump(&self.inner.stats.state_errors);
                eprintln!("anthropic-quota-manager: could not read the quota state: {error}");
                return;
            }
        };
        if let Some(aside) = &loaded.quarantined {
            self.report_quarantine(aside);
        }
        let mut state = self.state();
        let newest_main = loaded
            .state
            .routes
            .iter()
            .filter_map(|(key, record)| Some((key.strip_prefix("main:")?, record)))
            .filter(|(identity, _)| main_identity.is_none_or(|wanted| wanted == *identity))
            .max_by_key(|(_, record)| record.entry.as_ref().map(|e| e.checked_at));
        if let Some((identity, record)) = newest_main {
            state.main.owner = Some(identity.to_owned());
            state.main.adopt(record);
        }
        for (key, record) in &loaded.state.routes {
            if let Some(id) = key.strip_prefix("fallback:") {
                let slot = state.fallbacks.entry(id.to_owned()).or_default();
                slot.owner = record.lineage.clone();
                slot.adopt(record);
            }
        }
    }

    // ----- host storage --------------------------------------------------------------------

    /// Takes new settings from the host's storage and seeds the main route from it.
    pub fn update_storage(&self, storage: Option<&HostStorage>) {
        {
            let mut state = self.state();
            state.settings = settings_from(&self.inner.config, storage);
        }
        if let Some(storage) = storage {
            self.seed_main(storage, None);
        }
    }

    /// Adopts the host's persisted main snapshot when it is newer than the cache, and its
    /// persisted backoff when that is newer than ours.
    pub fn seed_main(&self, storage: &HostStorage, identity: Option<&str>) {
        let now = self.now();
        let mut state = self.state();
        let identity = identity
            .map(str::to_owned)
            .or_else(|| storage.main_account_id.clone())
            .or_else(|| storage.main_quota.as_ref()?.account_identity.clone());
        if let Some(identity) = &identity {
            state.bind_main(identity);
        }
        let settings = state.settings.clone();
        if let Some(quota) = storage.main_quota.as_ref().filter(|q| q.has_windows()) {
            let checked_at = storage
                .main_quota_checked_at
                .or(quota.checked_at)
                .or_else(|| quota.oldest_window_checked_at());
            if let Some(checked_at) = checked_at {
                let is_newer = state
                    .main
                    .entry
                    .as_ref()
                    .is_none_or(|e| checked_at > e.checked_at);
                if is_newer {
                    state.main.entry = Some(make_entry(quota.clone(), checked_at, &settings, now));
                }
            }
        }
        if let Some(error) = &storage.main_last_error {
            seed_backoff(&mut state.main, error, now);
        }
    }

    /// Adopts each configured account's persisted quota and backoff, and forgets accounts that
    /// are no longer configured. Disabled accounts are skipped.
    pub fn seed_fallbacks(&self, accounts: &[FallbackAccount]) {
        let now = self.now();
        let mut state = self.state();
        state
            .fallbacks
            .retain(|id, _| accounts.iter().any(|a| &a.id == id));
        let settings = state.settings.clone();
        for account in accounts.iter().filter(|a| a.enabled) {
            if !state.bind_fallback(&account.id, account.auth_lineage_id.as_deref()) {
                continue;
            }
            let slot = state.slot_mut(&RouteId::Fallback(account.id.clone()));
            if let Some(quota) = account.quota.as_ref().filter(|q| q.has_windows()) {
                if let Some(checked_at) = quota
                    .checked_at
                    .or_else(|| quota.oldest_window_checked_at())
                {
                    if slot
                        .entry
                        .as_ref()
                        .is_none_or(|e| checked_at > e.checked_at)
                    {
                        slot.entry = Some(make_entry(quota.clone(), checked_at, &settings, now));
                    }
                }
            }
            if let Some(error) = &account.last_error {
                seed_backoff(slot, error, now);
            }
        }
    }

    // ----- freshness and backoff -----------------------------------------------------------

    pub fn is_main_stale(&self, model: Option<&str>) -> bool {
        let state = self.state();
        freshness::is_stale(
            state.main.entry.as_deref(),
            self.now(),
            state.settings.interval_ms,
            model,
        )
    }

    pub fn is_fallback_stale(&self, id: &str, model: Option<&str>) -> bool {
        let state = self.state();
        let entry = state
            .fallbacks
            .get(id)
            .and_then(|slot| slot.entry.as_deref());
        freshness::is_stale(entry, self.now(), state.settings.interval_ms, model)
    }

    pub fn should_refresh_on_request_count(&self, request_count: i64) -> bool {
        let every_n = self.state().settings.refresh_every_n;
        freshness::should_refresh_on_request_count(request_count, every_n)
    }

    pub fn needs_refresh(&self, request_count: i64, model: Option<&str>) -> bool {
        self.is_main_stale(model) || self.should_refresh_on_request_count(request_count)
    }

    pub fn is_backed_off(&self) -> bool {
        self.state().main.backoff.is_open(self.now())
    }

    pub fn is_fallback_backed_off(&self, id: &str) -> bool {
        let now = self.now();
        self.state()
            .fallbacks
            .get(id)
            .is_some_and(|slot| slot.backoff.is_open(now))
    }

    pub fn last_api_error(&self) -> Option<ApiErrorRecord> {
        self.state().main.backoff.last_error.clone()
    }

    pub fn fallback_api_error(&self, id: &str) -> Option<ApiErrorRecord> {
        self.state().fallbacks.get(id)?.backoff.last_error.clone()
    }

    /// The routing policy the host configured in its storage.
    pub fn policy(&self) -> QuotaPolicy {
        let state = self.state();
        QuotaPolicy {
            minimum_remaining: state.settings.minimum.clone(),
            fail_closed_on_unknown_quota: state.settings.fail_closed,
        }
    }

    /// SPEC §7: the 429 the plugin answers with when it fails closed, main is backed off and
    /// nothing is cached.
    pub fn fail_closed_response(&self) -> Option<FailClosedResponse> {
        let now = self.now();
        let state = self.state();
        let main = &state.main;
        if !state.settings.fail_closed || main.entry.is_some() || !main.backoff.is_open(now) {
            return None;
        }
        let remaining_ms = main.backoff.remaining_ms(now);
        let retry_after_secs = ((remaining_ms + 999) / 1000).max(1);
        let last_error = main
            .backoff
            .last_error
            .as_ref()
            .map_or("unknown error", |e| e.message.as_str());
        let message = format!("Quota API backed off for {retry_after_secs}s after: {last_error}");
        // Built by hand: SPEC §7 fixes the key order, which a JSON map would sort.
        let body = format!(
            r#"{{"type":"error","error":{{"type":"rate_limit_error","message":{}}}}}"#,
            serde_json::Value::String(message)
        );
        Some(FailClosedResponse {
            retry_after_secs,
            body,
        })
    }

    /// The shared state file, `None` in memory-only mode.
    pub fn state_path(&self) -> Option<&std::path::Path> {
        self.inner.store.as_ref().map(StateStore::path)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Refuses new calls, lets running ones settle, and writes what is still unsaved.
    pub async fn close(&self) {
        self.begin_close().await
    }

    /// Refuses new calls from now on; the future waits for running ones and the last write.
    pub fn begin_close(&self) -> BoxFuture<'static, ()> {
        let running: Vec<SharedRefresh> = {
            let mut state = self.state();
            state.closed = true;
            std::iter::once(&state.main)
                .chain(state.fallbacks.values())
                .filter_map(|slot| Some(slot.in_flight.as_ref()?.shared.clone()))
                .collect()
        };
        let manager = self.clone();
        async move {
            futures::future::join_all(running).await;
            manager.flush().await;
        }
        .boxed()
    }
}

/// What `join_or_start` hands the caller.
struct Started {
    shared: SharedRefresh,
    /// For the caller that started the request: the count of everyone waiting on it.
    callers: Option<Arc<AtomicU64>>,
    attempt_id: Option<u64>,
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

/// What the host hears about a request, once its locks are released.
enum Announcement {
    Fetched(Box<FetchedEvent>),
    Failed(ApiErrorRecord),
}

/// What one leader request knows about itself.
struct Attempt {
    route: RouteId,
    /// The identity its snapshots carry: the main identity or the fallback id, as at the start.
    identity: Option<String>,
    key: String,
    token: String,
    generation: u64,
    started_at: i64,
    /// The cached snapshot's time when the request began; a newer one in the state file was
    /// produced by someone else meanwhile.
    baseline_checked_at: Option<i64>,
}

fn route_key(route: &RouteId, slot: &RouteSlot) -> String {
    match route {
        RouteId::Main => main_key(slot.owner.as_deref().unwrap_or("default")),
        RouteId::Fallback(id) => fallback_key(id),
    }
}

/// The identity a route's snapshots carry: the main account's identity, or the fallback id.
fn account_identity(route: &RouteId, state: &State) -> Option<String> {
    match route {
        RouteId::Main => state.main.owner.clone(),
        RouteId::Fallback(id) => Some(id.clone()),
    }
}

fn settings_from(config: &ManagerConfig, storage: Option<&HostStorage>) -> Settings {
    let minutes = config
        .check_interval_minutes
        .or_else(|| storage?.check_interval_minutes)
        .unwrap_or(DEFAULT_CHECK_INTERVAL_MINUTES);
    Settings {
        interval_ms: (minutes * freshness::MINUTE_MS as f64) as i64,
        refresh_every_n: config
            .refresh_every_n_requests
            .or_else(|| storage?.refresh_every_n_requests)
            .unwrap_or(0),
        minimum: storage
            .and_then(|s| s.minimum_remaining.clone())
            .unwrap_or_default(),
        fail_closed: storage
            .and_then(|s| s.fail_closed_on_unknown_quota)
            .unwrap_or(false),
    }
}

/// A cache entry whose `refreshAfter` follows SPEC §3, measured from the oldest window so a
/// header push never postpones the poll that the older poll-only fields need.
fn make_entry(
    quota: QuotaSnapshot,
    checked_at: i64,
    settings: &Settings,
    now: i64,
) -> Arc<QuotaEntry> {
    let oldest = quota
        .oldest_window_checked_at()
        .unwrap_or(checked_at)
        .min(checked_at);
    let exhausted = exhausted_until(&quota, &settings.minimum, now);
    let refresh_after = freshness::refresh_after(&quota, oldest, settings.interval_ms, exhausted);
    Arc::new(QuotaEntry {
        quota,
        checked_at,
        refresh_after,
    })
}

/// Adopts a backoff the host persisted, when it is newer than the one the slot has and no poll
/// succeeded after it (the host may keep its last error after a later success).
fn seed_backoff(slot: &mut RouteSlot, error: &ApiErrorRecord, now: i64) {
    let polled_since = slot.entry.as_ref().is_some_and(|entry| {
        entry.quota.source == Some(QuotaSource::Poll) && entry.checked_at > error.checked_at
    });
    if error.checked_at <= slot.backoff_updated_at || polled_since {
        return;
    }
    slot.backoff = backoff::from_persisted(error, now);
    slot.backoff_updated_at = error.checked_at;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const START: i64 = 1_800_000_000_000;
    const BODY: &str = r#"{"five_hour":{"utilization":9},"seven_day":{"utilization":68},
        "limits":[{"kind":"weekly_scoped","group":"weekly","percent":22,"is_active":true,
        "scope":{"model":{"id":"claude-fable-5-1","display_name":"Fable"}}}]}"#;

    /// A local usage endpoint answering every request with `status` after `delay_ms`.
    struct Endpoint {
        url: String,
        requests: Arc<AtomicUsize>,
        status: Arc<AtomicUsize>,
    }

    async fn endpoint(delay_ms: u64) -> Endpoint {
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
        Endpoint {
            url,
            requests,
            status,
        }
    }

    struct NoEvents;
    impl HostEvents for NoEvents {
        fn main_quota_fetched(&self, _: FetchedEvent) -> BoxFuture<'static, ()> {
            async {}.boxed()
        }
        fn api_error(&self, _: ApiErrorRecord) -> BoxFuture<'static, ()> {
            async {}.boxed()
        }
        fn fallback_quota_fetched(&self, _: String, _: FetchedEvent) -> BoxFuture<'static, ()> {
            async {}.boxed()
        }
        fn fallback_api_error(&self, _: String, _: ApiErrorRecord) -> BoxFuture<'static, ()> {
            async {}.boxed()
        }
    }

    fn config(url: &str, state_path: Option<std::path::PathBuf>) -> ManagerConfig {
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
            backoff: BackoffConfig {
                jitter: 0.0,
                ..BackoffConfig::default()
            },
            state_path,
        }
    }

    fn manager(config: ManagerConfig, clock: &ManualClock) -> QuotaManager {
        QuotaManager::new(
            config,
            None,
            Arc::new(clock.clone()),
            Arc::new(NoEvents),
            Arc::new(Stats::default()),
            tokio::runtime::Handle::current(),
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_refreshes_of_one_route_share_one_request() {
        let server = endpoint(100).await;
        let clock = ManualClock::new(START);
        let manager = manager(config(&server.url, None), &clock);
        let calls = (0..200).map(|_| manager.refresh_main(Some("alice"), "token"));
        let results = futures::future::join_all(calls).await;
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|r| r.as_ref().unwrap().fetched));
        assert_eq!(manager.stats().joined_in_flight, 199);
        let entry = manager.get_main(Some("alice")).unwrap();
        assert_eq!(entry.refresh_after, START + 5 * 60_000);
        assert_eq!(entry.quota.account_identity.as_deref(), Some("alice"));
        assert!(manager.get_main(Some("bob")).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_climb_the_ladder_once_per_window_and_serve_the_cache_meanwhile() {
        let server = endpoint(0).await;
        let clock = ManualClock::new(START);
        let manager = manager(config(&server.url, None), &clock);
        manager.refresh_main(Some("alice"), "t").await.unwrap();
        server.status.store(429, Ordering::SeqCst);
        for expected_minutes in [1, 2, 4, 8, 15, 15] {
            clock.advance(20 * 60_000);
            let error = manager.refresh_main(Some("alice"), "t").await.unwrap_err();
            assert_eq!(error.code(), "QUOTA_HTTP_ERROR");
            let record = manager.last_api_error().unwrap();
            assert_eq!(
                record.next_retry_at.unwrap() - record.checked_at,
                expected_minutes * 60_000
            );
            let served = manager.refresh_main(Some("alice"), "t").await.unwrap();
            assert!(!served.fetched, "backed off: served from the cache");
        }
        assert_eq!(server.requests.load(Ordering::SeqCst), 7);
        server.status.store(200, Ordering::SeqCst);
        clock.advance(20 * 60_000);
        manager.refresh_main(Some("alice"), "t").await.unwrap();
        assert!(!manager.is_backed_off());
        assert!(manager.last_api_error().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn switching_identity_drops_the_old_cache() {
        let server = endpoint(0).await;
        let clock = ManualClock::new(START);
        let manager = manager(config(&server.url, None), &clock);
        manager.refresh_main(Some("alice"), "t1").await.unwrap();
        manager.refresh_main(Some("bob"), "t2").await.unwrap();
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        assert!(manager.get_main(Some("alice")).is_none());
        assert!(manager.get_main(Some("bob")).is_some());
        manager.refresh_main(None, "raw-token").await.unwrap();
        let entry = manager
            .get_main(Some("raw-token"))
            .expect("found by its token");
        assert_ne!(entry.quota.account_identity.as_deref(), Some("raw-token"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_login_drops_the_slot_and_refuses_old_observations() {
        let server = endpoint(0).await;
        let clock = ManualClock::new(START);
        let manager = manager(config(&server.url, None), &clock);
        let old = FallbackAccount {
            id: "fb".into(),
            enabled: true,
            auth_lineage_id: Some("login-1".into()),
            ..Default::default()
        };
        let new = FallbackAccount {
            auth_lineage_id: Some("login-2".into()),
            ..old.clone()
        };
        manager
            .refresh_fallback("fb", "t", Some(&old))
            .await
            .unwrap();
        assert!(manager.get_fallback("fb", Some(&old)).is_some());
        assert!(
            manager.get_fallback("fb", Some(&new)).is_none(),
            "new login starts empty"
        );
        let frame = QuotaSnapshot {
            five_hour: Some(crate::core::snapshot::QuotaWindow::from_used(
                5.0, None, START,
            )),
            ..Default::default()
        };
        assert!(manager
            .push_fallback_frame("fb", frame.clone(), Some(&old))
            .is_none());
        assert!(manager
            .push_fallback_frame("fb", frame, Some(&new))
            .is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_persisted_error_older_than_the_persisted_poll_is_not_a_backoff() {
        let clock = ManualClock::new(START);
        let seeded = manager(config("http://127.0.0.1:9/usage", None), &clock);
        let error = ApiErrorRecord {
            message: "Claude quota check failed: 429 — x".into(),
            checked_at: START - 60_000,
            next_retry_at: Some(START + 3_600_000),
            retry_count: Some(1),
            status: Some(429),
            retry_after_ms: Some(3_600_000),
            account_identity: None,
        };
        let polled = QuotaSnapshot {
            five_hour: Some(crate::core::snapshot::QuotaWindow::from_used(
                5.0, None, START,
            )),
            source: Some(QuotaSource::Poll),
            checked_at: Some(START),
            ..Default::default()
        };
        let mut storage = HostStorage {
            main_account_id: Some("alice".into()),
            main_last_error: Some(error.clone()),
            ..HostStorage::default()
        };
        seeded.seed_main(&storage, None);
        assert!(
            seeded.is_backed_off(),
            "an active persisted backoff is honoured"
        );

        let fresh = manager(config("http://127.0.0.1:9/usage", None), &clock);
        storage.main_quota = Some(polled);
        fresh.seed_main(&storage, None);
        assert!(
            !fresh.is_backed_off(),
            "a later successful poll supersedes it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_closed_answers_with_the_documented_429() {
        let server = endpoint(0).await;
        server.status.store(429, Ordering::SeqCst);
        let clock = ManualClock::new(START);
        let storage = HostStorage {
            fail_closed_on_unknown_quota: Some(true),
            ..HostStorage::default()
        };
        let manager = QuotaManager::new(
            config(&server.url, None),
            Some(storage),
            Arc::new(clock.clone()),
            Arc::new(NoEvents),
            Arc::new(Stats::default()),
            tokio::runtime::Handle::current(),
        )
        .unwrap();
        assert!(
            manager.fail_closed_response().is_none(),
            "not backed off yet"
        );
        manager.refresh_main(Some("alice"), "t").await.unwrap_err();
        clock.advance(59_500);
        let answer = manager.fail_closed_response().unwrap();
        assert_eq!(answer.retry_after_secs, 1, "rounded up, at least 1");
        assert_eq!(
            answer.body,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Quota API backed off for 1s after: Claude quota check failed: 429 — nope"}}"#
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_running_while_its_account_is_cleared_caches_nothing() {
        let server = endpoint(200).await;
        let clock = ManualClock::new(START);
        let manager = manager(config(&server.url, None), &clock);
        let running = manager.refresh_fallback("fb", "t", None);
        let clear = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            manager.clear_fallback("fb");
        };
        let (result, ()) = tokio::join!(running, clear);
        assert!(result.unwrap().fetched, "its caller still gets the answer");
        assert!(manager.get_fallback("fb", None).is_none());
        assert!(manager.all_fallbacks().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_manager_waits_for_the_first_and_adopts_its_result() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let server = endpoint(300).await;
        let clock = ManualClock::new(START);
        let first = manager(config(&server.url, Some(state.clone())), &clock);
        let second = manager(config(&server.url, Some(state.clone())), &clock);
        let (a, b) = tokio::join!(first.refresh_main(Some("alice"), "t"), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            second.refresh_main(Some("alice"), "t").await
        });
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        assert!(a.unwrap().fetched);
        assert!(!b.unwrap().fetched);
        assert_eq!(second.stats().joined_other_process, 1);
        assert_eq!(second.stats().lock_waits, 1);
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(!text.contains("\"t\""), "no token on disk");

        // A restart seeds from the file: fresh, so no request is needed.
        let restarted = manager(config(&server.url, Some(state)), &clock);
        assert!(!restarted.is_main_stale(None));
        assert!(restarted.get_main(Some("alice")).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pacing_holds_across_managers_sharing_the_state_file_even_after_an_auth_failure() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let server = endpoint(0).await;
        server.status.store(401, Ordering::SeqCst);
        let clock = ManualClock::new(START);
        let paced = |path: &std::path::Path| ManagerConfig {
            api_call_gap_ms: 400,
            ..config(&server.url, Some(path.to_owned()))
        };
        let first = manager(paced(&state), &clock);
        let second = manager(paced(&state), &clock);
        first.refresh_main(Some("alice"), "t").await.unwrap_err();
        let started = Instant::now();
        let error = second.refresh_main(Some("alice"), "t").await.unwrap_err();
        assert_eq!(
            error.code(),
            "QUOTA_AUTH_ERROR",
            "no backoff: it fetched itself"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(390),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backoff_armed_by_one_manager_holds_for_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let server = endpoint(0).await;
        server.status.store(503, Ordering::SeqCst);
        let clock = ManualClock::new(START);
        let first = manager(config(&server.url, Some(state.clone())), &clock);
        let second = manager(config(&server.url, Some(state)), &clock);
        first.refresh_main(Some("alice"), "t").await.unwrap_err();
        let error = second.refresh_main(Some("alice"), "t").await.unwrap_err();
        assert_eq!(error.code(), "QUOTA_BACKED_OFF");
        assert!(second.is_backed_off());
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn header_pushes_keep_poll_only_fields_and_the_poll_deadline() {
        let server = endpoint(0).await;
        let clock = ManualClock::new(START);
        let manager = manager(config(&server.url, None), &clock);
        manager.refresh_main(Some("alice"), "t").await.unwrap();
        clock.advance(60_000);
        let frame = QuotaSnapshot {
            five_hour: Some(crate::core::snapshot::QuotaWindow::from_used(
                50.0,
                None,
                START + 60_000,
            )),
            checked_at: Some(START + 60_000),
            ..Default::default()
        };
        let entry = manager.push_main_frame(Some("alice"), frame).unwrap();
        assert_eq!(entry.quota.five_hour.as_ref().unwrap().used_percent, 50.0);
        assert_eq!(
            entry.quota.scoped.as_ref().unwrap().len(),
            1,
            "scoped kept from the poll"
        );
        assert_eq!(
            entry.refresh_after,
            START + 5 * 60_000,
            "still due when the poll ages"
        );
        assert!(!manager.is_main_stale(None));
    }
}
