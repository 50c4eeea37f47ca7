//! Normalization of constructed KVM tables for an AMD and an Intel host.

use super::amd::{
    ECX_CMP_LEGACY, ECX_TOPOEXT, EDX_ARCH_CAPABILITIES, LEAF_CACHE_TOPOLOGY, LEAF_EXT_APIC_ID,
    LEAF_EXT_FEATURE_IDS, LEAF_SIZES,
};
use super::common::{
    cache_level, DOMAIN_CORE, DOMAIN_SMT, ECX_HYPERVISOR, ECX_PDCM, ECX_TSC_DEADLINE, EDX_HTT,
    LEAF_BRAND_FIRST, LEAF_EXT_TOPOLOGY, LEAF_PERFMON, LEAF_V2_EXT_TOPOLOGY, LEAF_XSAVE,
};
use super::intel::{
    EAX_TURBO, EBX_FDP_EXCPTN_ONLY, EBX_ZERO_FCS_FDS, ECX_EPB, ECX_WAITPKG, LEAF_CACHE_PARAMS,
    LEAF_POWER,
};
use super::*;
use std::collections::BTreeSet;

const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;

fn e(function: u32, index: u32, regs: Registers) -> kvm_cpuid_entry2 {
    let indexed = matches!(function, 0x4 | 0x7 | 0xb | 0xd | 0x1f | 0x8000_001d);
    kvm_cpuid_entry2 {
        function,
        index,
        flags: if indexed {
            KVM_CPUID_FLAG_SIGNIFICANT_INDEX
        } else {
            0
        },
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// "AuthenticAMD"/"GenuineIntel" as leaf 0's EBX, ECX, EDX.
const AMD: [u32; 3] = [0x6874_7541, 0x444d_4163, 0x6974_6e65];
const INTEL: [u32; 3] = [0x756e_6547, 0x6c65_746e, 0x4965_6e69];

/// An AMD EPYC host's KVM_GET_SUPPORTED_CPUID as an older KVM gives it: no TSC-deadline,
/// zeroed brand string, topology leaves zeroed, ARCH_CAPABILITIES reported, no 0x8000001d.
fn amd_table() -> Vec<kvm_cpuid_entry2> {
    vec![
        e(0, 0, [0x10, AMD[0], AMD[1], AMD[2]]),
        e(1, 0, [0x00a0_0f11, 0x0002_0800, 0x8020_2000, 0x078b_fbff]),
        e(6, 0, [0x4, 0, 0, 0]),
        e(7, 0, [0, 0x0180_0002, 0x4, 0xa800_0000]),
        e(0xa, 0, [0, 0, 0, 0]),
        e(0xb, 0, [0, 0, 0, 0]),
        e(0xd, 0, [0x207, 0x988, 0x988, 0]),
        e(0xd, 1, [0xf, 0x370, 0x1800, 0]),
        e(0xd, 2, [0x100, 0x240, 0, 0]),
        e(0xd, 9, [0x8, 0x980, 0, 0]),
        // A component neither XCR0 nor XSS enables: must not survive.
        e(0xd, 5, [0x40, 0x340, 0, 0]),
        e(0x8000_0000, 0, [0x8000_0021, AMD[0], AMD[1], AMD[2]]),
        e(
            0x8000_0001,
            0,
            [0x00a0_0f11, 0x4000_0000, 0x0000_0391, 0x2fd3_fbff],
        ),
        e(0x8000_0002, 0, [0; 4]),
        e(0x8000_0003, 0, [0; 4]),
        e(0x8000_0004, 0, [0; 4]),
        e(0x8000_0008, 0, [0x3030, 0x110a_d205, 0x0003_7001, 0]),
        e(0x8000_001e, 0, [0; 4]),
        e(
            LEAF_KVM_SIGNATURE,
            0,
            [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
        ),
        e(LEAF_KVM_FEATURES, 0, [0x0100_7efb, 0, 0, 0]),
    ]
}

/// An Intel host's table: PMU, WAITPKG, turbo and EPB reported, leaf 4 with three caches and
/// a null descriptor, 0xb and 0x1f with subleaf 0 only.
fn intel_table() -> Vec<kvm_cpuid_entry2> {
    vec![
        e(0, 0, [0x1f, INTEL[0], INTEL[1], INTEL[2]]),
        e(
            1,
            0,
            [
                0x0005_0657,
                0x0010_0800,
                0xfffa_3203 & !(1 << 24),
                0x1f8b_fbff,
            ],
        ),
        e(4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
        e(4, 1, [0x1c00_4122, 0x01c0_003f, 0x3f, 0]),
        e(4, 2, [0x1c00_4143, 0x03c0_003f, 0x3ff, 0]),
        e(4, 3, [0x1c03_c163, 0x0280_003f, 0xdfff, 0x4]),
        e(4, 4, [0; 4]),
        e(6, 0, [0x6, 0, 0x8, 0]),
        e(7, 0, [0, 0xd19f_4fbb, 0x0040_0024, 0xbc00_0400]),
        e(0xa, 0, [0x0803_0902, 0, 0, 0x0000_0603]),
        e(0xb, 0, [0; 4]),
        e(0xd, 0, [0x2e7, 0x980, 0xa88, 0]),
        e(0xd, 1, [0xf, 0x980, 0, 0]),
        e(0xd, 2, [0x100, 0x240, 0, 0]),
        e(0xd, 5, [0x40, 0x440, 0, 0]),
        e(0xd, 6, [0x200, 0x480, 0, 0]),
        e(0xd, 7, [0x400, 0x680, 0, 0]),
        e(0xd, 9, [0x8, 0xa80, 0, 0]),
        e(0x1f, 0, [0; 4]),
        e(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
        e(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800]),
        e(0x8000_0002, 0, [0; 4]),
        e(0x8000_0003, 0, [0; 4]),
        e(0x8000_0004, 0, [0; 4]),
        e(0x8000_0008, 0, [0x3027, 0, 0, 0]),
        e(
            LEAF_KVM_SIGNATURE,
            0,
            [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
        ),
        e(LEAF_KVM_FEATURES, 0, [0x0100_7efb, 0, 0, 0]),
    ]
}

/// "AMD EPYC 7R13 Processor" as the host's 0x80000002-4.
fn brand() -> [Registers; 3] {
    let text = b"AMD EPYC 7R13 Processor\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    let mut out = [[0u32; 4]; 3];
    for (i, chunk) in text.chunks(4).enumerate() {
        out[i / 4][i % 4] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

fn amd_host() -> HostCpuid {
    HostCpuid {
        brand: Some(brand()),
        amd_cache_topology: vec![
            [0x0000_0121, 0x01c0_003f, 0x3f, 0],
            [0x0000_0122, 0x01c0_003f, 0x3f, 0],
            [0x0000_0143, 0x01c0_003f, 0x3ff, 2],
            [0x0000_4163, 0x03c0_003f, 0x7fff, 1],
        ],
    }
}

fn get(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
    *find(entries, function, index).unwrap_or_else(|| panic!("no {function:#x}.{index}"))
}

fn bit(reg: u32, n: u32) -> bool {
    reg & (1 << n) != 0
}

fn keys(entries: &[kvm_cpuid_entry2]) -> BTreeSet<(u32, u32)> {
    entries.iter().map(|e| (e.function, e.index)).collect()
}

/// Bits set in `after` that `before` did not have, for the feature registers of `leaf`.
fn new_bits(
    before: &[kvm_cpuid_entry2],
    after: &[kvm_cpuid_entry2],
    function: u32,
    index: u32,
) -> Registers {
    let (b, a) = (get(before, function, index), get(after, function, index));
    [
        a.eax & !b.eax,
        a.ebx & !b.ebx,
        a.ecx & !b.ecx,
        a.edx & !b.edx,
    ]
}

#[test]
fn amd_host_normalization() {
    let kvm = amd_table();
    let host = amd_host();
    let out = normalize(&kvm, &host, true, 2, 4).unwrap();

    let l1 = get(&out, 1, 0);
    assert_eq!(l1.ebx >> 24, 2, "initial APIC id");
    assert_eq!(field(l1.ebx, 16, 23), 4, "logical processors");
    assert_eq!(field(l1.ebx, 8, 15), 8, "CLFLUSH: 64 bytes");
    assert!(bit(l1.ecx, ECX_TSC_DEADLINE));
    assert!(bit(l1.ecx, ECX_HYPERVISOR));
    assert!(!bit(l1.ecx, ECX_PDCM));
    assert!(bit(l1.edx, EDX_HTT));

    assert!(!bit(get(&out, 7, 0).edx, EDX_ARCH_CAPABILITIES));
    let ext = get(&out, LEAF_EXT_FEATURE_IDS, 0);
    assert!(bit(ext.ecx, ECX_TOPOEXT));
    assert!(bit(ext.ecx, ECX_CMP_LEGACY));

    let sizes = get(&out, LEAF_SIZES, 0);
    assert_eq!(field(sizes.ecx, 0, 7), 3, "NC = cores - 1");
    assert_eq!(field(sizes.ecx, 12, 15), 2, "ApicIdSize");
    assert_eq!(field(sizes.ecx, 16, 17), 3, "other ECX fields kept");

    // The host's four caches; L1/L2 private, L3 shared by all four vCPUs.
    for (i, level) in [(0, 1), (1, 1), (2, 2), (3, 3)] {
        let c = get(&out, LEAF_CACHE_TOPOLOGY, i);
        assert_eq!(cache_level(c.eax), level);
        let sharing = if level == 3 { 3 } else { 0 };
        assert_eq!(field(c.eax, 14, 25), sharing, "cache {i}");
        assert_eq!(c.flags, KVM_CPUID_FLAG_SIGNIFICANT_INDEX);
    }
    let apic = get(&out, LEAF_EXT_APIC_ID, 0);
    assert_eq!((apic.eax, apic.ebx, apic.ecx, apic.edx), (2, 2, 0, 0));

    let b = brand();
    for (i, regs) in b.iter().enumerate() {
        let l = get(&out, LEAF_BRAND_FIRST + i as u32, 0);
        assert_eq!([l.eax, l.ebx, l.ecx, l.edx], *regs);
    }

    // Nothing KVM did not offer, except what a VMM provides: TSC-deadline, HTT, CmpLegacy,
    // TopologyExtensions, and the topology/cache subleaves.
    // Leaf 1 EBX holds ids and counts, not features: only ECX and EDX are compared.
    assert_eq!(
        new_bits(&kvm, &out, 1, 0)[2..],
        [1 << ECX_TSC_DEADLINE, 1 << EDX_HTT]
    );
    assert_eq!(new_bits(&kvm, &out, 7, 0), [0; 4]);
    assert_eq!(
        new_bits(&kvm, &out, LEAF_EXT_FEATURE_IDS, 0),
        [0, 0, (1 << ECX_TOPOEXT) | (1 << ECX_CMP_LEGACY), 0]
    );
    let mut allowed = keys(&kvm);
    allowed.extend([(0xb, 1), (0xb, 2)]);
    allowed.extend((0..4).map(|i| (LEAF_CACHE_TOPOLOGY, i)));
    allowed.remove(&(0xd, 5));
    assert_eq!(keys(&out), allowed);

    // The KVM paravirtual leaves are KVM's.
    assert_eq!(
        get(&out, LEAF_KVM_FEATURES, 0),
        get(&kvm, LEAF_KVM_FEATURES, 0)
    );
    assert_eq!(
        get(&out, LEAF_KVM_SIGNATURE, 0),
        get(&kvm, LEAF_KVM_SIGNATURE, 0)
    );
}

#[test]
fn amd_single_vcpu_and_no_host_caches() {
    let kvm = amd_table();
    let host = HostCpuid::default();
    let out = normalize(&kvm, &host, false, 0, 1).unwrap();
    let l1 = get(&out, 1, 0);
    assert!(
        !bit(l1.ecx, ECX_TSC_DEADLINE),
        "no capability, KVM did not offer it"
    );
    assert!(!bit(l1.edx, EDX_HTT));
    let ext = get(&out, LEAF_EXT_FEATURE_IDS, 0);
    assert!(!bit(ext.ecx, ECX_CMP_LEGACY));
    assert!(!bit(ext.ecx, ECX_TOPOEXT), "no cache topology to describe");
    assert!(find(&out, LEAF_CACHE_TOPOLOGY, 0).is_none());
    assert_eq!(
        get(&out, 0x8000_0002, 0).eax,
        0,
        "no host brand string: KVM's kept"
    );
    assert_eq!(field(get(&out, LEAF_SIZES, 0).ecx, 0, 7), 0);
}

#[test]
fn amd_kvm_cache_topology_is_preferred() {
    let mut kvm = amd_table();
    kvm.push(e(
        LEAF_CACHE_TOPOLOGY,
        0,
        [0x0000_0121, 0x01c0_003f, 0x3f, 0],
    ));
    kvm.push(e(
        LEAF_CACHE_TOPOLOGY,
        1,
        [0x0000_4163, 0x03c0_003f, 0x7fff, 1],
    ));
    kvm.push(e(LEAF_CACHE_TOPOLOGY, 2, [0; 4]));
    let out = normalize(&kvm, &amd_host(), true, 1, 2).unwrap();
    let l3 = get(&out, LEAF_CACHE_TOPOLOGY, 1);
    assert_eq!(field(l3.eax, 14, 25), 1);
    assert_eq!(get(&out, LEAF_CACHE_TOPOLOGY, 2).eax, 0);
    assert!(
        find(&out, LEAF_CACHE_TOPOLOGY, 3).is_none(),
        "the host's were not mixed in"
    );
}

#[test]
fn intel_host_normalization() {
    let kvm = intel_table();
    let host = HostCpuid {
        brand: Some(brand()),
        amd_cache_topology: Vec::new(),
    };
    let out = normalize(&kvm, &host, true, 1, 3).unwrap();

    let l1 = get(&out, 1, 0);
    assert_eq!(l1.ebx >> 24, 1);
    assert_eq!(field(l1.ebx, 16, 23), 4, "3 vCPUs: 4 APIC ids reserved");
    assert!(bit(l1.ecx, ECX_TSC_DEADLINE));
    assert!(!bit(l1.ecx, ECX_PDCM));

    for i in 0..4 {
        let c = get(&out, LEAF_CACHE_PARAMS, i);
        assert_eq!(c.eax >> 26, 2, "cores - 1");
        let sharing = if cache_level(c.eax) == 3 { 2 } else { 0 };
        assert_eq!(field(c.eax, 14, 25), sharing);
    }
    assert_eq!(
        get(&out, LEAF_CACHE_PARAMS, 4).eax,
        0,
        "null descriptor untouched"
    );

    let pm = get(&out, LEAF_POWER, 0);
    assert!(!bit(pm.eax, EAX_TURBO));
    assert!(bit(pm.eax, 2), "ARAT kept");
    assert!(!bit(pm.ecx, ECX_EPB));
    let l7 = get(&out, 7, 0);
    assert!(bit(l7.ebx, EBX_FDP_EXCPTN_ONLY) && bit(l7.ebx, EBX_ZERO_FCS_FDS));
    assert!(!bit(l7.ecx, ECX_WAITPKG));
    assert!(
        bit(l7.edx, EDX_ARCH_CAPABILITIES),
        "Intel keeps ARCH_CAPABILITIES"
    );
    let pmu = get(&out, LEAF_PERFMON, 0);
    assert_eq!([pmu.eax, pmu.ebx, pmu.ecx, pmu.edx], [0; 4]);

    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_V2_EXT_TOPOLOGY] {
        let smt = get(&out, leaf, 0);
        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx, smt.edx),
            (0, 1, DOMAIN_SMT << 8, 1)
        );
        let core = get(&out, leaf, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx, core.edx),
            (2, 3, (DOMAIN_CORE << 8) | 1, 1)
        );
        let end = get(&out, leaf, 2);
        assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 1));
    }

    // Intel's 0x80000008 ECX and 0x80000001 are not AMD's: untouched.
    assert_eq!(get(&out, 0x8000_0008, 0), get(&kvm, 0x8000_0008, 0));
    assert_eq!(get(&out, 0x8000_0001, 0), get(&kvm, 0x8000_0001, 0));
    assert_eq!(get(&out, 0x8000_0003, 0).eax, brand()[1][0]);

    assert_eq!(new_bits(&kvm, &out, 1, 0)[2..], [1 << ECX_TSC_DEADLINE, 0]);
    assert_eq!(
        new_bits(&kvm, &out, 7, 0),
        [
            0,
            (1 << EBX_FDP_EXCPTN_ONLY) | (1 << EBX_ZERO_FCS_FDS),
            0,
            0
        ]
    );
    let mut allowed = keys(&kvm);
    allowed.extend([(0xb, 1), (0xb, 2), (0x1f, 1), (0x1f, 2)]);
    assert_eq!(keys(&out), allowed);
    assert_eq!(
        get(&out, LEAF_KVM_FEATURES, 0),
        get(&kvm, LEAF_KVM_FEATURES, 0)
    );
}

#[test]
fn xsave_leaf_stays_consistent() {
    let out = normalize(&amd_table(), &HostCpuid::default(), true, 0, 1).unwrap();
    assert!(
        find(&out, LEAF_XSAVE, 5).is_none(),
        "component 5 is not enabled"
    );
    assert!(find(&out, LEAF_XSAVE, 9).is_some());
    assert_eq!(
        get(&out, LEAF_XSAVE, 0).ecx,
        0x988,
        "PKRU ends at 0x980 + 8"
    );

    // A KVM whose ECX undercounts is raised to the largest enabled component's end.
    let mut kvm = intel_table();
    if let Some(s0) = find_mut(&mut kvm, LEAF_XSAVE, 0) {
        s0.ecx = 0x240;
    }
    let out = normalize(&kvm, &HostCpuid::default(), true, 0, 1).unwrap();
    assert_eq!(get(&out, LEAF_XSAVE, 0).ecx, 0xa88);
}

#[test]
fn vendors_and_counts() {
    assert_eq!(Vendor::from_leaf0(AMD[0], AMD[1], AMD[2]), Vendor::Amd);
    assert_eq!(
        Vendor::from_leaf0(INTEL[0], INTEL[1], INTEL[2]),
        Vendor::Intel
    );
    assert_eq!(Vendor::from_leaf0(0, 0, 0), Vendor::Other);
    assert!(matches!(
        normalize(&amd_table(), &HostCpuid::default(), true, 0, 0),
        Err(CpuidError::NoVcpus)
    ));
    assert_eq!(id_bits(1), 0);
    assert_eq!(id_bits(2), 1);
    assert_eq!(id_bits(3), 2);
    assert_eq!(id_bits(32), 5);
    let mut r = 0xffff_ffff;
    set_field(&mut r, 8, 15, 0x1ff);
    assert_eq!(r, 0xffff_ffff, "value truncated to the field");
    set_field(&mut r, 8, 15, 0);
    assert_eq!(r, 0xffff_00ff);
}

/// KVM accepts every vCPU's table built from this host's supported CPUID.
#[test]
fn kvm_accepts_the_tables() {
    use kvm_ioctls::{Cap, Kvm};
    let Ok(kvm) = Kvm::new() else {
        eprintln!("skipped: /dev/kvm unusable");
        return;
    };
    let (Ok(supported), Ok(vm)) = (
        kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES),
        kvm.create_vm(),
    ) else {
        eprintln!("skipped: KVM VM unusable");
        return;
    };
    let source = CpuidSource {
        supported,
        tsc_deadline_timer: kvm.check_extension(Cap::TscDeadlineTimer),
        host: HostCpuid::read(),
    };
    vm.create_irq_chip().unwrap();
    for i in 0..4u8 {
        let vcpu = vm.create_vcpu(u64::from(i)).unwrap();
        let table = source.for_vcpu(i, 4).unwrap();
        vcpu.set_cpuid2(&table).unwrap();
        let l1 = table.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.ebx >> 24, u32::from(i));
        assert!(!source.tsc_deadline_timer || bit(l1.ecx, ECX_TSC_DEADLINE));
    }
}
