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
    let huge =
        BackoffConfig { initial_ms: i64::MAX / 2, max_ms: i64::MAX, ..BackoffConfig::default() };
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
        let record =
            state.record_failure(&http(429, None), now, &config, 0.5, Some("main")).expect("arms");
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
    let record =
        state.record_failure(&http(503, Some(5_000)), T0, &exact(), 0.0, Some("acct-1")).unwrap();
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
        let error =
            if attempt == 2 { QuotaError::BadResponse("not JSON".into()) } else { http(404, None) };
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
    let record = state.record_failure(&http(400, Some(HOUR_MS)), T0, &config, 0.0, None).unwrap();
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
    let record = state.record_failure(&http(429, None), hours_later, &config, 0.0, None).unwrap();
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
    assert_eq!(parse_retry_after("Tue, 14 Sep 2026 02:10:00 GMT", T0 - 1), None, "wrong weekday");
    assert_eq!(
        parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", T0),
        Some(RETRY_AFTER_ABSURD_MS),
        "far future is capped"
    );
}
