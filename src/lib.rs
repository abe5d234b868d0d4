#![deny(clippy::all)]
// In a Rust test build (clippy --all-targets) the `#[napi]` exports have no caller: Node.js is
// their caller, through the registration the macros generate for the cdylib.
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
mod manager;
mod options;
mod redis;
mod shared;
mod views;

/// The core's warnings on stderr, as they were printed before it logged them: each message
/// carries its own `anthropic-quota-manager: ` prefix.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("{}", record.args());
        }
    }

    fn flush(&self) {}
}

#[napi_derive::module_init]
fn init() {
    // A host that installed a logger of its own keeps it.
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
