//! Boot-time vCPU state on aarch64: KVM_ARM_VCPU_INIT with PSCI 0.2 (secondary vCPUs start
//! powered off and are brought up by the guest through PSCI CPU_ON, inside KVM), then the
//! boot vCPU's registers: EL1h with interrupts masked, PC at the kernel, X0 = device tree.

use kvm_bindings::{
    kvm_vcpu_init, user_pt_regs, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_REG_ARM64,
    KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
};
use kvm_ioctls::{VcpuFd, VmFd};
use thiserror::Error;

/// Errors while setting the boot state of a vCPU.
#[derive(Debug, Error)]
pub enum RegsError {
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

/// EL1 with SP_EL1 (EL1h), and debug, SError, IRQ and FIQ masked: the state
/// arm64 booting.txt asks for.
pub const PSTATE_BOOT: u64 = 0x3c5;

/// KVM's id of a 64-bit core register at byte `offset` within `kvm_regs` (whose first
/// member is `user_pt_regs`).
const fn core_reg(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4) as u64
}

/// General register Xn.
pub const fn reg_x(n: usize) -> u64 {
    core_reg(std::mem::offset_of!(user_pt_regs, regs) + 8 * n)
}
/// The program counter.
pub const REG_PC: u64 = core_reg(std::mem::offset_of!(user_pt_regs, pc));
/// PSTATE.
pub const REG_PSTATE: u64 = core_reg(std::mem::offset_of!(user_pt_regs, pstate));
/// The stack pointer (SP_EL0).
pub const REG_SP: u64 = core_reg(std::mem::offset_of!(user_pt_regs, sp));

/// Initialises vCPU `index` (KVM_ARM_VCPU_INIT with the host's preferred target and PSCI
/// 0.2; all but vCPU 0 start powered off) and, on vCPU 0, points it at the kernel.
pub fn setup_vcpu(
    vm: &VmFd,
    vcpu: &VcpuFd,
    index: u8,
    entry: u64,
    fdt_addr: u64,
) -> Result<(), RegsError> {
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(|e| RegsError::Kvm("KVM_ARM_PREFERRED_TARGET", e))?;
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if index > 0 {
        init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&init)
        .map_err(|e| RegsError::Kvm("KVM_ARM_VCPU_INIT", e))?;
    set(vcpu, REG_PSTATE, PSTATE_BOOT)?;
    if index == 0 {
        set(vcpu, REG_PC, entry)?;
        set(vcpu, reg_x(0), fdt_addr)?;
    }
    Ok(())
}

fn set(vcpu: &VcpuFd, id: u64, value: u64) -> Result<(), RegsError> {
    vcpu.set_one_reg(id, &value.to_le_bytes())
        .map(|_| ())
        .map_err(|e| RegsError::Kvm("KVM_SET_ONE_REG", e))
}

fn get(vcpu: &VcpuFd, id: u64) -> Option<u64> {
    let mut buf = [0u8; 8];
    vcpu.get_one_reg(id, &mut buf).ok()?;
    Some(u64::from_le_bytes(buf))
}

/// A one-line dump of the registers that explain a failed entry or internal error.
pub fn describe(vcpu: &VcpuFd) -> String {
    let mut out = Vec::new();
    for (name, id) in [
        ("pc", REG_PC),
        ("pstate", REG_PSTATE),
        ("sp", REG_SP),
        ("x0", reg_x(0)),
        ("x1", reg_x(1)),
        ("x30", reg_x(30)),
    ] {
        match get(vcpu, id) {
            Some(v) => out.push(format!("{name}={v:#x}")),
            None => return "registers unavailable".to_string(),
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_match_kvm() {
        assert_eq!(reg_x(0), 0x6030_0000_0010_0000);
        assert_eq!(reg_x(1), 0x6030_0000_0010_0002);
        assert_eq!(REG_SP, 0x6030_0000_0010_003e);
        assert_eq!(REG_PC, 0x6030_0000_0010_0040);
        assert_eq!(REG_PSTATE, 0x6030_0000_0010_0042);
    }
}
