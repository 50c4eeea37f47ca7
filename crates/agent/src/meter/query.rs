//! Queries: instances' usage over a window (rollups for whole hours, raw samples at the
//! edges) and over their whole lives.

use super::store::RAW_FROM;
use super::{Usage, HOUR_MS};
use rusqlite::{params, Connection, OptionalExtension};

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
    let cols = Usage::COLUMNS.join(", ");
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
    let mut hours = c.prepare(&format!(
        "SELECT instance_id, instance_type, hour_ms, {cols} FROM usage_hourly
         WHERE hour_ms > ?1 - {HOUR_MS} AND hour_ms < ?2"
    ))?;
    let rows = hours.query_map(params![from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            Usage::from_row(r, 3)?,
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
                Usage::from_row(r, 4)?,
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
    let sums: Vec<String> = Usage::COLUMNS.iter().map(|c| format!("SUM({c})")).collect();
    let mut st = c.prepare(&format!(
        "SELECT instance_id, MAX(instance_type), {} FROM usage_hourly GROUP BY instance_id
         ORDER BY instance_id",
        sums.join(", ")
    ))?;
    let rows = st.query_map([], |r| {
        Ok(InstanceUsage {
            instance_id: r.get(0)?,
            instance_type: r.get(1)?,
            usage: Usage::from_row(r, 2)?,
        })
    })?;
    rows.collect()
}
