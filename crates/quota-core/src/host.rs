//! The host plugin's storage and account records, read from untrusted JSON (docs/api.md#host-data).

use serde_json::Value;

use super::policy::MinimumRemaining;
use super::snapshot::{
    finite, non_blank_string, timestamp_from_value, ApiErrorRecord, QuotaSnapshot,
};

/// `AccountStorage`, as far as the manager uses it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostStorage {
    pub main_account_id: Option<String>,
    pub check_interval_minutes: Option<f64>,
    pub refresh_every_n_requests: Option<i64>,
    pub minimum_remaining: Option<MinimumRemaining>,
    pub fail_closed_on_unknown_quota: Option<bool>,
    pub main_quota: Option<QuotaSnapshot>,
    pub main_quota_checked_at: Option<i64>,
    pub main_last_error: Option<ApiErrorRecord>,
    pub main_quota_error_generation: Option<u64>,
    pub main_quota_error_cleared_at: Option<i64>,
}

impl HostStorage {
    /// Reads the storage object; junk settings are ignored (docs/api.md#host-data).
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let object =
            value.as_object().ok_or_else(|| "storage must be an object or null".to_owned())?;
        let setting = |name: &str| object.get("quota").and_then(|quota| quota.get(name));
        let number = |name: &str| setting(name).and_then(finite).filter(|n| *n >= 0.0);
        Ok(Self {
            main_account_id: object.get("mainAccountId").and_then(non_blank_string),
            check_interval_minutes: number("checkIntervalMinutes").filter(|m| *m >= 1.0),
            refresh_every_n_requests: number("refreshEveryNRequests").map(|n| n as i64),
            minimum_remaining: setting("minimumRemaining")
                .map(MinimumRemaining::from_value_lenient),
            fail_closed_on_unknown_quota: setting("failClosedOnUnknownQuota")
                .and_then(Value::as_bool),
            main_quota: setting("mainQuota").and_then(QuotaSnapshot::from_value_lenient),
            main_quota_checked_at: setting("mainQuotaCheckedAt").and_then(timestamp_from_value),
            main_last_error: setting("mainLastQuotaApiError")
                .and_then(ApiErrorRecord::from_value_lenient),
            main_quota_error_generation: number("mainQuotaErrorGeneration")
                .filter(|n| n.fract() == 0.0 && *n <= 9.0e15)
                .map(|n| n as u64),
            main_quota_error_cleared_at: number("mainQuotaErrorClearedAt").map(|n| n as i64),
        })
    }
}

/// A fallback account record (`FallbackAccount` in docs/api.md#data-types).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FallbackAccount {
    pub id: String,
    pub enabled: bool,
    pub access: Option<String>,
    pub auth_lineage_id: Option<String>,
    /// Boxed, like the error: a list of 10,000 accounts moved 550 bytes per account otherwise.
    pub quota: Option<Box<QuotaSnapshot>>,
    pub last_error: Option<Box<ApiErrorRecord>>,
    pub expires: Option<i64>,
}

impl FallbackAccount {
    /// The `{ authLineageId }` argument of the fallback methods (no `id` needed).
    pub fn lineage_of(value: &Value, id: &str, name: &str) -> Result<Self, String> {
        let object = value.as_object().ok_or_else(|| format!("{name} must be an object"))?;
        let auth_lineage_id = AccountFields::of_object(object).text("authLineageId", &name)?;
        Ok(Self { id: id.to_owned(), enabled: true, auth_lineage_id, ..Self::default() })
    }

    /// Without a resolver, `access` counts only before `expires` (docs/api.md#host-data).
    pub fn drop_expired_access(&mut self, now: i64) {
        if self.expires.is_none_or(|at| at <= now) {
            self.access = None;
        }
    }
}

/// The fields of an account record the manager reads, in the order of the facade's compact rows
/// (`index.js` takes this list from the binding): the one definition of that layout. In a
/// compact row of a seeding, `quota` holds a bound on the snapshot's `checkedAt` instead.
pub const ACCOUNT_FIELDS: [&str; 8] = [
    "id",
    "enabled",
    "type",
    "authLineageId",
    "access",
    "expires",
    "lastQuotaRefreshError",
    "quota",
];

/// The fields of one account record, however it arrived (an object, or a compact row).
#[derive(Clone, Copy, Default)]
pub struct AccountFields<'a>([Option<&'a Value>; ACCOUNT_FIELDS.len()]);

impl<'a> AccountFields<'a> {
    pub fn of_object(object: &'a serde_json::Map<String, Value>) -> Self {
        Self(ACCOUNT_FIELDS.map(|name| object.get(name)))
    }

    /// A compact row: `ACCOUNT_FIELDS.len()` values in that order.
    pub fn of_row(row: &'a [Value]) -> Self {
        Self(std::array::from_fn(|at| row.get(at)))
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0[Self::at(name)].filter(|value| !value.is_null())
    }

    fn take(&mut self, name: &str) -> Option<&'a Value> {
        self.0[Self::at(name)].take()
    }

    fn at(name: &str) -> usize {
        ACCOUNT_FIELDS.iter().position(|field| *field == name).expect("a field of the list")
    }

    /// An optional string field: absent, `null` and `''` are none; anything else is an error.
    fn text(&self, field: &str, name: &dyn std::fmt::Display) -> Result<Option<String>, String> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone()).filter(|t| !t.is_empty())),
            Some(_) => Err(format!("{name}.{field} must be a string")),
        }
    }

    /// The account, or the error naming the offending field; `name` is formatted only then.
    fn read(&self, name: impl std::fmt::Display) -> Result<FallbackAccount, String> {
        let id = match self.get("id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
            _ => return Err(format!("{name}.id must be a non-empty string")),
        };
        let enabled = match self.get("enabled") {
            None => true,
            Some(Value::Bool(enabled)) => *enabled,
            Some(_) => return Err(format!("{name}.enabled must be a boolean")),
        };
        Ok(FallbackAccount {
            access: self.text("access", &name)?,
            auth_lineage_id: self.text("authLineageId", &name)?,
            quota: self.get("quota").and_then(QuotaSnapshot::from_value_lenient).map(Box::new),
            last_error: self
                .get("lastQuotaRefreshError")
                .and_then(ApiErrorRecord::from_value_lenient)
                .map(Box::new),
            expires: self.get("expires").and_then(timestamp_from_value),
            id,
            enabled,
        })
    }
}

/// An account list read and checked one item at a time (docs/api.md#host-data).
#[derive(Default)]
pub struct AccountList {
    pub accounts: Vec<FallbackAccount>,
    /// Each kept account's index in the host's list.
    pub indices: Vec<u32>,
    /// Each kept account's bound on its snapshot's `checkedAt` ([`ACCOUNT_FIELDS`]).
    pub bounds: Vec<Option<f64>>,
    /// An api-key account or a repeated id was dropped.
    pub dropped_any: bool,
    seen: std::collections::HashSet<String>,
}

impl AccountList {
    /// Reads a whole list of account objects.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let items = value.as_array().ok_or_else(|| "accounts must be an array".to_owned())?;
        let mut list = Self::default();
        for (index, item) in items.iter().enumerate() {
            list.push(index, item.as_object().map(AccountFields::of_object), false)?;
        }
        Ok(list)
    }

    /// Reads the host's item `index` (`None`: not an object); `quota_is_bound`: a seeding's row.
    pub fn push(
        &mut self,
        index: usize,
        fields: Option<AccountFields>,
        quota_is_bound: bool,
    ) -> Result<(), String> {
        let mut fields = fields.ok_or_else(|| format!("accounts[{index}] must be an object"))?;
        if fields.get("type").and_then(Value::as_str) == Some("api") {
            self.dropped_any = true;
            return Ok(());
        }
        let bound = quota_is_bound.then(|| fields.take("quota").and_then(Value::as_f64));
        let account = fields.read(format_args!("accounts[{index}]"))?;
        if !self.seen.insert(account.id.clone()) {
            self.dropped_any = true;
            return Ok(());
        }
        self.indices.push(u32::try_from(index).unwrap_or(u32::MAX));
        self.bounds.push(bound.flatten());
        self.accounts.push(account);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::WindowKind;
    use serde_json::json;

    #[test]
    fn storage_reads_settings_and_ignores_junk() {
        let storage = HostStorage::from_value(&json!({
            "mainAccountId": "alice",
            "quota": {
                "checkIntervalMinutes": 0.5,
                "refreshEveryNRequests": 10,
                "minimumRemaining": { "5h": 20 },
                "failClosedOnUnknownQuota": "yes",
                "mainQuotaCheckedAt": 1234,
                "mainQuota": { "seven_day": { "usedPercent": 50, "checkedAt": 1234 } }
            }
        }))
        .unwrap();
        assert_eq!(storage.main_account_id.as_deref(), Some("alice"));
        assert_eq!(storage.check_interval_minutes, None, "below the 1 minute floor");
        assert_eq!(storage.refresh_every_n_requests, Some(10));
        assert_eq!(storage.minimum_remaining.unwrap().of(WindowKind::FiveHour), 20.0);
        assert_eq!(storage.fail_closed_on_unknown_quota, None);
        assert_eq!(storage.main_quota.unwrap().seven_day.unwrap().used_percent, 50.0);
        assert!(HostStorage::from_value(&json!(3)).is_err());
    }

    #[test]
    fn accounts_name_the_bad_field_and_drop_duplicates() {
        let error = AccountList::from_value(&json!([{ "id": "a" }, { "id": 3 }]))
            .map(|list| list.accounts)
            .unwrap_err();
        assert_eq!(error, "accounts[1].id must be a non-empty string");
        let error = AccountList::from_value(&json!([{ "id": "a", "enabled": "no" }]))
            .map(|list| list.accounts)
            .unwrap_err();
        assert_eq!(error, "accounts[0].enabled must be a boolean");
        let accounts = AccountList::from_value(&json!([
            { "id": "a", "access": "t1" },
            { "id": "a", "access": "t2" },
            { "id": "b", "quota": 7 }
        ]))
        .unwrap()
        .accounts;
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].access.as_deref(), Some("t1"));
        assert!(accounts[1].quota.is_none());
    }
}
