//! `network-interfaces`: Firecracker's network resource, parsed strictly and validated
//! into [`NetSpec`]s, attached in order after the drives.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use thiserror::Error;

/// Errors in the `network-interfaces` list.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NetError {
    /// `iface_id` is empty, too long or has characters other than ASCII letters, digits
    /// and `_`.
    #[error(
        "network-interfaces: iface_id {0:?} must be 1 to 64 ASCII letters, digits or underscores"
    )]
    BadId(String),
    /// Two interfaces share an id or a tap.
    #[error("network-interfaces: {0} {1:?} is used twice")]
    Duplicate(&'static str, String),
    /// A tap name Linux cannot have.
    #[error("network-interfaces: {0:?}: host_dev_name {1:?} must be 1 to 15 bytes without '/', whitespace or NUL")]
    BadTapName(String, String),
    /// A MAC address that does not parse.
    #[error(
        "network-interfaces: {0:?}: guest_mac {1:?} is not a MAC address like 06:00:ac:10:00:02"
    )]
    BadMac(String, String),
    /// A multicast MAC address (a NIC cannot have one).
    #[error("network-interfaces: {0:?}: guest_mac {1:?} is a multicast address")]
    MulticastMac(String, String),
    /// An MTU outside what Ethernet and virtio-net allow.
    #[error("network-interfaces: {0:?}: mtu {1} must be between 68 and 65535")]
    BadMtu(String, u32),
    /// A field we recognise but do not implement.
    #[error("network-interfaces: {0:?}: {1} is not supported by ember")]
    Unsupported(String, &'static str),
}

/// `network-interfaces[]` entry, with Firecracker's fields.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Unique id.
    pub iface_id: String,
    /// The host tap device's name.
    pub host_dev_name: String,
    /// The guest's MAC address.
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// MTU announced to the guest.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Receive rate limiter (not implemented: refused when set).
    #[serde(default)]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// Transmit rate limiter (not implemented: refused when set).
    #[serde(default)]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limiters for a running interface
/// (ember has none: refused).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfacePatch {
    /// The interface's id (must be the path's).
    pub iface_id: String,
    /// Receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// Transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// A validated interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Interface id.
    pub id: String,
    /// Tap name.
    pub tap: String,
    /// Guest MAC.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u16>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_tap_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// Validates one interface.
pub fn validate_interface(i: &NetworkInterface) -> Result<NetSpec, NetError> {
    let id = i.iface_id.clone();
    if !valid_id(&id) {
        return Err(NetError::BadId(id));
    }
    if !valid_tap_name(&i.host_dev_name) {
        return Err(NetError::BadTapName(id, i.host_dev_name.clone()));
    }
    for (field, v) in [
        ("rx_rate_limiter", &i.rx_rate_limiter),
        ("tx_rate_limiter", &i.tx_rate_limiter),
    ] {
        if v.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(NetError::Unsupported(id, field));
        }
    }
    let mac = match &i.guest_mac {
        None => None,
        Some(s) => {
            let mac = parse_mac(s).ok_or_else(|| NetError::BadMac(id.clone(), s.clone()))?;
            if mac[0] & 1 != 0 {
                return Err(NetError::MulticastMac(id, s.clone()));
            }
            Some(mac)
        }
    };
    let mtu = match i.mtu {
        None => None,
        Some(m) if (68..=65535).contains(&m) => Some(m as u16),
        Some(m) => return Err(NetError::BadMtu(id, m)),
    };
    Ok(NetSpec {
        id,
        tap: i.host_dev_name.clone(),
        mac,
        mtu,
    })
}

/// Validates the whole list: ids and taps unique.
pub fn validate_interfaces(list: &[NetworkInterface]) -> Result<Vec<NetSpec>, NetError> {
    let mut ids = HashSet::new();
    let mut taps = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for i in list {
        let spec = validate_interface(i)?;
        if !ids.insert(spec.id.clone()) {
            return Err(NetError::Duplicate("iface_id", spec.id));
        }
        if !taps.insert(spec.tap.clone()) {
            return Err(NetError::Duplicate("host_dev_name", spec.tap));
        }
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(json: &str) -> NetworkInterface {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn firecracker_fields() {
        let s = validate_interface(&iface(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02", "mtu": 1500}"#,
        ))
        .unwrap();
        assert_eq!(s.mac, Some([6, 0, 0xac, 0x10, 0, 2]));
        assert_eq!((s.tap.as_str(), s.mtu), ("tap0", Some(1500)));
        let s = validate_interface(&iface(r#"{"iface_id": "e", "host_dev_name": "t"}"#)).unwrap();
        assert_eq!((s.mac, s.mtu), (None, None));
    }

    #[test]
    fn malformed_values_are_refused() {
        for mac in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "0g:00:00:00:00:00",
            "6:0:0:0:0:0",
            "",
            "06-00-ac-10-00-02",
        ] {
            let i = iface(&format!(
                r#"{{"iface_id": "e", "host_dev_name": "t", "guest_mac": "{mac}"}}"#
            ));
            assert!(
                matches!(validate_interface(&i), Err(NetError::BadMac(..))),
                "{mac}"
            );
        }
        let i =
            iface(r#"{"iface_id": "e", "host_dev_name": "t", "guest_mac": "01:00:5e:00:00:01"}"#);
        assert!(matches!(
            validate_interface(&i),
            Err(NetError::MulticastMac(..))
        ));
        for tap in ["", "a/b", "sixteen-chars-xx", "a b"] {
            let i = iface(&format!(r#"{{"iface_id": "e", "host_dev_name": "{tap}"}}"#));
            assert!(
                matches!(validate_interface(&i), Err(NetError::BadTapName(..))),
                "{tap}"
            );
        }
        for mtu in [0, 67, 65536] {
            let i = iface(&format!(
                r#"{{"iface_id": "e", "host_dev_name": "t", "mtu": {mtu}}}"#
            ));
            assert!(
                matches!(validate_interface(&i), Err(NetError::BadMtu(..))),
                "{mtu}"
            );
        }
        let i = iface(
            r#"{"iface_id": "e", "host_dev_name": "t", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#,
        );
        assert!(matches!(
            validate_interface(&i),
            Err(NetError::Unsupported(..))
        ));
        let two = [
            iface(r#"{"iface_id": "a", "host_dev_name": "t"}"#),
            iface(r#"{"iface_id": "b", "host_dev_name": "t"}"#),
        ];
        assert!(matches!(
            validate_interfaces(&two),
            Err(NetError::Duplicate("host_dev_name", _))
        ));
    }
}
