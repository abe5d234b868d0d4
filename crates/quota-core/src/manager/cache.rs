//! The cache as the host sees it: reads, the host's own writes, header frames merged in, staleness.

use std::sync::Arc;

use super::identity::MainIdentity;
use super::routes::RouteId;
use super::{ManagerConfig, QuotaManager, State, DEFAULT_CHECK_INTERVAL_MINUTES};
use crate::freshness;
use crate::host::{FallbackAccount, HostStorage};
use crate::merge::merge_header_frame;
use crate::policy::{exhausted_until, MinimumRemaining};
use crate::snapshot::{QuotaEntry, QuotaSnapshot, QuotaSource};
use crate::store::StoreUpdate;

/// The host's stored settings (explicit options on top): they decide when an entry is due.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub interval_ms: i64,
    pub refresh_every_n: i64,
    pub minimum: MinimumRemaining,
    pub fail_closed: bool,
}

impl Settings {
    pub fn from_config(config: &ManagerConfig, storage: Option<&HostStorage>) -> Self {
        let minutes = config
            .check_interval_minutes
            .or_else(|| storage?.check_interval_minutes)
            .unwrap_or(DEFAULT_CHECK_INTERVAL_MINUTES);
        Self {
            interval_ms: (minutes * crate::clock::MINUTE_MS as f64) as i64,
            refresh_every_n: config
                .refresh_every_n_requests
                .or_else(|| storage?.refresh_every_n_requests)
                .unwrap_or(0),
            minimum: storage.and_then(|s| s.minimum_remaining.clone()).unwrap_or_default(),
            // The plugin's default: unknown quota fails closed.
            fail_closed: storage.and_then(|s| s.fail_closed_on_unknown_quota).unwrap_or(true),
        }
    }

    /// An entry seeded from the host's persisted snapshot: due by its standard windows only (an
    /// old scoped window makes it due for that window's model alone, by the per-model rule).
    pub fn seeded_entry(&self, quota: QuotaSnapshot, checked_at: i64, now: i64) -> Arc<QuotaEntry> {
        let oldest_standard =
            quota.windows().map(|(_, w)| w.checked_at).min().unwrap_or(checked_at).min(checked_at);
        let exhausted = exhausted_until(&quota, &self.minimum, now);
        let refresh_after =
            freshness::refresh_after(&quota, oldest_standard, self.interval_ms, exhausted);
        Arc::new(QuotaEntry { quota, checked_at, refresh_after })
    }

    /// A cache entry due (docs/freshness.md#refresh-after) by its oldest window: a header push
    /// never postpones the poll that the older poll-only fields need.
    pub fn entry(&self, quota: QuotaSnapshot, checked_at: i64, now: i64) -> Arc<QuotaEntry> {
        let oldest = quota.oldest_window_checked_at().unwrap_or(checked_at).min(checked_at);
        let exhausted = exhausted_until(&quota, &self.minimum, now);
        let refresh_after = freshness::refresh_after(&quota, oldest, self.interval_ms, exhausted);
        Arc::new(QuotaEntry { quota, checked_at, refresh_after })
    }
}

impl QuotaManager {
    pub fn get_fallback(
        &self,
        id: &str,
        account: Option<&FallbackAccount>,
    ) -> Option<Arc<QuotaEntry>> {
        let mut state = self.state();
        if account.is_some() && !state.routes.bind_fallback_for(id, account) {
            return None;
        }
        state.routes.fallback(id)?.entry().cloned()
    }

    pub fn all_fallbacks(&self) -> Vec<(String, Arc<QuotaEntry>)> {
        self.state().routes.fallback_entries()
    }

    pub fn set_main(&self, identity: Option<&str>, entry: QuotaEntry) {
        let mut state = self.state();
        if let Some(identity) = identity {
            state.routes.bind_main(Some(MainIdentity::parse(identity)));
        }
        state.routes.main.record.entry = Some(Arc::new(entry));
        self.write_route_soon(&mut state, &RouteId::Main);
    }

    pub fn set_fallback(&self, id: &str, entry: QuotaEntry, account: Option<&FallbackAccount>) {
        let mut state = self.state();
        if !state.routes.bind_fallback_for(id, account) {
            return;
        }
        let route = RouteId::Fallback(id.to_owned());
        state.routes.slot_mut(&route).record.entry = Some(Arc::new(entry));
        self.write_route_soon(&mut state, &route);
    }

    pub fn clear_fallback(&self, id: &str) {
        let mut state = self.state();
        // A poll still running for it finds no slot of its generation and caches nothing.
        if state.routes.remove_fallback(id) {
            let key = state.routes.key(&RouteId::Fallback(id.to_owned()));
            self.write_soon(&mut state, StoreUpdate::Remove { key });
        }
    }

    /// Merges a header frame (or a host-supplied snapshot, windows or not) into the main cache.
    /// A frame for another identity starts that identity from nothing.
    pub fn push_main_frame(
        &self,
        identity: Option<&str>,
        frame: QuotaSnapshot,
    ) -> Option<Arc<QuotaEntry>> {
        let mut state = self.state();
        if let Some(identity) = identity {
            state.routes.bind_main(Some(MainIdentity::parse(identity)));
        }
        Some(self.merge_frame(&mut state, &RouteId::Main, frame))
    }

    /// Merges a header frame into a fallback's cache; `None` for one carrying a login that was
    /// already replaced.
    pub fn push_fallback_frame(
        &self,
        id: &str,
        frame: QuotaSnapshot,
        account: Option<&FallbackAccount>,
    ) -> Option<Arc<QuotaEntry>> {
        let mut state = self.state();
        if let Some(account) = account {
            let lineage = account.auth_lineage_id.as_deref();
            if !state.routes.accepts_fallback_observation(id, lineage) {
                return None;
            }
            state.routes.observe_fallback(id, lineage);
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
        let now = self.now_ms();
        let owner = state.routes.snapshot_identity(route);
        let slot = state.routes.slot_mut(route);
        let mut checked_at = frame.checked_at.unwrap_or(now);
        if slot.entry().is_some_and(|e| e.checked_at == checked_at) {
            // A push in the same millisecond as the cached observation (a poll just written) is
            // still the later one: the state file keeps the newer `checkedAt` only.
            checked_at += 1;
        }
        let mut quota = merge_header_frame(slot.entry().map(|e| &e.quota), &frame);
        quota.account_identity = quota.account_identity.or(owner);
        let entry = state.settings.entry(quota, checked_at, now);
        slot.record.entry = Some(entry.clone());
        self.write_route_soon(state, route);
        entry
    }

    pub fn is_main_stale(&self, model: Option<&str>) -> bool {
        self.now_ms() >= self.main_stale_from(model)
    }

    /// The first instant at which [`Self::is_main_stale`] turns true while nothing else changes
    /// (`i64::MIN`: already), for the host to keep (docs/freshness.md#staleness).
    pub fn main_stale_from(&self, model: Option<&str>) -> i64 {
        let state = self.state();
        let routes = &state.routes;
        let main = &routes.main;
        // A strict identity makes the main entry stale unless it is stamped with that identity.
        if routes.generations.strict_known() {
            let owner = routes.main_owner().map(MainIdentity::persisted);
            if owner.is_none() || main.entry().is_some_and(|e| e.quota.account_identity != owner) {
                return i64::MIN;
            }
        }
        // The shared record's last attempt (docs/freshness.md#header-only-staleness).
        freshness::main_stale_from(
            main.entry().map(Arc::as_ref),
            main.record.last_attempt_at,
            state.settings.interval_ms,
            model,
        )
    }

    /// `refreshEveryNRequests` as in force (0: off).
    pub fn refresh_every_n(&self) -> i64 {
        self.state().settings.refresh_every_n
    }

    pub fn is_fallback_stale(&self, id: &str, model: Option<&str>) -> bool {
        self.now_ms() >= self.fallback_stale_from(id, model)
    }

    /// [`Self::main_stale_from`] for a fallback route.
    pub fn fallback_stale_from(&self, id: &str, model: Option<&str>) -> i64 {
        let state = self.state();
        let entry = state.routes.fallback(id).and_then(|slot| slot.entry()).map(Arc::as_ref);
        freshness::stale_from(entry, state.settings.interval_ms, model)
    }

    pub fn should_refresh_on_request_count(&self, request_count: i64) -> bool {
        freshness::should_refresh_on_request_count(request_count, self.refresh_every_n())
    }

    pub fn needs_refresh(&self, request_count: i64, model: Option<&str>) -> bool {
        self.is_main_stale(model) || self.should_refresh_on_request_count(request_count)
    }
}
