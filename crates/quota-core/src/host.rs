//! The host plugin's own data, read from untrusted JSON: its `AccountStorage` (settings and the
//! persisted main quota) and its fallback account records. Wrong types at the top of a record are
//! reported (the binding turns them into a `TypeError`); junk inside a snapshot is dropped field
//! by field.

use serde_json::Value;

use super::policy::MinimumRemaining;
use super::snapshot::{non_blank_string, timestamp_from_value, ApiErrorRecord, QuotaSnapshot};

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
    /// The error generation the host persisted (`mainQuotaErrorGeneration`).
    pub main_quota_error_generation: Option<u64>,
    /// When the host last saw the main error cleared (`mainQuotaErrorClearedAt`).
    pub main_quota_error_cleared_at: Option<i64>,
}

impl HostStorage {
    /// Reads the storage object; junk settings are ignored, not fatal, because the plugin wrote
    /// this file itself and a bad value in it must not stop the manager.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let object =
            value.as_object().ok_or_else(|| "storage must be an object or null".to_owned())?;
        let quota = object.get("quota").and_then(Value::as_object);
        let setting = |name: &str| quota.and_then(|q| q.get(name));
        Ok(Self {
            main_account_id: object.get("mainAccountId").and_then(non_blank_string),
            check_interval_minutes: setting("checkIntervalMinutes")
                .and_then(Value::as_f64)
                .filter(|m| m.is_finite() && *m >= 1.0),
            refresh_every_n_requests: setting("refreshEveryNRequests")
                .and_then(Value::as_f64)
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(|n| n as i64),
            minimum_remaining: setting("minimumRemaining")
                .map(MinimumRemaining::from_value_lenient),
            fail_closed_on_unknown_quota: setting("failClosedOnUnknownQuota")
                .and_then(Value::as_bool),
            main_quota: setting("mainQuota").and_then(QuotaSnapshot::from_value_lenient),
            main_quota_checked_at: setting("mainQuotaCheckedAt").and_then(timestamp_from_value),
            main_last_error: setting("mainLastQuotaApiError")
                .and_then(ApiErrorRecord::from_value_lenient),
            main_quota_error_generation: setting("mainQuotaErrorGeneration")
                .and_then(Value::as_f64)
                .filter(|n| n.is_finite() && *n >= 0.0 && n.fract() == 0.0 && *n <= 9.0e15)
                .map(|n| n as u64),
            main_quota_error_cleared_at: setting("mainQuotaErrorClearedAt")
                .and_then(Value::as_f64)
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(|n| n as i64),
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
    /// When `access` expires (Unix ms); without a resolver, `access` is used only before then.
    pub expires: Option<i64>,
}

impl FallbackAccount {
    /// An API-key account (`type: 'api'`): it has no quota, so it is ignored like an unlisted one.
    pub fn is_api_key_account(value: &Value) -> bool {
        value.get("type").and_then(Value::as_str) == Some("api")
    }

    /// The `{ authLineageId }` argument of the fallback methods (no `id` needed).
    pub fn lineage_of(value: &Value, id: &str, name: &str) -> Result<Self, String> {
        let object = value.as_object().ok_or_else(|| format!("{name} must be an object"))?;
        let auth_lineage_id = match object.get("authLineageId") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()).filter(|t| !t.is_empty()),
            Some(_) => return Err(format!("{name}.authLineageId must be a string")),
        };
        Ok(Self { id: id.to_owned(), enabled: true, auth_lineage_id, ..Self::default() })
    }

    /// Reads one account; `Err` names the offending field for a `TypeError`.
    pub fn from_value(value: &Value, name: &str) -> Result<Self, String> {
        let object = value.as_object().ok_or_else(|| format!("{name} must be an object"))?;
        AccountFields {
            id: object.get("id"),
            enabled: object.get("enabled"),
            access: object.get("access"),
            auth_lineage_id: object.get("authLineageId"),
            quota: object.get("quota"),
            last_error: object.get("lastQuotaRefreshError"),
            expires: object.get("expires"),
        }
        .read(name)
    }

    /// Reads an account list; duplicate ids keep the first record.
    pub fn list_from_value(value: &Value, name: &str) -> Result<Vec<Self>, String> {
        let items = value.as_array().ok_or_else(|| format!("{name} must be an array"))?;
        let mut accounts: Vec<Self> = Vec::with_capacity(items.len());
        // The first of equal ids wins; a set keeps this linear in the number of accounts.
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            if Self::is_api_key_account(item) {
                continue;
            }
            let account = Self::from_value(item, &format!("{name}[{index}]"))?;
            if seen.insert(account.id.clone()) {
                accounts.push(account);
            }
        }
        Ok(accounts)
    }
}

/// The fields of an account record the manager reads, however the record arrived (an object,
/// or the compact form the JavaScript facade sends): one rule for what each must be.
#[derive(Clone, Copy, Default)]
pub struct AccountFields<'a> {
    pub id: Option<&'a Value>,
    pub enabled: Option<&'a Value>,
    pub access: Option<&'a Value>,
    pub auth_lineage_id: Option<&'a Value>,
    pub quota: Option<&'a Value>,
    pub last_error: Option<&'a Value>,
    pub expires: Option<&'a Value>,
}

impl AccountFields<'_> {
    /// The account, or the offending field (`{name}.id must be a non-empty string`); `name` is
    /// formatted only then.
    pub fn read(self, name: impl std::fmt::Display) -> Result<FallbackAccount, String> {
        let id = match self.id {
            Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
            _ => return Err(format!("{name}.id must be a non-empty string")),
        };
        let enabled = match self.enabled {
            None | Some(Value::Null) => true,
            Some(Value::Bool(enabled)) => *enabled,
            Some(_) => return Err(format!("{name}.enabled must be a boolean")),
        };
        let optional_string = |value: Option<&Value>, field: &str| match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone()).filter(|t| !t.is_empty())),
            Some(_) => Err(format!("{name}.{field} must be a string")),
        };
        Ok(FallbackAccount {
            access: optional_string(self.access, "access")?,
            auth_lineage_id: optional_string(self.auth_lineage_id, "authLineageId")?,
            quota: self.quota.and_then(QuotaSnapshot::from_value_lenient).map(Box::new),
            last_error: self.last_error.and_then(ApiErrorRecord::from_value_lenient).map(Box::new),
            expires: self.expires.and_then(timestamp_from_value),
            id,
            enabled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(storage.minimum_remaining.unwrap().five_hour, 20.0);
        assert_eq!(storage.fail_closed_on_unknown_quota, None);
        assert_eq!(storage.main_quota.unwrap().seven_day.unwrap().used_percent, 50.0);
        assert!(HostStorage::from_value(&json!(3)).is_err());
    }

    #[test]
    fn accounts_name_the_bad_field_and_drop_duplicates() {
        let error =
            FallbackAccount::list_from_value(&json!([{ "id": "a" }, { "id": 3 }]), "accounts")
                .unwrap_err();
        assert_eq!(error, "accounts[1].id must be a non-empty string");
        let error =
            FallbackAccount::list_from_value(&json!([{ "id": "a", "enabled": "no" }]), "accounts")
                .unwrap_err();
        assert_eq!(error, "accounts[0].enabled must be a boolean");
        let accounts = FallbackAccount::list_from_value(
            &json!([{ "id": "a", "access": "t1" }, { "id": "a", "access": "t2" }, { "id": "b", "quota": 7 }]),
            "accounts",
        )
        .unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].access.as_deref(), Some("t1"));
        assert!(accounts[1].quota.is_none());
    }
}
