//! `machine-config`: vCPUs and memory, and the fields ember accepts only at their
//! defaults.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest vCPU count a guest can have.
pub const MAX_VCPUS: u64 = 32;
/// vCPUs when `machine-config` is absent (Firecracker's default).
pub const DEFAULT_VCPUS: u8 = 1;
/// Memory when `machine-config` is absent (Firecracker's default).
pub const DEFAULT_MEM_MIB: u64 = 128;

/// A machine configuration ember cannot run.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MachineConfigError {
    /// `vcpu_count` out of range.
    #[error("machine-config: vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    /// `mem_size_mib` is zero.
    #[error("machine-config: mem_size_mib must be at least 1, got 0")]
    MemZero,
    /// `smt` with an odd vCPU count.
    #[error("machine-config: with smt enabled, vcpu_count must be 1 or even, got {0}")]
    SmtOdd(u64),
    /// A value Firecracker has that ember does not implement.
    #[error("{0} is not supported by ember")]
    Unsupported(String),
}

/// `machine-config.huge_pages`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Ordinary pages.
    #[default]
    None,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /machine-config`, `GET /machine-config`, and the file's `machine-config`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1 to 32.
    pub vcpu_count: u64,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading.
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking (for diff snapshots).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge page backing.
    #[serde(default)]
    pub huge_pages: HugePages,
    /// CPU template name.
    #[serde(default)]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfig {
    /// Firecracker's defaults: 1 vCPU, 128 MiB.
    fn default() -> Self {
        MachineConfig {
            vcpu_count: u64::from(DEFAULT_VCPUS),
            mem_size_mib: DEFAULT_MEM_MIB,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: None,
        }
    }
}

/// `PATCH /machine-config`: the fields to change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// New vCPU count.
    #[serde(default)]
    pub vcpu_count: Option<u64>,
    /// New memory size in MiB.
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    /// New SMT setting.
    #[serde(default)]
    pub smt: Option<bool>,
    /// New dirty page tracking setting.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// New huge page backing.
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
    /// New CPU template.
    #[serde(default)]
    pub cpu_template: Option<String>,
}

impl MachineConfig {
    /// This configuration with `patch`'s fields applied.
    pub fn patched(&self, patch: MachineConfigPatch) -> MachineConfig {
        MachineConfig {
            vcpu_count: patch.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: patch.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: patch.smt.unwrap_or(self.smt),
            track_dirty_pages: patch.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: patch.huge_pages.unwrap_or(self.huge_pages),
            cpu_template: patch.cpu_template.or_else(|| self.cpu_template.clone()),
        }
    }

    /// Checks the configuration; returns `(vcpus, mem_size_mib)`.
    pub fn validate(&self) -> Result<(u8, u64), MachineConfigError> {
        let vcpus = match u8::try_from(self.vcpu_count) {
            Ok(n) if (1..=MAX_VCPUS).contains(&self.vcpu_count) => n,
            _ => return Err(MachineConfigError::VcpuCount(self.vcpu_count)),
        };
        if self.mem_size_mib == 0 {
            return Err(MachineConfigError::MemZero);
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(MachineConfigError::SmtOdd(self.vcpu_count));
        }
        if self.smt {
            return Err(MachineConfigError::Unsupported(
                "machine-config: smt = true".into(),
            ));
        }
        if self.huge_pages != HugePages::None {
            return Err(MachineConfigError::Unsupported(
                "machine-config: huge_pages other than \"None\"".into(),
            ));
        }
        if let Some(t) = &self.cpu_template {
            if t != "None" {
                return Err(MachineConfigError::Unsupported(format!(
                    "machine-config: cpu_template {t:?}"
                )));
            }
        }
        Ok((vcpus, self.mem_size_mib))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_changes_only_what_it_names() {
        let m = MachineConfig::default().patched(MachineConfigPatch {
            vcpu_count: Some(2),
            ..Default::default()
        });
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 128));
    }

    #[test]
    fn bounds() {
        for bad in [0, 33, 1000, u64::MAX] {
            let m = MachineConfig {
                vcpu_count: bad,
                ..Default::default()
            };
            assert_eq!(m.validate(), Err(MachineConfigError::VcpuCount(bad)));
        }
        let m = MachineConfig {
            vcpu_count: 32,
            ..Default::default()
        };
        assert_eq!(m.validate(), Ok((32, 128)));
    }
}
