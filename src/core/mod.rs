//! The napi-free core: everything here is plain Rust, unit-tested with `cargo test`.

pub mod clock;
pub mod error;
pub mod snapshot;
