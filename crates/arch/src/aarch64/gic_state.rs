//! The GIC's part of a snapshot. KVM's in-kernel GICv3 or GICv2 is read and written through
//! KVM_GET/SET_DEVICE_ATTR on its device fd, which KVM only allows while no vCPU is inside an
//! ioctl (EBUSY otherwise). The per-vCPU timers are vCPU registers (`state`), not GIC state.
//!
//! Restoring writes into a GIC that `Gic::create` just made for the same number of vCPUs, and
//! after every vCPU got its saved MPIDR_EL1 back: KVM finds a GICv3 redistributor by the
//! affinity of its vCPU. The order does not rely on what the fresh GIC holds:
//! 1. configuration: implementation revision (GICv2 ignores group writes until it is
//!    written), groups, priorities, trigger modes, SPI routing or targets, LPI tables;
//! 2. GICv3 only: the input level of level-sensitive lines, which KVM keeps apart from the
//!    pending latch and applies only to lines already configured level-sensitive;
//! 3. pending, active and enabled, each a set/clear register pair: clear what was clear,
//!    then set what was set;
//! 4. GICD_CTLR / GICR_CTLR, which gate delivery, once what they gate is in place;
//! 5. the CPU interfaces, ICC_CTLR_EL1 before the registers whose meaning it selects.

use super::gic::{Gic, GicVersion};
use super::layout::GIC_NR_SPIS;
use super::state::StateError;
use kvm_bindings::{
    kvm_device_attr, KVM_DEV_ARM_VGIC_CPUID_SHIFT, KVM_DEV_ARM_VGIC_GRP_CPU_REGS,
    KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT,
    KVM_REG_ARM64_SYSREG_CRM_SHIFT, KVM_REG_ARM64_SYSREG_CRN_SHIFT, KVM_REG_ARM64_SYSREG_OP0_SHIFT,
    KVM_REG_ARM64_SYSREG_OP1_SHIFT, KVM_REG_ARM64_SYSREG_OP2_SHIFT, VGIC_LEVEL_INFO_LINE_LEVEL,
};
use kvm_ioctls::DeviceFd;
use serde::{Deserialize, Serialize};

/// SGIs and PPIs: banked per vCPU, numbered before the SPIs.
const NR_PRIVATE: u32 = 32;
/// Every interrupt the GIC is created with (`Gic::create`).
const NR_IRQS: u32 = NR_PRIVATE + GIC_NR_SPIS;
// The SPI blocks below are whole 32-bit registers only for a multiple of 32 SPIs.
const _: () = assert!(GIC_NR_SPIS > 0 && GIC_NR_SPIS % 32 == 0);

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
    /// ICC_SRE_EL1.
    pub sre: u64,
    /// ICC_CTLR_EL1 (its PRIbits say how many active-priority registers there are).
    pub ctlr: u64,
    /// ICC_PMR_EL1.
    pub pmr: u64,
    /// ICC_BPR0_EL1.
    pub bpr0: u64,
    /// ICC_BPR1_EL1.
    pub bpr1: u64,
    /// ICC_IGRPEN0_EL1.
    pub igrpen0: u64,
    /// ICC_IGRPEN1_EL1.
    pub igrpen1: u64,
    /// ICC_AP0R<n>_EL1, as many as `ctlr` implies.
    pub ap0r: Vec<u64>,
    /// ICC_AP1R<n>_EL1, as many as `ctlr` implies.
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
    /// Distributor registers for the SPIs.
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
    /// Distributor registers for the SPIs.
    pub dist: Vec<RegBlock>,
    /// Per vCPU, in vCPU order (the GICv2 CPU number is the vCPU index).
    pub cpus: Vec<GicV2CpuState>,
}

/// The GIC, by version: state only restores into a GIC of the same version.
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

fn version_number(v: GicVersion) -> u8 {
    match v {
        GicVersion::V3 => 3,
        GicVersion::V2 => 2,
    }
}

/// When a block is written back (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Config,
    State,
    Control,
}

/// A run of 32-bit registers in one frame.
#[derive(Debug)]
struct Block {
    name: &'static str,
    offset: u32,
    words: u32,
    /// For a set register (IS*R), where its clear twin (IC*R) starts.
    clear: Option<u32>,
    stage: Stage,
}

impl Block {
    const fn one(name: &'static str, offset: u32, words: u32, stage: Stage) -> Block {
        Block {
            name,
            offset,
            words,
            clear: None,
            stage,
        }
    }

    const fn pair(name: &'static str, set: u32, clear: u32, words: u32) -> Block {
        Block {
            name,
            offset: set,
            words,
            clear: Some(clear),
            stage: Stage::State,
        }
    }

    /// The SPI part of a distributor register with `bits` bits per interrupt: the part for
    /// the private interrupts is banked per CPU (GICv2) or RAZ/WI with affinity routing
    /// (GICv3, where the redistributors hold it).
    const fn spis(name: &'static str, base: u32, bits: u32, stage: Stage) -> Block {
        Block::one(
            name,
            base + NR_PRIVATE * bits / 8,
            GIC_NR_SPIS * bits / 32,
            stage,
        )
    }

    /// The SPI part of a set/clear pair (one bit per interrupt).
    const fn spi_pair(name: &'static str, set: u32, clear: u32) -> Block {
        Block::pair(
            name,
            set + NR_PRIVATE / 8,
            clear + NR_PRIVATE / 8,
            GIC_NR_SPIS / 32,
        )
    }
}

// Distributor offsets (GICv2 and GICv3 share them).
const GICD_CTLR: u32 = 0x0;
const GICD_IIDR: u32 = 0x8;
const GICD_IGROUPR: u32 = 0x80;
const GICD_ISENABLER: u32 = 0x100;
const GICD_ICENABLER: u32 = 0x180;
const GICD_ISPENDR: u32 = 0x200;
const GICD_ICPENDR: u32 = 0x280;
const GICD_ISACTIVER: u32 = 0x300;
const GICD_ICACTIVER: u32 = 0x380;
const GICD_IPRIORITYR: u32 = 0x400;
const GICD_ITARGETSR: u32 = 0x800;
const GICD_ICFGR: u32 = 0xc00;
const GICD_CPENDSGIR: u32 = 0xf10;
const GICD_SPENDSGIR: u32 = 0xf20;
const GICD_IROUTER: u32 = 0x6000;
/// The redistributor's second 64 KiB frame, SGI_base, which mirrors the distributor's
/// layout for the private interrupts.
const GICR_SGI: u32 = 0x1_0000;

/// GICv3 distributor. GICD_STATUSR (error reporting), GICD_TYPER(2) (read-only) and
/// the GICv2-only registers are left out.
static V3_DIST: &[Block] = &[
    Block::one("GICD_IIDR", GICD_IIDR, 1, Stage::Config),
    Block::spis("GICD_IGROUPR", GICD_IGROUPR, 1, Stage::Config),
    Block::spis("GICD_IPRIORITYR", GICD_IPRIORITYR, 8, Stage::Config),
    Block::spis("GICD_ICFGR", GICD_ICFGR, 2, Stage::Config),
    Block::spis("GICD_IROUTER", GICD_IROUTER, 64, Stage::Config),
    Block::spi_pair("GICD_ISPENDR", GICD_ISPENDR, GICD_ICPENDR),
    Block::spi_pair("GICD_ISACTIVER", GICD_ISACTIVER, GICD_ICACTIVER),
    Block::spi_pair("GICD_ISENABLER", GICD_ISENABLER, GICD_ICENABLER),
    Block::one("GICD_CTLR", GICD_CTLR, 1, Stage::Control),
];

/// GICv3 redistributor. GICR_WAKER is RAZ/WI in KVM; the 64-bit LPI table bases are
/// written as two halves, which KVM allows; GICR_CTLR (EnableLPIs) goes after them since
/// they are frozen once LPIs are on.
static V3_REDIST: &[Block] = &[
    Block::one("GICR_PROPBASER", 0x70, 2, Stage::Config),
    Block::one("GICR_PENDBASER", 0x78, 2, Stage::Config),
    Block::one("GICR_IGROUPR0", GICR_SGI + GICD_IGROUPR, 1, Stage::Config),
    Block::one(
        "GICR_IPRIORITYR",
        GICR_SGI + GICD_IPRIORITYR,
        8,
        Stage::Config,
    ),
    Block::one("GICR_ICFGR", GICR_SGI + GICD_ICFGR, 2, Stage::Config),
    Block::pair(
        "GICR_ISPENDR0",
        GICR_SGI + GICD_ISPENDR,
        GICR_SGI + GICD_ICPENDR,
        1,
    ),
    Block::pair(
        "GICR_ISACTIVER0",
        GICR_SGI + GICD_ISACTIVER,
        GICR_SGI + GICD_ICACTIVER,
        1,
    ),
    Block::pair(
        "GICR_ISENABLER0",
        GICR_SGI + GICD_ISENABLER,
        GICR_SGI + GICD_ICENABLER,
        1,
    ),
    Block::one("GICR_CTLR", 0x0, 1, Stage::Control),
];

/// GICv2 distributor, global part (read and written as CPU 0).
static V2_DIST: &[Block] = &[
    Block::one("GICD_IIDR", GICD_IIDR, 1, Stage::Config),
    Block::spis("GICD_IGROUPR", GICD_IGROUPR, 1, Stage::Config),
    Block::spis("GICD_IPRIORITYR", GICD_IPRIORITYR, 8, Stage::Config),
    Block::spis("GICD_ICFGR", GICD_ICFGR, 2, Stage::Config),
    Block::spis("GICD_ITARGETSR", GICD_ITARGETSR, 8, Stage::Config),
    Block::spi_pair("GICD_ISPENDR", GICD_ISPENDR, GICD_ICPENDR),
    Block::spi_pair("GICD_ISACTIVER", GICD_ISACTIVER, GICD_ICACTIVER),
    Block::spi_pair("GICD_ISENABLER", GICD_ISENABLER, GICD_ICENABLER),
    Block::one("GICD_CTLR", GICD_CTLR, 1, Stage::Control),
];

/// GICv2 distributor registers banked per CPU. SGI pending state is per source CPU, in
/// GICD_SPENDSGIR (GICD_ISPENDR ignores SGIs); the private targets are read-only.
static V2_BANKED: &[Block] = &[
    Block::one("GICD_IGROUPR0", GICD_IGROUPR, 1, Stage::Config),
    Block::one("GICD_IPRIORITYR", GICD_IPRIORITYR, 8, Stage::Config),
    Block::one("GICD_ICFGR", GICD_ICFGR, 2, Stage::Config),
    Block::pair("GICD_ISPENDR0", GICD_ISPENDR, GICD_ICPENDR, 1),
    Block::pair("GICD_SPENDSGIR", GICD_SPENDSGIR, GICD_CPENDSGIR, 4),
    Block::pair("GICD_ISACTIVER0", GICD_ISACTIVER, GICD_ICACTIVER, 1),
    Block::pair("GICD_ISENABLER0", GICD_ISENABLER, GICD_ICENABLER, 1),
];

/// GICv2 CPU interface. GICC_APR1..3 read as zero and ignore writes where the host has
/// fewer priority groups, so all four are safe; GICC_NSAPR is not emulated.
static V2_CPU: &[Block] = &[
    Block::one("GICC_PMR", 0x04, 1, Stage::Config),
    Block::one("GICC_BPR", 0x08, 1, Stage::Config),
    Block::one("GICC_ABPR", 0x1c, 1, Stage::Config),
    Block::one("GICC_APR", 0xd0, 4, Stage::Config),
    Block::one("GICC_CTLR", 0x00, 1, Stage::Control),
];

/// Where a table of blocks lives: its KVM group and what goes in bits 63:32 of each
/// attribute (nothing, a GICv3 affinity or a GICv2 CPU number).
#[derive(Clone, Copy, Debug)]
struct Frame {
    group: u32,
    selector: u64,
    name: &'static str,
    vcpu: Option<usize>,
}

impl Frame {
    fn dist() -> Frame {
        Frame {
            group: KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
            selector: 0,
            name: "distributor",
            vcpu: None,
        }
    }

    fn v3(group: u32, name: &'static str, vcpu: usize, mpidr: u64) -> Frame {
        Frame {
            group,
            selector: u64::from(mpidr_to_affinity(mpidr)) << KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT,
            name,
            vcpu: Some(vcpu),
        }
    }

    fn v2(group: u32, name: &'static str, vcpu: usize) -> Result<Frame, StateError> {
        // KVM takes the GICv2 CPU number (the vCPU id) in 8 bits.
        let cpu = u8::try_from(vcpu)
            .map_err(|_| StateError::Invalid(format!("GICv2 CPU number {vcpu} exceeds 255")))?;
        Ok(Frame {
            group,
            selector: u64::from(cpu) << KVM_DEV_ARM_VGIC_CPUID_SHIFT,
            name,
            vcpu: Some(vcpu),
        })
    }

    fn attr(&self, offset: u32) -> u64 {
        self.selector | u64::from(offset)
    }

    fn op(&self, write: bool, reg: &str, offset: u32) -> String {
        let ioctl = if write {
            "KVM_SET_DEVICE_ATTR"
        } else {
            "KVM_GET_DEVICE_ATTR"
        };
        // System registers are named by their encoding, frames by offsets.
        let at = if self.group == KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS {
            String::new()
        } else {
            format!(", +{offset:#x}")
        };
        match self.vcpu {
            Some(v) => format!("{ioctl} {reg} ({} of vCPU {v}{at})", self.name),
            None => format!("{ioctl} {reg} ({}{at})", self.name),
        }
    }

    /// A CPU system register's attribute.
    fn attr_sysreg(&self, encoding: u64) -> u64 {
        self.selector | encoding
    }
}

/// The 32-bit affinity KVM takes in bits 63:32 of a GICv3 redistributor, CPU system
/// register or line level attribute: Aff3.Aff2.Aff1.Aff0, a byte each. MPIDR_EL1 keeps Aff3
/// apart, in bits 39:32, above the U and MT bits.
pub(crate) fn mpidr_to_affinity(mpidr: u64) -> u32 {
    let b = mpidr.to_le_bytes();
    u32::from_be_bytes([b[4], b[2], b[1], b[0]])
}

/// Values a device attribute carries: 32 bits for every group but the CPU system
/// registers, which are 64.
trait AttrValue: Copy + Default {}
impl AttrValue for u32 {}
impl AttrValue for u64 {}

fn get<T: AttrValue>(
    fd: &DeviceFd,
    group: u32,
    attr: u64,
    op: impl FnOnce() -> String,
) -> Result<T, StateError> {
    let mut value = T::default();
    let mut a = kvm_device_attr {
        group,
        attr,
        addr: &mut value as *mut T as u64,
        flags: 0,
    };
    // SAFETY: `addr` points at `value`, which outlives the call, and KVM writes one register
    // of the group's width there: callers pass u64 for KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS and
    // u32 for the other groups, matching KVM's access sizes.
    unsafe { fd.get_device_attr(&mut a) }.map_err(|e| StateError::Kvm(op(), e))?;
    Ok(value)
}

fn set<T: AttrValue>(
    fd: &DeviceFd,
    group: u32,
    attr: u64,
    value: T,
    op: impl FnOnce() -> String,
) -> Result<(), StateError> {
    // KVM reads one register of the group's width from `addr`, a local that outlives the call.
    let a = kvm_device_attr {
        group,
        attr,
        addr: &value as *const T as u64,
        flags: 0,
    };
    fd.set_device_attr(&a).map_err(|e| StateError::Kvm(op(), e))
}

fn read_blocks(fd: &DeviceFd, frame: Frame, table: &[Block]) -> Result<Vec<RegBlock>, StateError> {
    let mut out = Vec::with_capacity(table.len());
    for b in table {
        let mut values = Vec::with_capacity(b.words as usize);
        for i in 0..b.words {
            let off = b.offset + 4 * i;
            values.push(get(fd, frame.group, frame.attr(off), || {
                frame.op(false, b.name, off)
            })?);
        }
        out.push(RegBlock {
            offset: b.offset,
            values,
        });
    }
    Ok(out)
}

/// Checks that `saved` is what `read_blocks` makes of `table` in this build (same
/// registers, same interrupt count), before anything is written.
fn check_blocks(frame: Frame, table: &[Block], saved: &[RegBlock]) -> Result<(), StateError> {
    let who = match frame.vcpu {
        Some(v) => format!("{} of vCPU {v}", frame.name),
        None => frame.name.to_string(),
    };
    if saved.len() != table.len() {
        return Err(StateError::Invalid(format!(
            "the {who} has {} register blocks saved, this VMM restores {}",
            saved.len(),
            table.len()
        )));
    }
    for (b, s) in table.iter().zip(saved) {
        if s.offset != b.offset || s.values.len() != b.words as usize {
            return Err(StateError::Invalid(format!(
                "{} in the {who}: saved {} registers at {:#x}, this VMM restores {} at {:#x} \
                 ({NR_IRQS} interrupts)",
                b.name,
                s.values.len(),
                s.offset,
                b.words,
                b.offset
            )));
        }
    }
    Ok(())
}

/// Writes the blocks of `stage` (already checked with `check_blocks`).
fn write_blocks(
    fd: &DeviceFd,
    frame: Frame,
    table: &[Block],
    saved: &[RegBlock],
    stage: Stage,
) -> Result<(), StateError> {
    for (b, s) in table.iter().zip(saved).filter(|(b, _)| b.stage == stage) {
        for (i, &value) in (0u32..).zip(&s.values) {
            if let Some(clear) = b.clear {
                let off = clear + 4 * i;
                set(fd, frame.group, frame.attr(off), !value, || {
                    frame.op(true, b.name, off)
                })?;
            }
            let off = b.offset + 4 * i;
            set(fd, frame.group, frame.attr(off), value, || {
                frame.op(true, b.name, off)
            })?;
        }
    }
    Ok(())
}

/// A GICv3 CPU system register's encoding, as KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS takes it
/// in the low 16 bits of the attribute (the layout of KVM_REG_ARM64_SYSREG ids).
const fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    (op0 << KVM_REG_ARM64_SYSREG_OP0_SHIFT)
        | (op1 << KVM_REG_ARM64_SYSREG_OP1_SHIFT)
        | (crn << KVM_REG_ARM64_SYSREG_CRN_SHIFT)
        | (crm << KVM_REG_ARM64_SYSREG_CRM_SHIFT)
        | (op2 << KVM_REG_ARM64_SYSREG_OP2_SHIFT)
}

const ICC_SRE_EL1: u64 = sysreg(3, 0, 12, 12, 5);
const ICC_CTLR_EL1: u64 = sysreg(3, 0, 12, 12, 4);
const ICC_PMR_EL1: u64 = sysreg(3, 0, 4, 6, 0);
const ICC_BPR0_EL1: u64 = sysreg(3, 0, 12, 8, 3);
const ICC_BPR1_EL1: u64 = sysreg(3, 0, 12, 12, 3);
const ICC_IGRPEN0_EL1: u64 = sysreg(3, 0, 12, 12, 6);
const ICC_IGRPEN1_EL1: u64 = sysreg(3, 0, 12, 12, 7);
const fn icc_ap0r(n: u64) -> u64 {
    sysreg(3, 0, 12, 8, 4 | n)
}
const fn icc_ap1r(n: u64) -> u64 {
    sysreg(3, 0, 12, 9, n)
}

/// How many ICC_AP0R/AP1R registers KVM has for an ICC_CTLR_EL1 value: one per 32
/// preemption levels, so it follows the priority bits (PRIbits + 1), as in KVM's
/// vgic_v3_max_apr_idx.
fn ap_count(ctlr: u64) -> u64 {
    match ((ctlr >> 8) & 7) + 1 {
        7 => 4,
        6 => 2,
        _ => 1,
    }
}

fn read_icc(fd: &DeviceFd, frame: Frame) -> Result<IccRegs, StateError> {
    let rd = |name: &str, enc: u64| {
        get::<u64>(fd, frame.group, frame.attr_sysreg(enc), || {
            frame.op(false, name, 0)
        })
    };
    let ctlr = rd("ICC_CTLR_EL1", ICC_CTLR_EL1)?;
    let n = ap_count(ctlr);
    let mut ap0r = Vec::new();
    let mut ap1r = Vec::new();
    for i in 0..n {
        ap0r.push(rd(&format!("ICC_AP0R{i}_EL1"), icc_ap0r(i))?);
    }
    for i in 0..n {
        ap1r.push(rd(&format!("ICC_AP1R{i}_EL1"), icc_ap1r(i))?);
    }
    Ok(IccRegs {
        sre: rd("ICC_SRE_EL1", ICC_SRE_EL1)?,
        ctlr,
        pmr: rd("ICC_PMR_EL1", ICC_PMR_EL1)?,
        bpr0: rd("ICC_BPR0_EL1", ICC_BPR0_EL1)?,
        bpr1: rd("ICC_BPR1_EL1", ICC_BPR1_EL1)?,
        igrpen0: rd("ICC_IGRPEN0_EL1", ICC_IGRPEN0_EL1)?,
        igrpen1: rd("ICC_IGRPEN1_EL1", ICC_IGRPEN1_EL1)?,
        ap0r,
        ap1r,
    })
}

fn check_icc(vcpu: usize, icc: &IccRegs) -> Result<(), StateError> {
    let n = ap_count(icc.ctlr);
    if icc.ap0r.len() as u64 != n || icc.ap1r.len() as u64 != n {
        return Err(StateError::Invalid(format!(
            "vCPU {vcpu}: ICC_CTLR_EL1 {:#x} implies {n} ICC_AP0R/AP1R registers, the \
             snapshot has {} and {}",
            icc.ctlr,
            icc.ap0r.len(),
            icc.ap1r.len()
        )));
    }
    Ok(())
}

/// Writes a checked CPU interface back: SRE and CTLR first, since CTLR sets the priority
/// bits (so which AP registers exist) and CBPR (which BPR1 depends on).
fn write_icc(fd: &DeviceFd, frame: Frame, icc: &IccRegs) -> Result<(), StateError> {
    let wr = |name: &str, enc: u64, value: u64| {
        set(fd, frame.group, frame.attr_sysreg(enc), value, || {
            frame.op(true, name, 0)
        })
    };
    wr("ICC_SRE_EL1", ICC_SRE_EL1, icc.sre)?;
    wr("ICC_CTLR_EL1", ICC_CTLR_EL1, icc.ctlr)?;
    wr("ICC_PMR_EL1", ICC_PMR_EL1, icc.pmr)?;
    wr("ICC_BPR0_EL1", ICC_BPR0_EL1, icc.bpr0)?;
    wr("ICC_BPR1_EL1", ICC_BPR1_EL1, icc.bpr1)?;
    for (i, &v) in (0u64..).zip(&icc.ap0r) {
        wr(&format!("ICC_AP0R{i}_EL1"), icc_ap0r(i), v)?;
    }
    for (i, &v) in (0u64..).zip(&icc.ap1r) {
        wr(&format!("ICC_AP1R{i}_EL1"), icc_ap1r(i), v)?;
    }
    wr("ICC_IGRPEN0_EL1", ICC_IGRPEN0_EL1, icc.igrpen0)?;
    wr("ICC_IGRPEN1_EL1", ICC_IGRPEN1_EL1, icc.igrpen1)
}

/// The line level attribute for the 32 interrupts from `intid` (a multiple of 32), in the
/// redistributor of `mpidr` (for SPIs any vCPU's will do).
fn level_attr(mpidr: u64, intid: u32) -> u64 {
    u64::from(mpidr_to_affinity(mpidr)) << KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT
        | u64::from(VGIC_LEVEL_INFO_LINE_LEVEL) << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT
        | u64::from(intid)
}

fn level_op(write: bool, mpidr: u64, intid: u32) -> String {
    let ioctl = if write {
        "KVM_SET_DEVICE_ATTR"
    } else {
        "KVM_GET_DEVICE_ATTR"
    };
    format!("{ioctl} line levels of INTID {intid}.. (MPIDR {mpidr:#x})")
}

/// The SPIs' line level words: INTIDs 32, 64, ...
fn spi_level_intids() -> impl Iterator<Item = u32> {
    (NR_PRIVATE..NR_IRQS).step_by(32)
}

/// Saves the GIC; `mpidrs` are the vCPUs' MPIDR_EL1 values, in vCPU order.
pub(crate) fn save(gic: &Gic, mpidrs: &[u64]) -> Result<GicState, StateError> {
    let fd = gic.fd();
    let Some(&first) = mpidrs.first() else {
        return Err(StateError::Invalid("a VM without vCPUs".to_string()));
    };
    match gic.version() {
        GicVersion::V3 => {
            let dist = read_blocks(fd, Frame::dist(), V3_DIST)?;
            let mut spi_line_levels = Vec::new();
            for intid in spi_level_intids() {
                spi_line_levels.push(get(
                    fd,
                    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
                    level_attr(first, intid),
                    || level_op(false, first, intid),
                )?);
            }
            let mut redists = Vec::with_capacity(mpidrs.len());
            for (i, &mpidr) in mpidrs.iter().enumerate() {
                let rd = Frame::v3(KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, "redistributor", i, mpidr);
                let cpu = Frame::v3(KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, "CPU interface", i, mpidr);
                redists.push(RedistState {
                    regs: read_blocks(fd, rd, V3_REDIST)?,
                    line_levels: get(
                        fd,
                        KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
                        level_attr(mpidr, 0),
                        || level_op(false, mpidr, 0),
                    )?,
                    icc: read_icc(fd, cpu)?,
                });
            }
            Ok(GicState::V3(GicV3State {
                dist,
                spi_line_levels,
                redists,
            }))
        }
        GicVersion::V2 => {
            let dist = read_blocks(fd, Frame::dist(), V2_DIST)?;
            let mut cpus = Vec::with_capacity(mpidrs.len());
            for i in 0..mpidrs.len() {
                let banked = Frame::v2(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, "distributor", i)?;
                let cpu = Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, "CPU interface", i)?;
                cpus.push(GicV2CpuState {
                    banked: read_blocks(fd, banked, V2_BANKED)?,
                    cpu_interface: read_blocks(fd, cpu, V2_CPU)?,
                });
            }
            Ok(GicState::V2(GicV2State { dist, cpus }))
        }
    }
}

/// Restores the GIC saved by `save` into `gic`, fresh and of the same version, whose vCPUs
/// (MPIDR_EL1 values `mpidrs`, in vCPU order) were all restored already.
pub(crate) fn restore(gic: &Gic, mpidrs: &[u64], state: &GicState) -> Result<(), StateError> {
    let fd = gic.fd();
    match (state, gic.version()) {
        (GicState::V3(s), GicVersion::V3) => restore_v3(fd, mpidrs, s),
        (GicState::V2(s), GicVersion::V2) => restore_v2(fd, mpidrs.len(), s),
        (_, current) => Err(StateError::GicVersion {
            saved: state.version(),
            current: version_number(current),
        }),
    }
}

fn restore_v3(fd: &DeviceFd, mpidrs: &[u64], s: &GicV3State) -> Result<(), StateError> {
    if s.redists.len() != mpidrs.len() {
        return Err(StateError::VcpuCount {
            saved: s.redists.len(),
            current: mpidrs.len(),
        });
    }
    let Some(&first) = mpidrs.first() else {
        return Err(StateError::Invalid("a VM without vCPUs".to_string()));
    };
    let dist = Frame::dist();
    let frames: Vec<(Frame, Frame)> = mpidrs
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            (
                Frame::v3(KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, "redistributor", i, m),
                Frame::v3(KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, "CPU interface", i, m),
            )
        })
        .collect();
    check_blocks(dist, V3_DIST, &s.dist)?;
    let spi_words = spi_level_intids().count();
    if s.spi_line_levels.len() != spi_words {
        return Err(StateError::Invalid(format!(
            "{} SPI line level words saved, this VMM restores {spi_words} ({NR_IRQS} interrupts)",
            s.spi_line_levels.len()
        )));
    }
    for (i, (r, (rd, _))) in s.redists.iter().zip(&frames).enumerate() {
        check_blocks(*rd, V3_REDIST, &r.regs)?;
        check_icc(i, &r.icc)?;
    }

    write_blocks(fd, dist, V3_DIST, &s.dist, Stage::Config)?;
    for (r, (rd, _)) in s.redists.iter().zip(&frames) {
        write_blocks(fd, *rd, V3_REDIST, &r.regs, Stage::Config)?;
    }
    for (intid, &levels) in spi_level_intids().zip(&s.spi_line_levels) {
        set(
            fd,
            KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
            level_attr(first, intid),
            levels,
            || level_op(true, first, intid),
        )?;
    }
    for (r, &mpidr) in s.redists.iter().zip(mpidrs) {
        set(
            fd,
            KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
            level_attr(mpidr, 0),
            r.line_levels,
            || level_op(true, mpidr, 0),
        )?;
    }
    for stage in [Stage::State, Stage::Control] {
        write_blocks(fd, dist, V3_DIST, &s.dist, stage)?;
        for (r, (rd, _)) in s.redists.iter().zip(&frames) {
            write_blocks(fd, *rd, V3_REDIST, &r.regs, stage)?;
        }
    }
    for (r, (_, cpu)) in s.redists.iter().zip(&frames) {
        write_icc(fd, *cpu, &r.icc)?;
    }
    Ok(())
}

fn restore_v2(fd: &DeviceFd, vcpus: usize, s: &GicV2State) -> Result<(), StateError> {
    if s.cpus.len() != vcpus {
        return Err(StateError::VcpuCount {
            saved: s.cpus.len(),
            current: vcpus,
        });
    }
    let dist = Frame::dist();
    let mut frames = Vec::with_capacity(vcpus);
    for i in 0..vcpus {
        frames.push((
            Frame::v2(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, "distributor", i)?,
            Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, "CPU interface", i)?,
        ));
    }
    check_blocks(dist, V2_DIST, &s.dist)?;
    for (c, (banked, cpu)) in s.cpus.iter().zip(&frames) {
        check_blocks(*banked, V2_BANKED, &c.banked)?;
        check_blocks(*cpu, V2_CPU, &c.cpu_interface)?;
    }

    // GICD_IIDR comes first in the Config stage: KVM ignores userspace writes to the
    // GICv2 group registers until it has seen one.
    for stage in [Stage::Config, Stage::State, Stage::Control] {
        write_blocks(fd, dist, V2_DIST, &s.dist, stage)?;
        for (c, (banked, _)) in s.cpus.iter().zip(&frames) {
            write_blocks(fd, *banked, V2_BANKED, &c.banked, stage)?;
        }
    }
    for (c, (_, cpu)) in s.cpus.iter().zip(&frames) {
        for stage in [Stage::Config, Stage::State, Stage::Control] {
            write_blocks(fd, *cpu, V2_CPU, &c.cpu_interface, stage)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(table: &'a [Block], name: &str) -> &'a Block {
        table.iter().find(|b| b.name == name).unwrap()
    }

    #[test]
    fn affinity_from_mpidr() {
        // Aff3 (bits 39:32) moves down next to Aff2; the RES1 bit 31 and U/MT go.
        assert_eq!(mpidr_to_affinity(0x8000_0000), 0);
        assert_eq!(mpidr_to_affinity(0x8000_0001), 1);
        assert_eq!(mpidr_to_affinity(0x0000_00ab_8012_3456), 0xab12_3456);
        assert_eq!(mpidr_to_affinity(0xffff_ff00_c000_0000), 0);
        let f = Frame::v3(
            KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
            "redistributor",
            1,
            0x8000_0102,
        );
        assert_eq!(f.attr(0x1_0100), 0x0000_0102_0001_0100);
    }

    #[test]
    fn v2_cpu_attr() {
        let f = Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, "CPU interface", 3).unwrap();
        assert_eq!(f.attr(0xd0), 0x3_0000_00d0);
        assert!(Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, "CPU interface", 256).is_err());
    }

    #[test]
    fn spi_blocks_cover_the_spis() {
        // 128 interrupts: 96 SPIs from INTID 32.
        assert_eq!(NR_IRQS, 128);
        let en = find(V3_DIST, "GICD_ISENABLER");
        assert_eq!((en.offset, en.words, en.clear), (0x104, 3, Some(0x184)));
        let prio = find(V3_DIST, "GICD_IPRIORITYR");
        assert_eq!((prio.offset, prio.words), (0x420, 24));
        let cfg = find(V3_DIST, "GICD_ICFGR");
        assert_eq!((cfg.offset, cfg.words), (0xc08, 6));
        let route = find(V3_DIST, "GICD_IROUTER");
        assert_eq!((route.offset, route.words), (0x6100, 192));
        let targets = find(V2_DIST, "GICD_ITARGETSR");
        assert_eq!((targets.offset, targets.words), (0x820, 24));
        let sgi = find(V2_BANKED, "GICD_SPENDSGIR");
        assert_eq!((sgi.offset, sgi.words, sgi.clear), (0xf20, 4, Some(0xf10)));
        let pend = find(V3_REDIST, "GICR_ISPENDR0");
        assert_eq!((pend.offset, pend.clear), (0x1_0200, Some(0x1_0280)));
        assert_eq!(spi_level_intids().collect::<Vec<_>>(), [32, 64, 96]);
    }

    #[test]
    fn control_registers_come_last() {
        for table in [V3_DIST, V3_REDIST, V2_DIST, V2_CPU] {
            let last = table.last().unwrap();
            assert_eq!(last.stage, Stage::Control, "{}", last.name);
            assert!(table[..table.len() - 1]
                .iter()
                .all(|b| b.stage != Stage::Control));
        }
        assert_eq!(V2_DIST[0].name, "GICD_IIDR");
    }

    #[test]
    fn icc_encodings() {
        assert_eq!(ICC_SRE_EL1, 0xc665);
        assert_eq!(ICC_CTLR_EL1, 0xc664);
        assert_eq!(ICC_PMR_EL1, 0xc230);
        assert_eq!(icc_ap0r(1), 0xc645);
        assert_eq!(icc_ap1r(1), 0xc649);
    }

    #[test]
    fn ap_registers_follow_priority_bits() {
        assert_eq!(ap_count(4 << 8), 1); // 5 bits
        assert_eq!(ap_count(5 << 8), 2); // 6 bits
        assert_eq!(ap_count(6 << 8), 4); // 7 bits
        let icc = IccRegs {
            sre: 7,
            ctlr: 6 << 8,
            pmr: 0xf0,
            bpr0: 2,
            bpr1: 3,
            igrpen0: 0,
            igrpen1: 1,
            ap0r: vec![0; 4],
            ap1r: vec![0; 2],
        };
        assert!(check_icc(0, &icc).is_err());
    }

    #[test]
    fn saved_blocks_must_match() {
        let ok: Vec<RegBlock> = V2_CPU
            .iter()
            .map(|b| RegBlock {
                offset: b.offset,
                values: vec![0; b.words as usize],
            })
            .collect();
        let f = Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, "CPU interface", 0).unwrap();
        check_blocks(f, V2_CPU, &ok).unwrap();
        let mut short = ok.clone();
        short[3].values.pop();
        let e = check_blocks(f, V2_CPU, &short).unwrap_err().to_string();
        assert!(e.contains("GICC_APR") && e.contains("vCPU 0"), "{e}");
        assert!(check_blocks(f, V2_CPU, &ok[1..]).is_err());
    }
}
