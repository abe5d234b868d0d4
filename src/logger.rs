//! The addon's logger: each `log` warning (the binding's and the core's) is one stderr line
//! prefixed with the package name, exactly as the addon always printed its warnings.

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("anthropic-quota-manager: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static STDERR: Stderr = Stderr;

/// Installed once, when Node loads the addon (another logger already set wins).
#[napi_derive::module_init]
fn install() {
    if log::set_logger(&STDERR).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
