// A Rust test build (clippy --all-targets) has no caller for the `#[napi]` exports: Node.js is.
#![cfg_attr(test, allow(dead_code))]
//! anthropic-quota-manager: the napi-rs binding over [`quota_core`]. It converts options,
//! arguments, results, callbacks and errors between JavaScript and the core; nothing here
//! decides quota behaviour.

mod account_lists;
mod callbacks;
mod clock;
mod exit;
mod functions;
mod host_env;
mod host_fetch;
mod hot_path;
mod js;
mod js_now;
mod logger;
mod manager;
mod options;
mod redis;
mod shared;
mod views;
