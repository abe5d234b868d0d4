//! Per-route backoff of the usage endpoint (docs/backoff.md): the exponential ladder for transient
//! failures, the flat delay for the other failures, `Retry-After`, and the rule that one open
//! window is escalated only once however many processes fail inside it.
//!
//! Everything here is a pure function of its inputs (time and randomness are passed in), so the
//! manager decides when to call it and tests need neither a clock nor a random source.

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::config::{number, whole};
use super::error::{ConfigError, FailureClass, QuotaError};
use super::snapshot::ApiErrorRecord;

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// The ceiling of a parsed `Retry-After`: a value further away (a year, an overflowing number,
/// a date in 9999) is read as this much. It still asks for a long wait, so it is capped at
/// `maxRetryAfterMs` by [`BackoffState::record_failure`] rather than dropped: dropping it would
/// fall back to the 60 s ladder and poll an endpoint that asked for the opposite.
pub const RETRY_AFTER_ABSURD_MS: i64 = 30 * 24 * HOUR_MS;

/// The longest persisted window [`from_persisted`] honours. Persisted data outlives the process
/// that wrote it and may be damaged; a far-future deadline must not lock a route out for good.
/// Six hours is the longest window this crate arms with the default configuration.
pub const PERSISTED_WINDOW_CAP_MS: i64 = 6 * HOUR_MS;

/// Tunables of the backoff (the `backoff` option in docs/api.md#options), checked by
/// [`BackoffConfig::new`]; the functions here still never overflow or shorten a delay on odd
/// values.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    /// Delay of the first transient failure (ladder rung 1).
    pub initial_ms: i64,
    /// Cap of the ladder, jitter included.
    pub max_ms: i64,
    /// Flat delay of a non-transient failure.
    pub non_transient_ms: i64,
    /// Fraction by which jitter may lengthen a ladder delay (0 makes the ladder exact).
    pub jitter: f64,
    /// Cap on how long a server's `Retry-After` may hold a route.
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

/// The `backoff` option as the host gives it (`None`: absent).
#[derive(Clone, Debug, Default)]
pub struct BackoffOptions {
    pub initial_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub non_transient_ms: Option<f64>,
    pub jitter: Option<f64>,
    pub max_retry_after_ms: Option<f64>,
}

impl BackoffConfig {
    /// Checks the option's ranges and fills in the defaults; an absent `maxMs` is raised to a
    /// larger `initialMs`, a given one must not be below it.
    pub fn new(options: &BackoffOptions) -> Result<Self, ConfigError> {
        let day = (24 * HOUR_MS) as f64;
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

/// Per-route backoff state; serde-serialisable (camelCase) because it is persisted.
///
/// `attempts` counts failures in a row (the ladder rung last used); `next_retry_at` is the end of
/// the current (or last) window; `last_error` is the record handed to the host.
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
    /// (also stored in `last_error`), or `None` when it armed nothing.
    ///
    /// - `Auth` and `None` classes arm nothing and leave the state untouched: an auth failure
    ///   says nothing about rate limiting, so it neither backs off nor resets the count (the
    ///   route is still failing); the host hears of it through the rejected call, not through
    ///   the backoff callback.
    /// - While a window is open (`now < next_retry_at`), the failure does not escalate: the
    ///   attempt count and deadline stay, only the description of the latest failure in
    ///   `last_error` (message, status, `retryAfterMs`, `checkedAt`) is refreshed. Several
    ///   processes failing together thus cost one rung, not one each. A longer `Retry-After`
    ///   seen inside the window does not extend it either; the next failure after the window
    ///   will honour it.
    /// - Otherwise the attempt count goes up by one (the count survives an expired window) and
    ///   the window is `max(rung delay, min(Retry-After, max_retry_after_ms))`, where the rung
    ///   delay is the jittered ladder for transient failures and the flat `non_transient_ms`,
    ///   unjittered, for the others (docs/backoff.md#failure-classes calls it flat; cross-process sharing of the window
    ///   already stops processes from retrying in lockstep).
    ///
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
            let kept = self.last_error.take().unwrap_or_else(|| ApiErrorRecord {
                next_retry_at: self.next_retry_at,
                retry_count: (self.attempts > 0).then_some(self.attempts),
                ..ApiErrorRecord::default()
            });
            self.last_error = Some(ApiErrorRecord {
                next_retry_at: kept.next_retry_at,
                retry_count: kept.retry_count,
                account_identity: record.account_identity.or(kept.account_identity),
                ..record
            });
            return None;
        }

        let attempt = self.attempts.saturating_add(1);
        let rung_ms = if class == FailureClass::Transient {
            jittered_ms(ladder_delay_ms(attempt, config), config, random_unit)
        } else {
            config.non_transient_ms.max(0)
        };
        let delay_ms = record
            .retry_after_ms
            .map_or(rung_ms, |asked| rung_ms.max(asked.min(config.max_retry_after_ms)));
        let next_retry_at = now_ms.saturating_add(delay_ms);
        let record = ApiErrorRecord {
            next_retry_at: Some(next_retry_at),
            retry_count: Some(attempt),
            ..record
        };
        self.attempts = attempt;
        self.next_retry_at = Some(next_retry_at);
        self.last_error = Some(record.clone());
        Some(record)
    }

    /// A successful poll: the count starts again from zero and the window closes.
    pub fn record_success(&mut self) {
        *self = Self::default();
    }

    /// Adopts what another observer of the same route knows: the later deadline and the higher
    /// attempt count win (more restrictive), and `last_error` becomes the most recently observed
    /// failure, restated with the merged deadline and count so the host sees one coherent
    /// record.
    ///
    /// Each field is a join (max, or the newest record under a total order that ignores the
    /// restated fields), so merging is idempotent, commutative and associative: processes that
    /// merge each other's state in any order converge. A reset (success) state contributes
    /// nothing: the state file orders successes and failures by when the backoff last changed.
    pub fn merge_from(&mut self, other: &Self) {
        self.attempts = self.attempts.max(other.attempts);
        self.next_retry_at = self.next_retry_at.max(other.next_retry_at);
        // The newest by observation time, ignoring the fields restated below, so the winner
        // does not depend on merge order (records that tie differ only in those fields).
        let newest = self.last_error.iter().chain(&other.last_error).max_by_key(|&r| {
            (r.checked_at, r.status, r.retry_after_ms, &r.message, &r.account_identity)
        });
        // Restating from the merged fields alone (never from the record's own values) is what
        // keeps the result independent of merge order when two records tie.
        self.last_error = newest.cloned().map(|mut record| {
            record.next_retry_at = self.next_retry_at;
            record.retry_count = (self.attempts > 0).then_some(self.attempts);
            record
        });
    }
}

/// Seeds a route's backoff from a persisted failure (the host's `mainLastQuotaApiError`, a
/// fallback's `lastQuotaRefreshError`, or the state file).
///
/// The attempt count is restored in every case (`retryCount`, at least 1 since a record means a
/// failure), so the next failure escalates from where the last process left off. The record is
/// kept as `last_error` so the host can still read it and a newer success can supersede it.
/// An active window (`nextRetryAt > now`) is honoured, capped at [`PERSISTED_WINDOW_CAP_MS`]
/// from now; an expired or missing deadline is kept as it is, which leaves the window closed, so
/// only the count carries over.
pub fn from_persisted(error: &ApiErrorRecord, now_ms: i64) -> BackoffState {
    let next_retry_at =
        error.next_retry_at.map(|at| at.min(now_ms.saturating_add(PERSISTED_WINDOW_CAP_MS)));
    let attempts = error.retry_count.unwrap_or(1).max(1);
    let record = ApiErrorRecord { next_retry_at, retry_count: Some(attempts), ..error.clone() };
    BackoffState { attempts, next_retry_at, last_error: Some(record) }
}

/// The ladder delay of failure `attempt` in a row: `initial × 2^(attempt-1)`, capped at `max_ms`.
/// Attempt 0 is treated as 1. Saturates instead of overflowing for any attempt.
pub fn ladder_delay_ms(attempt: u32, config: &BackoffConfig) -> i64 {
    let doublings = attempt.saturating_sub(1);
    config
        .initial_ms
        .max(0)
        .saturating_mul(2_i64.saturating_pow(doublings))
        .min(config.max_ms.max(0))
}

/// Lengthens `delay_ms` by up to `jitter × delay_ms` (scaled by `random_unit` in `[0, 1)`),
/// never past `max_ms`. A delay already at or beyond `max_ms` (a `Retry-After`) is returned as
/// is: jitter never shortens. Out-of-range or NaN inputs are clamped so the result always stays
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

/// Parses a `Retry-After` value into milliseconds from `now_ms`: delta seconds (digits only),
/// or an HTTP date in IMF-fixdate, RFC 850 or asctime form. `None` for 0, negative, unparsable
/// or past values: the endpoint sends a meaningless `0` while still refusing, so such values
/// must not shorten the ladder. Values beyond [`RETRY_AFTER_ABSURD_MS`] (including numbers too
/// large for an `i64`) read as that ceiling.
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
