//! The command line: Firecracker's jailer flags, checked into a [`Spec`] before anything is
//! touched, so a bad flag leaves nothing behind.

use crate::error::{JailError, Result};
use clap::Parser;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// The longest `--id` (Firecracker's limit).
pub const MAX_ID_LEN: usize = 64;

/// When no `--resource-limit no-file` is given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// ember-jailer's flags: Firecracker's jailer's, so tools that drive it drive this one.
#[derive(Parser, Debug)]
#[command(
    name = "ember-jailer",
    version,
    about = "Runs ember in a chroot, a cgroup and its own mount namespace, as an unprivileged user"
)]
pub struct Args {
    /// The VM's id: letters, digits and hyphens, at most 64.
    #[arg(long)]
    pub id: String,
    /// The VMM binary (statically linked: the jail holds nothing else).
    #[arg(long = "exec-file", value_name = "PATH")]
    pub exec_file: PathBuf,
    /// The user the VMM runs as.
    #[arg(long)]
    pub uid: u32,
    /// The group the VMM runs as.
    #[arg(long)]
    pub gid: u32,
    /// Where jails are made: `<base>/<exec file name>/<id>/root`.
    #[arg(
        long = "chroot-base-dir",
        value_name = "DIR",
        default_value = "/srv/jailer"
    )]
    pub chroot_base_dir: PathBuf,
    /// A network namespace to join (a path such as /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// A cgroup file and its value (`memory.max=268435456`); repeatable.
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    pub cgroup: Vec<String>,
    /// The cgroup hierarchy: 2 (the unified one). 1 is accepted only with no --cgroup.
    #[arg(long = "cgroup-version", default_value = "2")]
    pub cgroup_version: String,
    /// The cgroup the VM's cgroup is made in, relative to the hierarchy's root
    /// (default: the exec file's name).
    #[arg(long = "parent-cgroup", value_name = "PATH")]
    pub parent_cgroup: Option<String>,
    /// A resource limit, `fsize=BYTES` or `no-file=N`; repeatable (no-file defaults to 2048).
    #[arg(long = "resource-limit", value_name = "RESOURCE=VALUE")]
    pub resource_limit: Vec<String>,
    /// Call setsid() and point stdin, stdout and stderr at /dev/null before the exec.
    #[arg(long)]
    pub daemonize: bool,
    /// Run the VMM as pid 1 of a new PID namespace; its pid (as this host sees it) is
    /// written to `<exec file name>.pid` in the jail.
    #[arg(long = "new-pid-ns")]
    pub new_pid_ns: bool,
    /// Allow --uid 0 or --gid 0 (refused by default: the point of a jail is not root).
    #[arg(long = "allow-root")]
    pub allow_root: bool,
    /// The VMM's own arguments, after `--`.
    #[arg(last = true, value_name = "VMM ARGS")]
    pub extra: Vec<OsString>,
}

/// A limit `setrlimit` sets before the exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// RLIMIT_FSIZE: the largest file the VMM may write, in bytes.
    Fsize,
    /// RLIMIT_NOFILE: one more than the highest file descriptor.
    NoFile,
}

/// What the jail is, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The VM's id.
    pub id: String,
    /// The VMM binary on the host.
    pub exec_file: PathBuf,
    /// Its last path component: the binary's name in the jail and the jail's directory.
    pub exec_name: String,
    /// The VMM's user.
    pub uid: u32,
    /// The VMM's group.
    pub gid: u32,
    /// `<base>/<exec name>/<id>`: everything of this jail lives in it.
    pub jail_dir: PathBuf,
    /// The network namespace to join.
    pub netns: Option<PathBuf>,
    /// cgroup files and values, in the order given.
    pub cgroups: Vec<(String, String)>,
    /// The VM's cgroup relative to the hierarchy's root, if one is made.
    pub cgroup_path: Option<PathBuf>,
    /// Resource limits, in the order given (with no-file's default).
    pub rlimits: Vec<(Resource, u64)>,
    /// setsid() and /dev/null for stdio.
    pub daemonize: bool,
    /// A new PID namespace.
    pub new_pid_ns: bool,
    /// The VMM's arguments after the jailer's own.
    pub extra: Vec<OsString>,
}

impl Spec {
    /// The jail's root directory (`/` for the VMM).
    pub fn root(&self) -> PathBuf {
        self.jail_dir.join("root")
    }
}

/// Letters, digits and hyphens, 1 to 64 of them.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(JailError::flag(
            "--id",
            id,
            format!("must be 1 to {MAX_ID_LEN} characters"),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(JailError::flag(
            "--id",
            id,
            format!("{c:?} is not allowed: only letters, digits and hyphens"),
        ));
    }
    Ok(())
}

/// `FILE=VALUE` with a plain file name (no `/`, not `.` or `..`).
fn parse_cgroup(s: &str) -> Result<(String, String)> {
    let rule = "must be FILE=VALUE with a cgroup file name such as memory.max";
    let (file, value) = s
        .split_once('=')
        .ok_or_else(|| JailError::flag("--cgroup", s, rule))?;
    if file.is_empty() || file.contains('/') || file == "." || file == ".." || value.is_empty() {
        return Err(JailError::flag("--cgroup", s, rule));
    }
    Ok((file.to_string(), value.to_string()))
}

/// `fsize=N` or `no-file=N`.
fn parse_rlimit(s: &str) -> Result<(Resource, u64)> {
    let (name, value) = s.split_once('=').ok_or_else(|| {
        JailError::flag(
            "--resource-limit",
            s,
            "must be RESOURCE=VALUE (fsize or no-file)",
        )
    })?;
    let resource = match name {
        "fsize" => Resource::Fsize,
        "no-file" => Resource::NoFile,
        _ => {
            return Err(JailError::flag(
                "--resource-limit",
                s,
                format!("unknown resource {name:?}: fsize or no-file"),
            ))
        }
    };
    let value = value
        .parse::<u64>()
        .map_err(|_| JailError::flag("--resource-limit", s, "the value must be a whole number"))?;
    Ok((resource, value))
}

/// A relative path of plain components (no `..`, not absolute, not empty).
fn check_parent_cgroup(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    if p.is_empty() || !plain {
        return Err(JailError::flag(
            "--parent-cgroup",
            p,
            "must be a relative path without . or .. (for example ember/tenant-a)",
        ));
    }
    Ok(path.to_path_buf())
}

impl Args {
    /// Checks every flag; nothing on the host is changed.
    pub fn into_spec(self) -> Result<Spec> {
        check_id(&self.id)?;
        if (self.uid == 0 || self.gid == 0) && !self.allow_root {
            let (flag, v) = if self.uid == 0 {
                ("--uid", self.uid)
            } else {
                ("--gid", self.gid)
            };
            return Err(JailError::flag(
                flag,
                v.to_string(),
                "the VMM would run as root; pass --allow-root to allow it",
            ));
        }
        let exec_name = self
            .exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| JailError::path("--exec-file", &self.exec_file, "has no file name"))?
            .to_string();
        if !self.chroot_base_dir.is_absolute() {
            return Err(JailError::path(
                "--chroot-base-dir",
                &self.chroot_base_dir,
                "must be an absolute path",
            ));
        }
        let cgroups = self
            .cgroup
            .iter()
            .map(|s| parse_cgroup(s))
            .collect::<Result<Vec<_>>>()?;
        match self.cgroup_version.as_str() {
            "2" => {}
            "1" if cgroups.is_empty() && self.parent_cgroup.is_none() => {}
            "1" => {
                return Err(JailError::flag(
                    "--cgroup-version",
                    "1",
                    "cgroup v1 is not supported; use --cgroup-version 2 (the unified hierarchy)",
                ))
            }
            v => return Err(JailError::flag("--cgroup-version", v, "must be 1 or 2")),
        }
        let parent = match &self.parent_cgroup {
            Some(p) => Some(check_parent_cgroup(p)?),
            None => None,
        };
        // A cgroup is made when there is something to put in it or a place asked for it.
        let cgroup_path = (self.cgroup_version == "2" && (!cgroups.is_empty() || parent.is_some()))
            .then(|| {
                parent
                    .unwrap_or_else(|| PathBuf::from(&exec_name))
                    .join(&self.id)
            });
        let mut rlimits = self
            .resource_limit
            .iter()
            .map(|s| parse_rlimit(s))
            .collect::<Result<Vec<_>>>()?;
        if !rlimits.iter().any(|(r, _)| *r == Resource::NoFile) {
            rlimits.push((Resource::NoFile, DEFAULT_NO_FILE));
        }
        Ok(Spec {
            jail_dir: self.chroot_base_dir.join(&exec_name).join(&self.id),
            id: self.id,
            exec_file: self.exec_file,
            exec_name,
            uid: self.uid,
            gid: self.gid,
            netns: self.netns,
            cgroups,
            cgroup_path,
            rlimits,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            extra: self.extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &[&str]) -> Result<Spec> {
        let mut argv = vec!["ember-jailer"];
        let defaults = [
            ("--id", "vm-1"),
            ("--exec-file", "/usr/bin/ember"),
            ("--uid", "1000"),
            ("--gid", "1000"),
        ];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                argv.extend([flag, value]);
            }
        }
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|e| JailError::flag("argv", "", e.to_string()))?
            .into_spec()
    }

    #[test]
    fn firecracker_layout_and_defaults() {
        let s = spec(&["--", "--api-sock", "/api.sock"]).unwrap();
        assert_eq!(s.jail_dir, PathBuf::from("/srv/jailer/ember/vm-1"));
        assert_eq!(s.root(), PathBuf::from("/srv/jailer/ember/vm-1/root"));
        assert_eq!(s.exec_name, "ember");
        assert_eq!(s.rlimits, vec![(Resource::NoFile, DEFAULT_NO_FILE)]);
        assert_eq!(s.cgroup_path, None);
        assert_eq!(
            s.extra,
            vec![OsString::from("--api-sock"), "/api.sock".into()]
        );
    }

    #[test]
    fn cgroups_go_under_the_parent_or_the_exec_name() {
        let s = spec(&["--cgroup", "memory.max=1G", "--cgroup", "pids.max=64"]).unwrap();
        assert_eq!(s.cgroup_path, Some(PathBuf::from("ember/vm-1")));
        assert_eq!(s.cgroups[1], ("pids.max".into(), "64".into()));
        let s = spec(&["--parent-cgroup", "a/b", "--cgroup", "cpu.max=max"]).unwrap();
        assert_eq!(s.cgroup_path, Some(PathBuf::from("a/b/vm-1")));
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_rule() {
        let cases: &[(&[&str], &str)] = &[
            (&["--id", "a/b"], "--id \"a/b\": '/' is not allowed"),
            (
                &["--cgroup", "memory.max"],
                "--cgroup \"memory.max\": must be FILE=VALUE",
            ),
            (
                &["--cgroup", "../x=1"],
                "--cgroup \"../x=1\": must be FILE=VALUE",
            ),
            (&["--resource-limit", "core=1"], "unknown resource \"core\""),
            (&["--resource-limit", "fsize=big"], "must be a whole number"),
            (
                &["--parent-cgroup", "/abs"],
                "--parent-cgroup \"/abs\": must be a relative",
            ),
            (&["--parent-cgroup", "a/../b"], "must be a relative path"),
            (
                &["--cgroup-version", "3"],
                "--cgroup-version \"3\": must be 1 or 2",
            ),
            (
                &["--cgroup-version", "1", "--cgroup", "pids.max=1"],
                "cgroup v1 is not supported",
            ),
            (&["--uid", "0"], "--uid \"0\": the VMM would run as root"),
            (
                &["--chroot-base-dir", "rel"],
                "--chroot-base-dir rel: must be an absolute",
            ),
        ];
        for (flags, want) in cases {
            let e = spec(flags).unwrap_err().to_string();
            assert!(e.contains(want), "{flags:?}: {e}");
        }
        let long = "x".repeat(65);
        let e = spec(&["--id", &long]).unwrap_err().to_string();
        assert!(e.contains("must be 1 to 64 characters"), "{e}");
        assert!(spec(&["--uid", "0", "--allow-root"]).is_ok());
        assert!(spec(&["--cgroup-version", "1"]).is_ok());
    }
}
