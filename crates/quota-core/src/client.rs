//! The HTTP client for Anthropic's usage endpoint (SPEC §1): one GET, a bounded body, and every
//! failure mapped onto a [`QuotaError`] whose class drives the backoff (SPEC §4).
//!
//! The access token goes only into the `Authorization` header (marked sensitive) and is scrubbed
//! from any error body the server echoes back, so no error message ever carries it.

use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::{redirect, Response, StatusCode, Url};
use serde_json::Value;

use crate::error::{ConfigError, QuotaError};
use crate::snapshot::QuotaSnapshot;
use crate::usage::parse_usage_body;

/// Where the usage endpoint lives unless the host configures `usageUrl`.
pub const DEFAULT_USAGE_URL: &str = "https://api.anthropic.com/api/oauth/usage";
/// The endpoint only answers OAuth clients that look like Claude Code.
pub const DEFAULT_USER_AGENT: &str = "claude-code/2.1.257";
/// Largest success body accepted; a real one is a few KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest error body kept in a message, in bytes of UTF-8, cut on a char boundary.
pub const MAX_ERROR_BODY_CHARS: usize = 1024;

/// The OAuth usage endpoint refuses requests without this beta flag.
const ANTHROPIC_BETA: &str = "oauth-2025-04-20";
/// Read a little past the message limit so trimming and redaction see whole words, but never
/// pull a large error page over the wire.
const ERROR_BODY_READ_BYTES: usize = 4 * MAX_ERROR_BODY_CHARS;
const REDACTED: &str = "[redacted]";

/// How to reach the usage endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageClientConfig {
    pub url: String,
    pub user_agent: String,
    /// Covers the whole request: connecting, the response headers and the full body.
    pub timeout: Duration,
}

impl Default for UsageClientConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_USAGE_URL.to_owned(),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A client for the usage endpoint. Cloning is cheap and clones share one connection pool.
#[derive(Clone, Debug)]
pub struct UsageClient {
    http: reqwest::Client,
    url: Url,
    timeout: Duration,
}

impl UsageClient {
    /// Builds a client; fails when the URL is not an absolute http(s) URL or the user agent is
    /// not a valid header value. The message names the offending value.
    pub fn new(config: UsageClientConfig) -> Result<Self, ConfigError> {
        let url = parse_url(&config.url).map_err(ConfigError::UsageUrl)?;
        let user_agent = HeaderValue::from_str(&config.user_agent).map_err(|_| {
            ConfigError::UserAgent(format!("invalid user agent {:?}", config.user_agent))
        })?;
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            // A redirect could carry the bearer token to another host; report it instead.
            .redirect(redirect::Policy::none())
            .timeout(config.timeout)
            .build()
            .map_err(|e| ConfigError::HttpClient(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            url,
            timeout: config.timeout,
        })
    }

    /// The endpoint this client polls.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Polls the endpoint once with `access_token`.
    ///
    /// `now` is called when the response headers arrive, to stamp checkedAt (and to resolve an
    /// HTTP-date `Retry-After`).
    pub async fn fetch(
        &self,
        access_token: &str,
        now: impl Fn() -> i64 + Send,
    ) -> Result<QuotaSnapshot, QuotaError> {
        let response = self
            .http
            .get(self.url.clone())
            .header(AUTHORIZATION, bearer(access_token)?)
            .header(ACCEPT, "application/json")
            .header("anthropic-beta", ANTHROPIC_BETA)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let checked_at = now();
        if !response.status().is_success() {
            return Err(status_error(response, access_token, checked_at).await);
        }
        let body = self.read_body(response).await?;
        parse_success_body(&body, checked_at)
    }

    /// Reads the success body chunk by chunk so an oversized one is refused after 1 MiB, not
    /// after it has all been buffered.
    async fn read_body(&self, mut response: Response) -> Result<Vec<u8>, QuotaError> {
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(body_too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(body_too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, error: &reqwest::Error) -> QuotaError {
        if error.is_timeout() {
            return QuotaError::Timeout(format!(
                "no complete answer within {} ms",
                self.timeout.as_millis()
            ));
        }
        let cause = root_cause(error);
        if error.is_connect() {
            QuotaError::Network(format!("cannot connect: {cause}"))
        } else {
            QuotaError::Network(cause)
        }
    }
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("invalid usage URL {text:?}: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "invalid usage URL {text:?}: scheme {other:?} is not http or https"
        )),
    }
}

/// The `Authorization` value, marked sensitive so it is never printed by `Debug`.
fn bearer(access_token: &str) -> Result<HeaderValue, QuotaError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {access_token}")).map_err(|_| {
        QuotaError::Network("access token is not a valid HTTP header value; not sent".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The innermost error message: reqwest's own text repeats the URL and says little about why.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn body_too_large() -> QuotaError {
    QuotaError::BadResponse(format!("body larger than {MAX_BODY_BYTES} bytes"))
}

async fn status_error(response: Response, access_token: &str, now_ms: i64) -> QuotaError {
    let status = response.status();
    let retry_after_ms = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::backoff::parse_retry_after(v, now_ms));
    let raw = read_error_body(response).await;
    let body = error_body_text(&raw, access_token, status);
    match status.as_u16() {
        status @ (401 | 403) => QuotaError::Auth { status, body },
        status => QuotaError::Http {
            status,
            retry_after_ms,
            body,
        },
    }
}

/// The start of an error body. A read failure keeps what arrived: the status is what matters.
async fn read_error_body(mut response: Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_READ_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// An error body fit for a message: token scrubbed, trimmed, at most [`MAX_ERROR_BODY_CHARS`]
/// bytes; the status's reason phrase when the body is blank, so the message never ends in `— `.
fn error_body_text(raw: &[u8], access_token: &str, status: StatusCode) -> String {
    let mut text = String::from_utf8_lossy(raw).into_owned();
    if !access_token.is_empty() {
        text = text.replace(access_token, REDACTED);
    }
    let body = truncate_on_char_boundary(text.trim(), MAX_ERROR_BODY_CHARS).trim_end();
    if body.is_empty() {
        status.canonical_reason().unwrap_or("no body").to_owned()
    } else {
        body.to_owned()
    }
}

fn truncate_on_char_boundary(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn parse_success_body(body: &[u8], checked_at: i64) -> Result<QuotaSnapshot, QuotaError> {
    if body.trim_ascii().is_empty() {
        return Err(QuotaError::BadResponse("empty body".into()));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| QuotaError::BadResponse(format!("body is not JSON ({e})")))?;
    if !value.is_object() {
        return Err(QuotaError::BadResponse("body is not a JSON object".into()));
    }
    Ok(parse_usage_body(&value, checked_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;
    use std::collections::HashMap;
    use std::future::Future;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    const TOKEN: &str = "sk-ant-oat01-secret-token";
    const NOW: i64 = 1_789_000_000_000;
    const BODY: &str = r#"{"five_hour":{"utilization":9.0,"resets_at":"2026-09-14T02:10:00Z"},
        "seven_day":{"utilization":68.0},"limits":[]}"#;

    /// Serves one connection: reads the request head, hands the socket to `reply`, and yields
    /// the head's lines.
    async fn serve<F, Fut>(reply: F) -> (String, JoinHandle<Vec<String>>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/oauth/usage", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let head = read_head(&mut stream).await;
            reply(stream).await;
            head
        });
        (url, task)
    }

    async fn read_head(stream: &mut TcpStream) -> Vec<String> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Serves `bytes` verbatim, then closes the connection.
    async fn serve_bytes(bytes: Vec<u8>) -> (String, JoinHandle<Vec<String>>) {
        serve(move |mut stream| async move {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        })
        .await
    }

    fn response(status_line: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
        let mut text = format!(
            "HTTP/1.1 {status_line}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            text.push_str(name);
            text.push_str(": ");
            text.push_str(value);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.push_str(body);
        text.into_bytes()
    }

    async fn fetch_reply(bytes: Vec<u8>) -> Result<QuotaSnapshot, QuotaError> {
        let (url, _server) = serve_bytes(bytes).await;
        client(&url, Duration::from_secs(5))
            .fetch(TOKEN, || NOW)
            .await
    }

    fn client(url: &str, timeout: Duration) -> UsageClient {
        UsageClient::new(UsageClientConfig {
            url: url.to_owned(),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            timeout,
        })
        .unwrap()
    }

    fn header_map(head: &[String]) -> HashMap<String, String> {
        head.iter()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect()
    }

    fn assert_bad_response(result: Result<QuotaSnapshot, QuotaError>, needle: &str) {
        match result {
            Err(QuotaError::BadResponse(reason)) => {
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
            }
            other => panic!("expected BadResponse, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn success_parses_the_body_and_sends_the_documented_headers() {
        let (url, server) = serve_bytes(response("200 OK", &[], BODY)).await;
        let snapshot = client(&url, Duration::from_secs(5))
            .fetch(TOKEN, || NOW)
            .await
            .unwrap();
        assert_eq!(snapshot.five_hour.unwrap().used_percent, 9.0);
        assert_eq!(snapshot.seven_day.unwrap().checked_at, NOW);
        assert_eq!(snapshot.checked_at, Some(NOW));
        assert_eq!(snapshot.scoped, Some(vec![]));
        let head = server.await.unwrap();
        assert_eq!(head[0], "GET /api/oauth/usage HTTP/1.1");
        let headers = header_map(&head);
        assert_eq!(headers["authorization"], format!("Bearer {TOKEN}"));
        assert_eq!(headers["accept"], "application/json");
        assert_eq!(headers["anthropic-beta"], "oauth-2025-04-20");
        assert_eq!(headers["user-agent"], "claude-code/2.1.257");
    }

    #[tokio::test]
    async fn success_with_a_query_string_keeps_it() {
        let (url, server) = serve_bytes(response("200 OK", &[], "{}")).await;
        let url = format!("{url}?beta=true");
        let snapshot = client(&url, Duration::from_secs(5))
            .fetch(TOKEN, || NOW)
            .await;
        assert!(snapshot.is_ok());
        assert_eq!(
            server.await.unwrap()[0],
            "GET /api/oauth/usage?beta=true HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn rate_limit_carries_status_retry_after_and_body() {
        let reply = response(
            "429 Too Many Requests",
            &[("Retry-After", "120")],
            r#"{"error":"rate_limited"}"#,
        );
        let error = fetch_reply(reply).await.unwrap_err();
        assert_eq!(
            error,
            QuotaError::Http {
                status: 429,
                retry_after_ms: Some(120_000),
                body: r#"{"error":"rate_limited"}"#.into(),
            }
        );
        assert_eq!(error.failure_class(), FailureClass::Transient);
        assert_eq!(
            error.to_string(),
            r#"Claude quota check failed: 429 — {"error":"rate_limited"}"#
        );
    }

    #[tokio::test]
    async fn unparsable_retry_after_is_dropped() {
        let reply = response(
            "503 Service Unavailable",
            &[("Retry-After", "soon")],
            "down",
        );
        let error = fetch_reply(reply).await.unwrap_err();
        assert_eq!(error.retry_after_ms(), None);
        assert_eq!(error.status(), Some(503));
    }

    #[tokio::test]
    async fn unauthorized_and_forbidden_are_auth_errors() {
        for (line, status) in [("401 Unauthorized", 401), ("403 Forbidden", 403)] {
            let reply = response(line, &[("Retry-After", "60")], "token expired");
            let error = fetch_reply(reply).await.unwrap_err();
            assert_eq!(
                error,
                QuotaError::Auth {
                    status,
                    body: "token expired".into()
                }
            );
            assert_eq!(error.failure_class(), FailureClass::Auth);
        }
    }

    #[tokio::test]
    async fn not_found_is_a_plain_http_error() {
        let error = fetch_reply(response("404 Not Found", &[], " no such endpoint \n"))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            QuotaError::Http {
                status: 404,
                retry_after_ms: None,
                body: "no such endpoint".into()
            }
        );
        assert_eq!(error.failure_class(), FailureClass::NonTransient);
    }

    #[tokio::test]
    async fn blank_error_body_becomes_the_reason_phrase() {
        let error = fetch_reply(response("500 Internal Server Error", &[], "  "))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Claude quota check failed: 500 — Internal Server Error"
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}/steal", elsewhere.local_addr().unwrap());
        let followed = tokio::spawn(async move { elsewhere.accept().await.is_ok() });
        let reply = response("302 Found", &[("Location", &target)], "moved");
        let error = fetch_reply(reply).await.unwrap_err();
        assert_eq!(error.status(), Some(302));
        assert!(matches!(error, QuotaError::Http { .. }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!followed.is_finished(), "the redirect target was contacted");
        followed.abort();
    }

    #[tokio::test]
    async fn html_on_200_is_a_bad_response() {
        let reply = response(
            "200 OK",
            &[("Content-Type", "text/html")],
            "<html>maintenance</html>",
        );
        assert_bad_response(fetch_reply(reply).await, "not JSON");
    }

    #[tokio::test]
    async fn empty_success_bodies_are_bad_responses() {
        assert_bad_response(fetch_reply(response("200 OK", &[], "")).await, "empty");
        assert_bad_response(fetch_reply(response("200 OK", &[], " \r\n")).await, "empty");
        let no_content = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec();
        assert_bad_response(fetch_reply(no_content).await, "empty");
    }

    #[tokio::test]
    async fn truncated_json_is_a_bad_response() {
        let reply = response("200 OK", &[], r#"{"five_hour":{"utilization":9"#);
        assert_bad_response(fetch_reply(reply).await, "not JSON");
    }

    #[tokio::test]
    async fn json_that_is_not_an_object_is_a_bad_response() {
        for body in ["[]", "42", "\"ok\"", "null"] {
            let reply = response("200 OK", &[], body);
            assert_bad_response(fetch_reply(reply).await, "not a JSON object");
        }
    }

    #[tokio::test]
    async fn a_connection_closed_mid_body_is_a_network_error() {
        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"five".to_vec();
        let error = fetch_reply(reply).await.unwrap_err();
        assert!(matches!(error, QuotaError::Network(_)), "{error:?}");
    }

    /// Streams `total` bytes of body, with or without a Content-Length, until the client hangs up.
    async fn serve_huge(total: usize, declare_length: bool) -> String {
        let (url, _server) = serve(move |mut stream| async move {
            let head = if declare_length {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
            };
            let _ = stream.write_all(head.as_bytes()).await;
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < total && stream.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
        })
        .await;
        url
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_without_reading_them_all() {
        for declare_length in [true, false] {
            let url = serve_huge(11 * 1024 * 1024, declare_length).await;
            let started = Instant::now();
            let result = client(&url, Duration::from_secs(10))
                .fetch(TOKEN, || NOW)
                .await;
            assert_bad_response(result, "larger than");
            assert!(started.elapsed() < Duration::from_secs(2), "took too long");
        }
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_read() {
        let mut body = String::from("{}");
        body.push_str(&" ".repeat(MAX_BODY_BYTES - 2));
        assert!(fetch_reply(response("200 OK", &[], &body)).await.is_ok());
        body.push(' ');
        assert_bad_response(
            fetch_reply(response("200 OK", &[], &body)).await,
            "larger than",
        );
    }

    async fn stall(mut stream: TcpStream, head: &'static [u8]) {
        let _ = stream.write_all(head).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    }

    async fn fetch_with_short_timeout(url: &str) -> (Result<QuotaSnapshot, QuotaError>, Duration) {
        let started = Instant::now();
        let result = client(url, Duration::from_millis(300))
            .fetch(TOKEN, || NOW)
            .await;
        (result, started.elapsed())
    }

    #[tokio::test]
    async fn a_body_that_stalls_after_the_headers_times_out() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"five_hour\":";
        let (url, _server) = serve(move |stream| stall(stream, head)).await;
        let (result, elapsed) = fetch_with_short_timeout(&url).await;
        let error = result.unwrap_err();
        assert!(matches!(error, QuotaError::Timeout(_)), "{error:?}");
        assert_eq!(error.failure_class(), FailureClass::Transient);
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let (url, _server) = serve(|stream| stall(stream, b"")).await;
        let (result, elapsed) = fetch_with_short_timeout(&url).await;
        assert!(matches!(result, Err(QuotaError::Timeout(_))), "{result:?}");
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    }

    #[tokio::test]
    async fn a_stalled_error_body_still_reports_the_status() {
        let head = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\noops";
        let (url, _server) = serve(move |stream| stall(stream, head)).await;
        let (result, _) = fetch_with_short_timeout(&url).await;
        assert_eq!(
            result.unwrap_err(),
            QuotaError::Http {
                status: 500,
                retry_after_ms: None,
                body: "oops".into()
            }
        );
    }

    #[tokio::test]
    async fn connection_refused_is_a_network_error_without_the_token() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/api/oauth/usage");
        let error = client(&url, Duration::from_secs(5))
            .fetch(TOKEN, || NOW)
            .await
            .unwrap_err();
        let QuotaError::Network(reason) = &error else {
            panic!("expected Network, got {error:?}");
        };
        assert!(reason.starts_with("cannot connect"), "{reason}");
        assert!(!error.to_string().contains(TOKEN));
        assert!(!format!("{error:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn error_body_is_cut_to_one_kib() {
        let long = "x".repeat(5000);
        let error = fetch_reply(response("400 Bad Request", &[], &long))
            .await
            .unwrap_err();
        let QuotaError::Http { body, .. } = error else {
            panic!("expected Http");
        };
        assert_eq!(body, "x".repeat(MAX_ERROR_BODY_CHARS));
    }

    #[tokio::test]
    async fn an_echoed_token_is_redacted_from_the_error_body() {
        let echo = format!("bad token {TOKEN} rejected");
        let error = fetch_reply(response("401 Unauthorized", &[], &echo))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            QuotaError::Auth {
                status: 401,
                body: "bad token [redacted] rejected".into()
            }
        );
    }

    #[tokio::test]
    async fn a_token_that_cannot_be_a_header_is_not_sent() {
        let (url, server) = serve_bytes(response("200 OK", &[], BODY)).await;
        let token = "line\nbreak-secret";
        let error = client(&url, Duration::from_secs(5))
            .fetch(token, || NOW)
            .await
            .unwrap_err();
        assert!(matches!(error, QuotaError::Network(_)), "{error:?}");
        assert!(!error.to_string().contains("secret"));
        server.abort();
    }

    #[tokio::test]
    async fn now_is_called_once_when_the_headers_arrive() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let (url, _server) = serve_bytes(response("200 OK", &[], BODY)).await;
        let snapshot = client(&url, Duration::from_secs(5))
            .fetch(TOKEN, move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                7
            })
            .await
            .unwrap();
        assert_eq!(snapshot.checked_at, Some(7));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn fetch_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let client = UsageClient::new(UsageClientConfig::default()).unwrap();
        let future = client.fetch("t", || 0);
        assert_send(&future);
    }

    #[test]
    fn new_rejects_unusable_urls_and_names_them() {
        let config = |url: &str| UsageClientConfig {
            url: url.to_owned(),
            ..UsageClientConfig::default()
        };
        for url in [
            "not a url",
            "/api/oauth/usage",
            "ftp://example.com/usage",
            "",
        ] {
            let error = UsageClient::new(config(url)).unwrap_err();
            assert_eq!(error.option(), Some("usageUrl"));
            let message = error.to_string();
            assert!(message.contains(&format!("{url:?}")), "{message}");
        }
        let client = UsageClient::new(config("http://127.0.0.1:9/usage")).unwrap();
        assert_eq!(client.url(), "http://127.0.0.1:9/usage");
        let bad_agent = UsageClientConfig {
            user_agent: "claude\ncode".into(),
            ..UsageClientConfig::default()
        };
        let error = UsageClient::new(bad_agent).unwrap_err();
        assert_eq!(error.option(), Some("userAgent"));
        assert!(error.to_string().contains("user agent"));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = UsageClientConfig::default();
        assert_eq!(config.url, "https://api.anthropic.com/api/oauth/usage");
        assert_eq!(config.user_agent, "claude-code/2.1.257");
        assert_eq!(config.timeout, Duration::from_secs(10));
    }

    #[test]
    fn truncation_lands_on_a_char_boundary() {
        let euros = "€".repeat(1000);
        let cut = truncate_on_char_boundary(&euros, MAX_ERROR_BODY_CHARS);
        assert_eq!(cut.len(), 1023);
        assert_eq!(truncate_on_char_boundary("abc", 2), "ab");
        assert_eq!(truncate_on_char_boundary("abc", 10), "abc");
        assert_eq!(truncate_on_char_boundary("é", 1), "");
    }

    #[test]
    fn error_bodies_are_trimmed_after_the_cut() {
        let mut raw = "a".repeat(1020);
        raw.push_str("    tail");
        let text = error_body_text(raw.as_bytes(), TOKEN, StatusCode::BAD_REQUEST);
        assert_eq!(text, "a".repeat(1020));
        let invalid_utf8 = error_body_text(b"\xff\xfeoops", TOKEN, StatusCode::BAD_REQUEST);
        assert_eq!(invalid_utf8, "\u{fffd}\u{fffd}oops");
        assert_eq!(error_body_text(b"", "", StatusCode::NOT_FOUND), "Not Found");
    }
}
