//! The manager's options as the host gives them (docs/api.md#options), and the rules that turn
//! them into a [`ManagerConfig`]: every range and every default. A value a rule refuses is a
//! [`ConfigError`] naming its option; the binding only checks the JavaScript types.

use std::time::Duration;

use crate::backoff::{BackoffConfig, BackoffOptions};
use crate::client::{ConnectionOptions, UsageClientConfig};
use crate::error::ConfigError;
use crate::manager::{
    ManagerConfig, DEFAULT_API_CALL_GAP_MS, DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_MAX_CONCURRENT_FETCHES,
};
use crate::redis_store::{RedisConfig, RedisStore};

pub(crate) const MINUTE_MS: f64 = 60_000.0;
pub(crate) const HOUR_MS: f64 = 60.0 * MINUTE_MS;

/// Longest `redis.keyPrefix`: a prefix is a namespace, not data.
pub const MAX_KEY_PREFIX_CHARS: usize = 256;

/// The options with a rule, as given (`None`: absent). Numbers are JavaScript numbers: whether
/// one must be whole is a rule too.
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

/// The values a numeric option accepts.
pub(crate) struct Range {
    pub option: &'static str,
    pub min: f64,
    pub max: f64,
}

impl Range {
    /// A finite number within the range.
    pub fn number(&self, value: Option<f64>) -> Result<Option<f64>, ConfigError> {
        let Some(value) = value else {
            return Ok(None);
        };
        if !value.is_finite() || value < self.min || value > self.max {
            let Self { option, min, max } = *self;
            return Err(ConfigError::OutOfRange { option, min, max, value });
        }
        Ok(Some(value))
    }

    /// A whole number within the range.
    pub fn whole(&self, value: Option<f64>) -> Result<Option<i64>, ConfigError> {
        let Some(value) = self.number(value)? else {
            return Ok(None);
        };
        if value.fract() != 0.0 {
            return Err(ConfigError::NotWhole { option: self.option, value });
        }
        Ok(Some(value as i64))
    }
}

pub(crate) const fn range(option: &'static str, min: f64, max: f64) -> Range {
    Range { option, min, max }
}

impl ManagerConfig {
    /// Checks the options and fills in the defaults. The state file, the host's transport and
    /// the connection settings come from the host's environment: the binding sets them.
    pub fn new(options: ManagerOptions) -> Result<Self, ConfigError> {
        let usage = UsageClientConfig::default();
        let timeout = range("requestTimeoutMs", 1.0, 10.0 * MINUTE_MS)
            .number(options.request_timeout_ms)?
            .map_or(usage.timeout, |ms| Duration::from_millis(ms as u64));
        Ok(Self {
            usage: UsageClientConfig {
                url: options.usage_url.unwrap_or(usage.url),
                user_agent: options.user_agent.unwrap_or(usage.user_agent),
                timeout,
            },
            check_interval_minutes: range("checkIntervalMinutes", 1.0, 7.0 * 24.0 * 60.0)
                .number(options.check_interval_minutes)?,
            refresh_every_n_requests: range("refreshEveryNRequests", 0.0, 1e9)
                .whole(options.refresh_every_n_requests)?,
            api_call_gap_ms: range("apiCallGapMs", 0.0, HOUR_MS)
                .whole(options.api_call_gap_ms)?
                .unwrap_or(DEFAULT_API_CALL_GAP_MS),
            lock_timeout_ms: range("lockTimeoutMs", 0.0, HOUR_MS)
                .whole(options.lock_timeout_ms)?
                .unwrap_or(DEFAULT_LOCK_TIMEOUT_MS),
            max_concurrent_fetches: range("maxConcurrentFetches", 1.0, 64.0)
                .whole(options.max_concurrent_fetches)?
                .map_or(DEFAULT_MAX_CONCURRENT_FETCHES, |n| n as usize),
            backoff: BackoffConfig::new(&options.backoff)?,
            state_path: None,
            transport: None,
            connection: ConnectionOptions::default(),
            redis: options.redis.map(check_redis).transpose()?,
        })
    }
}

/// Checks a Redis shared store's URL and key prefix (Redis is first reached at the first
/// refresh).
pub fn check_redis(config: RedisConfig) -> Result<RedisConfig, ConfigError> {
    if config.key_prefix.chars().count() > MAX_KEY_PREFIX_CHARS {
        return Err(ConfigError::RedisKeyPrefix(MAX_KEY_PREFIX_CHARS));
    }
    let store = RedisStore::new(&config).map_err(|e| ConfigError::RedisUrl(e.to_string()))?;
    if !(config.url.starts_with("redis://") || config.url.starts_with("rediss://")) {
        return Err(ConfigError::RedisScheme(store.target().to_owned()));
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
