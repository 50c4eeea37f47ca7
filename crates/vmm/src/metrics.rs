//! Metrics in Firecracker's shape ([`model::MetricsLine`]): with a metrics path, one JSON
//! object per line, written on `FlushMetrics` and every [`PERIOD`], each counter the
//! change since the previous line. The counters are exact: every byte and request the
//! devices count is in some line.

use crate::vstate::vcpu::VcpuControl;
use devices::virtio::block::BlockCounters;
use devices::virtio::net::NetCounters;
use devices::virtio::rng::EntropyCounters;
use devices::virtio::vsock::VsockCounters;
use model::metrics::{
    BlockMetrics, EntropyMetrics, MetricsLine, NetMetrics, UartMetrics, VcpuMetrics, VsockMetrics,
};
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
    /// A line could not be encoded.
    #[error("cannot encode metrics: {0}")]
    Encode(serde_json::Error),
    /// No metrics path is configured.
    #[error("no metrics path configured: PUT /metrics first")]
    NotConfigured,
}

/// Request counts by name (`put_drives`), from whoever serves the API; the VMM only
/// reports them.
pub type RequestCounts = Arc<dyn Fn() -> BTreeMap<String, u64> + Send + Sync>;

/// Where the counters live.
#[derive(Default, Clone)]
pub struct Sources {
    /// API requests by method and path.
    pub api: Option<RequestCounts>,
    /// Per drive id.
    pub block: Vec<(String, Arc<BlockCounters>)>,
    /// Per interface id.
    pub net: Vec<(String, Arc<NetCounters>)>,
    /// Per vCPU.
    pub vcpus: Vec<Arc<VcpuControl>>,
    /// Bytes the guest wrote to its console.
    pub uart_out: Option<Arc<AtomicU64>>,
    /// The entropy device.
    pub entropy: Option<Arc<EntropyCounters>>,
    /// The vsock device.
    pub vsock: Option<Arc<VsockCounters>>,
}

/// Writes metrics lines to a file (or FIFO), keeping the last totals to report changes.
pub struct MetricsWriter {
    file: File,
    last: MetricsLine,
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
            last: MetricsLine::default(),
        })
    }

    /// Writes one line with the change of every counter since the last line.
    pub fn flush(&mut self, src: &Sources) -> Result<(), MetricsError> {
        let now = totals(src);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut text =
            serde_json::to_string(&now.since(&self.last, ms)).map_err(MetricsError::Encode)?;
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

/// Every counter's total so far.
fn totals(src: &Sources) -> MetricsLine {
    let mut line = MetricsLine {
        api_server: src.api.as_ref().map(|api| {
            api()
                .into_iter()
                .map(|(k, v)| (format!("{k}_count"), v))
                .collect()
        }),
        ..Default::default()
    };
    for (id, c) in &src.block {
        let m = BlockMetrics {
            read_bytes: get(&c.read_bytes),
            write_bytes: get(&c.write_bytes),
            read_count: get(&c.read_count),
            write_count: get(&c.write_count),
            flush_count: get(&c.flush_count),
            io_errors: get(&c.io_errors),
            invalid_reqs_count: get(&c.invalid_requests),
        };
        line.block.get_or_insert_with(Default::default).add(&m);
        line.block_devices.entry(id.clone()).or_default().add(&m);
    }
    for (id, c) in &src.net {
        let m = NetMetrics {
            rx_bytes_count: get(&c.rx_bytes),
            rx_packets_count: get(&c.rx_packets),
            rx_dropped: get(&c.rx_dropped),
            no_rx_avail_buffer: get(&c.rx_no_buffer),
            tx_bytes_count: get(&c.tx_bytes),
            tx_packets_count: get(&c.tx_packets),
            tx_dropped: get(&c.tx_dropped),
        };
        line.net.get_or_insert_with(Default::default).add(&m);
        line.net_devices.entry(id.clone()).or_default().add(&m);
    }
    if let Some(c) = &src.entropy {
        line.entropy = Some(EntropyMetrics {
            entropy_event_count: get(&c.requests),
            entropy_bytes: get(&c.bytes),
            entropy_event_fails: get(&c.invalid_requests),
            host_rng_fails: get(&c.host_failures),
        });
    }
    if let Some(c) = &src.vsock {
        line.vsock = Some(VsockMetrics {
            rx_bytes_count: get(&c.rx_bytes),
            tx_bytes_count: get(&c.tx_bytes),
            rx_packets_count: get(&c.rx_packets),
            tx_packets_count: get(&c.tx_packets),
            conns_added: get(&c.conns_added),
            conns_killed: get(&c.conns_killed),
            rst_sent: get(&c.rst_sent),
            invalid_packets: get(&c.invalid_packets),
        });
    }
    for v in &src.vcpus {
        let e = &v.exits;
        line.vcpu
            .get_or_insert_with(Default::default)
            .add(&VcpuMetrics {
                exit_io_in: get(&e.exit_io_in),
                exit_io_out: get(&e.exit_io_out),
                exit_mmio_read: get(&e.exit_mmio_read),
                exit_mmio_write: get(&e.exit_mmio_write),
                exit_intr: get(&e.exit_intr),
                failures: get(&e.failures),
                cpu_time_us: v.cpu_time_us(),
            });
    }
    if let Some(u) = &src.uart_out {
        line.uart = Some(UartMetrics {
            write_count: get(u),
        });
    }
    line
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
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["block"]["write_bytes"], 4096);
        assert_eq!(lines[0]["block_rootfs"]["write_bytes"], 4096);
        assert_eq!(lines[1]["block"]["write_bytes"], 512);
    }
}
