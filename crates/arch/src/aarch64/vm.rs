//! What an aarch64 VM needs from KVM, and its interrupt controller (created once every
//! vCPU exists).

use super::gic::{Gic, GicError};
use crate::VmSetupError;
use kvm_ioctls::{Cap, VcpuFd, VmFd};

/// Capabilities the VMM cannot work without.
pub const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqfd,
    Cap::Ioeventfd,
    Cap::UserMemory,
    Cap::OneReg,
    Cap::ArmPsci02,
    Cap::DeviceCtrl,
];

/// The guest's interrupt controller.
pub type IrqChip = Gic;

/// Errors setting up the VM's interrupt controller.
pub type IrqChipError = GicError;

/// Nothing to do before the vCPUs on aarch64: the GIC is created after them.
pub fn setup_before_vcpus(_vm: &VmFd) -> Result<(), VmSetupError> {
    Ok(())
}

/// Creates the GIC once all `vcpus` exist.
pub fn create_irqchip(vm: &VmFd, vcpus: &[VcpuFd]) -> Result<IrqChip, IrqChipError> {
    let count = u8::try_from(vcpus.len()).map_err(|_| GicError::TooManyVcpus(vcpus.len()))?;
    Gic::create(vm, count)
}
