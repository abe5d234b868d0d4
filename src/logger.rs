//! The core reports through the `log` facade; the host sees its warnings on stderr, one line
//! each, as `anthropic-quota-manager: <message>`.

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

/// Installs the logger once per process (a later call, or another logger already in place, is
/// left as it is).
pub fn install() {
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
