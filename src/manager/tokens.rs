//! Token identities: no token reaches the state file or a callback as an identity.

use quota_core::fingerprint::fingerprint;
use quota_core::host::HostStorage;

use super::QuotaManager;

impl QuotaManager {
    /// An identity as the core may keep it: a token (one this manager was handed, the token of
    /// the same call, or anything shaped like an OAuth token) becomes `token:<fingerprint>`, so
    /// no token reaches the state file or a callback as an identity.
    pub(super) fn identity_form(
        &self,
        identity: Option<String>,
        token: Option<&str>,
    ) -> Option<String> {
        let identity = identity?;
        Some(if self.is_token(&identity, token) { token_identity(&identity) } else { identity })
    }

    pub(super) fn is_token(&self, identity: &str, token: Option<&str>) -> bool {
        token == Some(identity) || looks_like_token(identity) || self.seen_tokens.contains(identity)
    }

    pub(super) fn remember_token(&self, token: &str) {
        self.remember_tokens([token]);
    }

    pub(crate) fn remember_tokens<'a>(&self, tokens: impl IntoIterator<Item = &'a str>) {
        if self.seen_tokens.remember(tokens) {
            // Which identities are tokens changes what `getMain(id)` answers: the facade's
            // kept answers must go.
            self.core.changes().bump();
        }
    }
}

/// An OAuth token by its shape (Anthropic's tokens start with `sk-ant-`).
pub(super) fn looks_like_token(text: &str) -> bool {
    text.starts_with("sk-ant-")
}

/// The identity of the account behind a token, as it may be stored: `token:<fingerprint>`.
pub(super) fn token_identity(token: &str) -> String {
    format!("token:{}", fingerprint(token))
}

/// The host's storage with every main identity that is a token replaced by its fingerprint
/// form (`mainAccountId`, and the persisted quota's and error's `accountIdentity`).
pub(super) fn identities_as_fingerprints(
    storage: &mut HostStorage,
    is_token: impl Fn(&str) -> bool,
) {
    let fix = |identity: &mut Option<String>| {
        if let Some(id) = identity.as_deref().filter(|id| is_token(id)) {
            *identity = Some(token_identity(id));
        }
    };
    fix(&mut storage.main_account_id);
    if let Some(quota) = storage.main_quota.as_mut() {
        fix(&mut quota.account_identity);
    }
    if let Some(error) = storage.main_last_error.as_mut() {
        fix(&mut error.account_identity);
    }
}
