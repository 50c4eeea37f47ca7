//! The normalization every vendor gets.

use super::KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
use super::{
    field, find, find_mut, insert_subleaf, max_leaf, set_bit, set_field, subleaves_mut, HostCpuid,
    Topology,
};
use kvm_bindings::kvm_cpuid_entry2;

pub(super) const LEAF_FEATURES: u32 = 0x1;
pub(super) const LEAF_PERFMON: u32 = 0xa;
pub(super) const LEAF_EXT_TOPOLOGY: u32 = 0xb;
pub(super) const LEAF_XSAVE: u32 = 0xd;
pub(super) const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
pub(super) const LEAF_EXT_MAX: u32 = 0x8000_0000;
pub(super) const LEAF_BRAND_FIRST: u32 = 0x8000_0002;
pub(super) const LEAF_BRAND_LAST: u32 = 0x8000_0004;

/// SDM vol. 2A, CPUID leaf 01H ECX bit 15: PDCM, IA32_PERF_CAPABILITIES is present.
pub(super) const ECX_PDCM: u32 = 15;
/// SDM vol. 2A, CPUID leaf 01H ECX bit 24: the local APIC timer has TSC-deadline mode.
pub(super) const ECX_TSC_DEADLINE: u32 = 24;
/// SDM vol. 2A, CPUID leaf 01H ECX bit 31: reserved for hypervisors, set in a guest.
pub(super) const ECX_HYPERVISOR: u32 = 31;
/// SDM vol. 2A, CPUID leaf 01H EDX bit 28: HTT, EBX[23:16] is valid.
pub(super) const EDX_HTT: u32 = 28;

/// SDM vol. 2A, leaf 0BH/1FH ECX[15:8] domain types.
pub(super) const DOMAIN_SMT: u32 = 1;
pub(super) const DOMAIN_CORE: u32 = 2;

/// SDM vol. 1, 13.4: the legacy region (512 bytes) plus the XSAVE header (64 bytes) are
/// the smallest XSAVE area.
const XSAVE_LEGACY_AND_HEADER: u32 = 576;

pub(super) fn normalize(
    entries: &mut Vec<kvm_cpuid_entry2>,
    host: &HostCpuid,
    tsc_deadline_timer: bool,
    topo: Topology,
) {
    if let Some(e) = find_mut(entries, LEAF_FEATURES, 0) {
        feature_info(e, tsc_deadline_timer, topo);
    }
    if let Some(e) = find_mut(entries, LEAF_PERFMON, 0) {
        // Ember gives the guest no PMU (as Firecracker: no performance monitoring is
        // advertised), so leaf 0AH (architectural performance monitoring, SDM vol. 2A)
        // says version 0: no counters. PDCM is cleared in leaf 1 for the same reason.
        // KVM's api.rst (KVM_CAP_PMU_CAPABILITY) asks userspace to keep 0xA consistent.
        e.eax = 0;
        e.ebx = 0;
        e.ecx = 0;
        e.edx = 0;
    }
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_V2_EXT_TOPOLOGY] {
        extended_topology(entries, leaf, topo);
    }
    xsave_consistency(entries);
    brand_string(entries, host);
}

/// Leaf 01H: identity, CLFLUSH size, logical count, and the bits only a VMM can set.
fn feature_info(e: &mut kvm_cpuid_entry2, tsc_deadline_timer: bool, topo: Topology) {
    // EBX[15:8]: CLFLUSH line size in 8-byte units (64 bytes on every x86_64 part).
    set_field(&mut e.ebx, 8, 15, 8);
    // EBX[23:16]: addressable logical processor ids in the package; software rounds it up
    // to a power of two (SDM vol. 2A), which is also the width the topology leaves use.
    set_field(&mut e.ebx, 16, 23, topo.count.next_power_of_two());
    // EBX[31:24]: initial APIC id, the same as the MP table's and leaf 0BH's EDX.
    set_field(&mut e.ebx, 24, 31, topo.index);
    set_bit(&mut e.ecx, ECX_PDCM, false);
    // KVM's api.rst ("Local APIC features"): TSC_DEADLINE is not reported by older
    // KVM_GET_SUPPORTED_CPUID but may be set when KVM_CAP_TSC_DEADLINE_TIMER is present
    // and the local APIC is emulated in the kernel (ember always uses KVM's irqchip).
    // Without it Linux calibrates the APIC timer against the PIT at boot.
    if tsc_deadline_timer {
        set_bit(&mut e.ecx, ECX_TSC_DEADLINE, true);
    }
    set_bit(&mut e.ecx, ECX_HYPERVISOR, true);
    set_bit(&mut e.edx, EDX_HTT, topo.count > 1);
}

/// Leaf 0BH or 1FH (SDM vol. 2A, "V2 Extended Topology"): an SMT domain of one thread and
/// a core domain of `count` cores, x2APIC id in EDX of every subleaf.
///
/// KVM's api.rst ("CPU topology"): KVM does not return host topology in these leaves (since
/// Linux 6.2 only subleaf 0 is reported, all zeroes); userspace must fill them per vCPU.
/// Subleaves 1 (core) and 2 (the invalid domain that ends enumeration, ECX[7:0] = index)
/// are added when KVM offers the leaf at all.
fn extended_topology(entries: &mut Vec<kvm_cpuid_entry2>, leaf: u32, topo: Topology) {
    if find(entries, leaf, 0).is_none() || max_leaf(entries, 0) < leaf {
        return;
    }
    insert_subleaf(entries, leaf, 1, [0; 4]);
    insert_subleaf(entries, leaf, 2, [0; 4]);
    for e in subleaves_mut(entries, leaf) {
        e.flags |= KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
        e.edx = topo.index;
        let (shift, count, domain) = match e.index {
            0 => (0, 1, DOMAIN_SMT),
            1 => (topo.core_bits(), topo.count, DOMAIN_CORE),
            _ => (0, 0, 0),
        };
        // EAX[4:0]: shift to the next domain's id; EBX[15:0]: logical processors in this
        // domain; ECX[7:0]: the subleaf; ECX[15:8]: domain type. Other bits reserved.
        e.eax = shift;
        e.ebx = count;
        e.ecx = (domain << 8) | (e.index & 0xff);
    }
}

/// Leaf 0DH (SDM vol. 1, 13.2): keeps the per-component subleaves and the total size
/// consistent with the component bitmaps of subleaves 0 (XCR0) and 1 (IA32_XSS).
///
/// KVM already restricts 0DH to the features it supports and this process may use (dynamic
/// ones such as AMX tile data only after `ARCH_REQ_XCOMP_GUEST_PERM`, which ember does not
/// request); this drops any subleaf describing a component neither bitmap enables and makes
/// sure ECX of subleaf 0 covers every enabled user component.
fn xsave_consistency(entries: &mut Vec<kvm_cpuid_entry2>) {
    let Some(s0) = find(entries, LEAF_XSAVE, 0) else {
        return;
    };
    let xcr0 = u64::from(s0.eax) | (u64::from(s0.edx) << 32);
    let xss =
        find(entries, LEAF_XSAVE, 1).map_or(0, |s1| u64::from(s1.ecx) | (u64::from(s1.edx) << 32));
    let enabled = xcr0 | xss;
    let component = |e: &kvm_cpuid_entry2| (2..64).contains(&e.index).then_some(e.index);
    entries.retain(|e| {
        e.function != LEAF_XSAVE || component(e).is_none_or(|i| enabled & (1u64 << i) != 0)
    });
    // Subleaf n >= 2 of a user (XCR0) component: EAX size, EBX offset in the standard format.
    let needed = entries
        .iter()
        .filter(|e| e.function == LEAF_XSAVE)
        .filter_map(|e| component(e).filter(|i| xcr0 & (1u64 << i) != 0).map(|_| e))
        .map(|e| e.ebx.saturating_add(e.eax))
        .fold(XSAVE_LEGACY_AND_HEADER, u32::max);
    if let Some(s0) = find_mut(entries, LEAF_XSAVE, 0) {
        s0.ecx = s0.ecx.max(needed);
    }
}

/// Leaves 80000002H-80000004H: the processor brand string. KVM reports them as zeroes, so
/// without this the guest names its CPU "<vendor> <family>/<model>"; like QEMU's `-cpu host`,
/// the guest gets the host's string.
fn brand_string(entries: &mut [kvm_cpuid_entry2], host: &HostCpuid) {
    let Some(brand) = host.brand else {
        return;
    };
    if max_leaf(entries, LEAF_EXT_MAX) < LEAF_BRAND_LAST || brand.iter().flatten().all(|r| *r == 0)
    {
        return;
    }
    for (leaf, regs) in (LEAF_BRAND_FIRST..=LEAF_BRAND_LAST).zip(brand) {
        if let Some(e) = find_mut(entries, leaf, 0) {
            [e.eax, e.ebx, e.ecx, e.edx] = regs;
        }
    }
}

/// Cache level of an SDM leaf 04H or AMD 8000001DH descriptor (EAX[7:5], 1-based).
pub(super) fn cache_level(eax: u32) -> u32 {
    field(eax, 5, 7)
}
