//! The Intel MultiProcessor Specification (1.4) table that tells the guest how many
//! processors it has and where its interrupt controllers are.
//!
//! Linux finds the floating pointer by scanning the last KiB of base memory (639 KiB),
//! so the whole structure is placed at [`EBDA_START`](super::layout::EBDA_START).

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Most vCPUs a guest can have.
pub const MAX_VCPUS: u8 = 32;
/// Number of IOAPIC pins (KVM's in-kernel IOAPIC).
pub const IOAPIC_PINS: u8 = 24;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
/// Space reserved for the table: the last KiB of base memory.
const MAX_TABLE_SIZE: usize = 1024;

/// Errors building or writing the MP table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MpTableError {
    /// The vCPU count is outside 1..=32.
    #[error("an MP table describes 1 to {MAX_VCPUS} vCPUs, not {0}")]
    VcpuCount(u8),
    /// The guest's memory does not cover the EBDA.
    #[error("the MP table does not fit in guest memory")]
    NotInMemory,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

/// The bytes of the MP floating pointer followed by the MP configuration table for
/// `num_cpus` processors, to be placed at guest address `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount(num_cpus));
    }
    let ioapic_id = num_cpus;
    let table_addr = base + FLOATING_LEN as u64;

    let mut entries: Vec<u8> = Vec::with_capacity(
        usize::from(num_cpus) * CPU_ENTRY_LEN + (4 + usize::from(IOAPIC_PINS)) * SMALL_ENTRY_LEN,
    );
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = 1 | if cpu == 0 { 2 } else { 0 }; // enabled, bootstrap processor
        entries.extend_from_slice(&[0, cpu, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU and APIC present
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    // The single ISA bus.
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // The IOAPIC.
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // ISA IRQ n is wired to IOAPIC pin n, matching KVM's default GSI routing.
    for irq in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 is ExtINT (the 8259), LINT1 is NMI, on every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut table = Vec::with_capacity(FLOATING_LEN + table_len);

    // Floating pointer.
    table.extend_from_slice(b"_MP_");
    // In the EBDA, below 1 MiB.
    let table_addr = u32::try_from(table_addr).map_err(|_| MpTableError::NotInMemory)?;
    table.extend_from_slice(&table_addr.to_le_bytes());
    table.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    table[10] = checksum(&table[..FLOATING_LEN]);

    // Configuration table header.
    let hdr = table.len();
    table.extend_from_slice(b"PCMP");
    // 32 vCPUs at most: a few hundred bytes.
    let table_len = u16::try_from(table_len).map_err(|_| MpTableError::NotInMemory)?;
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]);
    table.extend_from_slice(b"EMBER   ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[hdr + 7] = checksum(&table[hdr..]);

    debug_assert!(table.len() <= MAX_TABLE_SIZE);
    Ok(table)
}

/// Writes the MP table for `num_cpus` processors into guest memory at the EBDA.
pub fn setup<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| MpTableError::NotInMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_signatures() {
        for n in [1u8, 2, 7, 32] {
            let t = build(n, EBDA_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            let hdr = &t[16..];
            assert_eq!(&hdr[0..4], b"PCMP");
            let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
            assert_eq!(len, hdr.len());
            assert_eq!(sum(hdr), 0, "configuration table checksum");
            assert!(t.len() <= MAX_TABLE_SIZE);
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_one_bsp() {
        let n = 4u8;
        let t = build(n, EBDA_START).unwrap();
        let hdr = &t[16..];
        let count = u16::from_le_bytes([hdr[34], hdr[35]]);
        assert_eq!(
            count as usize,
            n as usize + 1 + 1 + IOAPIC_PINS as usize + 2
        );
        let mut off = HEADER_LEN;
        let mut bsps = 0;
        for cpu in 0..n {
            let e = &hdr[off..off + CPU_ENTRY_LEN];
            assert_eq!(e[0], 0);
            assert_eq!(e[1], cpu);
            assert_eq!(e[3] & 1, 1);
            bsps += (e[3] >> 1) & 1;
            off += CPU_ENTRY_LEN;
        }
        assert_eq!(bsps, 1);
        assert_eq!(hdr[off], 1);
        assert_eq!(&hdr[off + 2..off + 8], b"ISA   ");
        off += SMALL_ENTRY_LEN;
        assert_eq!(hdr[off], 2);
        assert_eq!(hdr[off + 1], n, "IOAPIC id follows the LAPIC ids");
        assert_eq!(
            u32::from_le_bytes(hdr[off + 4..off + 8].try_into().unwrap()),
            IOAPIC_ADDR
        );
    }

    #[test]
    fn vcpu_count_limits() {
        assert_eq!(build(0, EBDA_START), Err(MpTableError::VcpuCount(0)));
        assert_eq!(build(33, EBDA_START), Err(MpTableError::VcpuCount(33)));
    }
}
