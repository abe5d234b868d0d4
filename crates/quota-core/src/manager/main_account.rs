//! The main identity as the plugin binds it (docs/compat.md#main-identity), and which are tokens.

use std::sync::Arc;

use super::identity::{same_identity, MainIdentity, PendingTokens};
use super::routes::{RouteId, Routes};
use super::QuotaManager;
use crate::host::HostStorage;
use crate::snapshot::QuotaEntry;

impl QuotaManager {
    /// `setMainQuotaAccountIdentity` (docs/compat.md#main-identity): the new error generation
    /// when a backoff error recorded for another identity was cleared.
    pub fn set_main_identity(
        &self,
        identity: Option<&str>,
        strict: bool,
        force: bool,
    ) -> Option<u64> {
        let now = self.now_ms();
        let mut state = self.state();
        let state = &mut *state;
        let routes = &mut state.routes;
        let wanted = identity.map(MainIdentity::parse);
        let previous = routes.main_owner().cloned();
        let identity_moved = !same_identity(previous.as_ref(), wanted.as_ref());
        let was_known = std::mem::replace(&mut routes.generations.known, true);
        let was_strict = std::mem::replace(&mut routes.generations.strict, strict);
        if !(force || !was_known || identity_moved || strict != was_strict) {
            return None;
        }
        routes.generations.identity += 1;
        let wanted_name = wanted.as_ref().map(MainIdentity::persisted);
        let error_of_another = wanted_name.is_some()
            && routes.main.record.backoff.last_error.as_ref().is_some_and(|error| {
                match &error.account_identity {
                    Some(owner) => Some(owner) != wanted_name.as_ref(),
                    None => was_known && previous.is_some() && identity_moved,
                }
            });
        if force {
            routes.retarget_main(wanted);
        } else {
            let kept_entry = routes
                .main
                .entry()
                .filter(|e| wanted_name.is_some() && e.quota.account_identity == wanted_name)
                .cloned();
            // Binding an unbound slot keeps its backoff (a legacy persisted error belongs to
            // whoever binds it).
            if identity_moved && previous.is_none() {
                routes.bind_main(wanted);
            } else if identity_moved {
                routes.retarget_main(wanted);
            }
            // Only an entry stamped for the identity now bound stays.
            if identity_moved || wanted_name.is_some() {
                routes.main.record.entry = kept_entry;
            }
            if !error_of_another {
                return None;
            }
            routes.main.clear_backoff(now);
        }
        // The error is gone: dropped with the slot (`force`, which answers nothing), or cleared
        // as another identity's.
        let generation = routes.generations.error_cleared(now);
        self.write_route_soon(state, &RouteId::Main);
        (!force).then_some(generation)
    }

    pub fn main_identity_generation(&self) -> u64 {
        self.state().routes.generations.identity
    }

    pub fn main_error_generation(&self) -> u64 {
        self.state().routes.generations.error
    }

    pub fn main_error_cleared_at(&self) -> Option<i64> {
        self.state().routes.generations.error_cleared_at
    }

    /// Unbinds the main identity and drops its entry (strictness and `known` stay).
    pub fn clear_main(&self) {
        self.state().routes.retarget_main(None);
    }

    /// `clearMainBackoff` (docs/compat.md#main-identity).
    pub fn clear_main_backoff(&self) -> Option<u64> {
        let now = self.now_ms();
        let mut state = self.state();
        let state = &mut *state;
        let main = &mut state.routes.main;
        if main.record.backoff.last_error.is_none() && !main.record.backoff.is_open(now) {
            return None;
        }
        main.clear_backoff(now);
        let generation = state.routes.generations.error_cleared(now);
        self.write_route_soon(state, &RouteId::Main);
        Some(generation)
    }

    /// The main entry as `getMain(id)` serves it (docs/compat.md#main-identity).
    pub fn get_main(&self, identity: Option<&str>) -> Option<Arc<QuotaEntry>> {
        let state = self.state();
        let routes = &state.routes;
        let entry = routes.main.entry()?;
        let strict = routes.generations.strict_known();
        let owner = routes.main_owner();
        let stamped = || entry.quota.account_identity == owner.map(MainIdentity::persisted);
        let served = match identity {
            None => !strict && !matches!(owner, Some(MainIdentity::Account(_))),
            Some(wanted) => {
                owner.is_some_and(|owner| owner.is_named_by(wanted)) && (!strict || stamped())
            }
        };
        served.then(|| entry.clone())
    }

    /// `identity` as the manager keeps it: `token:<fingerprint>` when it is a token (the same
    /// call's, `sk-ant-…`, or one handed over; docs/state-file.md#no-tokens).
    pub fn identity_form(&self, identity: Option<String>, token: Option<&str>) -> Option<String> {
        let identity = identity?;
        let is_token = token == Some(identity.as_str())
            || identity.starts_with("sk-ant-")
            || self.inner.seen_tokens.contains(&identity);
        Some(if is_token { MainIdentity::of_token(&identity).persisted() } else { identity })
    }

    /// The host's storage with every main identity that is a token in its fingerprint form
    /// (`mainAccountId`, and the persisted quota's and error's `accountIdentity`).
    pub fn storage_identities(&self, storage: &mut HostStorage) {
        let quota = storage.main_quota.as_mut().map(|quota| &mut quota.account_identity);
        let error = storage.main_last_error.as_mut().map(|error| &mut error.account_identity);
        for identity in [Some(&mut storage.main_account_id), quota, error].into_iter().flatten() {
            *identity = self.identity_form(identity.take(), None);
        }
    }

    /// Tokens handed to the manager: an identity equal to one of them is a token from now on.
    pub fn remember_tokens<'a>(&self, tokens: impl IntoIterator<Item = &'a str>) {
        if self.inner.seen_tokens.remember(tokens) {
            // Which identities are tokens changes what `getMain(id)` answers.
            self.inner.changes.bump();
        }
    }

    /// A list whose tokens count from now on, though it is read later, off the host's thread.
    pub fn expect_tokens(&self, tokens: PendingTokens) {
        self.inner.seen_tokens.expect(tokens);
        self.inner.changes.bump();
    }

    /// An expected list was read: its tokens no longer need reading at the next answer.
    pub fn settle_tokens(&self, tokens: &PendingTokens) {
        if self.inner.seen_tokens.settle(tokens) {
            self.inner.changes.bump();
        }
    }
}

impl Routes {
    /// Takes the generations the host persisted, in the seeding order
    /// (docs/compat.md#main-identity); `true` when the persisted error may be adopted.
    pub(super) fn seed_main_generations(&mut self, storage: &HostStorage, now: i64) -> bool {
        let persisted_error = storage.main_last_error.as_ref();
        let current_checked_at =
            |routes: &Self| routes.main.record.backoff.last_error.as_ref().map(|e| e.checked_at);
        if let Some(cleared) = storage.main_quota_error_cleared_at {
            if self.generations.error_cleared_at.is_none_or(|at| cleared > at) {
                self.generations.error_cleared_at = Some(cleared);
                let persisted_older = persisted_error.is_none_or(|e| e.checked_at <= cleared);
                if persisted_older && current_checked_at(self).is_none_or(|at| at <= cleared) {
                    self.main.clear_backoff(now);
                }
            }
        }
        if let Some(generation) = storage.main_quota_error_generation {
            if generation > self.generations.error {
                self.generations.error = generation;
                let cleared = self.generations.error_cleared_at;
                if persisted_error.is_none()
                    && current_checked_at(self).is_none_or(|at| cleared.is_none_or(|c| at <= c))
                {
                    self.main.clear_backoff(now);
                }
            }
        }
        let Some(error) = persisted_error else {
            return false;
        };
        let identity_ok = !self.generations.known
            || error.account_identity.is_none()
            || error.account_identity == self.main_owner().map(MainIdentity::persisted);
        let after_clear = self.generations.error_cleared_at.is_none_or(|at| error.checked_at > at);
        let newest = current_checked_at(self).is_none_or(|at| error.checked_at >= at);
        identity_ok && after_clear && newest && error.next_retry_at.is_some_and(|at| at > now)
    }
}
