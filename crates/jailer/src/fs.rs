//! The jail on disk: `<base>/<exec name>/<id>/root` with the VMM binary (linked or copied), the
//! device nodes it opens, and `/run` for its socket; and the removal of all of it through
//! directory file descriptors, which still work once the host's tree is out of sight.

use crate::args::Spec;
use crate::error::{JailError, Result};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// ELF's program header type for an interpreter request (a dynamically linked binary).
const PT_INTERP: u32 = 3;

/// A device node the VMM opens, made in the jail for its user only.
struct Node {
    /// Path below the jail's root.
    path: &'static str,
    major: u32,
    minor: u32,
}

/// `/dev/kvm` and `/dev/net/tun` (Linux's fixed numbers, as in devices.txt).
const NODES: [Node; 2] = [
    Node {
        path: "dev/kvm",
        major: 10,
        minor: 232,
    },
    Node {
        path: "dev/net/tun",
        major: 10,
        minor: 200,
    },
];

/// The program interpreter an ELF file asks for, if any; an error if it is not a 64-bit
/// little-endian ELF file.
pub fn elf_interpreter(bytes: &[u8]) -> std::result::Result<Option<String>, &'static str> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o.checked_add(2)?)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o.checked_add(4)?)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o.checked_add(8)?)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if bytes.get(0..4) != Some(b"\x7fELF".as_slice()) || bytes.get(4..6) != Some(&[2, 1]) {
        return Err("is not a 64-bit little-endian ELF executable");
    }
    let truncated = "is a truncated ELF file";
    let phoff = u64_at(0x20).ok_or(truncated)?;
    let phentsize = u16_at(0x36).ok_or(truncated)?;
    let phnum = u16_at(0x38).ok_or(truncated)?;
    for k in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(k * u64::from(phentsize))
            .and_then(|a| usize::try_from(a).ok())
            .ok_or(truncated)?;
        if u32_at(at).ok_or(truncated)? != PT_INTERP {
            continue;
        }
        let off = u64_at(at.checked_add(8).ok_or(truncated)?).ok_or(truncated)?;
        let len = u64_at(at.checked_add(32).ok_or(truncated)?).ok_or(truncated)?;
        let (off, len) = (
            usize::try_from(off).map_err(|_| truncated)?,
            usize::try_from(len).map_err(|_| truncated)?,
        );
        let raw = bytes
            .get(off..off.checked_add(len).ok_or(truncated)?)
            .ok_or(truncated)?;
        let name = raw.split(|b| *b == 0).next().unwrap_or(raw);
        return Ok(Some(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(None)
}

/// The exec file must be an executable, statically linked ELF file: the jail holds nothing
/// but the binary, so a dynamic one would fail at exec, after the jail was made.
pub fn check_exec_file(path: &Path) -> Result<()> {
    let bad = |why: String| JailError::path("--exec-file", path, why);
    let md = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !md.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if md.permissions().mode() & 0o111 == 0 {
        return Err(bad("is not executable".into()));
    }
    // Program headers are near the start of any binary we would run; 64 KiB is plenty.
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|e| bad(e.to_string()))?;
    match elf_interpreter(&head) {
        Err(why) => Err(bad(why.into())),
        Ok(Some(interp)) => Err(bad(format!(
            "is dynamically linked (it needs {interp}), and a jail holds only the binary: \
             build it statically (docs/jailer.md)"
        ))),
        Ok(None) => Ok(()),
    }
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| JailError::path("path", p, "contains a NUL byte"))
}

/// Opens directory `p` for the *at calls.
pub fn open_dir(p: &Path) -> Result<OwnedFd> {
    let c = cstring(p)?;
    // SAFETY: a valid C string; the fd returned is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(JailError::io("opening", p, std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes `name` in directory `dir` and, if it is a directory, everything below it,
/// without following symbolic links. Errors are ignored: this is the clean-up of a failure
/// already being reported.
pub fn remove_tree_at(dir: &OwnedFd, name: &CStr) {
    // SAFETY: `dir` is an open directory fd and `name` a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: `fd` is ours; fdopendir takes it over and closedir closes it.
        let d = unsafe { libc::fdopendir(fd) };
        if d.is_null() {
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
        } else {
            let mut names = Vec::new();
            loop {
                // SAFETY: `d` is an open DIR stream.
                let ent = unsafe { libc::readdir(d) };
                if ent.is_null() {
                    break;
                }
                // SAFETY: readdir returned a valid entry whose name is NUL-terminated.
                let n = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
                if n.to_bytes() != b"." && n.to_bytes() != b".." {
                    names.push(n.to_owned());
                }
            }
            // SAFETY: `d` is open; dup keeps a descriptor for the recursion after closedir.
            let keep = unsafe { libc::dup(libc::dirfd(d)) };
            // SAFETY: `d` is open and not used after this.
            unsafe { libc::closedir(d) };
            if keep >= 0 {
                // SAFETY: `keep` was just made by dup and is owned by nothing else.
                let sub = unsafe { OwnedFd::from_raw_fd(keep) };
                for n in &names {
                    remove_tree_at(&sub, n);
                }
            }
        }
        // SAFETY: valid fd and C string.
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) };
    } else {
        // SAFETY: valid fd and C string.
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    }
}

/// The chroot base exists (made if missing) and is a directory.
pub fn check_base(base: &Path) -> Result<()> {
    match std::fs::metadata(base) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(JailError::path(
            "--chroot-base-dir",
            base,
            "is not a directory",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(base).map_err(|e| JailError::io("creating", base, e))
        }
        Err(e) => Err(JailError::path("--chroot-base-dir", base, e.to_string())),
    }
}

/// What the jailer made in a jail directory that already existed: paths relative to it,
/// and whether each is a directory (removed with everything below it).
pub type Made = Vec<(CString, bool)>;

/// Where this run's jail is, and what a failure must remove from it.
pub enum JailDir {
    /// The jailer created `<base>/<exec name>/<id>`: all of it goes (the parent's fd, the
    /// id).
    Created(OwnedFd, CString),
    /// It existed (the caller put files there first, as Firecracker's jailer allows): only
    /// what the jailer made in it goes (the jail directory's fd, what was made).
    Existing(OwnedFd, Made),
}

impl JailDir {
    /// Records `rel` (below the jail directory) as made by the jailer.
    fn made(&mut self, rel: &str, is_dir: bool) -> Result<()> {
        if let JailDir::Existing(_, made) = self {
            let c = CString::new(rel)
                .map_err(|_| JailError::path("--id", rel, "contains a NUL byte"))?;
            made.push((c, is_dir));
        }
        Ok(())
    }

    /// Removes what this run made, newest first. Errors are ignored: this is the clean-up
    /// of a failure already being reported.
    pub fn undo(self) {
        match self {
            JailDir::Created(parent, name) => remove_tree_at(&parent, &name),
            JailDir::Existing(dir, made) => {
                for (rel, is_dir) in made.iter().rev() {
                    if *is_dir {
                        remove_tree_at(&dir, rel);
                    } else {
                        // SAFETY: valid fd and C string.
                        unsafe { libc::unlinkat(dir.as_raw_fd(), rel.as_ptr(), 0) };
                    }
                }
            }
        }
    }
}

/// Creates `<base>/<exec name>/<id>`, or takes it as it is if it exists (files the caller
/// put in its `root/` first stay, as with Firecracker's jailer).
pub fn create_jail_dir(spec: &Spec) -> Result<JailDir> {
    let parent = spec
        .jail_dir
        .parent()
        .ok_or_else(|| JailError::path("--chroot-base-dir", &spec.jail_dir, "has no parent"))?;
    match std::fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(JailError::io("creating", parent, e)),
    }
    match std::fs::create_dir(&spec.jail_dir) {
        Ok(()) => {
            let name = CString::new(spec.id.as_bytes())
                .map_err(|_| JailError::flag("--id", spec.id.clone(), "contains a NUL byte"))?;
            Ok(JailDir::Created(open_dir(parent)?, name))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(JailDir::Existing(open_dir(&spec.jail_dir)?, Vec::new()))
        }
        Err(e) => Err(JailError::io("creating", &spec.jail_dir, e)),
    }
}

/// Hard-links the exec file into the jail when that is as safe as a copy: the file is
/// root's, nobody else may write it, and anyone may read and run it (so the VMM's user can
/// exec it and never change it). Copying a binary of a few MiB is a measurable part of a
/// jailed boot (`tools/bench/run confine`); a link costs nothing. False: copy it instead
/// (another file system, or a file that does not qualify).
fn link_exec(src: &Path, dst: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(src) else {
        return false;
    };
    md.uid() == 0
        && md.mode() & 0o022 == 0
        && md.mode() & 0o005 == 0o005
        && std::fs::hard_link(src, dst).is_ok()
}

/// Fills the jail: its root (owned by the VMM's user, so it can make its socket there),
/// `/run` likewise, the binary linked or copied in (root's, read-only to the VMM), and the device
/// nodes (the VMM's user's, mode 0600). What it makes is recorded in `jail` as it goes.
pub fn populate(spec: &Spec, jail: &mut JailDir) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let root = spec.root();
    for d in ["root", "root/dev", "root/dev/net", "root/run"] {
        let p = spec.jail_dir.join(d);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&p).map_err(|e| JailError::io("creating", &p, e))?;
                jail.made(d, true)?;
            }
            Err(e) => return Err(JailError::io("checking", &p, e)),
            // What the caller made must be root's, and real directories: the jailer works
            // in them as root, and must not follow a link an earlier VMM left.
            Ok(md) if md.is_dir() && md.uid() == 0 => {}
            Ok(md) => {
                return Err(JailError::path(
                    "--id",
                    &p,
                    format!(
                    "is left from an earlier jail (a {} owned by uid {}); remove the jail first",
                    if md.is_symlink() {
                        "symbolic link"
                    } else if md.is_dir() {
                        "directory"
                    } else {
                        "file"
                    },
                    md.uid()
                ),
                ))
            }
        }
    }
    let exec = root.join(&spec.exec_name);
    jail.made(&format!("root/{}", spec.exec_name), false)?;
    let _ = std::fs::remove_file(&exec);
    if !link_exec(&spec.exec_file, &exec) {
        copy_new(&spec.exec_file, &exec)?;
    }
    for n in &NODES {
        let p = root.join(n.path);
        let c = cstring(&p)?;
        // A node the caller left is made again, for this uid.
        let _ = std::fs::remove_file(&p);
        jail.made(&format!("root/{}", n.path), false)?;
        let dev = libc::makedev(n.major, n.minor);
        // SAFETY: a valid C string; mknod only creates the node (it fails if anything is
        // in the way, a link included).
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) } != 0 {
            return Err(JailError::io("mknod", &p, std::io::Error::last_os_error()));
        }
        lchown(&p, spec.uid, spec.gid)?;
    }
    // /run first: once root/ is the uid's, root/run could be swapped for a link.
    lchown(&root.join("run"), spec.uid, spec.gid)?;
    lchown(&root, spec.uid, spec.gid)
}

/// Copies the exec file to a new file `dst` (never through a link: O_EXCL), root's, mode
/// 0755.
fn copy_new(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e| JailError::io("copying to", dst, e);
    let mut from = File::open(src).map_err(err)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(dst)
        .map_err(err)?;
    std::io::copy(&mut from, &mut to).map_err(err)?;
    to.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(|e| JailError::io("chmod", dst, e))
}

/// lchown(2): never through a link.
fn lchown(p: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| JailError::io("chown", p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_an_elf_file_and_garbage_is_not() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert!(elf_interpreter(&me).is_ok());
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        assert_eq!(
            elf_interpreter(b"\x7fELF\x02\x01"),
            Err("is a truncated ELF file")
        );
    }

    #[test]
    fn a_dynamic_binary_names_its_interpreter() {
        // /bin/sh is dynamically linked on every Debian host.
        let sh = std::fs::read("/bin/sh").unwrap();
        let interp = elf_interpreter(&sh).unwrap().unwrap();
        assert!(interp.contains("ld-linux"), "{interp}");
        let e = check_exec_file(Path::new("/bin/sh"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is dynamically linked"), "{e}");
        let e = check_exec_file(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--exec-file /nonexistent: No such file"),
            "{e}"
        );
        let plain = std::env::temp_dir().join(format!("jailer-plain-{}", std::process::id()));
        std::fs::write(&plain, b"data").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_exec_file(&plain).unwrap_err().to_string();
        std::fs::remove_file(&plain).unwrap();
        assert!(e.contains("is not executable"), "{e}");
    }

    #[test]
    fn trees_are_removed_through_a_directory_fd() {
        let base = std::env::temp_dir().join(format!("jailer-rm-{}", std::process::id()));
        std::fs::create_dir_all(base.join("t/a/b")).unwrap();
        std::fs::write(base.join("t/a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("t/link")).unwrap();
        let fd = open_dir(&base).unwrap();
        remove_tree_at(&fd, c"t");
        assert!(!base.join("t").exists());
        assert!(Path::new("/etc/hostname").exists());
        std::fs::remove_dir(&base).unwrap();
    }
}
