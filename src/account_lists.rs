//! `seedFallbacksFromAccounts` and `refreshAllFallbacks` over the host's list read whole through
//! JSON, or over the compact rows the facade sends for plain lists (README.md#account-lists). A
//! seeding's plan is an external value the facade hands back, so a host callback that calls the
//! manager again cannot mix two lists up.

use futures::FutureExt;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::Value;

use std::sync::{Arc, LazyLock};

use super::js::{is_thenable, optional, to_json, type_error};
use super::manager::QuotaManager;
use quota_core::host::{AccountFields, AccountList, FallbackAccount, ACCOUNT_FIELDS};
use quota_core::lenient::LenientSnapshot;
use quota_core::manager::{AwaitedSnapshots, PendingTokens, SeedingScope};

const NOT_AN_ARRAY: &str = "accounts must be an array";

/// Reads the compact list (a flat array, `ACCOUNT_FIELDS.len()` values per account): row `i`
/// is the host's account `host_indices[i]` when given, else `i`.
fn read_compact(
    text: &str,
    host_indices: Option<&[u32]>,
    quota_is_bound: bool,
) -> std::result::Result<AccountList, String> {
    let values: Vec<Value> = serde_json::from_str(text).map_err(|_| NOT_AN_ARRAY.to_owned())?;
    let mut list = AccountList::default();
    for (row, fields) in values.chunks(ACCOUNT_FIELDS.len()).enumerate() {
        let index = match host_indices {
            Some(host) => *host.get(row).ok_or_else(|| NOT_AN_ARRAY.to_owned())? as usize,
            None => row,
        };
        list.push(index, Some(AccountFields::of_row(fields)), quota_is_bound)?;
    }
    Ok(list)
}

/// Drops each token that `expires` says is out of date at `now` (the call's time).
fn unexpired(mut accounts: Vec<FallbackAccount>, now: i64) -> Vec<FallbackAccount> {
    for account in &mut accounts {
        account.drop_expired_access(now);
    }
    accounts
}

/// The host's list read whole, as JSON reads it.
fn read_whole(env: &Env, accounts: Unknown) -> Result<AccountList> {
    AccountList::from_value(&to_json(env, accounts, "accounts")?).map_err(|e| type_error(env, e))
}

/// A settled seeding's fallback epoch for the facade; -1: not settled.
fn settled_epoch(epoch: Option<u64>) -> f64 {
    epoch.map_or(-1.0, |epoch| epoch as f64)
}

#[napi]
impl QuotaManager {
    /// Adopts each account's persisted quota and backoff; forgets accounts no longer listed.
    #[napi(catch_unwind, ts_args_type = "accounts: readonly FallbackAccount[]")]
    pub fn seed_fallbacks_from_accounts(&self, env: Env, accounts: Option<Unknown>) -> Result<()> {
        self.tick(&env)?;
        let accounts = accounts.ok_or_else(|| type_error(&env, NOT_AN_ARRAY))?;
        self.core.seed_fallbacks(read_whole(&env, accounts)?.accounts);
        Ok(())
    }

    /// Refreshes every enabled OAuth account whose quota is due, a few at a time. The token is
    /// `resolveAccessToken(account)` when given (only its answer counts), else `access` while
    /// `expires` is in the future; accounts without one, and `type: 'api'` accounts, are
    /// skipped. Failures are recorded on each account's route, never thrown.
    #[napi(
        ts_generic_types = "A extends FallbackAccount",
        ts_args_type = "accounts: readonly A[], resolveAccessToken?: ((account: A) => string | undefined) | undefined",
        ts_return_type = "Promise<void>"
    )]
    pub fn refresh_all_fallbacks<'env>(
        &self,
        env: &'env Env,
        accounts: Option<Unknown>,
        resolver: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let accounts = accounts.filter(|v| v.is_array().unwrap_or(false));
        let accounts = accounts.ok_or_else(|| type_error(env, NOT_AN_ARRAY))?;
        let resolver = optional::<Function<Unknown, Unknown>>(env, resolver, "resolveAccessToken")?;
        let list = read_whole(env, accounts)?;
        self.start_refreshes(env, list, &unsafe { accounts.cast::<Array>() }?, resolver)
    }

    /// Seeding, first half: all but the snapshots the core could adopt. `changed` (the host's
    /// index of each row) says the rows are only the accounts that changed since a settled
    /// seeding of the same ids. Answers `[plan, indices, epoch, rowsAreAccounts]`: the host's
    /// indices of the snapshots `_applyFallbackSeeding` must bring; when none, the settled epoch;
    /// whether each row was an account of its own (no api-key account, no repeated id).
    #[napi(catch_unwind, js_name = "_planFallbackSeeding", skip_typescript)]
    pub fn plan_fallback_seeding(
        &self,
        env: &Env,
        compact: String,
        changed: Option<Uint32Array>,
    ) -> Result<(External<AwaitedSnapshots>, Uint32Array, f64, bool)> {
        self.tick(env)?;
        let list =
            read_compact(&compact, changed.as_deref(), true).map_err(|e| type_error(env, e))?;
        let scope =
            if changed.is_some() { SeedingScope::ChangedAccounts } else { SeedingScope::WholeList };
        let awaited = self.core.seed_fallbacks_but_snapshots(list.accounts, &list.bounds, scope);
        let indices: Vec<u32> = awaited.positions.iter().map(|&at| list.indices[at]).collect();
        let epoch = settled_epoch(awaited.settled_epoch());
        Ok((External::new(awaited), Uint32Array::new(indices), epoch, !list.dropped_any))
    }

    /// Seeding, second half: `snapshots` is the JSON array of the snapshots asked for, in order.
    #[napi(catch_unwind, js_name = "_applyFallbackSeeding", skip_typescript)]
    pub fn apply_fallback_seeding(
        &self,
        env: Env,
        plan: &mut External<AwaitedSnapshots>,
        snapshots: String,
    ) -> Result<f64> {
        // Read straight from the text, without a `Value` tree (see `quota_core::lenient`).
        let snapshots: Vec<LenientSnapshot> = serde_json::from_str(&snapshots)
            .map_err(|_| type_error(&env, "accounts[].quota could not be read"))?;
        let mut awaited = std::mem::take(&mut **plan);
        for (account, snapshot) in awaited.accounts.iter_mut().zip(snapshots) {
            account.quota = snapshot.0.map(Box::new);
        }
        Ok(settled_epoch(self.core.seed_awaited_snapshots(awaited)))
    }

    /// The fallback epoch: it moves whenever a fallback route may have changed.
    #[napi(catch_unwind, js_name = "_fallbackEpoch", skip_typescript)]
    pub fn fallback_epoch(&self) -> f64 {
        self.core.fallback_epoch() as f64
    }

    /// The fields of a compact row, in order.
    #[napi(js_name = "_accountFields", skip_typescript)]
    pub fn account_fields() -> Vec<&'static str> {
        ACCOUNT_FIELDS.to_vec()
    }

    /// `refreshAllFallbacks` over the compact list (`accounts` is the host's own, for the
    /// resolver). Without a resolver, its tokens count as tokens from the moment this returns
    /// (see `QuotaManager::expect_tokens`), though the list is read later, off this thread.
    #[napi(catch_unwind, js_name = "_refreshAllFallbacksFrom", skip_typescript)]
    pub fn refresh_all_fallbacks_from<'env>(
        &self,
        env: &'env Env,
        compact: String,
        accounts: Array,
        resolver: Option<Function<Unknown, Unknown>>,
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let Some(resolver) = resolver else {
            return self.refresh_off_thread(env, compact);
        };
        let list = read_compact(&compact, None, false).map_err(|e| type_error(env, e))?;
        self.start_refreshes(env, list, &accounts, Some(resolver))
    }
}

impl QuotaManager {
    /// Starts the refreshes of a list read on this thread; the resolver is asked once the whole
    /// list is read.
    fn start_refreshes<'env>(
        &self,
        env: &'env Env,
        list: AccountList,
        originals: &Array,
        resolver: Option<Function<Unknown, Unknown>>,
    ) -> Result<Unknown<'env>> {
        let Some(resolve) = resolver else {
            return self.spawn_refreshes(env, unexpired(list.accounts, self.core.now_ms()));
        };
        let mut accounts = list.accounts;
        for (account, &index) in accounts.iter_mut().zip(&list.indices) {
            let name = format!("accounts[{index}]");
            let item: Unknown = originals
                .get(index)?
                .ok_or_else(|| type_error(env, format!("{name} must be an object")))?;
            let answer = resolve.call(item)?;
            account.access = match answer.get_type()? {
                ValueType::String => Some(unsafe { answer.cast::<String>() }?),
                // Polling nothing, silently, would hide the host's mistake.
                ValueType::Object | ValueType::Function if is_thenable(&answer)? => {
                    return Err(type_error(
                        env,
                        format!(
                            "resolveAccessToken must return the token (a string) or undefined, \
                             not a Promise ({name}): resolve tokens before calling \
                             refreshAllFallbacks"
                        ),
                    ));
                }
                _ => None,
            }
            .filter(|token| !token.is_empty());
        }
        self.spawn_refreshes(env, accounts)
    }

    /// Remembers the list's tokens, then starts its due refreshes.
    fn spawn_refreshes<'env>(
        &self,
        env: &'env Env,
        accounts: Vec<FallbackAccount>,
    ) -> Result<Unknown<'env>> {
        self.core.remember_tokens(accounts.iter().filter_map(|a| a.access.as_deref()));
        let promise = env.spawn_future(self.core.refresh_all_fallbacks(accounts).map(Ok))?;
        Ok(promise.to_unknown())
    }

    /// Reads the compact list on the blocking pool, then starts the due refreshes.
    fn refresh_off_thread<'env>(&self, env: &'env Env, compact: String) -> Result<Unknown<'env>> {
        let now = self.core.now_ms();
        // Read once, by whoever needs it first: the task below (on the blocking pool), or the
        // JavaScript thread when it must know every token the manager was handed before that.
        let list = Arc::new(LazyLock::new(move || {
            read_compact(&compact, None, false).map(|list| unexpired(list.accounts, now))
        }));
        let for_tokens = list.clone();
        let tokens: PendingTokens = Arc::new(move || {
            let accounts = for_tokens.as_deref().unwrap_or_default();
            accounts.iter().filter_map(|a| a.access.clone()).collect()
        });
        self.core.expect_tokens(tokens.clone());
        let core = self.core.clone();
        let work = async move {
            let read = tokio::task::spawn_blocking(move || (**list).clone())
                .await
                .unwrap_or_else(|_| Err("accounts could not be read".to_owned()));
            core.settle_tokens(&tokens);
            core.refresh_all_fallbacks(read?).await;
            Ok(())
        };
        let promise = env.spawn_future_with_callback(
            work.map(Ok),
            |env, outcome: std::result::Result<(), String>| {
                outcome.map_err(|message| type_error(env, message))
            },
        )?;
        Ok(promise.to_unknown())
    }
}
