//! ember's log, in Firecracker's level vocabulary: to stderr, or to the file or FIFO set
//! by `--log-path` or `PUT /logger`, with the level and the source location shown on
//! request (`--show-level`, `--show-log-origin`).

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::sync::Mutex;

struct Settings {
    out: Option<std::fs::File>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

struct EmberLogger {
    id: String,
    start: std::time::Instant,
    settings: Mutex<Settings>,
}

static LOGGER: std::sync::OnceLock<&'static EmberLogger> = std::sync::OnceLock::new();

impl Log for EmberLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = &s.module {
            if !record.module_path().unwrap_or("").starts_with(m.as_str()) {
                return;
            }
        }
        let thread = std::thread::current();
        let mut line = format!(
            "[{}:{} +{}us]",
            self.id,
            thread.name().unwrap_or("?"),
            self.start.elapsed().as_micros()
        );
        if s.show_level {
            line.push_str(&format!(" {}", record.level()));
        }
        if s.show_origin {
            line.push_str(&format!(
                " {}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!(": {}\n", record.args()));
        match s.out.as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
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

/// Installs the logger for microVM `id` (stderr, level shown, as before any
/// configuration).
pub fn init(id: &str, level: LevelFilter) {
    let logger: &'static EmberLogger = Box::leak(Box::new(EmberLogger {
        id: id.to_string(),
        start: std::time::Instant::now(),
        settings: Mutex::new(Settings {
            out: None,
            show_level: true,
            show_origin: false,
            module: None,
        }),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
        let _ = LOGGER.set(logger);
    }
}

/// Applies a `logger` configuration: each field given replaces the current setting.
pub fn configure(cfg: &model::Logger) -> Result<(), String> {
    let level = cfg.level.as_deref().map(parse_level).transpose()?;
    let out = match &cfg.log_path {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open log file {p}: {e}"))?,
        ),
        None => None,
    };
    let Some(logger) = LOGGER.get() else {
        return Err("the logger is not installed".into());
    };
    let mut s = logger.settings.lock().unwrap_or_else(|p| p.into_inner());
    if out.is_some() {
        s.out = out;
    }
    if let Some(v) = cfg.show_level {
        s.show_level = v;
    }
    if let Some(v) = cfg.show_log_origin {
        s.show_origin = v;
    }
    if cfg.module.is_some() {
        s.module = cfg.module.clone();
    }
    if let Some(l) = level {
        log::set_max_level(l);
    }
    Ok(())
}
