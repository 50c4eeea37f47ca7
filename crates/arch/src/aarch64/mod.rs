//! aarch64: memory map, GIC, device tree, boot registers, kernel loading and snapshot state.

pub mod boot;
pub mod fdt;
pub mod gic;
pub mod gic_state;
pub mod layout;
pub mod regs;
pub mod state;
pub mod vm;
