//! The guest physical memory map on x86_64.
//!
//! ```text
//! 0x0000_0500  GDT, then the (empty) IDT
//! 0x0000_6000  PVH hvm_start_info, module list and memory map
//! 0x0000_7000  Linux zero page (boot_params) for the 64-bit boot protocol
//! 0x0000_8ff0  initial stack pointer
//! 0x0000_9000  boot page tables (PML4, PDPT, PD: first 1 GiB identity mapped)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP floating pointer and configuration table (EBDA), reserved up to 1 MiB
//! 0x0010_0000  RAM from here (kernel at 1 MiB for bzImage, at its ELF address for vmlinux)
//! 0xd000_0000  MMIO gap (768 MiB): virtio-mmio devices, IOAPIC, LAPIC; no RAM
//! 0x1_0000_0000 RAM above the gap, if the guest has more than 3.25 GiB
//! ```

use crate::{DeviceBus, DevicePlace};
use vm_memory::GuestAddress;

/// GDT location.
pub const GDT_START: u64 = 0x500;
/// IDT location (an empty IDT: the kernel installs its own).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Largest number of PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page-map level 4.
pub const PML4_START: u64 = 0x9000;
/// Boot page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Boot page directory (512 x 2 MiB pages = 1 GiB identity map).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest kernel command line, including the terminating NUL (Linux's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// First address past the legacy hole; RAM resumes here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window: devices are packed upwards from the start of the gap.
pub const MMIO_DEVICES_START: u64 = MMIO_GAP_START;
/// Room for device windows (up to the PCI-free part of the gap; far more than the IRQs allow).
pub const MMIO_DEVICES_SIZE: u64 = 0x1000_0000;
/// First interrupt line for virtio devices (0-4 are the PIT, keyboard, cascade and COM ports).
pub const IRQ_DEVICES_FIRST: u32 = 5;
/// Last interrupt line (the IOAPIC has 24 pins).
pub const IRQ_DEVICES_LAST: u32 = 23;
/// The UART (COM1).
pub const SERIAL: DevicePlace = DevicePlace {
    bus: DeviceBus::Pio,
    base: 0x3f8,
    len: 8,
    irq: Some(4),
};
/// The i8042 keyboard controller (its reset line, and Ctrl-Alt-Del).
pub const I8042: Option<DevicePlace> = Some(DevicePlace {
    bus: DeviceBus::Pio,
    base: 0x60,
    len: 5,
    irq: Some(1),
});
/// No CMOS RTC is emulated on x86_64 (the guest keeps time with kvm-clock).
pub const RTC: Option<DevicePlace> = None;

/// IOAPIC register window.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC register window.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Address of the TSS pages KVM needs on Intel (KVM_SET_TSS_ADDR); inside the MMIO gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Guest-physical address width we promise the guest can address with RAM.
/// Anything larger than this is refused before we try to map it.
pub const MAX_GUEST_PHYS_ADDR: u64 = 1 << 46;

/// The guest RAM regions for a guest with `mem_size` bytes of memory, in address order.
///
/// RAM below 4 GiB stops at the MMIO gap; the remainder starts at 4 GiB.
/// Returns `None` if the size is zero or the top of RAM would exceed
/// [`MAX_GUEST_PHYS_ADDR`].
pub fn ram_regions(mem_size: u64) -> Option<Vec<(GuestAddress, u64)>> {
    if mem_size == 0 {
        return None;
    }
    if mem_size <= MMIO_GAP_START {
        return Some(vec![(GuestAddress(0), mem_size)]);
    }
    let high = mem_size - MMIO_GAP_START;
    let top = MMIO_GAP_END.checked_add(high)?;
    if top > MAX_GUEST_PHYS_ADDR {
        return None;
    }
    Some(vec![
        (GuestAddress(0), MMIO_GAP_START),
        (GuestAddress(MMIO_GAP_END), high),
    ])
}

/// A range of the guest's physical memory map as reported to the kernel (E820 / PVH memmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type: 1 RAM, 2 reserved.
    pub kind: u32,
}

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The memory map handed to the kernel for a guest with `mem_size` bytes of RAM: the
/// low 639 KiB, the reserved EBDA-to-1 MiB hole, RAM from 1 MiB to the top of low memory
/// and RAM above 4 GiB.
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(MemoryMapEntry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(MemoryMapEntry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// End (exclusive) of the RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

// The fixed boot areas must not overlap; checked at compile time.
const _: () = assert!(GDT_START + 4 * 8 <= IDT_START);
const _: () = assert!(PVH_MEMMAP_START + 24 * PVH_MEMMAP_MAX_ENTRIES as u64 <= ZERO_PAGE_START);
const _: () = assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
const _: () = assert!(PDE_START + 4096 <= CMDLINE_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(
            ram_regions(128 * MIB),
            Some(vec![(GuestAddress(0), 128 * MIB)])
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let r = ram_regions(4096 * MIB).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 + r[1].1, 4096 * MIB);
    }

    #[test]
    fn zero_and_absurd_sizes_are_refused() {
        assert_eq!(ram_regions(0), None);
        assert_eq!(ram_regions(u64::MAX), None);
        assert_eq!(ram_regions(MAX_GUEST_PHYS_ADDR), None);
    }

    #[test]
    fn memory_map_has_hole_and_high_ram() {
        let m = memory_map(128 * MIB);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].kind, E820_RESERVED);
        assert_eq!(m[2].addr + m[2].size, 128 * MIB);
        let big = memory_map(4096 * MIB);
        assert_eq!(big.len(), 4);
        assert_eq!(big[3].addr, MMIO_GAP_END);
        let ram: u64 = big
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 4096 * MIB - (HIMEM_START - EBDA_START));
    }
}
