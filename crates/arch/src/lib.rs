//! Architecture-specific parts of booting a guest: the guest physical memory map,
//! firmware-like tables (MP table), CPUID, boot-time vCPU registers and kernel loading.
//!
//! Everything here is independent of devices and of the API: it answers "what must the
//! guest see at reset for Linux to boot", nothing more. Each architecture lives in its own
//! module and exposes the same names, so the VMM crate does not branch on the target.

pub mod file_map;

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;
