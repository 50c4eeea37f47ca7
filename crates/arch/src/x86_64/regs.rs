//! Boot-time vCPU state: general registers, segment/control registers, FPU, MSRs and
//! the local APIC's LINT pins, for the two entry protocols we support.

use super::gdt::{self, GDT_LONG_MODE, GDT_PROTECTED_MODE};
use super::layout::*;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Errors while setting the boot state of a vCPU.
#[derive(Debug, Error)]
pub enum RegsError {
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// KVM accepted only part of the MSRs.
    #[error("KVM accepted {0} of {1} boot MSRs")]
    PartialMsrs(usize, usize),
    /// The boot structures could not be written to guest memory.
    #[error("cannot write boot {0} into guest memory")]
    Memory(&'static str),
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, `rsi` = zero page.
    LinuxLongMode,
    /// PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
    Pvh,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Writes the GDT, IDT and (for long mode) identity page tables that the entry state refers to.
pub fn setup_boot_tables<M: GuestMemoryBackend>(mem: &M, mode: EntryMode) -> Result<(), RegsError> {
    let gdt = match mode {
        EntryMode::LinuxLongMode => &GDT_LONG_MODE,
        EntryMode::Pvh => &GDT_PROTECTED_MODE,
    };
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|_| RegsError::Memory("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|_| RegsError::Memory("IDT"))?;
    if mode == EntryMode::LinuxLongMode {
        // PML4[0] -> PDPT, PDPT[0] -> PD, PD maps the first GiB with 2 MiB pages.
        mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
            .map_err(|_| RegsError::Memory("page tables"))?;
        mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
            .map_err(|_| RegsError::Memory("page tables"))?;
        for i in 0..512u64 {
            mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
                .map_err(|_| RegsError::Memory("page tables"))?;
        }
    }
    Ok(())
}

/// Segment and control registers for `mode`, starting from KVM's reset values.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let gdt = match mode {
        EntryMode::LinuxLongMode => &GDT_LONG_MODE,
        EntryMode::Pvh => &GDT_PROTECTED_MODE,
    };
    let code = gdt::segment(gdt[1], 1);
    let data = gdt::segment(gdt[2], 2);
    let tss = gdt::segment(gdt[3], 3);
    sregs.gdt.base = GDT_START;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a fixed GDT of four 8-byte entries"
    )]
    let limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.gdt.limit = limit;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match mode {
        EntryMode::LinuxLongMode => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers at kernel entry.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::LinuxLongMode => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// FPU state Linux expects: x87 control word 0x37f, SSE control/status 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;

/// The MSRs we set at boot: syscall MSRs cleared, TSC at 0, fast strings on, MTRRs
/// enabled with write-back as the default memory type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// Puts a vCPU in its boot state: CPUID must already be set.
pub fn setup_vcpu(vcpu: &VcpuFd, mode: EntryMode, entry: u64) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs =
        Msrs::from_entries(&entries).map_err(|_| RegsError::PartialMsrs(0, entries.len()))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        return Err(RegsError::PartialMsrs(set, entries.len()));
    }
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    vcpu.set_sregs(&boot_sregs(sregs, mode))
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&boot_regs(mode, entry))
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))?;
    vcpu.set_fpu(&boot_fpu())
        .map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))?;
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    set_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))?;
    Ok(())
}

/// A one-line dump of the registers that explain a failed entry or internal error.
pub fn describe(vcpu: &VcpuFd) -> String {
    let regs = match vcpu.get_regs() {
        Ok(r) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi
        ),
        Err(e) => format!("registers unavailable ({e})"),
    };
    let sregs = match vcpu.get_sregs() {
        Ok(s) => format!(
            " cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
            s.cr0, s.cr3, s.cr4, s.efer, s.cs.selector
        ),
        Err(_) => String::new(),
    };
    regs + &sregs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_sregs() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::LinuxLongMode);
        assert_eq!(s.cr0 & X86_CR0_PG, X86_CR0_PG);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn pvh_sregs_and_regs() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Pvh);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!(s.efer, 0);
        assert_eq!(s.cs.db, 1);
        let r = boot_regs(EntryMode::Pvh, 0x1000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x1000, PVH_INFO_START, 2));
        let l = boot_regs(EntryMode::LinuxLongMode, 0x200);
        assert_eq!(l.rsi, ZERO_PAGE_START);
    }

    #[test]
    fn lapic_lint_modes() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x10;
        set_delivery_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_delivery_mode(&mut regs, APIC_LVT1, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0] as u8, 0x10);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 7);
        assert_eq!(regs[APIC_LVT1 + 1] as u8, 4);
    }

    #[test]
    fn mtrr_default_is_writeback() {
        let e = boot_msr_entries();
        let mtrr = e.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(mtrr.data, (1 << 11) | 6);
    }
}
