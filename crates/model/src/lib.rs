//! The per-VM API's data: Firecracker's v1 resources as types, shared by the
//! configuration file, the API server, the VMM and every client (emberd drives ember with
//! them). Serde only: no HTTP, no KVM.
//!
//! - [`parse`]: strict JSON parsing (unknown fields refused) with the field at fault named.
//! - [`boot`], [`machine`], [`drive`], [`net`], [`output`]: the pre-boot resources and their
//!   validation.
//! - [`vm`]: actions, VM state, instance info, version, the fault body.
//! - [`config`]: the whole configuration (`--config-file`, `GET /vm/config`) and
//!   [`config::VmResources`], what a valid configuration means.
//! - [`metrics`]: the metrics line ember writes and emberd reads.
//! - [`services`]: the guest services' resources (vsock, entropy, balloon, MMDS).
//! - [`snapshot`]: the snapshot create and load bodies.
//! - [`rpc`]: requests from the API to the VMM, and their answers and errors.

pub mod boot;
pub mod config;
pub mod drive;
pub mod machine;
pub mod metrics;
pub mod net;
pub mod output;
pub mod parse;
pub mod rpc;
pub mod services;
pub mod snapshot;
pub mod vm;

pub use boot::BootSource;
pub use config::{ConfigError, VmConfig, VmResources};
pub use drive::{CacheType, Drive, DrivePatch, DriveSpec, IoEngine};
pub use machine::{HugePages, MachineConfig, MachineConfigPatch};
pub use metrics::MetricsLine;
pub use net::{NetSpec, NetworkInterface, NetworkInterfacePatch};
pub use output::{Logger, Metrics, Serial};
pub use parse::{from_json, printable, ParseError};
pub use services::{
    Balloon, BalloonSpec, BalloonStats, BalloonStatsUpdate, BalloonUpdate, Entropy, MmdsConfig,
    MmdsSpec, MmdsVersion, Vsock, VsockSpec,
};
pub use vm::{
    ActionType, Fault, InstanceActionInfo, InstanceInfo, InstanceState, Version, Vm, VmState,
};
