//! The ember VMM: turns a validated VM description into a running KVM guest.
//!
//! - [`config`]: the Firecracker-format configuration file.
//! - [`memory`]: guest RAM.
//! - [`vstate`]: the KVM VM and vCPUs (run loop and exit routing).
//! - [`builder`]: assembling and running a VM from a configuration.
//! - [`event_loop`]: the VMM thread's epoll loop.
//! - [`console_input`]: console input (stdin) to the guest's UART.

pub mod builder;
pub mod config;
pub mod console_input;
pub mod device_manager;
pub mod drive_config;
pub mod event_loop;
pub mod memory;
pub mod net_config;
pub mod vstate;

pub use builder::{build_and_run, BuildError, RunOptions};
pub use config::{parse as parse_config, ConfigError, VmResources};
