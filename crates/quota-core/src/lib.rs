#![deny(clippy::all)]
//! anthropic-quota-core: the napi-free core of anthropic-quota-manager. Everything here is plain
//! Rust, tested with `cargo test -p anthropic-quota-core`; the root crate binds it to Node.js.
//!
//! - [`usage`] and [`client`]: the usage endpoint (docs/endpoint.md)
//! - [`headers`] and [`merge`]: quota from response headers and snapshot ownership (docs/headers.md)
//! - [`freshness`]: when a cache entry is due (docs/freshness.md)
//! - [`backoff`]: the per-route backoff ladder and `Retry-After` (docs/backoff.md)
//! - [`store`]: the shared state file and cross-process locks (docs/single-flight.md, docs/state-file.md); [`route_key`]: how
//!   it names routes
//! - [`redis_store`]: the Redis shared store for several hosts (issue 13): route locks with
//!   fencing, route records, change notices
//! - [`shared_store`]: the trait both stores implement, and the manager's composite store
//!   (Redis first, the state file when Redis does not answer)
//! - [`policy`]: the routing policy (docs/routing.md#policy)
//! - [`manager`]: the state machine that ties them together (a facade over one module per
//!   concern)
//! - [`error`]: the one runtime error enum with stable codes, and the typed configuration error

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
