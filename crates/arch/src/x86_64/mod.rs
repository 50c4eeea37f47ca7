//! x86_64: memory map, MP table, CPUID, boot registers and kernel loading.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
