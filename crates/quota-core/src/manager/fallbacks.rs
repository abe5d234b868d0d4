//! Fan-out over the fallback accounts: refresh every enabled account whose quota is due, a few
//! at a time (the fetch slots), each through its own route.

use futures::future::{BoxFuture, FutureExt};

use super::refresh::RefreshFuture;
use super::routes::LineageBind;
use super::QuotaManager;
use crate::freshness;
use crate::host::FallbackAccount;

impl QuotaManager {
    /// Starts the due refreshes now; the future waits for all of them. Failures are recorded on
    /// each route (backoff, callbacks), never returned.
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
        if state
            .routes
            .observe_fallback(&account.id, account.auth_lineage_id.as_deref())
            == LineageBind::Refused
        {
            return false;
        }
        let interval = state.settings.interval_ms;
        let Some(slot) = state.routes.fallback(&account.id) else {
            return true;
        };
        !slot.record.backoff.is_open(now)
            && slot.in_flight.is_none()
            && freshness::is_stale(slot.entry().map(AsRef::as_ref), now, interval, None)
    }
}
