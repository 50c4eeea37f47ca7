//! The guest's physical memory map on aarch64.
//!
//! ```text
//! 0x3fbf_0000 ..            GIC redistributors (128 KiB per vCPU, growing down)
//! 0x3fff_0000 ..0x4000_0000 GIC distributor (GICv3; GICv2 uses the top 12 KiB)
//! 0x4000_0000               UART (8250), 4 KiB
//! 0x4000_1000               RTC (PL031), 4 KiB
//! 0x4000_2000 ..0x8000_0000 virtio-mmio devices, 4 KiB each
//! 0x8000_0000 ..            RAM: kernel at the start, device tree in the last 2 MiB,
//!                           initrd just below the device tree
//! ```
//! Interrupts are GIC SPIs; SPI `n` is both KVM's irqfd GSI `n` and the device tree's
//! interrupt cell `n` (the guest sees INTID 32 + n).

use crate::{DeviceBus, DevicePlace};
use vm_memory::GuestAddress;

/// Start of guest RAM.
pub const DRAM_START: u64 = 0x8000_0000;
/// Largest guest RAM (up to the 40-bit IPA space KVM gives a VM by default).
pub const DRAM_MAX_SIZE: u64 = (1 << 40) - DRAM_START;
/// Where the kernel image is loaded (it must be 2 MiB aligned).
pub const KERNEL_START: u64 = DRAM_START;
/// Largest device tree the kernel accepts (arm64 booting.txt), kept at the top of RAM.
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// Longest kernel command line (arm64 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the device MMIO space; the GIC sits just below it.
pub const MMIO_START: u64 = 0x4000_0000;
/// Size of one device's register window.
pub const MMIO_DEVICE_LEN: u64 = 0x1000;
/// The UART's window.
pub const SERIAL_ADDR: u64 = MMIO_START;
/// The RTC's window.
pub const RTC_ADDR: u64 = MMIO_START + MMIO_DEVICE_LEN;
/// First virtio-mmio window.
pub const MMIO_DEVICES_START: u64 = MMIO_START + 2 * MMIO_DEVICE_LEN;
/// Space for virtio-mmio windows (up to the start of RAM).
pub const MMIO_DEVICES_SIZE: u64 = DRAM_START - MMIO_DEVICES_START;

/// Interrupt lines (SPIs) the GIC is created with.
pub const GIC_NR_SPIS: u32 = 96;
/// The UART's SPI.
pub const SERIAL_IRQ: u32 = 0;
/// First SPI for virtio devices.
pub const IRQ_DEVICES_FIRST: u32 = 1;
/// Last SPI for virtio devices.
pub const IRQ_DEVICES_LAST: u32 = GIC_NR_SPIS - 1;

/// GICv3 distributor (64 KiB) right below the device space.
pub const GICV3_DIST_SIZE: u64 = 0x1_0000;
/// GICv3 distributor base.
pub const GICV3_DIST_ADDR: u64 = MMIO_START - GICV3_DIST_SIZE;
/// One vCPU's GICv3 redistributor (RD_base + SGI_base frames).
pub const GICV3_REDIST_SIZE: u64 = 0x2_0000;
/// GICv2 distributor (4 KiB) right below the device space.
pub const GICV2_DIST_ADDR: u64 = MMIO_START - 0x1000;
/// GICv2 distributor size.
pub const GICV2_DIST_SIZE: u64 = 0x1000;
/// GICv2 CPU interface (8 KiB) below its distributor.
pub const GICV2_CPU_ADDR: u64 = GICV2_DIST_ADDR - 0x2000;
/// GICv2 CPU interface size.
pub const GICV2_CPU_SIZE: u64 = 0x2000;

/// The UART (8250-compatible) on the MMIO bus.
pub const SERIAL: DevicePlace = DevicePlace {
    bus: DeviceBus::Mmio,
    base: SERIAL_ADDR,
    len: MMIO_DEVICE_LEN,
    irq: Some(SERIAL_IRQ),
};
/// No i8042 on aarch64: the guest resets and powers off through PSCI.
pub const I8042: Option<DevicePlace> = None;
/// The PL031 RTC (it raises no interrupt: the alarm is not offered).
pub const RTC: Option<DevicePlace> = Some(DevicePlace {
    bus: DeviceBus::Mmio,
    base: RTC_ADDR,
    len: MMIO_DEVICE_LEN,
    irq: None,
});

/// Base of the GICv3 redistributors of `vcpus` vCPUs (one contiguous region).
pub fn gicv3_redist_addr(vcpus: u8) -> u64 {
    GICV3_DIST_ADDR - u64::from(vcpus) * GICV3_REDIST_SIZE
}

/// The guest RAM regions for `mem_size` bytes: one region at [`DRAM_START`].
/// Returns `None` if the size is zero or too large.
pub fn ram_regions(mem_size: u64) -> Option<Vec<(GuestAddress, u64)>> {
    if mem_size == 0 || mem_size > DRAM_MAX_SIZE {
        return None;
    }
    Some(vec![(GuestAddress(DRAM_START), mem_size)])
}

/// Where the device tree goes: the last 2 MiB of RAM (or the start of a smaller RAM).
pub fn fdt_addr(mem_size: u64) -> u64 {
    if mem_size >= FDT_MAX_SIZE {
        DRAM_START + mem_size - FDT_MAX_SIZE
    } else {
        DRAM_START
    }
}

// The fixed areas must not overlap; checked at compile time.
const _: () = assert!(GICV3_DIST_ADDR + GICV3_DIST_SIZE == SERIAL_ADDR);
const _: () = assert!(GICV2_CPU_ADDR + GICV2_CPU_SIZE <= GICV2_DIST_ADDR);
const _: () = assert!(RTC_ADDR + MMIO_DEVICE_LEN == MMIO_DEVICES_START);
const _: () = assert!(MMIO_DEVICES_START + MMIO_DEVICES_SIZE == DRAM_START);
const _: () = assert!(KERNEL_START.is_multiple_of(0x20_0000));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redistributors_sit_below_the_distributor() {
        assert_eq!(
            gicv3_redist_addr(2) + 2 * GICV3_REDIST_SIZE,
            GICV3_DIST_ADDR
        );
        assert!(gicv3_redist_addr(32) > 0x3000_0000);
    }

    #[test]
    fn ram_is_one_region_at_2_gib() {
        assert_eq!(
            ram_regions(128 << 20),
            Some(vec![(GuestAddress(DRAM_START), 128 << 20)])
        );
        assert_eq!(ram_regions(0), None);
        assert_eq!(ram_regions(1 << 41), None);
        assert_eq!(fdt_addr(128 << 20), DRAM_START + (126 << 20));
        assert_eq!(fdt_addr(1 << 20), DRAM_START);
    }
}
