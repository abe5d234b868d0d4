//! Per-route backoff of the usage endpoint (docs/backoff.md): pure, time and randomness given.

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::clock::{HOUR_MS, MINUTE_MS, SECOND_MS};
use super::error::{FailureClass, QuotaError};
use super::snapshot::ApiErrorRecord;

/// The ceiling of a parsed `Retry-After`: capped, not dropped (docs/backoff.md#retry-after).
pub const RETRY_AFTER_ABSURD_MS: i64 = 30 * 24 * HOUR_MS;

/// The longest persisted window [`from_persisted`] honours (docs/backoff.md#persisted-backoff).
pub const PERSISTED_WINDOW_CAP_MS: i64 = 6 * HOUR_MS;

/// Tunables of the backoff (docs/backoff.md#configuration), checked by [`BackoffConfig::new`];
/// the functions here still never overflow or shorten a delay on odd values.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    pub initial_ms: i64,
    pub max_ms: i64,
    pub non_transient_ms: i64,
    pub jitter: f64,
    pub max_retry_after_ms: i64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial_ms: MINUTE_MS,
            max_ms: 15 * MINUTE_MS,
            non_transient_ms: 5 * MINUTE_MS,
            jitter: 0.1,
            max_retry_after_ms: 6 * HOUR_MS,
        }
    }
}

/// Per-route backoff, persisted with the route: `attempts` failures in a row (the rung last used),
/// `next_retry_at` the end of the current (or last) window, `last_error` the host's record.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BackoffState {
    pub attempts: u32,
    pub next_retry_at: Option<i64>,
    pub last_error: Option<ApiErrorRecord>,
}

impl BackoffState {
    /// True while the route must not call the endpoint.
    pub fn is_open(&self, now_ms: i64) -> bool {
        self.next_retry_at.is_some_and(|at| now_ms < at)
    }

    /// Time left in the window; 0 when it is closed.
    pub fn remaining_ms(&self, now_ms: i64) -> i64 {
        self.next_retry_at.map_or(0, |at| at.saturating_sub(now_ms).max(0))
    }

    /// Records a failure of the usage endpoint (docs/backoff.md#failure-classes,
    /// docs/backoff.md#one-escalation-per-window): the record of the window it armed, else `None`.
    /// `random_unit` is a uniform sample from `[0, 1)`.
    pub fn record_failure(
        &mut self,
        error: &QuotaError,
        now_ms: i64,
        config: &BackoffConfig,
        random_unit: f64,
        account_identity: Option<&str>,
    ) -> Option<ApiErrorRecord> {
        let class = error.failure_class();
        if matches!(class, FailureClass::Auth | FailureClass::None) {
            return None;
        }
        let record = ApiErrorRecord {
            message: error.to_string(),
            checked_at: now_ms,
            status: error.status(),
            retry_after_ms: error.retry_after_ms().filter(|ms| *ms > 0),
            account_identity: account_identity.map(str::to_owned),
            ..ApiErrorRecord::default()
        };

        if self.is_open(now_ms) {
            let kept =
                self.last_error.take().unwrap_or_else(|| self.restated(ApiErrorRecord::default()));
            self.last_error = Some(ApiErrorRecord {
                next_retry_at: kept.next_retry_at,
                retry_count: kept.retry_count,
                account_identity: record.account_identity.or(kept.account_identity),
                ..record
            });
            return None;
        }

        self.attempts = self.attempts.saturating_add(1);
        let rung_ms = if class == FailureClass::Transient {
            jittered_ms(ladder_delay_ms(self.attempts, config), config, random_unit)
        } else {
            config.non_transient_ms.max(0)
        };
        let delay_ms = record
            .retry_after_ms
            .map_or(rung_ms, |asked| rung_ms.max(asked.min(config.max_retry_after_ms)));
        self.next_retry_at = Some(now_ms.saturating_add(delay_ms));
        self.last_error = Some(self.restated(record));
        self.last_error.clone()
    }

    /// `record` with the state's deadline and count, as the host reads them.
    fn restated(&self, record: ApiErrorRecord) -> ApiErrorRecord {
        let retry_count = (self.attempts > 0).then_some(self.attempts);
        ApiErrorRecord { next_retry_at: self.next_retry_at, retry_count, ..record }
    }

    /// A successful poll: the count starts again from zero and the window closes.
    pub fn record_success(&mut self) {
        *self = Self::default();
    }

    /// Joins a copy of the same moment (docs/backoff.md#shared-backoff): each field is a join, so
    /// any merge order converges; of copies of different moments, the state file keeps the newer.
    pub fn merge_from(&mut self, other: &Self) {
        self.attempts = self.attempts.max(other.attempts);
        self.next_retry_at = self.next_retry_at.max(other.next_retry_at);
        // The newest by a total order that ignores the restated fields, then restated from the
        // merged fields alone: records that tie differ only in those, so merge order is moot.
        let newest = self.last_error.iter().chain(&other.last_error).max_by_key(|&r| {
            (r.checked_at, r.status, r.retry_after_ms, &r.message, &r.account_identity)
        });
        self.last_error = newest.cloned().map(|record| self.restated(record));
    }
}

/// Seeds a route's backoff from a persisted failure (docs/backoff.md#persisted-backoff).
pub fn from_persisted(error: &ApiErrorRecord, now_ms: i64) -> BackoffState {
    let next_retry_at =
        error.next_retry_at.map(|at| at.min(now_ms.saturating_add(PERSISTED_WINDOW_CAP_MS)));
    let attempts = error.retry_count.unwrap_or(1).max(1);
    let record = ApiErrorRecord { next_retry_at, retry_count: Some(attempts), ..error.clone() };
    BackoffState { attempts, next_retry_at, last_error: Some(record) }
}

/// The ladder delay of failure `attempt` in a row (docs/backoff.md#ladder), 0 counting as 1.
pub fn ladder_delay_ms(attempt: u32, config: &BackoffConfig) -> i64 {
    let (initial, max) = (config.initial_ms.max(0), config.max_ms.max(0));
    initial.saturating_mul(2_i64.saturating_pow(attempt.saturating_sub(1))).min(max)
}

/// Lengthens `delay_ms` by jitter (docs/backoff.md#jitter). Odd or NaN inputs are clamped: the
/// result stays between `delay_ms` and `max(delay_ms, max_ms)`.
pub fn jittered_ms(delay_ms: i64, config: &BackoffConfig, random_unit: f64) -> i64 {
    if delay_ms >= config.max_ms || delay_ms <= 0 {
        return delay_ms;
    }
    let unit = if random_unit.is_finite() { random_unit.clamp(0.0, 1.0) } else { 0.0 };
    let jitter = if config.jitter.is_finite() { config.jitter.max(0.0) } else { 0.0 };
    // `as` saturates on overflow, and floor keeps a unit below 1 from rounding past the bound.
    let extra = (delay_ms as f64 * jitter * unit).floor() as i64;
    delay_ms.saturating_add(extra.max(0)).min(config.max_ms)
}

/// A `Retry-After` value in milliseconds from `now_ms` (docs/backoff.md#retry-after).
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    let delta_ms = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only, so a parse failure can only be an overflow: a very long wait.
        value.parse::<i64>().map_or(i64::MAX, |seconds| seconds.saturating_mul(SECOND_MS))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        let at_ms = i64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?;
        at_ms.saturating_sub(now_ms)
    };
    (delta_ms > 0).then(|| delta_ms.min(RETRY_AFTER_ABSURD_MS))
}

#[cfg(test)]
mod tests;
