//! The host's storage (`AccountStorage`): its settings and persisted main quota.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::js::optional_string;

use super::args::optional_storage;
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
}
