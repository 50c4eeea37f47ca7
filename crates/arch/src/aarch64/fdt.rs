//! The flattened device tree the arm64 kernel boots from: memory, vCPUs, PSCI, the
//! architected timer, the GIC, the UART, the RTC, every virtio-mmio device and `chosen`
//! (command line, initrd).

use super::gic::{GicLayout, GicVersion};
use super::layout::*;
use crate::VirtioDeviceInfo;
use thiserror::Error;
use vm_fdt::FdtWriter;

/// Errors building the device tree.
#[derive(Debug, Error)]
pub enum FdtError {
    /// The writer refused a node or property.
    #[error("cannot build the device tree: {0}")]
    Writer(#[from] vm_fdt::Error),
    /// The tree is larger than the space kept for it.
    #[error("the device tree is {0} bytes, more than the 2 MiB kept for it")]
    TooBig(usize),
}

const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLOCK: u32 = 2;

// Interrupt specifier cells (the GIC binding): <type number flags>.
const IRQ_SPI: u32 = 0;
const IRQ_PPI: u32 = 1;
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;

/// What the device tree describes.
pub struct FdtSetup<'a> {
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The GIC's version and frames.
    pub gic: GicLayout,
    /// The initrd's `(address, size)`, if any.
    pub initrd: Option<(u64, u64)>,
    /// The virtio-mmio devices.
    pub virtio: &'a [VirtioDeviceInfo],
}

/// The MPIDR KVM gives vCPU `index` (Aff0 = low 4 bits, Aff1 = the rest), which the
/// device tree's cpu `reg` must match.
pub fn mpidr(index: u8) -> u64 {
    (u64::from(index >> 4) << 8) | u64::from(index & 0xf)
}

/// Builds the device tree blob.
pub fn build(s: &FdtSetup) -> Result<Vec<u8>, FdtError> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 0)?;
    for i in 0..s.vcpus {
        let mpidr = mpidr(i);
        let cpu = w.begin_node(&format!("cpu@{mpidr:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,arm-v8")?;
        w.property_string("enable-method", "psci")?;
        w.property_u64("reg", mpidr)?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let memory = w.begin_node(&format!("memory@{DRAM_START:x}"))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[DRAM_START, s.mem_size])?;
    w.end_node(memory)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", s.cmdline)?;
    w.property_string("stdout-path", &format!("/uart@{SERIAL_ADDR:x}"))?;
    if let Some((addr, size)) = s.initrd {
        w.property_u64("linux,initrd-start", addr)?;
        w.property_u64("linux,initrd-end", addr + size)?;
    }
    w.end_node(chosen)?;

    let intc = w.begin_node("intc")?;
    let compatible = match s.gic.version {
        GicVersion::V3 => "arm,gic-v3",
        GicVersion::V2 => "arm,cortex-a15-gic",
    };
    w.property_string("compatible", compatible)?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    let [(a, a_len), (b, b_len)] = s.gic.regions;
    w.property_array_u64("reg", &[a, a_len, b, b_len])?;
    w.property_phandle(PHANDLE_GIC)?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("ranges")?;
    // The virtual GIC's maintenance interrupt, PPI 9.
    w.property_array_u32("interrupts", &[IRQ_PPI, 9, IRQ_LEVEL_HIGH])?;
    w.end_node(intc)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    w.property_null("always-on")?;
    // Secure, non-secure, virtual and hypervisor physical timers: PPIs 13, 14, 11, 10.
    let mut cells = Vec::new();
    for ppi in [13, 14, 11, 10] {
        cells.extend_from_slice(&[IRQ_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    w.property_array_u32("interrupts", &cells)?;
    w.end_node(timer)?;

    let clock = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", 24_000_000)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(PHANDLE_CLOCK)?;
    w.end_node(clock)?;

    let psci = w.begin_node("psci")?;
    w.property_string("compatible", "arm,psci-0.2")?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let uart = w.begin_node(&format!("uart@{SERIAL_ADDR:x}"))?;
    w.property_string("compatible", "ns16550a")?;
    w.property_array_u64("reg", &[SERIAL_ADDR, MMIO_DEVICE_LEN])?;
    w.property_u32("clocks", PHANDLE_CLOCK)?;
    w.property_string("clock-names", "apb_pclk")?;
    w.property_array_u32("interrupts", &[IRQ_SPI, SERIAL_IRQ, IRQ_EDGE_RISING])?;
    w.end_node(uart)?;

    let rtc = w.begin_node(&format!("rtc@{RTC_ADDR:x}"))?;
    w.property_string_list(
        "compatible",
        vec!["arm,pl031".to_string(), "arm,primecell".to_string()],
    )?;
    w.property_array_u64("reg", &[RTC_ADDR, MMIO_DEVICE_LEN])?;
    w.property_u32("clocks", PHANDLE_CLOCK)?;
    w.property_string("clock-names", "apb_pclk")?;
    w.end_node(rtc)?;

    for d in s.virtio {
        let node = w.begin_node(&format!("virtio_mmio@{:x}", d.addr))?;
        w.property_string("compatible", "virtio,mmio")?;
        w.property_array_u64("reg", &[d.addr, d.len])?;
        w.property_array_u32("interrupts", &[IRQ_SPI, d.irq, IRQ_EDGE_RISING])?;
        w.end_node(node)?;
    }

    w.end_node(root)?;
    let blob = w.finish()?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(FdtError::TooBig(blob.len()));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(blob: &[u8], needle: &[u8]) -> bool {
        blob.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn describes_every_device_and_the_command_line() {
        let virtio = [
            VirtioDeviceInfo {
                addr: MMIO_DEVICES_START,
                len: 0x1000,
                irq: 1,
            },
            VirtioDeviceInfo {
                addr: MMIO_DEVICES_START + 0x1000,
                len: 0x1000,
                irq: 2,
            },
        ];
        let blob = build(&FdtSetup {
            cmdline: "console=ttyS0 panic=1",
            mem_size: 128 << 20,
            vcpus: 2,
            gic: GicLayout::new(GicVersion::V3, 2),
            initrd: Some((0x8700_0000, 0x1000)),
            virtio: &virtio,
        })
        .unwrap();
        assert_eq!(&blob[..4], &0xd00d_feedu32.to_be_bytes());
        for s in [
            &b"console=ttyS0 panic=1\0"[..],
            b"virtio_mmio@40002000\0",
            b"virtio_mmio@40003000\0",
            b"uart@40000000\0",
            b"cpu@1\0",
            b"arm,gic-v3\0",
            b"linux,initrd-start\0",
        ] {
            assert!(find(&blob, s), "{:?} missing", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn mpidr_affinity() {
        assert_eq!(mpidr(0), 0);
        assert_eq!(mpidr(15), 15);
        assert_eq!(mpidr(16), 0x100);
        assert_eq!(mpidr(31), 0x10f);
    }
}
