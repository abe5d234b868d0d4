//! A refresh registered at the call, so a later `close()` or identity switch cannot overtake it:
//! it joins its route's running request or starts one (docs/single-flight.md#in-one-process).

use futures::future::{BoxFuture, FutureExt};
use std::sync::atomic::Ordering;

use super::attempt::Attempt;
use super::identity::{same_identity, MainIdentity, MainTarget};
use super::outcome::{backed_off_answer, RefreshOutcome, Served, Settled};
use super::routes::RouteId;
use super::single_flight::{Flight, Ticket};
use super::{QuotaManager, State, WeakQuotaManager};
use crate::error::QuotaError;
use crate::fingerprint::fingerprint;
use crate::freshness;
use crate::host::FallbackAccount;
use crate::stats::{bump, bump_by};

/// How many accounts a fan-out registers before it lets other tasks on its thread run.
const REGISTERED_PER_TURN: usize = 256;

/// A refresh registered at the call.
pub struct Refresh {
    pub wait: BoxFuture<'static, Result<RefreshOutcome, QuotaError>>,
    /// The request the call is attached to (it started it or joined it); `None` when it was
    /// answered at once (backed off, closed). Calls with the same id get the same result.
    pub attempt_id: Option<u64>,
    /// Keeps the request joinable, with its result, until dropped once the result reached the
    /// caller (a JS promise settles later than `wait` ends; docs/single-flight.md#in-one-process).
    pub hold: Option<FlightHold>,
}

impl Refresh {
    fn ready(result: Result<RefreshOutcome, QuotaError>) -> Self {
        Self { wait: futures::future::ready(result).boxed(), attempt_id: None, hold: None }
    }

    /// Waits for the result; the caller is answered when it has it.
    pub async fn answer(self) -> Result<RefreshOutcome, QuotaError> {
        let result = self.wait.await;
        drop(self.hold);
        result
    }
}

/// A caller's claim on a request's result (see [`Refresh::hold`]). Dropping it marks the caller
/// answered; the request's slot is freed for a new request once every caller was.
pub struct FlightHold {
    manager: WeakQuotaManager,
    route: RouteId,
    generation: u64,
    id: u64,
}

impl Drop for FlightHold {
    fn drop(&mut self) {
        let Some(manager) = self.manager.upgrade() else {
            return;
        };
        let mut state = manager.state();
        if let Some(slot) = state.routes.attempt_slot(&self.route, self.generation) {
            slot.flights.answered(self.id);
        }
    }
}

impl QuotaManager {
    /// `refreshMain(id?, token, expectedIdentityGeneration?)` (docs/compat.md#signatures).
    pub fn begin_refresh_main_for(
        &self,
        target: MainTarget<'_>,
        token: &str,
        expected_identity_generation: Option<u64>,
    ) -> Refresh {
        let mut state = self.state();
        if state.closed {
            return Refresh::ready(Err(QuotaError::Closed));
        }
        let identity = match target {
            MainTarget::Token => Some(MainIdentity::of_token(token)),
            MainTarget::Named(id) => Some(MainIdentity::parse(id)),
            MainTarget::Unnamed => None,
        };
        let moves = !same_identity(state.routes.main_owner(), identity.as_ref());
        let generation = state.routes.generations.identity;
        if expected_identity_generation.is_some_and(|expected| moves || generation != expected) {
            return Refresh::ready(Err(QuotaError::IdentityChanged));
        }
        if moves && state.routes.generations.known {
            state.routes.generations.identity += 1;
        }
        state.routes.bind_main(identity);
        self.join_or_start(&mut state, RouteId::Main, token)
    }

    /// `begin_refresh_main_for` for a fallback account.
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
        // A refresh for a login that was replaced answers for the current one.
        state.routes.bind_fallback_for(id, account);
        self.join_or_start(&mut state, RouteId::Fallback(id.to_owned()), token)
    }

    /// A main refresh nobody awaits: `None` when one runs, the route is backed off, or closed.
    pub fn background_main_refresh(&self, token: &str) -> Option<BoxFuture<'static, ()>> {
        let now = self.now_ms();
        let identity = {
            let state = self.state();
            let main = &state.routes.main;
            if state.closed || !main.flights.is_empty() || main.record.backoff.is_open(now) {
                return None;
            }
            state.routes.main_owner().map(MainIdentity::persisted)
        };
        let target = identity.as_deref().map_or(MainTarget::Token, MainTarget::Named);
        Some(self.begin_refresh_main_for(target, token, None).answer().map(drop).boxed())
    }

    /// The caller's wait: counted, when it ends, by how it was served.
    fn settle(&self, ticket: Ticket<Settled>, hold: Option<FlightHold>) -> Refresh {
        let stats = self.inner.stats.clone();
        let Ticket { result, callers, id } = ticket;
        let wait = async move {
            let (served, result) = result.await;
            // Only the caller that started the request counts: once it is done nobody can join
            // it any more, so the tally is final before any caller hears the result.
            if let Some(callers) = callers {
                let starter = u64::from(served == Served::Request);
                bump_by(served.counter(&stats), callers.load(Ordering::SeqCst) - starter);
            }
            result
        };
        Refresh { wait: wait.boxed(), attempt_id: id, hold }
    }

    /// The request a repeated `refreshMain` joins now, or 0 (docs/single-flight.md#in-one-process).
    pub fn main_joinable(&self) -> u64 {
        let now = self.now_ms();
        let state = self.state();
        let main = &state.routes.main;
        let flight = main.flights.last_handed().filter(|_| !state.closed);
        flight.filter(|_| !main.record.backoff.is_open(now)).map_or(0, Flight::id)
    }

    /// Counts `n` callers joining `flight`: in its starter's tally while it runs, else now (a
    /// caller handed a promise already made never awaits its own wait).
    pub(super) fn count_joiners(&self, flight: &Flight<Settled>, n: u64) {
        if let Some(&(served, _)) = flight.count_callers(n) {
            bump_by(served.counter(&self.inner.stats), n);
        }
    }

    fn hold(&self, route: &RouteId, generation: u64, id: u64) -> FlightHold {
        FlightHold { manager: self.downgrade(), route: route.clone(), generation, id }
    }

    /// Joins the route's running request, or starts one. Served from the cache when backed off.
    fn join_or_start(&self, state: &mut State, route: RouteId, token: &str) -> Refresh {
        let now = self.now_ms();
        // Main flights are per token (docs/single-flight.md#in-one-process).
        let flight_key = (route == RouteId::Main).then(|| fingerprint(token));
        let slot = state.routes.slot_mut(&route);
        if let Some(cached) = backed_off_answer(&slot.record, now) {
            bump(&self.inner.stats.served_during_backoff);
            slot.flights.handed(None);
            self.recheck_backoff_soon(state, &route, now);
            return self.settle(Ticket::ready(cached), None);
        }
        if let Some(running) = slot.flights.keyed(flight_key.as_deref()) {
            let id = running.id();
            self.count_joiners(running, 1);
            let ticket = running.join();
            slot.flights.handed(Some(id));
            return self.settle(ticket, Some(self.hold(&route, slot.generation, id)));
        }
        let generation = slot.generation;
        let baseline_checked_at = slot.own_checked_at();
        let baseline_attempt_at = slot.record.last_attempt_at;
        let flight_id = state.routes.next_id();
        let attempt = Attempt {
            identity: state.routes.snapshot_identity(&route),
            key: state.routes.key(&route),
            baseline_checked_at,
            baseline_attempt_at,
            route: route.clone(),
            token: token.to_owned(),
            token_fingerprint: fingerprint(token),
            generation,
            flight_id,
            started_at: now,
        };
        let task = self.inner.runtime.spawn(self.clone().run_attempt(attempt));
        let work = async move {
            task.await.unwrap_or_else(|e| {
                let failure = QuotaError::Network(format!("refresh task failed: {e}"));
                (Served::Request, Err(failure))
            })
        }
        .boxed();
        let (flight, ticket) = Flight::lead(flight_id, work);
        state.routes.slot_mut(&route).flights.start(flight_key, flight);
        self.settle(ticket, Some(self.hold(&route, generation, flight_id)))
    }

    /// Refreshes the due accounts (docs/single-flight.md#concurrency), registered when the future
    /// first runs, on the runtime: 10,000 accounts took the JavaScript thread 50-100 ms.
    pub fn refresh_all_fallbacks(&self, accounts: Vec<FallbackAccount>) -> BoxFuture<'static, ()> {
        let manager = self.clone();
        async move {
            let mut refreshes = Vec::new();
            let usable = accounts.iter().filter(|a| a.enabled && a.access.is_some());
            for (registered, account) in usable.enumerate() {
                if registered % REGISTERED_PER_TURN == REGISTERED_PER_TURN - 1 {
                    // Long lists must not hold one runtime thread for their whole length.
                    tokio::task::yield_now().await;
                }
                // Its hold goes at once: nobody is answered with the result.
                refreshes.extend(manager.begin_refresh_if_due(account).map(|refresh| refresh.wait));
            }
            // Errors are on each route now; the caller asked for none.
            futures::future::join_all(refreshes).await;
        }
        .boxed()
    }

    /// A fallback account's refresh when it is due: not backed off, not running, and stale.
    fn begin_refresh_if_due(&self, account: &FallbackAccount) -> Option<Refresh> {
        let now = self.now_ms();
        let mut state = self.state();
        if state.closed || !state.routes.bind_fallback_for(&account.id, Some(account)) {
            return None;
        }
        let interval = state.settings.interval_ms;
        let slot = state.routes.fallback(&account.id)?;
        let due = !slot.record.backoff.is_open(now)
            && slot.flights.is_empty()
            && freshness::is_stale(slot.entry().map(AsRef::as_ref), now, interval, None);
        let route = RouteId::Fallback(account.id.clone());
        let token = account.access.as_deref().unwrap_or_default();
        due.then(|| self.join_or_start(&mut state, route, token))
    }
}
