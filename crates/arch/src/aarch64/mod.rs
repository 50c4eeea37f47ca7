//! aarch64: memory map, GIC, device tree, boot registers and kernel loading.

pub mod boot;
pub mod fdt;
pub mod gic;
pub mod layout;
pub mod regs;
pub mod vm;
