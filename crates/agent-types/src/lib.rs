//! emberd's API wire types: every body emberd takes or answers, shared by emberd (which
//! serves them) and emberctl (which sends and reads them). Serde only: no HTTP.
//!
//! Requests are parsed strictly (unknown fields are errors); answers are read leniently
//! (a newer emberd may add fields), so answer types do not deny unknown fields.

mod state;

pub use state::{InstanceState, UnknownState};

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// `POST /v1/instances`: run instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// `img-...`
    pub image_id: String,
    /// A type name from `GET /v1/types`.
    pub instance_type: String,
    /// How many (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Given to the guest as a read-only drive `user_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// The same token twice returns the first run's instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// Sizes of empty data volumes to attach, in MiB.
    #[serde(default)]
    pub data_volumes_mib: Vec<u64>,
}

/// `POST /v1/images`: register an image (emberd copies the files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterImage {
    /// A name for people.
    pub name: String,
    /// The kernel file.
    pub kernel: String,
    /// An initrd file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// The root filesystem image (a multiple of 512 bytes).
    pub rootfs: String,
    /// Default kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `POST /v1/instances/{id}/stop`'s optional body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Kill the VMM at once instead of asking the guest to shut down.
    #[serde(default)]
    pub force: bool,
    /// Hibernate (EC2's): save the guest's memory and state, so `start` continues it
    /// where it was instead of booting it.
    #[serde(default)]
    pub hibernate: bool,
}

/// A registered image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `img-...`
    pub id: String,
    /// A name for people.
    pub name: String,
    /// emberd's copy of the kernel.
    pub kernel: String,
    /// emberd's copy of the initrd.
    pub initrd: Option<String>,
    /// emberd's copy of the root filesystem image.
    pub rootfs: String,
    /// Default kernel command line.
    pub boot_args: String,
    /// sha256 of the root filesystem copy.
    pub rootfs_sha256: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    /// Every image, oldest first.
    pub images: Vec<Image>,
}

/// An instance as emberd records it (what a run answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// `i-...`
    pub id: String,
    /// Its image.
    pub image_id: String,
    /// Its type's name.
    pub instance_type: String,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Why it is in that state (`user request`, `VMM was killed`, ...).
    pub reason: String,
    /// The ember process, while there is one.
    pub pid: Option<i64>,
    /// That process's start time (clock ticks since boot, /proc/PID/stat field 22).
    pub pid_start: Option<i64>,
    /// The instance's directory (volumes, console, logs).
    pub dir: String,
    /// Private IPv4 address.
    pub ip: String,
    /// Its tap device.
    pub tap: String,
    /// Its MAC.
    pub mac: String,
    /// The client token of the run that made it.
    pub client_token: Option<String>,
    /// User data given at run.
    pub user_data: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Unix seconds.
    pub launched_at: i64,
    /// Unix seconds of the last state change.
    pub changed_at: i64,
    /// Unix seconds, once terminated.
    pub terminated_at: Option<i64>,
}

/// A volume of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// `vol-...`
    pub id: String,
    /// Its instance.
    pub instance_id: String,
    /// Its file.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// The root volume (a copy of the image's root filesystem).
    pub root: bool,
}

/// An instance as described (`GET /v1/instances[/{id}]` and the lifecycle verbs): the
/// record and what follows from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// The record.
    #[serde(flatten)]
    pub instance: Instance,
    /// Its type's vCPUs (absent if the type is no longer in the catalogue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Its type's memory (absent likewise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Its volumes, root first.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Disk space of a hibernated instance's snapshot (state and memory files), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_bytes: Option<u64>,
    /// Its VMM's API socket.
    pub api_socket: String,
}

/// `{"instances": [...]}`: a run's answer (`T` = [`Instance`]) or a describe's
/// (`T` = [`InstanceView`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList<T = InstanceView> {
    /// The instances, oldest first.
    pub instances: Vec<T>,
}

/// One instance type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceType {
    /// Name (`e1.small`).
    pub name: Cow<'static, str>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// `GET /v1/types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeList {
    /// Every type, smallest first.
    pub instance_types: Vec<InstanceType>,
}

/// `GET /v1/instances/{id}/console`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleOutput {
    /// The instance.
    pub instance_id: String,
    /// The last KiB asked for of its serial output.
    pub output: String,
}

/// One instance's usage over a window (`GET /v1/usage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    /// `i-...`
    pub instance_id: String,
    /// Its type.
    pub instance_type: String,
    /// CPU time of its vCPU threads.
    pub vcpu_seconds: f64,
    /// The type's memory x the time a VMM held it.
    pub memory_mib_seconds: f64,
    /// The VMM's resident memory x time.
    pub rss_mib_seconds: f64,
    /// Time in `pending`.
    pub pending_seconds: f64,
    /// Time in `running`.
    pub running_seconds: f64,
    /// Time in `stopping`.
    pub stopping_seconds: f64,
    /// Time in `stopped`.
    pub stopped_seconds: f64,
    /// Time in `shutting-down`.
    pub shutting_down_seconds: f64,
    /// Bytes its drives read.
    pub block_read_bytes: i64,
    /// Bytes its drives wrote.
    pub block_write_bytes: i64,
    /// Read requests.
    pub block_read_ops: i64,
    /// Write requests.
    pub block_write_ops: i64,
    /// Bytes the guest received.
    pub net_rx_bytes: i64,
    /// Bytes the guest sent.
    pub net_tx_bytes: i64,
    /// Frames the guest received.
    pub net_rx_packets: i64,
    /// Frames the guest sent.
    pub net_tx_packets: i64,
}

/// `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The window's start, RFC 3339 UTC.
    pub from: String,
    /// Its end (exclusive).
    pub to: String,
    /// emberd's sampling interval: the error bound at each window edge.
    pub sample_interval_seconds: u64,
    /// Instances with usage in the window.
    pub instances: Vec<UsageView>,
}

/// Every error answer: `{"code", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// EC2-style code (`InvalidParameterValue`, `InvalidInstanceID.NotFound`, ...).
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        Instance {
            id: "i-0123456789abcdef0".into(),
            image_id: "img-0123456789abcdef0".into(),
            instance_type: "e1.nano".into(),
            state: InstanceState::ShuttingDown,
            reason: "user request".into(),
            pid: Some(7),
            pid_start: Some(9),
            dir: "/d".into(),
            ip: "172.31.0.2".into(),
            tap: "em-0123456789ab".into(),
            mac: "06:00:ac:1f:00:02".into(),
            client_token: None,
            user_data: None,
            tags: BTreeMap::from([("Name".to_string(), "web".to_string())]),
            launched_at: 1,
            changed_at: 2,
            terminated_at: None,
        }
    }

    #[test]
    fn a_view_is_the_record_plus_its_extras_at_the_top_level() {
        let v = InstanceView {
            instance: instance(),
            vcpus: Some(1),
            memory_mib: Some(128),
            volumes: vec![],
            api_socket: "/run/x.sock".into(),
            hibernation_bytes: None,
        };
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["state"], "shutting-down");
        assert_eq!(j["tags"]["Name"], "web");
        assert_eq!(j["vcpus"], 1);
        assert_eq!(j["api_socket"], "/run/x.sock");
        assert!(j["terminated_at"].is_null());
        let back: InstanceView = serde_json::from_value(j).unwrap();
        assert_eq!(back, v);
        // A run's answer (the record alone) reads as a record.
        let rec: Instance = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
        assert_eq!(rec, instance());
    }

    #[test]
    fn requests_refuse_unknown_fields_and_default_the_rest() {
        let r: RunRequest =
            serde_json::from_str(r#"{"image_id": "img-1", "instance_type": "e1.nano"}"#).unwrap();
        assert_eq!(r.count, None);
        assert!(r.data_volumes_mib.is_empty());
        let e = serde_json::from_str::<RunRequest>(
            r#"{"image_id": "img-1", "instance_type": "e1.nano", "colour": 1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        assert!(serde_json::from_str::<StopRequest>(r#"{"forse": true}"#).is_err());
        let s: StopRequest = serde_json::from_str("{}").unwrap();
        assert!(!s.force);
        // What emberctl sends is what emberd reads.
        let img = RegisterImage {
            name: "n".into(),
            kernel: "k".into(),
            rootfs: "r".into(),
            ..Default::default()
        };
        let text = serde_json::to_string(&img).unwrap();
        assert!(!text.contains("initrd"), "{text}");
        assert_eq!(serde_json::from_str::<RegisterImage>(&text).unwrap(), img);
    }
}
