//! The polls: `refreshMain`, `refreshFallback` (each with its `…WithMetadata` twin),
//! and the background main refresh (`refreshAllFallbacks`: `account_lists.rs`).

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::js::{optional_string, required_non_empty, type_error};
use crate::shared::Shape;
use quota_core::manager::MainTarget;

use super::args::{optional_account, optional_generation};
use super::{or_rejected, QuotaManager};

#[napi]
impl QuotaManager {
    // ----- polls ---------------------------------------------------------------------------

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
    ) -> Result<Unknown<'env>> {
        let body = self.poll_main(env, first, access_token, generation, Shape::Snapshot);
        or_rejected(env, body)
    }

    /// `refreshMain`, telling whether a request was sent (`fetched`) or the cache served.
    #[napi(
        catch_unwind,
        ts_args_type = "mainAccountId: string | undefined, accessToken?: string | undefined, expectedIdentityGeneration?: number | undefined",
        ts_return_type = "Promise<QuotaRefreshResult>"
    )]
    pub fn refresh_main_with_metadata<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
        generation: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let body = self.poll_main(env, first, access_token, generation, Shape::WithMetadata);
        or_rejected(env, body)
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
    ) -> Result<Unknown<'env>> {
        let body = self.poll_fallback(env, account_id, access_token, account, Shape::Snapshot);
        or_rejected(env, body)
    }

    /// `refreshFallback`, telling whether a request was sent.
    #[napi(
        catch_unwind,
        ts_args_type = "accountId: string, accessToken: string, account?: FallbackAccountLineage | FallbackAccount | undefined",
        ts_return_type = "Promise<QuotaRefreshResult>"
    )]
    pub fn refresh_fallback_with_metadata<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        account: Option<Unknown>,
    ) -> Result<Unknown<'env>> {
        let body = self.poll_fallback(env, account_id, access_token, account, Shape::WithMetadata);
        or_rejected(env, body)
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
        let token = self.token_arg(&env, access_token, "accessToken")?;
        if let Some(refresh) = self.core.background_main_refresh(&token) {
            napi::bindgen_prelude::spawn(refresh);
        }
        Ok(())
    }
}

impl QuotaManager {
    /// An access token: a string, non-empty unless a host transport brings its own credentials.
    pub(super) fn token_arg(
        &self,
        env: &Env,
        value: Option<Unknown>,
        name: &str,
    ) -> Result<String> {
        let token = optional_string(env, value, name)?.unwrap_or_default();
        if token.trim().is_empty() && !self.core.can_fetch_without_access_token() {
            return Err(type_error(env, format!("{name} must be a non-empty string")));
        }
        self.core.remember_tokens([token.as_str()]);
        Ok(token)
    }

    /// `refreshMain` and `refreshMainWithMetadata`, which differ only in what they resolve with.
    pub(super) fn poll_main<'env>(
        &self,
        env: &'env Env,
        first: Option<Unknown>,
        access_token: Option<Unknown>,
        generation: Option<Unknown>,
        shape: Shape,
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let first = optional_string(env, first, "mainAccountId")?;
        let token = optional_string(env, access_token, "accessToken")?;
        let expected = optional_generation(env, generation)?;
        // One argument: it is both the identity and the token. `undefined` as the identity is
        // an identity of its own, as in the plugin's manager: the slot is unbound for it.
        let one_argument = first.is_some() && token.is_none();
        let (identity, token) = match (first, token) {
            (Some(first), None) => (None, first),
            (first, Some(token)) => (first, token),
            (None, None) => (None, String::new()),
        };
        if token.trim().is_empty() && !self.core.can_fetch_without_access_token() {
            return Err(type_error(
                env,
                "Main OAuth access token is unavailable: accessToken must be a non-empty string",
            ));
        }
        self.core.remember_tokens([token.as_str()]);
        let identity = self.core.identity_form(identity, Some(&token));
        let target = match &identity {
            Some(id) => MainTarget::Named(id),
            None if one_argument => MainTarget::Token,
            None => MainTarget::Unnamed,
        };
        let refresh = self.core.begin_refresh_main_for(target, &token, expected);
        self.promises.promise(env, refresh, shape)
    }

    /// `refreshFallback` and `refreshFallbackWithMetadata`.
    pub(super) fn poll_fallback<'env>(
        &self,
        env: &'env Env,
        account_id: Option<Unknown>,
        access_token: Option<Unknown>,
        account: Option<Unknown>,
        shape: Shape,
    ) -> Result<Unknown<'env>> {
        self.tick(env)?;
        let id = required_non_empty(env, account_id, "accountId")?;
        let token = self.token_arg(env, access_token, "accessToken").map_err(|_| {
            type_error(
                env,
                "Fallback OAuth access token is unavailable: accessToken must be a non-empty string",
            )
        })?;
        let account = optional_account(env, &id, account, "account")?;
        let refresh = self.core.begin_refresh_fallback(&id, &token, account.as_ref());
        self.promises.promise(env, refresh, shape)
    }
}
