//! Pacing: at least `apiCallGapMs` between two usage requests with one token. A route's last
//! attempt (time and token fingerprint) is part of its record in the state file, so the gap
//! holds across processes too, even after a failure that left no snapshot.

use std::collections::HashMap;
use std::time::Duration;

use super::attempt::Attempt;
use super::QuotaManager;
use crate::fingerprint::fingerprint;

/// When each token was last used in this process.
#[derive(Default)]
pub(super) struct Pacing {
    /// Token fingerprint → the last time a usage request went out with it.
    last_call_by_token: HashMap<String, i64>,
}

impl QuotaManager {
    /// Waits until the token's gap has passed. The gap is measured on the manager's clock but
    /// waited out in real time, so a frozen test clock never hangs.
    pub(super) async fn wait_for_pacing(&self, attempt: &Attempt) {
        let gap = self.inner.config.api_call_gap_ms;
        if gap <= 0 {
            return;
        }
        let token_fingerprint = fingerprint(&attempt.token);
        let last_call = {
            let state = self.state();
            let by_token = state
                .pacing
                .last_call_by_token
                .get(&token_fingerprint)
                .copied();
            let by_route = state
                .routes
                .slot(&attempt.route)
                .map(|slot| &slot.record)
                .filter(|record| {
                    record.last_attempt_token.as_deref() == Some(token_fingerprint.as_str())
                })
                .and_then(|record| record.last_attempt_at);
            by_token.max(by_route)
        };
        if let Some(last_call) = last_call {
            let wait = (gap - (self.now() - last_call)).clamp(0, gap);
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
    }

    /// Notes a request going out now, for this process and (through the route's record) for
    /// the others.
    pub(super) fn note_request(&self, attempt: &Attempt, token_fingerprint: &str, at: i64) {
        let mut state = self.state();
        state
            .pacing
            .last_call_by_token
            .insert(token_fingerprint.to_owned(), at);
        if let Some(slot) = state
            .routes
            .attempt_slot(&attempt.route, attempt.generation)
        {
            slot.record.last_attempt_at = Some(at);
            slot.record.last_attempt_token = Some(token_fingerprint.to_owned());
        }
    }
}
