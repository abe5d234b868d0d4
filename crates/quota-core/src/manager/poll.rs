//! The poll itself: over HTTP, or through the host's transport when it gave one (docs/endpoint.md#host-transports).

use super::attempt::Attempt;
use super::routes::RouteId;
use super::QuotaManager;
use crate::client::poll_headers;
use crate::error::QuotaError;
use crate::snapshot::QuotaSnapshot;
use crate::transport::{PollKind, PollRequest};

impl QuotaManager {
    pub(super) async fn poll(&self, attempt: &Attempt) -> Result<QuotaSnapshot, QuotaError> {
        let clock = self.inner.clock.clone();
        let now = move || clock.now_ms();
        let Some(transport) = &self.inner.config.transport else {
            return self.inner.client.fetch(&attempt.token, now).await;
        };
        let config = &self.inner.config.usage;
        let request = PollRequest {
            kind: match attempt.route {
                RouteId::Main => PollKind::Main,
                RouteId::Fallback(_) => PollKind::Fallback,
            },
            account_id: attempt.identity.clone(),
            access_token: attempt.token.clone(),
            url: config.url.clone(),
            headers: poll_headers(&attempt.token, &config.user_agent),
        };
        transport.fetch(request, config.timeout, now).await
    }

    /// May a refresh be made with an empty token? Only through a host transport that brings
    /// its own credentials.
    pub fn can_fetch_without_access_token(&self) -> bool {
        self.inner.config.transport.as_ref().is_some_and(|t| t.0.fetches_without_token())
    }
}
