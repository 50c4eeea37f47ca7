//! `drives`: Firecracker's block device resource, parsed strictly and validated into
//! [`DriveSpec`]s the builder attaches in order (the root drive first, so it is
//! `/dev/vda`).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use thiserror::Error;

/// Longest drive id we accept.
pub const MAX_ID_LEN: usize = 64;

/// Errors in the `drives` list.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DriveError {
    /// `drive_id` is empty, too long or has characters other than ASCII letters, digits
    /// and `_`.
    #[error("drives: drive_id {0:?} must be 1 to 64 ASCII letters, digits or underscores")]
    BadId(String),
    /// Two drives share an id.
    #[error("drives: drive_id {0:?} is used twice")]
    DuplicateId(String),
    /// More than one root drive.
    #[error("drives: both {0:?} and {1:?} have is_root_device = true; only one may")]
    TwoRoots(String, String),
    /// No `path_on_host`.
    #[error("drives: {0:?} needs a non-empty path_on_host")]
    NoPath(String),
    /// `partuuid` that is not a partition UUID (it goes onto the kernel command line).
    #[error("drives: {0:?} has partuuid {1:?}; expected hex digits and dashes (e.g. 6a4c7d8e-01)")]
    BadPartuuid(String, String),
    /// A field we recognise but do not implement.
    #[error("drives: {0:?}: {1} is not supported by ember")]
    Unsupported(String, &'static str),
}

/// `drives[]` entry, with Firecracker's fields.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Unique id; also the serial the guest reads with get-id.
    pub drive_id: String,
    /// Backing file on the host.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// Whether the guest boots from it.
    pub is_root_device: bool,
    /// Whether the guest may only read.
    #[serde(default)]
    pub is_read_only: Option<bool>,
    /// Partition UUID of the root partition, for `root=PARTUUID=`.
    #[serde(default)]
    pub partuuid: Option<String>,
    /// Write cache mode.
    #[serde(default)]
    pub cache_type: Option<CacheType>,
    /// I/O engine.
    #[serde(default)]
    pub io_engine: Option<IoEngine>,
    /// Rate limiter (not implemented: refused when set).
    #[serde(default)]
    pub rate_limiter: Option<serde_json::Value>,
    /// vhost-user socket (not implemented: refused when set).
    #[serde(default)]
    pub socket: Option<String>,
}

/// `PATCH /drives/{drive_id}`: a running drive's new backing file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    /// The drive's id (must be the path's).
    pub drive_id: String,
    /// The new backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// A new rate limiter (not supported by ember: refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

/// `cache_type`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum CacheType {
    /// No flush offered to the guest (Firecracker's default).
    #[default]
    Unsafe,
    /// Flushes offered, completed with fdatasync.
    Writeback,
}

/// `io_engine`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum IoEngine {
    /// Blocking I/O on the device's thread.
    #[default]
    Sync,
    /// io_uring (not implemented: refused).
    Async,
}

/// A validated drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// Drive id.
    pub id: String,
    /// Backing file.
    pub path: PathBuf,
    /// Boot from it.
    pub is_root: bool,
    /// Read-only.
    pub read_only: bool,
    /// Root partition UUID.
    pub partuuid: Option<String>,
    /// Write cache mode.
    pub cache: CacheType,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_partuuid(p: &str) -> bool {
    !p.is_empty() && p.len() <= 36 && p.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Validates one drive on its own.
pub fn validate_drive(d: &Drive) -> Result<DriveSpec, DriveError> {
    let id = d.drive_id.clone();
    if !valid_id(&id) {
        return Err(DriveError::BadId(id));
    }
    if d.socket.is_some() {
        return Err(DriveError::Unsupported(id, "socket (vhost-user)"));
    }
    if d.rate_limiter.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(DriveError::Unsupported(id, "rate_limiter"));
    }
    if d.io_engine == Some(IoEngine::Async) {
        return Err(DriveError::Unsupported(id, "io_engine \"Async\""));
    }
    let path = match &d.path_on_host {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => return Err(DriveError::NoPath(id)),
    };
    if let Some(p) = &d.partuuid {
        if !valid_partuuid(p) {
            return Err(DriveError::BadPartuuid(id, p.clone()));
        }
    }
    Ok(DriveSpec {
        id,
        path,
        is_root: d.is_root_device,
        read_only: d.is_read_only.unwrap_or(false),
        partuuid: d.partuuid.clone(),
        cache: d.cache_type.unwrap_or_default(),
    })
}

/// Validates the whole list and puts it in attachment order: the root drive first, the
/// others as given.
pub fn validate_drives(drives: &[Drive]) -> Result<Vec<DriveSpec>, DriveError> {
    let mut seen = HashSet::new();
    let mut root: Option<DriveSpec> = None;
    let mut rest = Vec::with_capacity(drives.len());
    for d in drives {
        let spec = validate_drive(d)?;
        if !seen.insert(spec.id.clone()) {
            return Err(DriveError::DuplicateId(spec.id));
        }
        if spec.is_root {
            if let Some(r) = &root {
                return Err(DriveError::TwoRoots(r.id.clone(), spec.id));
            }
            root = Some(spec);
        } else {
            rest.push(spec);
        }
    }
    Ok(root.into_iter().chain(rest).collect())
}

/// The kernel command line words that make the guest boot from `root`.
pub fn root_args(root: &DriveSpec) -> String {
    let dev = match &root.partuuid {
        Some(p) => format!("root=PARTUUID={p}"),
        None => "root=/dev/vda".to_string(),
    };
    format!("{dev} {}", if root.read_only { "ro" } else { "rw" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(json: &str) -> Drive {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn firecracker_fields_and_defaults() {
        let d = drive(
            r#"{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true,
                "is_read_only": false, "partuuid": null, "cache_type": "Writeback",
                "io_engine": "Sync", "rate_limiter": null}"#,
        );
        let s = validate_drive(&d).unwrap();
        assert_eq!(s.cache, CacheType::Writeback);
        assert!(s.is_root && !s.read_only);
        let d = drive(r#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false}"#);
        let s = validate_drive(&d).unwrap();
        assert_eq!((s.cache, s.read_only), (CacheType::Unsafe, false));
    }

    #[test]
    fn root_goes_first_and_only_once() {
        let ds = [
            drive(r#"{"drive_id": "a", "path_on_host": "/a", "is_root_device": false}"#),
            drive(r#"{"drive_id": "r", "path_on_host": "/r", "is_root_device": true}"#),
            drive(r#"{"drive_id": "b", "path_on_host": "/b", "is_root_device": false}"#),
        ];
        let ids: Vec<_> = validate_drives(&ds)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, ["r", "a", "b"]);
        let two = [ds[1].clone(), {
            let mut d = ds[1].clone();
            d.drive_id = "r2".into();
            d
        }];
        assert_eq!(
            validate_drives(&two),
            Err(DriveError::TwoRoots("r".into(), "r2".into()))
        );
        let dup = [ds[0].clone(), ds[0].clone()];
        assert_eq!(
            validate_drives(&dup),
            Err(DriveError::DuplicateId("a".into()))
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for id in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            let mut d =
                drive(r#"{"drive_id": "a", "path_on_host": "/a", "is_root_device": false}"#);
            d.drive_id = id.to_string();
            assert!(
                matches!(validate_drive(&d), Err(DriveError::BadId(_))),
                "{id:?}"
            );
        }
        let d = drive(r#"{"drive_id": "a", "is_root_device": false}"#);
        assert_eq!(validate_drive(&d), Err(DriveError::NoPath("a".into())));
        // A partuuid is pasted into the command line: nothing but a UUID may pass.
        let d = drive(
            r#"{"drive_id": "a", "path_on_host": "/a", "is_root_device": true, "partuuid": "1 init=/bin/sh"}"#,
        );
        assert!(matches!(
            validate_drive(&d),
            Err(DriveError::BadPartuuid(..))
        ));
        for (field, value) in [
            ("io_engine", r#""Async""#),
            (
                "rate_limiter",
                r#"{"bandwidth": {"size": 1, "refill_time": 1}}"#,
            ),
            ("socket", r#""/s""#),
        ] {
            let d = drive(&format!(
                r#"{{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "{field}": {value}}}"#
            ));
            assert!(
                matches!(validate_drive(&d), Err(DriveError::Unsupported(..))),
                "{field}"
            );
        }
        assert!(serde_json::from_str::<Drive>(
            r#"{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "cache_type": "None"}"#
        )
        .is_err());
    }

    #[test]
    fn root_command_line() {
        let mut d = validate_drive(&drive(
            r#"{"drive_id": "r", "path_on_host": "/r", "is_root_device": true, "is_read_only": true}"#,
        ))
        .unwrap();
        assert_eq!(root_args(&d), "root=/dev/vda ro");
        d.read_only = false;
        d.partuuid = Some("0eaa91a0-01".into());
        assert_eq!(root_args(&d), "root=PARTUUID=0eaa91a0-01 rw");
    }
}
