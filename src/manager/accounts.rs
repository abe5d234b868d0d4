//! The host's storage and account lists.

use std::collections::HashSet;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::js::{is_nullish, is_thenable, optional_string, to_json, type_error};
use quota_core::host::FallbackAccount;

use super::args::{accounts, optional_storage};
use super::QuotaManager;

#[napi]
impl QuotaManager {
    // ----- host storage --------------------------------------------------------------------

    /// Takes the host's settings (interval, thresholds, fail-closed) and seeds main from it.
    #[napi(catch_unwind, ts_args_type = "storage: AccountStorage | null")]
    pub fn update_storage(&self, env: Env, storage: Option<Unknown>) -> Result<()> {
        self.tick(&env)?;
        let storage = optional_storage(&env, storage, "storage")?.map(|mut storage| {
            self.core.storage_identities(&mut storage);
            storage
        });
        self.core.update_storage(storage.as_ref());
        Ok(())
    }

    /// Adopts the host's persisted main snapshot (when newer) and backoff (when active).
    #[napi(
        catch_unwind,
        ts_args_type = "storage: AccountStorage | null, mainAccountId?: string | undefined"
    )]
    pub fn seed_main_from_storage(
        &self,
        env: Env,
        storage: Option<Unknown>,
        main_account_id: Option<Unknown>,
    ) -> Result<()> {
        self.tick(&env)?;
        let storage = optional_storage(&env, storage, "storage")?.map(|mut storage| {
            self.core.storage_identities(&mut storage);
            storage
        });
        let identity = optional_string(&env, main_account_id, "mainAccountId")?;
        let identity = self.core.identity_form(identity, None);
        if let Some(storage) = storage {
            self.core.seed_main(&storage, identity.as_deref());
        }
        Ok(())
    }

    /// Adopts each account's persisted quota and backoff; forgets accounts no longer listed.
    #[napi(catch_unwind, ts_args_type = "accounts: readonly FallbackAccount[]")]
    pub fn seed_fallbacks_from_accounts(
        &self,
        env: Env,
        accounts_value: Option<Unknown>,
    ) -> Result<()> {
        self.tick(&env)?;
        let accounts = accounts(&env, accounts_value, "accounts")?;
        self.core.seed_fallbacks(accounts);
        Ok(())
    }
}

impl QuotaManager {
    /// The accounts of `refreshAllFallbacks`, each with the token to use in `access` (or none).
    pub(super) fn resolved_accounts(
        &self,
        env: &Env,
        value: Option<Unknown>,
        resolver: Option<Unknown>,
    ) -> Result<Vec<FallbackAccount>> {
        let value = value.ok_or_else(|| type_error(env, "accounts must be an array"))?;
        if !value.is_array()? {
            return Err(type_error(env, "accounts must be an array"));
        }
        let resolver = match resolver {
            Some(r) if !is_nullish(&r) => {
                if r.get_type()? != ValueType::Function {
                    return Err(type_error(env, "resolveAccessToken must be a function"));
                }
                Some(unsafe { r.cast::<Function<Unknown, Unknown>>() }?)
            }
            _ => None,
        };
        let array = unsafe { value.cast::<Array>() }?;
        let now = self.core.now_ms();
        // One JSON trip for the whole list (a call into JSON.stringify per account cost more than
        // the work itself with thousands of accounts); the items themselves only for a resolver.
        let all = to_json(env, value, "accounts")?;
        let items = all.as_array().map_or(&[][..], Vec::as_slice);
        let mut accounts: Vec<FallbackAccount> = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        for (index, json) in items.iter().enumerate() {
            if FallbackAccount::is_api_key_account(json) {
                continue;
            }
            let name = format!("accounts[{index}]");
            let mut account =
                FallbackAccount::from_value(json, &name).map_err(|e| type_error(env, e))?;
            if !seen.insert(account.id.clone()) {
                continue;
            }
            account.access = match &resolver {
                Some(resolve) => {
                    let item: Unknown = array
                        .get(index as u32)?
                        .ok_or_else(|| type_error(env, format!("{name} must be an object")))?;
                    let answer = resolve.call(item)?;
                    match answer.get_type()? {
                        ValueType::String => Some(unsafe { answer.cast::<String>() }?),
                        // Polling nothing, silently, would hide the host's mistake.
                        ValueType::Object | ValueType::Function if is_thenable(&answer)? => {
                            return Err(type_error(
                                env,
                                format!(
                                    "resolveAccessToken must return the token (a string) or \
                                     undefined, not a Promise ({name}): resolve tokens before \
                                     calling refreshAllFallbacks"
                                ),
                            ));
                        }
                        _ => None,
                    }
                }
                None => {
                    account.access.take().filter(|_| account.expires.is_some_and(|at| at > now))
                }
            }
            .filter(|token| !token.is_empty());
            accounts.push(account);
        }
        self.core.remember_tokens(accounts.iter().filter_map(|a| a.access.as_deref()));
        Ok(accounts)
    }
}
