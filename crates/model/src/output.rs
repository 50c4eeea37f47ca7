//! Where ember's own output goes: the guest's console (`serial`), ember's log (`logger`)
//! and its metrics lines (`metrics`).

use serde::{Deserialize, Serialize};

/// The file's `serial`: where the guest's console goes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Serial {
    /// File the console is appended to; stdout when absent.
    #[serde(default)]
    pub serial_out_path: Option<String>,
}

/// `PUT /logger`, and the file's `logger`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File (or FIFO) the log is appended to; stderr when absent.
    #[serde(default)]
    pub log_path: Option<String>,
    /// Error, Warning, Info, Debug, Trace or Off.
    #[serde(default)]
    pub level: Option<String>,
    /// Print the level in each line.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Print the source file and line in each line.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Only log lines from this module (Rust module path prefix).
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics`, and the file's `metrics`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File (or FIFO) the lines are appended to.
    pub metrics_path: String,
}
