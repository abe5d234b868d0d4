//! Route slots and their owners (docs/single-flight.md#route-keys). A new owner drops the slot; its
//! generation tells a request started before that it must not write into it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::identity::{same_identity, MainGenerations, MainIdentity};
use super::outcome::Settled;
use super::single_flight::{Flight, Flights};
use crate::fingerprint::fingerprint;
use crate::host::FallbackAccount;
use crate::route_key::RouteKey;
use crate::snapshot::QuotaEntry;
use crate::store::RouteRecord;

/// Fallback slots remember this many replaced logins, to recognise late observations of them.
const RETIRED_LINEAGES_KEPT: usize = 8;
/// How many main routes left behind by an identity switch keep their backoff and pacing.
const LEFT_MAIN_ROUTES_KEPT: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum RouteId {
    Main,
    Fallback(String),
}

/// One route's cache, backoff and running request.
#[derive(Default)]
pub(super) struct RouteSlot {
    /// The state file's record, so one merge rule serves the cache and the file.
    pub record: RouteRecord,
    retired_lineages: Vec<String>,
    /// Bumped whenever the slot is dropped, so a request started before cannot write into it.
    pub generation: u64,
    /// Its running requests: one per token on the main route, one in all on a fallback route.
    pub flights: Flights<Settled>,
    /// An account record bound the slot's login, possibly none (docs/single-flight.md#route-keys).
    lineage_observed: bool,
    /// The last login id handed and its fingerprint: the host hands the same one every time,
    /// and hashing it each time was most of a 10,000-account seeding.
    lineage_memo: Option<(String, String)>,
    /// When the shared store was last looked at for this route's backoff (see
    /// `recheck_backoff_soon`): atomic, so a read-only question can claim the next look.
    backoff_rechecked_at: AtomicI64,
    /// The `checkedAt` of an adopted snapshot no refresh here has answered with yet.
    pub adopted_checked_at: Option<i64>,
}

/// What binding an observed login did to a fallback slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LineageBind {
    /// The slot's login (or the first one bound).
    Same,
    /// A new login: the slot was dropped.
    Replaced,
    /// A login replaced earlier: refused.
    Refused,
}

impl RouteSlot {
    fn lineage_fingerprint(&mut self, lineage: &str) -> String {
        match &self.lineage_memo {
            Some((seen, fingerprinted)) if seen == lineage => fingerprinted.clone(),
            _ => self.lineage_memo.insert((lineage.to_owned(), fingerprint(lineage))).1.clone(),
        }
    }

    pub fn entry(&self) -> Option<&Arc<QuotaEntry>> {
        self.record.entry.as_ref()
    }

    /// The cache's time unless it was only adopted (docs/single-flight.md#adopting-another-result).
    pub fn own_checked_at(&self) -> Option<i64> {
        let at = self.entry()?.checked_at;
        (self.adopted_checked_at != Some(at)).then_some(at)
    }

    /// Claims the next look at the shared store when the last was `every_ms` ago or more.
    pub fn claim_backoff_recheck(&self, now: i64, every_ms: i64) -> bool {
        let last = self.backoff_rechecked_at.load(Ordering::Relaxed);
        now - last >= every_ms
            && self
                .backoff_rechecked_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Folds another process's record into the slot (docs/state-file.md#merge-rule).
    pub fn adopt(&mut self, incoming: &RouteRecord) {
        // A record another process wrote for a login this slot has since replaced is stale.
        if incoming.lineage.as_ref().is_some_and(|lineage| self.retired_lineages.contains(lineage))
        {
            return;
        }
        let before = self.record.entry.clone();
        self.record.merge(incoming);
        if let Some(after) =
            self.entry().filter(|after| !before.is_some_and(|b| Arc::ptr_eq(&b, after)))
        {
            self.adopted_checked_at = Some(after.checked_at);
        }
    }
}

/// Every route's slot, and who owns the main one.
#[derive(Default)]
pub(super) struct Routes {
    main_owner: Option<MainIdentity>,
    /// The main identity's generations (docs/compat.md#main-identity).
    pub generations: MainGenerations,
    pub main: RouteSlot,
    fallbacks: HashMap<String, RouteSlot>,
    /// Main routes left, by key: their backoff and pacing (docs/single-flight.md#route-keys).
    left_main: Vec<(String, RouteRecord)>,
    /// The state file's main routes, by key, until the host names its account (the only one taken).
    pub unclaimed_main: HashMap<String, RouteRecord>,
    /// One counter for slot generations and request ids, so neither ever repeats.
    last_id: u64,
    /// Bumped whenever a fallback slot may change (every mutable access to one): while it
    /// stays put, seeding the same list again would change nothing (see `seeding.rs`).
    fallback_epoch: u64,
}

impl Routes {
    pub fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    pub fn main_owner(&self) -> Option<&MainIdentity> {
        self.main_owner.as_ref()
    }

    pub fn fallback(&self, id: &str) -> Option<&RouteSlot> {
        self.fallbacks.get(id)
    }

    pub fn fallback_epoch(&self) -> u64 {
        self.fallback_epoch
    }

    /// Every mutable access to the fallback slots: it moves the fallback epoch.
    fn fallbacks_mut(&mut self) -> &mut HashMap<String, RouteSlot> {
        self.fallback_epoch += 1;
        &mut self.fallbacks
    }

    pub fn slot(&self, route: &RouteId) -> Option<&RouteSlot> {
        match route {
            RouteId::Main => Some(&self.main),
            RouteId::Fallback(id) => self.fallbacks.get(id),
        }
    }

    /// The route's slot, created when missing with a generation of its own.
    pub fn slot_mut(&mut self, route: &RouteId) -> &mut RouteSlot {
        match route {
            RouteId::Main => &mut self.main,
            RouteId::Fallback(id) => {
                if !self.fallbacks.contains_key(id) {
                    let generation = self.next_id();
                    self.fallbacks_mut()
                        .insert(id.clone(), RouteSlot { generation, ..RouteSlot::default() });
                }
                self.fallbacks_mut().get_mut(id).expect("inserted above")
            }
        }
    }

    /// The slot a request was started for, unless it was dropped or replaced since.
    pub fn attempt_slot(&mut self, route: &RouteId, generation: u64) -> Option<&mut RouteSlot> {
        let slot = match route {
            RouteId::Main => &mut self.main,
            RouteId::Fallback(id) => self.fallbacks_mut().get_mut(id)?,
        };
        (slot.generation == generation).then_some(slot)
    }

    pub fn remove_fallback(&mut self, id: &str) -> bool {
        self.fallbacks_mut().remove(id).is_some()
    }

    pub fn retain_fallbacks(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.fallbacks_mut().retain(|id, _| keep(id));
    }

    pub fn fallback_entries(&self) -> Vec<(String, Arc<QuotaEntry>)> {
        let mut entries: Vec<_> = self
            .fallbacks
            .iter()
            .filter_map(|(id, slot)| Some((id.clone(), slot.entry()?.clone())))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    pub fn running_flights(&self) -> Vec<super::single_flight::Shared<Settled>> {
        std::iter::once(&self.main)
            .chain(self.fallbacks.values())
            .flat_map(|slot| slot.flights.iter().map(Flight::wait))
            .collect()
    }

    /// Drops a route's cache, backoff and running request (a new identity or a new login).
    fn reset(&mut self, route: &RouteId, lineage: Option<String>) {
        let generation = self.next_id();
        let slot = self.slot_mut(route);
        slot.retired_lineages.extend(slot.record.lineage.take());
        let excess = slot.retired_lineages.len().saturating_sub(RETIRED_LINEAGES_KEPT);
        slot.retired_lineages.drain(..excess);
        *slot = RouteSlot {
            record: RouteRecord { lineage, ..RouteRecord::default() },
            retired_lineages: std::mem::take(&mut slot.retired_lineages),
            lineage_memo: slot.lineage_memo.take(),
            generation,
            ..RouteSlot::default()
        };
    }

    /// Binds a fallback slot to an account record's login (docs/single-flight.md#route-keys).
    pub fn observe_fallback(&mut self, id: &str, lineage: Option<&str>) -> LineageBind {
        let route = RouteId::Fallback(id.to_owned());
        let slot = self.slot_mut(&route);
        let observed = lineage.map(|lineage| slot.lineage_fingerprint(lineage));
        let observed_before = std::mem::replace(&mut slot.lineage_observed, true);
        match (&slot.record.lineage, observed) {
            (Some(owner), Some(lineage)) if *owner == lineage => LineageBind::Same,
            (_, Some(lineage)) if slot.retired_lineages.contains(&lineage) => LineageBind::Refused,
            (owner, Some(lineage)) if owner.is_some() || observed_before => {
                self.reset(&route, Some(lineage));
                self.slot_mut(&route).lineage_observed = true;
                LineageBind::Replaced
            }
            (_, observed) => {
                slot.record.lineage = observed;
                LineageBind::Same
            }
        }
    }

    /// Binds a fallback slot for a call that may name the account's login as a seeding does;
    /// without an account, to the login it has. `false` for a login replaced earlier.
    pub fn bind_fallback_for(&mut self, id: &str, account: Option<&FallbackAccount>) -> bool {
        let Some(account) = account else {
            self.slot_mut(&RouteId::Fallback(id.to_owned()));
            return true;
        };
        self.observe_fallback(id, account.auth_lineage_id.as_deref()) != LineageBind::Refused
    }

    /// Would a header observation of `lineage` belong to the slot's login? It never rebinds.
    pub fn accepts_fallback_observation(&self, id: &str, lineage: Option<&str>) -> bool {
        self.fallbacks.get(id).is_none_or(|slot| {
            let unbound = !slot.lineage_observed && slot.record.lineage.is_none();
            unbound || slot.record.lineage == lineage.map(fingerprint)
        })
    }

    /// Binds the main slot to `identity`, `None` unbinding it (docs/single-flight.md#route-keys).
    pub fn bind_main(&mut self, identity: Option<MainIdentity>) {
        match (&self.main_owner, &identity) {
            (None, None) => return,
            // One account, whichever way it was named (a token and `token:<fingerprint>`).
            (Some(owner), Some(new)) if same_identity(Some(owner), Some(new)) => {}
            (None, Some(new)) => {
                // A legacy seed stays for the account it names (docs/single-flight.md#route-keys).
                let named = self
                    .main
                    .entry()
                    .and_then(|e| e.quota.account_identity.as_deref())
                    .is_some_and(|id| new.is_named_by(id));
                if !named {
                    self.main.record.entry = None;
                }
                self.main_owner = identity;
            }
            (Some(_), _) => {
                self.leave_main();
                self.retarget_main(identity);
                let key = self.key(&RouteId::Main);
                if let Some(index) = self.left_main.iter().position(|(k, _)| *k == key) {
                    let (_, kept) = self.left_main.remove(index);
                    self.main.adopt(&kept);
                }
            }
        }
        // The state file's route of the identity just bound, if construction read one.
        if self.main_owner.is_some() {
            if let Some(record) = self.unclaimed_main.remove(&self.key(&RouteId::Main)) {
                self.main.adopt(&record);
            }
        }
    }

    /// Keeps the backoff and pacing of the main route being left, under its key.
    fn leave_main(&mut self) {
        let key = self.key(&RouteId::Main);
        let kept = RouteRecord {
            entry: None,
            token_fingerprint: None,
            lineage: None,
            ..self.main.record.clone()
        };
        self.left_main.retain(|(k, _)| *k != key);
        self.left_main.push((key, kept));
        let excess = self.left_main.len().saturating_sub(LEFT_MAIN_ROUTES_KEPT);
        self.left_main.drain(..excess);
    }

    /// The record a request records its attempt and failure in; `None` for a fallback slot
    /// dropped or replaced (docs/single-flight.md#a-route-re-bound-during-a-request).
    pub fn attempt_record(
        &mut self,
        route: &RouteId,
        generation: u64,
        key: &str,
    ) -> Option<&mut RouteRecord> {
        match route {
            RouteId::Main if self.main.generation != generation && self.key(route) != key => {
                if !self.left_main.iter().any(|(k, _)| k == key) {
                    self.left_main.push((key.to_owned(), RouteRecord::default()));
                }
                self.left_main.iter_mut().find(|(k, _)| k == key).map(|(_, record)| record)
            }
            RouteId::Main => Some(&mut self.main.record),
            RouteId::Fallback(_) => {
                self.attempt_slot(route, generation).map(|slot| &mut slot.record)
            }
        }
    }

    /// Binds the main slot to `identity` (or unbinds it), dropping what it held.
    pub fn retarget_main(&mut self, identity: Option<MainIdentity>) {
        self.reset(&RouteId::Main, None);
        self.main_owner = identity;
    }

    /// The route's key in the state file.
    pub fn key(&self, route: &RouteId) -> String {
        match route {
            RouteId::Main => RouteKey::Main(
                self.snapshot_identity(route).unwrap_or_else(|| "default".to_owned()),
            ),
            RouteId::Fallback(id) => RouteKey::Fallback(id.clone()),
        }
        .to_string()
    }

    /// The identity a route's snapshots carry: the main account's identity, or the fallback id.
    pub fn snapshot_identity(&self, route: &RouteId) -> Option<String> {
        match route {
            RouteId::Main => self.main_owner.as_ref().map(MainIdentity::persisted),
            RouteId::Fallback(id) => Some(id.clone()),
        }
    }
}
