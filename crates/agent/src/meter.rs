//! Metering: usage per instance, exact enough to bill from.
//!
//! Every instance has an open interval (its *meter*: the state it is in and since when).
//! A *sample* closes that interval: the time goes to the state it was in, and the VMM's
//! counters (vCPU time, block and network) are the sum of the metrics lines ember appended
//! to the instance's metrics file since the last sample. Samples are taken every few
//! seconds and at every state change. Each sample, split at hour boundaries, is stored raw
//! and added to its hour's rollup in the same transaction that moves the meter forward and
//! records how far the metrics file has been read: a crash or restart can neither count a
//! line twice nor lose one.
//!
//! Bounds: the counters are exact over a whole life (ember writes a last line at exit, and
//! the agent asks for one before it kills a VMM) except after a `kill -9` of the VMM from
//! outside, which loses what happened since its last line (at most one sample interval).
//! Within a window, a sample that straddles an edge is shared out in proportion to time:
//! the error at each edge is at most one sample interval's worth. Windows on whole hours
//! are read from the rollups and are exact.

use rusqlite::{params, Connection, OptionalExtension};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Milliseconds in an hour: the rollup period.
pub const HOUR_MS: i64 = 3_600_000;

/// The states time is counted in (terminated accrues nothing).
pub const STATES: [&str; 5] = ["pending", "running", "stopping", "stopped", "shutting-down"];

/// Number of usage quantities.
pub const N: usize = 16;

/// The stored quantities, in column order: milliseconds in each state, memory
/// (configured MiB x ms and RSS KiB x ms while a VMM exists), then the VMM's counters.
pub const COLUMNS: [&str; N] = [
    "pending_ms",
    "running_ms",
    "stopping_ms",
    "stopped_ms",
    "shutting_down_ms",
    "mem_mib_ms",
    "rss_kib_ms",
    "vcpu_us",
    "block_read_bytes",
    "block_write_bytes",
    "block_read_ops",
    "block_write_ops",
    "net_rx_bytes",
    "net_tx_bytes",
    "net_rx_packets",
    "net_tx_packets",
];

const MEM_MIB_MS: usize = 5;
const RSS_KIB_MS: usize = 6;
/// Where the VMM's counters start in [`COLUMNS`].
const FIRST_COUNTER: usize = 7;

/// ember's metrics keys (`group.name`) for each counter column from [`FIRST_COUNTER`].
const METRICS_KEYS: [(&str, &str); N - FIRST_COUNTER] = [
    ("vcpu", "cpu_time_us"),
    ("block", "read_bytes"),
    ("block", "write_bytes"),
    ("block", "read_count"),
    ("block", "write_count"),
    ("net", "rx_bytes_count"),
    ("net", "tx_bytes_count"),
    ("net", "rx_packets_count"),
    ("net", "tx_packets_count"),
];

/// States in which a VMM process holds the instance's memory.
pub fn vmm_state(state: &str) -> bool {
    matches!(state, "pending" | "running" | "stopping" | "shutting-down")
}

/// A set of usage quantities (see [`COLUMNS`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage(pub [i64; N]);

impl Usage {
    /// The quantity named `column`.
    pub fn get(&self, column: &str) -> i64 {
        COLUMNS
            .iter()
            .position(|c| *c == column)
            .map(|i| self.0[i])
            .unwrap_or(0)
    }

    /// Adds `other`.
    pub fn add(&mut self, other: &Usage) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// `self` x `num / den`, rounded down (`den` > 0).
    pub fn share(&self, num: i64, den: i64) -> Usage {
        let mut out = Usage::default();
        for (o, v) in out.0.iter_mut().zip(self.0.iter()) {
            *o = (i128::from(*v) * i128::from(num) / i128::from(den)) as i64;
        }
        out
    }

    /// `self` - `other`.
    fn minus(&self, other: &Usage) -> Usage {
        let mut out = *self;
        for (o, v) in out.0.iter_mut().zip(other.0.iter()) {
            *o -= v;
        }
        out
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meters (
  instance_id TEXT PRIMARY KEY, instance_type TEXT NOT NULL, memory_mib INTEGER NOT NULL,
  state TEXT NOT NULL, since_ms INTEGER NOT NULL, metrics_path TEXT NOT NULL,
  metrics_offset INTEGER NOT NULL, rss_kib INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meter_marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

fn usage_table(name: &str, key: &str, constraint: &str) -> String {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("{c} INTEGER NOT NULL"))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (instance_id TEXT NOT NULL, instance_type TEXT NOT NULL, \
         {key}, {}{constraint});",
        cols.join(", ")
    )
}

/// Creates the metering tables.
pub fn init(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(SCHEMA)?;
    c.execute_batch(&usage_table(
        "usage_samples",
        "start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL",
        "",
    ))?;
    c.execute_batch("CREATE INDEX IF NOT EXISTS usage_samples_start ON usage_samples(start_ms);")?;
    c.execute_batch(&usage_table(
        "usage_hourly",
        "hour_ms INTEGER NOT NULL",
        ", PRIMARY KEY (instance_id, hour_ms)",
    ))?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Starts metering a new instance (in `pending` from `at`).
pub fn open(
    c: &Connection,
    instance_id: &str,
    instance_type: &str,
    memory_mib: u64,
    metrics_path: &Path,
    at: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO meters (instance_id, instance_type, memory_mib, state, since_ms, metrics_path,
         metrics_offset, rss_kib) VALUES (?1, ?2, ?3, 'pending', ?4, ?5, 0, 0)",
        params![
            instance_id,
            instance_type,
            memory_mib as i64,
            at,
            metrics_path.display().to_string()
        ],
    )?;
    Ok(())
}

/// What the VMM's metrics file added since `offset`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MetricsRead {
    /// The counters' sum over the new lines.
    pub counters: Usage,
    /// Where the next read starts.
    pub offset: u64,
    /// The newest line's timestamp (ms), if any line was read.
    pub last_line_ms: Option<i64>,
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
    for line in buf[..end].split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            log::warn!("{}: skipping a line that is not JSON", path.display());
            continue;
        };
        for (k, (group, name)) in METRICS_KEYS.iter().enumerate() {
            let d = v
                .get(group)
                .and_then(|g| g.get(name))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            out.counters.0[FIRST_COUNTER + k] += i64::try_from(d).unwrap_or(i64::MAX);
        }
        if let Some(ts) = v
            .get("utc_timestamp_ms")
            .and_then(serde_json::Value::as_i64)
        {
            out.last_line_ms = Some(out.last_line_ms.map_or(ts, |t: i64| t.max(ts)));
        }
    }
    out.offset = start + end as u64 + 1;
    Ok(out)
}

/// Frees the disk blocks of the part of the metrics file already read (a long-lived VMM
/// appends a line every sample interval): punched out as a hole, so offsets stay valid and
/// ember, appending, is not disturbed. Filesystems without hole punching keep the bytes.
fn release_read(path: &Path, offset: u64) {
    const CHUNK: u64 = 64 * 1024;
    let end = offset / CHUNK * CHUNK;
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

struct Meter {
    instance_type: String,
    memory_mib: i64,
    state: String,
    since_ms: i64,
    metrics_path: String,
    metrics_offset: i64,
    rss_kib: i64,
}

fn meter(c: &Connection, id: &str) -> rusqlite::Result<Option<Meter>> {
    c.query_row(
        "SELECT instance_type, memory_mib, state, since_ms, metrics_path, metrics_offset, rss_kib
         FROM meters WHERE instance_id = ?1",
        [id],
        |r| {
            Ok(Meter {
                instance_type: r.get(0)?,
                memory_mib: r.get(1)?,
                state: r.get(2)?,
                since_ms: r.get(3)?,
                metrics_path: r.get(4)?,
                metrics_offset: r.get(5)?,
                rss_kib: r.get(6)?,
            })
        },
    )
    .optional()
}

/// A sample to take.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleAt<'a> {
    /// When (ms).
    pub now_ms: i64,
    /// The state from now on (`None`: unchanged).
    pub new_state: Option<&'a str>,
    /// The VMM's resident memory now, if it runs.
    pub rss_kib: Option<i64>,
    /// The VMM ended while nobody watched (the agent was down): the old state ends at its
    /// last metrics line (ember writes one as it exits), the new one starts there.
    pub exit_unseen: bool,
}

/// Closes instance `id`'s open interval at `s.now_ms`: its time, memory and the VMM's new
/// counters become a sample; the meter moves on in `s.new_state`. Call inside a
/// transaction. An instance without a meter, or terminated, is left alone.
pub fn sample(c: &Connection, id: &str, s: SampleAt) -> rusqlite::Result<()> {
    let Some(m) = meter(c, id)? else {
        return Ok(());
    };
    if m.state == "terminated" {
        return Ok(());
    }
    let read = match read_metrics(Path::new(&m.metrics_path), m.metrics_offset as u64) {
        Ok(r) => r,
        Err(e) => {
            // Unreadable now; the lines stay in the file for a later sample.
            log::warn!("{id}: metrics {}: {e}", m.metrics_path);
            MetricsRead {
                offset: m.metrics_offset as u64,
                ..Default::default()
            }
        }
    };
    let rss = s.rss_kib.unwrap_or(m.rss_kib);
    let mut end = s.now_ms.max(m.since_ms);
    if s.exit_unseen {
        end = read
            .last_line_ms
            .unwrap_or(m.since_ms)
            .clamp(m.since_ms, end);
    }
    let dur = end - m.since_ms;
    let mut u = read.counters;
    if let Some(i) = STATES.iter().position(|st| *st == m.state) {
        u.0[i] = dur;
    }
    if vmm_state(&m.state) {
        u.0[MEM_MIB_MS] = m.memory_mib * dur;
        u.0[RSS_KIB_MS] = rss * dur;
    }
    record(c, id, &m.instance_type, m.since_ms, end, &u)?;
    if read.offset / (64 * 1024) > m.metrics_offset as u64 / (64 * 1024) {
        release_read(Path::new(&m.metrics_path), read.offset);
    }
    let state = s.new_state.unwrap_or(&m.state);
    c.execute(
        "UPDATE meters SET state = ?2, since_ms = ?3, metrics_offset = ?4, rss_kib = ?5
         WHERE instance_id = ?1",
        params![
            id,
            state,
            end,
            read.offset as i64,
            if vmm_state(state) { rss } else { 0 }
        ],
    )?;
    Ok(())
}

/// Stores usage `u` of `[start, end)`, split at hour boundaries (counters shared out in
/// proportion to time), raw and in the hourly rollups.
fn record(
    c: &Connection,
    id: &str,
    itype: &str,
    start: i64,
    end: i64,
    u: &Usage,
) -> rusqlite::Result<()> {
    if u.0.iter().all(|v| *v == 0) {
        return Ok(());
    }
    let cols = COLUMNS.join(", ");
    let marks: Vec<String> = (0..N).map(|i| format!("?{}", i + 5)).collect();
    let raw = format!(
        "INSERT INTO usage_samples (instance_id, instance_type, start_ms, end_ms, {cols})
         VALUES (?1, ?2, ?3, ?4, {})",
        marks.join(", ")
    );
    let sums: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    let hourly = format!(
        "INSERT INTO usage_hourly (instance_id, instance_type, hour_ms, {cols})
         VALUES (?1, ?2, ?3, {}) ON CONFLICT (instance_id, hour_ms) DO UPDATE SET {}",
        (0..N)
            .map(|i| format!("?{}", i + 4))
            .collect::<Vec<_>>()
            .join(", "),
        sums.join(", ")
    );
    let mut left = *u;
    let mut from = start;
    loop {
        let hour = from.div_euclid(HOUR_MS) * HOUR_MS;
        let to = (hour + HOUR_MS).min(end);
        // The last piece takes what rounding left, so the pieces add up exactly.
        let piece = if to >= end {
            left
        } else {
            u.share(to - from, end - start)
        };
        left = left.minus(&piece);
        let mut p: Vec<rusqlite::types::Value> = vec![
            id.to_string().into(),
            itype.to_string().into(),
            from.into(),
            to.into(),
        ];
        p.extend(piece.0.iter().map(|v| rusqlite::types::Value::from(*v)));
        c.execute(&raw, rusqlite::params_from_iter(p.iter()))?;
        let mut h: Vec<rusqlite::types::Value> =
            vec![id.to_string().into(), itype.to_string().into(), hour.into()];
        h.extend(piece.0.iter().map(|v| rusqlite::types::Value::from(*v)));
        c.execute(&hourly, rusqlite::params_from_iter(h.iter()))?;
        if to >= end {
            return Ok(());
        }
        from = to;
    }
}

/// Usage of one instance over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUsage {
    /// `i-...`
    pub instance_id: String,
    /// Its type.
    pub instance_type: String,
    /// The quantities.
    pub usage: Usage,
}

const RAW_FROM: &str = "raw_from_ms";

/// Instances' usage over `[from, to)` (ms): whole hours from the rollups, the partial hours
/// at the edges from the raw samples (each shared out by its overlap with the window), or
/// from the rollup shared out by time where the raw samples have been pruned. `ids`:
/// only these instances.
pub fn query(
    c: &Connection,
    from: i64,
    to: i64,
    ids: Option<&[String]>,
) -> rusqlite::Result<Vec<InstanceUsage>> {
    let mut acc: std::collections::BTreeMap<String, InstanceUsage> = Default::default();
    let wanted = |id: &str| ids.is_none_or(|l| l.iter().any(|x| x == id));
    let raw_from: i64 = c
        .query_row(
            "SELECT value FROM meter_marks WHERE name = ?1",
            [RAW_FROM],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(i64::MIN);
    let cols = COLUMNS.join(", ");
    let mut add = |id: String, itype: String, u: Usage| {
        acc.entry(id.clone())
            .or_insert_with(|| InstanceUsage {
                instance_id: id,
                instance_type: itype,
                usage: Usage::default(),
            })
            .usage
            .add(&u);
    };
    let read_usage = |r: &rusqlite::Row, first: usize| -> rusqlite::Result<Usage> {
        let mut u = Usage::default();
        for (i, v) in u.0.iter_mut().enumerate() {
            *v = r.get(first + i)?;
        }
        Ok(u)
    };
    let mut hours = c.prepare(&format!(
        "SELECT instance_id, instance_type, hour_ms, {cols} FROM usage_hourly
         WHERE hour_ms > ?1 - {HOUR_MS} AND hour_ms < ?2"
    ))?;
    let rows = hours.query_map(params![from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            read_usage(r, 3)?,
        ))
    })?;
    let mut partial_hours = Vec::new();
    for row in rows {
        let (id, itype, hour, u) = row?;
        if !wanted(&id) {
            continue;
        }
        if hour >= from && hour + HOUR_MS <= to {
            add(id, itype, u);
        } else if hour + HOUR_MS <= raw_from {
            // Raw samples gone: share the hour out by time.
            let overlap = (hour + HOUR_MS).min(to) - hour.max(from);
            add(id, itype, u.share(overlap.max(0), HOUR_MS));
        } else {
            partial_hours.push(hour);
        }
    }
    partial_hours.sort_unstable();
    partial_hours.dedup();
    let mut raw = c.prepare(&format!(
        "SELECT instance_id, instance_type, start_ms, end_ms, {cols} FROM usage_samples
         WHERE start_ms >= ?1 AND start_ms < ?2"
    ))?;
    for hour in partial_hours {
        let rows = raw.query_map(params![hour, hour + HOUR_MS], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                read_usage(r, 4)?,
            ))
        })?;
        for row in rows {
            let (id, itype, start, end, u) = row?;
            if !wanted(&id) {
                continue;
            }
            if end == start {
                if start >= from && start < to {
                    add(id, itype, u);
                }
                continue;
            }
            let overlap = end.min(to) - start.max(from);
            if overlap > 0 {
                add(id, itype, u.share(overlap, end - start));
            }
        }
    }
    Ok(acc.into_values().collect())
}

/// Every instance's usage over its whole metered life.
pub fn totals(c: &Connection) -> rusqlite::Result<Vec<InstanceUsage>> {
    let sums: Vec<String> = COLUMNS.iter().map(|c| format!("SUM({c})")).collect();
    let mut st = c.prepare(&format!(
        "SELECT instance_id, MAX(instance_type), {} FROM usage_hourly GROUP BY instance_id
         ORDER BY instance_id",
        sums.join(", ")
    ))?;
    let rows = st.query_map([], |r| {
        let mut u = Usage::default();
        for (i, v) in u.0.iter_mut().enumerate() {
            *v = r.get(2 + i)?;
        }
        Ok(InstanceUsage {
            instance_id: r.get(0)?,
            instance_type: r.get(1)?,
            usage: u,
        })
    })?;
    rows.collect()
}

/// Drops raw samples that ended before `before_ms` (their hours' rollups stay), and
/// forgets meters of instances purged from the instance table.
pub fn prune(c: &Connection, before_ms: i64) -> rusqlite::Result<()> {
    let hour = before_ms.div_euclid(HOUR_MS) * HOUR_MS;
    // Whole hours only, so an hour is either fully raw or fully rolled up.
    c.execute("DELETE FROM usage_samples WHERE start_ms < ?1", [hour])?;
    c.execute(
        "INSERT INTO meter_marks (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
        params![RAW_FROM, hour],
    )?;
    c.execute(
        "DELETE FROM meters WHERE state = 'terminated'
         AND instance_id NOT IN (SELECT id FROM instances)",
        [],
    )?;
    Ok(())
}

/// The state an instance's meter is in, and since when (ms).
pub fn current(c: &Connection, id: &str) -> rusqlite::Result<Option<(String, i64)>> {
    Ok(meter(c, id)?.map(|m| (m.state, m.since_ms)))
}

/// Instances whose meters still run (every one not terminated).
pub fn metered(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = c.prepare("SELECT instance_id FROM meters WHERE state != 'terminated'")?;
    let rows = st.query_map([], |r| r.get(0))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE instances (id TEXT PRIMARY KEY);")
            .unwrap();
        init(&c).unwrap();
        c
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("emberd-meter-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("metrics.jsonl")
    }

    fn line(f: &mut std::fs::File, ts: i64, vcpu_us: u64, wbytes: u64) {
        writeln!(
            f,
            r#"{{"utc_timestamp_ms":{ts},"vcpu":{{"cpu_time_us":{vcpu_us}}},"block":{{"write_bytes":{wbytes},"write_count":1}},"net":{{"tx_bytes_count":7}}}}"#
        )
        .unwrap();
    }

    fn at(now_ms: i64, new_state: Option<&str>) -> SampleAt<'_> {
        SampleAt {
            now_ms,
            new_state,
            rss_kib: Some(1024),
            exit_unseen: false,
        }
    }

    #[test]
    fn metrics_lines_are_summed_once_and_a_partial_line_waits() {
        let p = tmp("read");
        let mut f = std::fs::File::create(&p).unwrap();
        line(&mut f, 10, 100, 4096);
        line(&mut f, 20, 50, 0);
        write!(f, r#"{{"utc_timestamp_ms":30,"vcpu":{{"cpu_ti"#).unwrap();
        let r = read_metrics(&p, 0).unwrap();
        assert_eq!(r.counters.get("vcpu_us"), 150);
        assert_eq!(r.counters.get("block_write_bytes"), 4096);
        assert_eq!(r.counters.get("block_write_ops"), 2);
        assert_eq!(r.counters.get("net_tx_bytes"), 14);
        assert_eq!(r.last_line_ms, Some(20));
        // Nothing new: nothing counted again.
        let again = read_metrics(&p, r.offset).unwrap();
        assert_eq!(again.counters, Usage::default());
        assert_eq!(again.offset, r.offset);
        // The line completes.
        writeln!(f, r#"me_us":5}}}}"#).unwrap();
        let last = read_metrics(&p, r.offset).unwrap();
        assert_eq!(last.counters.get("vcpu_us"), 5);
        assert_eq!(last.last_line_ms, Some(30));
        // A missing file adds nothing.
        let none = read_metrics(&p.with_extension("missing"), 0).unwrap();
        assert_eq!(none.counters, Usage::default());
        // Garbage lines are skipped, not fatal.
        writeln!(f, "not json").unwrap();
        line(&mut f, 40, 1, 0);
        let g = read_metrics(&p, last.offset).unwrap();
        assert_eq!(g.counters.get("vcpu_us"), 1);
    }

    #[test]
    fn lines_already_read_give_their_disk_space_back_and_offsets_hold() {
        use std::os::unix::fs::MetadataExt;
        let p = tmp("punch");
        let mut f = std::fs::File::create(&p).unwrap();
        for k in 0..4000 {
            line(&mut f, k, 1, 0);
        }
        f.sync_all().unwrap();
        let r = read_metrics(&p, 0).unwrap();
        assert_eq!(r.counters.get("vcpu_us"), 4000);
        let blocks = std::fs::metadata(&p).unwrap().blocks();
        release_read(&p, r.offset);
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.len(), r.offset, "the size (and so every offset) is kept");
        assert!(md.blocks() <= blocks);
        line(&mut f, 5000, 7, 0);
        let next = read_metrics(&p, r.offset).unwrap();
        assert_eq!(next.counters.get("vcpu_us"), 7);
    }

    #[test]
    fn samples_split_at_hours_and_whole_hour_windows_are_exact() {
        let c = db();
        let p = tmp("split");
        let mut f = std::fs::File::create(&p).unwrap();
        let h = 1_000 * HOUR_MS; // an hour boundary
        open(&c, "i-1", "e1.nano", 128, &p, h - 1000).unwrap();
        sample(&c, "i-1", at(h - 1000, Some("running"))).unwrap();
        // 10 s of running across the boundary, with 1000 us of vCPU and 10 writes.
        for _ in 0..10 {
            line(&mut f, h, 100, 1);
        }
        sample(&c, "i-1", at(h + 9000, None)).unwrap();
        let before = query(&c, h - HOUR_MS, h, None).unwrap();
        let after = query(&c, h, h + HOUR_MS, None).unwrap();
        let all = query(&c, h - HOUR_MS, h + HOUR_MS, None).unwrap();
        assert_eq!(before[0].usage.get("running_ms"), 1000);
        assert_eq!(after[0].usage.get("running_ms"), 9000);
        assert_eq!(before[0].usage.get("vcpu_us"), 100);
        assert_eq!(after[0].usage.get("vcpu_us"), 900);
        let mut sum = before[0].usage;
        sum.add(&after[0].usage);
        assert_eq!(sum, all[0].usage);
        assert_eq!(all[0].usage.get("block_write_bytes"), 10);
        assert_eq!(all[0].usage.get("mem_mib_ms"), 128 * 10_000);
        assert_eq!(all[0].usage.get("rss_kib_ms"), 1024 * 10_000);
        // The whole-hour windows are the rollups, to the unit.
        let hourly: i64 = c
            .query_row(
                "SELECT vcpu_us FROM usage_hourly WHERE hour_ms = ?1",
                [h],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hourly, 900);
        // A window inside the hour shares out the straddling sample by time.
        let mid = query(&c, h + 1000, h + 5500, None).unwrap();
        assert_eq!(mid[0].usage.get("running_ms"), 4500);
        assert_eq!(mid[0].usage.get("vcpu_us"), 450);
    }

    #[test]
    fn states_accrue_to_the_state_they_were_in_and_terminated_stops_accruing() {
        let c = db();
        let p = tmp("states");
        let t = 5 * HOUR_MS + 100;
        open(&c, "i-2", "e1.micro", 256, &p, t).unwrap();
        sample(&c, "i-2", at(t + 2000, Some("running"))).unwrap();
        sample(&c, "i-2", at(t + 12_000, Some("stopping"))).unwrap();
        sample(&c, "i-2", at(t + 13_000, Some("stopped"))).unwrap();
        sample(&c, "i-2", at(t + 20_000, Some("terminated"))).unwrap();
        sample(&c, "i-2", at(t + 90_000, None)).unwrap();
        let u = query(&c, 0, t + 100_000, None).unwrap()[0].usage;
        assert_eq!(u.get("pending_ms"), 2000);
        assert_eq!(u.get("running_ms"), 10_000);
        assert_eq!(u.get("stopping_ms"), 1000);
        assert_eq!(u.get("stopped_ms"), 7000);
        // Memory only while a VMM held it.
        assert_eq!(u.get("mem_mib_ms"), 256 * 13_000);
        assert!(metered(&c).unwrap().is_empty());
        assert_eq!(totals(&c).unwrap()[0].usage, u);
    }

    #[test]
    fn an_exit_seen_late_ends_at_the_last_metrics_line() {
        let c = db();
        let p = tmp("late");
        let mut f = std::fs::File::create(&p).unwrap();
        let t = 7 * HOUR_MS;
        open(&c, "i-3", "e1.nano", 128, &p, t).unwrap();
        sample(&c, "i-3", at(t, Some("running"))).unwrap();
        line(&mut f, t + 4000, 10, 0);
        let late = SampleAt {
            exit_unseen: true,
            ..at(t + 60_000, Some("stopped"))
        };
        sample(&c, "i-3", late).unwrap();
        sample(&c, "i-3", at(t + 70_000, None)).unwrap();
        let u = query(&c, 0, t + HOUR_MS, None).unwrap()[0].usage;
        assert_eq!(u.get("running_ms"), 4000);
        assert_eq!(u.get("stopped_ms"), 66_000);
        assert_eq!(u.get("vcpu_us"), 10);
    }

    #[test]
    fn pruned_hours_are_shared_out_from_the_rollup_and_filters_apply() {
        let c = db();
        let p = tmp("prune");
        let t = 9 * HOUR_MS;
        open(&c, "i-4", "e1.nano", 128, &p, t).unwrap();
        open(&c, "i-5", "e1.nano", 128, &p.with_extension("other"), t).unwrap();
        sample(&c, "i-4", at(t, Some("running"))).unwrap();
        sample(&c, "i-4", at(t + HOUR_MS, None)).unwrap();
        sample(&c, "i-5", at(t + 10, Some("running"))).unwrap();
        prune(&c, t + 2 * HOUR_MS).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM usage_samples", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let half = query(&c, t, t + HOUR_MS / 2, Some(&["i-4".to_string()])).unwrap();
        assert_eq!(half.len(), 1);
        assert_eq!(half[0].usage.get("running_ms"), HOUR_MS / 2);
    }
}
