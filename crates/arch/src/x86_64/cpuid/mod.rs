//! CPUID as each vCPU sees it: KVM's supported CPUID (`KVM_GET_SUPPORTED_CPUID`), normalized
//! the way Firecracker's CPU normalization and QEMU's CPU setup do it.
//!
//! - `common`: what every vendor gets (leaf 0x1 identity and feature bits, no PMU in 0xa,
//!   extended topology 0xb/0x1f, XSAVE leaf 0xd kept consistent, the host's brand string).
//! - `intel`: deterministic cache parameters (0x4), power management (0x6), leaf 0x7 bits.
//! - `amd`: leaf 0x7 ARCH_CAPABILITIES, 0x80000001 CmpLegacy/TopologyExtensions, 0x80000008
//!   core count, cache topology 0x8000001d, compute unit/node 0x8000001e.
//!
//! The guest always sees one socket of `cpu_count` single-threaded cores with APIC ids
//! 0..cpu_count, which is what the MP table says too.
//!
//! Nothing is added that KVM did not offer, except what a VMM is documented to provide
//! itself: TSC-deadline (when `KVM_CAP_TSC_DEADLINE_TIMER` is present), the hypervisor bit,
//! topology (KVM's api.rst: the topology leaves 0xb, 0x1f and 0x8000001e are for userspace to
//! fill per vCPU), the x87 deprecation bits (KVM's x86/errata.rst), the brand string and
//! the AMD cache topology, which are descriptions with no hardware behaviour behind them.
//!
//! The KVM paravirtual leaves 0x40000000/0x40000001 are left exactly as KVM reports them:
//! their feature bits (kvmclock, PV EOI, PV unhalt, PV TLB flush, steal time, ...) are
//! the ones this host's KVM implements in the kernel.

mod amd;
mod common;
mod intel;
#[cfg(test)]
mod tests;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use thiserror::Error;

/// `kvm_cpuid_entry2.flags`: the entry applies to one ECX subleaf only (linux/kvm.h,
/// `KVM_CPUID_FLAG_SIGNIFICANT_INDEX`, BIT(0); kvm-bindings does not export it).
const KVM_CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// Errors building a vCPU's CPUID table.
#[derive(Debug, Error)]
pub enum CpuidError {
    /// The normalized table does not fit in a `KVM_SET_CPUID2` call.
    #[error("the guest CPUID table has {0} entries, more than KVM takes")]
    TooManyEntries(usize),
    /// The guest must have at least one vCPU.
    #[error("a guest needs at least one vCPU")]
    NoVcpus,
}

/// CPU vendor, from the vendor string of leaf 0 (KVM reports the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD", or "HygonGenuine" (Hygon follows AMD's CPUID layout).
    Amd,
    /// Anything else: only the vendor-neutral normalization is applied.
    Other,
}

impl Vendor {
    /// The vendor named by leaf 0's EBX, EDX, ECX (that order spells the string).
    pub fn from_leaf0(ebx: u32, ecx: u32, edx: u32) -> Self {
        let mut name = [0u8; 12];
        name[0..4].copy_from_slice(&ebx.to_le_bytes());
        name[4..8].copy_from_slice(&edx.to_le_bytes());
        name[8..12].copy_from_slice(&ecx.to_le_bytes());
        match &name {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }

    /// The vendor of a CPUID table, from its leaf 0.
    pub fn of(entries: &[kvm_cpuid_entry2]) -> Self {
        find(entries, 0, 0).map_or(Vendor::Other, |e| Self::from_leaf0(e.ebx, e.ecx, e.edx))
    }
}

/// One CPUID result: EAX, EBX, ECX, EDX.
pub type Registers = [u32; 4];

/// What KVM's table lacks and the host's own CPUID instruction has, read once per VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCpuid {
    /// Leaves 0x80000002-0x80000004 (the processor brand string), if the host has them.
    pub brand: Option<[Registers; 3]>,
    /// AMD leaf 0x8000001d, subleaf by subleaf until the first null cache type.
    pub amd_cache_topology: Vec<Registers>,
}

/// At most this many 0x8000001d subleaves are read from the host: AMD processors describe
/// four caches (L1d, L1i, L2, L3); the bound keeps a non-conforming CPU from looping us.
const MAX_CACHE_SUBLEAVES: u32 = 8;

impl HostCpuid {
    /// Reads the brand string and (on AMD) the cache topology with the CPUID instruction.
    pub fn read() -> Self {
        use std::arch::x86_64::__cpuid_count;
        let r = |leaf: u32, sub: u32| {
            let c = __cpuid_count(leaf, sub);
            [c.eax, c.ebx, c.ecx, c.edx]
        };
        let leaf0 = r(0, 0);
        let max_ext = r(common::LEAF_EXT_MAX, 0)[0];
        let brand = (max_ext >= common::LEAF_BRAND_LAST).then(|| {
            [
                r(common::LEAF_BRAND_FIRST, 0),
                r(common::LEAF_BRAND_FIRST + 1, 0),
                r(common::LEAF_BRAND_LAST, 0),
            ]
        });
        let mut amd_cache_topology = Vec::new();
        // AMD APM vol. 3, CPUID Fn8000_001D: on other vendors this leaf is undefined, so it
        // is only read from an AMD host whose maximum extended leaf covers it.
        if Vendor::from_leaf0(leaf0[1], leaf0[2], leaf0[3]) == Vendor::Amd
            && max_ext >= amd::LEAF_CACHE_TOPOLOGY
        {
            for sub in 0..MAX_CACHE_SUBLEAVES {
                let regs = r(amd::LEAF_CACHE_TOPOLOGY, sub);
                if regs[0] & amd::CACHE_TYPE_MASK == 0 {
                    break;
                }
                amd_cache_topology.push(regs);
            }
        }
        HostCpuid {
            brand,
            amd_cache_topology,
        }
    }
}

/// Everything a vCPU's CPUID is derived from: KVM's supported CPUID, the KVM capability a
/// VMM must check itself, and the host's own CPUID.
#[derive(Debug, Clone)]
pub struct CpuidSource {
    /// `KVM_GET_SUPPORTED_CPUID`.
    pub supported: CpuId,
    /// `KVM_CHECK_EXTENSION(KVM_CAP_TSC_DEADLINE_TIMER)`.
    pub tsc_deadline_timer: bool,
    /// The host's brand string and cache topology ([`HostCpuid::read`]).
    pub host: HostCpuid,
}

impl CpuidSource {
    /// The CPUID table for vCPU `cpu_index` of a guest with `cpu_count` vCPUs.
    pub fn for_vcpu(&self, cpu_index: u8, cpu_count: u8) -> Result<CpuId, CpuidError> {
        let entries = normalize(
            self.supported.as_slice(),
            &self.host,
            self.tsc_deadline_timer,
            cpu_index,
            cpu_count,
        )?;
        CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries(entries.len()))
    }
}

/// The guest's entries for vCPU `cpu_index` of `cpu_count`, from KVM's `supported` entries.
pub fn normalize(
    supported: &[kvm_cpuid_entry2],
    host: &HostCpuid,
    tsc_deadline_timer: bool,
    cpu_index: u8,
    cpu_count: u8,
) -> Result<Vec<kvm_cpuid_entry2>, CpuidError> {
    if cpu_count == 0 {
        return Err(CpuidError::NoVcpus);
    }
    let topo = Topology {
        index: u32::from(cpu_index),
        count: u32::from(cpu_count),
    };
    let mut entries = supported.to_vec();
    common::normalize(&mut entries, host, tsc_deadline_timer, topo);
    match Vendor::of(&entries) {
        Vendor::Intel => intel::normalize(&mut entries, topo),
        Vendor::Amd => amd::normalize(&mut entries, host, topo),
        Vendor::Other => {}
    }
    Ok(entries)
}

/// Where this vCPU sits: one package of `count` cores, one thread each, APIC id = `index`.
#[derive(Debug, Clone, Copy)]
struct Topology {
    index: u32,
    count: u32,
}

impl Topology {
    /// Bits of the APIC id that number the cores of the package.
    fn core_bits(self) -> u32 {
        id_bits(self.count)
    }
}

/// Number of bits needed to hold `n - 1` (the APIC id width of `n` CPUs).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Sets bit `bit` of `reg` to `on`.
fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= 1 << bit;
    } else {
        *reg &= !(1 << bit);
    }
}

/// Replaces bits `lo..=hi` of `reg` with `value` (truncated to the field).
fn set_field(reg: &mut u32, lo: u32, hi: u32, value: u32) {
    let width = hi - lo + 1;
    let mask = if width >= 32 {
        u32::MAX
    } else {
        ((1u32 << width) - 1) << lo
    };
    *reg = (*reg & !mask) | ((value << lo) & mask);
}

/// Bits `lo..=hi` of `reg`.
fn field(reg: u32, lo: u32, hi: u32) -> u32 {
    let width = hi - lo + 1;
    if width >= 32 {
        reg
    } else {
        (reg >> lo) & ((1u32 << width) - 1)
    }
}

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

fn find_mut(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
    index: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries
        .iter_mut()
        .find(|e| e.function == function && e.index == index)
}

/// The subleaves of `function` (entries whose index matters).
fn subleaves_mut(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
) -> impl Iterator<Item = &mut kvm_cpuid_entry2> {
    entries.iter_mut().filter(move |e| e.function == function)
}

/// The highest basic (`0`) or extended (`0x8000_0000`) leaf the table announces.
fn max_leaf(entries: &[kvm_cpuid_entry2], base: u32) -> u32 {
    find(entries, base, 0).map_or(0, |e| e.eax)
}

/// Adds an indexed entry `function.index` with `regs` if the table lacks it.
fn insert_subleaf(entries: &mut Vec<kvm_cpuid_entry2>, function: u32, index: u32, regs: Registers) {
    if find(entries, function, index).is_none() {
        entries.push(kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFICANT_INDEX,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        });
    }
}
