#![deny(clippy::all)]
//! anthropic-quota-manager: a machine-wide usage-quota cache for Claude accounts.

pub mod core;
