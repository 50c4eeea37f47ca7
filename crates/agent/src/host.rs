//! What the agent does on the host: copies of files (reflink where the filesystem can,
//! else sparse), checksums, the bridge and taps (with iproute2), processes.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

/// Copies `from` to `to`: a reflink (FICLONE) where the filesystem shares blocks, else a
/// copy that keeps holes (zero 64 KiB runs become holes). Returns the sha256 of the data.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<String> {
    let mut src = File::open(from)?;
    let dst = File::create(to)?;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open.
    let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) } == 0;
    let mut hasher = Sha256::new();
    let len = src.metadata()?.len();
    if cloned {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    } else {
        let mut dst = dst;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = read_full(&mut src, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if buf[..n].iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(n as i64))?;
            } else {
                dst.write_all(&buf[..n])?;
            }
        }
        dst.set_len(len)?;
        dst.sync_all()?;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A sparse file of `size` bytes.
pub fn create_sparse(path: &Path, size: u64) -> io::Result<()> {
    let f = File::create(path)?;
    f.set_len(size)
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether a network interface exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates the bridge with `gateway/prefix` if it is not there, and brings it up.
pub fn ensure_bridge(name: &str, gateway_cidr: &str) -> io::Result<()> {
    if !link_exists(name) {
        ip(&["link", "add", name, "type", "bridge"])?;
        ip(&["addr", "add", gateway_cidr, "dev", name])?;
    }
    ip(&["link", "set", name, "up"])
}

/// Creates tap `name` on `bridge`, up, owned by `uid` (so the jailed VMM, running as it,
/// can attach to it and no other user can).
pub fn create_tap(name: &str, bridge: &str, uid: u32) -> io::Result<()> {
    if link_exists(name) {
        delete_link(name)?;
    }
    let uid = uid.to_string();
    ip(&[
        "tuntap", "add", "dev", name, "mode", "tap", "user", &uid, "group", &uid,
    ])?;
    ip(&["link", "set", name, "master", bridge])?;
    ip(&["link", "set", name, "up"])
}

/// Deletes a link if it exists.
pub fn delete_link(name: &str) -> io::Result<()> {
    if link_exists(name) {
        ip(&["link", "del", name])?;
    }
    Ok(())
}

/// A process's start time (field 22 of /proc/PID/stat), to tell a PID reused by another
/// process from the one the agent started.
pub fn pid_start_time(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process's resident memory (VmRSS), in KiB.
pub fn rss_kib(pid: i64) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_keep_data_and_holes() {
        let dir = std::env::temp_dir().join(format!("emberd-copy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let mut f = File::create(&a).unwrap();
        f.write_all(b"head").unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start((8 << 20) - 4)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let sum = copy_file(&a, &dir.join("b")).unwrap();
        let b = std::fs::read(dir.join("b")).unwrap();
        assert_eq!(b, std::fs::read(&a).unwrap());
        assert_eq!(sum.len(), 64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(pid_start_time(std::process::id() as i64).is_some());
        assert!(pid_start_time(i64::from(i32::MAX)).is_none());
        assert!(rss_kib(std::process::id() as i64).is_some_and(|k| k > 0));
    }
}
