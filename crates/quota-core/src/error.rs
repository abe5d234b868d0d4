//! The one error type of the core. Each variant has a stable `code` (docs/api.md#error-codes) that
//! the binding copies onto its `Error`, and a backoff class (docs/backoff.md#failure-classes).

/// How a failure affects the route's backoff (docs/backoff.md#failure-classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    Transient,
    NonTransient,
    Auth,
    /// Not an endpoint failure at all: no backoff.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The route is backed off and nothing is cached.
    #[error("Quota API rate-limited — try again later")]
    BackedOff { next_retry_at: i64, retry_after_ms: i64 },
    /// A non-2xx answer other than 401/403.
    #[error("Claude quota check failed: {status} — {body}")]
    Http { status: u16, retry_after_ms: Option<i64>, body: String },
    /// 401 or 403.
    #[error("Claude quota check failed: {status} — {body}")]
    Auth { status: u16, body: String },
    #[error("Claude quota check failed: network error — {0}")]
    Network(String),
    /// A host transport's refusal (docs/endpoint.md#host-transports).
    #[error("Claude quota check failed: {0}")]
    Transport(String),
    /// The request, or a wait for another process's lock, timed out.
    #[error("Claude quota check timed out — {0}")]
    Timeout(String),
    /// The body was not JSON or was too large.
    #[error("Claude quota check failed: bad response — {0}")]
    BadResponse(String),
    #[error("QuotaManager is closed")]
    Closed,
    #[error("Quota state file {path}: {reason}")]
    State { path: String, reason: String },
    /// The Redis shared store (`target`: its URL without credentials) could not be read.
    #[error("Quota shared store {target}: {reason}")]
    SharedStore { target: String, reason: String },
    #[error("Quota state lock {path} is held elsewhere; gave up after {waited_ms} ms")]
    LockTimeout { path: String, waited_ms: u64 },
    /// A value the host passed cannot be used: a `TypeError` (docs/endpoint.md#request).
    #[error("{0}")]
    InvalidArgument(String),
    /// `refreshMain`'s expected identity generation moved on; nothing was sent.
    #[error("Main quota identity changed before refresh")]
    IdentityChanged,
    /// A host transport called back for the route it polls (docs/endpoint.md#host-transports).
    #[error("{0}")]
    Reentered(String),
}

impl QuotaError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BackedOff { .. } => "QUOTA_BACKED_OFF",
            Self::Http { .. } => "QUOTA_HTTP_ERROR",
            Self::Auth { .. } => "QUOTA_AUTH_ERROR",
            Self::Network(_) => "QUOTA_NETWORK_ERROR",
            Self::Transport(_) => "QUOTA_TRANSPORT_ERROR",
            Self::Timeout(_) | Self::LockTimeout { .. } => "QUOTA_TIMEOUT",
            Self::BadResponse(_) => "QUOTA_BAD_RESPONSE",
            Self::Closed => "QUOTA_CLOSED",
            Self::State { .. } | Self::SharedStore { .. } => "QUOTA_STATE_ERROR",
            // Node's own code for a TypeError about an argument's value.
            Self::InvalidArgument(_) => "ERR_INVALID_ARG_VALUE",
            Self::IdentityChanged => "QUOTA_IDENTITY_CHANGED",
            Self::Reentered(_) => "QUOTA_REENTRANT_CALL",
        }
    }

    pub fn failure_class(&self) -> FailureClass {
        match self {
            Self::Http { status: 429 | 500.., .. } | Self::Network(_) | Self::Timeout(_) => {
                FailureClass::Transient
            }
            Self::Http { .. } | Self::BadResponse(_) | Self::Transport(_) => {
                FailureClass::NonTransient
            }
            Self::Auth { .. } => FailureClass::Auth,
            Self::BackedOff { .. }
            | Self::Closed
            | Self::State { .. }
            | Self::SharedStore { .. }
            | Self::LockTimeout { .. }
            | Self::InvalidArgument(_)
            | Self::IdentityChanged
            | Self::Reentered(_) => FailureClass::None,
        }
    }

    /// The HTTP status, when the endpoint answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } | Self::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The file a state or lock error is about (the `path` field of docs/api.md#error-fields).
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::State { path, .. }
            | Self::SharedStore { target: path, .. }
            | Self::LockTimeout { path, .. } => Some(path),
            _ => None,
        }
    }

    /// What the server asked for with `Retry-After`, or the time left of a backoff.
    pub fn retry_after_ms(&self) -> Option<i64> {
        match self {
            Self::Http { retry_after_ms, .. } => *retry_after_ms,
            Self::BackedOff { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }
}

/// A manager option the core cannot use. Each message but `HttpClient`'s starts with the option
/// at fault, as the host spells it (`backoff.maxMs`): the binding only adds where it came from.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{option} must be a finite number from {min} to {max}, got {value}")]
    OutOfRange { option: &'static str, min: f64, max: f64, value: f64 },
    #[error("{option} must be a whole number, got {value}")]
    NotWhole { option: &'static str, value: f64 },
    #[error("backoff.maxMs ({max_ms}) must not be below backoff.initialMs ({initial_ms})")]
    BackoffMaxBelowInitial { initial_ms: i64, max_ms: i64 },
    #[error("usageUrl: {0}")]
    UsageUrl(String),
    #[error("userAgent: {0}")]
    UserAgent(String),
    /// The HTTP client could not be built (no option is at fault).
    #[error("{0}")]
    HttpClient(String),
    #[error("redis.url: {0}")]
    RedisUrl(String),
    /// The URL is shown without its credentials.
    #[error("redis.url must start with redis:// or rediss://, got {0}")]
    RedisScheme(String),
    #[error("redis.keyPrefix must be a string of at most {0} characters")]
    RedisKeyPrefix(usize),
}

impl ConfigError {
    /// A value outside its option's range (the binding's `RangeError`), not of the wrong kind.
    pub const fn is_range(&self) -> bool {
        matches!(
            self,
            Self::OutOfRange { .. } | Self::NotWhole { .. } | Self::BackoffMaxBelowInitial { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> QuotaError {
        QuotaError::Http { status, retry_after_ms: None, body: "nope".into() }
    }

    #[test]
    fn failure_classes_follow_the_backoff_table() {
        assert_eq!(http(429).failure_class(), FailureClass::Transient);
        assert_eq!(http(500).failure_class(), FailureClass::Transient);
        assert_eq!(http(503).failure_class(), FailureClass::Transient);
        assert_eq!(http(404).failure_class(), FailureClass::NonTransient);
        assert_eq!(http(302).failure_class(), FailureClass::NonTransient);
        let auth = QuotaError::Auth { status: 401, body: String::new() };
        assert_eq!(auth.failure_class(), FailureClass::Auth);
        assert_eq!(QuotaError::Timeout("t".into()).failure_class(), FailureClass::Transient);
        assert_eq!(QuotaError::BadResponse("b".into()).failure_class(), FailureClass::NonTransient);
        assert_eq!(QuotaError::Closed.failure_class(), FailureClass::None);
    }

    #[test]
    fn messages_are_the_documented_ones() {
        assert_eq!(http(429).to_string(), "Claude quota check failed: 429 — nope");
        let backed_off = QuotaError::BackedOff { next_retry_at: 1, retry_after_ms: 1 };
        assert_eq!(backed_off.to_string(), "Quota API rate-limited — try again later");
        assert_eq!(backed_off.code(), "QUOTA_BACKED_OFF");
    }

    #[test]
    fn lock_timeouts_and_bad_arguments_never_arm_a_backoff() {
        let timeout = QuotaError::LockTimeout { path: "/s.lock".into(), waited_ms: 7 };
        assert_eq!(timeout.code(), "QUOTA_TIMEOUT");
        assert_eq!(timeout.failure_class(), FailureClass::None);
        assert_eq!(timeout.path(), Some("/s.lock"));
        assert!(timeout.to_string().contains("/s.lock"));
        let bad = QuotaError::InvalidArgument("token has a line break".into());
        assert_eq!(bad.code(), "ERR_INVALID_ARG_VALUE");
        assert_eq!(bad.failure_class(), FailureClass::None);
        assert_eq!(bad.to_string(), "token has a line break");
    }
}
