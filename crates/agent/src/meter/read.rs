//! Reading the VMM's metrics file: the lines ember appended since the last read, summed
//! into the counters of a [`Usage`].

use super::Usage;
use model::MetricsLine;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// What the VMM's metrics file added since `offset`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MetricsRead {
    /// The counters' sum over the new lines (only the VMM's counters are set).
    pub counters: Usage,
    /// Where the next read starts.
    pub offset: u64,
    /// The newest line's timestamp (ms), if any line was read.
    pub last_line_ms: Option<i64>,
}

/// A counter as a stored quantity (the lines' counters are `u64`s; none reaches 2^63).
fn q(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds one line's counters (each line holds the change since the previous one).
fn add_line(u: &mut Usage, line: &MetricsLine) {
    let vcpu = line.vcpu.unwrap_or_default();
    let block = line.block.unwrap_or_default();
    let net = line.net.unwrap_or_default();
    u.add(&Usage {
        vcpu_us: q(vcpu.cpu_time_us),
        block_read_bytes: q(block.read_bytes),
        block_write_bytes: q(block.write_bytes),
        block_read_ops: q(block.read_count),
        block_write_ops: q(block.write_count),
        net_rx_bytes: q(net.rx_bytes_count),
        // `tx` is what the guest sent.
        net_tx_bytes: q(net.tx_bytes_count),
        net_rx_packets: q(net.rx_packets_count),
        net_tx_packets: q(net.tx_packets_count),
        ..Usage::default()
    });
}

/// Sums the complete lines appended to `path` after `offset` (a partly written last line
/// is left for the next read). A missing file adds nothing; a file shorter than `offset`
/// was replaced and is read from its start.
pub fn read_metrics(path: &Path, offset: u64) -> std::io::Result<MetricsRead> {
    let mut out = MetricsRead {
        offset,
        ..Default::default()
    };
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
        out.offset = start;
        return Ok(out);
    };
    for text in buf[..end].split(|&b| b == b'\n') {
        let line = match serde_json::from_slice::<MetricsLine>(text) {
            Ok(l) => l,
            Err(e) => {
                log::warn!(
                    "{}: skipping a line that is not a metrics line: {e}",
                    path.display()
                );
                continue;
            }
        };
        add_line(&mut out.counters, &line);
        let ts = q(line.utc_timestamp_ms);
        out.last_line_ms = Some(out.last_line_ms.map_or(ts, |t| t.max(ts)));
    }
    out.offset = start + end as u64 + 1;
    Ok(out)
}

/// Frees the disk blocks of the part of the metrics file already read (a long-lived VMM
/// appends a line every sample interval): punched out as a hole, so offsets stay valid and
/// ember, appending, is not disturbed. Filesystems without hole punching keep the bytes.
pub fn release_read(path: &Path, offset: u64) {
    let end = offset / RELEASE_CHUNK * RELEASE_CHUNK;
    if end == 0 {
        return;
    }
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return;
    };
    // SAFETY: fallocate on a file descriptor we own, with plain integer arguments.
    unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            end as libc::off_t,
        )
    };
}

/// Space is given back in whole chunks of this many bytes (fewer, larger punches).
pub const RELEASE_CHUNK: u64 = 64 * 1024;
