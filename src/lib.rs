#![deny(clippy::all)]
//! anthropic-quota-manager: a machine-wide usage-quota cache for Claude accounts.
//!
//! [`core`] holds the behaviour and knows nothing of Node; `binding` exposes it to JavaScript.

// The binding is exercised by the vitest suite against the built addon; unit tests cover the core.
#[cfg(not(test))]
mod binding;
pub mod core;
