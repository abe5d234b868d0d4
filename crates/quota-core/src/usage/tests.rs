use super::*;
use serde_json::json;

#[test]
fn a_200_without_usage_fields_is_not_a_usage_answer() {
    let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "x"}});
    assert!(check_usage_body(&error).unwrap_err().contains("error object"));
    assert!(check_usage_body(&json!({"hello": 1})).unwrap_err().contains("no usage fields"));
    assert!(check_usage_body(&json!({})).is_err());
    assert!(check_usage_body(&json!([])).is_err());
    assert!(check_usage_body(&json!({"five_hour": null, "limits": []})).is_ok());
    assert!(check_usage_body(&json!({"seven_day": {"utilization": 1}})).is_ok());
}

#[test]
fn an_overflowing_number_drops_only_its_field() {
    let body = br#"{"five_hour":{"utilization":1e400,"resets_at":"2026-09-14T02:10:00Z"},
        "seven_day":{"utilization":68.0},"note":"1e400 in a \"string\" stays",
        "extra_usage":{"is_enabled":true,"used_credits":-1E+999,"monthly_limit":5}}"#;
    let value = parse_json_lenient(body).unwrap();
    assert_eq!(value["note"], "1e400 in a \"string\" stays");
    let snapshot = parse_usage_body(&value, NOW);
    assert_eq!(snapshot.five_hour, None);
    assert_eq!(snapshot.seven_day.unwrap().used_percent, 68.0);
    assert_eq!(snapshot.extra_usage, None);
    // Real syntax errors still fail, and ordinary numbers are untouched.
    assert!(parse_json_lenient(b"{\"a\": 1e400,").is_err());
    assert_eq!(parse_json_lenient(b"[1.5e3, -2]").unwrap(), json!([1500.0, -2]));
}

const NOW: i64 = 1_789_000_000_000;

fn example_body() -> Value {
    json!({
      "five_hour": { "utilization": 9.0, "resets_at": "2026-09-14T02:10:00Z" },
      "seven_day": { "utilization": 68.0, "resets_at": "2026-09-19T09:00:00Z" },
      "seven_day_opus": null,
      "limits": [
        { "kind": "session", "group": "session", "percent": 9, "is_active": false },
        { "kind": "weekly_all", "group": "weekly", "percent": 68, "is_active": false },
        { "kind": "weekly_scoped", "group": "weekly", "percent": 22, "is_active": true,
          "resets_at": "2026-09-18T00:00:00Z",
          "scope": { "model": { "id": "claude-fable-5-1", "display_name": "Fable" } } }
      ],
      "extra_usage": { "is_enabled": true, "monthly_limit": 10000, "used_credits": 1261,
                       "utilization": 12.61 },
      "spend": { "severity": "normal",
                 "limit": { "amount_minor": 10000, "currency": "USD", "exponent": 2 } }
    })
}

fn scoped_limit(id: Value, name: Value, percent: Value) -> Value {
    json!({ "kind": "weekly_scoped", "group": "weekly", "percent": percent,
            "scope": { "model": { "id": id, "display_name": name } } })
}

fn with_limits(limits: Value) -> QuotaSnapshot {
    parse_usage_body(&json!({ "limits": limits }), NOW)
}

fn extra_with_spend(spend: Value) -> Option<ExtraUsage> {
    let body = json!({
        "extra_usage": { "is_enabled": true, "monthly_limit": 100, "used_credits": 5 },
        "spend": spend
    });
    parse_usage_body(&body, NOW).extra_usage
}

fn money(currency: Value, exponent: Value) -> QuotaMoney {
    let spend = json!({ "limit": { "currency": currency, "exponent": exponent } });
    extra_with_spend(spend).unwrap().used
}

#[test]
fn spec_example_parses_field_by_field() {
    let snapshot = parse_usage_body(&example_body(), NOW);
    assert_eq!(
        snapshot.five_hour,
        Some(QuotaWindow {
            used_percent: 9.0,
            remaining_percent: 91.0,
            resets_at: Some("2026-09-14T02:10:00Z".into()),
            checked_at: NOW,
        })
    );
    assert_eq!(
        snapshot.seven_day,
        Some(QuotaWindow {
            used_percent: 68.0,
            remaining_percent: 32.0,
            resets_at: Some("2026-09-19T09:00:00Z".into()),
            checked_at: NOW,
        })
    );
    assert_eq!(
        snapshot.scoped,
        Some(vec![ScopedQuotaWindow {
            used_percent: 22.0,
            remaining_percent: 78.0,
            resets_at: Some("2026-09-18T00:00:00Z".into()),
            checked_at: NOW,
            id: "claude-weekly-scoped-claude-fable-5-1".into(),
            title: "Fable only".into(),
            model_id: Some("claude-fable-5-1".into()),
            model_name: "Fable".into(),
        }])
    );
    assert_eq!(snapshot.binding_window.as_deref(), Some("claude-weekly-scoped-claude-fable-5-1"));
    assert_eq!(snapshot.binding_window_source, Some(QuotaSource::Poll));
    let usd = |amount_minor| QuotaMoney { amount_minor, currency: "USD".into(), exponent: 2 };
    assert_eq!(
        snapshot.extra_usage,
        Some(ExtraUsage {
            used: usd(1261.0),
            limit: usd(10000.0),
            utilization_percent: Some(12.61),
            severity: Some("normal".into()),
            exhausted: false,
        })
    );
    assert_eq!(snapshot.source, Some(QuotaSource::Poll));
    assert_eq!(snapshot.checked_at, Some(NOW));
    assert_eq!(snapshot.fallback_advised, None);
    assert_eq!(snapshot.account_identity, None);
}

#[test]
fn spec_example_serialises_to_the_js_shape() {
    let json = serde_json::to_value(parse_usage_body(&example_body(), NOW)).unwrap();
    assert_eq!(json["five_hour"]["usedPercent"], 9.0);
    assert_eq!(json["scoped"][0]["modelId"], "claude-fable-5-1");
    assert_eq!(json["bindingWindowSource"], "poll");
    assert_eq!(json["extraUsage"]["limit"]["amountMinor"], 10000.0);
    assert_eq!(json["source"], "poll");
}

#[test]
fn empty_null_and_non_object_bodies_give_a_bare_poll_snapshot() {
    for body in [json!({}), json!(null), json!([1, 2]), json!("x"), json!(7)] {
        let snapshot = parse_usage_body(&body, NOW);
        assert_eq!(
            snapshot,
            QuotaSnapshot {
                scoped: Some(vec![]),
                source: Some(QuotaSource::Poll),
                checked_at: Some(NOW),
                ..Default::default()
            }
            .with_settled_field_sources(),
            "body {body}"
        );
    }
}

#[test]
fn null_fields_are_absent() {
    let body = json!({
        "five_hour": null, "seven_day": { "utilization": null, "resets_at": null },
        "limits": null, "extra_usage": null, "spend": null
    });
    let snapshot = parse_usage_body(&body, NOW);
    assert!(snapshot.five_hour.is_none());
    assert!(snapshot.seven_day.is_none());
    assert_eq!(snapshot.scoped, Some(vec![]));
    assert!(snapshot.extra_usage.is_none());
    assert!(snapshot.binding_window.is_none());
    assert!(snapshot.binding_window_source.is_none());
}

#[test]
fn windows_need_a_numeric_utilization_and_drop_junk_resets() {
    let body = json!({
        "five_hour": { "utilization": "9", "resets_at": "2026-09-14T02:10:00Z" },
        "seven_day": { "utilization": 5, "resets_at": 12345 },
    });
    let snapshot = parse_usage_body(&body, NOW);
    assert!(snapshot.five_hour.is_none());
    let seven = snapshot.seven_day.unwrap();
    assert_eq!(seven.used_percent, 5.0);
    assert_eq!(seven.resets_at, None);
    for junk in [json!("soon"), json!("  "), json!({ "at": 1 }), json!([])] {
        let body = json!({ "five_hour": { "utilization": 1, "resets_at": junk } });
        let window = parse_usage_body(&body, NOW).five_hour.unwrap();
        assert_eq!(window.resets_at, None, "resets_at {junk}");
    }
    for junk in [json!([9]), json!({ "v": 9 }), json!(true), json!("NaN")] {
        let body = json!({ "five_hour": { "utilization": junk } });
        assert!(parse_usage_body(&body, NOW).five_hour.is_none());
    }
    let body = json!({ "five_hour": "full", "seven_day": [1] });
    assert!(!parse_usage_body(&body, NOW).has_windows());
}

#[test]
fn utilization_is_clamped_to_0_100() {
    let body = json!({
        "five_hour": { "utilization": 140.5 },
        "seven_day": { "utilization": -3 },
        "limits": [ scoped_limit(json!("m"), json!("M"), json!(1e300)) ]
    });
    let snapshot = parse_usage_body(&body, NOW);
    let five = snapshot.five_hour.unwrap();
    assert_eq!((five.used_percent, five.remaining_percent), (100.0, 0.0));
    let seven = snapshot.seven_day.unwrap();
    assert_eq!((seven.used_percent, seven.remaining_percent), (0.0, 100.0));
    let scoped = &snapshot.scoped.unwrap()[0];
    assert_eq!((scoped.used_percent, scoped.remaining_percent), (100.0, 0.0));
}

#[test]
fn slug_follows_the_rules() {
    assert_eq!(slug("claude-fable-5-1"), "claude-fable-5-1");
    assert_eq!(slug("Claude Fable 5.1"), "claude-fable-5-1");
    assert_eq!(slug("  --Opus__4!!  "), "opus-4");
    assert_eq!(slug("a   b---c"), "a-b-c");
    assert_eq!(slug("Ünïcödé"), "n-c-d");
    assert_eq!(slug("日本語"), "");
    assert_eq!(slug("---"), "");
    assert_eq!(slug(""), "");
    assert_eq!(slug("X"), "x");
    assert_eq!(slug("9"), "9");
}

#[test]
fn scoped_id_falls_back_to_the_display_name() {
    let snapshot = with_limits(json!([
        scoped_limit(json!(null), json!("Mythos Preview"), json!(10)),
        scoped_limit(json!("   "), json!("Opus"), json!(20)),
        scoped_limit(json!(42), json!("Haiku"), json!(30)),
    ]));
    let scoped = snapshot.scoped.unwrap();
    let ids: Vec<_> = scoped.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "claude-weekly-scoped-mythos-preview",
            "claude-weekly-scoped-opus",
            "claude-weekly-scoped-haiku"
        ]
    );
    assert!(scoped.iter().all(|w| w.model_id.is_none()));
    assert_eq!(scoped[0].title, "Mythos Preview only");
    assert_eq!(scoped[0].model_name, "Mythos Preview");
    assert_eq!(scoped[0].resets_at, None);
}

#[test]
fn scoped_entries_with_an_empty_slug_are_dropped() {
    let snapshot = with_limits(json!([
        scoped_limit(json!(null), json!("日本語"), json!(10)),
        scoped_limit(json!("!!!"), json!("Fable"), json!(10)),
        scoped_limit(json!("ok"), json!("Ok"), json!(10)),
    ]));
    let scoped = snapshot.scoped.unwrap();
    assert_eq!(scoped.len(), 1);
    assert_eq!(scoped[0].id, "claude-weekly-scoped-ok");
}

#[test]
fn duplicate_scoped_ids_keep_the_first() {
    let snapshot = with_limits(json!([
        scoped_limit(json!("claude-fable-5-1"), json!("Fable"), json!(10)),
        scoped_limit(json!("Claude Fable 5.1"), json!("Fable again"), json!(90)),
        scoped_limit(json!("claude-mythos"), json!("Mythos"), json!(50)),
    ]));
    let scoped = snapshot.scoped.unwrap();
    assert_eq!(scoped.len(), 2);
    assert_eq!(scoped[0].used_percent, 10.0);
    assert_eq!(scoped[0].model_name, "Fable");
    assert_eq!(scoped[1].id, "claude-weekly-scoped-claude-mythos");
}

#[test]
fn scoped_entries_need_kind_group_percent_and_display_name() {
    let good = scoped_limit(json!("m"), json!("M"), json!(5));
    let mut wrong_kind = good.clone();
    wrong_kind["kind"] = json!("weekly_all");
    let mut wrong_group = good.clone();
    wrong_group["group"] = json!("session");
    let mut no_scope = good.clone();
    no_scope["scope"] = json!({ "model": "m" });
    let snapshot = with_limits(json!([
        wrong_kind,
        wrong_group,
        no_scope,
        scoped_limit(json!("m"), json!("M"), json!("5")),
        scoped_limit(json!("m"), json!(null), json!(5)),
        scoped_limit(json!("m"), json!("  "), json!(5)),
        scoped_limit(json!("m"), json!(["M"]), json!(5)),
        "junk",
        7,
        null,
    ]));
    assert_eq!(snapshot.scoped, Some(vec![]));
    assert_eq!(with_limits(json!({ "a": good })).scoped, Some(vec![]));
}

#[test]
fn display_name_and_model_id_are_trimmed() {
    let snapshot =
        with_limits(json!([scoped_limit(json!(" claude-x "), json!("  X  "), json!(1))]));
    let window = &snapshot.scoped.unwrap()[0];
    assert_eq!(window.model_id.as_deref(), Some("claude-x"));
    assert_eq!(window.model_name, "X");
    assert_eq!(window.title, "X only");
}

#[test]
fn binding_window_comes_from_the_first_active_limit() {
    let session = json!({ "kind": "session", "is_active": true });
    let weekly = json!({ "kind": "weekly_all", "is_active": true });
    let mut scoped = scoped_limit(json!("claude-fable"), json!("Fable"), json!(3));
    scoped["is_active"] = json!(true);
    let binding = |limits: Value| with_limits(limits).binding_window;
    assert_eq!(binding(json!([session, weekly])).as_deref(), Some("five_hour"));
    assert_eq!(binding(json!([weekly, session])).as_deref(), Some("seven_day"));
    assert_eq!(
        binding(json!([scoped, session])).as_deref(),
        Some("claude-weekly-scoped-claude-fable")
    );
    let snapshot = with_limits(json!([session]));
    assert_eq!(snapshot.binding_window_source, Some(QuotaSource::Poll));
}

#[test]
fn inactive_and_unusable_limits_give_no_binding_window() {
    let inactive = |active: Value| json!({ "kind": "session", "is_active": active });
    let snapshot = with_limits(json!([
        inactive(json!(false)),
        inactive(json!("true")),
        inactive(json!(1)),
        inactive(json!(null)),
        { "kind": "session" },
    ]));
    assert_eq!(snapshot.binding_window, None);
    assert_eq!(snapshot.binding_window_source, None);
    let unknown_first = json!([
        { "kind": "monthly", "is_active": true },
        { "kind": "session", "is_active": true }
    ]);
    assert_eq!(with_limits(unknown_first).binding_window, None);
    let mut broken_scoped = scoped_limit(json!("x"), json!(null), json!(3));
    broken_scoped["is_active"] = json!(true);
    assert_eq!(with_limits(json!([broken_scoped])).binding_window, None);
    let no_kind = json!([{ "is_active": true, "kind": 5 }]);
    assert_eq!(with_limits(no_kind).binding_window, None);
}

#[test]
fn extra_usage_needs_enabled_and_finite_amounts() {
    let parse = |extra: Value| parse_usage_body(&json!({ "extra_usage": extra }), NOW);
    let base = json!({ "is_enabled": true, "monthly_limit": 100, "used_credits": 5 });
    let extra = parse(base.clone()).extra_usage.unwrap();
    assert_eq!(extra.used.currency, "USD");
    assert_eq!(extra.used.exponent, 2);
    assert_eq!(extra.limit.amount_minor, 100.0);
    assert_eq!(extra.utilization_percent, None);
    assert_eq!(extra.severity, None);
    assert!(!extra.exhausted);
    for (field, junk) in [
        ("is_enabled", json!(false)),
        ("is_enabled", json!("true")),
        ("is_enabled", json!(null)),
        ("monthly_limit", json!("100")),
        ("monthly_limit", json!(null)),
        ("used_credits", json!({ "v": 5 })),
    ] {
        let mut extra = base.clone();
        extra[field] = junk.clone();
        assert!(parse(extra).extra_usage.is_none(), "{field} = {junk}");
    }
    assert!(parse(json!("on")).extra_usage.is_none());
}

#[test]
fn extra_usage_is_exhausted_when_used_reaches_the_limit() {
    let exhausted = |used: f64, limit: f64| {
        let extra = json!({ "is_enabled": true, "monthly_limit": limit, "used_credits": used });
        parse_usage_body(&json!({ "extra_usage": extra }), NOW).extra_usage.unwrap().exhausted
    };
    assert!(exhausted(100.0, 100.0));
    assert!(exhausted(150.0, 100.0));
    assert!(!exhausted(99.5, 100.0));
    assert!(exhausted(0.0, 0.0));
}

#[test]
fn currency_must_be_three_letters() {
    assert_eq!(money(json!("EUR"), json!(2)).currency, "EUR");
    assert_eq!(money(json!("gbp"), json!(2)).currency, "GBP");
    for junk in
        [json!("EURO"), json!("E1R"), json!("€€€"), json!("US"), json!(""), json!(840), json!(null)]
    {
        assert_eq!(money(junk.clone(), json!(2)).currency, "USD", "{junk}");
    }
}

#[test]
fn exponent_must_be_an_integer_from_0_to_20() {
    assert_eq!(money(json!("JPY"), json!(0)).exponent, 0);
    assert_eq!(money(json!("USD"), json!(20)).exponent, 20);
    assert_eq!(money(json!("USD"), json!(3.0)).exponent, 3);
    for junk in [json!(21), json!(-1), json!(2.5), json!("3"), json!(1e300), json!(null)] {
        assert_eq!(money(json!("USD"), junk.clone()).exponent, 2, "{junk}");
    }
}

#[test]
fn limit_and_used_share_currency_and_exponent() {
    let spend = json!({ "limit": { "currency": "EUR", "exponent": 3 } });
    let extra = extra_with_spend(spend).unwrap();
    assert_eq!(extra.used.currency, extra.limit.currency);
    assert_eq!(extra.limit.exponent, 3);
}

#[test]
fn severity_and_utilization_are_optional() {
    let severity = |spend: Value| extra_with_spend(spend).unwrap().severity;
    assert_eq!(severity(json!({ "severity": "warning" })).as_deref(), Some("warning"));
    assert_eq!(severity(json!({ "severity": "  " })), None);
    assert_eq!(severity(json!({ "severity": 3 })), None);
    assert_eq!(severity(json!("high")), None);
    assert_eq!(extra_with_spend(json!({ "limit": "lots" })).unwrap().used.exponent, 2);
    let body = |utilization: Value| {
        json!({ "extra_usage": { "is_enabled": true, "monthly_limit": 1,
                                 "used_credits": 0, "utilization": utilization } })
    };
    let utilization =
        |u: Value| parse_usage_body(&body(u), NOW).extra_usage.unwrap().utilization_percent;
    assert_eq!(utilization(json!(12.5)), Some(12.5));
    assert_eq!(utilization(json!("12.5")), None);
    assert_eq!(utilization(json!(null)), None);
}
