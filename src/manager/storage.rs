//! The host's storage (`AccountStorage`): its settings and persisted main quota.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::QuotaManager;

#[napi]
impl QuotaManager {
    /// Takes the host's settings (interval, thresholds, fail-closed) and seeds main from it.
    #[napi(catch_unwind, ts_args_type = "storage: AccountStorage | null")]
    pub fn update_storage(&self, env: Env, storage: Option<Unknown>) -> Result<()> {
        self.tick(&env)?.update_storage(self.storage_arg(&env, storage)?.as_ref());
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
        let storage = self.storage_arg(&env, storage)?;
        let identity = self.main_identity(&env, main_account_id, "mainAccountId")?;
        if let Some(storage) = storage {
            self.core.seed_main(&storage, identity.as_deref());
        }
        Ok(())
    }
}
