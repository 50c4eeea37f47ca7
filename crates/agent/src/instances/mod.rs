//! Instances' lives: every transition EC2 has (pending, running, stopping, stopped,
//! shutting-down, terminated), each written to the state database before it is reported.
//! One module per job:
//!
//! - [`state`]: state transitions and usage sampling (the two happen together).
//! - [`images`]: registering and deregistering images.
//! - [`capacity`]: the host's memory budget and the subnet's addresses.
//! - [`create`]: `run`: checks, then each instance's record and volumes.
//! - [`jail`]: each VMM's jail (its uid, chroot and cgroup), made by `ember-jailer`.
//! - [`launch`]: starting `ember` (jailed) and configuring it over its API.
//! - [`supervise`]: watching VMMs, recording their exits, shutting them down.
//! - [`verbs`]: stop, start, reboot, terminate, console.
//! - [`tags`]: tags written after launch.
//! - [`adopt`]: taking over the VMMs that outlived an agent restart.
//!
//! Domain code returns [`AgentError`]; only the HTTP layer (`crate::error`) turns it into
//! a status and a body.

pub mod adopt;
pub mod capacity;
pub mod create;
pub mod error;
pub mod hibernate;
pub mod images;
pub mod jail;
pub mod launch;
pub mod metadata;
pub mod state;
pub mod supervise;
pub mod tags;
#[cfg(test)]
pub mod testing;
pub mod verbs;

pub use error::AgentError;

use crate::db::{self, Instance};
use crate::meter;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use supervise::Proc;

/// How long a terminated instance stays describable.
pub const TERMINATED_KEPT_S: i64 = 3600;

/// How long raw usage samples are kept (hourly rollups are kept for good).
pub const RAW_SAMPLES_KEPT_MS: i64 = 48 * meter::HOUR_MS;

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the database, images and instances live.
    pub state_dir: PathBuf,
    /// The host bridge instances' taps join.
    pub bridge: String,
    /// The instances' /24: the bridge gets .1, instances .2 to .254.
    pub subnet: Ipv4Addr,
    /// The `ember` binary.
    pub ember: PathBuf,
    /// How long a stop waits for the guest to shut down before killing it.
    pub stop_timeout: Duration,
    /// Where the VMMs' API sockets live (`<id>.sock`): a short path, since a Unix socket
    /// path is at most 107 bytes.
    pub run_dir: PathBuf,
    /// How often usage is sampled (it is also sampled at every state change).
    pub sample_interval: Duration,
    /// How every VMM is jailed.
    pub jail: jail::JailSettings,
    /// The zone instances are told they run in (their metadata's
    /// `placement/availability-zone`).
    pub availability_zone: String,
}

/// The agent's own counters, for `GET /metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// API requests answered, by method and status.
    pub requests: Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    /// EC2 API requests answered, by action (`-` when none was named or known) and status.
    pub ec2_requests: Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
    /// VMM processes started.
    pub launches: std::sync::atomic::AtomicU64,
    /// VMM exits seen.
    pub vmm_exits: std::sync::atomic::AtomicU64,
    /// Usage samples taken.
    pub samples: std::sync::atomic::AtomicU64,
    /// Usage samples that failed (database errors).
    pub sample_failures: std::sync::atomic::AtomicU64,
}

/// The agent.
pub struct Agent {
    /// Settings.
    pub settings: Settings,
    db: Mutex<rusqlite::Connection>,
    procs: Mutex<HashMap<String, Proc>>,
    /// Counters about the agent itself.
    pub stats: Stats,
}

/// Why the agent cannot open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A directory could not be created.
    #[error("{}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--run-dir` leaves no room for a socket name.
    #[error("--run-dir {}: too long for Unix socket paths (at most 82 bytes)", .0.display())]
    RunDirTooLong(PathBuf),
    /// The database could not be opened.
    #[error("state database: {0}")]
    Database(#[from] rusqlite::Error),
}

impl Agent {
    /// An agent on `settings`, its database opened.
    pub fn open(settings: Settings) -> Result<Arc<Agent>, OpenError> {
        let dirs = ["images", "instances"].map(|sub| settings.state_dir.join(sub));
        for dir in dirs
            .iter()
            .chain([&settings.run_dir, &settings.jail.chroot_base])
        {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        // An instance socket path is run_dir + "/i-" + 17 hex + ".sock".
        if settings.run_dir.as_os_str().len() + 25 > 107 {
            return Err(OpenError::RunDirTooLong(settings.run_dir.clone()));
        }
        let db = db::open(&settings.state_dir.join("state.db"))?;
        Ok(Arc::new(Agent {
            settings,
            db: Mutex::new(db),
            procs: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        }))
    }

    /// The API socket of instance `id`'s VMM.
    pub fn api_socket(&self, id: &str) -> PathBuf {
        self.settings.run_dir.join(format!("{id}.sock"))
    }

    /// Instance `inst`'s jail.
    pub fn jail_of(&self, inst: &Instance) -> jail::Jail {
        self.settings.jail.jail(inst, &self.settings.ember)
    }

    /// Removes instance `inst`'s jail and cgroup after its VMM's exit; a cgroup still busy
    /// is retried in the background.
    pub fn clear_jail(&self, inst: &Instance) {
        let jail = self.jail_of(inst);
        if !jail.clear_once() {
            jail.clear_later();
        }
    }

    /// Runs `f` on the database.
    pub fn db<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> db::DbResult<T>,
    ) -> Result<T, AgentError> {
        let c = self.db.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&c)?)
    }

    /// Instance `id`, or [`AgentError::InstanceNotFound`].
    pub fn instance(&self, id: &str) -> Result<Instance, AgentError> {
        self.db(|c| db::instance(c, id))?
            .ok_or_else(|| AgentError::InstanceNotFound { id: id.to_string() })
    }

    /// The procs table (a poisoned lock is still usable: every update is one insert or
    /// remove).
    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Proc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }
}
