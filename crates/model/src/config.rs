//! The VM configuration file, in Firecracker's format (`--config-file`): the same keys
//! and fields as the API resources, parsed strictly (unknown fields are errors) and
//! validated into a [`VmResources`] the builder can trust.

use crate::boot::{BootSource, DEFAULT_BOOT_ARGS};
use crate::drive::{self, Drive, DriveError, DriveSpec};
use crate::machine::{MachineConfig, MachineConfigError, DEFAULT_MEM_MIB, DEFAULT_VCPUS};
use crate::net::{self, NetError, NetSpec, NetworkInterface};
use crate::output::{Logger, Metrics, Serial};
use crate::parse::{from_json, ParseError};
use crate::services::{
    Balloon, BalloonSpec, Entropy, MmdsConfig, MmdsSpec, ServiceError, Vsock, VsockSpec,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use thiserror::Error;

/// Errors in a configuration file.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ConfigError {
    /// The file is not valid JSON or does not match the schema; `path` names the field.
    /// Both are printable: control characters from the input are escaped.
    #[error("invalid VM configuration{}: {}", at(&.0.path), .0.message)]
    Json(#[from] ParseError),
    /// `machine-config` is invalid.
    #[error(transparent)]
    Machine(#[from] MachineConfigError),
    /// A field value we recognise but do not implement.
    #[error("{0} is not supported by ember")]
    Unsupported(String),
    /// A drive is invalid.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// A network interface is invalid.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A guest service (vsock, entropy) is invalid.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// `kernel_image_path` is empty.
    #[error("boot-source: kernel_image_path must not be empty")]
    EmptyKernelPath,
    /// No `boot-source` was given.
    #[error("no boot source configured: PUT /boot-source (or a `boot-source` section) first")]
    NoBootSource,
}

/// The whole configuration: the file's keys, which are also the API's resources. Parsed
/// strictly; [`VmConfig::validate`] turns it into [`VmResources`].
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// `boot-source` (required before start).
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// `machine-config`.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    /// `serial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<Serial>,
    /// `drives`.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// `network-interfaces`.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// `logger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// `vsock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// `entropy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<Entropy>,
    /// `balloon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    /// `mmds-config`.
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<MmdsConfig>,
    // Keys of Firecracker's format that this build does not implement: accepted only when
    // empty, so a configuration never silently loses a device it asked for.
    #[serde(rename = "cpu-config", default, skip_serializing)]
    cpu_config: Option<serde_json::Value>,
}

/// A validated VM description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmResources {
    /// Kernel image.
    pub kernel_path: PathBuf,
    /// Optional initrd.
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line.
    pub boot_args: String,
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Console output file, or stdout.
    pub serial_out_path: Option<PathBuf>,
    /// Block devices, in attachment order (the root drive first).
    pub drives: Vec<DriveSpec>,
    /// Network interfaces, in attachment order.
    pub net: Vec<NetSpec>,
    /// KVM's dirty log is kept for every memory slot (for diff snapshots).
    pub track_dirty_pages: bool,
    /// The vsock device, if any.
    pub vsock: Option<VsockSpec>,
    /// Whether the guest has a virtio-rng device.
    pub entropy: bool,
    /// The balloon, if any.
    pub balloon: Option<BalloonSpec>,
    /// MMDS, if configured.
    pub mmds: Option<MmdsSpec>,
}

fn at(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!(" at `{path}`")
    }
}

fn refuse_if_set(key: &str, value: &Option<serde_json::Value>) -> Result<(), ConfigError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(_) => Err(ConfigError::Unsupported(format!("the `{key}` section"))),
    }
}

/// Parses and validates the text of a configuration file.
pub fn parse(text: &str) -> Result<VmResources, ConfigError> {
    let cfg: VmConfig = from_json(text.as_bytes())?;
    if cfg.boot_source.is_none() {
        return Err(ConfigError::Json(ParseError {
            path: String::new(),
            message: "missing field `boot-source`".into(),
        }));
    }
    cfg.validate()
}

impl VmConfig {
    /// Parses a configuration file's text without validating it.
    pub fn parse(text: &str) -> Result<VmConfig, ConfigError> {
        Ok(from_json(text.as_bytes())?)
    }

    /// The machine configuration, or Firecracker's defaults.
    pub fn machine(&self) -> MachineConfig {
        self.machine_config.clone().unwrap_or_default()
    }

    /// Checks everything and returns what the builder needs.
    pub fn validate(&self) -> Result<VmResources, ConfigError> {
        let drives = drive::validate_drives(&self.drives)?;
        let net = net::validate_interfaces(&self.network_interfaces)?;
        let vsock = self.vsock.as_ref().map(Vsock::validate).transpose()?;
        if let Some(e) = &self.entropy {
            e.validate()?;
        }
        let ifaces: Vec<&str> = net.iter().map(|n| n.id.as_str()).collect();
        let mmds = self
            .mmds_config
            .as_ref()
            .map(|m| m.validate(&ifaces))
            .transpose()?;
        refuse_if_set("cpu-config", &self.cpu_config)?;
        let (vcpu_count, mem_size_mib) = match &self.machine_config {
            Some(m) => m.validate()?,
            None => (DEFAULT_VCPUS, DEFAULT_MEM_MIB),
        };
        let balloon = self
            .balloon
            .as_ref()
            .map(|b| b.validate(mem_size_mib))
            .transpose()?;
        let boot = self.boot_source.as_ref().ok_or(ConfigError::NoBootSource)?;
        if boot.kernel_image_path.is_empty() {
            return Err(ConfigError::EmptyKernelPath);
        }
        Ok(VmResources {
            kernel_path: PathBuf::from(&boot.kernel_image_path),
            initrd_path: boot.initrd_path.as_ref().map(PathBuf::from),
            boot_args: boot
                .boot_args
                .clone()
                .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_string()),
            vcpu_count,
            mem_size_mib,
            track_dirty_pages: self
                .machine_config
                .as_ref()
                .is_some_and(|m| m.track_dirty_pages),
            serial_out_path: self
                .serial
                .as_ref()
                .and_then(|s| s.serial_out_path.as_ref())
                .map(PathBuf::from),
            drives,
            net,
            vsock,
            entropy: self.entropy.is_some(),
            balloon,
            mmds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_machine(m: &str) -> String {
        format!(r#"{{"boot-source": {{"kernel_image_path": "/k"}}, "machine-config": {m}}}"#)
    }

    #[test]
    fn full_firecracker_style_config() {
        let r = parse(
            r#"{
              "boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0", "initrd_path": "/initrd"},
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": false, "huge_pages": "None"},
              "drives": [],
              "network-interfaces": []
            }"#,
        )
        .unwrap();
        assert_eq!(r.kernel_path, PathBuf::from("/vmlinux"));
        assert_eq!(r.initrd_path, Some(PathBuf::from("/initrd")));
        assert_eq!(r.boot_args, "console=ttyS0");
        assert_eq!((r.vcpu_count, r.mem_size_mib), (2, 1024));
    }

    #[test]
    fn defaults() {
        let r = parse(r#"{"boot-source": {"kernel_image_path": "/k"}}"#).unwrap();
        assert_eq!((r.vcpu_count, r.mem_size_mib), (1, 128));
        assert_eq!(r.boot_args, DEFAULT_BOOT_ARGS);
        assert_eq!(r.serial_out_path, None);
    }

    #[test]
    fn vcpu_bounds() {
        for bad in [0, 33, 1000] {
            let e = parse(&with_machine(&format!(
                r#"{{"vcpu_count": {bad}, "mem_size_mib": 128}}"#
            )))
            .unwrap_err();
            assert!(e.to_string().contains("vcpu_count"), "{e}");
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
        assert!(parse(&with_machine(r#"{"vcpu_count": 32, "mem_size_mib": 128}"#)).is_ok());
    }

    #[test]
    fn memory_zero() {
        let e = parse(&with_machine(r#"{"vcpu_count": 1, "mem_size_mib": 0}"#)).unwrap_err();
        assert!(e.to_string().contains("mem_size_mib"), "{e}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse(r#"{"boot-source": {"kernel_image_path": "/k", "kernel": 1}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `kernel`"), "{e}");
        let e = parse(r#"{"boot-source": {"kernel_image_path": "/k"}, "bogus": {}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
        let e = parse(&with_machine(
            r#"{"vcpu_count": 1, "mem_size_mib": 1, "x": 1}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn malformed_and_mistyped() {
        let e = parse(r#"{"boot-source": "#).unwrap_err();
        assert!(e.to_string().starts_with("invalid VM configuration"), "{e}");
        let e = parse(&with_machine(r#"{"vcpu_count": "2", "mem_size_mib": 128}"#)).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        assert!(
            e.to_string().contains("at `machine-config.vcpu_count`"),
            "{e}"
        );
        let e = parse(&with_machine(r#"{"vcpu_count": -1, "mem_size_mib": 128}"#)).unwrap_err();
        assert!(e.to_string().contains("-1"), "{e}");
        let e = parse(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#).unwrap_err();
        assert!(e.to_string().contains("boot-source"), "{e}");
        let e = parse(&with_machine(r#"{"mem_size_mib": 128}"#)).unwrap_err();
        assert!(e.to_string().contains("vcpu_count"), "{e}");
    }

    #[test]
    fn unimplemented_sections_are_refused_not_ignored() {
        let e = parse(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "rootfs"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("drives"), "{e}");
        let e = parse(r#"{"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 3}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("vsock"), "{e}");
        let e = parse(&with_machine(
            r#"{"vcpu_count": 2, "mem_size_mib": 128, "huge_pages": "2M"}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("huge_pages"), "{e}");
    }

    #[test]
    fn serial_output_file() {
        let r = parse(r#"{"boot-source": {"kernel_image_path": "/k"}, "serial": {"serial_out_path": "/tmp/c"}}"#)
            .unwrap();
        assert_eq!(r.serial_out_path, Some(PathBuf::from("/tmp/c")));
    }

    /// Hostile input: thousands of mutated configurations (flipped bytes, cut-offs, spliced
    /// JSON tokens, huge numbers). `parse` must return, never panic, and every error must be
    /// one line (launchers read ember's single `ember: error:` line).
    #[test]
    fn mutated_configs_never_panic_and_errors_are_one_line() {
        let seed_doc = r#"{"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "huge_pages": "None"},
            "serial": {"serial_out_path": "/c"}, "drives": [], "network-interfaces": []}"#;
        let tokens: [&[u8]; 12] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b":",
            b",",
            b"-1",
            b"1e999",
            b"18446744073709551616",
            b"null",
            b"\"\\u0000\"",
        ];
        // xorshift: deterministic, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut doc = seed_doc.as_bytes().to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % (doc.len() + 1);
                match next() % 4 {
                    0 if at < doc.len() => doc[at] = next() as u8,
                    1 => doc.truncate(at),
                    2 => {
                        let t = tokens[(next() as usize) % tokens.len()];
                        doc.splice(at..at, t.iter().copied());
                    }
                    _ if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&doc);
            if let Err(e) = parse(&text) {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line error for {text:?}: {msg}");
            }
        }
    }
}
