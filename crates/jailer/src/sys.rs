//! The process side of the jail: inherited descriptors, resource limits, the network and
//! mount namespaces (`pivot_root` into the jail), the session, a PID namespace, and the
//! drop to the VMM's user.

use crate::args::Resource;
use crate::error::{JailError, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn check(ret: libc::c_int, call: impl Into<String>) -> Result<()> {
    if ret < 0 {
        Err(JailError::last_os(call))
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| JailError::Sys {
        call: format!("{s:?}"),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// Closes every descriptor but stdin, stdout and stderr: nothing the caller had open
/// (a socket, a disk, its own state) is carried into the jail.
pub fn close_inherited_fds() -> Result<()> {
    // SAFETY: close_range only closes descriptors; nothing in this process holds one above
    // 2 that it still needs at this point (the jailer opens its own later).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc lists.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| JailError::io("reading", "/proc/self/fd", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor number; one already closed (read_dir's) is EBADF.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// setrlimit for each limit (soft and hard alike).
pub fn set_rlimits(limits: &[(Resource, u64)]) -> Result<()> {
    for (r, v) in limits {
        let (res, name) = match r {
            Resource::Fsize => (libc::RLIMIT_FSIZE, "fsize"),
            Resource::NoFile => (libc::RLIMIT_NOFILE, "no-file"),
        };
        let lim = libc::rlimit {
            rlim_cur: *v,
            rlim_max: *v,
        };
        // SAFETY: setrlimit reads the struct we pass.
        let ret = unsafe { libc::setrlimit(res, &lim) };
        check(ret, format!("--resource-limit {name}={v}: setrlimit"))?;
    }
    Ok(())
}

/// Opens the network namespace at `path` (checked to be one by joining it later).
pub fn open_netns(path: &Path) -> Result<OwnedFd> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| JailError::path("--netns", path, e.to_string()))
}

/// Joins the network namespace `fd`.
pub fn join_netns(fd: &OwnedFd, path: &Path) -> Result<()> {
    // SAFETY: setns on an open descriptor; it fails cleanly if it is not a netns.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        return Err(JailError::path(
            "--netns",
            path,
            format!("is not a network namespace it can join ({e})"),
        ));
    }
    Ok(())
}

/// A new mount namespace whose root is `root`: the host's tree is unmounted from it, so
/// nothing outside `root` can be named any more.
pub fn enter_jail(root: &Path) -> Result<()> {
    let croot = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| JailError::path("--chroot-base-dir", root, "contains a NUL byte"))?;
    let old = cstr("old_root")?;
    let dot = cstr(".")?;
    let slash = cstr("/")?;
    let shown = root.display();
    // SAFETY: unshare only changes this process's namespaces.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(ret, "unshare(CLONE_NEWNS)")?;
    // Nothing done in this namespace may propagate back to the host's.
    // SAFETY: valid C strings and flags; only this namespace's mounts change.
    let ret = unsafe {
        libc::mount(
            std::ptr::null(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(ret, "mount(/, MS_PRIVATE)")?;
    // pivot_root wants the new root to be a mount point.
    // SAFETY: as above.
    let ret = unsafe {
        libc::mount(
            croot.as_ptr(),
            croot.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(ret, format!("mount({shown}, MS_BIND)"))?;
    // SAFETY: valid C strings.
    let ret = unsafe { libc::chdir(croot.as_ptr()) };
    check(ret, format!("chdir({shown})"))?;
    // SAFETY: valid C string.
    let ret = unsafe { libc::mkdir(old.as_ptr(), 0o700) };
    check(ret, "mkdir(old_root)")?;
    // SAFETY: valid C strings; pivot_root has no libc wrapper.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr()) };
    check(ret as libc::c_int, format!("pivot_root({shown})"))?;
    // SAFETY: valid C strings.
    let ret = unsafe { libc::chdir(slash.as_ptr()) };
    check(ret, "chdir(/)")?;
    // SAFETY: valid C string; detaches the host's tree from this namespace.
    let ret = unsafe { libc::umount2(old.as_ptr(), libc::MNT_DETACH) };
    check(ret, "umount2(old_root)")?;
    // SAFETY: valid C string.
    let ret = unsafe { libc::rmdir(old.as_ptr()) };
    check(ret, "rmdir(old_root)")?;
    // SAFETY: valid C string.
    check(unsafe { libc::chroot(dot.as_ptr()) }, "chroot(.)")
}

/// Opens /dev/null for [`daemonize`] (before the jail hides it).
pub fn open_dev_null() -> Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| JailError::io("opening", "/dev/null", e))
}

/// setsid() would fail for a process group leader: found before anything is made.
pub fn check_can_daemonize() -> Result<()> {
    // SAFETY: getpgrp and getpid have no arguments and cannot fail.
    if unsafe { libc::getpgrp() == libc::getpid() } {
        return Err(JailError::flag(
            "--daemonize",
            "",
            "the jailer leads its process group, so setsid() would fail; start it from a child process",
        ));
    }
    Ok(())
}

/// A new session, and stdin, stdout and stderr on /dev/null.
pub fn daemonize(null: OwnedFd) -> Result<()> {
    // SAFETY: no arguments.
    let ret = unsafe { libc::setsid() };
    check(ret, "setsid")?;
    for fd in 0..3 {
        // SAFETY: dup2 of an open descriptor onto a standard one.
        let ret = unsafe { libc::dup2(null.as_raw_fd(), fd) };
        check(ret, "dup2(/dev/null)")?;
    }
    Ok(())
}

/// Which side of [`fork_into_pid_ns`] this is.
pub enum Side {
    /// The original process; the child's pid as this host sees it.
    Parent(libc::pid_t),
    /// The child: pid 1 of the new namespace.
    Child,
}

/// clone(CLONE_NEWPID): the child is the new namespace's init. The jailer is single-
/// threaded here, so a raw clone is as safe as fork.
pub fn fork_into_pid_ns() -> Result<Side> {
    let flags = (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without a new stack behaves as fork; the process has one thread.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        p if p < 0 => Err(JailError::last_os("clone(CLONE_NEWPID)")),
        0 => Ok(Side::Child),
        p => Ok(Side::Parent(p as libc::pid_t)),
    }
}

/// Drops every group, then to `gid` and `uid`: nothing of root's is kept.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<()> {
    // SAFETY: setgroups with an empty list.
    let ret = unsafe { libc::setgroups(0, std::ptr::null()) };
    check(ret, "setgroups([])")?;
    // SAFETY: plain ids.
    let ret = unsafe { libc::setresgid(gid, gid, gid) };
    check(ret, format!("setresgid({gid})"))?;
    // SAFETY: plain ids.
    let ret = unsafe { libc::setresuid(uid, uid, uid) };
    check(ret, format!("setresuid({uid})"))?;
    Ok(())
}

/// Microseconds on `clock`.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000
}
