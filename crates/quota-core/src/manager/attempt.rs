//! One request's life, led by its route's first caller: the fetch slot, the route's lock, the
//! shared record (which may answer it), pacing, fetch, write, the host (docs/single-flight.md).

use std::time::Duration;

use super::outcome::{backed_off_answer, RefreshOutcome, Served, Settled};
use super::routes::{RouteId, RouteSlot};
use super::{FetchedEvent, QuotaManager};
use crate::client::poll_headers;
use crate::error::QuotaError;
use crate::freshness;
use crate::merge::merge_poll_result;
use crate::shared_store::LockedRoute;
use crate::snapshot::{ApiErrorRecord, QuotaSnapshot};
use crate::stats::bump;
use crate::store::{RouteRecord, MAX_CLOCK_SKEW_MS};
use crate::transport::{PollKind, PollRequest};

/// The most requests with one token that may queue behind each other (one per fetch slot).
const MAX_QUEUED_REQUESTS: i64 = 64;

/// What the host hears about a request.
enum Announcement {
    Fetched(Box<FetchedEvent>),
    Failed(ApiErrorRecord),
}

/// What one leader request knows about itself.
pub(super) struct Attempt {
    pub route: RouteId,
    /// The identity its snapshots carry: the main identity or the fallback id, as at the start.
    pub identity: Option<String>,
    pub key: String,
    pub token: String,
    pub token_fingerprint: String,
    pub generation: u64,
    /// The id of the flight this request runs for (its callers' shared result).
    pub flight_id: u64,
    pub started_at: i64,
    /// [`RouteSlot::own_checked_at`] when the request began: a newer snapshot is someone else's.
    pub baseline_checked_at: Option<i64>,
    /// The route's last attempt when the request began: a later one is someone else's.
    pub baseline_attempt_at: Option<i64>,
}

impl Attempt {
    /// The route's last attempt, when made with this request's token (pacing is per token).
    fn last_attempt_with_token(&self, record: &RouteRecord) -> Option<i64> {
        let same_token = record.last_attempt_token.as_deref() == Some(&*self.token_fingerprint);
        record.last_attempt_at.filter(|_| same_token)
    }

    /// Rule 3 of docs/single-flight.md#adopting-another-result: another process's main attempt.
    fn main_attempted_meanwhile(&self, slot: &RouteSlot, now: i64, interval: i64) -> bool {
        let entry = slot.entry().map(AsRef::as_ref);
        self.route == RouteId::Main
            && self.last_attempt_with_token(&slot.record).is_some_and(|attempted_at| {
                self.baseline_attempt_at.is_none_or(|known| attempted_at > known)
                    && now < freshness::main_stale_from(entry, Some(attempted_at), interval, None)
            })
    }
}

impl QuotaManager {
    pub(super) async fn run_attempt(self, attempt: Attempt) -> Settled {
        let (settled, announcement) = self.attempt_under_locks(&attempt).await;
        // The route lock is released by now: other processes need not wait for our host.
        if let Some(announcement) = announcement {
            // A callback that refreshes this route itself gets this result at once, instead of
            // waiting on the request that waits on the callback.
            if let Some(slot) = self.state().routes.attempt_slot(&attempt.route, attempt.generation)
            {
                slot.flights.settle(attempt.flight_id, settled.clone());
            }
            self.announce(&attempt.route, announcement).await;
        }
        // Callers not answered yet keep the request joinable with this result (see
        // `Refresh::hold`); only its own flight: another token's request runs on.
        if let Some(slot) = self.state().routes.attempt_slot(&attempt.route, attempt.generation) {
            slot.flights.finish(attempt.flight_id, settled.clone());
        }
        settled
    }

    async fn attempt_under_locks(&self, attempt: &Attempt) -> (Settled, Option<Announcement>) {
        let fetch_slot = match attempt.route {
            // Never closed: acquiring cannot fail.
            RouteId::Fallback(_) => self.inner.fallback_fetch_slots.acquire().await.ok(),
            RouteId::Main => None,
        };
        let route_lock = if self.inner.shared.is_memory_only() {
            None
        } else {
            let locked = match self.lock_route(&attempt.key).await {
                Ok(locked) => locked,
                Err(error) => return ((Served::Request, Err(error)), None),
            };
            if let Some(settled) = self.serve_from_shared_state(attempt, locked.record.as_ref()) {
                if let Some(lock) = locked.guard {
                    lock.release().await;
                }
                return (settled, None);
            }
            locked.guard
        };
        self.wait_for_pacing(attempt).await;
        let (result, announcement) = self.fetch_and_record(attempt, fetch_slot).await;
        self.persist_attempt(attempt, route_lock).await;
        ((Served::Request, result), announcement)
    }

    /// Takes the route's shared lock and reads its record under it; an unusable lock is reported
    /// and done without (docs/single-flight.md#without-a-shared-store).
    async fn lock_route(&self, key: &str) -> Result<LockedRoute, QuotaError> {
        let timeout = Duration::from_millis(self.inner.config.lock_timeout_ms.max(0) as u64);
        // One try first, so a wait is counted (`lockWaits`) when it starts, not when it ends.
        let mut outcome = self.inner.shared.lock_route(key, Duration::ZERO).await;
        if matches!(outcome, Ok(None)) {
            bump(&self.inner.stats.lock_waits);
            outcome = self.inner.shared.lock_route(key, timeout).await;
        }
        let locked = match outcome {
            Ok(Some(locked)) => locked,
            Ok(None) => {
                bump(&self.inner.stats.lock_timeouts);
                return Err(QuotaError::Timeout(format!(
                    "waited {} ms for another process's quota refresh",
                    timeout.as_millis()
                )));
            }
            Err(error) => {
                self.report_store_error(error);
                return Ok(LockedRoute::default());
            }
        };
        if let Some(problem) = &locked.problem {
            self.report_state_error(problem);
        }
        Ok(locked)
    }

    /// With the route lock held: folds in what other processes wrote, and answers from it when
    /// a request is pointless (docs/single-flight.md#adopting-another-result). `None`: fetch.
    fn serve_from_shared_state(
        &self,
        attempt: &Attempt,
        record: Option<&RouteRecord>,
    ) -> Option<Settled> {
        let now = self.now_ms();
        let mut state = self.state();
        let interval = state.settings.interval_ms;
        // Adopted clamped, but never an answer (docs/state-file.md#clock-bounds).
        let beyond_skew = |at: Option<i64>| at > Some(now.saturating_add(MAX_CLOCK_SKEW_MS));
        let from_the_future = beyond_skew(record.and_then(|r| Some(r.entry.as_ref()?.checked_at)));
        let attempt_from_the_future = beyond_skew(record.and_then(|r| r.last_attempt_at));
        let record = record.map(|r| r.clamped(now, &self.adoption_limits(interval)));
        let Some(slot) = state.routes.attempt_slot(&attempt.route, attempt.generation) else {
            // The slot was re-bound meanwhile: the polled route's backoff still holds.
            let kept =
                state.routes.attempt_record(&attempt.route, attempt.generation, &attempt.key)?;
            if let Some(record) = &record {
                kept.merge(record);
            }
            return backed_off_answer(kept, now);
        };
        if let Some(record) = &record {
            slot.adopt(record);
        }
        if let Some(answer) = backed_off_answer(&slot.record, now) {
            return Some(answer);
        }
        let entry = slot.entry()?;
        let produced_by_another = attempt.baseline_checked_at.is_none_or(|b| entry.checked_at > b);
        let recent = entry.checked_at >= attempt.started_at
            || !freshness::is_stale(Some(entry), now, interval, None);
        if (produced_by_another && recent && !from_the_future)
            || (!attempt_from_the_future && attempt.main_attempted_meanwhile(slot, now, interval))
        {
            let outcome = RefreshOutcome { quota: entry.quota.clone(), fetched: false };
            // From now on this process knows the adopted snapshot.
            slot.adopted_checked_at = None;
            return Some((Served::OtherProcess, Ok(outcome)));
        }
        None
    }

    /// The fetch slot goes back once the answer is in: the next request goes out during the write.
    async fn fetch_and_record(
        &self,
        attempt: &Attempt,
        fetch_slot: Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> (Result<RefreshOutcome, QuotaError>, Option<Announcement>) {
        let fetch_started_at = self.now_ms();
        self.note_request(attempt, fetch_started_at);
        bump(&self.inner.stats.api_calls);
        let result = self.poll(attempt).await;
        drop(fetch_slot);
        match result {
            Ok(snapshot) => {
                let (quota, cached) = self.record_success(attempt, snapshot);
                // A poll overtaken by a new identity or login is its callers' alone.
                let announcement = cached.then(|| {
                    Announcement::Fetched(Box::new(FetchedEvent {
                        checked_at: quota.checked_at.unwrap_or(fetch_started_at),
                        quota: quota.clone(),
                        token_fingerprint: attempt.token_fingerprint.clone(),
                        fetch_started_at,
                        error_generation: 0,
                        error_cleared_at: None,
                    }))
                });
                (Ok(RefreshOutcome { quota, fetched: true }), announcement)
            }
            Err(error) => {
                let armed = self.record_failure(attempt, &error);
                (Err(error), armed.map(Announcement::Failed))
            }
        }
    }

    /// The poll: over HTTP, or through the host's transport (docs/endpoint.md#host-transports).
    async fn poll(&self, attempt: &Attempt) -> Result<QuotaSnapshot, QuotaError> {
        let clock = self.inner.clock.clone();
        let now = move || clock.now_ms();
        let Some(transport) = &self.inner.config.transport else {
            return self.inner.client.fetch(&attempt.token, now).await;
        };
        let config = &self.inner.config.usage;
        let request = PollRequest {
            kind: match attempt.route {
                RouteId::Main => PollKind::Main,
                RouteId::Fallback(_) => PollKind::Fallback,
            },
            account_id: attempt.identity.clone(),
            access_token: attempt.token.clone(),
            url: config.url.clone(),
            headers: poll_headers(&attempt.token, &config.user_agent),
        };
        transport.fetch(request, config.timeout, now).await
    }

    /// Only a host transport with its own credentials may refresh with an empty token.
    pub fn can_fetch_without_access_token(&self) -> bool {
        self.inner.config.transport.as_ref().is_some_and(|t| t.0.fetches_without_token())
    }

    /// Caches a poll, merged with newer header windows, and clears the backoff, unless the
    /// route was dropped or replaced meanwhile. Returns the snapshot and whether it was cached.
    fn record_success(
        &self,
        attempt: &Attempt,
        mut snapshot: QuotaSnapshot,
    ) -> (QuotaSnapshot, bool) {
        let now = self.now_ms();
        let checked_at = snapshot.checked_at.unwrap_or(now);
        snapshot.account_identity.clone_from(&attempt.identity);
        let mut state = self.state();
        let state = &mut *state;
        let Some(slot) = state.routes.attempt_slot(&attempt.route, attempt.generation) else {
            return (snapshot, false);
        };
        let quota = merge_poll_result(slot.entry().map(|e| &e.quota), &snapshot);
        slot.record.entry = Some(state.settings.entry(quota.clone(), checked_at, now));
        slot.record.token_fingerprint = Some(attempt.token_fingerprint.clone());
        let had_error = slot.record.backoff.last_error.is_some();
        slot.clear_backoff(now);
        if had_error && attempt.route == RouteId::Main {
            state.routes.generations.error_cleared(checked_at);
        }
        (quota, true)
    }

    /// Waits out the token's gap, its send time reserved first (docs/single-flight.md#pacing).
    async fn wait_for_pacing(&self, attempt: &Attempt) {
        let gap = self.inner.config.api_call_gap_ms;
        if gap <= 0 {
            return;
        }
        let now = self.now_ms();
        let send_at = {
            let mut state = self.state();
            let by_token = state.last_call_by_token.get(&attempt.token_fingerprint).copied();
            let by_route = state
                .routes
                .slot(&attempt.route)
                .and_then(|slot| attempt.last_attempt_with_token(&slot.record));
            // Bounded: a time from a clock running ahead cannot stall the token for long.
            let latest = now.saturating_add(gap.saturating_mul(MAX_QUEUED_REQUESTS));
            let send_at = by_token
                .max(by_route)
                .map_or(now, |last| last.saturating_add(gap).clamp(now, latest));
            state.last_call_by_token.insert(attempt.token_fingerprint.clone(), send_at);
            send_at
        };
        if send_at > now {
            tokio::time::sleep(Duration::from_millis(send_at.abs_diff(now))).await;
        }
    }

    /// Notes a request going out now, here and in the polled route's record (for the others).
    fn note_request(&self, attempt: &Attempt, at: i64) {
        let mut state = self.state();
        let last_call =
            state.last_call_by_token.entry(attempt.token_fingerprint.clone()).or_insert(at);
        // A reservation made by a later request (see `wait_for_pacing`) stays.
        *last_call = (*last_call).max(at);
        if let Some(record) =
            state.routes.attempt_record(&attempt.route, attempt.generation, &attempt.key)
        {
            record.last_attempt_at = Some(at);
            record.last_attempt_token = Some(attempt.token_fingerprint.clone());
        }
    }

    /// Tells the host, and waits until it has handled it.
    async fn announce(&self, route: &RouteId, announcement: Announcement) {
        let events = &self.inner.events;
        match (route, announcement) {
            (RouteId::Main, Announcement::Fetched(mut event)) => {
                let generations = self.state().routes.generations.clone();
                event.error_generation = generations.error;
                event.error_cleared_at = generations.error_cleared_at;
                events.main_quota_fetched(*event).await;
            }
            (RouteId::Main, Announcement::Failed(record)) => {
                let generation = self.state().routes.generations.error_set();
                events.api_error(record, generation).await;
            }
            (RouteId::Fallback(id), Announcement::Fetched(event)) => {
                events.fallback_quota_fetched(id.clone(), *event).await;
            }
            (RouteId::Fallback(id), Announcement::Failed(record)) => {
                events.fallback_api_error(id.clone(), record).await;
            }
        }
    }
}
