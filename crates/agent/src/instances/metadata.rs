//! EC2's instance metadata for an instance, as its VMM's MMDS (V2, on `eth0`) serves it:
//! `latest/meta-data/...` and `latest/user-data`, the keys cloud-init style guests read.

use crate::db::{Image, Instance};
use serde::Serialize;

/// The document put into MMDS.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ec2Metadata {
    /// EC2's only version path that guests use unqualified.
    pub latest: Latest,
}

/// `latest/`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Latest {
    /// `latest/meta-data/`.
    #[serde(rename = "meta-data")]
    pub meta_data: MetaData,
    /// `latest/user-data`: the run's user data as given (EC2 serves it raw); absent
    /// without user data (EC2 answers 404 then).
    #[serde(rename = "user-data", skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

/// `latest/meta-data/`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MetaData {
    /// `i-...`.
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    /// The type's name.
    #[serde(rename = "instance-type")]
    pub instance_type: String,
    /// The image id.
    #[serde(rename = "ami-id")]
    pub ami_id: String,
    /// The private address.
    #[serde(rename = "local-ipv4")]
    pub local_ipv4: String,
    /// The interface's MAC.
    pub mac: String,
    /// `ip-a-b-c-d.ember.internal`.
    pub hostname: String,
    /// The same name.
    #[serde(rename = "local-hostname")]
    pub local_hostname: String,
    /// `placement/`.
    pub placement: Placement,
}

/// `latest/meta-data/placement/`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Placement {
    /// emberd's zone (`--availability-zone`).
    #[serde(rename = "availability-zone")]
    pub availability_zone: String,
}

impl Ec2Metadata {
    /// The metadata of `inst` (made from `image`) in `zone`.
    pub fn of(inst: &Instance, image: &Image, zone: &str) -> Self {
        let hostname = format!("ip-{}.ember.internal", inst.ip.replace('.', "-"));
        Ec2Metadata {
            latest: Latest {
                meta_data: MetaData {
                    instance_id: inst.id.clone(),
                    instance_type: inst.instance_type.clone(),
                    ami_id: image.id.clone(),
                    local_ipv4: inst.ip.clone(),
                    mac: inst.mac.clone(),
                    local_hostname: hostname.clone(),
                    hostname,
                    placement: Placement {
                        availability_zone: zone.to_string(),
                    },
                },
                user_data: inst.user_data.clone(),
            },
        }
    }
}
