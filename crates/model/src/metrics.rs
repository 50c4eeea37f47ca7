//! The metrics line: one JSON object per line in the metrics file, written by ember and
//! read by emberd. Each counter is the change since the previous line (Firecracker's
//! convention); groups are Firecracker's: `api_server`, `block` (all drives) and
//! `block_<drive id>`, `net` and `net_<iface id>`, `vcpu`, `uart`, `entropy`, `vsock`.
//!
//! Readers are lenient where writers are strict: a missing counter reads as 0 and unknown
//! groups or counters are ignored, so an emberd reads the lines of an older or newer ember.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Declares a group of counters, each a `u64` with the wire name of its field, and the
/// arithmetic a writer needs.
macro_rules! counters {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: u64,)*
        }

        impl $name {
            /// Each counter's change from `before` (0 if it went down).
            pub fn since(&self, before: &Self) -> Self {
                $name { $($field: self.$field.saturating_sub(before.$field),)* }
            }

            /// Adds `other`'s counters to these.
            pub fn add(&mut self, other: &Self) {
                $(self.$field = self.$field.saturating_add(other.$field);)*
            }
        }
    };
}

counters!(
    /// A drive's requests and bytes.
    BlockMetrics {
        /// Bytes read from the host file.
        read_bytes,
        /// Bytes written to the host file.
        write_bytes,
        /// Read requests.
        read_count,
        /// Write requests.
        write_count,
        /// Flush requests.
        flush_count,
        /// Requests the host file failed.
        io_errors,
        /// Requests refused as malformed.
        invalid_reqs_count,
    }
);

counters!(
    /// A network interface's frames and bytes.
    NetMetrics {
        /// Bytes delivered to the guest.
        rx_bytes_count,
        /// Frames delivered to the guest.
        rx_packets_count,
        /// Frames from the tap the guest could not take.
        rx_dropped,
        /// Times a frame waited for guest buffers.
        no_rx_avail_buffer,
        /// Bytes sent by the guest.
        tx_bytes_count,
        /// Frames sent by the guest.
        tx_packets_count,
        /// Guest frames dropped (malformed or the tap refused them).
        tx_dropped,
    }
);

counters!(
    /// All vCPUs' exits and CPU time.
    VcpuMetrics {
        /// Port reads.
        exit_io_in,
        /// Port writes.
        exit_io_out,
        /// MMIO reads.
        exit_mmio_read,
        /// MMIO writes.
        exit_mmio_write,
        /// Exits for a signal (pause kicks).
        exit_intr,
        /// Failed `KVM_RUN`s.
        failures,
        /// CPU time the vCPU threads used, in microseconds.
        cpu_time_us,
    }
);

counters!(
    /// The serial console.
    UartMetrics {
        /// Bytes the guest wrote to its console.
        write_count,
    }
);

counters!(
    /// The entropy device (Firecracker's names).
    EntropyMetrics {
        /// Requests the guest made.
        entropy_event_count,
        /// Random bytes given to the guest.
        entropy_bytes,
        /// Requests whose buffers could not be written.
        entropy_event_fails,
        /// Times the host's random source failed.
        host_rng_fails,
    }
);

counters!(
    /// The vsock device (Firecracker's names, and two of ember's).
    VsockMetrics {
        /// Payload bytes delivered to the guest.
        rx_bytes_count,
        /// Payload bytes the guest sent.
        tx_bytes_count,
        /// Packets delivered to the guest.
        rx_packets_count,
        /// Packets the guest sent.
        tx_packets_count,
        /// Connections set up.
        conns_added,
        /// Connections reset for an error.
        conns_killed,
        /// Resets sent to the guest.
        rst_sent,
        /// Malformed packets from the guest.
        invalid_packets,
    }
);

/// One metrics line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsLine {
    /// When the line was written, Unix milliseconds.
    pub utc_timestamp_ms: u64,
    /// API requests by `<method>_<path>_count` (and `bad_requests_count`); absent without
    /// an API.
    pub api_server: Option<BTreeMap<String, u64>>,
    /// All drives together; absent without drives.
    pub block: Option<BlockMetrics>,
    /// Per drive id.
    pub block_devices: BTreeMap<String, BlockMetrics>,
    /// All interfaces together; absent without interfaces.
    pub net: Option<NetMetrics>,
    /// Per interface id.
    pub net_devices: BTreeMap<String, NetMetrics>,
    /// All vCPUs together; absent before start.
    pub vcpu: Option<VcpuMetrics>,
    /// The console; absent before start.
    pub uart: Option<UartMetrics>,
    /// The entropy device; absent without one.
    pub entropy: Option<EntropyMetrics>,
    /// The vsock device; absent without one.
    pub vsock: Option<VsockMetrics>,
}

impl MetricsLine {
    /// Every counter's change from `before`, stamped `utc_timestamp_ms`.
    pub fn since(&self, before: &MetricsLine, utc_timestamp_ms: u64) -> MetricsLine {
        fn each<T: Copy + Default>(
            now: &BTreeMap<String, T>,
            then: &BTreeMap<String, T>,
            sub: impl Fn(&T, &T) -> T,
        ) -> BTreeMap<String, T> {
            now.iter()
                .map(|(k, v)| (k.clone(), sub(v, &then.get(k).copied().unwrap_or_default())))
                .collect()
        }
        let opt = |now: Option<u64>, then: Option<u64>| {
            now.unwrap_or(0).saturating_sub(then.unwrap_or(0))
        };
        MetricsLine {
            utc_timestamp_ms,
            api_server: self.api_server.as_ref().map(|now| {
                let empty = BTreeMap::new();
                let then = before.api_server.as_ref().unwrap_or(&empty);
                now.iter()
                    .map(|(k, v)| (k.clone(), opt(Some(*v), then.get(k).copied())))
                    .collect()
            }),
            block: self
                .block
                .map(|b| b.since(&before.block.unwrap_or_default())),
            block_devices: each(
                &self.block_devices,
                &before.block_devices,
                BlockMetrics::since,
            ),
            net: self.net.map(|n| n.since(&before.net.unwrap_or_default())),
            net_devices: each(&self.net_devices, &before.net_devices, NetMetrics::since),
            vcpu: self.vcpu.map(|v| v.since(&before.vcpu.unwrap_or_default())),
            uart: self.uart.map(|u| u.since(&before.uart.unwrap_or_default())),
            entropy: self
                .entropy
                .map(|e| e.since(&before.entropy.unwrap_or_default())),
            vsock: self
                .vsock
                .map(|v| v.since(&before.vsock.unwrap_or_default())),
        }
    }
}

fn to_value<T: Serialize, E: serde::ser::Error>(v: &T) -> Result<Value, E> {
    serde_json::to_value(v).map_err(E::custom)
}

impl Serialize for MetricsLine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = Map::new();
        m.insert(
            "utc_timestamp_ms".into(),
            Value::from(self.utc_timestamp_ms),
        );
        if let Some(a) = &self.api_server {
            m.insert("api_server".into(), to_value(a)?);
        }
        if let Some(b) = &self.block {
            m.insert("block".into(), to_value(b)?);
        }
        for (id, b) in &self.block_devices {
            m.insert(format!("block_{id}"), to_value(b)?);
        }
        if let Some(n) = &self.net {
            m.insert("net".into(), to_value(n)?);
        }
        for (id, n) in &self.net_devices {
            m.insert(format!("net_{id}"), to_value(n)?);
        }
        if let Some(v) = &self.vcpu {
            m.insert("vcpu".into(), to_value(v)?);
        }
        if let Some(u) = &self.uart {
            m.insert("uart".into(), to_value(u)?);
        }
        if let Some(e) = &self.entropy {
            m.insert("entropy".into(), to_value(e)?);
        }
        if let Some(v) = &self.vsock {
            m.insert("vsock".into(), to_value(v)?);
        }
        Value::Object(m).serialize(s)
    }
}

impl<'de> Deserialize<'de> for MetricsLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn group<T: serde::de::DeserializeOwned, E: serde::de::Error>(v: Value) -> Result<T, E> {
            serde_json::from_value(v).map_err(E::custom)
        }
        let m = Map::<String, Value>::deserialize(d)?;
        let mut line = MetricsLine::default();
        for (k, v) in m {
            match k.as_str() {
                "utc_timestamp_ms" => line.utc_timestamp_ms = group::<_, D::Error>(v)?,
                "api_server" => line.api_server = Some(group::<_, D::Error>(v)?),
                "block" => line.block = Some(group::<_, D::Error>(v)?),
                "net" => line.net = Some(group::<_, D::Error>(v)?),
                "vcpu" => line.vcpu = Some(group::<_, D::Error>(v)?),
                "uart" => line.uart = Some(group::<_, D::Error>(v)?),
                "entropy" => line.entropy = Some(group::<_, D::Error>(v)?),
                "vsock" => line.vsock = Some(group::<_, D::Error>(v)?),
                _ => {
                    if let Some(id) = k.strip_prefix("block_") {
                        line.block_devices
                            .insert(id.to_string(), group::<_, D::Error>(v)?);
                    } else if let Some(id) = k.strip_prefix("net_") {
                        line.net_devices
                            .insert(id.to_string(), group::<_, D::Error>(v)?);
                    }
                }
            }
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_firecracker_group_names() {
        let mut line = MetricsLine {
            utc_timestamp_ms: 5,
            block: Some(BlockMetrics {
                write_bytes: 4096,
                ..Default::default()
            }),
            ..Default::default()
        };
        line.block_devices.insert(
            "rootfs".into(),
            BlockMetrics {
                write_bytes: 4096,
                ..Default::default()
            },
        );
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["block_rootfs"]["write_bytes"], 4096);
        assert!(v.get("net").is_none());
        let back: MetricsLine = serde_json::from_value(v).unwrap();
        assert_eq!(back, line);
    }

    #[test]
    fn readers_are_lenient_and_deltas_saturate() {
        let l: MetricsLine = serde_json::from_str(
            r#"{"utc_timestamp_ms": 1, "vcpu": {"cpu_time_us": 7, "new_counter": 1}, "latencies_us": {}}"#,
        )
        .unwrap();
        assert_eq!(l.vcpu.unwrap().cpu_time_us, 7);
        assert_eq!(l.vcpu.unwrap().exit_io_in, 0);
        let later = MetricsLine {
            vcpu: Some(VcpuMetrics {
                cpu_time_us: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(later.since(&l, 2).vcpu.unwrap().cpu_time_us, 3);
        assert_eq!(l.since(&later, 2).vcpu.unwrap().cpu_time_us, 0);
    }
}
