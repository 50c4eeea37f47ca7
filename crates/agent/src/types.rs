//! The instance type catalogue: names to vCPUs and memory, as EC2's families are.

pub use agent_types::InstanceType;
use std::borrow::Cow;

/// Every type, smallest first.
pub const CATALOGUE: &[InstanceType] = &[
    InstanceType {
        name: Cow::Borrowed("e1.nano"),
        vcpus: 1,
        memory_mib: 128,
    },
    InstanceType {
        name: Cow::Borrowed("e1.micro"),
        vcpus: 1,
        memory_mib: 256,
    },
    InstanceType {
        name: Cow::Borrowed("e1.small"),
        vcpus: 1,
        memory_mib: 512,
    },
    InstanceType {
        name: Cow::Borrowed("e1.medium"),
        vcpus: 2,
        memory_mib: 1024,
    },
    InstanceType {
        name: Cow::Borrowed("e1.large"),
        vcpus: 2,
        memory_mib: 2048,
    },
    InstanceType {
        name: Cow::Borrowed("e1.xlarge"),
        vcpus: 4,
        memory_mib: 4096,
    },
];

/// The type called `name`.
pub fn find(name: &str) -> Option<InstanceType> {
    CATALOGUE.iter().find(|t| t.name == name).cloned()
}
