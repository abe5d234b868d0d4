//! The host's callbacks: what it hears about a request, once the request's locks are released.

use futures::future::BoxFuture;

use super::routes::RouteId;
use super::QuotaManager;
use crate::snapshot::{ApiErrorRecord, QuotaSnapshot};

/// A successful poll, as reported to the host.
#[derive(Clone, Debug)]
pub struct FetchedEvent {
    pub quota: QuotaSnapshot,
    pub checked_at: i64,
    pub token_fingerprint: String,
    pub fetch_started_at: i64,
    /// The main route's error generation after this success (docs/compat.md#callbacks); 0 for fallbacks.
    pub error_generation: u64,
    /// The main route's cleared-at time after this success.
    pub error_cleared_at: Option<i64>,
}

/// The host's callbacks. Each returns when the host has handled the event, so results reach
/// callers only after the host saw them.
pub trait HostEvents: Send + Sync {
    fn main_quota_fetched(&self, event: FetchedEvent) -> BoxFuture<'static, ()>;
    /// `error_generation`: the main route's error generation after this error.
    fn api_error(&self, error: ApiErrorRecord, error_generation: u64) -> BoxFuture<'static, ()>;
    fn fallback_quota_fetched(
        &self,
        account_id: String,
        event: FetchedEvent,
    ) -> BoxFuture<'static, ()>;
    fn fallback_api_error(
        &self,
        account_id: String,
        error: ApiErrorRecord,
    ) -> BoxFuture<'static, ()>;
}

/// What the host hears about a request.
pub(super) enum Announcement {
    Fetched(Box<FetchedEvent>),
    Failed(ApiErrorRecord),
}

impl QuotaManager {
    /// Tells the host, and waits until it has handled it.
    pub(super) async fn announce(&self, route: &RouteId, announcement: Announcement) {
        let events = &self.inner.events;
        match (route, announcement) {
            (RouteId::Main, Announcement::Fetched(mut event)) => {
                let generations = self.state().routes.generations.clone();
                event.error_generation = generations.error;
                event.error_cleared_at = generations.error_cleared_at;
                events.main_quota_fetched(*event).await;
            }
            (RouteId::Main, Announcement::Failed(record)) => {
                let generation = self.state().routes.generations.error_set();
                events.api_error(record, generation).await;
            }
            (RouteId::Fallback(id), Announcement::Fetched(event)) => {
                events.fallback_quota_fetched(id.clone(), *event).await;
            }
            (RouteId::Fallback(id), Announcement::Failed(record)) => {
                events.fallback_api_error(id.clone(), record).await;
            }
        }
    }
}
