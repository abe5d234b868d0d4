//! The polls: `refreshMain`, `refreshFallback` and `refreshMainInBackground`. The facade
//! (`index.js`) defines the `…WithMetadata` twins over the first two, and turns their bad
//! arguments into rejections.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::js::{optional, type_error};
use quota_core::manager::MainTarget;

use super::{optional_account, optional_generation, QuotaManager};

const MAIN_TOKEN_UNAVAILABLE: &str =
    "Main OAuth access token is unavailable: accessToken must be a non-empty string";
const FALLBACK_TOKEN_UNAVAILABLE: &str =
    "Fallback OAuth access token is unavailable: accessToken must be a non-empty string";

#[napi]
impl QuotaManager {
    /// Polls the usage endpoint for the main account (one request per identity and token,
    /// paced, backed off, shared across processes). `mainAccountId` `undefined` is an identity
    /// of its own, as in the plugin's manager (a bound identity is unbound first); with one
    /// argument, it is both the identity and the access token. With
    /// `expectedIdentityGeneration`, rejects (no request) when the identity moved on. Callers of
    /// one request get the same promise and the same frozen snapshot. Bad arguments reject.
    #[napi(
        catch_unwind,
        ts_args_type = "mainAccountId: string | undefined, accessToken?: string | undefined, expectedIdentityGeneration?: number | undefined",
        ts_return_type = "Promise<QuotaSnapshot>"
    )]
    pub fn refresh_main<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
        generation: Option<Unknown>,
        with_metadata: Option<bool>,
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let first = optional::<String>(env, first, "mainAccountId")?;
        let token = optional::<String>(env, access_token, "accessToken")?;
        let expected = optional_generation(env, generation)?;
        let (identity, token, one_argument) = match (first, token) {
            (Some(first), None) => (None, first, true),
            (first, token) => (first, token.unwrap_or_default(), false),
        };
        let token = self.usable_token(env, token, MAIN_TOKEN_UNAVAILABLE)?;
        let identity = self.core.identity_form(identity, Some(&token));
        let target = match &identity {
            Some(id) => MainTarget::Named(id),
            None if one_argument => MainTarget::Token,
            None => MainTarget::Unnamed,
        };
        let refresh = self.core.begin_refresh_main_for(target, &token, expected);
        self.promises.promise(env, refresh, with_metadata.unwrap_or(false))
    }

    /// Polls the usage endpoint for one fallback account. `accessToken` may be `''` when
    /// `canFetchWithoutAccessToken()`. Bad arguments reject.
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string, accessToken: string, account?: FallbackAccountLineage | FallbackAccount | undefined",
        ts_return_type = "Promise<QuotaSnapshot>"
    )]
    pub fn refresh_fallback<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        account: Option<Unknown>,
        with_metadata: Option<bool>,
    ) -> Result<Unknown<'env>> {
        let id = self.tick_fallback(env, account_id)?;
        // A token that is not a string is as unavailable as an empty one.
        let token = optional::<String>(env, access_token, "accessToken")
            .map_err(|_| type_error(env, FALLBACK_TOKEN_UNAVAILABLE))?;
        let token =
            self.usable_token(env, token.unwrap_or_default(), FALLBACK_TOKEN_UNAVAILABLE)?;
        let account = optional_account(env, &id, account)?;
        let refresh = self.core.begin_refresh_fallback(&id, &token, account.as_ref());
        self.promises.promise(env, refresh, with_metadata.unwrap_or(false))
    }

    /// Starts a main refresh nobody awaits. Never rejects; does nothing while one runs or while
    /// the route is backed off.
    #[napi(catch_unwind, ts_args_type = "accessToken: string")]
    pub fn refresh_main_in_background(
        &self,
        env: Env,
        access_token: Option<Unknown>,
    ) -> Result<()> {
        self.tick(&env)?;
        let token = optional::<String>(&env, access_token, "accessToken")?.unwrap_or_default();
        let token = self.usable_token(&env, token, "accessToken must be a non-empty string")?;
        if let Some(refresh) = self.core.background_main_refresh(&token) {
            napi::bindgen_prelude::spawn(refresh);
        }
        Ok(())
    }
}
