//! The HTTP client for Anthropic's usage endpoint (docs/endpoint.md): one GET, a bounded body, and
//! every failure a [`QuotaError`] whose class drives the backoff (docs/backoff.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::{redirect, Certificate, Proxy, Response, StatusCode, Url};
use serde_json::Value;
use url::Host;

use crate::error::{ConfigError, QuotaError};
use crate::snapshot::QuotaSnapshot;
use crate::usage::{check_usage_body, parse_json_lenient, parse_usage_body};

mod redact;
use redact::error_body_text;
pub use redact::{redact_strings, scrub_message};

pub const DEFAULT_USAGE_URL: &str = "https://api.anthropic.com/api/oauth/usage";
/// The endpoint only answers OAuth clients that look like Claude Code.
pub const DEFAULT_USER_AGENT: &str = "claude-code/2.1.257";
/// Largest success body accepted; a real one is a few KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest error body kept in a message, in bytes of UTF-8, cut on a char boundary.
pub const MAX_ERROR_BODY_CHARS: usize = 1024;

/// The OAuth usage endpoint refuses requests without this beta flag.
const ANTHROPIC_BETA: &str = "oauth-2025-04-20";
/// Past the message limit, so trimming and redaction see whole words (docs/endpoint.md#limits).
const ERROR_BODY_READ_BYTES: usize = 4 * MAX_ERROR_BODY_CHARS;

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

/// Transport settings read from the host's `process.env` (docs/endpoint.md#transport-security).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionOptions {
    /// PEM files of extra trusted roots (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`).
    pub extra_ca_files: Vec<PathBuf>,
    /// Which proxy non-loopback requests use. Loopback requests never use one.
    pub proxy: ProxySetting,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxySetting {
    /// reqwest's own reading of `HTTP(S)_PROXY`/`NO_PROXY` from the C environment.
    #[default]
    System,
    /// Straight to the endpoint.
    Disabled,
    /// Through this proxy URL, except for hosts matched by `no_proxy` (`NO_PROXY` syntax).
    Url { url: String, no_proxy: Option<String> },
}

/// A client for the usage endpoint. Cloning is cheap; clients with equal settings share one pool.
#[derive(Clone, Debug)]
pub struct UsageClient {
    http: Arc<SharedHttp>,
    url: Url,
}

impl UsageClient {
    /// Fails, naming it, on a URL docs/endpoint.md#request refuses, a bad user agent or proxy URL.
    pub fn with_options(
        config: UsageClientConfig,
        options: &ConnectionOptions,
    ) -> Result<Self, ConfigError> {
        let url = parse_url(&config.url).map_err(ConfigError::UsageUrl)?;
        let user_agent = HeaderValue::from_str(&config.user_agent).map_err(|_| {
            ConfigError::UserAgent(format!("invalid user agent {:?}", config.user_agent))
        })?;
        let mut connection = options.clone();
        // A local endpoint (tests, the demo) must never be sent to a proxy.
        if is_loopback(&url) {
            connection.proxy = ProxySetting::Disabled;
        }
        proxy_of(&connection.proxy).map_err(ConfigError::HttpClient)?;
        let settings = HttpSettings { user_agent, timeout: config.timeout, connection };
        Ok(Self { http: SharedHttp::for_settings(settings), url })
    }

    /// One message per extra CA file that cannot be opened, for the host to report once.
    pub fn trust_warnings(&self) -> &[String] {
        &self.http.trust_warnings
    }

    /// `now` is called once the response headers arrive (checkedAt, an HTTP-date `Retry-After`).
    pub async fn fetch(
        &self,
        access_token: &str,
        now: impl Fn() -> i64 + Send,
    ) -> Result<QuotaSnapshot, QuotaError> {
        let response = self
            .http
            .client()?
            .get(self.url.clone())
            .header(AUTHORIZATION, bearer(access_token)?)
            .header(ACCEPT, "application/json")
            .header("anthropic-beta", ANTHROPIC_BETA)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let checked_at = now();
        let status = response.status();
        let retry_after =
            response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = if status.is_success() {
            // Refused by its announced length, else once past the limit (docs/endpoint.md#limits).
            if response.content_length().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
                return Err(body_too_large());
            }
            read_up_to(response, MAX_BODY_BYTES + 1)
                .await
                .map_err(|(_, e)| self.transport_error(&e))?
        } else {
            // A read failure keeps what arrived: the status is what matters.
            read_up_to(response, ERROR_BODY_READ_BYTES).await.unwrap_or_else(|(start, _)| start)
        };
        interpret_response(status.as_u16(), retry_after.as_deref(), &body, access_token, checked_at)
    }

    fn transport_error(&self, error: &reqwest::Error) -> QuotaError {
        if error.is_timeout() {
            return timed_out(self.http.settings.timeout);
        }
        let cause = root_cause(error);
        let cause = if error.is_connect() { format!("cannot connect: {cause}") } else { cause };
        QuotaError::Network(cause)
    }
}

/// A request (or a host's poll) that gave no complete answer within `timeout`.
pub fn timed_out(timeout: Duration) -> QuotaError {
    QuotaError::Timeout(format!("no complete answer within {} ms", timeout.as_millis()))
}

/// What an HTTP client is built from: the clients of a process with equal settings share one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HttpSettings {
    user_agent: HeaderValue,
    timeout: Duration,
    /// With [`ProxySetting::Disabled`] for a loopback endpoint.
    connection: ConnectionOptions,
}

/// One HTTP client per [`HttpSettings`], built lazily (docs/endpoint.md#transport-security).
#[derive(Debug)]
struct SharedHttp {
    settings: HttpSettings,
    /// The extra CA files that open; they are read when the client is built.
    ca_files: Vec<PathBuf>,
    trust_warnings: Vec<String>,
    client: OnceLock<Result<reqwest::Client, String>>,
}

impl SharedHttp {
    fn for_settings(settings: HttpSettings) -> Arc<Self> {
        static SHARED: LazyLock<Mutex<HashMap<HttpSettings, Arc<SharedHttp>>>> =
            LazyLock::new(Mutex::default);
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = shared.entry(settings).or_insert_with_key(|settings| {
            let mut ca_files = Vec::new();
            let mut trust_warnings = Vec::new();
            for file in &settings.connection.extra_ca_files {
                match std::fs::File::open(file) {
                    Ok(_) => ca_files.push(file.clone()),
                    Err(e) => trust_warnings.push(unusable_ca_file(file, &e.to_string())),
                }
            }
            let client = OnceLock::new();
            Arc::new(Self { settings: settings.clone(), ca_files, trust_warnings, client })
        });
        Arc::clone(entry)
    }

    /// The client, built on first use, without an unusable system store
    /// (docs/endpoint.md#transport-security); trust warnings are printed then.
    fn client(&self) -> Result<&reqwest::Client, QuotaError> {
        let built = self.client.get_or_init(|| {
            let (roots, mut warnings) = load_extra_roots(&self.ca_files);
            let client = self.build(true, &roots).or_else(|error| {
                let client = self.build(false, &roots)?;
                warnings.push(format!("system trust store not used: {error}"));
                Ok::<_, String>(client)
            });
            for warning in warnings {
                log::warn!("{warning}");
            }
            client
        });
        built.as_ref().map_err(|e| QuotaError::Network(e.clone()))
    }

    fn build(&self, system_roots: bool, roots: &[Certificate]) -> Result<reqwest::Client, String> {
        let settings = &self.settings;
        let mut builder = reqwest::Client::builder()
            .user_agent(settings.user_agent.clone())
            // A redirect could carry the bearer token to another host; report it instead.
            .redirect(redirect::Policy::none())
            .timeout(settings.timeout)
            .tls_built_in_native_certs(system_roots);
        builder = roots.iter().cloned().fold(builder, reqwest::ClientBuilder::add_root_certificate);
        let proxy = &settings.connection.proxy;
        if *proxy != ProxySetting::System {
            builder = builder.no_proxy();
        }
        if let Some(proxy) = proxy_of(proxy)? {
            builder = builder.proxy(proxy);
        }
        builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
    }
}

/// The proxy of [`ProxySetting::Url`] (`None` for the others); `Err` names an invalid URL.
fn proxy_of(setting: &ProxySetting) -> Result<Option<Proxy>, String> {
    let ProxySetting::Url { url, no_proxy } = setting else {
        return Ok(None);
    };
    let proxy = Proxy::all(url.as_str()).map_err(|e| format!("invalid proxy URL {url:?}: {e}"))?;
    Ok(Some(proxy.no_proxy(no_proxy.as_deref().and_then(reqwest::NoProxy::from_string))))
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("invalid usage URL {text:?}: {e}"))?;
    // Credentials in the URL would become a second `Authorization` header.
    let credentials = !url.username().is_empty() || url.password().is_some();
    let reason = match url.scheme() {
        "http" if !is_loopback(&url) => {
            "plain http is only allowed to loopback (the bearer token would travel in clear)".into()
        }
        "http" | "https" if credentials => "it must not contain user credentials".into(),
        "http" | "https" => return Ok(url),
        other => format!("scheme {other:?} is not http or https"),
    };
    Err(format!("invalid usage URL {text:?}: {reason}"))
}

/// 127.0.0.0/8, `::1` (also as an IPv4-mapped address) and `localhost`.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).to_canonical().is_loopback(),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// Reads the PEM bundles; a file that cannot be used is skipped with a warning naming it.
fn load_extra_roots(files: &[PathBuf]) -> (Vec<Certificate>, Vec<String>) {
    let mut roots = Vec::new();
    let mut warnings = Vec::new();
    for file in files {
        let loaded = std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|pem| Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string()));
        match loaded {
            Ok(certs) if !certs.is_empty() => roots.extend(certs),
            Ok(_) => warnings.push(format!(
                "extra CA file {} holds no PEM certificate; skipped",
                file.display()
            )),
            Err(reason) => warnings.push(unusable_ca_file(file, &reason)),
        }
    }
    (roots, warnings)
}

fn unusable_ca_file(file: &std::path::Path, reason: &str) -> String {
    format!("extra CA file {} cannot be used ({reason}); skipped", file.display())
}

/// The `Authorization` value, marked sensitive: `Debug` never prints it (docs/endpoint.md#request).
fn bearer(access_token: &str) -> Result<HeaderValue, QuotaError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {access_token}")).map_err(|_| {
        QuotaError::InvalidArgument(
            "access token contains characters not allowed in an HTTP header (e.g. a line break); not sent"
                .into(),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The innermost error message: reqwest's own text repeats the URL and says little about why.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let innermost = std::iter::successors(Some(error), |e| e.source()).last();
    innermost.map(ToString::to_string).unwrap_or_default()
}

fn body_too_large() -> QuotaError {
    QuotaError::BadResponse(format!("body larger than {MAX_BODY_BYTES} bytes"))
}

/// The body until it ends or holds at least `limit` bytes (with what arrived, on a read failure);
/// [`interpret_response`] cuts it, so the result never depends on how the network chunked it.
async fn read_up_to(
    mut response: Response,
    limit: usize,
) -> Result<Vec<u8>, (Vec<u8>, reqwest::Error)> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => return Err((body, error)),
        }
    }
    Ok(body)
}

/// Reads an answer, the HTTP client's or a host `fetchImpl`'s (docs/endpoint.md#errors, #limits).
pub fn interpret_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    access_token: &str,
    checked_at: i64,
) -> Result<QuotaSnapshot, QuotaError> {
    if (200..300).contains(&status) {
        if body.len() > MAX_BODY_BYTES {
            return Err(body_too_large());
        }
        return parse_success_body(body, access_token, checked_at);
    }
    let reason = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let start = &body[..body.len().min(ERROR_BODY_READ_BYTES)];
    let body = error_body_text(start, access_token, reason);
    let retry_after_ms = retry_after.and_then(|v| crate::backoff::parse_retry_after(v, checked_at));
    Err(status_error(status, retry_after_ms, body))
}

/// The failure a non-2xx status stands for (docs/backoff.md#failure-classes).
pub fn status_error(status: u16, retry_after_ms: Option<i64>, body: String) -> QuotaError {
    match status {
        401 | 403 => QuotaError::Auth { status, body },
        _ => QuotaError::Http { status, retry_after_ms, body },
    }
}

/// The headers a poll sends through a host `fetchImpl` (docs/endpoint.md#request).
pub fn poll_headers(access_token: &str, user_agent: &str) -> Vec<(String, String)> {
    vec![
        ("Authorization".into(), format!("Bearer {access_token}")),
        ("Accept".into(), "application/json".into()),
        ("Content-Type".into(), "application/json".into()),
        ("anthropic-beta".into(), ANTHROPIC_BETA.into()),
        ("User-Agent".into(), user_agent.into()),
    ]
}

fn parse_success_body(
    body: &[u8],
    access_token: &str,
    checked_at: i64,
) -> Result<QuotaSnapshot, QuotaError> {
    if body.trim_ascii().is_empty() {
        return Err(QuotaError::BadResponse("empty body".into()));
    }
    let mut value: Value = parse_json_lenient(body)
        .map_err(|e| QuotaError::BadResponse(format!("body is not JSON ({e})")))?;
    check_usage_body(&value).map_err(QuotaError::BadResponse)?;
    // Strings of the body reach the snapshot (docs/endpoint.md#token-scrubbing).
    redact_strings(&mut value, access_token);
    Ok(parse_usage_body(&value, checked_at))
}

#[cfg(test)]
mod tests;
