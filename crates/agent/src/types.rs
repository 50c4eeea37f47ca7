//! The instance type catalogue: names to vCPUs and memory, as EC2's families are.

use serde::Serialize;

/// One instance type.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct InstanceType {
    /// Name (`e1.small`).
    pub name: &'static str,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// Every type, smallest first.
pub const CATALOGUE: &[InstanceType] = &[
    InstanceType {
        name: "e1.nano",
        vcpus: 1,
        memory_mib: 128,
    },
    InstanceType {
        name: "e1.micro",
        vcpus: 1,
        memory_mib: 256,
    },
    InstanceType {
        name: "e1.small",
        vcpus: 1,
        memory_mib: 512,
    },
    InstanceType {
        name: "e1.medium",
        vcpus: 2,
        memory_mib: 1024,
    },
    InstanceType {
        name: "e1.large",
        vcpus: 2,
        memory_mib: 2048,
    },
    InstanceType {
        name: "e1.xlarge",
        vcpus: 4,
        memory_mib: 4096,
    },
];

/// The type called `name`.
pub fn find(name: &str) -> Option<InstanceType> {
    CATALOGUE.iter().copied().find(|t| t.name == name)
}
