//! The order of operations (Firecracker's jailer's): everything that can be checked is
//! checked before anything is made; what is made is recorded, and removed again if a
//! later step fails, so a failed jailer leaves no half-made jail behind (and in a jail
//! directory the caller made first, only what the jailer added goes).

use crate::args::Spec;
use crate::cgroup::{self, Cgroup};
use crate::error::{JailError, Result};
use crate::{fs, sys};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;

/// What a failure must take down again.
#[derive(Default)]
struct Undo {
    /// The jail directory, or what was made in it.
    jail: Option<fs::JailDir>,
    /// The VM's cgroup.
    cgroup: Option<Cgroup>,
}

impl Undo {
    fn run(self) {
        if let Some(cg) = self.cgroup {
            cg.remove();
        }
        if let Some(jail) = self.jail {
            jail.undo();
        }
    }
}

/// Builds the jail and execs the VMM in it. Returns only on failure (after removing
/// what it made), or in the parent of a `--new-pid-ns` child once its pid is written.
pub fn run(spec: Spec, start_us: u64) -> Result<()> {
    sys::close_inherited_fds()?;
    fs::check_exec_file(&spec.exec_file)?;
    let null = if spec.daemonize {
        sys::check_can_daemonize()?;
        Some(sys::open_dev_null()?)
    } else {
        None
    };
    let netns = match &spec.netns {
        Some(p) => Some((sys::open_netns(p)?, p.clone())),
        None => None,
    };
    let cgroup_mount = match &spec.cgroup_path {
        Some(_) => {
            let mounts = std::fs::read_to_string("/proc/mounts")
                .map_err(|e| JailError::io("reading", "/proc/mounts", e))?;
            Some(cgroup::find_mount(&mounts).ok_or_else(|| {
                JailError::Cgroup(
                    "no cgroup v2 hierarchy is mounted (mount one: mount -t cgroup2 none /sys/fs/cgroup)"
                        .into(),
                )
            })?)
        }
        None => None,
    };
    fs::check_base(
        spec.jail_dir
            .parent()
            .and_then(|p| p.parent())
            .unwrap_or(&spec.jail_dir),
    )?;
    let mut undo = Undo {
        jail: Some(fs::create_jail_dir(&spec)?),
        cgroup: None,
    };
    match build_and_exec(&spec, start_us, null, netns, cgroup_mount, &mut undo) {
        Ok(()) => Ok(()),
        Err(e) => {
            undo.run();
            Err(e)
        }
    }
}

fn build_and_exec(
    spec: &Spec,
    start_us: u64,
    null: Option<OwnedFd>,
    netns: Option<(OwnedFd, std::path::PathBuf)>,
    cgroup_mount: Option<std::path::PathBuf>,
    undo: &mut Undo,
) -> Result<()> {
    if let Some(jail) = undo.jail.as_mut() {
        fs::populate(spec, jail)?;
    }
    sys::set_rlimits(&spec.rlimits)?;
    if let (Some(mount), Some(rel)) = (&cgroup_mount, &spec.cgroup_path) {
        undo.cgroup = Some(Cgroup::create(mount, rel, &spec.cgroups)?);
    }
    if let Some((fd, path)) = &netns {
        sys::join_netns(fd, path)?;
    }
    drop(netns);
    sys::enter_jail(&spec.root())?;
    if let Some(cg) = undo.cgroup.as_mut() {
        cg.join()?;
    }
    if let Some(null) = null {
        sys::daemonize(null)?;
    }
    if spec.new_pid_ns {
        if let sys::Side::Parent(pid) = sys::fork_into_pid_ns()? {
            let file = format!("/{}.pid", spec.exec_name);
            // A new file (O_EXCL: never through a link the child could have put there).
            let _ = std::fs::remove_file(&file);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
                .and_then(|mut f| std::io::Write::write_all(&mut f, pid.to_string().as_bytes()))
                .map_err(|e| JailError::io("writing", &file, e))?;
            // The jail now belongs to the child: nothing to undo here.
            *undo = Undo::default();
            return Ok(());
        }
    }
    sys::drop_privileges(spec.uid, spec.gid)?;
    let cpu_us = sys::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).to_string();
    let mut argv: Vec<OsString> = vec![
        "--id".into(),
        spec.id.clone().into(),
        "--start-time-us".into(),
        start_us.to_string().into(),
        "--start-time-cpu-us".into(),
        cpu_us.clone().into(),
        "--parent-cpu-time-us".into(),
        cpu_us.into(),
    ];
    argv.extend(spec.extra.iter().cloned());
    let exec = format!("/{}", spec.exec_name);
    let err = std::process::Command::new(&exec)
        .args(argv)
        .env_clear()
        .exec();
    Err(JailError::Sys {
        call: format!("exec {exec} in the jail"),
        source: err,
    })
}
