//! Intel-specific normalization (SDM vol. 2A, CPUID).

use super::common::cache_level;
use super::KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
use super::{find_mut, set_bit, set_field, subleaves_mut, Topology};
use kvm_bindings::kvm_cpuid_entry2;

pub(super) const LEAF_CACHE_PARAMS: u32 = 0x4;
pub(super) const LEAF_POWER: u32 = 0x6;
pub(super) const LEAF_EXT_FEATURES: u32 = 0x7;

/// Leaf 06H EAX bit 1: Turbo Boost (the guest cannot control frequencies).
pub(super) const EAX_TURBO: u32 = 1;
/// Leaf 06H ECX bit 3: IA32_ENERGY_PERF_BIAS (no frequency selection in a guest).
pub(super) const ECX_EPB: u32 = 3;
/// Leaf 07H.0 EBX bit 6: FDP_EXCPTN_ONLY.
pub(super) const EBX_FDP_EXCPTN_ONLY: u32 = 6;
/// Leaf 07H.0 EBX bit 13: FPU CS and DS are deprecated (ZERO_FCS_FDS).
pub(super) const EBX_ZERO_FCS_FDS: u32 = 13;
/// Leaf 07H.0 ECX bit 5: WAITPKG (UMONITOR/UMWAIT/TPAUSE).
pub(super) const ECX_WAITPKG: u32 = 5;

pub(super) fn normalize(entries: &mut [kvm_cpuid_entry2], topo: Topology) {
    deterministic_cache(entries, topo);
    if let Some(e) = find_mut(entries, LEAF_POWER, 0) {
        set_bit(&mut e.eax, EAX_TURBO, false);
        set_bit(&mut e.ecx, ECX_EPB, false);
    }
    if let Some(e) = find_mut(entries, LEAF_EXT_FEATURES, 0) {
        // KVM's x86/errata.rst ("x87 features"): these two bits mean a feature is absent, KVM
        // reports them clear, and the recommended workaround is to always set them.
        set_bit(&mut e.ebx, EBX_FDP_EXCPTN_ONLY, true);
        set_bit(&mut e.ebx, EBX_ZERO_FCS_FDS, true);
        // Since Linux 5.8 KVM reports WAITPKG when VMX can enable it; UMWAIT/TPAUSE in a
        // guest put the physical core into C0.1/C0.2, as MONITOR/MWAIT (which KVM emulates
        // as NOPs) would. Firecracker hides it; so do we, and the guest gets #UD.
        set_bit(&mut e.ecx, ECX_WAITPKG, false);
    }
}

/// Leaf 04H, one subleaf per cache: EAX[31:26] = cores per package - 1, EAX[25:14] =
/// logical processors sharing the cache - 1 (one thread per core: 0 for L1/L2, every vCPU
/// for L3). Null descriptors (type EAX[4:0] = 0) end the list and are left alone.
fn deterministic_cache(entries: &mut [kvm_cpuid_entry2], topo: Topology) {
    for e in subleaves_mut(entries, LEAF_CACHE_PARAMS) {
        e.flags |= KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
        if e.eax & 0x1f == 0 {
            continue;
        }
        let sharing = if cache_level(e.eax) >= 3 {
            topo.count - 1
        } else {
            0
        };
        set_field(&mut e.eax, 14, 25, sharing);
        set_field(&mut e.eax, 26, 31, topo.count - 1);
    }
}
