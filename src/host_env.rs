//! The host's environment as its JavaScript sees it (`process.env`, apart from the C environment
//! under Bun), read at construction (docs/endpoint.md#transport-security).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use napi::bindgen_prelude::*;

use quota_core::client::{ConnectionOptions, ProxySetting};
use quota_core::store;

/// One variable of the host's `process.env`; blank counts as unset. Falls back to the C
/// environment only when the host has no `process.env` at all.
pub fn host_var(env: &Env, name: &str) -> Result<Option<String>> {
    let Some(vars) = process_env(env)? else {
        return Ok(std::env::var(name).ok().filter(|v| !v.trim().is_empty()));
    };
    let value: Unknown = vars.get_named_property(name)?;
    if value.get_type()? != ValueType::String {
        return Ok(None);
    }
    let text = unsafe { value.cast::<String>() }?;
    Ok(Some(text).filter(|v| !v.trim().is_empty()))
}

fn process_env(env: &Env) -> Result<Option<Object<'_>>> {
    let process: Unknown = env.get_global()?.get_named_property("process")?;
    if process.get_type()? != ValueType::Object {
        return Ok(None);
    }
    let vars: Unknown = process.coerce_to_object()?.get_named_property("env")?;
    if vars.get_type()? != ValueType::Object {
        return Ok(None);
    }
    Ok(Some(vars.coerce_to_object()?))
}

/// The state file used when `statePath` is not given (docs/state-file.md#location).
pub fn default_state_path(env: &Env) -> Option<PathBuf> {
    store::default_state_path(|name| host_var(env, name).ok().flatten())
}

/// The first of `names` that is set.
fn first_var(env: &Env, names: &[&str]) -> Result<Option<String>> {
    names.iter().find_map(|name| host_var(env, name).transpose()).transpose()
}

/// Extra trusted roots and the proxy (docs/endpoint.md#transport-security); the proxy
/// variables are read in upper or lower case.
pub fn connection_options(env: &Env) -> Result<ConnectionOptions> {
    let extra_ca_files = ["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS"]
        .iter()
        .filter_map(|name| host_var(env, name).map(|file| file.map(PathBuf::from)).transpose())
        .collect::<Result<_>>()?;
    let proxy = match first_var(env, &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"])? {
        Some(url) => {
            ProxySetting::Url { url, no_proxy: first_var(env, &["NO_PROXY", "no_proxy"])? }
        }
        None => ProxySetting::Disabled,
    };
    Ok(ConnectionOptions { extra_ca_files, proxy })
}

/// Logs each trust-store warning once per process, however many managers are built.
pub fn print_trust_warnings_once(warnings: &[String]) {
    static PRINTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut printed = PRINTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for warning in warnings {
        if printed.insert(warning.clone()) {
            log::warn!("{warning}");
        }
    }
}
