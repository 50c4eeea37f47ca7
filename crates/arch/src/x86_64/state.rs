//! Saving and restoring what KVM holds for an x86_64 guest, for snapshots: per vCPU the
//! registers, every MSR KVM can save, the LAPIC, xsave and XCRs, debug registers, events,
//! mp_state, CPUID and TSC frequency; for the VM the PIT, both PICs, the IOAPIC and
//! kvmclock.
//!
//! The vCPU calls run on the vCPU's own thread while the VM is paused; the VM calls run on
//! the VMM thread. Restore runs on freshly created vCPUs in place of the boot setup.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors saving or restoring architecture state.
#[derive(Debug, Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("vcpu {vcpu}: {what} failed: {source}")]
    Vcpu {
        /// The vCPU's index (0 where not known).
        vcpu: u8,
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// A VM-wide KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Vm(&'static str, kvm_ioctls::Error),
    /// KVM took only part of the saved MSRs.
    #[error("vcpu {vcpu}: KVM accepted {set} of the saved MSRs; MSR {index:#x} was refused")]
    Msr {
        /// The vCPU.
        vcpu: u8,
        /// How many were accepted before the refusal.
        set: usize,
        /// The first MSR refused.
        index: u32,
    },
    /// The saved state does not fit this host.
    #[error("{0}")]
    Mismatch(String),
}

/// Everything KVM holds for one vCPU that the guest can observe.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest saw (restored as is: a guest's view of its CPU never changes).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR KVM lists as saveable and could read, by index.
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state (the legacy 4 KiB xsave area).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC.
    pub lapic: kvm_lapic_state,
    /// Running, halted or waiting for SIPI.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts and NMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// The guest's TSC frequency in kHz, where KVM says.
    pub tsc_khz: Option<u32>,
}

impl VcpuState {
    /// The vCPU's APIC id (for messages; x86 needs no affinity to address its LAPIC).
    pub fn mpidr(&self) -> u64 {
        u64::from(self.lapic.regs[0x23] as u8)
    }
}

/// The VM-wide state: the in-kernel PIT, PICs and IOAPIC, and kvmclock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The PIT (i8254).
    pub pit: kvm_pit_state2,
    /// Master PIC, slave PIC and IOAPIC, in that order.
    pub irqchips: Vec<kvm_irqchip>,
    /// kvmclock at the moment of saving.
    pub clock: kvm_clock_data,
}

/// The MSRs KVM can save and restore for a guest (KVM_GET_MSR_INDEX_LIST), in index
/// order: MSR_IA32_TSC is then restored before the TSC deadline that is relative to it.
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(|e| StateError::Vm("KVM_GET_MSR_INDEX_LIST", e))?;
    let mut v = list.as_slice().to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// At most this many MSRs per KVM_GET/SET_MSRS call (KVM's own limit is larger).
const MSR_CHUNK: usize = 64;

/// Reads every MSR in `indices` KVM can read on this vCPU. KVM stops at the first MSR it
/// cannot read (one the guest's CPUID does not have): that one is skipped, the rest read.
fn read_msrs(vcpu: &VcpuFd, index: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let take = rest.len().min(MSR_CHUNK);
        let entries: Vec<kvm_msr_entry> = rest[..take]
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| StateError::Mismatch(format!("{take} MSRs do not fit one request")))?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(|source| StateError::Vcpu {
                vcpu: index,
                what: "KVM_GET_MSRS",
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..read.min(take)]);
        // The one at `read` (if any) could not be read: skip it.
        rest = &rest[(read + 1).min(rest.len())..];
    }
    Ok(out)
}

/// Saves vCPU `index`'s state, reading the MSRs in `msr_indices` ([`saveable_msrs`]).
/// Called on the vCPU's thread while it is out of KVM_RUN.
pub fn save_vcpu(vcpu: &VcpuFd, index: u8, msr_indices: &[u32]) -> Result<VcpuState, StateError> {
    let err = |what: &'static str| {
        move |source| StateError::Vcpu {
            vcpu: index,
            what,
            source,
        }
    };
    // Pending events first: reading them makes KVM finish injecting what it started.
    let vcpu_events = vcpu.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?;
    let mp_state = vcpu.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(err("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    let xsave = vcpu.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(err("KVM_GET_XCRS"))?;
    let debug_regs = vcpu.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?;
    let lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    let msrs = read_msrs(vcpu, index, msr_indices)?;
    let cpuid = vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(err("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let tsc_khz = vcpu.get_tsc_khz().ok();
    Ok(VcpuState {
        cpuid,
        msrs,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        mp_state,
        vcpu_events,
        tsc_khz,
    })
}

/// Puts a freshly created vCPU in the saved state, in place of its boot setup. The order
/// is KVM's: CPUID before anything it gates, the LAPIC before the MSRs (the TSC deadline
/// is armed against it), events last.
pub fn restore_vcpu(
    _vm: &VmFd,
    vcpu: &VcpuFd,
    index: u8,
    state: &VcpuState,
) -> Result<(), StateError> {
    let err = |what: &'static str| {
        move |source| StateError::Vcpu {
            vcpu: index,
            what,
            source,
        }
    };
    if let Some(khz) = state.tsc_khz {
        if vcpu.get_tsc_khz().ok() != Some(khz) {
            vcpu.set_tsc_khz(khz).map_err(|e| {
                StateError::Mismatch(format!(
                    "vcpu {index}: the snapshot's TSC runs at {khz} kHz and KVM cannot scale this host's to it ({e})"
                ))
            })?;
        }
    }
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| {
        StateError::Mismatch(format!(
            "vcpu {index}: {} CPUID entries are more than KVM takes",
            state.cpuid.len()
        ))
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    vcpu.set_mp_state(state.mp_state)
        .map_err(err("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(err("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs).map_err(err("KVM_SET_SREGS"))?;
    // SAFETY: the xsave area is the legacy 4 KiB kvm_xsave KVM_GET_XSAVE filled, which is
    // the size KVM_SET_XSAVE reads.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(err("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(err("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic).map_err(err("KVM_SET_LAPIC"))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| {
            StateError::Mismatch(format!("{} MSRs do not fit one request", chunk.len()))
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if set != chunk.len() {
            return Err(StateError::Msr {
                vcpu: index,
                set,
                index: chunk.get(set).map_or(0, |m| m.index),
            });
        }
    }
    vcpu.set_vcpu_events(&state.vcpu_events)
        .map_err(err("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn chip(id: u32) -> kvm_irqchip {
    kvm_irqchip {
        chip_id: id,
        ..Default::default()
    }
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// Saves the PIT, PICs, IOAPIC and kvmclock. On the VMM thread, with every vCPU paused.
pub fn save_vm(
    vm: &VmFd,
    _chip: &super::vm::IrqChip,
    _vcpus: &[VcpuState],
) -> Result<VmState, StateError> {
    let pit = vm
        .get_pit2()
        .map_err(|e| StateError::Vm("KVM_GET_PIT2", e))?;
    let mut irqchips = Vec::with_capacity(CHIPS.len());
    for id in CHIPS {
        let mut c = chip(id);
        vm.get_irqchip(&mut c)
            .map_err(|e| StateError::Vm("KVM_GET_IRQCHIP", e))?;
        irqchips.push(c);
    }
    let clock = vm
        .get_clock()
        .map_err(|e| StateError::Vm("KVM_GET_CLOCK", e))?;
    Ok(VmState {
        pit,
        irqchips,
        clock,
    })
}

/// Restores the VM-wide state after every vCPU was restored, before any KVM_RUN.
/// kvmclock continues from the value it had when saved: the guest's clock does not jump
/// by the time the snapshot spent on disk.
pub fn restore_vm(
    vm: &VmFd,
    _chip: &super::vm::IrqChip,
    _vcpus: &[VcpuState],
    state: &VmState,
) -> Result<(), StateError> {
    vm.set_pit2(&state.pit)
        .map_err(|e| StateError::Vm("KVM_SET_PIT2", e))?;
    if state.irqchips.len() != CHIPS.len() {
        return Err(StateError::Mismatch(format!(
            "the snapshot has {} interrupt controllers, not {}",
            state.irqchips.len(),
            CHIPS.len()
        )));
    }
    for c in &state.irqchips {
        vm.set_irqchip(c)
            .map_err(|e| StateError::Vm("KVM_SET_IRQCHIP", e))?;
    }
    // Only the clock value is set: KVM refuses flags it reports but does not take.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock)
        .map_err(|e| StateError::Vm("KVM_SET_CLOCK", e))
}
