//! AMD-specific normalization (AMD64 APM vol. 3, appendix E "Obtaining Processor
//! Information Via the CPUID Instruction").

use super::common::{cache_level, LEAF_EXT_MAX};
use super::KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
use super::{
    find, find_mut, insert_subleaf, max_leaf, set_bit, set_field, subleaves_mut, HostCpuid,
    Topology,
};
use kvm_bindings::kvm_cpuid_entry2;

pub(super) const LEAF_EXT_FEATURES: u32 = 0x7;
pub(super) const LEAF_EXT_FEATURE_IDS: u32 = 0x8000_0001;
pub(super) const LEAF_SIZES: u32 = 0x8000_0008;
pub(super) const LEAF_CACHE_TOPOLOGY: u32 = 0x8000_001d;
pub(super) const LEAF_EXT_APIC_ID: u32 = 0x8000_001e;

/// Leaf 07H.0 EDX bit 29: IA32_ARCH_CAPABILITIES MSR (an Intel MSR).
pub(super) const EDX_ARCH_CAPABILITIES: u32 = 29;
/// Fn8000_0001 ECX bit 1: CmpLegacy, the HTT logical count counts cores.
pub(super) const ECX_CMP_LEGACY: u32 = 1;
/// Fn8000_0001 ECX bit 22: TopologyExtensions, Fn8000_001D and Fn8000_001E are valid.
pub(super) const ECX_TOPOEXT: u32 = 22;
/// Fn8000_001D EAX[4:0]: cache type, 0 = no more caches.
pub(super) const CACHE_TYPE_MASK: u32 = 0x1f;

pub(super) fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, host: &HostCpuid, topo: Topology) {
    if let Some(e) = find_mut(entries, LEAF_EXT_FEATURES, 0) {
        // The APM has no IA32_ARCH_CAPABILITIES; KVM emulates the MSR on every host since
        // Linux 5.7 and reports the bit, and guests then treat the AMD CPU as an Intel one
        // for speculation mitigations. Firecracker clears it on AMD too.
        set_bit(&mut e.edx, EDX_ARCH_CAPABILITIES, false);
    }
    if let Some(e) = find_mut(entries, LEAF_SIZES, 0) {
        // ECX[15:12] ApicIdSize: APIC id bits that number the cores; ECX[7:0] NC: cores - 1.
        set_field(&mut e.ecx, 12, 15, topo.core_bits());
        set_field(&mut e.ecx, 0, 7, topo.count - 1);
    }
    let apic_id_leaf = extended_apic_id(entries, topo);
    let topoext = cache_topology(entries, host, topo, apic_id_leaf) && apic_id_leaf;
    if let Some(e) = find_mut(entries, LEAF_EXT_FEATURE_IDS, 0) {
        // QEMU sets CmpLegacy on AMD whenever a package has more than one logical
        // processor (target/i386/cpu.c, leaf 0x80000001), matching the HTT bit of leaf 1.
        set_bit(&mut e.ecx, ECX_CMP_LEGACY, topo.count > 1);
        // TopologyExtensions only says Fn8000_001D/1E are valid: it is set when both are
        // filled in (as Firecracker and QEMU's EPYC models do); no hardware is behind it.
        if topoext {
            set_bit(&mut e.ecx, ECX_TOPOEXT, true);
        }
    }
}

/// Fn8000_001D, one subleaf per cache. KVM's own subleaves are used when it has any;
/// otherwise, if `may_add` (the guest will have Fn8000_001E too), the host's (as
/// Firecracker passes them through). EAX[25:14] NumSharingCache
/// is rewritten: one thread per core shares L1/L2, every vCPU shares L3. Returns whether
/// the guest has at least one cache described.
fn cache_topology(
    entries: &mut Vec<kvm_cpuid_entry2>,
    host: &HostCpuid,
    topo: Topology,
    may_add: bool,
) -> bool {
    if max_leaf(entries, LEAF_EXT_MAX) < LEAF_CACHE_TOPOLOGY {
        return false;
    }
    let described = |entries: &[kvm_cpuid_entry2]| {
        entries
            .iter()
            .any(|e| e.function == LEAF_CACHE_TOPOLOGY && e.eax & CACHE_TYPE_MASK != 0)
    };
    if may_add && !described(entries) && !host.amd_cache_topology.is_empty() {
        entries.retain(|e| e.function != LEAF_CACHE_TOPOLOGY);
        for (index, regs) in (0u32..).zip(&host.amd_cache_topology) {
            insert_subleaf(entries, LEAF_CACHE_TOPOLOGY, index, *regs);
        }
    }
    for e in subleaves_mut(entries, LEAF_CACHE_TOPOLOGY) {
        e.flags |= KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
        if e.eax & CACHE_TYPE_MASK == 0 {
            continue;
        }
        let sharing = if cache_level(e.eax) >= 3 {
            topo.count - 1
        } else {
            0
        };
        set_field(&mut e.eax, 14, 25, sharing);
    }
    described(entries)
}

/// Fn8000_001E: EAX extended APIC id, EBX[7:0] compute unit (core) id with EBX[15:8]
/// threads per unit - 1 = 0, ECX[7:0] node id 0 with ECX[10:8] nodes per processor - 1 = 0.
/// KVM's api.rst ("CPU topology"): KVM returns zeroes here and userspace fills it per vCPU.
/// Only an entry KVM offered is filled; returns whether there was one.
fn extended_apic_id(entries: &mut [kvm_cpuid_entry2], topo: Topology) -> bool {
    if max_leaf(entries, LEAF_EXT_MAX) < LEAF_EXT_APIC_ID
        || find(entries, LEAF_EXT_APIC_ID, 0).is_none()
    {
        return false;
    }
    if let Some(e) = find_mut(entries, LEAF_EXT_APIC_ID, 0) {
        e.eax = topo.index;
        e.ebx = topo.index & 0xff;
        e.ecx = 0;
        e.edx = 0;
    }
    true
}
