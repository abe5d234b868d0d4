//! The account lists of `seedFallbacksFromAccounts` and `refreshAllFallbacks` in the compact
//! form the facade (`index.js`) sends. With 10,000 accounts these calls held the JavaScript
//! thread for 50-400 ms, most of it turning whole account objects, snapshots included, into JSON
//! and back. The facade sends each account as a short row of the fields these calls read (the
//! same values, so every check and message stays the core's):
//! - a seeding comes in two halves: the first seeds all but the snapshots the core could adopt
//!   and asks for those, the second brings them; a settled seeding's epoch lets the facade skip
//!   the same list, or send only the rows that changed (`SeedingScope::ChangedAccounts`);
//! - `refreshAllFallbacks` reads its list off the JavaScript thread, unless a resolver must be
//!   asked about the accounts first (then it is read here, and the answers come in a second
//!   call).
//!
//! A half's plan is an external value the facade hands back, so a resolver that calls the
//! manager again cannot mix two lists up.

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde::Deserializer as _;
use serde_json::Value;

use std::sync::{Arc, OnceLock};

use super::js::type_error;
use super::manager::{void_promise, QuotaManager};
use quota_core::host::{AccountFields, FallbackAccount};
use quota_core::lenient::LenientSnapshot;
use quota_core::manager::PendingTokens;
use quota_core::manager::{AwaitedSnapshots, SeedingScope};

/// How many values each account has in the compact form.
const FIELDS: usize = 8;

/// Where each field sits in an account's compact form (`index.js` writes this order).
mod at {
    pub const ID: usize = 0;
    pub const ENABLED: usize = 1;
    pub const TYPE: usize = 2;
    pub const AUTH_LINEAGE_ID: usize = 3;
    pub const ACCESS: usize = 4;
    pub const EXPIRES: usize = 5;
    pub const LAST_ERROR: usize = 6;
    /// No snapshot window is newer than this (`null`: the facade could not tell).
    pub const QUOTA_CHECKED_AT_BOUND: usize = 7;
}

/// An account list read and checked: api-key accounts dropped, the first of equal ids kept.
#[derive(Default)]
struct ReadAccounts {
    accounts: Vec<FallbackAccount>,
    /// Each account's index in the host's list.
    indices: Vec<u32>,
    /// No api-key account and no repeated id: each row is one account of its own.
    every_row_kept: bool,
}

/// A refresh's accounts, waiting for the resolver's answers.
#[derive(Default)]
pub struct PlannedRefresh(Vec<FallbackAccount>);

/// One account in the compact form: `FIELDS` values.
type Row = [Value];

/// `accounts[index]`, formatted only for an error message.
struct ItemName(usize);

impl std::fmt::Display for ItemName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "accounts[{}]", self.0)
    }
}

/// One account of the compact list, as `FallbackAccount::from_value` reads an object.
fn read_account(row: &Row, index: usize) -> std::result::Result<FallbackAccount, String> {
    AccountFields {
        id: Some(&row[at::ID]),
        enabled: Some(&row[at::ENABLED]),
        access: Some(&row[at::ACCESS]),
        auth_lineage_id: Some(&row[at::AUTH_LINEAGE_ID]),
        quota: None,
        last_error: Some(&row[at::LAST_ERROR]),
        expires: Some(&row[at::EXPIRES]),
    }
    .read(ItemName(index))
}

/// Reads the compact list as `FallbackAccount::list_from_value` reads the host's: api-key
/// accounts dropped, every other account checked, the first of equal ids kept, errors naming the
/// host's index (row `i` is the host's account `host_indices[i]` when given, else `i`). Also
/// returns each kept account's bound on its snapshot's `checkedAt`.
fn read_compact(
    text: &str,
    host_indices: Option<&[u32]>,
) -> std::result::Result<(ReadAccounts, Vec<Option<f64>>), String> {
    let malformed = || "accounts must be an array".to_owned();
    let mut read: Vec<(u32, FallbackAccount, Option<f64>)> = Vec::new();
    let mut api_rows = false;
    let mut failure = None;
    let mut on_row = |row_index: usize, row: &Row| -> bool {
        let index = match host_indices {
            Some(host) => host.get(row_index).map(|&i| i as usize),
            None => Some(row_index),
        };
        let Some(index) = index else {
            failure = Some(malformed());
            return false;
        };
        if row[at::TYPE].as_str() == Some("api") {
            api_rows = true;
            return true;
        }
        match read_account(row, index) {
            Ok(account) => {
                let bound = row[at::QUOTA_CHECKED_AT_BOUND].as_f64();
                read.push((u32::try_from(index).unwrap_or(u32::MAX), account, bound));
                true
            }
            Err(message) => {
                failure = Some(message);
                false
            }
        }
    };
    let parsed = serde_json::Deserializer::from_str(text).deserialize_seq(RowVisitor(&mut on_row));
    if let Some(message) = failure {
        return Err(message);
    }
    parsed.map_err(|_| malformed())?;
    // The first of equal ids: decided before any account moves out of `read`.
    let first: Vec<bool> = {
        let mut seen = std::collections::HashSet::with_capacity(read.len());
        read.iter().map(|(_, account, _)| seen.insert(account.id.as_str())).collect()
    };
    let mut planned = ReadAccounts {
        every_row_kept: !api_rows && first.iter().all(|&kept| kept),
        ..ReadAccounts::default()
    };
    let mut bounds = Vec::with_capacity(read.len());
    for ((index, account, bound), kept) in read.into_iter().zip(first) {
        if kept {
            planned.indices.push(index);
            planned.accounts.push(account);
            bounds.push(bound);
        }
    }
    Ok((planned, bounds))
}

/// Walks the flat compact array a row at a time, without holding all its values (10,000
/// accounts are 80,000 values). `on_row` answers whether to go on.
struct RowVisitor<'a, F>(&'a mut F);

impl<'de, F: FnMut(usize, &Row) -> bool> serde::de::Visitor<'de> for RowVisitor<'_, F> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array of account rows")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        let mut row = Vec::with_capacity(FIELDS);
        let mut rows = 0;
        while let Some(value) = seq.next_element::<Value>()? {
            row.push(value);
            if row.len() == FIELDS {
                if !(self.0)(rows, &row) {
                    return Err(serde::de::Error::custom("stopped"));
                }
                row.clear();
                rows += 1;
            }
        }
        if row.is_empty() {
            Ok(())
        } else {
            Err(serde::de::Error::custom("a partial row"))
        }
    }
}

/// A refresh's compact list, read once by whoever needs it first: the task that starts the
/// refreshes (on the blocking pool), or the JavaScript thread when it must know every token the
/// manager was handed before that task got to it.
struct ListRead {
    text: String,
    /// When the call was made: `access` counts while `expires` is after it.
    now: i64,
    read: OnceLock<std::result::Result<Vec<FallbackAccount>, String>>,
}

impl ListRead {
    fn new(text: String, now: i64) -> Self {
        Self { text, now, read: OnceLock::new() }
    }

    fn accounts(&self) -> &std::result::Result<Vec<FallbackAccount>, String> {
        self.read.get_or_init(|| {
            let (read, _) = read_compact(&self.text, None)?;
            let mut accounts = read.accounts;
            for account in &mut accounts {
                if account.expires.is_none_or(|at| at <= self.now) {
                    account.access = None;
                }
            }
            Ok(accounts)
        })
    }

    fn tokens(&self) -> Vec<String> {
        self.accounts()
            .as_ref()
            .map(|accounts| accounts.iter().filter_map(|a| a.access.clone()).collect())
            .unwrap_or_default()
    }
}

/// `[plan, indices, ...more]` for the facade.
fn plan_and_indices<T: 'static>(
    env: &Env,
    plan: T,
    indices: Vec<u32>,
    more: Option<f64>,
) -> Result<Array<'_>> {
    let mut answer = env.create_array(2)?;
    answer.set(0, External::new(plan))?;
    answer.set(1, Uint32Array::new(indices))?;
    if let Some(more) = more {
        answer.set(2, more)?;
    }
    Ok(answer)
}

/// A settled seeding's fallback epoch for the facade; -1: not settled.
fn settled_epoch(epoch: Option<u64>) -> f64 {
    epoch.map_or(-1.0, |epoch| epoch as f64)
}

#[napi]
impl QuotaManager {
    /// Seeding, first half: reads the compact list (a `TypeError` names a bad account) and
    /// seeds all but the snapshots the core could adopt. `changed` (a JSON array of host
    /// indices, one per row) says the rows are only the accounts that changed since a settled
    /// seeding of the same ids (see `index.js`): the others are left as they are, none is
    /// forgotten. Answers `[plan, indices, epoch, rowsAreAccounts]`: the indices, in the host's
    /// list, of the accounts whose snapshot `_applyFallbackSeeding` must bring; when none, the
    /// fallback epoch if the seeding is settled (-1: not): while that epoch holds, the same list
    /// seeded again changes nothing; and whether each row was an account of its own (no api-key
    /// account, no repeated id), which a later seeding of changed rows only relies on.
    #[napi(catch_unwind, js_name = "_planFallbackSeeding", skip_typescript)]
    pub fn plan_fallback_seeding<'env>(
        &self,
        env: &'env Env,
        compact: String,
        changed: Option<String>,
    ) -> Result<Array<'env>> {
        self.tick(env)?;
        let changed: Option<Vec<u32>> = changed
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|_| type_error(env, "accounts must be an array"))?;
        let (read, bounds) =
            read_compact(&compact, changed.as_deref()).map_err(|e| type_error(env, e))?;
        let scope =
            if changed.is_some() { SeedingScope::ChangedAccounts } else { SeedingScope::WholeList };
        let awaited = self.core.seed_fallbacks_but_snapshots(read.accounts, &bounds, scope);
        let indices = awaited.positions.iter().map(|&at| read.indices[at]).collect();
        let epoch = settled_epoch(awaited.settled_epoch());
        let mut answer = plan_and_indices(env, awaited, indices, Some(epoch))?;
        answer.set(3, read.every_row_kept)?;
        Ok(answer)
    }

    /// Seeding, second half: `snapshots` is the JSON array of the snapshots asked for, in order.
    /// Returns the fallback epoch if the seeding is settled, else -1.
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

    /// `refreshAllFallbacks`, first half: reads the compact list (a `TypeError` names a bad
    /// account) and answers `[plan, indices]`: the index, in the host's list, of each account
    /// the call works on, for the facade to ask the host's resolver about.
    #[napi(catch_unwind, js_name = "_planFallbackRefresh", skip_typescript)]
    pub fn plan_fallback_refresh<'env>(
        &self,
        env: &'env Env,
        compact: String,
    ) -> Result<Array<'env>> {
        self.tick(env)?;
        let (read, _) = read_compact(&compact, None).map_err(|e| type_error(env, e))?;
        plan_and_indices(env, PlannedRefresh(read.accounts), read.indices, None)
    }

    /// `refreshAllFallbacks` without a resolver, in one call: the compact list is read off the
    /// JavaScript thread, then the due refreshes start (`access` counts while `expires` is after
    /// now). A bad account rejects the promise with the `TypeError` naming it, and nothing
    /// starts. Its tokens count as tokens from the moment this returns (see `QuotaManager::expect_tokens`).
    #[napi(catch_unwind, js_name = "_refreshAllFallbacksFrom", skip_typescript)]
    pub fn refresh_all_fallbacks_from<'env>(
        &self,
        env: &'env Env,
        compact: String,
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let list = Arc::new(ListRead::new(compact, self.core.now_ms()));
        let tokens: PendingTokens = {
            let list = list.clone();
            Arc::new(move || list.tokens())
        };
        self.core.expect_tokens(tokens.clone());
        let core = self.core.clone();
        let work = async move {
            let read = {
                let list = list.clone();
                tokio::task::spawn_blocking(move || list.accounts().clone())
                    .await
                    .unwrap_or_else(|_| Err("accounts could not be read".to_owned()))
            };
            core.settle_tokens(&tokens);
            match read {
                Ok(accounts) => {
                    core.refresh_all_fallbacks(accounts).await;
                    Ok(())
                }
                Err(message) => Err(message),
            }
        };
        let promise = env.spawn_future_with_callback(
            async move { Ok(work.await) },
            |env, outcome: std::result::Result<(), String>| {
                outcome.map_err(|message| type_error(env, message))
            },
        )?;
        Ok(promise.to_unknown())
    }

    /// `refreshAllFallbacks` with a resolver, second half: `tokens` is the JSON array of the
    /// resolver's answers, one per account of the plan (`null`: none). Resolves once every due
    /// refresh is done.
    #[napi(catch_unwind, js_name = "_startFallbackRefresh", skip_typescript)]
    pub fn start_fallback_refresh<'env>(
        &self,
        env: &'env Env,
        plan: &mut External<PlannedRefresh>,
        tokens: String,
    ) -> Result<Unknown<'env>> {
        let mut accounts = std::mem::take(&mut **plan).0;
        let tokens: Vec<Value> = serde_json::from_str(&tokens)
            .map_err(|_| type_error(env, "resolveAccessToken answers could not be read"))?;
        for (account, token) in accounts.iter_mut().zip(tokens) {
            account.access = match token {
                Value::String(token) if !token.is_empty() => Some(token),
                _ => None,
            };
        }
        self.core.remember_tokens(accounts.iter().filter_map(|a| a.access.as_deref()));
        let work = self.core.refresh_all_fallbacks(accounts);
        Ok(void_promise(env, work)?.to_unknown())
    }
}
