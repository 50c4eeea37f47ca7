//! Metrics in Firecracker's shape: with a metrics path, one JSON object per line, written
//! on `FlushMetrics` and every [`PERIOD`], each counter the change since the previous line
//! (Firecracker's convention), grouped as Firecracker groups them: `api_server`,
//! `block` (all drives) and `block_<id>`, `net` and `net_<id>`, `vcpu`, `uart`.
//! The counters are exact: every byte and request the devices count is in some line.

use crate::vstate::vcpu::VcpuControl;
use api::server::ApiCounters;
use devices::virtio::block::BlockCounters;
use devices::virtio::net::NetCounters;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// How often lines are written without a `FlushMetrics`.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Errors of the metrics file.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// The metrics file cannot be opened.
    #[error("cannot open metrics file {0}: {1}")]
    Open(String, std::io::Error),
    /// A line could not be written.
    #[error("cannot write metrics: {0}")]
    Write(std::io::Error),
    /// No metrics path is configured.
    #[error("no metrics path configured: PUT /metrics first")]
    NotConfigured,
}

/// Where the counters live.
#[derive(Default, Clone)]
pub struct Sources {
    /// API requests by method and path.
    pub api: Option<Arc<ApiCounters>>,
    /// Per drive id.
    pub block: Vec<(String, Arc<BlockCounters>)>,
    /// Per interface id.
    pub net: Vec<(String, Arc<NetCounters>)>,
    /// Per vCPU.
    pub vcpus: Vec<Arc<VcpuControl>>,
    /// Bytes the guest wrote to its console.
    pub uart_out: Option<Arc<AtomicU64>>,
}

/// Writes metrics lines to a file (or FIFO), keeping the last values to report changes.
pub struct MetricsWriter {
    file: File,
    last: BTreeMap<String, u64>,
}

impl MetricsWriter {
    /// Opens `path` for appending (a FIFO is opened for writing, as Firecracker does).
    pub fn open(path: &Path) -> Result<Self, MetricsError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| MetricsError::Open(path.display().to_string(), e))?;
        Ok(MetricsWriter {
            file,
            last: BTreeMap::new(),
        })
    }

    /// Writes one line with the change of every counter since the last line.
    pub fn flush(&mut self, src: &Sources) -> Result<(), MetricsError> {
        let now = read_all(src);
        let mut groups: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (key, value) in &now {
            let (group, name) = key.split_once('.').unwrap_or(("other", key));
            let before = self.last.get(key).copied().unwrap_or(0);
            groups
                .entry(group.to_string())
                .or_default()
                .insert(name.to_string(), json!(value.saturating_sub(before)));
        }
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut line = Map::new();
        line.insert("utc_timestamp_ms".into(), json!(ms));
        for (g, m) in groups {
            line.insert(g, Value::Object(m));
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(MetricsError::Write)?;
        self.last = now;
        Ok(())
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Every counter as `group.name` -> total so far.
fn read_all(src: &Sources) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut add = |group: &str, name: &str, v: u64| {
        *out.entry(format!("{group}.{name}")).or_insert(0) += v;
    };
    if let Some(api) = &src.api {
        for (k, v) in api.snapshot() {
            add("api_server", &format!("{k}_count"), v);
        }
    }
    for (id, c) in &src.block {
        let fields = [
            ("read_bytes", get(&c.read_bytes)),
            ("write_bytes", get(&c.write_bytes)),
            ("read_count", get(&c.read_count)),
            ("write_count", get(&c.write_count)),
            ("flush_count", get(&c.flush_count)),
            ("io_errors", get(&c.io_errors)),
            ("invalid_reqs_count", get(&c.invalid_requests)),
        ];
        for (name, v) in fields {
            add("block", name, v);
            add(&format!("block_{id}"), name, v);
        }
    }
    for (id, c) in &src.net {
        let fields = [
            ("rx_bytes_count", get(&c.rx_bytes)),
            ("rx_packets_count", get(&c.rx_packets)),
            ("rx_dropped", get(&c.rx_dropped)),
            ("no_rx_avail_buffer", get(&c.rx_no_buffer)),
            ("tx_bytes_count", get(&c.tx_bytes)),
            ("tx_packets_count", get(&c.tx_packets)),
            ("tx_dropped", get(&c.tx_dropped)),
        ];
        for (name, v) in fields {
            add("net", name, v);
            add(&format!("net_{id}"), name, v);
        }
    }
    for v in &src.vcpus {
        let e = &v.exits;
        add("vcpu", "exit_io_in", get(&e.exit_io_in));
        add("vcpu", "exit_io_out", get(&e.exit_io_out));
        add("vcpu", "exit_mmio_read", get(&e.exit_mmio_read));
        add("vcpu", "exit_mmio_write", get(&e.exit_mmio_write));
        add("vcpu", "exit_intr", get(&e.exit_intr));
        add("vcpu", "failures", get(&e.failures));
        add("vcpu", "cpu_time_us", v.cpu_time_us());
    }
    if let Some(u) = &src.uart_out {
        add("uart", "write_count", get(u));
    }
    out
}

/// A console writer that counts the bytes the guest writes.
pub struct CountingWriter {
    inner: Box<dyn Write + Send>,
    count: Arc<AtomicU64>,
}

impl CountingWriter {
    /// Wraps `inner`, adding every byte written to `count`.
    pub fn new(inner: Box<dyn Write + Send>, count: Arc<AtomicU64>) -> Self {
        CountingWriter { inner, count }
    }
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_changes_since_the_last_line() {
        let dir = std::env::temp_dir().join(format!("ember-metrics-{}", std::process::id()));
        let blk = Arc::new(BlockCounters::default());
        let src = Sources {
            block: vec![("rootfs".into(), blk.clone())],
            ..Default::default()
        };
        let mut w = MetricsWriter::open(&dir).unwrap();
        blk.write_bytes.fetch_add(4096, Ordering::Relaxed);
        w.flush(&src).unwrap();
        blk.write_bytes.fetch_add(512, Ordering::Relaxed);
        w.flush(&src).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["block"]["write_bytes"], 4096);
        assert_eq!(lines[0]["block_rootfs"]["write_bytes"], 4096);
        assert_eq!(lines[1]["block"]["write_bytes"], 512);
    }
}
