//! One request's life, led by the first caller of a route: take the fallback fetch slot and the
//! route's cross-process lock, fold in what other processes wrote (which may answer it), wait
//! out the pacing gap, fetch, record the result, write it, and tell the host.

use std::time::Duration;

use super::announce::Announcement;
use super::outcome::{backed_off_answer, RefreshOutcome, Served, Settled};
use super::routes::{RouteId, RouteSlot};
use super::{FetchedEvent, QuotaManager};
use crate::client::poll_headers;
use crate::error::QuotaError;
use crate::freshness;
use crate::merge::merge_poll_result;
use crate::shared_store::RouteGuard;
use crate::snapshot::QuotaSnapshot;
use crate::stats::bump;
use crate::store::{RouteRecord, MAX_CLOCK_SKEW_MS};
use crate::transport::{PollKind, PollRequest};

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
    /// The cached snapshot's time when the request began; a newer one in the state file was
    /// produced by someone else meanwhile.
    pub baseline_checked_at: Option<i64>,
    /// The route's last attempt known when the request began; a later one in the state file
    /// was made by someone else meanwhile.
    pub baseline_attempt_at: Option<i64>,
}

impl Attempt {
    /// Another process attempted the main route with this token while this request waited,
    /// and knowing that, the cached entry is not due (the header-only rule counts an attempt,
    /// not its success): polling again would make two polls in one interval. A failure met
    /// with another token is no answer for this one.
    fn main_attempted_meanwhile(&self, slot: &RouteSlot, now: i64, interval: i64) -> bool {
        let record = &slot.record;
        let Some(attempted_at) = record.last_attempt_at else {
            return false;
        };
        let entry = slot.entry().map(AsRef::as_ref);
        self.route == RouteId::Main
            && self.baseline_attempt_at.is_none_or(|known| attempted_at > known)
            && record.last_attempt_token.as_deref() == Some(self.token_fingerprint.as_str())
            && now < freshness::main_stale_from(entry, Some(attempted_at), interval, None)
    }
}

impl QuotaManager {
    pub(super) async fn run_attempt(&self, attempt: Attempt) -> Settled {
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
        // Callers not answered yet (a JS promise settles later, on the event loop) keep the
        // request joinable with this result: a call made before then shares it.
        // Only its own flight: another token's request, started later, runs on.
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
            let (lock, shared) = match self.lock_route(&attempt.key).await {
                Ok(locked) => locked,
                Err(error) => return ((Served::Request, Err(error)), None),
            };
            if let Some(settled) = self.serve_from_shared_state(attempt, shared.as_ref()) {
                if let Some(lock) = lock {
                    lock.release().await;
                }
                return (settled, None);
            }
            lock
        };
        self.wait_for_pacing(attempt).await;
        let (result, announcement) = self.fetch_and_record(attempt, fetch_slot).await;
        self.persist_attempt(attempt, route_lock).await;
        ((Served::Request, result), announcement)
    }

    /// Takes the route's lock where routes are shared (Redis, or the state file), waiting
    /// (without blocking a thread) for another process's or host's refresh to finish, and reads
    /// the route's record under it. A lock or file that cannot be used at all (read-only
    /// directory, `.locks` that is a file, unreadable state file) is reported once and the
    /// request goes on without it: single flight still holds in this process.
    async fn lock_route(
        &self,
        key: &str,
    ) -> Result<(Option<RouteGuard>, Option<RouteRecord>), QuotaError> {
        let timeout = Duration::from_millis(self.inner.config.lock_timeout_ms.max(0) as u64);
        // One try first, so a wait is counted (`lockWaits`) when it starts, not when it ends.
        let mut outcome = self.inner.shared.lock_route(key, Duration::ZERO).await;
        if matches!(outcome, Ok(None)) {
            bump(&self.inner.stats.lock_waits);
            outcome = self.inner.shared.lock_route(key, timeout).await;
        }
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                self.report_store_error(error);
                return Ok((None, None));
            }
        };
        let Some(locked) = outcome else {
            bump(&self.inner.stats.lock_timeouts);
            return Err(QuotaError::Timeout(format!(
                "waited {} ms for another process's quota refresh",
                timeout.as_millis()
            )));
        };
        if let Some(problem) = &locked.problem {
            self.report_state_error(problem);
        }
        Ok((locked.guard, locked.record))
    }

    /// With the route lock held: folds in what other processes wrote, then answers from it
    /// when it makes a request pointless (an open shared backoff, or a result produced while
    /// this call waited). `None` means: fetch.
    fn serve_from_shared_state(
        &self,
        attempt: &Attempt,
        record: Option<&RouteRecord>,
    ) -> Option<Settled> {
        let now = self.now_ms();
        let mut state = self.state();
        let interval = state.settings.interval_ms;
        // A record from a clock running ahead is adopted clamped, but never taken as another
        // process's fresh answer: clamped to "now", it would look fresh at every poll.
        let beyond_skew = |at: i64| at > now.saturating_add(MAX_CLOCK_SKEW_MS);
        let from_the_future =
            record.and_then(|r| r.entry.as_ref()).is_some_and(|e| beyond_skew(e.checked_at));
        let attempt_from_the_future =
            record.and_then(|r| r.last_attempt_at).is_some_and(beyond_skew);
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
            let outcome = RefreshOutcome { quota: slot.entry()?.quota.clone(), fetched: false };
            // From now on this process knows the adopted snapshot.
            slot.adopted_checked_at = None;
            return Some((Served::OtherProcess, Ok(outcome)));
        }
        None
    }

    /// The fetch slot bounds concurrent requests only: it is given back as soon as the answer
    /// is in, so the next account's request goes out while this result is being written (and
    /// the writes of many results can be grouped into one).
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
                let outcome = RefreshOutcome { quota, fetched: true };
                (Ok(outcome), announcement)
            }
            Err(error) => {
                let armed = self.record_failure(attempt, &error);
                (Err(error), armed.map(Announcement::Failed))
            }
        }
    }

    /// The poll itself: over HTTP, or through the host's transport when it gave one
    /// (docs/endpoint.md#host-transports).
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

    /// May a refresh be made with an empty token? Only through a host transport that brings
    /// its own credentials.
    pub fn can_fetch_without_access_token(&self) -> bool {
        self.inner.config.transport.as_ref().is_some_and(|t| t.0.fetches_without_token())
    }

    /// Caches a poll, merged with newer header windows, and clears the backoff, unless the
    /// route was dropped or replaced meanwhile. Returns the snapshot to hand out, and whether
    /// it was cached.
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
}
