//! The host file behind a block device: opened, validated and locked at start-up, then
//! read and written with vectored positional I/O straight into guest buffers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use thiserror::Error;
use vmm_sys_util::ioctl_ior_nr;

// linux/fs.h: BLKGETSIZE64 is _IOR(0x12, 114, size_t).
ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, libc::size_t);

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// How writes reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    /// The guest is told there is no volatile write cache and flush requests are not
    /// offered: completed writes are in the host's page cache, which survives the VMM
    /// process but not a host crash (Firecracker's default).
    Unsafe,
    /// The guest sees a volatile write cache and flushes it; a flush completes after
    /// `fdatasync` of the file.
    Writeback,
}

/// Errors opening a drive's backing file.
#[derive(Debug, Error)]
pub enum DiskError {
    /// The file cannot be opened.
    #[error("cannot open {mode}: {source}")]
    Open {
        /// "read-only" or "read-write".
        mode: &'static str,
        /// The reason.
        source: io::Error,
    },
    /// Not a regular file or block device.
    #[error("not a regular file or block device")]
    NotAFile,
    /// Its size cannot be determined.
    #[error("cannot read its size: {0}")]
    Size(io::Error),
    /// The size is not whole sectors.
    #[error("size {0} bytes is not a multiple of 512")]
    Unaligned(u64),
    /// Another process holds a conflicting lock.
    #[error("in use by another process (it holds a lock on the file)")]
    Locked,
    /// Locking failed for another reason.
    #[error("cannot lock it: {0}")]
    Lock(io::Error),
}

/// An open, locked backing file.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    size: u64,
    read_only: bool,
    cache: CacheType,
}

impl DiskFile {
    /// Opens `path`. A read-write drive takes an exclusive lock, a read-only one a shared
    /// lock, so two VMs can share a read-only image but never write the same file.
    pub fn open(path: &Path, read_only: bool, cache: CacheType) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| DiskError::Open {
                mode: if read_only { "read-only" } else { "read-write" },
                source,
            })?;
        let meta = file.metadata().map_err(DiskError::Size)?;
        let ft = meta.file_type();
        let size = if ft.is_file() {
            meta.len()
        } else if ft.is_block_device() {
            block_device_size(&file).map_err(DiskError::Size)?
        } else {
            return Err(DiskError::NotAFile);
        };
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::Unaligned(size));
        }
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                DiskError::Locked
            } else {
                DiskError::Lock(e)
            });
        }
        Ok(Self {
            file,
            size,
            read_only,
            cache,
        })
    }

    /// Wraps an already open file (tests and fuzzing); `size` must be whole sectors.
    pub fn from_file(file: File, read_only: bool, cache: CacheType) -> Result<Self, DiskError> {
        let size = file.metadata().map_err(DiskError::Size)?.len();
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::Unaligned(size));
        }
        Ok(Self {
            file,
            size,
            read_only,
            cache,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The write-cache mode.
    pub fn cache(&self) -> CacheType {
        self.cache
    }

    /// Reads exactly the iovecs' total length at `offset`.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for writes for the duration of the call.
    pub unsafe fn read_vectored_at(&self, iovs: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { transfer(self.file.as_raw_fd(), iovs, offset, false) }
    }

    /// Writes exactly the iovecs' total length at `offset`.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads for the duration of the call.
    pub unsafe fn write_vectored_at(
        &self,
        iovs: &mut [libc::iovec],
        offset: u64,
    ) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        // SAFETY: forwarded from the caller's contract.
        unsafe { transfer(self.file.as_raw_fd(), iovs, offset, true) }
    }

    /// Makes completed writes durable (for `Writeback`; a no-op for `Unsafe`, whose guest
    /// was told there is no cache to flush).
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only || self.cache == CacheType::Unsafe {
            return Ok(());
        }
        self.file.sync_data()
    }
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: the ioctl writes one u64 into `size`, which lives across the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64(), &mut size as *mut u64) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Moves all bytes of `iovs` at `offset`, resuming after short transfers and EINTR.
/// `iovs` is consumed (advanced) in place.
///
/// # Safety
/// The iovecs must be valid for the direction of the transfer during the call.
unsafe fn transfer(
    fd: i32,
    iovs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    // The kernel takes at most IOV_MAX (1024) segments per call.
    const IOV_MAX: libc::c_int = 1024;
    let mut start = 0;
    while start < iovs.len() && iovs[start].iov_len == 0 {
        start += 1;
    }
    while start < iovs.len() {
        let rest = &iovs[start..];
        let n = libc::c_int::try_from(rest.len()).map_or(IOV_MAX, |n| n.min(IOV_MAX));
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: the iovecs are valid per the caller's contract; n <= rest.len().
        let r = unsafe {
            if write {
                libc::pwritev(fd, rest.as_ptr(), n, off)
            } else {
                libc::preadv(fd, rest.as_ptr(), n, off)
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            // End of file inside the advertised capacity: the file shrank under us.
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut done = r as usize;
        offset += done as u64;
        while done > 0 && start < iovs.len() {
            let v = &mut iovs[start];
            if done >= v.iov_len {
                done -= v.iov_len;
                start += 1;
            } else {
                // SAFETY: advancing within the same iovec, by less than its length.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(done) }.cast();
                v.iov_len -= done;
                done = 0;
            }
        }
        while start < iovs.len() && iovs[start].iov_len == 0 {
            start += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn blkgetsize64_is_the_kernels() {
        assert_eq!(super::BLKGETSIZE64(), 0x8008_1272);
    }
}
