//! cgroup v2: the VM's cgroup `<hierarchy>/<parent>/<id>`, the controllers its files need
//! enabled on the way down, its files written, and the handles that join or remove it
//! once the hierarchy is out of the jail's sight.

use crate::error::{JailError, Result};
use crate::fs::open_dir;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the cgroup v2 hierarchy is mounted, from `/proc/mounts`' text (the conventional
/// `/sys/fs/cgroup` if it is one of several).
pub fn find_mount(mounts: &str) -> Option<PathBuf> {
    let found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            // Mount points escape spaces and such as octal (\040).
            (kind == "cgroup2").then(|| PathBuf::from(unescape(dir)))
        })
        .collect();
    found
        .iter()
        .find(|p| p.as_path() == Path::new("/sys/fs/cgroup"))
        .or(found.first())
        .cloned()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut k = 0;
    while k < b.len() {
        let octal = b
            .get(k + 1..k + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[k], octal) {
            (b'\\', Some(d)) if d[0] <= b'3' => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                k += 4;
            }
            (c, _) => {
                out.push(c);
                k += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The controller a cgroup file belongs to (`memory` for `memory.max`); `None` for the
/// core `cgroup.*` files, which need none.
pub fn controller_of(file: &str) -> Option<&str> {
    let c = file.split('.').next()?;
    (c != "cgroup" && !c.is_empty()).then_some(c)
}

/// A made cgroup, not yet joined.
pub struct Cgroup {
    /// Its directory on the host.
    pub dir: PathBuf,
    /// Its parent, for removing it by name.
    parent: OwnedFd,
    /// Its name in the parent.
    name: CString,
    /// Its `cgroup.procs`, opened for joining it after the host's tree is gone.
    procs: File,
    /// The jailer's own `cgroup.procs`, to step back out if a later step fails.
    home: Option<File>,
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(|e| JailError::io("reading", p, e))
}

/// Enables `needed` controllers in `dir`'s `cgroup.subtree_control`, if not yet on.
fn enable(dir: &Path, needed: &[&str]) -> Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let on = read(&path)?;
    for c in needed {
        if !on.split_whitespace().any(|x| x == *c) {
            std::fs::write(&path, format!("+{c}")).map_err(|e| {
                JailError::Cgroup(format!(
                    "enabling the {c} controller in {}: {e}",
                    path.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// The jailer's own cgroup directory, from `/proc/self/cgroup`'s `0::` line.
fn own_cgroup(mount: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

impl Cgroup {
    /// Makes `<mount>/<rel>` (its parents as needed; the last component must be new),
    /// enables the controllers `files` need on the way, and writes each file. On an error
    /// the new cgroup is removed again.
    pub fn create(mount: &Path, rel: &Path, files: &[(String, String)]) -> Result<Cgroup> {
        let available = read(&mount.join("cgroup.controllers"))?;
        let mut needed: Vec<&str> = Vec::new();
        for (file, _) in files {
            if let Some(c) = controller_of(file) {
                if !available.split_whitespace().any(|a| a == c) {
                    return Err(JailError::Cgroup(format!(
                        "--cgroup {file}: the {c} controller is not available in {} (it offers: {})",
                        mount.display(),
                        available.trim()
                    )));
                }
                if !needed.contains(&c) {
                    needed.push(c);
                }
            }
        }
        let mut dir = mount.to_path_buf();
        let comps: Vec<_> = rel.components().collect();
        let (last, ancestors) = comps
            .split_last()
            .ok_or_else(|| JailError::Cgroup("the cgroup path is empty".into()))?;
        for c in ancestors {
            enable(&dir, &needed)?;
            dir.push(c);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(JailError::io("creating", &dir, e)),
            }
        }
        enable(&dir, &needed)?;
        let parent = open_dir(&dir)?;
        dir.push(last);
        std::fs::create_dir(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                JailError::Cgroup(format!(
                    "{} already exists (another VMM with this id?)",
                    dir.display()
                ))
            } else {
                JailError::io("creating", &dir, e)
            }
        })?;
        let name = CString::new(last.as_os_str().as_bytes())
            .map_err(|_| JailError::Cgroup("the cgroup name contains a NUL byte".into()))?;
        let made = Cgroup::open(dir, parent, name, mount);
        let cg = match made {
            Ok(cg) => cg,
            Err((e, parent, name)) => {
                // SAFETY: valid fd and C string; removes the empty directory just made.
                unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) };
                return Err(e);
            }
        };
        for (file, value) in files {
            let p = cg.dir.join(file);
            if !p.is_file() {
                let e = JailError::Cgroup(format!(
                    "--cgroup {file}={value}: {} does not exist (no such cgroup file)",
                    p.display()
                ));
                cg.remove();
                return Err(e);
            }
            if let Err(e) = std::fs::write(&p, value) {
                let e = JailError::Cgroup(format!(
                    "--cgroup {file}={value}: writing {}: {e}",
                    p.display()
                ));
                cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    #[allow(clippy::result_large_err)]
    fn open(
        dir: PathBuf,
        parent: OwnedFd,
        name: CString,
        mount: &Path,
    ) -> std::result::Result<Cgroup, (JailError, OwnedFd, CString)> {
        let procs_path = dir.join("cgroup.procs");
        let procs = match std::fs::OpenOptions::new().write(true).open(&procs_path) {
            Ok(f) => f,
            Err(e) => return Err((JailError::io("opening", procs_path, e), parent, name)),
        };
        let home = own_cgroup(mount).and_then(|d| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
                .ok()
        });
        Ok(Cgroup {
            dir,
            parent,
            name,
            procs,
            home,
        })
    }

    /// Moves this process (and so everything it starts) into the cgroup.
    pub fn join(&mut self) -> Result<()> {
        let pid = std::process::id();
        self.procs
            .write_all(pid.to_string().as_bytes())
            .map_err(|e| JailError::Cgroup(format!("joining {}: {e}", self.dir.display())))
    }

    /// Steps back to the jailer's own cgroup (if it had joined) and removes this one.
    pub fn remove(mut self) {
        if let Some(home) = self.home.as_mut() {
            let _ = home.write_all(std::process::id().to_string().as_bytes());
        }
        // SAFETY: valid fd and C string; fails harmlessly if the cgroup is busy.
        unsafe {
            libc::unlinkat(
                self.parent.as_raw_fd(),
                self.name.as_ptr(),
                libc::AT_REMOVEDIR,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_hierarchy_is_found() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(find_mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let both = "cgroup2 /mnt/x\\040y cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(find_mount(both), Some("/sys/fs/cgroup".into()));
        assert_eq!(unescape("/mnt/x\\040y"), "/mnt/x y");
        assert_eq!(find_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn files_name_their_controller() {
        assert_eq!(controller_of("memory.max"), Some("memory"));
        assert_eq!(controller_of("cpu.max"), Some("cpu"));
        assert_eq!(controller_of("cgroup.max.depth"), None);
    }
}
