//! anthropic-quota-core: the napi-free core of anthropic-quota-manager. Everything here is plain
//! Rust, tested with `cargo test -p anthropic-quota-core`; the root crate binds it to Node.js.

pub mod backoff;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod fingerprint;
pub mod freshness;
pub mod headers;
pub mod host;
pub mod lenient;
pub mod manager;
pub mod merge;
pub mod policy;
pub mod redis_store;
pub mod route_key;
pub mod shared_store;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod transport;
pub mod usage;
