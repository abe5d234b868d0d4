//! Reading a snapshot leniently out of untrusted JSON (docs/headers.md#lenient-reading), from a
//! `Value` or straight from JSON text: a `Value` tree of 10,000 snapshots (7 MB) took the
//! JavaScript thread ~110 ms. serde's derive refuses a repeated key, hence the key-by-key
//! [`Fields`] reader; leaves are `serde_with`'s [`DefaultOnError`].

use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    DeserializeOwned, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::Deserialize;
use serde_json::Value;
use serde_with::de::DeserializeAsWrap;
use serde_with::DefaultOnError;

use crate::snapshot::{QuotaSnapshot, QuotaWindow, ScopedQuotaWindow, WindowKind};

/// A snapshot read leniently: `None` when the value is not an object.
pub struct LenientSnapshot(pub Option<QuotaSnapshot>);

impl<'de> Deserialize<'de> for LenientSnapshot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Fields(read) = Fields::<QuotaSnapshot>::deserialize(deserializer)?;
        Ok(Self(read.map(|mut snapshot| {
            snapshot.settle_field_sources();
            snapshot
        })))
    }
}

/// A value kept when it reads as `T`: `serde_with` buffers it, so junk is consumed whole.
fn lenient<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    map: &mut A,
) -> Result<Option<T>, A::Error> {
    Ok(map.next_value::<DeserializeAsWrap<Option<T>, DefaultOnError>>()?.into_inner())
}

/// A text field, trimmed, when it is a non-blank string.
fn non_blank<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<String>, A::Error> {
    let text: Option<String> = lenient(map)?;
    Ok(text.and_then(|text| match text.trim() {
        "" => None,
        trimmed if trimmed.len() == text.len() => Some(text),
        trimmed => Some(trimmed.to_owned()),
    }))
}

/// A field kept when it reads as its own serde type. Read through a (small) `Value` rather than
/// [`lenient`], so that a repeated key inside it also counts as its last occurrence.
fn typed<'de, T: DeserializeOwned, A: MapAccess<'de>>(map: &mut A) -> Result<Option<T>, A::Error> {
    Ok(T::deserialize(&map.next_value::<Value>()?).ok())
}

/// A timestamp, as [`crate::snapshot::timestamp`] reads one.
fn timestamp<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<i64>, A::Error> {
    Ok(lenient(map)?.and_then(crate::snapshot::timestamp))
}

/// An object read key by key into `T`; any other value reads as `None`. Not [`lenient`]: buffering
/// whole objects, where the bytes are, made seeding 10,000 snapshots measurably slower.
struct Fields<T>(Option<T>);

/// How one kind of object takes each of its keys.
trait ReadFields<'de>: Default {
    type Key: Deserialize<'de>;

    fn read<A: MapAccess<'de>>(&mut self, key: Self::Key, map: &mut A) -> Result<(), A::Error>;
}

impl<'de, T: ReadFields<'de>> Deserialize<'de> for Fields<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldsVisitor(PhantomData))
    }
}

struct FieldsVisitor<T>(PhantomData<T>);

/// The visits of values that are not objects (`null` is a unit): each reads as `None`.
macro_rules! not_an_object {
    ($($visit:ident($($value:ty)?)),*) => {$(
        fn $visit<E>(self $(, _: $value)?) -> Result<Self::Value, E> {
            Ok(Fields(None))
        }
    )*};
}

impl<'de, T: ReadFields<'de>> Visitor<'de> for FieldsVisitor<T> {
    type Value = Fields<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = T::default();
        while let Some(key) = map.next_key()? {
            fields.read(key, &mut map)?;
        }
        Ok(Fields(Some(fields)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Fields(None))
    }

    not_an_object!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64));
    not_an_object!(visit_str(&str), visit_unit());
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum WindowKey {
    UsedPercent,
    CheckedAt,
    ResetsAt,
    Id,
    Title,
    ModelId,
    ModelName,
    #[serde(other)]
    Other,
}

/// Every field a (scoped) window may have, as read.
#[derive(Default)]
pub(crate) struct WindowFields {
    pub used_percent: Option<f64>,
    pub checked_at: Option<i64>,
    pub resets_at: Option<String>,
    pub id: Option<String>,
    pub title: Option<String>,
    pub model_id: Option<String>,
    pub model_name: Option<String>,
}

impl<'de> ReadFields<'de> for WindowFields {
    type Key = WindowKey;

    fn read<A: MapAccess<'de>>(&mut self, key: WindowKey, map: &mut A) -> Result<(), A::Error> {
        match key {
            WindowKey::UsedPercent => self.used_percent = lenient(map)?,
            WindowKey::CheckedAt => self.checked_at = timestamp(map)?,
            WindowKey::ResetsAt => self.resets_at = non_blank(map)?,
            WindowKey::Id => self.id = non_blank(map)?,
            WindowKey::Title => self.title = non_blank(map)?,
            WindowKey::ModelId => self.model_id = non_blank(map)?,
            WindowKey::ModelName => self.model_name = non_blank(map)?,
            WindowKey::Other => drop(map.next_value::<IgnoredAny>()?),
        }
        Ok(())
    }
}

impl WindowFields {
    fn window(&self) -> Option<QuotaWindow> {
        Some(QuotaWindow::from_used(self.used_percent?, self.resets_at.clone(), self.checked_at?))
    }

    pub fn scoped(self) -> Option<ScopedQuotaWindow> {
        let window = self.window()?;
        let model_name = self.model_name?;
        Some(ScopedQuotaWindow {
            used_percent: window.used_percent,
            remaining_percent: window.remaining_percent,
            resets_at: window.resets_at,
            checked_at: window.checked_at,
            title: self.title.unwrap_or_else(|| format!("{model_name} only")),
            id: self.id?,
            model_id: self.model_id,
            model_name,
        })
    }
}

/// A snapshot's key: a standard window's name, or one of its other fields.
enum SnapshotKey {
    Window(WindowKind),
    Field(SnapshotField),
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum SnapshotField {
    Scoped,
    ExtraUsage,
    BindingWindow,
    BindingWindowSource,
    FallbackAdvised,
    Source,
    CheckedAt,
    AccountIdentity,
    FieldSources,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for SnapshotKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = SnapshotKey;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a snapshot field name")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<SnapshotKey, E> {
                match WindowKind::named(key) {
                    Some(kind) => Ok(SnapshotKey::Window(kind)),
                    None => {
                        SnapshotField::deserialize(key.into_deserializer()).map(SnapshotKey::Field)
                    }
                }
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> ReadFields<'de> for QuotaSnapshot {
    type Key = SnapshotKey;

    fn read<A: MapAccess<'de>>(&mut self, key: SnapshotKey, map: &mut A) -> Result<(), A::Error> {
        match key {
            SnapshotKey::Window(kind) => {
                let Fields(fields) = map.next_value::<Fields<WindowFields>>()?;
                *self.window_mut(kind) = fields.and_then(|w| w.window());
            }
            SnapshotKey::Field(field) => match field {
                SnapshotField::Scoped => {
                    let items: Option<Vec<Fields<WindowFields>>> = lenient(map)?;
                    self.scoped = items.map(|items| {
                        items.into_iter().filter_map(|Fields(item)| item?.scoped()).collect()
                    });
                }
                SnapshotField::ExtraUsage => self.extra_usage = typed(map)?,
                SnapshotField::BindingWindow => self.binding_window = non_blank(map)?,
                SnapshotField::BindingWindowSource => self.binding_window_source = typed(map)?,
                SnapshotField::FallbackAdvised => self.fallback_advised = lenient(map)?,
                SnapshotField::Source => self.source = typed(map)?,
                SnapshotField::CheckedAt => self.checked_at = timestamp(map)?,
                SnapshotField::AccountIdentity => self.account_identity = non_blank(map)?,
                SnapshotField::FieldSources => self.field_sources = typed(map)?,
                SnapshotField::Other => drop(map.next_value::<IgnoredAny>()?),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The Value-walking reader this module replaced is the oracle: both must read every input,
    //! junk included, the same way, from a `Value` and from JSON text.
    use super::*;
    use crate::snapshot::{finite, non_blank_string, timestamp_from_value};
    use serde_json::{json, Value};

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
