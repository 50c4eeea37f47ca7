//! The command line: Firecracker's jailer flags, checked into a [`Spec`] before anything is
//! touched, so a bad flag leaves nothing behind.

use crate::error::{JailError, Result};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// The longest `--id` (Firecracker's limit).
pub const MAX_ID_LEN: usize = 64;

/// When no `--resource-limit no-file` is given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// What `--help` prints.
pub const HELP: &str = "\
Runs ember in a chroot, a cgroup and its own mount namespace, as an unprivileged user

Usage: ember-jailer --id <ID> --exec-file <PATH> --uid <UID> --gid <GID> [OPTIONS] [-- <VMM ARGS>...]

Options:
      --id <ID>                  The VM's id: letters, digits and hyphens, at most 64
      --exec-file <PATH>         The VMM binary (statically linked: the jail holds nothing
                                 else)
      --uid <UID>                The user the VMM runs as
      --gid <GID>                The group the VMM runs as
      --chroot-base-dir <DIR>    Where jails are made: <base>/<exec file name>/<id>/root
                                 [default: /srv/jailer]
      --netns <PATH>             A network namespace to join (a path such as
                                 /var/run/netns/NAME)
      --cgroup <FILE=VALUE>      A cgroup file and its value (memory.max=268435456);
                                 repeatable
      --cgroup-version <N>       The cgroup hierarchy: 2 (the unified one). 1 is accepted
                                 only with no --cgroup [default: 2]
      --parent-cgroup <PATH>     The cgroup the VM's cgroup is made in, relative to the
                                 hierarchy's root (default: the exec file's name)
      --resource-limit <RESOURCE=VALUE>
                                 A resource limit, fsize=BYTES or no-file=N; repeatable
                                 (no-file defaults to 2048)
      --daemonize                Call setsid() and point stdin, stdout and stderr at
                                 /dev/null before the exec
      --new-pid-ns               Run the VMM as pid 1 of a new PID namespace; its pid (as
                                 this host sees it) is written to <exec file name>.pid in
                                 the jail
      --allow-root               Allow --uid 0 or --gid 0 (refused by default: the point
                                 of a jail is not root)
  -h, --help                     Print help
  -V, --version                  Print version
";

/// ember-jailer's flags: Firecracker's jailer's, so tools that drive it drive this one.
/// Parsed with lexopt (as ember's are): the jailer runs on every jailed VM's start, and
/// clap built its whole command model first (about 9 ms of it under emulation).
#[derive(Debug)]
pub struct Args {
    /// `--id`: the VM's id, letters, digits and hyphens, at most 64.
    pub id: String,
    /// `--exec-file`: the VMM binary (statically linked: the jail holds nothing else).
    pub exec_file: PathBuf,
    /// `--uid`: the user the VMM runs as.
    pub uid: u32,
    /// `--gid`: the group the VMM runs as.
    pub gid: u32,
    /// `--chroot-base-dir`: where jails are made, `<base>/<exec file name>/<id>/root`.
    pub chroot_base_dir: PathBuf,
    /// `--netns`: a network namespace to join (a path such as /var/run/netns/NAME).
    pub netns: Option<PathBuf>,
    /// `--cgroup`: cgroup files and values (`memory.max=268435456`), as given.
    pub cgroup: Vec<String>,
    /// `--cgroup-version`: 2 (the unified hierarchy); 1 is accepted only with no --cgroup.
    pub cgroup_version: String,
    /// `--parent-cgroup`: the cgroup the VM's cgroup is made in, relative to the
    /// hierarchy's root (default: the exec file's name).
    pub parent_cgroup: Option<String>,
    /// `--resource-limit`: `fsize=BYTES` or `no-file=N`, as given.
    pub resource_limit: Vec<String>,
    /// `--daemonize`: setsid() and /dev/null for stdio before the exec.
    pub daemonize: bool,
    /// `--new-pid-ns`: the VMM as pid 1 of a new PID namespace.
    pub new_pid_ns: bool,
    /// `--allow-root`: allow --uid 0 or --gid 0.
    pub allow_root: bool,
    /// The VMM's own arguments, after `--`.
    pub extra: Vec<OsString>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Make the jail and exec the VMM in it.
    Jail(Box<Args>),
    /// Print [`HELP`].
    Help,
    /// Print the version.
    Version,
}

fn usage(e: lexopt::Error) -> JailError {
    JailError::Usage(e.to_string())
}

/// A flag's value as text.
fn text(flag: &'static str, value: OsString) -> Result<String> {
    value
        .into_string()
        .map_err(|v| JailError::flag(flag, v.to_string_lossy(), "must be UTF-8"))
}

fn id_number(flag: &'static str, value: OsString) -> Result<u32> {
    let value = text(flag, value)?;
    value
        .parse()
        .map_err(|_| JailError::flag(flag, value, "must be a whole number up to 4294967295"))
}

/// Parses `argv` (without the program name): the jailer's flags, then after the first
/// `--` the VMM's own arguments, passed on untouched.
pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Result<Command> {
    use lexopt::prelude::*;
    let mut argv: Vec<OsString> = argv.into_iter().collect();
    let extra = match argv.iter().position(|a| a == "--") {
        Some(i) => {
            let rest = argv.split_off(i + 1);
            argv.pop();
            rest
        }
        None => Vec::new(),
    };
    let mut p = lexopt::Parser::from_args(argv);
    let (mut id, mut exec_file, mut uid, mut gid) = (None, None, None, None);
    let mut a = Args {
        id: String::new(),
        exec_file: PathBuf::new(),
        uid: 0,
        gid: 0,
        chroot_base_dir: PathBuf::from("/srv/jailer"),
        netns: None,
        cgroup: Vec::new(),
        cgroup_version: "2".into(),
        parent_cgroup: None,
        resource_limit: Vec::new(),
        daemonize: false,
        new_pid_ns: false,
        allow_root: false,
        extra,
    };
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("id") => id = Some(text("--id", p.value().map_err(usage)?)?),
            Long("exec-file") => exec_file = Some(PathBuf::from(p.value().map_err(usage)?)),
            Long("uid") => uid = Some(id_number("--uid", p.value().map_err(usage)?)?),
            Long("gid") => gid = Some(id_number("--gid", p.value().map_err(usage)?)?),
            Long("chroot-base-dir") => a.chroot_base_dir = p.value().map_err(usage)?.into(),
            Long("netns") => a.netns = Some(p.value().map_err(usage)?.into()),
            Long("cgroup") => a.cgroup.push(text("--cgroup", p.value().map_err(usage)?)?),
            Long("cgroup-version") => {
                a.cgroup_version = text("--cgroup-version", p.value().map_err(usage)?)?
            }
            Long("parent-cgroup") => {
                a.parent_cgroup = Some(text("--parent-cgroup", p.value().map_err(usage)?)?)
            }
            Long("resource-limit") => a
                .resource_limit
                .push(text("--resource-limit", p.value().map_err(usage)?)?),
            Long("daemonize") => a.daemonize = true,
            Long("new-pid-ns") => a.new_pid_ns = true,
            Long("allow-root") => a.allow_root = true,
            other => return Err(usage(other.unexpected())),
        }
    }
    let missing = |flag: &str| JailError::Usage(format!("missing {flag}"));
    a.id = id.ok_or_else(|| missing("--id"))?;
    a.exec_file = exec_file.ok_or_else(|| missing("--exec-file"))?;
    a.uid = uid.ok_or_else(|| missing("--uid"))?;
    a.gid = gid.ok_or_else(|| missing("--gid"))?;
    Ok(Command::Jail(Box::new(a)))
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
        match parse(argv.into_iter().skip(1).map(OsString::from))? {
            Command::Jail(a) => a.into_spec(),
            other => panic!("not a jail: {other:?}"),
        }
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

    #[test]
    fn usage_errors_name_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus"], "invalid option '--bogus'"),
            (&["stray"], "unexpected argument \"stray\""),
            (&["--netns"], "missing argument for option '--netns'"),
            (&["--uid", "me"], "--uid \"me\": must be a whole number"),
            (&["--gid", "-1"], "--gid \"-1\": must be a whole number"),
        ];
        for (flags, want) in cases {
            let e = spec(flags).unwrap_err().to_string();
            assert!(e.contains(want), "{flags:?}: {e}");
        }
        for flag in ["--id", "--exec-file", "--uid", "--gid"] {
            let argv: Vec<OsString> =
                ["--id", "a", "--exec-file", "/e", "--uid", "1", "--gid", "1"]
                    .chunks(2)
                    .filter(|kv| kv[0] != flag)
                    .flatten()
                    .map(OsString::from)
                    .collect();
            let e = parse(argv).unwrap_err().to_string();
            assert_eq!(e, format!("missing {flag} (see --help)"));
        }
        // After `--`, everything is the VMM's, flags that look like the jailer's included.
        let s = spec(&["--", "--netns", "x", "--", "--bogus"]).unwrap();
        assert_eq!(s.netns, None);
        assert_eq!(
            s.extra,
            ["--netns", "x", "--", "--bogus"]
                .map(OsString::from)
                .to_vec()
        );
        assert!(matches!(parse(["-h".into()]).unwrap(), Command::Help));
        assert!(matches!(
            parse(["--version".into()]).unwrap(),
            Command::Version
        ));
    }
}
