//! EC2's answer shapes (API 2016-11-15), as typed structs that write themselves. Element
//! names are the `locationName`s of botocore's service model for EC2 (`instanceState`,
//! `tagSet`, `vCpuInfo`, ...); lists are `<item>` elements. The fields are the ones
//! moto's EC2 answers too (the end-to-end tests compare the key sets), so a client that
//! works against moto finds what it reads.

use super::xml::{ToXml, Xml};
use agent_types::InstanceState;

/// The owner id every emberd resource has (EC2's is the account's 12 digits; emberd has
/// no accounts).
pub const OWNER_ID: &str = "000000000000";

/// EC2's name of this host's architecture (`x86_64`, `arm64`).
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

/// Unix seconds as EC2 writes times (`2026-11-27T00:00:00.000Z`).
pub fn time(secs: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// `{code, name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateXml(pub InstanceState);

impl ToXml for StateXml {
    fn to_xml(&self, x: &mut Xml) {
        x.num("code", self.0.code());
        x.leaf("name", self.0.as_str());
    }
}

/// A tag: `{key, value}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagXml {
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl ToXml for TagXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("key", &self.key);
        x.leaf("value", &self.value);
    }
}

/// A volume of an instance, as a block device mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceXml {
    /// `/dev/vda`, `/dev/vdb`, ... in the order ember attaches them.
    pub device: String,
    /// `vol-...`.
    pub volume_id: String,
    /// When it was attached (the instance's launch).
    pub attached: String,
}

impl ToXml for DeviceXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("deviceName", &self.device);
        x.open("ebs");
        x.leaf("volumeId", &self.volume_id);
        x.leaf("status", "attached");
        x.leaf("attachTime", &self.attached);
        x.bool("deleteOnTermination", true);
        x.close("ebs");
    }
}

/// An instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceXml {
    /// `i-...`.
    pub id: String,
    /// `img-...`.
    pub image_id: String,
    /// Its state.
    pub state: InstanceState,
    /// emberd's reason for the state (`user request`, ...).
    pub reason: String,
    /// Its index in its reservation.
    pub launch_index: u32,
    /// Its type.
    pub instance_type: String,
    /// Launch time.
    pub launch_time: String,
    /// The zone.
    pub zone: String,
    /// Private address.
    pub ip: String,
    /// Its MAC.
    pub mac: String,
    /// The run's client token.
    pub client_token: Option<String>,
    /// Its tags.
    pub tags: Vec<TagXml>,
    /// Its volumes, root first.
    pub devices: Vec<DeviceXml>,
}

impl InstanceXml {
    /// The private DNS name, as the guest's metadata has it.
    fn dns_name(&self) -> String {
        format!("ip-{}.ember.internal", self.ip.replace('.', "-"))
    }

    /// EC2's `stateReason` code for an instance that is not running.
    fn state_reason(&self) -> Option<&'static str> {
        use InstanceState as S;
        match self.state {
            S::Pending | S::Running => None,
            _ if self.reason.starts_with("user request") => Some("Client.UserInitiatedShutdown"),
            _ if self.reason == "hibernated" => Some("Client.UserInitiatedHibernate"),
            _ if self.reason == "guest shut down" => Some("Client.InstanceInitiatedShutdown"),
            _ => Some("Server.InternalError"),
        }
    }
}

impl ToXml for InstanceXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("instanceId", &self.id);
        x.leaf("imageId", &self.image_id);
        x.element("instanceState", &StateXml(self.state));
        let dns = self.dns_name();
        x.leaf("privateDnsName", &dns);
        x.leaf("dnsName", "");
        x.leaf("reason", &self.reason);
        x.num("amiLaunchIndex", self.launch_index);
        x.open("productCodes");
        x.close("productCodes");
        x.leaf("instanceType", &self.instance_type);
        x.leaf("launchTime", &self.launch_time);
        x.open("placement");
        x.leaf("availabilityZone", &self.zone);
        x.leaf("groupName", "");
        x.leaf("tenancy", "default");
        x.close("placement");
        x.open("monitoring");
        x.leaf("state", "disabled");
        x.close("monitoring");
        x.leaf("privateIpAddress", &self.ip);
        x.bool("sourceDestCheck", true);
        x.open("groupSet");
        x.close("groupSet");
        if let Some(code) = self.state_reason() {
            x.open("stateReason");
            x.leaf("code", code);
            x.leaf("message", &self.reason);
            x.close("stateReason");
        }
        x.leaf("architecture", architecture());
        x.leaf("rootDeviceType", "ebs");
        x.leaf("rootDeviceName", "/dev/vda");
        x.list("blockDeviceMapping", &self.devices);
        x.leaf("virtualizationType", "hvm");
        x.leaf_opt("clientToken", self.client_token.as_deref());
        x.list("tagSet", &self.tags);
        x.open("networkInterfaceSet");
        x.open("item");
        x.leaf("macAddress", &self.mac);
        x.leaf("privateIpAddress", &self.ip);
        x.leaf("privateDnsName", &dns);
        x.leaf("status", "in-use");
        x.bool("sourceDestCheck", true);
        x.close("item");
        x.close("networkInterfaceSet");
        // MMDS V2 on eth0: session tokens are required, as `httpTokens=required` says.
        x.open("metadataOptions");
        x.leaf("state", "applied");
        x.leaf("httpTokens", "required");
        x.num("httpPutResponseHopLimit", 1);
        x.leaf("httpEndpoint", "enabled");
        x.close("metadataOptions");
    }
}

/// A reservation: the instances of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationXml {
    /// `r-...`.
    pub id: String,
    /// Its instances.
    pub instances: Vec<InstanceXml>,
}

impl ToXml for ReservationXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("reservationId", &self.id);
        x.leaf("ownerId", OWNER_ID);
        x.open("groupSet");
        x.close("groupSet");
        x.list("instancesSet", &self.instances);
    }
}

/// A start, stop or terminate's answer for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChangeXml {
    /// `i-...`.
    pub id: String,
    /// The state after the call.
    pub current: InstanceState,
    /// The state before it.
    pub previous: InstanceState,
}

impl ToXml for StateChangeXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("instanceId", &self.id);
        x.element("currentState", &StateXml(self.current));
        x.element("previousState", &StateXml(self.previous));
    }
}

/// DescribeInstanceStatus's item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusXml {
    /// `i-...`.
    pub id: String,
    /// The zone.
    pub zone: String,
    /// Its state.
    pub state: InstanceState,
}

impl StatusXml {
    /// EC2's summary status: `ok` when running, `initializing` while pending, else
    /// `not-applicable`.
    pub fn summary(&self) -> &'static str {
        match self.state {
            InstanceState::Running => "ok",
            InstanceState::Pending => "initializing",
            _ => "not-applicable",
        }
    }
}

impl ToXml for StatusXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("instanceId", &self.id);
        x.leaf("availabilityZone", &self.zone);
        x.element("instanceState", &StateXml(self.state));
        let summary = self.summary();
        let detail = match summary {
            "ok" => "passed",
            "initializing" => "initializing",
            _ => "insufficient-data",
        };
        for name in ["systemStatus", "instanceStatus"] {
            x.open(name);
            x.leaf("status", summary);
            x.open("details");
            x.open("item");
            x.leaf("name", "reachability");
            x.leaf("status", detail);
            x.close("item");
            x.close("details");
            x.close(name);
        }
    }
}

/// An image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageXml {
    /// `img-...`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its default kernel command line (as the description).
    pub boot_args: String,
    /// Registration time.
    pub created: String,
}

impl ToXml for ImageXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("imageId", &self.id);
        x.leaf("imageLocation", &format!("emberd/{}", self.name));
        x.leaf("imageState", "available");
        x.leaf("imageOwnerId", OWNER_ID);
        x.leaf("creationDate", &self.created);
        x.bool("isPublic", false);
        x.leaf("architecture", architecture());
        x.leaf("imageType", "machine");
        x.leaf("name", &self.name);
        x.leaf("description", &self.boot_args);
        x.leaf("rootDeviceType", "ebs");
        x.leaf("rootDeviceName", "/dev/vda");
        x.leaf("virtualizationType", "hvm");
        x.open("blockDeviceMapping");
        x.close("blockDeviceMapping");
        x.open("tagSet");
        x.close("tagSet");
    }
}

/// An instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeXml {
    /// `e1.small`.
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
}

impl ToXml for TypeXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("instanceType", &self.name);
        x.bool("currentGeneration", true);
        x.bool("freeTierEligible", false);
        x.strings("supportedUsageClasses", &["on-demand"]);
        x.strings("supportedRootDeviceTypes", &["ebs"]);
        x.strings("supportedVirtualizationTypes", &["hvm"]);
        x.bool("bareMetal", false);
        x.open("processorInfo");
        x.strings("supportedArchitectures", &[architecture()]);
        x.close("processorInfo");
        x.open("vCpuInfo");
        x.num("defaultVCpus", self.vcpus);
        x.num("defaultCores", self.vcpus);
        x.num("defaultThreadsPerCore", 1);
        x.close("vCpuInfo");
        x.open("memoryInfo");
        x.num("sizeInMiB", self.memory_mib);
        x.close("memoryInfo");
        x.bool("instanceStorageSupported", false);
        x.bool("hibernationSupported", true);
        x.bool("burstablePerformanceSupported", false);
        x.bool("dedicatedHostsSupported", false);
        x.bool("autoRecoverySupported", false);
    }
}

/// DescribeTags's item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDescriptionXml {
    /// The instance.
    pub resource_id: String,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl ToXml for TagDescriptionXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("resourceId", &self.resource_id);
        x.leaf("resourceType", "instance");
        x.leaf("key", &self.key);
        x.leaf("value", &self.value);
    }
}

/// A region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionXml {
    /// Its name.
    pub name: String,
    /// The listener's URL.
    pub endpoint: String,
}

impl ToXml for RegionXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("regionName", &self.name);
        x.leaf("regionEndpoint", &self.endpoint);
        x.leaf("optInStatus", "opt-in-not-required");
    }
}

/// An availability zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneXml {
    /// Its name (`ember-1a`).
    pub name: String,
    /// Its id.
    pub id: String,
    /// Its region.
    pub region: String,
}

impl ToXml for ZoneXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("zoneName", &self.name);
        x.leaf("zoneId", &self.id);
        x.leaf("zoneState", "available");
        x.leaf("regionName", &self.region);
        x.leaf("zoneType", "availability-zone");
        x.open("messageSet");
        x.close("messageSet");
    }
}

/// A describe's answer: `<{name}><item>...</item></{name}>` and `nextToken` when there
/// are more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemsXml<T> {
    /// The list's element name (`reservationSet`).
    pub name: &'static str,
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts.
    pub next_token: Option<String>,
}

impl<T: ToXml> ToXml for ItemsXml<T> {
    fn to_xml(&self, x: &mut Xml) {
        x.list(self.name, &self.items);
        x.leaf_opt("nextToken", self.next_token.as_deref());
    }
}

/// `<return>true</return>`: the answer of actions without an output shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnXml;

impl ToXml for ReturnXml {
    fn to_xml(&self, x: &mut Xml) {
        x.bool("return", true);
    }
}

/// GetConsoleOutput's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleXml {
    /// The instance.
    pub id: String,
    /// When the console was last written (or now, if never).
    pub timestamp: String,
    /// Base64 of its last 64 KiB.
    pub output: String,
}

impl ToXml for ConsoleXml {
    fn to_xml(&self, x: &mut Xml) {
        x.leaf("instanceId", &self.id);
        x.leaf("timestamp", &self.timestamp);
        x.leaf("output", &self.output);
    }
}
