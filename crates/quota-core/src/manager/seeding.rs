//! Seeding: the state file is read once, at construction; the host's storage (its persisted
//! snapshots and errors) is adopted whenever the host hands it over. Either way a route only
//! takes what is newer than what it has.

use super::routes::{MainIdentity, RouteId, RouteSlot};
use super::settings::Settings;
use super::QuotaManager;
use crate::host::{FallbackAccount, HostStorage};
use crate::route_key::RouteKey;
use crate::snapshot::{ApiErrorRecord, QuotaSnapshot};
use crate::stats::bump;

/// What the host persisted for one route.
struct Persisted<'a> {
    quota: Option<&'a QuotaSnapshot>,
    /// When the host says the snapshot was taken, if it keeps that apart from the snapshot.
    checked_at: Option<i64>,
    last_error: Option<&'a ApiErrorRecord>,
}

impl Persisted<'_> {
    /// Adopts the snapshot when it is newer than the cache, and the error's backoff when that
    /// is newer than the route's.
    fn seed(&self, slot: &mut RouteSlot, settings: &Settings, now: i64) {
        if let Some(quota) = self.quota.filter(|q| q.has_windows()) {
            let checked_at = self
                .checked_at
                .or(quota.checked_at)
                .or_else(|| quota.oldest_window_checked_at());
            if let Some(checked_at) = checked_at {
                if slot.entry().is_none_or(|e| checked_at > e.checked_at) {
                    slot.record.entry = Some(settings.entry(quota.clone(), checked_at, now));
                }
            }
        }
        if let Some(error) = self.last_error {
            slot.adopt_persisted_error(error, now);
        }
    }
}

impl QuotaManager {
    /// Takes every route from the state file: the main route of `main_identity` (or the newest
    /// main route when the host named none), and every fallback account.
    pub(super) fn seed_from_state_file(&self, main_identity: Option<MainIdentity>) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let loaded = match store.load() {
            Ok(loaded) => loaded,
            Err(error) => {
                bump(&self.inner.stats.state_errors);
                eprintln!("anthropic-quota-manager: could not read the quota state: {error}");
                return;
            }
        };
        if let Some(aside) = &loaded.quarantined {
            self.report_quarantine(aside);
        }
        let routes = loaded
            .state
            .routes
            .iter()
            .filter_map(|(key, record)| Some((RouteKey::parse(key)?, record)));
        let mut newest_main = None;
        let mut state = self.state();
        for (key, record) in routes {
            match key {
                RouteKey::Main(identity) => {
                    let identity = MainIdentity::parse(&identity);
                    if main_identity
                        .as_ref()
                        .is_some_and(|wanted| *wanted != identity)
                    {
                        continue;
                    }
                    let checked_at = record.entry.as_ref().map(|e| e.checked_at);
                    // The last of equally new routes wins, as `max_by_key` would pick it.
                    if newest_main
                        .as_ref()
                        .is_none_or(|(newest, _, _)| checked_at >= *newest)
                    {
                        newest_main = Some((checked_at, identity, record));
                    }
                }
                RouteKey::Fallback(id) => state.routes.seed_fallback(&id, record),
            }
        }
        if let Some((_, identity, record)) = newest_main {
            state.routes.seed_main(identity, record);
        }
    }

    /// Takes new settings from the host's storage and seeds the main route from it.
    pub fn update_storage(&self, storage: Option<&HostStorage>) {
        self.state().settings = Settings::from_config(&self.inner.config, storage);
        if let Some(storage) = storage {
            self.seed_main(storage, None);
        }
    }

    /// Adopts the host's persisted main snapshot when it is newer than the cache, and its
    /// persisted backoff when that is newer than ours.
    pub fn seed_main(&self, storage: &HostStorage, identity: Option<&str>) {
        let now = self.now();
        let mut state = self.state();
        let state = &mut *state;
        let identity = identity
            .or(storage.main_account_id.as_deref())
            .or_else(|| storage.main_quota.as_ref()?.account_identity.as_deref());
        if let Some(identity) = identity {
            state.routes.bind_main(MainIdentity::parse(identity));
        }
        let persisted = Persisted {
            quota: storage.main_quota.as_ref(),
            checked_at: storage.main_quota_checked_at,
            last_error: storage.main_last_error.as_ref(),
        };
        persisted.seed(state.routes.main_mut(), &state.settings, now);
    }

    /// Adopts each configured account's persisted quota and backoff, and forgets accounts that
    /// are no longer configured. Disabled accounts are skipped.
    pub fn seed_fallbacks(&self, accounts: &[FallbackAccount]) {
        let now = self.now();
        let mut state = self.state();
        let state = &mut *state;
        let configured: std::collections::HashSet<&str> =
            accounts.iter().map(|a| a.id.as_str()).collect();
        state.routes.retain_fallbacks(|id| configured.contains(id));
        for account in accounts.iter().filter(|a| a.enabled) {
            if !state
                .routes
                .bind_fallback(&account.id, account.auth_lineage_id.as_deref())
            {
                continue;
            }
            let persisted = Persisted {
                quota: account.quota.as_ref(),
                checked_at: None,
                last_error: account.last_error.as_ref(),
            };
            let slot = state
                .routes
                .slot_mut(&RouteId::Fallback(account.id.clone()));
            persisted.seed(slot, &state.settings, now);
        }
    }
}
