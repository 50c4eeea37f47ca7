//! EC2's hibernation: `stop` with `hibernate` pauses the guest, has its VMM write a
//! snapshot (`PUT /snapshot/create`) into a directory of the jail, moves it into the
//! instance's directory and ends the VMM (`stopped`, reason `hibernated`); the next
//! `start` loads it (`PUT /snapshot/load`) in a new VMM instead of booting, so the guest
//! continues where it was. The snapshot lives in the instance directory, so it survives a
//! restart of emberd. One that cannot be loaded is dropped and the instance boots cold,
//! saying so in its state reason.

use super::launch::LaunchError;
use super::supervise::Intent;
use super::{Agent, AgentError};
use agent_types::InstanceState;
use model::snapshot::{
    MemBackend, MemBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType,
};
use model::{Vm, VmState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The directory inside the jail the VMM writes the snapshot into (its user's).
pub const IN_JAIL: &str = "hibernate";
/// The instance directory's subdirectory that keeps it while the instance is stopped.
const KEPT: &str = "hibernation";
const STATE: &str = "vm.snap";
const MEMORY: &str = "vm.mem";
/// Writing guest memory can take a while under emulation or on slow disks.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a hibernation or a resume failed.
#[derive(Debug, thiserror::Error)]
pub enum HibernateError {
    /// The VMM refused or failed a request; its message.
    #[error("{0}: {1}")]
    Vmm(&'static str, uds_client::Error),
    /// A snapshot file could not be moved or linked.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The kept snapshot of the instance whose directory is `dir`, if it has a whole one.
pub fn saved(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let kept = dir.join(KEPT);
    let (state, mem) = (kept.join(STATE), kept.join(MEMORY));
    let regular = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    (regular(&state) && regular(&mem)).then_some((state, mem))
}

/// Disk space the kept snapshot uses, if there is one.
pub fn disk_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let (state, mem) = saved(dir)?;
    let used = |p: &Path| std::fs::symlink_metadata(p).map_or(0, |m| m.blocks() * 512);
    Some(used(&state) + used(&mem))
}

/// Removes the loaded snapshot's links from the jail whose root is `root`. The VMM keeps
/// what it needs (its memory stays mapped from the file), and a later hibernation then
/// writes new files: ember refuses to write over the file its memory is mapped from.
pub fn unlink_loaded(root: &Path) {
    // The directory is the VMM user's; unlinking does not follow a link it put there.
    for name in [STATE, MEMORY] {
        let _ = std::fs::remove_file(root.join(IN_JAIL).join(name));
    }
}

/// Removes the kept snapshot of the instance in `dir`.
pub fn discard(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join(KEPT));
}

/// The load request for a snapshot linked into the jail at [`IN_JAIL`], on tap `tap`.
pub fn load_request(tap: &str) -> SnapshotLoadParams {
    SnapshotLoadParams {
        snapshot_path: format!("/{IN_JAIL}/{STATE}"),
        mem_backend: Some(MemBackend {
            backend_type: MemBackendType::File,
            backend_path: format!("/{IN_JAIL}/{MEMORY}"),
        }),
        mem_file_path: None,
        track_dirty_pages: false,
        enable_diff_snapshots: None,
        resume_vm: true,
        network_overrides: vec![NetworkOverride {
            iface_id: "eth0".into(),
            host_dev_name: tap.into(),
        }],
    }
}

/// Makes the jail's snapshot directory (`root`/[`IN_JAIL`], the VMM user's) and, if
/// `kept` is given, hard-links the kept snapshot into it (the VMM user's, mode 0600:
/// guest memory is the guest's secret).
pub fn furnish(
    root: &Path,
    uid: u32,
    kept: Option<&(PathBuf, PathBuf)>,
) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join(IN_JAIL);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchError::File { path, source }
    };
    std::fs::create_dir(&dir).map_err(err(&dir))?;
    if let Some((state, mem)) = kept {
        for (src, name) in [(state, STATE), (mem, MEMORY)] {
            let dst = dir.join(name);
            std::fs::hard_link(src, &dst).map_err(err(&dst))?;
            std::os::unix::fs::chown(&dst, Some(uid), Some(uid)).map_err(err(&dst))?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600))
                .map_err(err(&dst))?;
        }
    }
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).map_err(err(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err(&dir))
}

impl Agent {
    /// Hibernates a running instance: `stopping` at once; the snapshot and the end of
    /// its VMM follow in the background, then `stopped` (`hibernated`).
    pub async fn hibernate(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<agent_types::Instance, AgentError> {
        let inst = self.instance(id)?;
        match inst.state {
            InstanceState::Running => {}
            InstanceState::Stopping | InstanceState::Stopped => return Ok(inst),
            state => {
                return Err(AgentError::IncorrectState {
                    id: inst.id.clone(),
                    state,
                    allowed: "running",
                    done: "hibernated",
                })
            }
        }
        self.transition(
            id,
            InstanceState::Stopping,
            "user request (hibernate)",
            inst.pid.zip(inst.pid_start),
        )?;
        self.spawn_shut_down(id, Intent::Hibernate, false);
        self.instance(id)
    }

    /// Pauses the guest, has its VMM write the snapshot in the jail, and moves it into
    /// the instance's directory. The VMM still runs (paused) afterwards.
    pub(super) async fn save_for_hibernation(&self, id: &str) -> Result<(), HibernateError> {
        let inst = self.instance(id).map_err(|e| HibernateError::File {
            path: PathBuf::from(id),
            source: std::io::Error::other(e.to_string()),
        })?;
        let vmm = self.vmm(id, SNAPSHOT_TIMEOUT);
        vmm.patch(
            "/vm",
            &Vm {
                state: VmState::Paused,
            },
        )
        .await
        .map_err(|e| HibernateError::Vmm("PATCH /vm", e))?;
        let create = SnapshotCreateParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: format!("/{IN_JAIL}/{STATE}"),
            mem_file_path: format!("/{IN_JAIL}/{MEMORY}"),
            version: None,
        };
        if let Err(e) = vmm.put("/snapshot/create", &create).await {
            let _ = vmm
                .patch(
                    "/vm",
                    &Vm {
                        state: VmState::Resumed,
                    },
                )
                .await;
            return Err(HibernateError::Vmm("PUT /snapshot/create", e));
        }
        self.flush_metrics(id).await;
        let from = self.jail_of(&inst).root.join(IN_JAIL);
        let kept = Path::new(&inst.dir).join(KEPT);
        let moved = tokio::task::spawn_blocking(move || keep(&from, &kept)).await;
        match moved {
            Ok(r) => r,
            Err(e) => Err(HibernateError::File {
                path: PathBuf::from(&inst.dir),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Removes a kept snapshot (a failed hibernation's, or one that was used).
    pub(super) fn discard_hibernation(&self, id: &str) {
        if let Ok(inst) = self.instance(id) {
            discard(Path::new(&inst.dir));
        }
    }
}

/// Moves the snapshot the VMM wrote in `from` (a directory its user owns) to `kept`. Only
/// regular files are taken: what the VMM's user left there is not trusted (a link is
/// moved as a link by rename, and then refused here).
fn keep(from: &Path, kept: &Path) -> Result<(), HibernateError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HibernateError::File { path, source }
    };
    let _ = std::fs::remove_dir_all(kept);
    std::fs::create_dir_all(kept).map_err(err(kept))?;
    for name in [MEMORY, STATE] {
        let (src, dst) = (from.join(name), kept.join(name));
        std::fs::rename(&src, &dst).map_err(err(&src))?;
        let meta = std::fs::symlink_metadata(&dst).map_err(err(&dst))?;
        if !meta.is_file() {
            discard(kept.parent().unwrap_or(kept));
            return Err(HibernateError::File {
                path: src,
                source: std::io::Error::other("not a regular file"),
            });
        }
    }
    Ok(())
}
