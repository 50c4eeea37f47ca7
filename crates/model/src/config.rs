//! The VM configuration file, in Firecracker's format (`--config-file`): the same keys
//! and fields as the API resources, parsed strictly (unknown fields are errors) and
//! validated into a [`VmResources`] the builder can trust.

use crate::drive_config::{self, DriveConfig, DriveConfigError, DriveSpec};
use crate::net_config::{self, NetConfigError, NetSpec, NetworkInterfaceConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use thiserror::Error;

/// Largest vCPU count a guest can have.
pub const MAX_VCPUS: u64 = 32;
/// vCPUs when `machine-config` is absent (Firecracker's default).
pub const DEFAULT_VCPUS: u8 = 1;
/// Memory when `machine-config` is absent (Firecracker's default).
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Kernel command line when `boot_args` is absent (Firecracker's default).
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// Errors in a configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file is not valid JSON or does not match the schema; `path` names the field.
    /// Both are printable: control characters from the input are escaped.
    #[error("invalid VM configuration{}: {message}", at(path))]
    Json {
        /// Where in the document (`machine-config.vcpu_count`), empty at the top level.
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// `vcpu_count` out of range.
    #[error("machine-config: vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    /// `mem_size_mib` is zero.
    #[error("machine-config: mem_size_mib must be at least 1, got 0")]
    MemZero,
    /// `smt` with an odd vCPU count.
    #[error("machine-config: with smt enabled, vcpu_count must be 1 or even, got {0}")]
    SmtOdd(u64),
    /// A field value we recognise but do not implement.
    #[error("{0} is not supported by ember")]
    Unsupported(String),
    /// A drive is invalid.
    #[error(transparent)]
    Drive(#[from] DriveConfigError),
    /// A network interface is invalid.
    #[error(transparent)]
    Net(#[from] NetConfigError),
    /// `kernel_image_path` is empty.
    #[error("boot-source: kernel_image_path must not be empty")]
    EmptyKernelPath,
    /// No `boot-source` was given.
    #[error("no boot source configured: PUT /boot-source (or a `boot-source` section) first")]
    NoBootSource,
}

/// `boot-source`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Path to the kernel (ELF vmlinux or bzImage).
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default)]
    pub boot_args: Option<String>,
    /// Path to an initrd.
    #[serde(default)]
    pub initrd_path: Option<String>,
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

/// `machine-config`.
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

/// `serial`: where the guest's console goes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// File the console is appended to; stdout when absent.
    #[serde(default)]
    pub serial_out_path: Option<String>,
}

/// `logger`: where ember's own log goes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File (or FIFO) the log is appended to; stderr when absent.
    #[serde(default)]
    pub log_path: Option<String>,
    /// Error, Warning, Info, Debug, Trace or Off.
    #[serde(default)]
    pub level: Option<String>,
    /// Print the level in each line.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Print the source file and line in each line.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Only log lines from this module (Rust module path prefix).
    #[serde(default)]
    pub module: Option<String>,
}

/// `metrics`: where metrics lines go.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File (or FIFO) the lines are appended to.
    pub metrics_path: String,
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
    pub boot_source: Option<BootSourceConfig>,
    /// `machine-config`.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    /// `serial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    /// `drives`.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// `network-interfaces`.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// `logger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    /// `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    // Keys of Firecracker's format that this build does not implement: accepted only when
    // empty, so a configuration never silently loses a device it asked for.
    #[serde(default, skip_serializing)]
    vsock: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    balloon: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    entropy: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default, skip_serializing)]
    mmds_config: Option<serde_json::Value>,
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
}

/// Escapes control characters (a field name may contain a newline) so an error stays one line.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

/// Validates a machine configuration and returns `(vcpus, mem_size_mib)`.
pub fn validate_machine(m: &MachineConfig) -> Result<(u8, u64), ConfigError> {
    if m.vcpu_count == 0 || m.vcpu_count > MAX_VCPUS {
        return Err(ConfigError::VcpuCount(m.vcpu_count));
    }
    if m.mem_size_mib == 0 {
        return Err(ConfigError::MemZero);
    }
    if m.smt && m.vcpu_count > 1 && m.vcpu_count % 2 == 1 {
        return Err(ConfigError::SmtOdd(m.vcpu_count));
    }
    if m.smt {
        return Err(ConfigError::Unsupported(
            "machine-config: smt = true".into(),
        ));
    }
    if m.huge_pages != HugePages::None {
        return Err(ConfigError::Unsupported(
            "machine-config: huge_pages other than \"None\"".into(),
        ));
    }
    if let Some(t) = &m.cpu_template {
        if t != "None" {
            return Err(ConfigError::Unsupported(format!(
                "machine-config: cpu_template {t:?}"
            )));
        }
    }
    Ok((m.vcpu_count as u8, m.mem_size_mib))
}

/// Parses JSON text into `T` strictly, naming the field at fault.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Json {
        path: printable(&e.path().to_string()),
        message: printable(&e.into_inner().to_string()),
    })
}

/// Parses and validates the text of a configuration file.
pub fn parse(text: &str) -> Result<VmResources, ConfigError> {
    let cfg: VmConfig = from_json(text.as_bytes())?;
    if cfg.boot_source.is_none() {
        return Err(ConfigError::Json {
            path: String::new(),
            message: "missing field `boot-source`".into(),
        });
    }
    cfg.validate()
}

impl VmConfig {
    /// Parses a configuration file's text without validating it.
    pub fn parse(text: &str) -> Result<VmConfig, ConfigError> {
        from_json(text.as_bytes())
    }

    /// Checks everything and returns what the builder needs.
    pub fn validate(&self) -> Result<VmResources, ConfigError> {
        let drives = drive_config::validate_drives(&self.drives)?;
        let net = net_config::validate_interfaces(&self.network_interfaces)?;
        refuse_if_set("vsock", &self.vsock)?;
        refuse_if_set("balloon", &self.balloon)?;
        refuse_if_set("entropy", &self.entropy)?;
        refuse_if_set("mmds-config", &self.mmds_config)?;
        refuse_if_set("cpu-config", &self.cpu_config)?;
        let (vcpu_count, mem_size_mib) = match &self.machine_config {
            Some(m) => validate_machine(m)?,
            None => (DEFAULT_VCPUS, DEFAULT_MEM_MIB),
        };
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
            serial_out_path: self
                .serial
                .as_ref()
                .and_then(|s| s.serial_out_path.as_ref())
                .map(PathBuf::from),
            drives,
            net,
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
