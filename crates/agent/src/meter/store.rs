//! Storage: each instance's meter (its open interval), the samples that close it, and the
//! hourly rollups, all in the agent's SQLite database.

use super::read::{read_metrics, release_read, MetricsRead, RELEASE_CHUNK};
use super::{Usage, HOUR_MS};
use agent_types::InstanceState;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meters (
  instance_id TEXT PRIMARY KEY, instance_type TEXT NOT NULL, memory_mib INTEGER NOT NULL,
  state TEXT NOT NULL, since_ms INTEGER NOT NULL, metrics_path TEXT NOT NULL,
  metrics_offset INTEGER NOT NULL, rss_kib INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meter_marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// The mark naming the oldest hour whose raw samples are kept.
pub(super) const RAW_FROM: &str = "raw_from_ms";

fn usage_table(name: &str, key: &str, constraint: &str) -> String {
    let cols: Vec<String> = Usage::COLUMNS
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
         metrics_offset, rss_kib) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0)",
        params![
            instance_id,
            instance_type,
            memory_mib as i64,
            InstanceState::Pending.as_str(),
            at,
            metrics_path.display().to_string()
        ],
    )?;
    Ok(())
}

struct Meter {
    instance_type: String,
    memory_mib: i64,
    state: InstanceState,
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
            let state: String = r.get(2)?;
            Ok(Meter {
                instance_type: r.get(0)?,
                memory_mib: r.get(1)?,
                state: state.parse().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
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
pub struct SampleAt {
    /// When (ms).
    pub now_ms: i64,
    /// The state from now on (`None`: unchanged).
    pub new_state: Option<InstanceState>,
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
    if m.state == InstanceState::Terminated {
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
    if let Some(t) = u.state_ms_mut(m.state) {
        *t = dur;
    }
    if m.state.has_vmm() {
        u.mem_mib_ms = m.memory_mib * dur;
        u.rss_kib_ms = rss * dur;
    }
    record(c, id, &m.instance_type, m.since_ms, end, &u)?;
    if read.offset / RELEASE_CHUNK > m.metrics_offset as u64 / RELEASE_CHUNK {
        release_read(Path::new(&m.metrics_path), read.offset);
    }
    let state = s.new_state.unwrap_or(m.state);
    c.execute(
        "UPDATE meters SET state = ?2, since_ms = ?3, metrics_offset = ?4, rss_kib = ?5
         WHERE instance_id = ?1",
        params![
            id,
            state.as_str(),
            end,
            read.offset as i64,
            if state.has_vmm() { rss } else { 0 }
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
    if u.is_zero() {
        return Ok(());
    }
    let n = Usage::COLUMNS.len();
    let cols = Usage::COLUMNS.join(", ");
    let marks = |first: usize| {
        (0..n)
            .map(|i| format!("?{}", i + first))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let raw = format!(
        "INSERT INTO usage_samples (instance_id, instance_type, start_ms, end_ms, {cols})
         VALUES (?1, ?2, ?3, ?4, {})",
        marks(5)
    );
    let sums: Vec<String> = Usage::COLUMNS
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    let hourly = format!(
        "INSERT INTO usage_hourly (instance_id, instance_type, hour_ms, {cols})
         VALUES (?1, ?2, ?3, {}) ON CONFLICT (instance_id, hour_ms) DO UPDATE SET {}",
        marks(4),
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
        let values = piece.values();
        let mut p: Vec<rusqlite::types::Value> = vec![
            id.to_string().into(),
            itype.to_string().into(),
            from.into(),
            to.into(),
        ];
        p.extend(values.iter().map(|v| rusqlite::types::Value::from(*v)));
        c.execute(&raw, rusqlite::params_from_iter(p.iter()))?;
        let mut h: Vec<rusqlite::types::Value> =
            vec![id.to_string().into(), itype.to_string().into(), hour.into()];
        h.extend(values.iter().map(|v| rusqlite::types::Value::from(*v)));
        c.execute(&hourly, rusqlite::params_from_iter(h.iter()))?;
        if to >= end {
            return Ok(());
        }
        from = to;
    }
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
        "DELETE FROM meters WHERE state = ?1
         AND instance_id NOT IN (SELECT id FROM instances)",
        [InstanceState::Terminated.as_str()],
    )?;
    Ok(())
}

/// The state an instance's meter is in, and since when (ms).
pub fn current(c: &Connection, id: &str) -> rusqlite::Result<Option<(InstanceState, i64)>> {
    Ok(meter(c, id)?.map(|m| (m.state, m.since_ms)))
}

/// Instances whose meters still run (every one not terminated).
pub fn metered(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = c.prepare("SELECT instance_id FROM meters WHERE state != ?1")?;
    let rows = st.query_map([InstanceState::Terminated.as_str()], |r| r.get(0))?;
    rows.collect()
}
