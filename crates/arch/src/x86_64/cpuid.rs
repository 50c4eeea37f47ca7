//! CPUID as each vCPU sees it: what KVM supports, with the topology and identity
//! leaves rewritten so every vCPU has its own APIC id and the guest counts `n` CPUs.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Number of bits needed to hold `n - 1` (the APIC id width of `n` CPUs).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites one CPUID entry for vCPU `cpu_index` of a guest with `cpu_count` vCPUs.
///
/// The guest sees one socket with `cpu_count` single-threaded cores, which is what the
/// MP table says too.
pub fn normalize_entry(entry: &mut kvm_cpuid_entry2, cpu_index: u8, cpu_count: u8) {
    let id = u32::from(cpu_index);
    let n = u32::from(cpu_count);
    match entry.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC id, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size in 8-byte units.
            entry.ebx = (id << 24) | (n << 16) | (8 << 8) | (entry.ebx & 0xff);
            entry.ecx |= ECX_HYPERVISOR;
            if n > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_TOPOLOGY => {
            // EAX[31:26]: cores per package minus one; [25:14]: threads sharing the cache minus one.
            entry.eax &= 0x3fff;
            entry.eax |= (n - 1) << 26;
            let level = (entry.eax >> 5) & 0x7;
            if level >= 3 {
                entry.eax |= (n - 1) << 14;
            }
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = id_bits(n);
                    entry.ebx = n;
                    entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_AMD_SIZE => {
            // ECX[15:12]: APIC id bits for cores, [7:0]: cores minus one.
            entry.ecx = (id_bits(n).max(1) << 12) | (n - 1);
        }
        LEAF_AMD_EXT_APIC_ID => {
            entry.eax = id;
            entry.ebx = id & 0xff; // compute unit id, one thread per unit
            entry.ecx = 0; // node 0
        }
        _ => {}
    }
}

/// The CPUID table for vCPU `cpu_index`, derived from KVM's supported CPUID.
pub fn for_vcpu(supported: &CpuId, cpu_index: u8, cpu_count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, cpu_index, cpu_count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_counts() {
        let mut e = entry(1, 0);
        e.ebx = 0xffff_ff07;
        normalize_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xff, 7, "brand index kept");
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);

        let mut single = entry(1, 0);
        single.edx = EDX_HTT;
        normalize_entry(&mut single, 0, 1);
        assert_eq!(single.edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology() {
        let mut smt = entry(0xb, 0);
        normalize_entry(&mut smt, 5, 6);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 5));
        let mut core = entry(0xb, 1);
        normalize_entry(&mut core, 5, 6);
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (3, 6, 2, 5));
        let mut end = entry(0xb, 2);
        normalize_entry(&mut end, 5, 6);
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
    }

    #[test]
    fn amd_core_count() {
        let mut e = entry(0x8000_0008, 0);
        normalize_entry(&mut e, 0, 2);
        assert_eq!(e.ecx & 0xff, 1);
        let mut x = entry(0x8000_001e, 0);
        normalize_entry(&mut x, 7, 8);
        assert_eq!(x.eax, 7);
    }

    #[test]
    fn id_widths() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(32), 5);
    }
}
