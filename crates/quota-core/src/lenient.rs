//! Reading a snapshot leniently out of untrusted JSON (host storage, a JavaScript object, an
//! account list), field by field: a junk field is dropped, never the whole snapshot. One set of
//! serde visitors reads both a parsed `Value` and JSON text, so a list of 10,000 snapshots
//! (7 MB) is read straight from its text instead of through a `Value` tree first, which took
//! the JavaScript thread ~110 ms, mostly allocating and freeing that tree.
//!
//! The rules (what counts as junk):
//! - a window needs a finite `usedPercent` (clamped to 0..=100; `remainingPercent` is derived
//!   from it) and a `checkedAt` timestamp; `resetsAt` is kept when it is a non-blank string;
//! - a scoped window also needs a non-blank `id` and `modelName`; `title` defaults to
//!   "<modelName> only"; items of `scoped` that are not such windows are dropped;
//! - text fields are trimmed and kept when non-blank; `fallbackAdvised` when a boolean;
//!   `extraUsage`, `source`, `bindingWindowSource` and `fieldSources` when they read as their
//!   types; a repeated key counts as its last occurrence, as in a `Value`.

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::snapshot::{QuotaSnapshot, QuotaWindow, ScopedQuotaWindow};

/// A snapshot read leniently: `None` when the value is not an object.
pub struct LenientSnapshot(pub Option<QuotaSnapshot>);

impl<'de> Deserialize<'de> for LenientSnapshot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Junk::or(SnapshotVisitor)).map(Self)
    }
}

/// Declares the rule for one kind of leaf: which JSON values it keeps, and as what.
macro_rules! leaf {
    ($name:ident -> $out:ty, $what:literal, |$visitor:ident| { $($method:item)* }) => {
        struct $name(Option<$out>);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct $visitor;

                impl<'de> Visitor<'de> for $visitor {
                    type Value = Option<$out>;

                    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                        formatter.write_str($what)
                    }

                    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                        skip_seq(seq)
                    }

                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                        skip_map(map)
                    }

                    $($method)*
                }

                deserializer.deserialize_any(Junk::or($visitor)).map(Self)
            }
        }
    };
}

leaf!(Finite -> f64, "a finite number", |FiniteVisitor| {
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v).filter(|v| v.is_finite()))
    }
});

leaf!(NonBlank -> String, "a non-blank string", |NonBlankVisitor| {
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let trimmed = v.trim();
        Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
    }
});

leaf!(Flag -> bool, "a boolean", |FlagVisitor| {
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
});

/// A non-negative whole-millisecond timestamp below 9e15 (fractions are truncated), as
/// [`crate::snapshot::timestamp_from_value`] reads one.
fn timestamp(number: Option<f64>) -> Option<i64> {
    number.filter(|n| *n >= 0.0 && *n < 9.0e15).map(|n| n as i64)
}

/// A field read as its own serde type, or dropped: buffered as a (small) `Value` first, since a
/// failed typed read cannot be taken back in the middle of a text.
struct Typed<T>(Option<T>);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Typed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(Self(T::deserialize(&value).ok()))
    }
}

/// Wraps a visitor that understands some JSON types: every other value is consumed whole and
/// read as `None`.
struct Junk<V>(V);

impl<V> Junk<V> {
    fn or(visitor: V) -> Self {
        Self(visitor)
    }
}

impl<'de, T, V: Visitor<'de, Value = Option<T>>> Visitor<'de> for Junk<V> {
    type Value = Option<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(formatter)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.0.visit_bool::<E>(v).or(Ok(None))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.0.visit_i64::<E>(v).or(Ok(None))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.0.visit_u64::<E>(v).or(Ok(None))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.0.visit_f64::<E>(v).or(Ok(None))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.0.visit_str::<E>(v).or(Ok(None))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(map)
    }
}

/// The default of a visitor that reads no arrays: consume one and answer `None`.
fn skip_seq<'de, A: SeqAccess<'de>, T>(mut seq: A) -> Result<Option<T>, A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(None)
}

/// The default of a visitor that reads no objects: consume one and answer `None`.
fn skip_map<'de, A: MapAccess<'de>, T>(mut map: A) -> Result<Option<T>, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(None)
}

#[derive(serde::Deserialize)]
#[serde(field_identifier)]
enum WindowKey {
    #[serde(rename = "usedPercent")]
    UsedPercent,
    #[serde(rename = "checkedAt")]
    CheckedAt,
    #[serde(rename = "resetsAt")]
    ResetsAt,
    #[serde(rename = "id")]
    Id,
    #[serde(rename = "title")]
    Title,
    #[serde(rename = "modelId")]
    ModelId,
    #[serde(rename = "modelName")]
    ModelName,
    #[serde(other)]
    Other,
}

/// Every field a (scoped) window may have, as read.
#[derive(Default)]
struct WindowFields {
    used_percent: Option<f64>,
    checked_at: Option<f64>,
    resets_at: Option<String>,
    id: Option<String>,
    title: Option<String>,
    model_id: Option<String>,
    model_name: Option<String>,
}

impl WindowFields {
    fn window(&self) -> Option<QuotaWindow> {
        Some(QuotaWindow::from_used(
            self.used_percent?,
            self.resets_at.clone(),
            timestamp(self.checked_at)?,
        ))
    }

    fn scoped(self) -> Option<ScopedQuotaWindow> {
        let window = self.window()?;
        let id = self.id?;
        let model_name = self.model_name?;
        Some(ScopedQuotaWindow {
            used_percent: window.used_percent,
            remaining_percent: window.remaining_percent,
            resets_at: window.resets_at,
            checked_at: window.checked_at,
            title: self.title.unwrap_or_else(|| format!("{model_name} only")),
            id,
            model_id: self.model_id,
            model_name,
        })
    }
}

struct WindowFieldsVisitor;

impl<'de> Visitor<'de> for WindowFieldsVisitor {
    type Value = Option<WindowFields>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a quota window object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = WindowFields::default();
        while let Some(key) = map.next_key::<WindowKey>()? {
            match key {
                WindowKey::UsedPercent => fields.used_percent = map.next_value::<Finite>()?.0,
                WindowKey::CheckedAt => fields.checked_at = map.next_value::<Finite>()?.0,
                WindowKey::ResetsAt => fields.resets_at = map.next_value::<NonBlank>()?.0,
                WindowKey::Id => fields.id = map.next_value::<NonBlank>()?.0,
                WindowKey::Title => fields.title = map.next_value::<NonBlank>()?.0,
                WindowKey::ModelId => fields.model_id = map.next_value::<NonBlank>()?.0,
                WindowKey::ModelName => fields.model_name = map.next_value::<NonBlank>()?.0,
                WindowKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(fields))
    }
}

/// A window's fields when the value is an object.
struct Window(Option<WindowFields>);

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Junk::or(WindowFieldsVisitor)).map(Self)
    }
}

/// `scoped`: the items that are scoped windows, when it is an array.
struct Scoped(Option<Vec<ScopedQuotaWindow>>);

impl<'de> Deserialize<'de> for Scoped {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScopedVisitor;

        impl<'de> Visitor<'de> for ScopedVisitor {
            type Value = Option<Vec<ScopedQuotaWindow>>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an array of scoped windows")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut windows = Vec::new();
                while let Some(Window(fields)) = seq.next_element()? {
                    windows.extend(fields.and_then(WindowFields::scoped));
                }
                Ok(Some(windows))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map)
            }
        }

        deserializer.deserialize_any(Junk::or(ScopedVisitor)).map(Self)
    }
}

#[derive(serde::Deserialize)]
#[serde(field_identifier)]
enum SnapshotKey {
    #[serde(rename = "five_hour")]
    FiveHour,
    #[serde(rename = "seven_day")]
    SevenDay,
    #[serde(rename = "scoped")]
    Scoped,
    #[serde(rename = "extraUsage")]
    ExtraUsage,
    #[serde(rename = "bindingWindow")]
    BindingWindow,
    #[serde(rename = "bindingWindowSource")]
    BindingWindowSource,
    #[serde(rename = "fallbackAdvised")]
    FallbackAdvised,
    #[serde(rename = "source")]
    Source,
    #[serde(rename = "checkedAt")]
    CheckedAt,
    #[serde(rename = "accountIdentity")]
    AccountIdentity,
    #[serde(rename = "fieldSources")]
    FieldSources,
    #[serde(other)]
    Other,
}

struct SnapshotVisitor;

impl<'de> Visitor<'de> for SnapshotVisitor {
    type Value = Option<QuotaSnapshot>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a quota snapshot object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut snapshot = QuotaSnapshot::default();
        while let Some(key) = map.next_key::<SnapshotKey>()? {
            match key {
                SnapshotKey::FiveHour => {
                    snapshot.five_hour = map.next_value::<Window>()?.0.and_then(|w| w.window());
                }
                SnapshotKey::SevenDay => {
                    snapshot.seven_day = map.next_value::<Window>()?.0.and_then(|w| w.window());
                }
                SnapshotKey::Scoped => snapshot.scoped = map.next_value::<Scoped>()?.0,
                SnapshotKey::ExtraUsage => snapshot.extra_usage = map.next_value::<Typed<_>>()?.0,
                SnapshotKey::BindingWindow => {
                    snapshot.binding_window = map.next_value::<NonBlank>()?.0;
                }
                SnapshotKey::BindingWindowSource => {
                    snapshot.binding_window_source = map.next_value::<Typed<_>>()?.0;
                }
                SnapshotKey::FallbackAdvised => {
                    snapshot.fallback_advised = map.next_value::<Flag>()?.0;
                }
                SnapshotKey::Source => snapshot.source = map.next_value::<Typed<_>>()?.0,
                SnapshotKey::CheckedAt => {
                    snapshot.checked_at = timestamp(map.next_value::<Finite>()?.0);
                }
                SnapshotKey::AccountIdentity => {
                    snapshot.account_identity = map.next_value::<NonBlank>()?.0;
                }
                SnapshotKey::FieldSources => {
                    snapshot.field_sources = map.next_value::<Typed<_>>()?.0;
                }
                SnapshotKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        snapshot.settle_field_sources();
        Ok(Some(snapshot))
    }
}

#[cfg(test)]
mod tests {
    //! The Value-walking reader this module replaced is the oracle: both must read every input,
    //! junk included, the same way, from a `Value` and from JSON text.
    use super::*;
    use crate::snapshot::{finite, non_blank_string, timestamp_from_value};
    use serde_json::json;

    fn snapshot_oracle(value: &Value) -> Option<QuotaSnapshot> {
        let object = value.as_object()?;
        let field = |name: &str| object.get(name);
        let snapshot = QuotaSnapshot {
            five_hour: field("five_hour").and_then(window_from_value_oracle),
            seven_day: field("seven_day").and_then(window_from_value_oracle),
            scoped: field("scoped")
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(scoped_from_value_oracle).collect()),
            extra_usage: field("extraUsage").and_then(|v| Deserialize::deserialize(v).ok()),
            binding_window: field("bindingWindow").and_then(non_blank_string),
            binding_window_source: field("bindingWindowSource")
                .and_then(|v| Deserialize::deserialize(v).ok()),
            fallback_advised: field("fallbackAdvised").and_then(Value::as_bool),
            source: field("source").and_then(|v| Deserialize::deserialize(v).ok()),
            checked_at: field("checkedAt").and_then(timestamp_from_value),
            account_identity: field("accountIdentity").and_then(non_blank_string),
            field_sources: field("fieldSources").and_then(|v| Deserialize::deserialize(v).ok()),
        };
        Some(snapshot.with_settled_field_sources())
    }

    fn window_from_value_oracle(value: &Value) -> Option<QuotaWindow> {
        let object = value.as_object()?;
        let used = finite(object.get("usedPercent")?)?;
        let checked_at = object.get("checkedAt").and_then(timestamp_from_value)?;
        let resets_at = object.get("resetsAt").and_then(non_blank_string);
        Some(QuotaWindow::from_used(used, resets_at, checked_at))
    }

    fn scoped_from_value_oracle(value: &Value) -> Option<ScopedQuotaWindow> {
        let window = window_from_value_oracle(value)?;
        let object = value.as_object()?;
        let id = object.get("id").and_then(non_blank_string)?;
        let model_name = object.get("modelName").and_then(non_blank_string)?;
        Some(ScopedQuotaWindow {
            used_percent: window.used_percent,
            remaining_percent: window.remaining_percent,
            resets_at: window.resets_at,
            checked_at: window.checked_at,
            title: object
                .get("title")
                .and_then(non_blank_string)
                .unwrap_or_else(|| format!("{model_name} only")),
            id,
            model_id: object.get("modelId").and_then(non_blank_string),
            model_name,
        })
    }

    /// Seeded, so a failing case can be replayed.
    type Dice = fastrand::Rng;

    /// Any leaf a host might put anywhere, good or junk.
    fn leaf(dice: &mut Dice) -> Value {
        let leaves = [
            json!(null),
            json!(true),
            json!(0),
            json!(-5),
            json!(42.5),
            json!(140),
            json!(1e20),
            json!(8_999_999_999_999_999_i64),
            json!(9_000_000_000_000_000_i64),
            json!(1_800_000_000_123_i64),
            json!(1_800_000_000_123.9),
            json!(""),
            json!("  "),
            json!(" Fable "),
            json!("poll"),
            json!("headers"),
            json!("2026-09-14T02:10:00Z"),
            json!([]),
            json!([1, "x"]),
            json!({}),
            json!({ "used": 1 }),
        ];
        leaves[dice.usize(..leaves.len())].clone()
    }

    fn window(dice: &mut Dice) -> Value {
        let mut object = serde_json::Map::new();
        for key in [
            "usedPercent",
            "remainingPercent",
            "checkedAt",
            "resetsAt",
            "id",
            "title",
            "modelId",
            "modelName",
            "other",
        ] {
            if dice.u64(..4) != 0 {
                let value = match key {
                    "usedPercent" if dice.u64(..2) == 0 => json!(dice.u64(..120)),
                    "checkedAt" if dice.u64(..2) == 0 => {
                        json!(1_800_000_000_000_u64 + dice.u64(..1000))
                    }
                    _ => leaf(dice),
                };
                object.insert(key.to_owned(), value);
            }
        }
        if dice.u64(..8) == 0 {
            leaf(dice)
        } else {
            Value::Object(object)
        }
    }

    fn snapshot(dice: &mut Dice) -> Value {
        let money = json!({ "amountMinor": 1261, "currency": "USD", "exponent": 2 });
        let mut object = serde_json::Map::new();
        for key in [
            "five_hour",
            "seven_day",
            "scoped",
            "extraUsage",
            "bindingWindow",
            "bindingWindowSource",
            "fallbackAdvised",
            "status",
            "source",
            "checkedAt",
            "accountIdentity",
            "fieldSources",
            "junk",
        ] {
            if dice.u64(..3) == 0 {
                continue;
            }
            let value = match (key, dice.u64(..3)) {
                ("five_hour" | "seven_day", 0 | 1) => window(dice),
                ("scoped", 0 | 1) => {
                    Value::Array((0..dice.u64(..4)).map(|_| window(dice)).collect())
                }
                ("extraUsage", 0) => {
                    json!({ "used": money, "limit": money, "utilizationPercent": 12.6, "exhausted": false })
                }
                ("fieldSources", 0) => json!({ "five_hour": "headers", "scoped": "poll" }),
                ("fieldSources", 1) => json!({ "five_hour": "sideways" }),
                _ => leaf(dice),
            };
            object.insert(key.to_owned(), value);
        }
        if dice.u64(..10) == 0 {
            leaf(dice)
        } else {
            Value::Object(object)
        }
    }

    fn from_text(text: &str) -> Option<QuotaSnapshot> {
        serde_json::from_str::<LenientSnapshot>(text).unwrap().0
    }

    #[test]
    fn reads_every_input_as_the_value_walking_reader_did_from_a_value_and_from_text() {
        let mut dice = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
        let mut kept = 0;
        for case in 0..20_000 {
            let value = snapshot(&mut dice);
            let expected = snapshot_oracle(&value);
            kept += usize::from(expected.as_ref().is_some_and(QuotaSnapshot::has_windows));
            assert_eq!(QuotaSnapshot::from_value_lenient(&value), expected, "case {case}: {value}");
            assert_eq!(from_text(&value.to_string()), expected, "case {case}: {value}");
        }
        assert!(kept > 2_000, "the generator makes usable snapshots too ({kept})");
    }

    #[test]
    fn a_repeated_key_counts_as_its_last_occurrence_as_in_a_value() {
        let text = r#"{"five_hour":{"usedPercent":5,"checkedAt":1,"usedPercent":"x"},
            "seven_day":{"usedPercent":"x","checkedAt":2,"usedPercent":7},
            "status":"first","status":"  last  "}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let read = from_text(text).unwrap();
        assert_eq!(Some(read.clone()), snapshot_oracle(&value));
        assert!(read.five_hour.is_none());
        assert_eq!(read.seven_day.unwrap().used_percent, 7.0);
    }

    #[test]
    fn a_list_of_snapshots_reads_junk_items_as_none() {
        let text =
            r#"[{"five_hour":{"usedPercent":5,"checkedAt":1}}, 7, null, [1], {"x":{"y":[{}]}}]"#;
        let read: Vec<LenientSnapshot> = serde_json::from_str(text).unwrap();
        let kinds: Vec<bool> = read.iter().map(|s| s.0.is_some()).collect();
        assert_eq!(kinds, [true, false, false, false, true]);
    }
}
