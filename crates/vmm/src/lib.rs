//! The ember VMM: turns a validated VM description ([`model::VmResources`]) into a running
//! KVM guest, and carries out the API's typed requests ([`rpc`]). It knows nothing of HTTP.
//!
//! - [`memory`]: guest RAM.
//! - [`vstate`]: the KVM VM and vCPUs (run loop and exit routing).
//! - [`builder`]: assembling and running a VM from a configuration.
//! - [`event_loop`]: the VMM thread's epoll loop.
//! - [`console_input`]: console input (stdin) to the guest's UART.
//! - [`rpc`]: what the API's actions do (pre-boot configuration, start, pause, metrics).
//! - [`metrics`]: Firecracker-style metrics lines.
//! - [`snapshot`]: snapshot create and load.

pub mod builder;
pub mod console_input;
pub mod device_manager;
pub mod event_loop;
pub mod memory;
pub mod metrics;
pub mod rpc;
pub mod snapshot;
pub mod vstate;

pub use builder::{build, build_and_run, BuildError, RunOptions, Vmm};
pub use model::{ConfigError, VmConfig, VmResources};
