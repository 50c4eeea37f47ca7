//! The KVM side of a VM: the VM file descriptor (memory, interrupt controllers) and the
//! vCPUs with their run loops.

// Casts that can lose bits are errors in CI (-D warnings); the workspace cannot set this
// for some crates only. Tests cast known small values freely.
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

pub mod vcpu;
pub mod vm;
