#![deny(clippy::all)]
//! anthropic-quota-manager: a machine-wide usage-quota cache for Claude accounts.
//!
//! [`core`] holds the behaviour and knows nothing of Node; `binding` exposes it to JavaScript.

mod binding;
pub mod core;
