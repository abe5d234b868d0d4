//! The manager's options as the host gives them (docs/api.md#options), and the rules that turn
//! them into a [`ManagerConfig`]: every range and every default. A value a rule refuses is a
//! [`ConfigError`] naming its option; the binding only checks the JavaScript types.

use std::time::Duration;

use crate::backoff::BackoffConfig;
use crate::client::{ConnectionOptions, UsageClientConfig};
use crate::error::ConfigError;
use crate::manager::{
    ManagerConfig, DEFAULT_API_CALL_GAP_MS, DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_MAX_CONCURRENT_FETCHES,
};
use crate::redis_store::{RedisConfig, RedisStore};

const MINUTE_MS: f64 = 60_000.0;
const HOUR_MS: f64 = 60.0 * MINUTE_MS;
const WEEK_MINUTES: f64 = 7.0 * 24.0 * 60.0;

/// The options with a rule, as given (`None`: absent); numbers are JavaScript numbers.
#[derive(Clone, Debug, Default)]
pub struct ManagerOptions {
    pub usage_url: Option<String>,
    pub user_agent: Option<String>,
    pub request_timeout_ms: Option<f64>,
    pub check_interval_minutes: Option<f64>,
    pub refresh_every_n_requests: Option<f64>,
    pub api_call_gap_ms: Option<f64>,
    pub lock_timeout_ms: Option<f64>,
    pub max_concurrent_fetches: Option<f64>,
    pub backoff: BackoffOptions,
    pub redis: Option<RedisConfig>,
}

/// The `backoff` option as the host gives it (`None`: absent).
#[derive(Clone, Debug, Default)]
pub struct BackoffOptions {
    pub initial_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub non_transient_ms: Option<f64>,
    pub jitter: Option<f64>,
    pub max_retry_after_ms: Option<f64>,
}

type Checked<T> = Result<Option<T>, ConfigError>;

/// A number option: finite and within `min..=max` (`None`: absent).
fn number(option: &'static str, value: Option<f64>, min: f64, max: f64) -> Checked<f64> {
    match value {
        Some(value) if !value.is_finite() || value < min || value > max => {
            Err(ConfigError::OutOfRange { option, min, max, value })
        }
        _ => Ok(value),
    }
}

/// A count option: a whole [`number`].
fn whole(option: &'static str, value: Option<f64>, min: f64, max: f64) -> Checked<i64> {
    match number(option, value, min, max)? {
        Some(value) if value.fract() != 0.0 => Err(ConfigError::NotWhole { option, value }),
        value => Ok(value.map(|value| value as i64)),
    }
}

impl BackoffConfig {
    /// Checks the option's ranges and fills in the defaults (docs/backoff.md#configuration).
    pub fn new(options: &BackoffOptions) -> Result<Self, ConfigError> {
        let day = 24.0 * HOUR_MS;
        let defaults = Self::default();
        let initial_ms = whole("backoff.initialMs", options.initial_ms, 1.0, day)?
            .unwrap_or(defaults.initial_ms);
        let max_ms = whole("backoff.maxMs", options.max_ms, 1.0, day)?
            .unwrap_or_else(|| defaults.max_ms.max(initial_ms));
        if max_ms < initial_ms {
            return Err(ConfigError::BackoffMaxBelowInitial { initial_ms, max_ms });
        }
        let non_transient_ms = whole("backoff.nonTransientMs", options.non_transient_ms, 0.0, day)?;
        let jitter = number("backoff.jitter", options.jitter, 0.0, 1.0)?;
        let max_retry_after_ms =
            whole("backoff.maxRetryAfterMs", options.max_retry_after_ms, 0.0, 7.0 * day)?;
        Ok(Self {
            initial_ms,
            max_ms,
            non_transient_ms: non_transient_ms.unwrap_or(defaults.non_transient_ms),
            jitter: jitter.unwrap_or(defaults.jitter),
            max_retry_after_ms: max_retry_after_ms.unwrap_or(defaults.max_retry_after_ms),
        })
    }
}

impl ManagerConfig {
    /// Checks the options and fills in the defaults. The state file, the host's transport and
    /// the connection settings come from the host's environment: the binding sets them.
    pub fn new(options: ManagerOptions) -> Result<Self, ConfigError> {
        let usage = UsageClientConfig::default();
        let timeout_ms =
            number("requestTimeoutMs", options.request_timeout_ms, 1.0, 10.0 * MINUTE_MS)?;
        let interval =
            number("checkIntervalMinutes", options.check_interval_minutes, 1.0, WEEK_MINUTES)?;
        let refresh = whole("refreshEveryNRequests", options.refresh_every_n_requests, 0.0, 1e9)?;
        let gap_ms = whole("apiCallGapMs", options.api_call_gap_ms, 0.0, HOUR_MS)?;
        let lock_ms = whole("lockTimeoutMs", options.lock_timeout_ms, 0.0, HOUR_MS)?;
        let fetches = whole("maxConcurrentFetches", options.max_concurrent_fetches, 1.0, 64.0)?;
        Ok(Self {
            usage: UsageClientConfig {
                url: options.usage_url.unwrap_or(usage.url),
                user_agent: options.user_agent.unwrap_or(usage.user_agent),
                timeout: timeout_ms.map_or(usage.timeout, |ms| Duration::from_millis(ms as u64)),
            },
            check_interval_minutes: interval,
            refresh_every_n_requests: refresh,
            api_call_gap_ms: gap_ms.unwrap_or(DEFAULT_API_CALL_GAP_MS),
            lock_timeout_ms: lock_ms.unwrap_or(DEFAULT_LOCK_TIMEOUT_MS),
            max_concurrent_fetches: fetches.map_or(DEFAULT_MAX_CONCURRENT_FETCHES, |n| n as usize),
            backoff: BackoffConfig::new(&options.backoff)?,
            state_path: None,
            transport: None,
            connection: ConnectionOptions::default(),
            // Checked now, though Redis is first reached at the first refresh.
            redis: options.redis.map(|redis| RedisStore::new(&redis).map(|_| redis)).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests;
