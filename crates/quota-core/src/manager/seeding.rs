//! Seeding from the state file and the host's storage (docs/state-file.md#seeding).

use super::cache::Settings;
use super::identity::MainIdentity;
use super::routes::{LineageBind, RouteId, RouteSlot};
use super::QuotaManager;
use crate::host::{FallbackAccount, HostStorage};
use crate::merge::merge_header_frame;
use crate::route_key::RouteKey;
use crate::snapshot::{ApiErrorRecord, QuotaEntry, QuotaSnapshot, QuotaSource};
use std::sync::Arc;

/// Adopts a route's persisted snapshot and error when newer than ours. `main_kept`: a main
/// snapshot the host kept with `mainQuotaCheckedAt` (docs/state-file.md#seeding).
fn seed_persisted(
    slot: &mut RouteSlot,
    quota: Option<&QuotaSnapshot>,
    main_kept: bool,
    last_error: Option<&ApiErrorRecord>,
    settings: &Settings,
    now: i64,
) {
    let has_any_window =
        |q: &QuotaSnapshot| q.has_windows() || q.scoped.as_ref().is_some_and(|s| !s.is_empty());
    let dated = quota.filter(|q| main_kept || has_any_window(q)).and_then(|quota| {
        Some((quota, quota.latest_checked_at().or_else(|| main_kept.then_some(0))?))
    });
    if let Some((quota, checked_at)) = dated {
        let restored = main_kept && restore_poll_fields(slot, quota, checked_at);
        if !restored && slot.entry().is_none_or(|e| checked_at > e.checked_at) {
            slot.record.entry = Some(settings.seeded_entry(quota.clone(), checked_at, now));
        }
    }
    if let Some(error) = last_error {
        slot.adopt_persisted_error(error, now);
    }
}

/// An older persisted poll's fields under newer cached header windows, as the plugin's seeding
/// does (docs/state-file.md#seeding). `true` when merged.
fn restore_poll_fields(slot: &mut RouteSlot, persisted: &QuotaSnapshot, checked_at: i64) -> bool {
    let Some(current) = slot.entry().filter(|current| {
        current.checked_at >= checked_at
            && current.quota.source == Some(QuotaSource::Headers)
            && persisted.source == Some(QuotaSource::Poll)
    }) else {
        return false;
    };
    let mut quota = merge_header_frame(Some(persisted), &current.quota);
    quota.account_identity.clone_from(&current.quota.account_identity);
    slot.record.entry = Some(Arc::new(QuotaEntry { quota, ..**current }));
    true
}

impl QuotaManager {
    /// Takes every fallback route from the state file; main routes wait aside until the host
    /// names its account (docs/state-file.md#contents).
    pub(super) fn seed_from_state_file(&self) {
        // The lock is taken only to set a corrupt file aside; a newer build's file is not read.
        let Some(loaded) =
            self.store_on_host_thread().and_then(|store| self.file_used(store.load()))
        else {
            return;
        };
        let now = self.now_ms();
        let mut state = self.state();
        let limits = self.adoption_limits(state.settings.interval_ms);
        for (key, record) in &loaded.state.routes {
            let record = record.clamped(now, &limits);
            match RouteKey::parse(key) {
                Some(RouteKey::Main(_)) => {
                    state.routes.unclaimed_main.insert(key.clone(), record);
                }
                Some(RouteKey::Fallback(id)) => {
                    // Bound to the login that wrote it.
                    let slot = state.routes.slot_mut(&RouteId::Fallback(id));
                    slot.record.lineage.clone_from(&record.lineage);
                    slot.adopt(&record);
                }
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

    /// Seeds the main route from the host's storage (see `seed_persisted`).
    pub fn seed_main(&self, storage: &HostStorage, identity: Option<&str>) {
        let now = self.now_ms();
        let mut state = self.state();
        let state = &mut *state;
        let identity = if state.routes.generations.known {
            state.routes.main_owner().map(MainIdentity::persisted)
        } else {
            let named = identity
                .or(storage.main_account_id.as_deref())
                .or_else(|| storage.main_quota.as_ref()?.account_identity.as_deref())
                .map(str::to_owned);
            if let Some(named) = &named {
                state.routes.bind_main(Some(MainIdentity::parse(named)));
            }
            named
        };
        let held_error = state.routes.main.record.backoff.last_error.is_some();
        let adopt_error = state.routes.seed_main_generations(storage, now);
        if held_error && state.routes.main.record.backoff.last_error.is_none() {
            // Cleared by the host: in the state file too (docs/state-file.md#host-callbacks).
            self.write_route_soon(state, &RouteId::Main);
        }
        let strict = state.routes.generations.strict_known();
        // A legacy persisted quota carries no identity: it is the one it is seeded for.
        let quota = storage.main_quota.clone().map(|mut quota| {
            if quota.account_identity.is_none() && !strict {
                quota.account_identity.clone_from(&identity);
            }
            quota
        });
        if strict
            && identity.is_some()
            && quota.as_ref().is_some_and(|q| q.account_identity != identity)
        {
            return;
        }
        let main_kept = storage.main_quota_checked_at.is_some();
        let error = storage.main_last_error.as_ref().filter(|_| adopt_error);
        let main = &mut state.routes.main;
        seed_persisted(main, quota.as_ref(), main_kept, error, &state.settings, now);
    }

    /// Adopts each configured account's persisted quota and backoff, and forgets accounts that
    /// are no longer configured. Disabled accounts are skipped; ids are unique.
    pub fn seed_fallbacks(&self, accounts: Vec<FallbackAccount>) {
        // No bound given: every snapshot could be adopted.
        let awaited = self.seed_fallbacks_but_snapshots(accounts, &[], SeedingScope::WholeList);
        self.seed_awaited_snapshots(awaited);
    }

    /// The first half of a seeding whose snapshots cross from JavaScript only when wanted (most
    /// of the cost of 10,000 unchanged accounts): all but the snapshots it could adopt, bounded
    /// by `latest_at_most` (each account's latest `checkedAt`). Ids are unique.
    pub fn seed_fallbacks_but_snapshots(
        &self,
        accounts: Vec<FallbackAccount>,
        latest_at_most: &[Option<f64>],
        scope: SeedingScope,
    ) -> AwaitedSnapshots {
        let now = self.now_ms();
        let mut state = self.state();
        let state = &mut *state;
        if scope == SeedingScope::WholeList {
            let configured: std::collections::HashSet<&str> =
                accounts.iter().map(|a| a.id.as_str()).collect();
            state.routes.retain_fallbacks(|id| configured.contains(id));
        }
        let mut awaited = AwaitedSnapshots::default();
        for (position, account) in accounts.into_iter().enumerate() {
            if !account.enabled {
                continue;
            }
            match state.routes.observe_fallback(&account.id, account.auth_lineage_id.as_deref()) {
                LineageBind::Same => {}
                // A replaced login's record still carries the old login's quota: adopt nothing
                // from it now (the next seed, of the new login's record, will).
                LineageBind::Replaced => {
                    awaited.login_replaced = true;
                    continue;
                }
                LineageBind::Refused => continue,
            }
            let latest = latest_at_most.get(position).copied().flatten();
            if could_adopt(state.routes.fallback(&account.id), latest) {
                // Its error waits too: whether it counts depends on the snapshot adopted.
                awaited.positions.push(position);
                awaited.latest_at_most.push(latest);
                awaited.accounts.push(account);
            } else if let Some(error) = &account.last_error {
                let slot = state.routes.slot_mut(&RouteId::Fallback(account.id.clone()));
                slot.adopt_persisted_error(error, now);
            }
        }
        awaited.settled_epoch =
            awaited.is_settled(&state.routes).then(|| state.routes.fallback_epoch());
        awaited
    }

    /// The second half of a seeding: each awaited account with its snapshot in `quota`. Returns
    /// the fallback epoch when the seeding is settled (see `AwaitedSnapshots::is_settled`).
    pub fn seed_awaited_snapshots(&self, awaited: AwaitedSnapshots) -> Option<u64> {
        if awaited.accounts.is_empty() {
            return awaited.settled_epoch;
        }
        let now = self.now_ms();
        let mut state = self.state();
        let state = &mut *state;
        for account in &awaited.accounts {
            let slot = state.routes.slot_mut(&RouteId::Fallback(account.id.clone()));
            let error = account.last_error.as_deref();
            seed_persisted(slot, account.quota.as_deref(), false, error, &state.settings, now);
        }
        awaited.is_settled(&state.routes).then(|| state.routes.fallback_epoch())
    }

    pub fn fallback_epoch(&self) -> u64 {
        self.state().routes.fallback_epoch()
    }
}

/// Could seeding adopt a snapshot whose latest `checkedAt` is at most `latest` into this slot?
/// A negative bound: the snapshot has no usable time (or there is none), so never.
fn could_adopt(slot: Option<&RouteSlot>, latest: Option<f64>) -> bool {
    match (latest, slot.and_then(RouteSlot::entry)) {
        (Some(latest), _) if latest < 0.0 => false,
        (Some(latest), Some(entry)) => latest > entry.checked_at as f64,
        _ => true,
    }
}

/// What a seeding is handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedingScope {
    /// Every configured account: the others are forgotten.
    WholeList,
    /// Only the accounts that changed since a settled seeding of the same list (same ids, each
    /// once), while its fallback epoch held: every configured route is kept.
    ChangedAccounts,
}

/// The accounts whose snapshots the first half of a seeding could adopt, and their positions.
#[derive(Default)]
pub struct AwaitedSnapshots {
    pub accounts: Vec<FallbackAccount>,
    pub positions: Vec<usize>,
    latest_at_most: Vec<Option<f64>>,
    /// A login was replaced: the next seeding of the same list adopts what this one did not.
    login_replaced: bool,
    /// The first half's answer when nothing is awaited.
    settled_epoch: Option<u64>,
}

impl AwaitedSnapshots {
    /// When nothing is awaited: the fallback epoch if the seeding is settled.
    pub fn settled_epoch(&self) -> Option<u64> {
        self.settled_epoch
    }

    /// Would the same list seeded again change nothing? Only when no login was replaced and no
    /// awaited snapshot could still be adopted (adoption decides by `checkedAt` alone, and a
    /// persisted error counts once: neither depends on the time).
    fn is_settled(&self, routes: &super::routes::Routes) -> bool {
        !self.login_replaced
            && self
                .accounts
                .iter()
                .zip(&self.latest_at_most)
                .all(|(account, latest)| !could_adopt(routes.fallback(&account.id), *latest))
    }
}
