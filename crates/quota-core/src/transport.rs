//! Polls through the host instead of HTTP (docs/endpoint.md#host-transports): the binding
//! implements [`HostTransport`]; its answers become what the HTTP client's would.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::client::{interpret_response, redact_strings, scrub_message, status_error, timed_out};
use crate::error::QuotaError;
use crate::snapshot::{QuotaSnapshot, QuotaSource};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollKind {
    Main,
    Fallback,
}

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

#[derive(Clone, Debug)]
pub enum HostAnswer {
    /// A `fetch` response, read whole.
    Response { status: u16, retry_after: Option<String>, body: String },
    /// A snapshot (`fetchQuotaSnapshot` resolved).
    Snapshot(Value),
    /// `fetchQuotaSnapshot` rejected (docs/endpoint.md#host-transports).
    Rejected { status: Option<u16>, network: bool, retry_after_ms: Option<i64>, message: String },
    /// The host's function failed (a `fetch` rejection, a non-object answer): a network error.
    Failed(String),
    /// The host's function failed by calling back for the route it polls.
    Reentered(String),
}

/// A host transport; `fetches_without_token`: it brings its own credentials.
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
    /// Polls once through the host, bounded by `timeout` (docs/endpoint.md#limits).
    pub async fn fetch(
        &self,
        request: PollRequest,
        timeout: Duration,
        now: impl Fn() -> i64 + Send,
    ) -> Result<QuotaSnapshot, QuotaError> {
        let token = request.access_token.clone();
        let answer = tokio::time::timeout(timeout, self.0.poll(request))
            .await
            .map_err(|_| timed_out(timeout))?;
        let checked_at = now();
        let scrub = |message: String| scrub_message(&message, &token);
        match answer {
            HostAnswer::Response { status, retry_after, body } => interpret_response(
                status,
                retry_after.as_deref(),
                body.as_bytes(),
                &token,
                checked_at,
            ),
            // Scrubbed as an HTTP answer is (docs/endpoint.md#host-transports).
            HostAnswer::Snapshot(mut value) => {
                redact_strings(&mut value, &token);
                snapshot_from_host(&value, checked_at)
            }
            HostAnswer::Rejected { status, network, retry_after_ms, message } => {
                Err(rejection_error(status, network, retry_after_ms, scrub(message)))
            }
            HostAnswer::Failed(message) => Err(QuotaError::Network(scrub(message))),
            HostAnswer::Reentered(message) => Err(QuotaError::Reentered(scrub(message))),
        }
    }
}

/// A host snapshot, read leniently and stamped as a poll (docs/endpoint.md#host-transports).
fn snapshot_from_host(value: &Value, now: i64) -> Result<QuotaSnapshot, QuotaError> {
    let mut snapshot = QuotaSnapshot::from_value_lenient(value).ok_or_else(|| {
        QuotaError::BadResponse("fetchQuotaSnapshot resolved with a non-object".into())
    })?;
    snapshot.source = Some(QuotaSource::Poll);
    snapshot.checked_at.get_or_insert(now);
    Ok(snapshot)
}

/// A rejection of `fetchQuotaSnapshot`, classified by docs/endpoint.md#host-transports.
fn rejection_error(
    status: Option<u16>,
    network: bool,
    retry_after_ms: Option<i64>,
    message: String,
) -> QuotaError {
    match status {
        Some(status) if !(200..300).contains(&status) => {
            status_error(status, retry_after_ms, message)
        }
        _ if network => QuotaError::Network(message),
        _ => QuotaError::Transport(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{MAX_BODY_BYTES, MAX_ERROR_BODY_CHARS};
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
        // A rejection that names a success status says nothing about the endpoint: as no status.
        assert_eq!(
            rejection_error(Some(200), false, Some(5_000), "x".into()).code(),
            "QUOTA_TRANSPORT_ERROR"
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

    /// A host transport that always gives the same answer.
    struct Answering(HostAnswer);

    impl HostTransport for Answering {
        fn poll(&self, _: PollRequest) -> BoxFuture<'static, HostAnswer> {
            let answer = self.0.clone();
            Box::pin(async move { answer })
        }
        fn fetches_without_token(&self) -> bool {
            false
        }
    }

    const TOKEN: &str = "sk-ant-oat01-secret-token";

    async fn fetch_through(answer: HostAnswer) -> Result<QuotaSnapshot, QuotaError> {
        let request = PollRequest {
            kind: PollKind::Main,
            account_id: None,
            access_token: TOKEN.into(),
            url: "http://127.0.0.1/usage".into(),
            headers: Vec::new(),
        };
        Transport(Arc::new(Answering(answer))).fetch(request, Duration::from_secs(5), || 7).await
    }

    #[tokio::test]
    async fn a_token_in_a_host_rejection_or_failure_is_redacted() {
        let rejected = fetch_through(HostAnswer::Rejected {
            status: Some(429),
            network: false,
            retry_after_ms: None,
            message: format!("upstream 429 for Bearer {TOKEN} "),
        })
        .await
        .unwrap_err();
        assert_eq!(
            rejected.to_string(),
            "Claude quota check failed: 429 — upstream 429 for Bearer [redacted]"
        );
        let failed = fetch_through(HostAnswer::Failed(format!(
            "fetch failed: {{\"authorization\":\"Bearer {TOKEN}\"}}"
        )))
        .await
        .unwrap_err();
        assert!(!failed.to_string().contains(TOKEN), "{failed}");
        assert!(failed.to_string().contains("Bearer [redacted]"), "{failed}");
        let auth = fetch_through(HostAnswer::Rejected {
            status: Some(401),
            network: false,
            retry_after_ms: None,
            message: TOKEN.repeat(400),
        })
        .await
        .unwrap_err();
        assert!(!auth.to_string().contains("oat01"), "{auth}");
        assert!(auth.to_string().len() < 2 * MAX_ERROR_BODY_CHARS, "{auth}");
    }

    #[tokio::test]
    async fn a_fetch_response_is_read_like_http_and_only_a_large_success_body_is_refused() {
        let response = |status, body: String| HostAnswer::Response {
            status,
            retry_after: Some("120".into()),
            body,
        };
        let small = r#"{"five_hour":{"utilization":9}}"#.to_owned();
        let polled = fetch_through(response(200, small)).await.unwrap();
        assert_eq!(polled.five_hour.map(|w| w.used_percent), Some(9.0));
        // Exactly the limit is still read.
        let head = r#"{"five_hour":{"utilization":9},"pad":""#;
        let padded = format!("{head}{}\"}}", "x".repeat(MAX_BODY_BYTES - head.len() - 2));
        assert_eq!(padded.len(), MAX_BODY_BYTES);
        assert!(fetch_through(response(200, padded)).await.is_ok());
        let large = "x".repeat(MAX_BODY_BYTES + 1);
        let refused = fetch_through(response(200, large.clone())).await.unwrap_err();
        assert_eq!(refused.code(), "QUOTA_BAD_RESPONSE");
        // A large error page is still that status's failure, with its Retry-After.
        let limited = fetch_through(response(429, large)).await.unwrap_err();
        assert_eq!(limited.code(), "QUOTA_HTTP_ERROR");
        assert_eq!(limited.retry_after_ms(), Some(120_000));
        assert_eq!(
            format!("{:?}", Transport(Arc::new(Answering(HostAnswer::Failed(String::new()))))),
            "Transport(host)"
        );
    }

    #[tokio::test]
    async fn a_poll_failed_by_the_hosts_own_call_back_arms_no_backoff() {
        let error = fetch_through(HostAnswer::Reentered(format!("refreshMain inside {TOKEN}")))
            .await
            .unwrap_err();
        assert_eq!(error.failure_class(), FailureClass::None);
        assert_eq!(error.to_string(), "refreshMain inside [redacted]");
    }

    #[tokio::test]
    async fn a_token_in_a_host_snapshot_string_is_redacted() {
        let snapshot = fetch_through(HostAnswer::Snapshot(serde_json::json!({
            "five_hour": { "usedPercent": 10, "checkedAt": 5 },
            "scoped": [{ "id": "claude-weekly-scoped-x", "title": TOKEN, "modelName": TOKEN,
                         "usedPercent": 1, "remainingPercent": 99, "checkedAt": 5 }],
        })))
        .await
        .unwrap();
        let stored = serde_json::to_string(&snapshot).unwrap();
        assert!(!stored.contains(TOKEN), "{stored}");
        assert!(stored.contains("[redacted]"), "{stored}");
    }
}
