//! Guest services, Firecracker's resources for them: `vsock` (a socket to the host that
//! needs no network), `entropy` (a random-number source) and `balloon` (memory the host
//! takes back), and what a valid one means.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use thiserror::Error;

/// CIDs 0 to 2 are reserved (hypervisor, local, host): a guest's is at least 3.
pub const MIN_GUEST_CID: u32 = 3;
/// The longest path a Unix socket can be bound to (`sun_path` less its terminating NUL).
pub const MAX_UDS_PATH: usize = 107;
/// The suffix `_<port>` a guest-initiated connection appends to `uds_path`: the socket
/// path stays bindable for every port (`_4294967295`).
const PORT_SUFFIX: usize = 11;
/// The longest `uds_path` accepted.
const MAX_PATH: usize = MAX_UDS_PATH - PORT_SUFFIX;

/// `PUT /vsock`, and the file's `vsock`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated in Firecracker's API and ignored there too; accepted for old clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id (at least 3).
    pub guest_cid: u32,
    /// The host's Unix socket: clients connect here and say `CONNECT <port>`; the guest's
    /// connections to the host's port P go to `<uds_path>_P`.
    pub uds_path: String,
}

/// `PUT /entropy`, and the file's `entropy`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Firecracker's token buckets; not implemented by ember (refused unless null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

/// `PUT /balloon`, `GET /balloon`, and the file's `balloon`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// The memory the host asks the guest to give up, MiB.
    pub amount_mib: u32,
    /// Whether the guest may take pages back from the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics reports from the guest; 0 (the default): no statistics.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// The new target, MiB.
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// The new interval, seconds (statistics cannot be turned on or off after start).
    pub stats_polling_interval_s: u16,
}

/// `GET /balloon/statistics`: the target and what the guest reported (Firecracker's
/// names; a statistic the guest never reported is absent).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct BalloonStats {
    /// Pages asked for.
    pub target_pages: u32,
    /// Pages in the balloon, as the guest says.
    pub actual_pages: u32,
    /// `target_pages` in MiB.
    pub target_mib: u32,
    /// `actual_pages` in MiB.
    pub actual_mib: u32,
    /// Bytes swapped in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Bytes swapped out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Major page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Minor page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Free memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Total memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Available memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Page cache, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Huge page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Huge page allocation failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
}

/// Balloon pages (4 KiB, whatever the guest's page size) per MiB.
pub const BALLOON_PAGES_PER_MIB: u32 = 256;

/// A validated balloon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonSpec {
    /// Pages asked for from the start.
    pub target_pages: u32,
    /// Deflate on OOM.
    pub deflate_on_oom: bool,
    /// Statistics interval, seconds (0: none).
    pub stats_interval_s: u16,
}

impl Balloon {
    /// Checks the target against the guest's memory.
    pub fn validate(&self, mem_size_mib: u64) -> Result<BalloonSpec, ServiceError> {
        check_balloon_target(self.amount_mib, mem_size_mib)?;
        Ok(BalloonSpec {
            target_pages: self.amount_mib.saturating_mul(BALLOON_PAGES_PER_MIB),
            deflate_on_oom: self.deflate_on_oom,
            stats_interval_s: self.stats_polling_interval_s,
        })
    }
}

/// A balloon target may be at most the guest's memory.
pub fn check_balloon_target(amount_mib: u32, mem_size_mib: u64) -> Result<(), ServiceError> {
    if u64::from(amount_mib) > mem_size_mib {
        return Err(ServiceError::BalloonTooLarge {
            amount_mib,
            mem_size_mib,
        });
    }
    Ok(())
}

/// MMDS versions: V1 answers any GET, V2 needs a session token (`PUT /latest/api/token`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum MmdsVersion {
    /// Requests need no token.
    #[default]
    V1,
    /// Requests need a session token.
    V2,
}

/// The address MMDS answers on when `ipv4_address` is not given.
pub const MMDS_DEFAULT_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);

/// `PUT /mmds/config`, and the file's `mmds-config`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// V1 (the default) or V2.
    #[serde(default)]
    pub version: MmdsVersion,
    /// The interfaces whose guest traffic to the address reaches MMDS.
    pub network_interfaces: Vec<String>,
    /// A link-local address (169.254.1.0 to 169.254.254.255); 169.254.169.254 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Firecracker's EC2 IMDS compatibility switch; refused when true (not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_compat: Option<bool>,
}

/// A validated MMDS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmdsSpec {
    /// The version.
    pub version: MmdsVersion,
    /// The interface ids it serves.
    pub network_interfaces: Vec<String>,
    /// Its address.
    pub ipv4_address: std::net::Ipv4Addr,
}

impl MmdsConfig {
    /// Checks the address and that every interface named is among `ifaces`.
    pub fn validate(&self, ifaces: &[&str]) -> Result<MmdsSpec, ServiceError> {
        if self.imds_compat == Some(true) {
            return Err(ServiceError::Unsupported("mmds-config: imds_compat"));
        }
        if self.network_interfaces.is_empty() {
            return Err(ServiceError::MmdsNoInterface);
        }
        for id in &self.network_interfaces {
            if !ifaces.contains(&id.as_str()) {
                return Err(ServiceError::MmdsUnknownInterface(id.clone()));
            }
        }
        let ipv4_address = match &self.ipv4_address {
            None => MMDS_DEFAULT_ADDRESS,
            Some(text) => {
                let a: std::net::Ipv4Addr = text
                    .parse()
                    .map_err(|_| ServiceError::MmdsAddress(text.clone()))?;
                let [o1, o2, o3, _] = a.octets();
                if o1 != 169 || o2 != 254 || o3 == 0 || o3 == 255 {
                    return Err(ServiceError::MmdsAddress(text.clone()));
                }
                a
            }
        };
        Ok(MmdsSpec {
            version: self.version,
            network_interfaces: self.network_interfaces.clone(),
            ipv4_address,
        })
    }
}

/// A validated vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's CID.
    pub guest_cid: u64,
    /// The host-side listener.
    pub uds_path: PathBuf,
}

/// Why a service's configuration is refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ServiceError {
    /// A reserved CID.
    #[error("vsock: guest_cid must be at least {MIN_GUEST_CID} (0 to 2 are reserved), not {0}")]
    ReservedCid(u32),
    /// An empty socket path.
    #[error("vsock: uds_path must not be empty")]
    EmptyPath,
    /// A socket path the kernel cannot bind (with room for `_<port>`).
    #[error(
        "vsock: uds_path is {0} bytes; with `_<port>` appended it must fit a Unix socket \
         path ({MAX_UDS_PATH} bytes), so at most {MAX_PATH} bytes"
    )]
    PathTooLong(usize),
    /// A socket path with a NUL byte.
    #[error("vsock: uds_path must not contain a NUL byte")]
    NulInPath,
    /// A field ember does not implement.
    #[error("{0}: rate_limiter is not supported by ember")]
    RateLimiter(&'static str),
    /// Something Firecracker has that ember does not implement.
    #[error("{0} is not supported by ember")]
    Unsupported(&'static str),
    /// MMDS on no interface.
    #[error("mmds-config: network_interfaces must name at least one interface")]
    MmdsNoInterface,
    /// MMDS on an interface that is not configured.
    #[error(
        "mmds-config: network interface {0:?} is not configured (PUT /network-interfaces first)"
    )]
    MmdsUnknownInterface(String),
    /// An address outside the link-local range MMDS may use.
    #[error("mmds-config: ipv4_address {0:?} is not a link-local address in 169.254.1.0 to 169.254.254.255")]
    MmdsAddress(String),
    /// A balloon bigger than the guest.
    #[error(
        "balloon: amount_mib {amount_mib} is more than the guest's memory ({mem_size_mib} MiB)"
    )]
    BalloonTooLarge {
        /// Asked.
        amount_mib: u32,
        /// The guest's memory.
        mem_size_mib: u64,
    },
}

impl Vsock {
    /// Checks the CID and the socket path.
    pub fn validate(&self) -> Result<VsockSpec, ServiceError> {
        if self.guest_cid < MIN_GUEST_CID {
            return Err(ServiceError::ReservedCid(self.guest_cid));
        }
        if self.uds_path.is_empty() {
            return Err(ServiceError::EmptyPath);
        }
        if self.uds_path.contains('\0') {
            return Err(ServiceError::NulInPath);
        }
        if self.uds_path.len() > MAX_PATH {
            return Err(ServiceError::PathTooLong(self.uds_path.len()));
        }
        Ok(VsockSpec {
            guest_cid: u64::from(self.guest_cid),
            uds_path: PathBuf::from(&self.uds_path),
        })
    }
}

impl Entropy {
    /// Refuses what ember does not implement.
    pub fn validate(&self) -> Result<(), ServiceError> {
        match &self.rate_limiter {
            None | Some(serde_json::Value::Null) => Ok(()),
            Some(_) => Err(ServiceError::RateLimiter("entropy")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::from_json;

    #[test]
    fn vsock_fields_and_rules() {
        let v: Vsock = from_json(br#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#).unwrap();
        let spec = v.validate().unwrap();
        assert_eq!(spec.guest_cid, 3);
        assert_eq!(spec.uds_path, PathBuf::from("/tmp/v.sock"));
        let old: Vsock =
            from_json(br#"{"vsock_id": "v", "guest_cid": 9, "uds_path": "/v"}"#).unwrap();
        assert!(old.validate().is_ok());

        let cid2 = Vsock {
            guest_cid: 2,
            ..v.clone()
        };
        let e = cid2.validate().unwrap_err().to_string();
        assert!(e.contains("guest_cid") && e.contains("not 2"), "{e}");
        let long = Vsock {
            uds_path: "/".repeat(97),
            ..v.clone()
        };
        let e = long.validate().unwrap_err().to_string();
        assert!(e.contains("97 bytes") && e.contains("at most 96"), "{e}");
        let empty = Vsock {
            uds_path: String::new(),
            ..v
        };
        assert_eq!(empty.validate(), Err(ServiceError::EmptyPath));

        let e = from_json::<Vsock>(br#"{"guest_cid": -1, "uds_path": "/v"}"#).unwrap_err();
        assert_eq!(e.path, "guest_cid");
        let e = from_json::<Vsock>(br#"{"guest_cid": 3}"#).unwrap_err();
        assert!(e.message.contains("uds_path"), "{}", e.message);
        let e = from_json::<Vsock>(br#"{"guest_cid": 3, "uds_path": "/v", "x": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }

    #[test]
    fn balloon_fields_and_target_rule() {
        let b: Balloon = from_json(br#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
        assert_eq!(b.stats_polling_interval_s, 0);
        let spec = b.validate(128).unwrap();
        assert_eq!(spec.target_pages, 64 * 256);
        let e = b.validate(32).unwrap_err().to_string();
        assert!(e.contains("amount_mib 64") && e.contains("32 MiB"), "{e}");
        let e = from_json::<Balloon>(br#"{"amount_mib": 1}"#).unwrap_err();
        assert!(e.message.contains("deflate_on_oom"), "{}", e.message);
        let e = from_json::<BalloonUpdate>(br#"{"amount_mib": -1}"#).unwrap_err();
        assert_eq!(e.path, "amount_mib");
        let stats = BalloonStats {
            target_pages: 256,
            target_mib: 1,
            free_memory: Some(5),
            ..Default::default()
        };
        let v = serde_json::to_value(&stats).unwrap();
        assert_eq!(v["free_memory"], 5);
        assert!(
            v.get("swap_in").is_none(),
            "unreported statistics are absent"
        );
    }

    #[test]
    fn mmds_config_rules() {
        let c: MmdsConfig = from_json(br#"{"network_interfaces": ["eth0"]}"#).unwrap();
        let spec = c.validate(&["eth0"]).unwrap();
        assert_eq!(spec.version, MmdsVersion::V1);
        assert_eq!(spec.ipv4_address, MMDS_DEFAULT_ADDRESS);
        let e = c.validate(&["eth1"]).unwrap_err().to_string();
        assert!(e.contains("\"eth0\" is not configured"), "{e}");
        let v2: MmdsConfig = from_json(
            br#"{"version": "V2", "network_interfaces": ["e"], "ipv4_address": "169.254.1.2"}"#,
        )
        .unwrap();
        assert_eq!(v2.validate(&["e"]).unwrap().version, MmdsVersion::V2);
        for bad in ["10.0.0.1", "169.254.0.1", "169.254.255.1", "nope"] {
            let c = MmdsConfig {
                ipv4_address: Some(bad.into()),
                ..v2.clone()
            };
            let e = c.validate(&["e"]).unwrap_err().to_string();
            assert!(e.contains("link-local"), "{bad}: {e}");
        }
        let e =
            from_json::<MmdsConfig>(br#"{"version": "V3", "network_interfaces": []}"#).unwrap_err();
        assert_eq!(e.path, "version");
        let none: MmdsConfig = from_json(br#"{"network_interfaces": []}"#).unwrap();
        assert_eq!(none.validate(&[]), Err(ServiceError::MmdsNoInterface));
    }

    #[test]
    fn entropy_takes_an_empty_body_and_refuses_a_rate_limiter() {
        let e: Entropy = from_json(b"{}").unwrap();
        assert!(e.validate().is_ok());
        let e: Entropy = from_json(br#"{"rate_limiter": null}"#).unwrap();
        assert!(e.validate().is_ok());
        let e: Entropy = from_json(br#"{"rate_limiter": {"bandwidth": {}}}"#).unwrap();
        assert_eq!(e.validate(), Err(ServiceError::RateLimiter("entropy")));
    }
}
