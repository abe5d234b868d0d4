//! Pacing: at least `apiCallGapMs` between two usage requests with one token. A route's last
//! attempt (time and token fingerprint) is part of its record in the state file, so the gap
//! holds across processes too, even after a failure that left no snapshot.

use std::time::Duration;

use super::attempt::Attempt;
use super::QuotaManager;

/// The most requests with one token that may queue behind each other (one per fetch slot).
const MAX_QUEUED_REQUESTS: i64 = 64;

impl QuotaManager {
    /// Waits until the token's gap has passed. The gap is measured on the manager's clock but
    /// waited out in real time, so a frozen test clock never hangs. The send time is reserved
    /// under the state lock, so two routes sharing a token (two fallbacks with one token) take
    /// turns instead of both seeing the token idle.
    pub(super) async fn wait_for_pacing(&self, attempt: &Attempt) {
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
                .map(|slot| &slot.record)
                .filter(|record| {
                    record.last_attempt_token.as_deref() == Some(attempt.token_fingerprint.as_str())
                })
                .and_then(|record| record.last_attempt_at);
            // Bounded: a time from a clock running ahead cannot stall the token for long.
            let latest = now.saturating_add(gap.saturating_mul(MAX_QUEUED_REQUESTS));
            let send_at = by_token
                .max(by_route)
                .map_or(now, |last| last.saturating_add(gap).clamp(now, latest));
            state.last_call_by_token.insert(attempt.token_fingerprint.clone(), send_at);
            send_at
        };
        let wait = send_at - now;
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }

    /// Notes a request going out now, for this process and (through the route's record, the
    /// one polled even if the main slot was re-bound meanwhile) for the others.
    pub(super) fn note_request(&self, attempt: &Attempt, at: i64) {
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
}
