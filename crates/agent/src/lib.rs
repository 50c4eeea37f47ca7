//! emberd, the host agent: runs `ember` instances the way EC2 runs instances.
//!
//! - [`api`]: the REST API (axum on a Unix socket); [`error`]: its error answers, and the
//!   only place domain errors become HTTP statuses; [`serve`]: its connections (request
//!   heads checked before hyper, so framing errors get emberd's error body too).
//! - [`ec2`]: EC2's Query API (SigV4-signed, XML) on a TCP listener, for the AWS CLI and
//!   SDKs, on the same domain as the REST API.
//! - [`instances`]: instances' lives, one module per job (transitions and sampling,
//!   images, capacity, creating, launching and configuring ember, supervision, the
//!   lifecycle verbs, adoption after a restart).
//! - [`db`]: durable state (SQLite, WAL).
//! - [`host`]: file copies (reflink or sparse), the bridge and taps, processes.
//! - [`meter`]: usage per instance (reading metrics files, samples and hourly rollups,
//!   window queries); [`prometheus`]: `GET /metrics`.
//! - [`types`]: the instance type catalogue. [`ids`]: EC2-style ids.
//!
//! The wire types are the `agent-types` crate's (shared with emberctl); ember is driven
//! with the `model` crate's types over `uds-client`.

pub mod api;
pub mod db;
pub mod ec2;
pub mod error;
pub mod host;
pub mod ids;
pub mod instances;
pub mod meter;
pub mod prometheus;
pub mod serve;
pub mod types;
