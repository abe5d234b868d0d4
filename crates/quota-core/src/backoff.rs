//! Per-route backoff of the usage endpoint (docs/backoff.md): the exponential ladder for transient
//! failures, the flat delay for the other failures, `Retry-After`, and the rule that one open
//! window is escalated only once however many processes fail inside it.
//!
//! Everything here is a pure function of its inputs (time and randomness are passed in), so the
//! manager decides when to call it and tests need neither a clock nor a random source.

use std::cmp::Ordering;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::error::{FailureClass, QuotaError};
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

/// Tunables of the backoff (the `backoff` option in docs/api.md#options). Validation of user input is the caller's
/// job; the functions here only guarantee not to overflow or shorten a delay on odd values.
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

/// Per-route backoff state; serde-serialisable (camelCase) because it is persisted.
///
/// `attempts` counts failures in a row (the ladder rung last used); `next_retry_at` is the end of
/// the current (or last) window; `last_error` is the record handed to the host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BackoffState {
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ApiErrorRecord>,
}

impl BackoffState {
    /// True while the route must not call the endpoint.
    pub fn is_open(&self, now_ms: i64) -> bool {
        self.next_retry_at.is_some_and(|at| now_ms < at)
    }

    /// Time left in the window; 0 when it is closed.
    pub fn remaining_ms(&self, now_ms: i64) -> i64 {
        match self.next_retry_at {
            Some(at) if now_ms < at => at.saturating_sub(now_ms),
            _ => 0,
        }
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
        let asked_ms = error.retry_after_ms().filter(|ms| *ms > 0);

        if self.is_open(now_ms) {
            let record = self.last_error.get_or_insert_with(|| ApiErrorRecord {
                message: String::new(),
                checked_at: now_ms,
                next_retry_at: self.next_retry_at,
                retry_count: (self.attempts > 0).then_some(self.attempts),
                status: None,
                retry_after_ms: None,
                account_identity: None,
            });
            record.message = error.to_string();
            record.checked_at = now_ms;
            record.status = error.status();
            record.retry_after_ms = asked_ms;
            if let Some(identity) = account_identity {
                record.account_identity = Some(identity.to_owned());
            }
            return None;
        }

        let attempt = self.attempts.saturating_add(1);
        let rung_ms = if class == FailureClass::Transient {
            jittered_ms(ladder_delay_ms(attempt, config), config, random_unit)
        } else {
            config.non_transient_ms.max(0)
        };
        let delay_ms = match asked_ms {
            Some(asked) => rung_ms.max(asked.min(config.max_retry_after_ms)),
            None => rung_ms,
        };
        let next_retry_at = now_ms.saturating_add(delay_ms);

        let record = ApiErrorRecord {
            message: error.to_string(),
            checked_at: now_ms,
            next_retry_at: Some(next_retry_at),
            retry_count: Some(attempt),
            status: error.status(),
            retry_after_ms: asked_ms,
            account_identity: account_identity.map(str::to_owned),
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
    pub fn merge_from(&mut self, other: &BackoffState) {
        self.attempts = self.attempts.max(other.attempts);
        self.next_retry_at = self.next_retry_at.max(other.next_retry_at);
        let newest = match (&self.last_error, &other.last_error) {
            (Some(mine), Some(theirs)) => match record_order(theirs, mine) {
                Ordering::Greater => Some(theirs.clone()),
                _ => Some(mine.clone()),
            },
            (mine, theirs) => mine.clone().or_else(|| theirs.clone()),
        };
        // Restating from the merged fields alone (never from the record's own values) is what
        // keeps the result independent of merge order when two records tie.
        self.last_error = newest.map(|mut record| {
            record.next_retry_at = self.next_retry_at;
            record.retry_count = (self.attempts > 0).then_some(self.attempts);
            record
        });
    }
}

/// Total order on failure records by observation time, ignoring the fields `merge_from`
/// restates (`next_retry_at`, `retry_count`), so the winner does not depend on merge order.
fn record_order(a: &ApiErrorRecord, b: &ApiErrorRecord) -> Ordering {
    let key = |r: &ApiErrorRecord| {
        (r.checked_at, r.status, r.retry_after_ms, r.message.clone(), r.account_identity.clone())
    };
    key(a).cmp(&key(b))
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
    let initial = config.initial_ms.max(0);
    let cap = config.max_ms.max(0);
    let doublings = attempt.saturating_sub(1);
    let delay = if doublings >= 62 {
        if initial == 0 {
            0
        } else {
            i64::MAX
        }
    } else {
        initial.saturating_mul(1_i64 << doublings)
    };
    delay.min(cap)
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
mod tests {
    use super::*;

    const T0: i64 = 1_789_351_800_000; // Mon, 14 Sep 2026 02:10:00 GMT

    fn exact() -> BackoffConfig {
        BackoffConfig { jitter: 0.0, ..BackoffConfig::default() }
    }

    fn http(status: u16, retry_after_ms: Option<i64>) -> QuotaError {
        QuotaError::Http { status, retry_after_ms, body: "slow down".into() }
    }

    /// An open window known only by its deadline and count (e.g. adopted without a record).
    fn open_without_record(attempts: u32) -> BackoffState {
        BackoffState { attempts, next_retry_at: Some(T0 + 60_000), last_error: None }
    }

    #[test]
    fn a_failure_during_an_open_window_without_a_record_restates_the_count_it_has() {
        for (attempts, expected) in [(0, None), (1, Some(1)), (3, Some(3))] {
            let mut state = open_without_record(attempts);
            assert_eq!(state.record_failure(&http(503, None), T0, &exact(), 0.5, None), None);
            let record = state.last_error.expect("the failure is described");
            assert_eq!(record.retry_count, expected, "attempts {attempts}");
            assert_eq!(record.next_retry_at, Some(T0 + 60_000));
        }
    }

    #[test]
    fn a_merge_restates_no_count_when_no_failure_was_counted() {
        let error = ApiErrorRecord {
            message: "x".into(),
            checked_at: T0,
            next_retry_at: None,
            retry_count: Some(7),
            status: None,
            retry_after_ms: None,
            account_identity: None,
        };
        let mut state = BackoffState { last_error: Some(error.clone()), ..BackoffState::default() };
        state.merge_from(&BackoffState::default());
        assert_eq!(state.last_error.unwrap().retry_count, None);
        let mut counted =
            BackoffState { attempts: 1, last_error: Some(error), ..BackoffState::default() };
        counted.merge_from(&BackoffState::default());
        assert_eq!(counted.last_error.unwrap().retry_count, Some(1));
    }

    #[test]
    fn ladder_doubles_from_60_s_and_caps_at_15_min() {
        let config = BackoffConfig::default();
        let table: Vec<i64> = (1..=7).map(|k| ladder_delay_ms(k, &config)).collect();
        assert_eq!(table, [60, 120, 240, 480, 900, 900, 900].map(|s| s * SECOND_MS));
        assert_eq!(ladder_delay_ms(0, &config), MINUTE_MS);
    }

    #[test]
    fn ladder_never_overflows() {
        let config = BackoffConfig::default();
        for attempt in [62, 63, 64, 1_000, u32::MAX] {
            assert_eq!(ladder_delay_ms(attempt, &config), 15 * MINUTE_MS);
        }
        let huge = BackoffConfig {
            initial_ms: i64::MAX / 2,
            max_ms: i64::MAX,
            ..BackoffConfig::default()
        };
        assert_eq!(ladder_delay_ms(40, &huge), i64::MAX);
    }

    #[test]
    fn jitter_only_lengthens_and_never_passes_the_cap() {
        let config = BackoffConfig::default();
        assert_eq!(jittered_ms(60_000, &config, 0.0), 60_000);
        assert_eq!(jittered_ms(60_000, &config, 0.5), 63_000);
        assert_eq!(jittered_ms(60_000, &config, 0.999), 65_994);
        assert_eq!(jittered_ms(480_000, &config, 0.999), 527_952);
        assert_eq!(jittered_ms(900_000, &config, 0.999), 900_000);
        let wild = BackoffConfig { jitter: 1.0, ..BackoffConfig::default() };
        assert_eq!(jittered_ms(480_000, &wild, 0.999), 900_000);
        // A delay already beyond the cap (a Retry-After) is neither shortened nor lengthened.
        assert_eq!(jittered_ms(3_000_000, &config, 0.999), 3_000_000);
        assert_eq!(jittered_ms(60_000, &exact(), 0.999), 60_000);
        assert_eq!(jittered_ms(60_000, &config, f64::NAN), 60_000);
        assert_eq!(jittered_ms(60_000, &config, 7.0), 66_000);
        for k in 1..=10 {
            for unit in [0.0, 0.25, 0.5, 0.999] {
                let delay = jittered_ms(ladder_delay_ms(k, &config), &config, unit);
                assert!((60_000..=900_000).contains(&delay), "k={k} unit={unit}");
            }
        }
    }

    #[test]
    fn transient_failures_climb_the_ladder_window_by_window() {
        let config = exact();
        let mut state = BackoffState::default();
        let mut now = T0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            let record = state
                .record_failure(&http(429, None), now, &config, 0.5, Some("main"))
                .expect("arms");
            let delay = record.next_retry_at.unwrap() - now;
            assert_eq!(record.retry_count, Some(state.attempts));
            assert_eq!(state.next_retry_at, record.next_retry_at);
            assert_eq!(state.remaining_ms(now), delay);
            delays.push(delay);
            now += delay; // the window has just run out
            assert!(!state.is_open(now));
        }
        assert_eq!(delays, [60, 120, 240, 480, 900, 900].map(|s| s * SECOND_MS));
        assert_eq!(state.attempts, 6);
    }

    #[test]
    fn the_armed_record_describes_the_failure() {
        let mut state = BackoffState::default();
        let record = state
            .record_failure(&http(503, Some(5_000)), T0, &exact(), 0.0, Some("acct-1"))
            .unwrap();
        assert_eq!(
            record,
            ApiErrorRecord {
                message: "Claude quota check failed: 503 — slow down".into(),
                checked_at: T0,
                next_retry_at: Some(T0 + MINUTE_MS),
                retry_count: Some(1),
                status: Some(503),
                retry_after_ms: Some(5_000),
                account_identity: Some("acct-1".into()),
            }
        );
        assert_eq!(state.last_error, Some(record));
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["attempts"], 1);
        assert_eq!(json["nextRetryAt"], T0 + MINUTE_MS);
        assert_eq!(json["lastError"]["retryCount"], 1);
        let back: BackoffState = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        let empty: BackoffState = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, BackoffState::default());
    }

    #[test]
    fn network_and_timeout_failures_are_transient_and_jittered() {
        let config = BackoffConfig::default();
        let mut state = BackoffState::default();
        let error = QuotaError::Timeout("10 s".into());
        let record = state.record_failure(&error, T0, &config, 0.5, None).unwrap();
        assert_eq!(record.next_retry_at, Some(T0 + 63_000));
        assert_eq!(record.status, None);
        assert_eq!(record.account_identity, None);
    }

    #[test]
    fn non_transient_failures_wait_a_flat_five_minutes_and_count() {
        let config = BackoffConfig::default();
        let mut state = BackoffState::default();
        let mut now = T0;
        for attempt in 1..=3 {
            let error = if attempt == 2 {
                QuotaError::BadResponse("not JSON".into())
            } else {
                http(404, None)
            };
            let record = state.record_failure(&error, now, &config, 0.999, None).unwrap();
            assert_eq!(record.next_retry_at, Some(now + 5 * MINUTE_MS));
            assert_eq!(record.retry_count, Some(attempt));
            now += 5 * MINUTE_MS;
        }
        // The count is shared with the ladder: a transient failure now escalates to rung 4.
        let record = state.record_failure(&http(500, None), now, &exact(), 0.0, None).unwrap();
        assert_eq!(record.next_retry_at, Some(now + 8 * MINUTE_MS));
    }

    #[test]
    fn auth_and_non_endpoint_failures_arm_nothing_and_change_nothing() {
        let config = exact();
        let mut state = BackoffState::default();
        state.record_failure(&http(429, None), T0, &config, 0.0, None);
        let before = state.clone();
        let later = T0 + 2 * MINUTE_MS;
        for error in [
            QuotaError::Auth { status: 401, body: "expired".into() },
            QuotaError::Auth { status: 403, body: "forbidden".into() },
            QuotaError::Closed,
            QuotaError::BackedOff { next_retry_at: later, retry_after_ms: 1 },
        ] {
            assert_eq!(state.record_failure(&error, later, &config, 0.0, None), None);
            assert_eq!(state, before, "{error:?}");
        }
        assert!(!state.is_open(later));
        let mut fresh = BackoffState::default();
        let auth = QuotaError::Auth { status: 401, body: String::new() };
        assert_eq!(fresh.record_failure(&auth, T0, &config, 0.0, None), None);
        assert_eq!(fresh, BackoffState::default());
    }

    #[test]
    fn a_longer_retry_after_wins_up_to_its_cap() {
        let config = BackoffConfig::default();
        let mut state = BackoffState::default();
        let record =
            state.record_failure(&http(429, Some(3_000_000)), T0, &config, 0.999, None).unwrap();
        assert_eq!(record.next_retry_at, Some(T0 + 3_000_000), "beyond 15 min");
        assert_eq!(record.retry_after_ms, Some(3_000_000));

        let mut state = BackoffState::default();
        let record =
            state.record_failure(&http(429, Some(10 * HOUR_MS)), T0, &config, 0.0, None).unwrap();
        assert_eq!(record.next_retry_at, Some(T0 + 6 * HOUR_MS));
        assert_eq!(record.retry_after_ms, Some(10 * HOUR_MS), "what was asked");

        // A non-transient failure honours Retry-After too.
        let mut state = BackoffState::default();
        let record =
            state.record_failure(&http(400, Some(HOUR_MS)), T0, &config, 0.0, None).unwrap();
        assert_eq!(record.next_retry_at, Some(T0 + HOUR_MS));
    }

    #[test]
    fn a_shorter_or_meaningless_retry_after_loses() {
        let config = exact();
        for asked in [Some(10_000), Some(0), Some(-5_000)] {
            let mut state = BackoffState::default();
            state.record_failure(&http(429, None), T0, &config, 0.0, None);
            let now = T0 + MINUTE_MS;
            let record = state.record_failure(&http(429, asked), now, &config, 0.0, None).unwrap();
            assert_eq!(record.next_retry_at, Some(now + 2 * MINUTE_MS), "{asked:?}");
            assert_eq!(record.retry_after_ms, asked.filter(|ms| *ms > 0));
        }
    }

    #[test]
    fn failures_inside_an_open_window_do_not_escalate() {
        let config = exact();
        let mut state = BackoffState::default();
        let armed = state.record_failure(&http(429, None), T0, &config, 0.0, Some("main")).unwrap();
        let deadline = T0 + MINUTE_MS;
        // Other processes' requests, already in flight, fail inside the window.
        for (offset, error) in [
            (1_000, http(503, None)),
            (30_000, http(429, Some(HOUR_MS))),
            (59_999, QuotaError::Network("reset".into())),
        ] {
            let now = T0 + offset;
            assert!(state.is_open(now));
            assert_eq!(state.record_failure(&error, now, &config, 0.9, None), None);
            assert_eq!(state.attempts, 1);
            assert_eq!(state.next_retry_at, Some(deadline));
            let record = state.last_error.as_ref().unwrap();
            assert_eq!(record.message, error.to_string());
            assert_eq!(record.checked_at, now);
            assert_eq!(record.next_retry_at, Some(deadline));
            assert_eq!(record.retry_count, Some(1));
            assert_eq!(record.account_identity, armed.account_identity);
        }
        // At the deadline the window is closed: the next failure escalates to rung 2.
        let record = state.record_failure(&http(429, None), deadline, &config, 0.0, None).unwrap();
        assert_eq!(record.retry_count, Some(2));
        assert_eq!(record.next_retry_at, Some(deadline + 2 * MINUTE_MS));
    }

    #[test]
    fn the_count_survives_expiry_and_success_resets_it() {
        let config = exact();
        let mut state = BackoffState::default();
        state.record_failure(&http(429, None), T0, &config, 0.0, None);
        let hours_later = T0 + 5 * HOUR_MS;
        assert!(!state.is_open(hours_later));
        assert_eq!(state.remaining_ms(hours_later), 0);
        let record =
            state.record_failure(&http(429, None), hours_later, &config, 0.0, None).unwrap();
        assert_eq!(record.retry_count, Some(2));
        assert_eq!(record.next_retry_at, Some(hours_later + 2 * MINUTE_MS));

        state.record_success();
        assert_eq!(state, BackoffState::default());
        assert!(!state.is_open(hours_later));
        let record =
            state.record_failure(&http(429, None), hours_later + 1, &config, 0.0, None).unwrap();
        assert_eq!(record.retry_count, Some(1));
        assert_eq!(record.next_retry_at, Some(hours_later + 1 + MINUTE_MS));
    }

    fn failed(at: i64, status: u16, retry_after_ms: Option<i64>) -> BackoffState {
        let mut state = BackoffState::default();
        state.record_failure(&http(status, retry_after_ms), at, &exact(), 0.0, None);
        state
    }

    #[test]
    fn merging_takes_the_more_restrictive_window_and_the_newest_error() {
        // Process A saw a long Retry-After; process B, a moment later, a plain 500.
        let a = failed(T0, 429, Some(HOUR_MS));
        let b = failed(T0 + 1, 500, None);
        let mut ab = a.clone();
        ab.merge_from(&b);
        let mut ba = b.clone();
        ba.merge_from(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.attempts, 1, "one window, one escalation across processes");
        assert_eq!(ab.next_retry_at, Some(T0 + HOUR_MS));
        let record = ab.last_error.clone().unwrap();
        assert_eq!(record.status, Some(500));
        assert_eq!(record.checked_at, T0 + 1);
        assert_eq!(record.next_retry_at, Some(T0 + HOUR_MS), "restated");

        let mut again = ab.clone();
        again.merge_from(&ab);
        again.merge_from(&b);
        assert_eq!(again, ab, "idempotent");

        let mut escalated = failed(T0, 429, None);
        escalated.record_failure(&http(429, None), T0 + MINUTE_MS, &exact(), 0.0, None);
        let mut merged = a.clone();
        merged.merge_from(&escalated);
        assert_eq!(merged.attempts, 2);
        assert_eq!(merged.last_error.unwrap().retry_count, Some(2));

        let mut reset = BackoffState::default();
        reset.merge_from(&a);
        assert_eq!(reset, a);
        let mut kept = a.clone();
        kept.merge_from(&BackoffState::default());
        assert_eq!(kept, a, "a reset state carries no time, so it cannot win");
    }

    #[test]
    fn merging_converges_in_any_order() {
        let states = [
            failed(T0, 429, Some(HOUR_MS)),
            failed(T0 + 5, 404, None),
            failed(T0 + 5, 500, None),
            from_persisted(&failed(T0 - HOUR_MS, 429, None).last_error.unwrap(), T0),
            BackoffState::default(),
        ];
        let orders = [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 3, 0, 4, 2]];
        let results: Vec<BackoffState> = orders
            .iter()
            .map(|order| {
                let mut acc = BackoffState::default();
                for &i in order {
                    acc.merge_from(&states[i]);
                }
                acc
            })
            .collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:#?}");
        let merged = &results[0];
        assert_eq!(merged.next_retry_at, Some(T0 + HOUR_MS));
        assert_eq!(merged.last_error.as_ref().unwrap().checked_at, T0 + 5);
    }

    #[test]
    fn an_active_persisted_error_is_honoured() {
        let stored = ApiErrorRecord {
            message: "Claude quota check failed: 429 — later".into(),
            checked_at: T0,
            next_retry_at: Some(T0 + 8 * MINUTE_MS),
            retry_count: Some(4),
            status: Some(429),
            retry_after_ms: None,
            account_identity: Some("main".into()),
        };
        let now = T0 + MINUTE_MS;
        let state = from_persisted(&stored, now);
        assert!(state.is_open(now));
        assert_eq!(state.attempts, 4);
        assert_eq!(state.remaining_ms(now), 7 * MINUTE_MS);
        assert_eq!(state.last_error.as_ref(), Some(&stored));

        let counted = ApiErrorRecord { retry_count: None, ..stored.clone() };
        assert_eq!(from_persisted(&counted, now).attempts, 1);

        let far = ApiErrorRecord { next_retry_at: Some(T0 + 1_000 * HOUR_MS), ..stored };
        let state = from_persisted(&far, now);
        // Six hours, written out: asserting against the constant itself could never fail.
        assert_eq!(state.next_retry_at, Some(now + 6 * 3_600_000));
        assert_eq!(
            state.last_error.unwrap().next_retry_at,
            state.next_retry_at,
            "the record agrees with the honoured window"
        );
    }

    #[test]
    fn an_expired_persisted_error_only_restores_the_count() {
        let stored = ApiErrorRecord {
            message: "old".into(),
            checked_at: T0,
            next_retry_at: Some(T0 + 2 * MINUTE_MS),
            retry_count: Some(2),
            status: Some(429),
            retry_after_ms: None,
            account_identity: None,
        };
        let now = T0 + 2 * MINUTE_MS;
        let mut state = from_persisted(&stored, now);
        assert!(!state.is_open(now));
        assert_eq!(state.remaining_ms(now), 0);
        assert_eq!(state.attempts, 2);
        let record = state.record_failure(&http(429, None), now, &exact(), 0.0, None).unwrap();
        assert_eq!(record.retry_count, Some(3));
        assert_eq!(record.next_retry_at, Some(now + 4 * MINUTE_MS));

        let no_deadline = ApiErrorRecord { next_retry_at: None, retry_count: Some(0), ..stored };
        let state = from_persisted(&no_deadline, now);
        assert!(!state.is_open(now));
        assert_eq!(state.attempts, 1);
        assert_eq!(state.last_error.unwrap().retry_count, Some(1));
    }

    #[test]
    fn retry_after_parses_delta_seconds() {
        assert_eq!(parse_retry_after("120", T0), Some(120_000));
        assert_eq!(parse_retry_after(" 3500 ", T0), Some(3_500_000));
        assert_eq!(parse_retry_after("0", T0), None);
        assert_eq!(parse_retry_after("-5", T0), None);
        assert_eq!(parse_retry_after("+5", T0), None);
        assert_eq!(parse_retry_after("1.5", T0), None);
        assert_eq!(parse_retry_after("abc", T0), None);
        assert_eq!(parse_retry_after("", T0), None);
        let ceiling = Some(RETRY_AFTER_ABSURD_MS);
        assert_eq!(parse_retry_after("99999999999999999999999", T0), ceiling);
        assert_eq!(parse_retry_after("9223372036854775807", T0), ceiling);
        assert_eq!(parse_retry_after("31536000", T0), ceiling, "a year is capped");
        assert_eq!(parse_retry_after("2592000", T0), ceiling, "30 days exactly");
        assert_eq!(parse_retry_after("2591999", T0), Some(2_591_999_000));
    }

    #[test]
    fn a_retry_after_beyond_30_days_is_capped_at_max_retry_after_not_dropped() {
        let config = BackoffConfig { jitter: 0.0, ..BackoffConfig::default() };
        for header in ["31536000", "99999999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"] {
            let asked = parse_retry_after(header, T0);
            let mut state = BackoffState::default();
            let record =
                state.record_failure(&http(429, asked), T0, &config, 0.0, None).expect("armed");
            assert_eq!(state.next_retry_at, Some(T0 + config.max_retry_after_ms), "{header}");
            assert_eq!(record.retry_after_ms, Some(RETRY_AFTER_ABSURD_MS), "what was asked");
        }
    }

    #[test]
    fn retry_after_parses_all_three_http_date_forms() {
        let now = T0 - HOUR_MS;
        for form in [
            "Mon, 14 Sep 2026 02:10:00 GMT",
            "Monday, 14-Sep-26 02:10:00 GMT",
            "Mon Sep 14 02:10:00 2026",
        ] {
            assert_eq!(parse_retry_after(form, now), Some(HOUR_MS), "{form}");
        }
        assert_eq!(
            parse_retry_after("Mon, 14 Sep 2026 02:10:00 GMT", T0 - 250),
            Some(250),
            "sub-second precision of now is kept"
        );
    }

    #[test]
    fn retry_after_ignores_past_present_and_bogus_dates() {
        assert_eq!(parse_retry_after("Mon, 14 Sep 2026 02:10:00 GMT", T0), None);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", T0), None);
        assert_eq!(
            parse_retry_after("Tue, 14 Sep 2026 02:10:00 GMT", T0 - 1),
            None,
            "wrong weekday"
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", T0),
            Some(RETRY_AFTER_ABSURD_MS),
            "far future is capped"
        );
    }
}
