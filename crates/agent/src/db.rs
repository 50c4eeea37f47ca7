//! Durable state in SQLite (WAL): images, instances, volumes, reservations. Every state
//! change is written before it is acted on or reported, so a restarted agent knows what
//! ran.

pub use agent_types::{Image, Instance, InstanceState, Volume};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;

/// Database errors (surfaced as 500s: they are the agent's fault, not the client's).
pub type DbResult<T> = Result<T, rusqlite::Error>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, kernel TEXT NOT NULL, initrd TEXT,
  rootfs TEXT NOT NULL, boot_args TEXT NOT NULL, rootfs_sha256 TEXT NOT NULL,
  created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
  id TEXT PRIMARY KEY, image_id TEXT NOT NULL, instance_type TEXT NOT NULL,
  state TEXT NOT NULL, reason TEXT NOT NULL, pid INTEGER, pid_start INTEGER,
  dir TEXT NOT NULL, ip TEXT NOT NULL, tap TEXT NOT NULL, mac TEXT NOT NULL,
  client_token TEXT, user_data TEXT, tags TEXT NOT NULL,
  launched_at INTEGER NOT NULL, changed_at INTEGER NOT NULL, terminated_at INTEGER);
CREATE INDEX IF NOT EXISTS instances_token ON instances(client_token);
CREATE TABLE IF NOT EXISTS volumes (
  id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, path TEXT NOT NULL,
  size_bytes INTEGER NOT NULL, root INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
  instance_id TEXT PRIMARY KEY, reservation_id TEXT NOT NULL, launch_index INTEGER NOT NULL);
";

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Opens (creating) the database at `path`, WAL mode, schema in place.
pub fn open(path: &Path) -> DbResult<Connection> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.execute_batch(SCHEMA)?;
    crate::meter::init(&c)?;
    Ok(c)
}

fn image_row(r: &Row) -> rusqlite::Result<Image> {
    Ok(Image {
        id: r.get(0)?,
        name: r.get(1)?,
        kernel: r.get(2)?,
        initrd: r.get(3)?,
        rootfs: r.get(4)?,
        boot_args: r.get(5)?,
        rootfs_sha256: r.get(6)?,
        created_at: r.get(7)?,
    })
}

const IMAGE_COLS: &str = "id, name, kernel, initrd, rootfs, boot_args, rootfs_sha256, created_at";

/// Adds an image.
pub fn insert_image(c: &Connection, i: &Image) -> DbResult<()> {
    c.execute(
        &format!("INSERT INTO images ({IMAGE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            i.id,
            i.name,
            i.kernel,
            i.initrd,
            i.rootfs,
            i.boot_args,
            i.rootfs_sha256,
            i.created_at
        ],
    )?;
    Ok(())
}

/// Every image.
pub fn images(c: &Connection) -> DbResult<Vec<Image>> {
    let mut st = c.prepare(&format!(
        "SELECT {IMAGE_COLS} FROM images ORDER BY created_at, id"
    ))?;
    let rows = st.query_map([], image_row)?;
    rows.collect()
}

/// One image.
pub fn image(c: &Connection, id: &str) -> DbResult<Option<Image>> {
    c.query_row(
        &format!("SELECT {IMAGE_COLS} FROM images WHERE id = ?1"),
        [id],
        image_row,
    )
    .optional()
}

/// Removes an image record.
pub fn delete_image(c: &Connection, id: &str) -> DbResult<()> {
    c.execute("DELETE FROM images WHERE id = ?1", [id])?;
    Ok(())
}

const INSTANCE_COLS: &str = "id, image_id, instance_type, state, reason, pid, pid_start, dir, ip, tap, mac, client_token, user_data, tags, launched_at, changed_at, terminated_at";

fn instance_row(r: &Row) -> rusqlite::Result<Instance> {
    let tags: String = r.get(13)?;
    let state: String = r.get(3)?;
    let state = state.parse::<InstanceState>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Instance {
        id: r.get(0)?,
        image_id: r.get(1)?,
        instance_type: r.get(2)?,
        state,
        reason: r.get(4)?,
        pid: r.get(5)?,
        pid_start: r.get(6)?,
        dir: r.get(7)?,
        ip: r.get(8)?,
        tap: r.get(9)?,
        mac: r.get(10)?,
        client_token: r.get(11)?,
        user_data: r.get(12)?,
        // Written by `insert_instance` from the same type; unreadable tags read as none
        // rather than hiding the instance.
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        launched_at: r.get(14)?,
        changed_at: r.get(15)?,
        terminated_at: r.get(16)?,
    })
}

/// Adds an instance.
pub fn insert_instance(c: &Connection, i: &Instance) -> DbResult<()> {
    let tags = serde_json::to_string(&i.tags)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    c.execute(
        &format!(
            "INSERT INTO instances ({INSTANCE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ),
        params![
            i.id, i.image_id, i.instance_type, i.state.as_str(), i.reason, i.pid, i.pid_start, i.dir,
            i.ip, i.tap, i.mac, i.client_token, i.user_data, tags, i.launched_at,
            i.changed_at, i.terminated_at
        ],
    )?;
    Ok(())
}

/// Every instance, oldest first.
pub fn instances(c: &Connection) -> DbResult<Vec<Instance>> {
    let mut st = c.prepare(&format!(
        "SELECT {INSTANCE_COLS} FROM instances ORDER BY launched_at, id"
    ))?;
    let rows = st.query_map([], instance_row)?;
    rows.collect()
}

/// One instance.
pub fn instance(c: &Connection, id: &str) -> DbResult<Option<Instance>> {
    c.query_row(
        &format!("SELECT {INSTANCE_COLS} FROM instances WHERE id = ?1"),
        [id],
        instance_row,
    )
    .optional()
}

/// Instances made by a run with `token`.
pub fn instances_by_token(c: &Connection, token: &str) -> DbResult<Vec<Instance>> {
    let mut st = c.prepare(&format!(
        "SELECT {INSTANCE_COLS} FROM instances WHERE client_token = ?1 ORDER BY launched_at, id"
    ))?;
    let rows = st.query_map([token], instance_row)?;
    rows.collect()
}

/// Records a state change (and the process, when there is one).
pub fn set_state(
    c: &Connection,
    id: &str,
    state: InstanceState,
    reason: &str,
    pid: Option<(i64, i64)>,
) -> DbResult<()> {
    let terminated = (state == InstanceState::Terminated).then(now);
    c.execute(
        "UPDATE instances SET state = ?2, reason = ?3, pid = ?4, pid_start = ?5, changed_at = ?6,
         terminated_at = COALESCE(?7, terminated_at) WHERE id = ?1",
        params![
            id,
            state.as_str(),
            reason,
            pid.map(|p| p.0),
            pid.map(|p| p.1),
            now(),
            terminated
        ],
    )?;
    Ok(())
}

/// Forgets instances terminated before `before` (Unix seconds), with their volumes and
/// reservations.
pub fn purge_terminated(c: &Connection, before: i64) -> DbResult<usize> {
    for table in ["volumes", "reservations"] {
        c.execute(
            &format!("DELETE FROM {table} WHERE instance_id IN (SELECT id FROM instances WHERE state = 'terminated' AND terminated_at < ?1)"),
            [before],
        )?;
    }
    c.execute(
        "DELETE FROM instances WHERE state = 'terminated' AND terminated_at < ?1",
        [before],
    )
}

/// Replaces an instance's tags.
pub fn set_tags(
    c: &Connection,
    id: &str,
    tags: &std::collections::BTreeMap<String, String>,
) -> DbResult<()> {
    let tags = serde_json::to_string(tags)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    c.execute(
        "UPDATE instances SET tags = ?2 WHERE id = ?1",
        params![id, tags],
    )?;
    Ok(())
}

/// A run's reservation, as EC2 reports it: its id and the instance's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// `r-` and 17 hex digits.
    pub id: String,
    /// The instance's index in the run (EC2's `amiLaunchIndex`), from 0.
    pub launch_index: u32,
}

/// Records that instance `instance_id` is number `launch_index` of reservation
/// `reservation_id`. (Kept beside `instances`, not in it: the instance record is the
/// JSON API's wire type, shared with emberctl.)
pub fn insert_reservation(
    c: &Connection,
    instance_id: &str,
    reservation_id: &str,
    launch_index: u32,
) -> DbResult<()> {
    c.execute(
        "INSERT INTO reservations (instance_id, reservation_id, launch_index) VALUES (?1, ?2, ?3)",
        params![instance_id, reservation_id, launch_index],
    )?;
    Ok(())
}

/// Every recorded reservation, by instance id (instances made before reservations were
/// recorded have none).
pub fn reservations(c: &Connection) -> DbResult<std::collections::HashMap<String, Reservation>> {
    let mut st = c.prepare("SELECT instance_id, reservation_id, launch_index FROM reservations")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Reservation {
                id: r.get(1)?,
                launch_index: r.get(2)?,
            },
        ))
    })?;
    rows.collect()
}

/// Adds a volume.
pub fn insert_volume(c: &Connection, v: &Volume) -> DbResult<()> {
    c.execute(
        "INSERT INTO volumes (id, instance_id, path, size_bytes, root) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![v.id, v.instance_id, v.path, v.size_bytes, v.root],
    )?;
    Ok(())
}

/// An instance's volumes, root first.
pub fn volumes(c: &Connection, instance_id: &str) -> DbResult<Vec<Volume>> {
    let mut st = c.prepare(
        "SELECT id, instance_id, path, size_bytes, root FROM volumes WHERE instance_id = ?1 ORDER BY root DESC, id",
    )?;
    let rows = st.query_map([instance_id], |r| {
        Ok(Volume {
            id: r.get(0)?,
            instance_id: r.get(1)?,
            path: r.get(2)?,
            size_bytes: r.get(3)?,
            root: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Whether some instance not terminated uses `image_id`.
pub fn image_in_use(c: &Connection, image_id: &str) -> DbResult<bool> {
    c.query_row(
        "SELECT COUNT(*) FROM instances WHERE image_id = ?1 AND state != 'terminated'",
        [image_id],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Addresses held by instances that are not terminated.
pub fn ips_in_use(c: &Connection) -> DbResult<Vec<String>> {
    let mut st = c.prepare("SELECT ip FROM instances WHERE state != 'terminated'")?;
    let rows = st.query_map([], |r| r.get(0))?;
    rows.collect()
}
