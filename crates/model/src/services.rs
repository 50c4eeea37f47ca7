//! Guest services, Firecracker's resources for them: `vsock` (a socket to the host that
//! needs no network) and `entropy` (a random-number source), and what a valid one means.

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
    fn entropy_takes_an_empty_body_and_refuses_a_rate_limiter() {
        let e: Entropy = from_json(b"{}").unwrap();
        assert!(e.validate().is_ok());
        let e: Entropy = from_json(br#"{"rate_limiter": null}"#).unwrap();
        assert!(e.validate().is_ok());
        let e: Entropy = from_json(br#"{"rate_limiter": {"bandwidth": {}}}"#).unwrap();
        assert_eq!(e.validate(), Err(ServiceError::RateLimiter("entropy")));
    }
}
