//! Global descriptor table entries and their translation into KVM segment registers.

use kvm_bindings::kvm_segment;

/// A 64-bit GDT descriptor from access/flags (`0xF0AA`: flags nibble, access byte), base and limit.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(e: u64) -> u64 {
    ((e & 0xff00_0000_0000_0000) >> 32) | ((e & 0x0000_00ff_ffff_0000) >> 16)
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "the limit field is 20 bits: the masked value fits"
)]
fn limit(e: u64) -> u32 {
    (((e & 0x000f_0000_0000_0000) >> 32) | (e & 0x0000_0000_0000_ffff)) as u32
}

/// The KVM segment register that loading selector `index * 8` from a GDT with entry `e` gives.
pub fn segment(e: u64, index: u8) -> kvm_segment {
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = limit(e);
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base: base(e),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 0x3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// GDT for the 64-bit Linux boot protocol: null, 64-bit code, data, TSS.
pub const GDT_LONG_MODE: [u64; 4] = [
    0,
    entry(0xa09b, 0, 0xfffff),
    entry(0xc093, 0, 0xfffff),
    entry(0x808b, 0, 0xfffff),
];

/// GDT for PVH entry (32-bit protected mode, paging off): null, 32-bit code, data, TSS.
pub const GDT_PROTECTED_MODE: [u64; 4] = [
    0,
    entry(0xc09b, 0, 0xfffff),
    entry(0xc093, 0, 0xfffff),
    entry(0x008b, 0, 0x67),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let s = segment(GDT_LONG_MODE[1], 1);
        assert_eq!(s.selector, 8);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.l, 1);
        assert_eq!(s.db, 0);
        assert_eq!(s.g, 1);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.present, 1);
        assert_eq!(s.s, 1);
    }

    #[test]
    fn protected_mode_segments() {
        let c = segment(GDT_PROTECTED_MODE[1], 1);
        assert_eq!((c.db, c.l, c.type_), (1, 0, 0xb));
        let d = segment(GDT_PROTECTED_MODE[2], 2);
        assert_eq!((d.selector, d.type_, d.db), (0x10, 3, 1));
        let t = segment(GDT_PROTECTED_MODE[3], 3);
        assert_eq!((t.selector, t.type_, t.s, t.limit), (0x18, 0xb, 0, 0x67));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = entry(0x4093, 0x1234_5678, 0xabcde);
        assert_eq!(base(e), 0x1234_5678);
        assert_eq!(limit(e), 0xabcde);
    }
}
