//! The routing policy (docs/routing.md#policy): may this account serve a request on this model,
//! and if not, until when is it blocked? A pure function of the snapshot.

use serde_json::Value;

use super::snapshot::{finite, QuotaSnapshot, QuotaWindow, WindowKind};

/// Per-window thresholds, in percent remaining (0..=100), indexed like [`WindowKind::ALL`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MinimumRemaining(pub [f64; WindowKind::ALL.len()]);

impl MinimumRemaining {
    pub fn of(&self, kind: WindowKind) -> f64 {
        self.0[kind as usize]
    }

    /// Reads thresholds from untrusted JSON (docs/routing.md#thresholds).
    pub fn from_value_lenient(v: &Value) -> Self {
        Self(WindowKind::ALL.map(|kind| {
            let spec = kind.spec();
            [spec.name, spec.threshold_alias]
                .into_iter()
                .find_map(|key| finite(&v[key]))
                .map_or(0.0, |n| n.clamp(0.0, 100.0))
        }))
    }
}

/// The host's routing policy (`QuotaPolicy` in docs/api.md#data-types).
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaPolicy {
    pub minimum_remaining: MinimumRemaining,
    pub fail_closed_on_unknown_quota: bool,
}

impl QuotaPolicy {
    /// Reads a policy from untrusted JSON; junk fields (and `null`) read as the plugin's defaults.
    pub fn from_value_lenient(v: &Value) -> Self {
        Self {
            minimum_remaining: MinimumRemaining::from_value_lenient(&v["minimumRemaining"]),
            fail_closed_on_unknown_quota: v["failClosedOnUnknownQuota"].as_bool().unwrap_or(true),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    Window(WindowKind),
    Scoped,
    Unknown,
}

impl BlockReason {
    /// The JavaScript spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Window(kind) => kind.name(),
            Self::Scoped => "scoped",
            Self::Unknown => "unknown",
        }
    }
}

/// The verdict of [`evaluate_quota`] (docs/routing.md#policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaEvaluation {
    pub passes: bool,
    pub reason: Option<BlockReason>,
    pub blocked_until: Option<i64>,
}

/// Does this snapshot allow a request on `model` under `policy` (docs/routing.md#policy)?
pub fn evaluate_quota(
    quota: Option<&QuotaSnapshot>,
    policy: &QuotaPolicy,
    model: Option<&str>,
) -> QuotaEvaluation {
    let mut blockers: Vec<(BlockReason, Option<i64>)> = Vec::new();
    let minimum = &policy.minimum_remaining;
    let mut unknown = quota.is_none();
    if let Some(quota) = quota {
        for kind in WindowKind::ALL {
            match quota.window(kind).filter(|w| w.remaining_percent.is_finite()) {
                Some(w) if window_exhausted(w, minimum.of(kind)) => {
                    blockers.push((BlockReason::Window(kind), w.resets_at_ms()));
                }
                Some(_) => {}
                // A non-finite percentage (only possible from hand-built data) says nothing.
                None => unknown = true,
            }
        }
        let scoped = model.and_then(|model| quota.scoped_window_for(model));
        if let Some(scoped) = scoped.filter(|w| w.remaining_percent <= 0.0) {
            blockers.push((BlockReason::Scoped, scoped.resets_at_ms()));
        }
    }
    if unknown && policy.fail_closed_on_unknown_quota {
        blockers.push((BlockReason::Unknown, None));
    }
    // `None < Some(_)`, and only a strictly later reset displaces an earlier blocker.
    let worst = blockers.into_iter().reduce(|best, next| if next.1 > best.1 { next } else { best });
    QuotaEvaluation {
        passes: worst.is_none(),
        reason: worst.map(|(reason, _)| reason),
        blocked_until: worst.and_then(|(_, until)| until),
    }
}

/// The latest future reset of an exhausted 5h/7d window (docs/freshness.md#refresh-after).
pub fn exhausted_until(
    quota: &QuotaSnapshot,
    minimum: &MinimumRemaining,
    now_ms: i64,
) -> Option<i64> {
    quota
        .windows()
        .filter(|(kind, w)| window_exhausted(w, minimum.of(*kind)))
        .filter_map(|(_, w)| w.resets_at_ms())
        .filter(|reset| *reset > now_ms)
        .max()
}

/// Below the threshold, or fully used even at a threshold of 0 (docs/routing.md#policy).
fn window_exhausted(window: &QuotaWindow, threshold: f64) -> bool {
    window.remaining_percent < threshold || window.remaining_percent <= 0.0
}

#[cfg(test)]
impl Default for QuotaPolicy {
    /// The plugin's defaults, as the binding reads an absent policy.
    fn default() -> Self {
        Self::from_value_lenient(&Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ScopedQuotaWindow;
    use serde_json::json;

    impl QuotaEvaluation {
        fn pass() -> Self {
            Self { passes: true, reason: None, blocked_until: None }
        }
    }

    const FIVE_RESET: &str = "2026-09-14T02:10:00Z";
    const FIVE_RESET_MS: i64 = 1_789_351_800_000;
    const SEVEN_RESET: &str = "2026-09-19T09:00:00Z";
    const SEVEN_RESET_MS: i64 = 1_789_808_400_000;
    const SCOPED_RESET: &str = "2026-09-18T00:00:00Z";
    const SCOPED_RESET_MS: i64 = 1_789_689_600_000;

    fn window(used: f64, reset: &str) -> QuotaWindow {
        QuotaWindow::from_used(used, Some(reset.into()), 0)
    }

    fn snapshot(five_used: f64, seven_used: f64, fable_used: f64) -> QuotaSnapshot {
        QuotaSnapshot {
            five_hour: Some(window(five_used, FIVE_RESET)),
            seven_day: Some(window(seven_used, SEVEN_RESET)),
            scoped: Some(vec![ScopedQuotaWindow {
                used_percent: fable_used,
                remaining_percent: 100.0 - fable_used,
                resets_at: Some(SCOPED_RESET.into()),
                checked_at: 0,
                id: "claude-weekly-scoped-claude-fable-5-1".into(),
                title: "Fable only".into(),
                model_id: Some("claude-fable-5-1".into()),
                model_name: "Fable".into(),
            }]),
            ..Default::default()
        }
    }

    fn policy(five: f64, seven: f64, fail_closed: bool) -> QuotaPolicy {
        QuotaPolicy {
            minimum_remaining: MinimumRemaining([five, seven]),
            fail_closed_on_unknown_quota: fail_closed,
        }
    }

    fn blocked(reason: BlockReason, until: Option<i64>) -> QuotaEvaluation {
        QuotaEvaluation { passes: false, reason: Some(reason), blocked_until: until }
    }

    #[test]
    fn healthy_snapshot_passes() {
        let eval = evaluate_quota(
            Some(&snapshot(9.0, 68.0, 22.0)),
            &policy(10.0, 10.0, true),
            Some("claude-fable-5-1"),
        );
        assert_eq!(eval, QuotaEvaluation::pass());
    }

    #[test]
    fn threshold_is_inclusive() {
        let quota = snapshot(80.0, 0.0, 0.0);
        assert!(evaluate_quota(Some(&quota), &policy(20.0, 0.0, false), None).passes);
        assert_eq!(
            evaluate_quota(Some(&quota), &policy(20.5, 0.0, false), None),
            blocked(BlockReason::Window(WindowKind::FiveHour), Some(FIVE_RESET_MS))
        );
    }

    #[test]
    fn seven_day_below_threshold_blocks_until_its_reset() {
        let eval = evaluate_quota(Some(&snapshot(9.0, 95.0, 0.0)), &policy(0.0, 10.0, false), None);
        assert_eq!(eval, blocked(BlockReason::Window(WindowKind::SevenDay), Some(SEVEN_RESET_MS)));
        assert_eq!(eval.reason.unwrap().as_str(), "seven_day");
    }

    #[test]
    fn fully_used_window_blocks_with_default_threshold() {
        let eval = evaluate_quota(Some(&snapshot(100.0, 50.0, 0.0)), &QuotaPolicy::default(), None);
        assert_eq!(eval, blocked(BlockReason::Window(WindowKind::FiveHour), Some(FIVE_RESET_MS)));
        assert!(
            evaluate_quota(Some(&snapshot(99.0, 50.0, 0.0)), &QuotaPolicy::default(), None).passes
        );
    }

    #[test]
    fn exhausted_scoped_window_blocks_only_its_model() {
        let quota = snapshot(9.0, 68.0, 100.0);
        let eval = evaluate_quota(Some(&quota), &QuotaPolicy::default(), Some("claude-fable-5-1"));
        assert_eq!(eval, blocked(BlockReason::Scoped, Some(SCOPED_RESET_MS)));
        assert_eq!(eval.reason.unwrap().as_str(), "scoped");
        assert!(
            evaluate_quota(Some(&quota), &QuotaPolicy::default(), Some("claude-sonnet-4-5")).passes
        );
        assert!(evaluate_quota(Some(&quota), &QuotaPolicy::default(), None).passes);
    }

    #[test]
    fn scoped_window_ignores_minimum_thresholds() {
        let quota = snapshot(0.0, 0.0, 99.0);
        assert!(evaluate_quota(Some(&quota), &policy(50.0, 50.0, false), Some("fable")).passes);
    }

    #[test]
    fn several_blockers_report_the_latest_reset() {
        let quota = snapshot(100.0, 100.0, 100.0);
        let eval = evaluate_quota(Some(&quota), &QuotaPolicy::default(), Some("claude-fable-5-1"));
        assert_eq!(eval, blocked(BlockReason::Window(WindowKind::SevenDay), Some(SEVEN_RESET_MS)));

        let mut quota = snapshot(100.0, 50.0, 100.0);
        quota.seven_day = None;
        let eval = evaluate_quota(Some(&quota), &policy(0.0, 0.0, true), Some("fable"));
        assert_eq!(
            eval,
            blocked(BlockReason::Scoped, Some(SCOPED_RESET_MS)),
            "a known reset beats an unknown window"
        );
    }

    #[test]
    fn blocker_without_reset_has_no_blocked_until() {
        let mut quota = snapshot(100.0, 0.0, 0.0);
        quota.five_hour.as_mut().unwrap().resets_at = Some("soon".into());
        assert_eq!(
            evaluate_quota(Some(&quota), &QuotaPolicy::default(), None),
            blocked(BlockReason::Window(WindowKind::FiveHour), None)
        );
    }

    #[test]
    fn past_reset_is_still_evaluated_as_given() {
        let quota = QuotaSnapshot {
            five_hour: Some(window(100.0, "2000-01-01T00:00:00Z")),
            ..Default::default()
        };
        assert_eq!(
            evaluate_quota(Some(&quota), &QuotaPolicy::default(), None),
            blocked(BlockReason::Window(WindowKind::FiveHour), Some(946_684_800_000))
        );
    }

    #[test]
    fn missing_window_passes_unless_fail_closed() {
        let mut quota = snapshot(9.0, 0.0, 0.0);
        quota.seven_day = None;
        assert!(evaluate_quota(Some(&quota), &policy(0.0, 0.0, false), None).passes);
        assert_eq!(
            evaluate_quota(Some(&quota), &policy(0.0, 0.0, true), None),
            blocked(BlockReason::Unknown, None)
        );
    }

    #[test]
    fn missing_snapshot_fails_closed_by_default_and_passes_when_open() {
        assert_eq!(
            evaluate_quota(None, &policy(0.0, 0.0, false), Some("fable")),
            QuotaEvaluation::pass()
        );
        assert_eq!(
            evaluate_quota(None, &QuotaPolicy::default(), Some("fable")),
            blocked(BlockReason::Unknown, None)
        );
        let eval = evaluate_quota(None, &policy(0.0, 0.0, true), None);
        assert_eq!(eval, blocked(BlockReason::Unknown, None));
        assert_eq!(eval.reason.unwrap().as_str(), "unknown");
    }

    #[test]
    fn reason_strings() {
        assert_eq!(BlockReason::Window(WindowKind::FiveHour).as_str(), "five_hour");
        assert_eq!(BlockReason::Window(WindowKind::SevenDay).as_str(), "seven_day");
        assert_eq!(BlockReason::Scoped.as_str(), "scoped");
        assert_eq!(BlockReason::Unknown.as_str(), "unknown");
    }

    #[test]
    fn minimum_remaining_reads_canonical_keys_and_aliases() {
        let read = |v: Value| MinimumRemaining::from_value_lenient(&v);
        let m = |five_hour, seven_day| MinimumRemaining([five_hour, seven_day]);
        assert_eq!(read(json!({"five_hour": 10, "seven_day": 20.5})), m(10.0, 20.5));
        assert_eq!(read(json!({"5h": 15, "1w": 25})), m(15.0, 25.0));
        assert_eq!(
            read(json!({"five_hour": 10, "5h": 90, "seven_day": 20, "1w": 80})),
            m(10.0, 20.0),
            "canonical wins"
        );
        assert_eq!(
            read(json!({"five_hour": "ten", "5h": 30, "seven_day": null, "1w": 40})),
            m(30.0, 40.0),
            "junk canonical falls through to the alias"
        );
        assert_eq!(read(json!({"five_hour": -5, "seven_day": 150})), m(0.0, 100.0));
        assert_eq!(read(json!({"five_hour": true, "1w": [1]})), m(0.0, 0.0));
        assert_eq!(read(json!("nope")), m(0.0, 0.0));
        assert_eq!(read(Value::Null), m(0.0, 0.0));
    }

    #[test]
    fn policy_reads_from_json() {
        let p = QuotaPolicy::from_value_lenient(&json!({
            "minimumRemaining": {"5h": 5, "seven_day": 7},
            "failClosedOnUnknownQuota": true
        }));
        assert_eq!(p, policy(5.0, 7.0, true));
        assert_eq!(
            QuotaPolicy::from_value_lenient(&json!({"failClosedOnUnknownQuota": "yes"})),
            QuotaPolicy::default()
        );
    }

    #[test]
    fn exhausted_until_takes_the_latest_future_reset_of_exhausted_windows() {
        let now = FIVE_RESET_MS - 1_000;
        let none = MinimumRemaining::default();
        assert_eq!(exhausted_until(&snapshot(100.0, 50.0, 100.0), &none, now), Some(FIVE_RESET_MS));
        assert_eq!(exhausted_until(&snapshot(100.0, 100.0, 0.0), &none, now), Some(SEVEN_RESET_MS));
        assert_eq!(
            exhausted_until(&snapshot(99.0, 99.0, 100.0), &none, now),
            None,
            "scoped is not counted"
        );
        let strict = MinimumRemaining([0.0, 40.0]);
        assert_eq!(exhausted_until(&snapshot(10.0, 70.0, 0.0), &strict, now), Some(SEVEN_RESET_MS));
        assert_eq!(exhausted_until(&snapshot(10.0, 60.0, 0.0), &strict, now), None);
    }

    #[test]
    fn exhausted_until_ignores_past_and_unknown_resets() {
        let none = MinimumRemaining::default();
        let quota = snapshot(100.0, 100.0, 0.0);
        assert_eq!(exhausted_until(&quota, &none, SEVEN_RESET_MS), None);
        assert_eq!(exhausted_until(&quota, &none, FIVE_RESET_MS), Some(SEVEN_RESET_MS));
        let mut quota = snapshot(100.0, 0.0, 0.0);
        quota.five_hour.as_mut().unwrap().resets_at = None;
        assert_eq!(exhausted_until(&quota, &none, 0), None);
    }
}
