//! x86_64: memory map, MP table, CPUID, boot registers, kernel loading and the in-kernel
//! interrupt controllers.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod state;
pub mod vm;
