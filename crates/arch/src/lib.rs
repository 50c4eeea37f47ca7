//! Architecture-specific parts of booting a guest: the guest physical memory map,
//! firmware-like tables (MP table on x86_64, device tree on aarch64), CPUID, the interrupt
//! controller, boot-time vCPU registers and kernel loading.
//!
//! Everything here is independent of devices and of the API: it answers "what must the
//! guest see at reset for Linux to boot", nothing more. Each architecture lives in its own
//! module and exposes the same names (`boot`, `layout`, `regs`, `vm`), so the VMM crate
//! does not branch on the target except where vCPU setup itself differs.

// Casts that can lose bits are errors in CI (-D warnings); the workspace cannot set this
// for some crates only. Tests cast known small values freely.
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

pub mod initrd;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

/// Everything the kernel reads at entry besides the kernel itself, for
/// `boot::configure_system` (the same on every architecture; each uses what it needs).
pub struct BootSetup<'a> {
    /// The loaded kernel.
    pub kernel: &'a boot::KernelEntry,
    /// The command line.
    pub cmdline: &'a linux_loader::cmdline::Cmdline,
    /// The loaded initrd, if any.
    pub initrd: Option<initrd::InitrdPlacement>,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The virtio-mmio devices (x86_64: already on the command line, see
    /// `boot::announce_virtio_device`; aarch64: described in the device tree).
    pub virtio: &'a [VirtioDeviceInfo],
    /// The interrupt controller (x86_64: nothing beyond the MP table describes it).
    pub irqchip: &'a vm::IrqChip,
}

/// A KVM call made while creating the VM's interrupt controllers failed.
#[derive(Debug, thiserror::Error)]
pub enum VmSetupError {
    /// The ioctl named failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
}

/// A virtio-mmio device as the guest must be told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioDeviceInfo {
    /// Base of its register window.
    pub addr: u64,
    /// Length of the window.
    pub len: u64,
    /// Its interrupt line (x86_64: IOAPIC pin; aarch64: SPI number).
    pub irq: u32,
}

/// The bus a platform device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceBus {
    /// x86 I/O ports.
    Pio,
    /// Memory-mapped registers.
    Mmio,
}

/// Where a platform device (UART, keyboard controller, RTC) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePlace {
    /// Its bus.
    pub bus: DeviceBus,
    /// First port or address.
    pub base: u64,
    /// Number of ports or bytes.
    pub len: u64,
    /// Its interrupt line, if it raises one.
    pub irq: Option<u32>,
}
