//! emberd, the host agent: runs `ember` instances the way EC2 runs instances.
//!
//! - [`api`]: the REST API (axum on a Unix socket).
//! - [`agent`]: instances' lives: launch, configure over ember's API, supervise, stop,
//!   start, reboot, terminate, adopt after a restart.
//! - [`db`]: durable state (SQLite, WAL).
//! - [`host`]: file copies (reflink or sparse), the bridge and taps, processes.
//! - [`meter`]: usage per instance (samples, hourly rollups, window queries).
//! - [`types`]: the instance type catalogue. [`ids`]: EC2-style ids.

pub mod agent;
pub mod api;
pub mod db;
pub mod error;
pub mod host;
pub mod ids;
pub mod meter;
pub mod prometheus;
pub mod types;
pub mod vmm_client;
