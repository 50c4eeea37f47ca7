//! The KVM side of a VM: the VM file descriptor (memory, interrupt controllers) and the
//! vCPUs with their run loops.

pub mod vcpu;
pub mod vm;
