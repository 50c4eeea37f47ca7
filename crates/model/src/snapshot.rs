//! `PUT /snapshot/create` and `PUT /snapshot/load`: Firecracker's snapshot bodies.

use serde::{Deserialize, Serialize};

/// `snapshot_type`: everything, or only the pages written since the last snapshot.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum SnapshotType {
    /// The whole guest memory.
    #[default]
    Full,
    /// Only pages dirtied since the last snapshot (needs `track_dirty_pages`), written
    /// sparsely into a copy of the base memory file.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the VM state file goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
    /// Firecracker's old target-version field; accepted and ignored as Firecracker does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `mem_backend.backend_type`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum MemBackendType {
    /// Guest memory is mapped privately from a file.
    File,
    /// A userfaultfd handler serves page faults (not offered by ember).
    Uffd,
}

/// `mem_backend`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The memory file (File) or the handler's socket (Uffd).
    pub backend_path: String,
}

/// One entry of `network_overrides`: the interface gets another tap on restore.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface, as it was configured.
    pub iface_id: String,
    /// Its new tap.
    pub host_dev_name: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: String,
    /// Where guest memory comes from.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Firecracker's deprecated form of `mem_backend` (a File backend).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// Keep KVM's dirty log, for Diff snapshots of the restored VM.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Firecracker's deprecated name of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Resume the guest once loaded (else it stays paused).
    #[serde(default)]
    pub resume_vm: bool,
    /// New taps for the restored interfaces.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
}

/// A load request that cannot be carried out as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotParamsError {
    /// Neither or both of `mem_backend` and `mem_file_path`.
    #[error("snapshot/load: give exactly one of mem_backend and mem_file_path")]
    MemSource,
    /// The Uffd backend.
    #[error(
        "snapshot/load: mem_backend.backend_type \"Uffd\" is not supported by ember; use \"File\""
    )]
    Uffd,
    /// An empty path.
    #[error("snapshot/{0}: {1} must not be empty")]
    EmptyPath(&'static str, &'static str),
}

impl SnapshotCreateParams {
    /// Checks the paths are given.
    pub fn validate(&self) -> Result<(), SnapshotParamsError> {
        if self.snapshot_path.is_empty() {
            return Err(SnapshotParamsError::EmptyPath("create", "snapshot_path"));
        }
        if self.mem_file_path.is_empty() {
            return Err(SnapshotParamsError::EmptyPath("create", "mem_file_path"));
        }
        Ok(())
    }
}

impl SnapshotLoadParams {
    /// The memory file to map, checking the request names exactly one File source.
    pub fn mem_file(&self) -> Result<&str, SnapshotParamsError> {
        if self.snapshot_path.is_empty() {
            return Err(SnapshotParamsError::EmptyPath("load", "snapshot_path"));
        }
        let path = match (&self.mem_backend, &self.mem_file_path) {
            (Some(b), None) => match b.backend_type {
                MemBackendType::File => b.backend_path.as_str(),
                MemBackendType::Uffd => return Err(SnapshotParamsError::Uffd),
            },
            (None, Some(p)) => p.as_str(),
            _ => return Err(SnapshotParamsError::MemSource),
        };
        if path.is_empty() {
            return Err(SnapshotParamsError::EmptyPath(
                "load",
                "mem_backend.backend_path",
            ));
        }
        Ok(path)
    }

    /// Whether the restored VM keeps a dirty log.
    pub fn dirty_pages(&self) -> bool {
        self.track_dirty_pages || self.enable_diff_snapshots.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_json;

    #[test]
    fn firecracker_bodies_parse_and_bad_ones_are_named() {
        let c: SnapshotCreateParams = from_json(
            br#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        )
        .unwrap();
        assert_eq!(c.snapshot_type, SnapshotType::Diff);
        let l: SnapshotLoadParams = from_json(
            br#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
                 "track_dirty_pages": true, "resume_vm": true,
                 "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}]}"#,
        )
        .unwrap();
        assert_eq!(l.mem_file(), Ok("/m"));
        assert!(l.dirty_pages() && l.resume_vm);
        let old: SnapshotLoadParams =
            from_json(br#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#).unwrap();
        assert_eq!(old.mem_file(), Ok("/m"));
        let uffd: SnapshotLoadParams = from_json(
            br#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
        )
        .unwrap();
        assert_eq!(uffd.mem_file(), Err(SnapshotParamsError::Uffd));
        let none: SnapshotLoadParams = from_json(br#"{"snapshot_path": "/s"}"#).unwrap();
        assert_eq!(none.mem_file(), Err(SnapshotParamsError::MemSource));
        let e = from_json::<SnapshotCreateParams>(
            br#"{"snapshot_type": "Half", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("snapshot_type"), "{e}");
        assert!(from_json::<SnapshotLoadParams>(br#"{"snapshot_path": "/s", "x": 1}"#).is_err());
    }
}
