//! Polls through the host instead of HTTP (COMPAT §1): a `fetch`-like function (`fetchImpl`) or a
//! snapshot source (`fetchQuotaSnapshot`). Only the poll itself goes through the host; single
//! flight, pacing, backoff, locks and the state file stay in the manager. The binding implements
//! [`HostTransport`] on the JavaScript side; this module turns its answers into the same
//! `Result<QuotaSnapshot, QuotaError>` the HTTP client gives.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::client::{interpret_response, MAX_BODY_BYTES};
use crate::error::QuotaError;
use crate::snapshot::{QuotaSnapshot, QuotaSource};

/// Which route a poll is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollKind {
    Main,
    Fallback,
}

/// One poll handed to the host.
#[derive(Clone, Debug)]
pub struct PollRequest {
    pub kind: PollKind,
    /// The main identity (main) or the fallback id.
    pub account_id: Option<String>,
    pub access_token: String,
    /// For a `fetch`-like transport: the URL and headers the HTTP client would send.
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// What the host answered.
#[derive(Clone, Debug)]
pub enum HostAnswer {
    /// A `fetch` response, read whole.
    Response {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// A snapshot (`fetchQuotaSnapshot` resolved).
    Snapshot(Value),
    /// `fetchQuotaSnapshot` rejected: classified by its `status` and `retryAfter(Ms)`; without
    /// a status, by whether it is a connection failure (`network`).
    Rejected {
        status: Option<u16>,
        network: bool,
        retry_after_ms: Option<i64>,
        message: String,
    },
    /// The host's function failed in a way that says nothing about the endpoint (a `fetch`
    /// rejection, a non-object answer): a network error.
    Failed(String),
}

/// A host transport. `fetches_without_token`: polls may be made with an empty token (the
/// transport brings its own credentials).
pub trait HostTransport: Send + Sync {
    fn poll(&self, request: PollRequest) -> BoxFuture<'static, HostAnswer>;
    fn fetches_without_token(&self) -> bool;
}

/// A cloneable handle to the host's transport (the manager's config is `Clone` and `Debug`).
#[derive(Clone)]
pub struct Transport(pub Arc<dyn HostTransport>);

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport(host)")
    }
}

impl Transport {
    /// Polls once through the host, bounded by `timeout` (a host function that never settles
    /// still times out), and reads its answer like an HTTP response.
    pub async fn fetch(
        &self,
        request: PollRequest,
        timeout: Duration,
        now: impl Fn() -> i64 + Send,
    ) -> Result<QuotaSnapshot, QuotaError> {
        let token = request.access_token.clone();
        let answer = tokio::time::timeout(timeout, self.0.poll(request))
            .await
            .map_err(|_| {
                QuotaError::Timeout(format!(
                    "no complete answer within {} ms",
                    timeout.as_millis()
                ))
            })?;
        let checked_at = now();
        match answer {
            HostAnswer::Response {
                status,
                retry_after,
                body,
            } => {
                if body.len() > MAX_BODY_BYTES && (200..300).contains(&status) {
                    return Err(QuotaError::BadResponse(format!(
                        "body larger than {MAX_BODY_BYTES} bytes"
                    )));
                }
                interpret_response(
                    status,
                    retry_after.as_deref(),
                    body.as_bytes(),
                    &token,
                    checked_at,
                )
            }
            HostAnswer::Snapshot(value) => snapshot_from_host(&value, checked_at),
            HostAnswer::Rejected {
                status,
                network,
                retry_after_ms,
                message,
            } => Err(rejection_error(status, network, retry_after_ms, message)),
            HostAnswer::Failed(message) => Err(QuotaError::Network(message)),
        }
    }
}

/// A host snapshot, normalised like a parsed body: junk dropped field by field, `source: 'poll'`,
/// `checkedAt` now when absent.
fn snapshot_from_host(value: &Value, now: i64) -> Result<QuotaSnapshot, QuotaError> {
    let mut snapshot = QuotaSnapshot::from_value_lenient(value).ok_or_else(|| {
        QuotaError::BadResponse("fetchQuotaSnapshot resolved with a non-object".into())
    })?;
    snapshot.source = Some(QuotaSource::Poll);
    snapshot.checked_at = Some(snapshot.checked_at.unwrap_or(now));
    Ok(snapshot)
}

/// A rejection of `fetchQuotaSnapshot`, classified like an HTTP failure of that status. Without
/// a status it is a network error (transient) only when it says so (`network`); anything else
/// (a vault that refused, a credential missing) is the host's refusal: a flat backoff, so a
/// failing transport is not retried on the ladder's first minute.
fn rejection_error(
    status: Option<u16>,
    network: bool,
    retry_after_ms: Option<i64>,
    message: String,
) -> QuotaError {
    match status {
        Some(status @ (401 | 403)) => QuotaError::Auth {
            status,
            body: message,
        },
        Some(status) if !(200..300).contains(&status) => QuotaError::Http {
            status,
            retry_after_ms,
            body: message,
        },
        _ if network => QuotaError::Network(message),
        _ => QuotaError::Transport(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;

    #[test]
    fn rejections_are_classified_by_status() {
        assert_eq!(
            rejection_error(Some(401), false, None, "x".into()).failure_class(),
            FailureClass::Auth
        );
        assert_eq!(
            rejection_error(Some(429), false, Some(5_000), "x".into()).retry_after_ms(),
            Some(5_000)
        );
        assert_eq!(
            rejection_error(Some(404), false, None, "x".into()).failure_class(),
            FailureClass::NonTransient
        );
        let network = rejection_error(None, true, None, "x".into());
        assert_eq!(network.code(), "QUOTA_NETWORK_ERROR");
        assert_eq!(network.failure_class(), FailureClass::Transient);
        let refused = rejection_error(None, false, None, "vault locked".into());
        assert_eq!(refused.code(), "QUOTA_TRANSPORT_ERROR");
        assert_eq!(refused.failure_class(), FailureClass::NonTransient);
        assert_eq!(
            rejection_error(Some(503), true, None, "x".into()).code(),
            "QUOTA_HTTP_ERROR",
            "a status wins"
        );
    }

    #[test]
    fn host_snapshots_become_polls_stamped_now() {
        let snapshot = snapshot_from_host(
            &serde_json::json!({ "five_hour": { "usedPercent": 10, "checkedAt": 5 }, "junk": 1 }),
            42,
        )
        .unwrap();
        assert_eq!(snapshot.source, Some(QuotaSource::Poll));
        assert_eq!(snapshot.checked_at, Some(42));
        assert!(snapshot_from_host(&serde_json::json!(3), 1).is_err());
    }
}
