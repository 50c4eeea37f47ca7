//! What an x86_64 VM needs from KVM, and its in-kernel interrupt controllers (IOAPIC, PIC
//! and PIT), which must exist before the first vCPU.

use super::layout::KVM_TSS_ADDRESS;
use crate::VmSetupError;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, VcpuFd, VmFd};

/// Capabilities the VMM cannot work without.
pub const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Irqfd,
    Cap::Ioeventfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::ExtCpuid,
];

/// The interrupt controllers live in KVM from [`setup_before_vcpus`] on; nothing to hold.
#[derive(Debug)]
pub struct IrqChip;

impl IrqChip {
    /// One line for the log.
    pub fn describe(&self) -> String {
        "IOAPIC, PIC and PIT in KVM".to_string()
    }
}

/// Creating [`IrqChip`] cannot fail on x86_64.
pub type IrqChipError = std::convert::Infallible;

/// Sets the TSS pages and creates the IOAPIC, PIC and PIT.
pub fn setup_before_vcpus(vm: &VmFd) -> Result<(), VmSetupError> {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "x86_64 only, where usize is 64 bits"
    )]
    let tss = KVM_TSS_ADDRESS as usize;
    vm.set_tss_address(tss)
        .map_err(|e| VmSetupError::Ioctl("KVM_SET_TSS_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmSetupError::Ioctl("KVM_CREATE_IRQCHIP", e))?;
    // The PIT's speaker port (0x61) is emulated in the kernel so the guest's PIT
    // calibration does not exit to us.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmSetupError::Ioctl("KVM_CREATE_PIT2", e))
}

/// Nothing is left to create once the vCPUs exist.
pub fn create_irqchip(_vm: &VmFd, _vcpus: &[VcpuFd]) -> Result<IrqChip, IrqChipError> {
    Ok(IrqChip)
}
