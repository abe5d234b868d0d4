//! Per-route backoff of the usage endpoint (docs/backoff.md). Pure functions: time and randomness
//! are passed in, so tests need neither a clock nor a random source.

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::error::{FailureClass, QuotaError};
use super::snapshot::ApiErrorRecord;

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// The ceiling of a parsed `Retry-After` (docs/backoff.md#retry-after). A value beyond it is
/// capped, not dropped: dropping it would fall back to the 60 s ladder.
pub const RETRY_AFTER_ABSURD_MS: i64 = 30 * 24 * HOUR_MS;

/// The longest persisted window [`from_persisted`] honours: the longest window of the default
/// configuration, so damaged data cannot lock a route out for good.
pub const PERSISTED_WINDOW_CAP_MS: i64 = 6 * HOUR_MS;

/// Tunables of the backoff (docs/backoff.md#configuration), checked by [`BackoffConfig::new`];
/// the functions here still never overflow or shorten a delay on odd values.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    /// Delay of the first transient failure (ladder rung 1).
    pub initial_ms: i64,
    /// Cap of the ladder, jitter included.
    pub max_ms: i64,
    pub non_transient_ms: i64,
    /// Fraction by which jitter may lengthen a ladder delay (0 makes the ladder exact).
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

/// Per-route backoff state, persisted with the route: `attempts` counts failures in a row (the
/// ladder rung last used), `next_retry_at` ends the current (or last) window, `last_error` is
/// the record handed to the host.
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

    /// Records a failure of the usage endpoint and returns the record of the window it armed
    /// (also stored in `last_error`), or `None` when it armed nothing: an auth failure or a
    /// non-endpoint one arms nothing and leaves the state as it is
    /// (docs/backoff.md#failure-classes), and one inside an open window only refreshes the
    /// description in `last_error` (docs/backoff.md#one-escalation-per-window). `random_unit` is
    /// a uniform sample from `[0, 1)`.
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

    /// Joins what another observer of the same route knows (docs/backoff.md#shared-backoff): the
    /// later deadline, the higher count, and the newest failure restated with both. Each field is
    /// a join, so processes merging in any order converge. A reset (success) state contributes
    /// nothing: the state file orders successes and failures by when the backoff last changed.
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

/// Seeds a route's backoff from a persisted failure (docs/backoff.md#persisted-backoff): the
/// count (at least 1) and the record carry over, the deadline capped at
/// [`PERSISTED_WINDOW_CAP_MS`] from now; an expired one leaves the window closed.
pub fn from_persisted(error: &ApiErrorRecord, now_ms: i64) -> BackoffState {
    let next_retry_at =
        error.next_retry_at.map(|at| at.min(now_ms.saturating_add(PERSISTED_WINDOW_CAP_MS)));
    let attempts = error.retry_count.unwrap_or(1).max(1);
    let record = ApiErrorRecord { next_retry_at, retry_count: Some(attempts), ..error.clone() };
    BackoffState { attempts, next_retry_at, last_error: Some(record) }
}

/// The ladder delay of failure `attempt` in a row (docs/backoff.md#ladder); attempt 0 counts as
/// 1. Saturates instead of overflowing.
pub fn ladder_delay_ms(attempt: u32, config: &BackoffConfig) -> i64 {
    let doublings = attempt.saturating_sub(1);
    config
        .initial_ms
        .max(0)
        .saturating_mul(2_i64.saturating_pow(doublings))
        .min(config.max_ms.max(0))
}

/// Lengthens `delay_ms` by up to `jitter × delay_ms`, never past `max_ms` and never shortening
/// it (docs/backoff.md#jitter). Out-of-range or NaN inputs are clamped so the result always stays
/// between `delay_ms` and `max(delay_ms, max_ms)`.
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

/// Parses a `Retry-After` value into milliseconds from `now_ms` (docs/backoff.md#retry-after):
/// `None` for 0, negative, unparsable or past values, at most [`RETRY_AFTER_ABSURD_MS`].
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
