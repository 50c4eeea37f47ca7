//! A minimal stderr logger in Firecracker's level vocabulary.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger {
    id: String,
    start: std::time::Instant,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let thread = std::thread::current();
            let _ = writeln!(
                std::io::stderr().lock(),
                "[{}:{} +{}us] {}: {}",
                self.id,
                thread.name().unwrap_or("?"),
                self.start.elapsed().as_micros(),
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Parses a Firecracker log level name (case-insensitive).
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(format!(
            "unknown log level {s:?} (expected Error, Warning, Info, Debug, Trace or Off)"
        )),
    }
}

/// Installs the logger for microVM `id`.
pub fn init(id: &str, level: LevelFilter) {
    let logger = Box::new(StderrLogger {
        id: id.to_string(),
        start: std::time::Instant::now(),
    });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
