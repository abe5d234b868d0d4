//! Fan-out over the fallback accounts: refresh every enabled account whose quota is due, a few
//! at a time (the fetch slots), each through its own route.

use futures::future::{BoxFuture, FutureExt};

use super::refresh::RefreshFuture;
use super::QuotaManager;
use crate::freshness;
use crate::host::FallbackAccount;

/// How many accounts a fan-out registers before it lets other tasks on its thread run.
const REGISTERED_PER_TURN: usize = 256;

impl QuotaManager {
    /// Refreshes the due accounts; the future waits for all of them. Failures are recorded on
    /// each route (backoff, callbacks), never returned. The refreshes are registered when the
    /// future first runs, on the runtime, not on the caller's thread: with 10,000 accounts that
    /// took the JavaScript thread 50-100 ms. Whoever asks for one of these routes meanwhile
    /// starts its request, and this fan-out then finds it running and leaves it be, exactly as
    /// it leaves any request already running.
    pub fn refresh_all_fallbacks(&self, accounts: Vec<FallbackAccount>) -> BoxFuture<'static, ()> {
        let manager = self.clone();
        async move {
            let mut refreshes: Vec<RefreshFuture> = Vec::new();
            let usable = accounts.iter().filter(|a| a.enabled && a.access.is_some());
            for (registered, account) in usable.enumerate() {
                if registered % REGISTERED_PER_TURN == REGISTERED_PER_TURN - 1 {
                    // Long lists must not hold one runtime thread for their whole length.
                    tokio::task::yield_now().await;
                }
                if manager.is_fallback_due(account) {
                    let token = account.access.as_deref().unwrap_or_default();
                    refreshes.push(
                        manager.begin_refresh_fallback(&account.id, token, Some(account)).wait,
                    );
                }
            }
            // Errors are on each route now; the caller asked for none.
            futures::future::join_all(refreshes).await;
        }
        .boxed()
    }

    fn is_fallback_due(&self, account: &FallbackAccount) -> bool {
        let now = self.now_ms();
        let mut state = self.state();
        if !state.routes.bind_fallback_for(&account.id, Some(account)) {
            return false;
        }
        let interval = state.settings.interval_ms;
        state.routes.fallback(&account.id).is_none_or(|slot| {
            !slot.record.backoff.is_open(now)
                && slot.flights.is_empty()
                && freshness::is_stale(slot.entry().map(AsRef::as_ref), now, interval, None)
        })
    }
}
