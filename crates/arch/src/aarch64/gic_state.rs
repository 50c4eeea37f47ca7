//! The GIC's part of a snapshot. KVM's in-kernel GICv3 or GICv2 is read and written through
//! KVM_GET/SET_DEVICE_ATTR on its device fd, which KVM only allows while no vCPU is inside an
//! ioctl (EBUSY otherwise). The per-vCPU timers are vCPU registers (`state`), not GIC state.
//!
//! Restoring writes into a GIC that `Gic::create` just made for the same number of vCPUs, and
//! after every vCPU got its saved MPIDR_EL1 back: KVM finds a GICv3 redistributor by the
//! affinity of its vCPU. The order does not rely on what the fresh GIC holds:
//! 1. configuration: implementation revision (see `Stage::Revision`), groups, priorities,
//!    trigger modes, SPI routing or targets, LPI tables;
//! 2. GICv3 only: the input level of level-sensitive lines, which KVM keeps apart from the
//!    pending latch and applies only to lines already configured level-sensitive;
//! 3. pending, active and enabled, each a set/clear register pair: clear what was clear,
//!    then set what was set;
//! 4. GICD_CTLR / GICR_CTLR, which gate delivery, once what they gate is in place;
//! 5. the CPU interfaces, ICC_CTLR_EL1 before the registers whose meaning it selects.

use super::gic::{Gic, GicVersion};
use super::layout::GIC_NR_SPIS;
use super::state::{
    GicState, GicV2CpuState, GicV2State, GicV3State, IccRegs, RedistState, RegBlock, StateError,
};
use kvm_bindings::{
    kvm_device_attr, KVM_DEV_ARM_VGIC_CPUID_SHIFT, KVM_DEV_ARM_VGIC_GRP_CPU_REGS,
    KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT,
    KVM_REG_ARM64_SYSREG_CRM_SHIFT, KVM_REG_ARM64_SYSREG_CRN_SHIFT, KVM_REG_ARM64_SYSREG_OP0_SHIFT,
    KVM_REG_ARM64_SYSREG_OP1_SHIFT, KVM_REG_ARM64_SYSREG_OP2_SHIFT, VGIC_LEVEL_INFO_LINE_LEVEL,
};
use kvm_ioctls::DeviceFd;

/// SGIs and PPIs: banked per vCPU, numbered before the SPIs.
const NR_PRIVATE: u32 = 32;
/// Every interrupt the GIC is created with (`Gic::create`).
const NR_IRQS: u32 = NR_PRIVATE + GIC_NR_SPIS;
// The SPI blocks below are whole 32-bit registers only for a multiple of 32 SPIs.
const _: () = assert!(GIC_NR_SPIS > 0 && GIC_NR_SPIS.is_multiple_of(32));

/// When a block is written back (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// GICD_IIDR on a GICv3, written only where the fresh GIC reports another revision
    /// (which KVM then adopts if it implements it): rewriting the same value buys nothing
    /// and is what Firecracker and QEMU leave alone. A GICv2 takes it in `Config`, always,
    /// since KVM ignores userspace writes to its group registers until it has seen one.
    Revision,
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

/// Each IC*R (clear-enable, -pending, -active) sits this far above its IS*R.
const CLEAR_DELTA: u32 = 0x80;

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

    const fn pair(name: &'static str, set: u32, words: u32) -> Block {
        Block {
            name,
            offset: set,
            words,
            clear: Some(set + CLEAR_DELTA),
            stage: Stage::State,
        }
    }

    /// The SPI part of a distributor register with `bits` bits per interrupt: the part for
    /// the private interrupts is banked per CPU (GICv2) or RAZ/WI with affinity routing
    /// (GICv3, where the redistributors hold it).
    const fn spis(name: &'static str, base: u32, bits: u32) -> Block {
        let words = GIC_NR_SPIS * bits / 32;
        Block::one(name, base + NR_PRIVATE * bits / 8, words, Stage::Config)
    }

    /// The SPI part of a set/clear pair (one bit per interrupt).
    const fn spi_pair(name: &'static str, set: u32) -> Block {
        Block::pair(name, set + NR_PRIVATE / 8, GIC_NR_SPIS / 32)
    }
}

// Distributor offsets (GICv2 and GICv3 share them), set registers only.
const GICD_CTLR: u32 = 0x0;
const GICD_IIDR: u32 = 0x8;
const GICD_IGROUPR: u32 = 0x80;
const GICD_ISENABLER: u32 = 0x100;
const GICD_ISPENDR: u32 = 0x200;
const GICD_ISACTIVER: u32 = 0x300;
const GICD_IPRIORITYR: u32 = 0x400;
const GICD_ITARGETSR: u32 = 0x800;
const GICD_ICFGR: u32 = 0xc00;
const GICD_SPENDSGIR: u32 = 0xf20;
const GICD_IROUTER: u32 = 0x6000;
/// The redistributor's second 64 KiB frame, SGI_base, laid out like the distributor for
/// the private interrupts.
const SGI: u32 = 0x1_0000;

/// GICv3 distributor. GICD_STATUSR (error reporting), GICD_TYPER(2) (read-only) and
/// the GICv2-only registers are left out.
static V3_DIST: &[Block] = &[
    Block::one("GICD_IIDR", GICD_IIDR, 1, Stage::Revision),
    Block::spis("GICD_IGROUPR", GICD_IGROUPR, 1),
    Block::spis("GICD_IPRIORITYR", GICD_IPRIORITYR, 8),
    Block::spis("GICD_ICFGR", GICD_ICFGR, 2),
    Block::spis("GICD_IROUTER", GICD_IROUTER, 64),
    Block::spi_pair("GICD_ISPENDR", GICD_ISPENDR),
    Block::spi_pair("GICD_ISACTIVER", GICD_ISACTIVER),
    Block::spi_pair("GICD_ISENABLER", GICD_ISENABLER),
    Block::one("GICD_CTLR", GICD_CTLR, 1, Stage::Control),
];

/// GICv3 redistributor. GICR_WAKER is RAZ/WI in KVM; the 64-bit LPI table bases go as two
/// halves, which KVM allows, and before GICR_CTLR (EnableLPIs), which freezes them.
static V3_REDIST: &[Block] = &[
    Block::one("GICR_PROPBASER", 0x70, 2, Stage::Config),
    Block::one("GICR_PENDBASER", 0x78, 2, Stage::Config),
    Block::one("GICR_IGROUPR0", SGI + GICD_IGROUPR, 1, Stage::Config),
    Block::one("GICR_IPRIORITYR", SGI + GICD_IPRIORITYR, 8, Stage::Config),
    Block::one("GICR_ICFGR", SGI + GICD_ICFGR, 2, Stage::Config),
    Block::pair("GICR_ISPENDR0", SGI + GICD_ISPENDR, 1),
    Block::pair("GICR_ISACTIVER0", SGI + GICD_ISACTIVER, 1),
    Block::pair("GICR_ISENABLER0", SGI + GICD_ISENABLER, 1),
    Block::one("GICR_CTLR", 0x0, 1, Stage::Control),
];

/// GICv2 distributor, global part (accessed as CPU 0).
static V2_DIST: &[Block] = &[
    Block::one("GICD_IIDR", GICD_IIDR, 1, Stage::Config),
    Block::spis("GICD_IGROUPR", GICD_IGROUPR, 1),
    Block::spis("GICD_IPRIORITYR", GICD_IPRIORITYR, 8),
    Block::spis("GICD_ICFGR", GICD_ICFGR, 2),
    Block::spis("GICD_ITARGETSR", GICD_ITARGETSR, 8),
    Block::spi_pair("GICD_ISPENDR", GICD_ISPENDR),
    Block::spi_pair("GICD_ISACTIVER", GICD_ISACTIVER),
    Block::spi_pair("GICD_ISENABLER", GICD_ISENABLER),
    Block::one("GICD_CTLR", GICD_CTLR, 1, Stage::Control),
];

/// GICv2 distributor registers banked per CPU. SGI pending state is per source CPU, in
/// GICD_SPENDSGIR (GICD_ISPENDR ignores SGIs), whose clear twin GICD_CPENDSGIR sits just
/// below it; the private targets are read-only.
static V2_BANKED: &[Block] = &[
    Block::one("GICD_IGROUPR0", GICD_IGROUPR, 1, Stage::Config),
    Block::one("GICD_IPRIORITYR", GICD_IPRIORITYR, 8, Stage::Config),
    Block::one("GICD_ICFGR", GICD_ICFGR, 2, Stage::Config),
    Block::pair("GICD_ISPENDR0", GICD_ISPENDR, 1),
    Block {
        clear: Some(GICD_SPENDSGIR - 0x10),
        ..Block::pair("GICD_SPENDSGIR", GICD_SPENDSGIR, 4)
    },
    Block::pair("GICD_ISACTIVER0", GICD_ISACTIVER, 1),
    Block::pair("GICD_ISENABLER0", GICD_ISENABLER, 1),
];

/// GICv2 CPU interface. GICC_APR1..3 read as zero and ignore writes where the host has
/// fewer priority groups, so all four are safe; KVM does not emulate GICC_NSAPR.
static V2_CPU: &[Block] = &[
    Block::one("GICC_PMR", 0x04, 1, Stage::Config),
    Block::one("GICC_BPR", 0x08, 1, Stage::Config),
    Block::one("GICC_ABPR", 0x1c, 1, Stage::Config),
    Block::one("GICC_APR", 0xd0, 4, Stage::Config),
    Block::one("GICC_CTLR", 0x00, 1, Stage::Control),
];

/// The 32-bit affinity KVM takes in bits 63:32 of a GICv3 redistributor, CPU system
/// register or line level attribute: Aff3.Aff2.Aff1.Aff0, a byte each. MPIDR_EL1 keeps Aff3
/// apart, in bits 39:32, above the U and MT bits.
pub(crate) fn mpidr_to_affinity(mpidr: u64) -> u32 {
    let b = mpidr.to_le_bytes();
    u32::from_be_bytes([b[4], b[2], b[1], b[0]])
}

/// Values a device attribute carries: 64 bits for the CPU system registers, 32 for every
/// other group.
trait AttrValue: Copy + Default {}
impl AttrValue for u32 {}
impl AttrValue for u64 {}

/// One KVM attribute group, for one vCPU where it is per vCPU: the group and what goes in
/// bits 63:32 of each attribute (nothing, a GICv3 affinity or a GICv2 CPU number).
#[derive(Clone, Copy, Debug)]
struct Frame {
    group: u32,
    selector: u64,
    vcpu: Option<usize>,
}

impl Frame {
    fn dist() -> Frame {
        Frame {
            group: KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
            selector: 0,
            vcpu: None,
        }
    }

    fn v3(group: u32, vcpu: usize, mpidr: u64) -> Frame {
        Frame {
            group,
            selector: u64::from(mpidr_to_affinity(mpidr)) << KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT,
            vcpu: Some(vcpu),
        }
    }

    fn v2(group: u32, vcpu: usize) -> Result<Frame, StateError> {
        // KVM takes the GICv2 CPU number (the vCPU id) in 8 bits.
        let cpu = u8::try_from(vcpu)
            .map_err(|_| StateError::Invalid(format!("GICv2 CPU number {vcpu} exceeds 255")))?;
        Ok(Frame {
            group,
            selector: u64::from(cpu) << KVM_DEV_ARM_VGIC_CPUID_SHIFT,
            vcpu: Some(vcpu),
        })
    }

    fn attr(&self, low: u64) -> u64 {
        self.selector | low
    }

    /// "redistributor of vCPU 1", for messages.
    fn who(&self) -> String {
        let what = match self.group {
            KVM_DEV_ARM_VGIC_GRP_DIST_REGS => "distributor",
            KVM_DEV_ARM_VGIC_GRP_REDIST_REGS => "redistributor",
            KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO => "line levels",
            _ => "CPU interface",
        };
        match self.vcpu {
            Some(v) => format!("{what} of vCPU {v}"),
            None => what.to_string(),
        }
    }

    /// Names a failed access: "KVM_GET_DEVICE_ATTR GICD_ICFGR (distributor, 0xc08)".
    fn op(&self, write: bool, reg: &str, low: u64) -> String {
        let ioctl = if write { "SET" } else { "GET" };
        format!("KVM_{ioctl}_DEVICE_ATTR {reg} ({}, {low:#x})", self.who())
    }

    fn get<T: AttrValue>(&self, fd: &DeviceFd, reg: &str, low: u64) -> Result<T, StateError> {
        let mut value = T::default();
        let mut a = kvm_device_attr {
            group: self.group,
            attr: self.attr(low),
            addr: &mut value as *mut T as u64,
            flags: 0,
        };
        // SAFETY: `addr` points at `value`, which outlives the call, and KVM writes one
        // register of the group's width there: callers pass u64 for the CPU system registers
        // and u32 for the other groups, as KVM accesses them.
        unsafe { fd.get_device_attr(&mut a) }
            .map_err(|e| StateError::Kvm(self.op(false, reg, low), e))?;
        Ok(value)
    }

    fn set<T: AttrValue>(
        &self,
        fd: &DeviceFd,
        reg: &str,
        low: u64,
        value: T,
    ) -> Result<(), StateError> {
        // KVM reads one register of the group's width from `addr`, which outlives the call.
        let a = kvm_device_attr {
            group: self.group,
            attr: self.attr(low),
            addr: &value as *const T as u64,
            flags: 0,
        };
        fd.set_device_attr(&a)
            .map_err(|e| StateError::Kvm(self.op(true, reg, low), e))
    }

    fn read_blocks(&self, fd: &DeviceFd, table: &[Block]) -> Result<Vec<RegBlock>, StateError> {
        let mut out = Vec::with_capacity(table.len());
        for b in table {
            let values = (0..b.words)
                .map(|i| self.get(fd, b.name, u64::from(b.offset + 4 * i)))
                .collect::<Result<_, _>>()?;
            out.push(RegBlock {
                offset: b.offset,
                values,
            });
        }
        Ok(out)
    }

    /// Checks that `saved` is what `read_blocks` makes of `table` in this build (the same
    /// registers for the same number of interrupts), before anything is written.
    fn check_blocks(&self, table: &[Block], saved: &[RegBlock]) -> Result<(), StateError> {
        let who = self.who();
        if saved.len() != table.len() {
            return Err(StateError::Invalid(format!(
                "{who}: {} register blocks saved, this VMM restores {}",
                saved.len(),
                table.len()
            )));
        }
        for (b, s) in table.iter().zip(saved) {
            if s.offset != b.offset || s.values.len() != b.words as usize {
                return Err(StateError::Invalid(format!(
                    "{who}: {} saved as {} registers at {:#x}, this VMM restores {} at {:#x} \
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

    /// Writes the blocks of `stage`, checked with `check_blocks`.
    fn write_blocks(
        &self,
        fd: &DeviceFd,
        table: &[Block],
        saved: &[RegBlock],
        stage: Stage,
    ) -> Result<(), StateError> {
        for (b, s) in table.iter().zip(saved).filter(|(b, _)| b.stage == stage) {
            for (i, &value) in (0u32..).zip(&s.values) {
                let off = u64::from(b.offset + 4 * i);
                if stage == Stage::Revision && self.get::<u32>(fd, b.name, off)? == value {
                    continue;
                }
                if let Some(clear) = b.clear {
                    self.set(fd, b.name, u64::from(clear + 4 * i), !value)?;
                }
                self.set(fd, b.name, off, value)?;
            }
        }
        Ok(())
    }
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

/// The CPU interface registers besides the active priorities, in restore order: SRE and
/// CTLR first, since CTLR sets the priority bits (so which AP registers exist) and CBPR
/// (which decides what BPR1 writes).
static ICC_MAIN: &[(&str, u64)] = &[
    ("ICC_SRE_EL1", sysreg(3, 0, 12, 12, 5)),
    ("ICC_CTLR_EL1", sysreg(3, 0, 12, 12, 4)),
    ("ICC_PMR_EL1", sysreg(3, 0, 4, 6, 0)),
    ("ICC_BPR0_EL1", sysreg(3, 0, 12, 8, 3)),
    ("ICC_BPR1_EL1", sysreg(3, 0, 12, 12, 3)),
    ("ICC_IGRPEN0_EL1", sysreg(3, 0, 12, 12, 6)),
    ("ICC_IGRPEN1_EL1", sysreg(3, 0, 12, 12, 7)),
];
/// ICC_CTLR_EL1's place in `ICC_MAIN`.
const ICC_CTLR: usize = 1;

const fn icc_ap0r(n: u64) -> u64 {
    sysreg(3, 0, 12, 8, 4 | n)
}
const fn icc_ap1r(n: u64) -> u64 {
    sysreg(3, 0, 12, 9, n)
}

/// How many ICC_AP0R/AP1R registers KVM has for an ICC_CTLR_EL1 value: one per 32
/// preemption levels, so it follows the priority bits (PRIbits + 1), as in KVM's
/// vgic_v3_max_apr_idx.
fn ap_count(ctlr: u64) -> usize {
    match ((ctlr >> 8) & 7) + 1 {
        7 => 4,
        6 => 2,
        _ => 1,
    }
}

/// The AP registers' encodings and names, AP0R then AP1R.
fn ap_regs(n: usize) -> impl Iterator<Item = (String, u64)> {
    let ap0 = (0..n as u64).map(|i| (format!("ICC_AP0R{i}_EL1"), icc_ap0r(i)));
    ap0.chain((0..n as u64).map(|i| (format!("ICC_AP1R{i}_EL1"), icc_ap1r(i))))
}

fn read_icc(fd: &DeviceFd, cpu: Frame) -> Result<IccRegs, StateError> {
    let main = ICC_MAIN
        .iter()
        .map(|&(name, enc)| cpu.get(fd, name, enc))
        .collect::<Result<Vec<u64>, _>>()?;
    let n = ap_count(main[ICC_CTLR]);
    let mut ap = ap_regs(n)
        .map(|(name, enc)| cpu.get(fd, &name, enc))
        .collect::<Result<Vec<u64>, _>>()?;
    let ap1r = ap.split_off(n);
    Ok(IccRegs {
        main,
        ap0r: ap,
        ap1r,
    })
}

fn check_icc(vcpu: usize, icc: &IccRegs) -> Result<(), StateError> {
    let Some(&ctlr) = icc
        .main
        .get(ICC_CTLR)
        .filter(|_| icc.main.len() == ICC_MAIN.len())
    else {
        return Err(StateError::Invalid(format!(
            "vCPU {vcpu}: {} ICC registers saved, this VMM restores {}",
            icc.main.len(),
            ICC_MAIN.len()
        )));
    };
    let n = ap_count(ctlr);
    if icc.ap0r.len() != n || icc.ap1r.len() != n {
        return Err(StateError::Invalid(format!(
            "vCPU {vcpu}: ICC_CTLR_EL1 {ctlr:#x} implies {n} ICC_AP0R/AP1R registers, the \
             snapshot has {} and {}",
            icc.ap0r.len(),
            icc.ap1r.len()
        )));
    }
    Ok(())
}

fn write_icc(fd: &DeviceFd, cpu: Frame, icc: &IccRegs) -> Result<(), StateError> {
    for (&(name, enc), &v) in ICC_MAIN.iter().zip(&icc.main) {
        cpu.set(fd, name, enc, v)?;
    }
    let ap = icc.ap0r.iter().chain(&icc.ap1r);
    for ((name, enc), &v) in ap_regs(icc.ap0r.len()).zip(ap) {
        cpu.set(fd, &name, enc, v)?;
    }
    Ok(())
}

/// The low half of the line level attribute for the 32 interrupts from `intid`.
fn level(intid: u32) -> u64 {
    u64::from(VGIC_LEVEL_INFO_LINE_LEVEL) << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT
        | u64::from(intid)
}

/// The SPIs' line level words: INTIDs 32, 64, ...
fn spi_level_intids() -> impl Iterator<Item = u32> {
    (NR_PRIVATE..NR_IRQS).step_by(32)
}

/// The per-vCPU frames of a GICv3: redistributor, CPU interface, line levels.
fn v3_frames(mpidrs: &[u64]) -> Vec<[Frame; 3]> {
    let groups = [
        KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
        KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
        KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
    ];
    (0..)
        .zip(mpidrs)
        .map(|(i, &m)| groups.map(|g| Frame::v3(g, i, m)))
        .collect()
}

/// The per-vCPU frames of a GICv2: banked distributor, CPU interface.
fn v2_frames(vcpus: usize) -> Result<Vec<[Frame; 2]>, StateError> {
    (0..vcpus)
        .map(|i| {
            Ok([
                Frame::v2(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, i)?,
                Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, i)?,
            ])
        })
        .collect()
}

/// Saves the GIC; `mpidrs` are the vCPUs' MPIDR_EL1 values, in vCPU order.
pub(crate) fn save(gic: &Gic, mpidrs: &[u64]) -> Result<GicState, StateError> {
    let fd = gic.fd();
    let dist = Frame::dist();
    match gic.version() {
        GicVersion::V3 => {
            let frames = v3_frames(mpidrs);
            // SPI levels are global, but KVM wants an existing vCPU's affinity: any will do.
            let Some([.., spi_levels]) = frames.first() else {
                return Err(StateError::Invalid("a VM without vCPUs".to_string()));
            };
            let spi_line_levels = spi_level_intids()
                .map(|intid| spi_levels.get(fd, "SPIs", level(intid)))
                .collect::<Result<_, _>>()?;
            let mut redists = Vec::with_capacity(frames.len());
            for [rd, cpu, levels] in &frames {
                redists.push(RedistState {
                    regs: rd.read_blocks(fd, V3_REDIST)?,
                    line_levels: levels.get(fd, "private interrupts", level(0))?,
                    icc: read_icc(fd, *cpu)?,
                });
            }
            Ok(GicState::V3(GicV3State {
                dist: dist.read_blocks(fd, V3_DIST)?,
                spi_line_levels,
                redists,
            }))
        }
        GicVersion::V2 => {
            let mut cpus = Vec::with_capacity(mpidrs.len());
            for [banked, cpu] in v2_frames(mpidrs.len())? {
                cpus.push(GicV2CpuState {
                    banked: banked.read_blocks(fd, V2_BANKED)?,
                    cpu_interface: cpu.read_blocks(fd, V2_CPU)?,
                });
            }
            Ok(GicState::V2(GicV2State {
                dist: dist.read_blocks(fd, V2_DIST)?,
                cpus,
            }))
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
            current: match current {
                GicVersion::V3 => 3,
                GicVersion::V2 => 2,
            },
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
    let frames = v3_frames(mpidrs);
    let Some([.., spi_levels]) = frames.first() else {
        return Err(StateError::Invalid("a VM without vCPUs".to_string()));
    };
    let dist = Frame::dist();
    dist.check_blocks(V3_DIST, &s.dist)?;
    if s.spi_line_levels.len() != spi_level_intids().count() {
        return Err(StateError::Invalid(format!(
            "{} SPI line level words saved, this VMM restores {} ({NR_IRQS} interrupts)",
            s.spi_line_levels.len(),
            spi_level_intids().count()
        )));
    }
    for (i, (r, [rd, ..])) in s.redists.iter().zip(&frames).enumerate() {
        rd.check_blocks(V3_REDIST, &r.regs)?;
        check_icc(i, &r.icc)?;
    }

    let all_blocks = |stage: Stage| -> Result<(), StateError> {
        dist.write_blocks(fd, V3_DIST, &s.dist, stage)?;
        for (r, [rd, ..]) in s.redists.iter().zip(&frames) {
            rd.write_blocks(fd, V3_REDIST, &r.regs, stage)?;
        }
        Ok(())
    };
    all_blocks(Stage::Revision)?;
    all_blocks(Stage::Config)?;
    for (intid, &v) in spi_level_intids().zip(&s.spi_line_levels) {
        spi_levels.set(fd, "SPIs", level(intid), v)?;
    }
    // The private interrupts' line levels are not written back: they are KVM's own (the
    // timers', the PMU's), which it recomputes when the vCPU next runs, and it injects
    // only on a change of level. A level restored from userspace makes that change
    // invisible: the restored guest's expired timer then never interrupts it (seen in the
    // emulated host: a guest idle forever at its saved PC, CNTV_CTL.ISTATUS set).
    all_blocks(Stage::State)?;
    all_blocks(Stage::Control)?;
    for (r, [_, cpu, _]) in s.redists.iter().zip(&frames) {
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
    let frames = v2_frames(vcpus)?;
    let dist = Frame::dist();
    dist.check_blocks(V2_DIST, &s.dist)?;
    for (c, [banked, cpu]) in s.cpus.iter().zip(&frames) {
        banked.check_blocks(V2_BANKED, &c.banked)?;
        cpu.check_blocks(V2_CPU, &c.cpu_interface)?;
    }

    // GICD_IIDR leads the Config stage: until it is written, KVM ignores userspace writes
    // to the GICv2 group registers.
    let stages = [Stage::Config, Stage::State, Stage::Control];
    for stage in stages {
        dist.write_blocks(fd, V2_DIST, &s.dist, stage)?;
        for (c, [banked, _]) in s.cpus.iter().zip(&frames) {
            banked.write_blocks(fd, V2_BANKED, &c.banked, stage)?;
        }
    }
    for (c, [_, cpu]) in s.cpus.iter().zip(&frames) {
        for stage in stages {
            cpu.write_blocks(fd, V2_CPU, &c.cpu_interface, stage)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(table: &[Block], name: &str) -> (u32, u32, Option<u32>) {
        let b = table.iter().find(|b| b.name == name).unwrap();
        (b.offset, b.words, b.clear)
    }

    #[test]
    fn affinity_from_mpidr() {
        // Aff3 (bits 39:32) moves down next to Aff2; the RES1 bit 31 and U/MT go.
        assert_eq!(mpidr_to_affinity(0x8000_0000), 0);
        assert_eq!(mpidr_to_affinity(0x8000_0001), 1);
        assert_eq!(mpidr_to_affinity(0x0000_00ab_8012_3456), 0xab12_3456);
        assert_eq!(mpidr_to_affinity(0xffff_ff00_c000_0000), 0);
        let f = Frame::v3(KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, 1, 0x8000_0102);
        assert_eq!(f.attr(0x1_0100), 0x0000_0102_0001_0100);
        let l = Frame::v3(KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, 0, 0x1_8000_0000);
        assert_eq!(l.attr(level(64)), 0x0100_0000_0000_0040);
    }

    #[test]
    fn v2_cpu_attr() {
        let f = Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, 3).unwrap();
        assert_eq!(f.attr(0xd0), 0x3_0000_00d0);
        assert!(Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, 256).is_err());
    }

    #[test]
    fn spi_blocks_cover_the_spis() {
        // 128 interrupts: 96 SPIs from INTID 32.
        assert_eq!(NR_IRQS, 128);
        assert_eq!(find(V3_DIST, "GICD_ISENABLER"), (0x104, 3, Some(0x184)));
        assert_eq!(find(V3_DIST, "GICD_ISPENDR"), (0x204, 3, Some(0x284)));
        assert_eq!(find(V3_DIST, "GICD_IPRIORITYR"), (0x420, 24, None));
        assert_eq!(find(V3_DIST, "GICD_ICFGR"), (0xc08, 6, None));
        assert_eq!(find(V3_DIST, "GICD_IROUTER"), (0x6100, 192, None));
        assert_eq!(find(V2_DIST, "GICD_ITARGETSR"), (0x820, 24, None));
        assert_eq!(find(V2_BANKED, "GICD_SPENDSGIR"), (0xf20, 4, Some(0xf10)));
        assert_eq!(
            find(V3_REDIST, "GICR_ISACTIVER0"),
            (0x1_0300, 1, Some(0x1_0380))
        );
        assert_eq!(find(V3_REDIST, "GICR_IPRIORITYR"), (0x1_0400, 8, None));
        assert_eq!(spi_level_intids().collect::<Vec<_>>(), [32, 64, 96]);
    }

    #[test]
    fn control_registers_come_last() {
        for table in [V3_DIST, V3_REDIST, V2_DIST, V2_CPU] {
            let (last, rest) = table.split_last().unwrap();
            assert_eq!(last.stage, Stage::Control, "{}", last.name);
            assert!(rest.iter().all(|b| b.stage != Stage::Control));
        }
        assert_eq!(
            (V2_DIST[0].name, V2_DIST[0].stage),
            ("GICD_IIDR", Stage::Config)
        );
        assert_eq!(
            (V3_DIST[0].name, V3_DIST[0].stage),
            ("GICD_IIDR", Stage::Revision)
        );
    }

    #[test]
    fn icc_encodings_and_ap_registers() {
        assert_eq!(ICC_MAIN[0].1, 0xc665); // ICC_SRE_EL1
        assert_eq!(ICC_MAIN[ICC_CTLR], ("ICC_CTLR_EL1", 0xc664));
        assert_eq!(icc_ap0r(1), 0xc645);
        assert_eq!(icc_ap1r(1), 0xc649);
        assert_eq!(ap_count(4 << 8), 1); // 5 priority bits
        assert_eq!(ap_count(5 << 8), 2); // 6
        assert_eq!(ap_count(6 << 8), 4); // 7
        let names: Vec<String> = ap_regs(2).map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "ICC_AP0R0_EL1",
                "ICC_AP0R1_EL1",
                "ICC_AP1R0_EL1",
                "ICC_AP1R1_EL1"
            ]
        );
        let mut icc = IccRegs {
            main: vec![7, 6 << 8, 0xf0, 2, 3, 0, 1],
            ap0r: vec![0; 4],
            ap1r: vec![0; 4],
        };
        check_icc(0, &icc).unwrap();
        icc.ap1r.pop();
        assert!(check_icc(0, &icc).is_err());
        icc.main.pop();
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
        let f = Frame::v2(KVM_DEV_ARM_VGIC_GRP_CPU_REGS, 0).unwrap();
        f.check_blocks(V2_CPU, &ok).unwrap();
        let mut short = ok.clone();
        short[3].values.pop();
        let e = f.check_blocks(V2_CPU, &short).unwrap_err().to_string();
        assert!(e.contains("GICC_APR") && e.contains("vCPU 0"), "{e}");
        assert!(f.check_blocks(V2_CPU, &ok[1..]).is_err());
    }
}
