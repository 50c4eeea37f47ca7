//! What a snapshot holds of an aarch64 VM beyond memory and devices: every register KVM
//! lists for each vCPU (core, FP/SIMD, system, timer and firmware registers) with its
//! power state, and the GIC (the saved form is here, the register tables and the order of
//! the accesses in `gic_state`).
//!
//! Saving runs while the VM is paused: each vCPU on its own thread, then the GIC on the
//! VMM thread (KVM refuses GIC access while a vCPU is inside an ioctl). Restoring replaces
//! the boot-time setup of freshly created vCPUs, then fills the freshly created GIC.

use super::gic_state;
use super::vm::IrqChip;
use kvm_bindings::{
    kvm_mp_state, kvm_regs, kvm_vcpu_init, user_fpsimd_state, user_pt_regs, RegList,
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_REG_ARCH_MASK, KVM_REG_ARM64,
    KVM_REG_ARM64_SVE, KVM_REG_ARM64_SYSREG, KVM_REG_ARM_COPROC_MASK, KVM_REG_ARM_CORE,
    KVM_REG_ARM_DEMUX, KVM_REG_ARM_FW, KVM_REG_ARM_FW_FEAT_BMAP, KVM_REG_SIZE_MASK,
    KVM_REG_SIZE_SHIFT, KVM_REG_SIZE_U64,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use std::mem::offset_of;
use std::os::fd::AsRawFd;
use thiserror::Error;

/// Errors saving or restoring architecture state.
#[derive(Debug, Error)]
pub enum StateError {
    /// A KVM ioctl failed; the string names it and what it was for.
    #[error("{0} failed: {1}")]
    Kvm(String, #[source] kvm_ioctls::Error),
    /// KVM refused to take back a saved vCPU register.
    #[error("vCPU {vcpu}: KVM_SET_ONE_REG {reg} failed: {err}{}", set_reg_hint(.err))]
    Register {
        /// The vCPU.
        vcpu: u8,
        /// The register's id and name.
        reg: String,
        /// What KVM said.
        #[source]
        err: kvm_ioctls::Error,
    },
    /// The snapshot's GIC is not the version KVM gave this VM.
    #[error(
        "the snapshot has a GICv{saved} but this VM's GIC is a GICv{current}: GIC state only \
         restores into the same GIC version (restore on a host like the one that saved it)"
    )]
    GicVersion {
        /// Version in the snapshot.
        saved: u8,
        /// Version of this VM's GIC.
        current: u8,
    },
    /// The snapshot's GIC state is for another number of vCPUs.
    #[error("the snapshot's GIC state covers {saved} vCPUs but the VM has {current}")]
    VcpuCount {
        /// vCPUs in the snapshot.
        saved: usize,
        /// vCPUs in this VM.
        current: usize,
    },
    /// The saved state is inconsistent or not what this build writes.
    #[error("invalid saved state: {0}")]
    Invalid(String),
}

fn set_reg_hint(err: &kvm_ioctls::Error) -> &'static str {
    match err.errno() {
        libc::ENOENT => {
            " (this host's KVM has no such register: the snapshot is from another kernel)"
        }
        libc::EINVAL => {
            " (KVM rejects the saved value: the snapshot is from another CPU type or kernel)"
        }
        _ => "",
    }
}

/// One vCPU register as KVM_GET_ONE_REG returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuReg {
    /// KVM's register id (its size field says how long `value` is).
    pub id: u64,
    /// The value, little-endian.
    pub value: Vec<u8>,
}

/// Everything KVM holds for one vCPU that the guest can observe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// KVM_GET_MP_STATE: runnable, stopped (powered off, e.g. a secondary not yet started
    /// by PSCI CPU_ON) or suspended.
    pub mp_state: u32,
    /// The KVM_ARM_VCPU_INIT features the vCPU runs with, without POWER_OFF.
    pub features: [u32; 7],
    /// MPIDR_EL1 (also among `regs`).
    pub mpidr: u64,
    /// Every register in KVM_GET_REG_LIST, in KVM's order.
    pub regs: Vec<VcpuReg>,
}

impl VcpuState {
    /// The vCPU's MPIDR_EL1 (affinity), used to address its GIC redistributor / CPU interface.
    pub fn mpidr(&self) -> u64 {
        self.mpidr
    }
}

/// The VM-wide interrupt controller state (the GIC; per-vCPU timers are in VcpuState).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// The GIC's registers, by version.
    pub gic: GicState,
}

/// A run of consecutive 32-bit registers, as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegBlock {
    /// Offset of the first register in its frame.
    pub offset: u32,
    /// The registers, in address order.
    pub values: Vec<u32>,
}

/// A GICv3 CPU interface: its ICC_*_EL1 system registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IccRegs {
    /// SRE, CTLR, PMR, BPR0, BPR1, IGRPEN0, IGRPEN1, in that order.
    pub main: Vec<u64>,
    /// AP0R0.., as many as CTLR's priority bits imply.
    pub ap0r: Vec<u64>,
    /// AP1R0.., as many as AP0R.
    pub ap1r: Vec<u64>,
}

/// One vCPU's part of a GICv3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedistState {
    /// Its redistributor (RD_base and SGI_base frames).
    pub regs: Vec<RegBlock>,
    /// Input level of its level-sensitive SGIs/PPIs (bit n: INTID n).
    pub line_levels: u32,
    /// Its CPU interface.
    pub icc: IccRegs,
}

/// A GICv3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicV3State {
    /// Distributor registers: GICD_IIDR, GICD_CTLR and the SPIs' parts of the rest.
    pub dist: Vec<RegBlock>,
    /// Input level of the level-sensitive SPIs, 32 per word from INTID 32.
    pub spi_line_levels: Vec<u32>,
    /// Per vCPU, in vCPU order.
    pub redists: Vec<RedistState>,
}

/// One vCPU's part of a GICv2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicV2CpuState {
    /// The distributor registers banked for this CPU (its SGIs and PPIs).
    pub banked: Vec<RegBlock>,
    /// Its CPU interface (GICC_*).
    pub cpu_interface: Vec<RegBlock>,
}

/// A GICv2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicV2State {
    /// Distributor registers: GICD_IIDR, GICD_CTLR and the SPIs' parts of the rest.
    pub dist: Vec<RegBlock>,
    /// Per vCPU, in vCPU order (the GICv2 CPU number is the vCPU index).
    pub cpus: Vec<GicV2CpuState>,
}

/// The GIC, by version: its state only restores into a GIC of the same version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GicState {
    /// A GICv3.
    V3(GicV3State),
    /// A GICv2.
    V2(GicV2State),
}

impl GicState {
    /// 3 or 2.
    pub fn version(&self) -> u8 {
        match self {
            GicState::V3(_) => 3,
            GicState::V2(_) => 2,
        }
    }
}

/// The features `regs::setup_vcpu` initialises every vCPU with, POWER_OFF aside. KVM cannot
/// report a vCPU's features, so this must follow that function.
const BOOT_FEATURES: [u32; 7] = [1 << KVM_ARM_VCPU_PSCI_0_2, 0, 0, 0, 0, 0, 0];

/// KVM's id of the system register op0, op1, CRn, CRm, op2 (ARM64_SYS_REG in the uapi).
const fn sys_reg_id(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// MPIDR_EL1.
pub const MPIDR_EL1: u64 = sys_reg_id(3, 0, 0, 0, 5);
const MIDR_EL1: u64 = sys_reg_id(3, 0, 0, 0, 0);
// KVM's timer registers. CNT and CVAL carry each other's architectural encodings, a
// historical slip the uapi keeps, so they are named here rather than decoded.
const TIMER_CTL: u64 = sys_reg_id(3, 3, 14, 3, 1);
const TIMER_CNT: u64 = sys_reg_id(3, 3, 14, 3, 2);
const TIMER_CVAL: u64 = sys_reg_id(3, 3, 14, 0, 2);
const PTIMER_CTL: u64 = sys_reg_id(3, 3, 14, 2, 1);
const PTIMER_CNT: u64 = sys_reg_id(3, 3, 14, 0, 1);
const PTIMER_CVAL: u64 = sys_reg_id(3, 3, 14, 2, 2);

/// Bytes in register `id`: 1 << the size field, which KVM caps at 2048 bits.
fn reg_size(id: u64) -> Option<usize> {
    let shift = u32::try_from((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT).ok()?;
    (shift <= 8).then(|| 1usize << shift)
}

/// The register's id with its name where one is known, for messages.
fn describe_reg(id: u64) -> String {
    match reg_name(id) {
        Some(name) => format!("{id:#x} ({name})"),
        None => format!("{id:#x}"),
    }
}

fn reg_name(id: u64) -> Option<String> {
    if id & (KVM_REG_ARCH_MASK as u64) != KVM_REG_ARM64 {
        return None;
    }
    let low = id & 0xffff;
    match u32::try_from(id & u64::from(KVM_REG_ARM_COPROC_MASK)).ok()? {
        KVM_REG_ARM_CORE => core_reg_name(usize::try_from(low).ok()? * 4),
        KVM_REG_ARM64_SYSREG => Some(match id {
            MPIDR_EL1 => "MPIDR_EL1".to_string(),
            MIDR_EL1 => "MIDR_EL1".to_string(),
            TIMER_CTL => "KVM_REG_ARM_TIMER_CTL".to_string(),
            TIMER_CNT => "KVM_REG_ARM_TIMER_CNT".to_string(),
            TIMER_CVAL => "KVM_REG_ARM_TIMER_CVAL".to_string(),
            PTIMER_CTL => "KVM_REG_ARM_PTIMER_CTL".to_string(),
            PTIMER_CNT => "KVM_REG_ARM_PTIMER_CNT".to_string(),
            PTIMER_CVAL => "KVM_REG_ARM_PTIMER_CVAL".to_string(),
            // The assembler's generic name of any system register.
            _ => format!(
                "S{}_{}_C{}_C{}_{}",
                (low >> 14) & 3,
                (low >> 11) & 7,
                (low >> 7) & 15,
                (low >> 3) & 15,
                low & 7
            ),
        }),
        KVM_REG_ARM_FW | KVM_REG_ARM_FW_FEAT_BMAP => Some(format!("firmware register {low:#x}")),
        KVM_REG_ARM_DEMUX => Some("CCSIDR (demultiplexed)".to_string()),
        KVM_REG_ARM64_SVE => Some("SVE register".to_string()),
        _ => None,
    }
}

/// The name of the core register at byte `off` of `kvm_regs`.
fn core_reg_name(off: usize) -> Option<String> {
    let pt = offset_of!(kvm_regs, regs);
    let fp = offset_of!(kvm_regs, fp_regs);
    let spsr = offset_of!(kvm_regs, spsr);
    let name = match off {
        _ if off == pt + offset_of!(user_pt_regs, sp) => "sp".to_string(),
        _ if off == pt + offset_of!(user_pt_regs, pc) => "pc".to_string(),
        _ if off == pt + offset_of!(user_pt_regs, pstate) => "pstate".to_string(),
        _ if off == offset_of!(kvm_regs, sp_el1) => "sp_el1".to_string(),
        _ if off == offset_of!(kvm_regs, elr_el1) => "elr_el1".to_string(),
        _ if off == fp + offset_of!(user_fpsimd_state, fpsr) => "fpsr".to_string(),
        _ if off == fp + offset_of!(user_fpsimd_state, fpcr) => "fpcr".to_string(),
        _ if off >= pt && off < pt + 31 * 8 => format!("x{}", (off - pt) / 8),
        _ if off >= spsr && off < spsr + 5 * 8 => format!("spsr[{}]", (off - spsr) / 8),
        _ if off >= fp && off < fp + 32 * 16 => format!("v{}", (off - fp) / 16),
        _ => return None,
    };
    Some(name)
}

/// Room for KVM_GET_REG_LIST's first try: the most kvm-bindings' `RegList` holds, and more
/// than KVM lists without SVE or SME (a few hundred).
const REG_LIST_GUESS: usize = 500;
/// KVM_GET_REG_LIST, _IOWR(KVMIO, 0xb0, struct kvm_reg_list) on arm64: for lists longer
/// than `RegList` can hold, which kvm-ioctls cannot fetch.
const KVM_GET_REG_LIST: libc::Ioctl = 0xc008_aeb0;

/// The ids of every register of `vcpu`, in KVM's order.
fn reg_list(vcpu: &VcpuFd) -> Result<Vec<u64>, StateError> {
    let mut list = RegList::new(REG_LIST_GUESS)
        .map_err(|e| StateError::Invalid(format!("a register list of {REG_LIST_GUESS}: {e:?}")))?;
    match vcpu.get_reg_list(&mut list) {
        Ok(()) => return Ok(list.as_slice().to_vec()),
        Err(e) if e.errno() == libc::E2BIG => {}
        Err(e) => return Err(StateError::Kvm("KVM_GET_REG_LIST".to_string(), e)),
    }
    // On E2BIG KVM wrote the count it needs into the header (only the header: the ids in
    // `list` are not valid).
    let needed = list.as_fam_struct_ref().n;
    let n = usize::try_from(needed)
        .map_err(|_| StateError::Invalid(format!("KVM lists {needed} registers")))?;
    let mut buf = vec![0u64; n + 1];
    buf[0] = needed;
    // SAFETY: the fd is a vCPU's; `buf` is a struct kvm_reg_list (the count, then room for
    // that many ids) that outlives the call, and KVM writes at most that many ids (it fails
    // with E2BIG instead).
    let ret = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_REG_LIST, buf.as_mut_ptr()) };
    if ret < 0 {
        return Err(StateError::Kvm(
            format!("KVM_GET_REG_LIST ({n} registers)"),
            kvm_ioctls::Error::last(),
        ));
    }
    let got = usize::try_from(buf[0]).map_or(n, |g| g.min(n));
    Ok(buf[1..=got].to_vec())
}

/// Called on the vCPU's own thread while the VM is paused (vCPU out of KVM_RUN).
pub fn save_vcpu(vcpu: &VcpuFd) -> Result<VcpuState, StateError> {
    let ids = reg_list(vcpu)?;
    let mut regs = Vec::with_capacity(ids.len());
    for id in ids {
        let size = reg_size(id).ok_or_else(|| {
            StateError::Invalid(format!("KVM lists register {id:#x} of an unknown size"))
        })?;
        let mut value = vec![0u8; size];
        vcpu.get_one_reg(id, &mut value)
            .map_err(|e| StateError::Kvm(format!("KVM_GET_ONE_REG {}", describe_reg(id)), e))?;
        regs.push(VcpuReg { id, value });
    }
    let mpidr = find_u64(&regs, MPIDR_EL1)
        .ok_or_else(|| StateError::Invalid("KVM_GET_REG_LIST has no MPIDR_EL1".to_string()))?;
    let mp_state = vcpu
        .get_mp_state()
        .map_err(|e| StateError::Kvm("KVM_GET_MP_STATE".to_string(), e))?
        .mp_state;
    Ok(VcpuState {
        mp_state,
        features: BOOT_FEATURES,
        mpidr,
        regs,
    })
}

fn find_u64(regs: &[VcpuReg], id: u64) -> Option<u64> {
    let r = regs.iter().find(|r| r.id == id)?;
    Some(u64::from_le_bytes(r.value.as_slice().try_into().ok()?))
}

/// Everything `restore_vcpu` can find wrong with a state before touching the vCPU.
fn check_vcpu(index: u8, state: &VcpuState) -> Result<(), StateError> {
    let restorable = BOOT_FEATURES[0] | (1 << KVM_ARM_VCPU_POWER_OFF);
    if state.features[0] & !restorable != 0 || state.features[1..].iter().any(|&f| f != 0) {
        // Features such as SVE or the PMU need more than registers (finalisation, device
        // attributes), which this VMM neither sets up nor restores.
        return Err(StateError::Invalid(format!(
            "vCPU {index}: KVM_ARM_VCPU_INIT features {:x?} include some other than PSCI 0.2",
            state.features
        )));
    }
    for r in &state.regs {
        if reg_size(r.id) != Some(r.value.len()) {
            return Err(StateError::Invalid(format!(
                "vCPU {index}: register {} holds {} bytes, its id says {:?}",
                describe_reg(r.id),
                r.value.len(),
                reg_size(r.id)
            )));
        }
    }
    if find_u64(&state.regs, MPIDR_EL1) != Some(state.mpidr) {
        return Err(StateError::Invalid(format!(
            "vCPU {index}: MPIDR_EL1 {:#x} is not the one among its registers",
            state.mpidr
        )));
    }
    Ok(())
}

/// Called on a freshly created (KVM_CREATE_VCPU) but NOT yet initialised vCPU, in place of the
/// boot-time `regs::setup_vcpu`: does KVM_ARM_VCPU_INIT (preferred target from `vm`, PSCI 0.2,
/// the saved features but NOT the POWER_OFF bit: power state comes from mp_state), then sets
/// every saved register and the mp_state. `index` is for error messages.
pub fn restore_vcpu(
    vm: &VmFd,
    vcpu: &VcpuFd,
    index: u8,
    state: &VcpuState,
) -> Result<(), StateError> {
    check_vcpu(index, state)?;
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(|e| StateError::Kvm("KVM_ARM_PREFERRED_TARGET".to_string(), e))?;
    init.features = state.features;
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    init.features[0] &= !(1 << KVM_ARM_VCPU_POWER_OFF);
    vcpu.vcpu_init(&init)
        .map_err(|e| StateError::Kvm(format!("KVM_ARM_VCPU_INIT (vCPU {index})"), e))?;
    // The counters go last. Writing one does not store a value: KVM turns it into the VM's
    // counter offset, so the guest's counter resumes from the saved value and runs on from
    // the moment of the write; the later the write, the less of this restore the guest
    // sees pass. The other registers (CVAL/CTL included) are plain values, so their order
    // does not matter.
    let is_counter = |r: &&VcpuReg| r.id == TIMER_CNT || r.id == PTIMER_CNT;
    let others = state.regs.iter().filter(|r| !is_counter(r));
    for r in others.chain(state.regs.iter().filter(is_counter)) {
        vcpu.set_one_reg(r.id, &r.value)
            .map_err(|err| StateError::Register {
                vcpu: index,
                reg: describe_reg(r.id),
                err,
            })?;
    }
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: state.mp_state,
    })
    .map_err(|e| StateError::Kvm(format!("KVM_SET_MP_STATE (vCPU {index})"), e))
}

/// Called on the VMM thread while paused, after every vCPU's state was saved (pass them in order).
pub fn save_vm(_vm: &VmFd, chip: &IrqChip, vcpus: &[VcpuState]) -> Result<VmState, StateError> {
    let mpidrs: Vec<u64> = vcpus.iter().map(VcpuState::mpidr).collect();
    Ok(VmState {
        gic: gic_state::save(chip, &mpidrs)?,
    })
}

/// Called after every vCPU was restored with restore_vcpu and after the GIC was created
/// (`Gic::create`, which already did CTRL_INIT) for the same number of vCPUs; before any KVM_RUN.
pub fn restore_vm(
    _vm: &VmFd,
    chip: &IrqChip,
    vcpus: &[VcpuState],
    state: &VmState,
) -> Result<(), StateError> {
    let mpidrs: Vec<u64> = vcpus.iter().map(VcpuState::mpidr).collect();
    gic_state::restore(chip, &mpidrs, &state.gic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aarch64::regs::{reg_x, REG_PC, REG_PSTATE, REG_SP};
    use kvm_bindings::{KVM_REG_SIZE_U128, KVM_REG_SIZE_U32};

    fn core(off: usize, size: u64) -> u64 {
        KVM_REG_ARM64 | size | u64::from(KVM_REG_ARM_CORE) | (off / 4) as u64
    }

    #[test]
    fn sizes_from_ids() {
        assert_eq!(reg_size(MPIDR_EL1), Some(8));
        assert_eq!(reg_size(KVM_REG_ARM64 | KVM_REG_SIZE_U32), Some(4));
        assert_eq!(reg_size(KVM_REG_ARM64 | KVM_REG_SIZE_U128), Some(16));
        assert_eq!(
            reg_size(KVM_REG_ARM64 | (8 << KVM_REG_SIZE_SHIFT)),
            Some(256)
        );
        assert_eq!(reg_size(KVM_REG_ARM64 | (9 << KVM_REG_SIZE_SHIFT)), None);
    }

    #[test]
    fn ids_match_the_uapi() {
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(TIMER_CTL, 0x6030_0000_0013_df19);
        assert_eq!(TIMER_CNT, 0x6030_0000_0013_df1a);
        assert_eq!(TIMER_CVAL, 0x6030_0000_0013_df02);
        assert_eq!(PTIMER_CNT, 0x6030_0000_0013_df01);
    }

    #[test]
    fn names() {
        assert_eq!(reg_name(reg_x(0)).as_deref(), Some("x0"));
        assert_eq!(reg_name(reg_x(30)).as_deref(), Some("x30"));
        assert_eq!(reg_name(REG_SP).as_deref(), Some("sp"));
        assert_eq!(reg_name(REG_PC).as_deref(), Some("pc"));
        assert_eq!(reg_name(REG_PSTATE).as_deref(), Some("pstate"));
        let fp = offset_of!(kvm_regs, fp_regs);
        assert_eq!(
            reg_name(core(fp + 16 * 31, KVM_REG_SIZE_U128)).as_deref(),
            Some("v31")
        );
        let fpcr = fp + offset_of!(user_fpsimd_state, fpcr);
        assert_eq!(
            reg_name(core(fpcr, KVM_REG_SIZE_U32)).as_deref(),
            Some("fpcr")
        );
        let spsr = offset_of!(kvm_regs, spsr);
        assert_eq!(
            reg_name(core(spsr + 8, KVM_REG_SIZE_U64)).as_deref(),
            Some("spsr[1]")
        );
        assert_eq!(
            reg_name(sys_reg_id(3, 0, 1, 0, 0)).as_deref(),
            Some("S3_0_C1_C0_0")
        );
        assert_eq!(
            describe_reg(TIMER_CNT),
            "0x603000000013df1a (KVM_REG_ARM_TIMER_CNT)"
        );
        assert_eq!(
            reg_name(0x6030_0000_0014_0000).as_deref(),
            Some("firmware register 0x0")
        );
        assert_eq!(reg_name(0x1234), None);
    }

    fn sample() -> VcpuState {
        VcpuState {
            mp_state: kvm_bindings::KVM_MP_STATE_STOPPED,
            features: BOOT_FEATURES,
            mpidr: 0x8000_0001,
            regs: vec![
                VcpuReg {
                    id: reg_x(0),
                    value: 7u64.to_le_bytes().to_vec(),
                },
                VcpuReg {
                    id: MPIDR_EL1,
                    value: 0x8000_0001u64.to_le_bytes().to_vec(),
                },
            ],
        }
    }

    #[test]
    fn checks_before_restoring() {
        let s = sample();
        check_vcpu(1, &s).unwrap();
        assert_eq!(s.mpidr(), 0x8000_0001);

        let mut wrong_size = sample();
        wrong_size.regs[0].value.pop();
        let e = check_vcpu(1, &wrong_size).unwrap_err().to_string();
        assert!(e.contains("(x0) holds 7 bytes"), "{e}");

        let mut sve = sample();
        sve.features[0] |= 1 << kvm_bindings::KVM_ARM_VCPU_SVE;
        assert!(check_vcpu(1, &sve).is_err());

        let mut powered_off = sample();
        powered_off.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        check_vcpu(1, &powered_off).unwrap();

        let mut mpidr = sample();
        mpidr.mpidr = 0x8000_0002;
        assert!(check_vcpu(1, &mpidr).is_err());
    }

    #[test]
    fn errors_explain() {
        let e = StateError::Register {
            vcpu: 2,
            reg: describe_reg(MIDR_EL1),
            err: kvm_ioctls::Error::new(libc::EINVAL),
        };
        let msg = e.to_string();
        assert!(msg.starts_with("vCPU 2: KVM_SET_ONE_REG 0x603000000013c000 (MIDR_EL1) failed"));
        assert!(msg.contains("another CPU type"), "{msg}");
        let v = StateError::GicVersion {
            saved: 3,
            current: 2,
        };
        assert!(v.to_string().contains("GICv3 but this VM's GIC is a GICv2"));
    }
}
