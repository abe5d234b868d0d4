//! A route's backoff (docs/backoff.md): armed, cleared, adopted from the host, and failing closed.

use super::attempt::Attempt;
use super::routes::{RouteId, RouteSlot};
use super::QuotaManager;
use crate::backoff;
use crate::error::QuotaError;
use crate::snapshot::{ApiErrorRecord, QuotaSource};

/// How often, at most, a route backed off here looks at the shared store again.
const BACKOFF_RECHECK_MS: i64 = 1_000;

/// The answer the plugin sends itself when it fails closed (docs/routing.md#fail-closed-answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailClosedResponse {
    pub retry_after_secs: i64,
    pub body: String,
}

impl RouteSlot {
    /// A poll succeeded: the ladder starts over.
    pub(super) fn clear_backoff(&mut self, now: i64) {
        self.record.backoff.record_success();
        self.record.backoff_updated_at = now;
    }

    /// Adopts a backoff the host persisted (docs/backoff.md#persisted-backoff).
    pub(super) fn adopt_persisted_error(&mut self, error: &ApiErrorRecord, now: i64) {
        let polled_since = self.entry().is_some_and(|entry| {
            entry.quota.source == Some(QuotaSource::Poll) && entry.checked_at > error.checked_at
        });
        if error.checked_at <= self.record.backoff_updated_at || polled_since {
            return;
        }
        self.record.backoff = backoff::from_persisted(error, now);
        self.record.backoff_updated_at = error.checked_at;
    }
}

impl QuotaManager {
    /// Reads a backed-off route's shared record again, which another process may have cleared
    /// (docs/backoff.md#shared-backoff).
    pub(super) fn recheck_backoff_soon(&self, state: &super::State, route: &RouteId, now: i64) {
        let due = |slot: &&RouteSlot| {
            slot.record.backoff.is_open(now) && slot.claim_backoff_recheck(now, BACKOFF_RECHECK_MS)
        };
        let Some(slot) = state.routes.slot(route).filter(due) else {
            return;
        };
        let (manager, route, generation) = (self.clone(), route.clone(), slot.generation);
        let key = state.routes.key(&route);
        self.inner.runtime.spawn(async move {
            let Ok(Some(record)) = manager.inner.shared.read_route(&key).await else {
                return;
            };
            let now = manager.now_ms();
            let mut state = manager.state();
            let record = record.clamped(now, &manager.adoption_limits(state.settings.interval_ms));
            if let Some(slot) = state.routes.attempt_slot(&route, generation) {
                slot.adopt(&record);
            }
        });
    }

    /// Arms the route's backoff for a failure unless open already: `Some`, the record to report.
    pub(super) fn record_failure(
        &self,
        attempt: &Attempt,
        error: &QuotaError,
    ) -> Option<ApiErrorRecord> {
        let now = self.now_ms();
        let mut state = self.state();
        // The route that was polled, even when the main slot was re-bound meanwhile.
        let record =
            state.routes.attempt_record(&attempt.route, attempt.generation, &attempt.key)?;
        let armed = record.backoff.record_failure(
            error,
            now,
            &self.inner.config.backoff,
            rand::random::<f64>(),
            attempt.identity.as_deref(),
        );
        armed.inspect(|_| record.backoff_updated_at = now)
    }

    pub fn is_backed_off(&self) -> bool {
        self.is_route_backed_off(&RouteId::Main)
    }

    pub fn is_fallback_backed_off(&self, id: &str) -> bool {
        self.is_route_backed_off(&RouteId::Fallback(id.to_owned()))
    }

    fn is_route_backed_off(&self, route: &RouteId) -> bool {
        let now = self.now_ms();
        let state = self.state();
        self.recheck_backoff_soon(&state, route, now);
        state.routes.slot(route).is_some_and(|slot| slot.record.backoff.is_open(now))
    }

    pub fn last_api_error(&self) -> Option<ApiErrorRecord> {
        self.state().routes.main.record.backoff.last_error.clone()
    }

    pub fn fallback_api_error(&self, id: &str) -> Option<ApiErrorRecord> {
        self.state().routes.fallback(id)?.record.backoff.last_error.clone()
    }

    pub fn fail_closed_response(&self) -> Option<FailClosedResponse> {
        let now = self.now_ms();
        let state = self.state();
        let main = &state.routes.main;
        let backoff = &main.record.backoff;
        if !state.settings.fail_closed || main.entry().is_some() || !backoff.is_open(now) {
            return None;
        }
        let retry_after_secs = ((backoff.remaining_ms(now) + 999) / 1000).max(1);
        let last_error =
            backoff.last_error.as_ref().map_or("unknown error", |e| e.message.as_str());
        let message = format!("Quota API backed off for {retry_after_secs}s after: {last_error}");
        // Built by hand: the key order is fixed, and a JSON map would sort it.
        let body = format!(
            r#"{{"type":"error","error":{{"type":"rate_limit_error","message":{}}}}}"#,
            serde_json::Value::String(message)
        );
        Some(FailClosedResponse { retry_after_secs, body })
    }
}
