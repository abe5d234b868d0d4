//! Registering a refresh: a call joins its route's running request, or starts one, at the call
//! (so a later `close()` or identity switch cannot overtake it), and each caller is counted,
//! when the request is done, by how it was served.

use futures::future::{BoxFuture, FutureExt};
use std::sync::atomic::Ordering;

use super::attempt::Attempt;
use super::identity::MainTarget;
use super::routes::{LineageBind, MainIdentity, RouteId};
use super::single_flight::{Flight, Ticket};
use super::{QuotaManager, State};
use crate::error::QuotaError;
use crate::host::FallbackAccount;
use crate::snapshot::QuotaSnapshot;
use crate::stats::{bump, bump_by};

/// What a refresh hands back.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshOutcome {
    pub quota: QuotaSnapshot,
    /// `false` when served from the cache (backoff) or from another process's result.
    pub fetched: bool,
}

/// How a refresh was answered, so every caller waiting on it is counted where it belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// By a request this process sent (or tried to send).
    Request,
    /// By another process's result, read from the state file.
    OtherProcess,
    /// From the cache, or refused, because the route is backed off.
    DuringBackoff,
}

pub(super) type Settled = (Served, Result<RefreshOutcome, QuotaError>);

/// A caller's wait for a refresh that is already registered.
pub type RefreshFuture = BoxFuture<'static, Result<RefreshOutcome, QuotaError>>;

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

impl QuotaManager {
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
        let target = identity.map_or(MainTarget::Token, MainTarget::Named);
        self.begin_refresh_main_for(target, token, None)
    }

    /// `refreshMain(id | undefined, token, expectedIdentityGeneration?)` (COMPAT §4): with a
    /// generation, a main identity that moved on since rejects with no request.
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
        if let Some(expected) = expected_identity_generation {
            let named_moved = match target {
                MainTarget::Named(id) => !state.routes.main_matches(Some(id)),
                MainTarget::Token => !state.routes.main_matches(Some(token)),
                MainTarget::Bound => false,
            };
            if state.routes.generations.identity != expected || named_moved {
                return Refresh::ready(Err(QuotaError::IdentityChanged));
            }
        }
        let identity = match target {
            MainTarget::Token => Some(MainIdentity::of_token(token)),
            MainTarget::Named(id) => Some(MainIdentity::parse(id)),
            MainTarget::Bound => None,
        };
        if let Some(identity) = identity {
            if state
                .routes
                .main_owner()
                .is_some_and(|owner| *owner != identity)
                && state.routes.generations.known
            {
                state.routes.generations.identity += 1;
            }
            state.routes.bind_main(identity);
        }
        let ticket = self.join_or_start(&mut state, RouteId::Main, token);
        self.settle(ticket)
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
        let bound = match account {
            Some(account) => {
                state
                    .routes
                    .observe_fallback(id, account.auth_lineage_id.as_deref())
                    != LineageBind::Refused
            }
            None => state.routes.bind_fallback(id, None),
        };
        if !bound {
            // A refresh for a login that was replaced: answer for the current one instead.
            state.routes.bind_fallback(id, None);
        }
        let ticket = self.join_or_start(&mut state, RouteId::Fallback(id.to_owned()), token);
        self.settle(ticket)
    }

    /// A refresh of the main route that nobody awaits: `None` when one is running already,
    /// the route is backed off, or the manager is closed.
    pub fn background_main_refresh(&self, token: &str) -> Option<BoxFuture<'static, ()>> {
        let now = self.now();
        let identity = {
            let state = self.state();
            let main = state.routes.main();
            if state.closed || main.in_flight.is_some() || main.record.backoff.is_open(now) {
                return None;
            }
            state.routes.main_owner().map(MainIdentity::persisted)
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
    fn settle(&self, ticket: Ticket<Settled>) -> Refresh {
        let stats = self.inner.stats.clone();
        let Ticket {
            result,
            callers,
            id,
        } = ticket;
        let wait = async move {
            let (served, result) = result.await;
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
            attempt_id: id,
        }
    }

    /// Joins the route's running request, or starts one. Served from the cache when backed off.
    fn join_or_start(&self, state: &mut State, route: RouteId, token: &str) -> Ticket<Settled> {
        let now = self.now();
        let generation = {
            let slot = state.routes.slot_mut(&route);
            if slot.record.backoff.is_open(now) {
                bump(&self.inner.stats.served_during_backoff);
                return Ticket::ready((Served::DuringBackoff, slot.served_from_cache(now)));
            }
            if let Some(running) = &slot.in_flight {
                return running.join();
            }
            slot.generation
        };
        let attempt = Attempt {
            identity: state.routes.snapshot_identity(&route),
            key: state.routes.key(&route).to_string(),
            baseline_checked_at: state
                .routes
                .slot(&route)
                .and_then(|slot| slot.entry())
                .map(|e| e.checked_at),
            route: route.clone(),
            token: token.to_owned(),
            generation,
            started_at: now,
        };
        let manager = self.clone();
        let task = self
            .inner
            .runtime
            .spawn(async move { manager.run_attempt(attempt).await });
        let work = async move {
            task.await.unwrap_or_else(|e| {
                let failure = QuotaError::Network(format!("refresh task failed: {e}"));
                (Served::Request, Err(failure))
            })
        }
        .boxed();
        let (flight, ticket) = Flight::lead(state.routes.next_id(), work);
        state.routes.slot_mut(&route).in_flight = Some(flight);
        ticket
    }
}
