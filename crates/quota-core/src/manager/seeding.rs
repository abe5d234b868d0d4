//! Seeding: the state file is read once, at construction; the host's storage (its persisted
//! snapshots and errors) is adopted whenever the host hands it over. Either way a route only
//! takes what is newer than what it has.

use super::routes::{LineageBind, MainIdentity, RouteId, RouteSlot};
use super::settings::Settings;
use super::QuotaManager;
use crate::host::{FallbackAccount, HostStorage};
use crate::merge::merge_header_frame;
use crate::route_key::RouteKey;
use crate::snapshot::{ApiErrorRecord, QuotaEntry, QuotaSnapshot, QuotaSource};
use std::sync::Arc;

/// How long construction waits for the state-file lock (taken only to set a corrupt file
/// aside): it runs on the host's thread.
const SEED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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
        self.seed_quota(slot, settings, now);
        if let Some(error) = self.last_error {
            slot.adopt_persisted_error(error, now);
        }
    }

    /// A newer header harvest is cached and the host persisted an older poll: the poll's own
    /// fields (scoped windows, extra usage, its binding window) come back under the newer
    /// header windows, as the plugin's seeding does. `true` when it merged.
    fn restore_poll_fields(
        slot: &mut RouteSlot,
        persisted: &QuotaSnapshot,
        checked_at: i64,
    ) -> bool {
        let Some(current) = slot.entry() else {
            return false;
        };
        let merges = current.checked_at >= checked_at
            && current.quota.source == Some(QuotaSource::Headers)
            && persisted.source == Some(QuotaSource::Poll);
        if !merges {
            return false;
        }
        let mut quota = merge_header_frame(Some(persisted), &current.quota);
        quota
            .account_identity
            .clone_from(&current.quota.account_identity);
        slot.record.entry = Some(Arc::new(QuotaEntry {
            quota,
            checked_at: current.checked_at,
            refresh_after: current.refresh_after,
        }));
        true
    }

    fn seed_quota(&self, slot: &mut RouteSlot, settings: &Settings, now: i64) {
        // A persisted main quota counts even without windows (legacy `{ quotas: [], expires }`):
        // it is the host's last word for that account, and its time says how fresh it is.
        let main_legacy = self.checked_at.is_some();
        let has_any_window =
            |q: &QuotaSnapshot| q.has_windows() || q.scoped.as_ref().is_some_and(|s| !s.is_empty());
        if let Some(quota) = self.quota.filter(|q| main_legacy || has_any_window(q)) {
            // As the plugin dates a persisted snapshot: its latest window or its own time.
            let checked_at = self.checked_at.or_else(|| latest_checked_at(quota));
            if let Some(checked_at) = checked_at {
                if main_legacy && Self::restore_poll_fields(slot, quota, checked_at) {
                    return;
                }
                if slot.entry().is_none_or(|e| checked_at > e.checked_at) {
                    slot.record.entry = Some(settings.seeded_entry(quota.clone(), checked_at, now));
                }
            }
        }
    }
}

impl QuotaManager {
    /// Takes every route from the state file: the main route of `main_identity`, and every
    /// fallback account. Other main routes are kept aside, unowned: the file holds other
    /// accounts' routes too, and this process's account is known only once the host names it
    /// (or passes its token); the route of that identity is taken then. Every adopted time is clamped (a clock running ahead, a damaged
    /// value). This runs on the host's thread: the lock it may take (only to set a corrupt file
    /// aside) is waited for briefly.
    pub(super) fn seed_from_state_file(&self, main_identity: Option<MainIdentity>) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let store = store
            .clone()
            .with_lock_timeout(SEED_LOCK_WAIT.min(self.inner.config.state_lock_wait()));
        let loaded = match store.load() {
            Ok(loaded) => loaded,
            Err(error) => {
                self.report_state_error(&error);
                return;
            }
        };
        if let Some(version) = loaded.newer_schema {
            self.report_newer_schema(version);
        }
        if let Some(aside) = &loaded.quarantined {
            self.report_quarantine(aside);
        }
        let now = self.now();
        let mut state = self.state();
        let limits = self.adoption_limits(state.settings.interval_ms);
        for (key, record) in &loaded.state.routes {
            let record = record.clamped(now, &limits);
            match RouteKey::parse(key) {
                Some(RouteKey::Main(identity)) => {
                    let identity = MainIdentity::parse(&identity);
                    if main_identity.as_ref() == Some(&identity) {
                        state.routes.seed_main(identity, &record);
                    } else {
                        state.routes.keep_unclaimed_main(key.clone(), record);
                    }
                }
                Some(RouteKey::Fallback(id)) => state.routes.seed_fallback(&id, &record),
                None => {}
            }
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
        let known = state.routes.generations.known;
        let bound = state.routes.main_owner().map(MainIdentity::persisted);
        let identity = if known {
            bound.clone()
        } else {
            identity
                .or(storage.main_account_id.as_deref())
                .or_else(|| storage.main_quota.as_ref()?.account_identity.as_deref())
                .map(str::to_owned)
        };
        if let (Some(identity), false) = (&identity, known) {
            state.routes.bind_main(MainIdentity::parse(identity));
        }
        let adopt_error = Self::seed_main_generations(state, storage, now);
        // A legacy persisted quota carries no identity: it is the one it is seeded for.
        let quota = storage.main_quota.clone().map(|mut quota| {
            if quota.account_identity.is_none() && !state.routes.generations.strict_known() {
                quota.account_identity.clone_from(&identity);
            }
            quota
        });
        if let (Some(quota), Some(identity)) = (&quota, &identity) {
            if state.routes.generations.strict_known()
                && quota.account_identity.as_deref() != Some(identity.as_str())
            {
                return;
            }
        }
        let persisted = Persisted {
            quota: quota.as_ref(),
            checked_at: storage.main_quota_checked_at,
            last_error: storage.main_last_error.as_ref().filter(|_| adopt_error),
        };
        persisted.seed(state.routes.main_mut(), &state.settings, now);
    }

    /// Adopts each configured account's persisted quota and backoff, and forgets accounts that
    /// are no longer configured. Disabled accounts are skipped.
    pub fn seed_fallbacks(&self, accounts: &[FallbackAccount]) {
        let now = self.now();
        let mut state = self.state();
        let state = &mut *state;
        state
            .routes
            .retain_fallbacks(|id| accounts.iter().any(|a| a.id == id));
        for account in accounts.iter().filter(|a| a.enabled) {
            // A replaced login's record still carries the old login's quota: adopt nothing
            // from it now (the next seed, of the new login's record, will).
            if state
                .routes
                .observe_fallback(&account.id, account.auth_lineage_id.as_deref())
                != LineageBind::Same
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

/// The latest `checkedAt` among a snapshot's windows (5h, 7d, scoped) and its own.
fn latest_checked_at(quota: &QuotaSnapshot) -> Option<i64> {
    let windows = quota
        .five_hour
        .iter()
        .chain(quota.seven_day.iter())
        .map(|w| w.checked_at);
    let scoped = quota.scoped.iter().flatten().map(|w| w.checked_at);
    windows.chain(scoped).chain(quota.checked_at).max()
}
