//! Jails: every instance's VMM runs under `ember-jailer`, as a user of its own (from the
//! configured uid range: the range's start plus the last octet of the instance's address,
//! which no two live instances share), in a chroot that holds hard links of its kernel,
//! initrd, volumes and metrics file and nothing else, and in a cgroup v2 whose limits come
//! from its type. The jail and the cgroup are removed whenever the VMM ends.

use super::launch::{LaunchError, VmmSetup};
use crate::db::Instance;
use crate::types::InstanceType;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The cgroup every instance's cgroup is made in, below the hierarchy's root.
pub const CGROUP_PARENT: &str = "emberd";

/// Where the VMM makes its API socket, inside its jail.
pub const SOCKET_IN_JAIL: &str = "/run/api.sock";

/// How jails are made (from emberd's flags).
#[derive(Debug, Clone)]
pub struct JailSettings {
    /// The `ember-jailer` binary.
    pub jailer: PathBuf,
    /// Its `--chroot-base-dir` (on the state directory's file system: volumes are hard
    /// linked into jails, never copied).
    pub chroot_base: PathBuf,
    /// The first uid (and gid) of the range; an instance gets `start + last octet`.
    pub uid_start: u32,
    /// Memory allowed to a VMM beyond its guest's (`memory.max` = guest + this).
    pub memory_overhead_mib: u64,
    /// The cgroup v2 hierarchy's mount point.
    pub cgroup_root: PathBuf,
}

/// How many tasks (threads) a VMM's cgroup may hold: ember runs a few of its own, one per
/// vCPU and one per device.
pub const PIDS_MAX: u32 = 64;

/// One instance's jail, as paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// `<base>/<exec name>/<id>`: removed as a whole.
    pub dir: PathBuf,
    /// The VMM's `/`.
    pub root: PathBuf,
    /// The VMM's uid and gid.
    pub uid: u32,
    /// The instance's cgroup directory.
    pub cgroup: PathBuf,
}

/// The cgroup v2 mount point in `/proc/mounts`' text.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    let all: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1])
        })
        .collect();
    all.iter()
        .find(|p| **p == "/sys/fs/cgroup")
        .or(all.first())
        .map(PathBuf::from)
}

impl JailSettings {
    /// Instance `inst`'s jail for VMM binary `ember`.
    pub fn jail(&self, inst: &Instance, ember: &Path) -> Jail {
        let octet = inst
            .ip
            .parse::<Ipv4Addr>()
            .map(|a| a.octets()[3])
            .unwrap_or(0);
        let exec = ember.file_name().map_or("ember".into(), |n| n.to_owned());
        let dir = self.chroot_base.join(exec).join(&inst.id);
        Jail {
            root: dir.join("root"),
            dir,
            uid: self.uid_start + u32::from(octet),
            cgroup: self.cgroup_root.join(CGROUP_PARENT).join(&inst.id),
        }
    }

    /// The jailer's command line for `jail` of instance `id` of type `itype`.
    pub fn args(&self, jail: &Jail, id: &str, itype: &InstanceType, ember: &Path) -> Vec<String> {
        let period = 100_000u64;
        let memory = (itype.memory_mib + self.memory_overhead_mib) << 20;
        [
            "--id",
            id,
            "--exec-file",
            &ember.display().to_string(),
            "--uid",
            &jail.uid.to_string(),
            "--gid",
            &jail.uid.to_string(),
            "--chroot-base-dir",
            &self.chroot_base.display().to_string(),
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            CGROUP_PARENT,
            "--cgroup",
            &format!("cpu.max={} {period}", u64::from(itype.vcpus) * period),
            "--cgroup",
            &format!("memory.max={memory}"),
            "--cgroup",
            &format!("pids.max={PIDS_MAX}"),
            "--",
            "--api-sock",
            SOCKET_IN_JAIL,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Links `src` into the jail as `name`: a hard link (the same file: a volume's writes land
/// in it), or for a read-only boot file on another file system, a copy.
fn link_in(src: &Path, root: &Path, name: &str, copy_ok: bool) -> Result<String, LaunchError> {
    let dst = root.join(name);
    let _ = std::fs::remove_file(&dst);
    match std::fs::hard_link(src, &dst) {
        Ok(()) => {}
        Err(e) if copy_ok && e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(src, &dst).map_err(|source| LaunchError::File {
                path: dst.clone(),
                source,
            })?;
        }
        Err(source) => {
            return Err(LaunchError::File {
                path: dst.clone(),
                source,
            })
        }
    }
    Ok(format!("/{name}"))
}

/// Gives `path` to the VMM's user alone (mode 0600).
fn own(path: &Path, uid: u32) -> Result<(), LaunchError> {
    let err = |source| LaunchError::File {
        path: path.to_path_buf(),
        source,
    };
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)
}

impl Jail {
    /// The VMM's API socket as the host sees it.
    pub fn socket(&self) -> PathBuf {
        self.root.join(SOCKET_IN_JAIL.trim_start_matches('/'))
    }

    /// Puts every file `setup` names into the jail (made by [`Jail::prepare`]) and
    /// rewrites the paths to the jail's view. Volumes, the user data and the metrics file become the VMM user's (mode
    /// 0600: no other instance's VMM can open them); boot files stay root's, readable.
    fn furnish(&self, setup: &mut VmmSetup) -> Result<(), LaunchError> {
        let boot = |p: &str, name: &str| -> Result<String, LaunchError> {
            let inside = link_in(Path::new(p), &self.root, name, true)?;
            // Readable by the VMM's user (an image's files are not secret to its instances).
            let linked = self.root.join(name);
            std::fs::set_permissions(&linked, std::fs::Permissions::from_mode(0o644)).map_err(
                |source| LaunchError::File {
                    path: linked,
                    source,
                },
            )?;
            Ok(inside)
        };
        setup.boot.kernel_image_path = boot(&setup.boot.kernel_image_path.clone(), "kernel")?;
        if let Some(initrd) = setup.boot.initrd_path.clone() {
            setup.boot.initrd_path = Some(boot(&initrd, "initrd")?);
        }
        for d in &mut setup.drives {
            if let Some(p) = d.path_on_host.clone() {
                let p = PathBuf::from(p);
                own(&p, self.uid)?;
                d.path_on_host = Some(link_in(
                    &p,
                    &self.root,
                    &format!("{}.img", d.drive_id),
                    false,
                )?);
            }
        }
        let metrics = PathBuf::from(&setup.metrics.metrics_path);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics)
            .map_err(|source| LaunchError::File {
                path: metrics.clone(),
                source,
            })?;
        own(&metrics, self.uid)?;
        setup.metrics.metrics_path = link_in(&metrics, &self.root, "metrics.jsonl", false)?;
        Ok(())
    }

    /// SIGKILLs every process in the instance's cgroup (`cgroup.kill`, Linux 5.14), the
    /// VMM and anything it started.
    pub fn kill_all(&self) {
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
    }

    /// Makes the jail's root (root's, empty) and puts the instance's files in it, before
    /// the jailer runs: nothing of the VMM's user is in the jail yet, so no link it made
    /// can be followed. The jailer then uses this directory as it finds it.
    pub fn prepare(&self, setup: &mut VmmSetup) -> Result<(), LaunchError> {
        if self.dir.exists() {
            return Err(LaunchError::File {
                path: self.dir.clone(),
                source: std::io::Error::other(
                    "an earlier jail of this instance could not be removed",
                ),
            });
        }
        std::fs::create_dir_all(&self.root).map_err(|source| LaunchError::File {
            path: self.root.clone(),
            source,
        })?;
        self.furnish(setup)
    }

    /// The CPU time of everything in the instance's cgroup (`cpu.stat`'s `usage_usec`):
    /// the VMM's whole process, its vCPU threads included.
    pub fn cpu_usage_us(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.cgroup.join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Removes the jail (hard links only: the originals stay) and tries once to remove the
    /// cgroup; returns whether the cgroup is gone. Call it once the VMM has exited.
    pub fn clear_once(&self) -> bool {
        // Whatever still runs in the cgroup goes first: a VMM that forked a process
        // must not outlive its instance (holding its volumes, its uid, its cgroup).
        self.kill_all();
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                log::warn!("{}: cannot remove the jail: {e}", self.dir.display());
            }
        }
        match std::fs::remove_dir(&self.cgroup) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// [`Jail::clear_once`], retrying the cgroup for up to a second: it can stay busy for
    /// a moment after the VMM's exit. Blocks: for a launch, before it makes a new jail.
    pub fn clear(&self) {
        for _ in 0..50 {
            if self.clear_once() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        log::warn!(
            "{}: cannot remove the cgroup (still busy)",
            self.cgroup.display()
        );
    }

    /// Retries removing the cgroup in the background while no new jail of the instance
    /// exists (a start may be making one).
    pub fn clear_later(self) {
        std::thread::spawn(move || {
            for _ in 0..50 {
                std::thread::sleep(std::time::Duration::from_millis(20));
                if self.dir.exists() || self.clear_once() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_hierarchy_is_found() {
        let m = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(m), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0"), None);
    }
}
