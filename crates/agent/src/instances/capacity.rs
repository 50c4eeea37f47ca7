//! Capacity: the host's memory budget for instances, and the subnet's addresses.

use super::{Agent, AgentError};
use crate::db;
use crate::types;
use std::net::Ipv4Addr;

/// Memory (MiB) the host can give instances: 90% of its RAM.
pub fn memory_budget_mib() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .unwrap_or(0);
    total_kib / 1024 * 9 / 10
}

/// The first address of `subnet`'s /24 from .2 to .254 that is not `taken`.
pub fn free_ip(subnet: Ipv4Addr, taken: &[String]) -> Option<Ipv4Addr> {
    let o = subnet.octets();
    (2..=254u8)
        .map(|h| Ipv4Addr::new(o[0], o[1], o[2], h))
        .find(|a| !taken.contains(&a.to_string()))
}

/// How many addresses of `subnet`'s /24 from .2 to .254 are not `taken`.
pub fn free_ips(subnet: Ipv4Addr, taken: &[String]) -> u32 {
    let o = subnet.octets();
    let free = (2..=254u8)
        .filter(|&h| !taken.contains(&Ipv4Addr::new(o[0], o[1], o[2], h).to_string()))
        .count();
    u32::try_from(free).unwrap_or(0)
}

/// An instance's MAC: 06:00 (locally administered) and its address.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("06:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

impl Agent {
    /// Memory (MiB) held by instances that count against the budget.
    pub(super) fn memory_in_use_mib(&self) -> Result<u64, AgentError> {
        let all = self.db(db::instances)?;
        Ok(all
            .iter()
            .filter(|i| i.state.holds_capacity())
            .filter_map(|i| types::find(&i.instance_type))
            .map(|t| t.memory_mib)
            .sum())
    }

    /// The bridge's address: the subnet's .1, the instances' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        let o = self.settings.subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// Creates the bridge if needed.
    pub fn setup_network(&self) -> Result<(), std::io::Error> {
        crate::host::ensure_bridge(&self.settings.bridge, &format!("{}/24", self.gateway()))
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("bridge {}: {e}", self.settings.bridge))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_gateway_and_taken_ones() {
        let net = Ipv4Addr::new(172, 31, 0, 0);
        assert_eq!(free_ip(net, &[]), Some(Ipv4Addr::new(172, 31, 0, 2)));
        let taken = vec!["172.31.0.2".to_string(), "172.31.0.3".to_string()];
        assert_eq!(free_ip(net, &taken), Some(Ipv4Addr::new(172, 31, 0, 4)));
        let all: Vec<String> = (2..=254).map(|h| format!("172.31.0.{h}")).collect();
        assert_eq!(free_ip(net, &all), None);
        assert_eq!(free_ips(net, &all), 0);
        assert_eq!(free_ips(net, &taken), 251);
        assert_eq!(mac_for(Ipv4Addr::new(172, 31, 0, 2)), "06:00:ac:1f:00:02");
    }
}
