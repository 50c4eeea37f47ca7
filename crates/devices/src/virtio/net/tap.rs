//! A Linux tap device opened by name, in the mode virtio-net needs: Ethernet frames
//! (IFF_TAP) without packet info (IFF_NO_PI), each preceded by a 12-byte virtio-net header
//! (IFF_VNET_HDR, TUNSETVNETHDRSZ) that carries checksum and segmentation offload state.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use thiserror::Error;
use virtio_bindings::virtio_net::virtio_net_hdr_v1;
use vmm_sys_util::ioctl_iow_nr;

// The tun driver's ioctls (linux/if_tun.h): type 'T', with an int (or unsigned int)
// argument, as the kernel declares them.
const TUNTAP: libc::c_uint = b'T' as libc::c_uint;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, libc::c_int);

/// The ifreq flags of a tap in the mode virtio-net needs. They all sit in the low 16 bits
/// (ifr_flags is a short).
const TAP_FLAGS: i16 = {
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    assert!(flags >= 0 && flags <= i16::MAX as libc::c_int);
    #[allow(clippy::cast_possible_truncation, reason = "checked just above")]
    let short = flags as i16;
    short
};
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// The tap may hand us checksum-less frames.
pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
/// ... TCPv4 segments larger than the MTU.
pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
/// ... TCPv6 segments larger than the MTU.
pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
/// ... large UDP datagrams.
pub const TUN_F_UFO: u32 = libc::TUN_F_UFO;

/// Size of the header in front of every frame (virtio_net_hdr_v1, with num_buffers).
pub const VNET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
/// The same, as TUNSETVNETHDRSZ takes it.
const VNET_HDR_SIZE: libc::c_int = 12;
const _: () = assert!(VNET_HDR_SIZE as usize == VNET_HDR_LEN);

/// Errors opening a tap.
#[derive(Debug, Error)]
pub enum TapError {
    /// The name is empty, too long, or has a NUL byte.
    #[error("tap name {0:?} must be 1 to 15 bytes without NUL")]
    BadName(String),
    /// /dev/net/tun cannot be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    /// The kernel refused to attach to (or create) the tap.
    #[error("cannot attach to tap {name:?}: {source}")]
    Attach {
        /// The tap's name.
        name: String,
        /// The reason.
        source: io::Error,
    },
    /// The kernel refused a tap setting.
    #[error("tap {name:?}: {what}: {source}")]
    Configure {
        /// The tap's name.
        name: String,
        /// The setting.
        what: &'static str,
        /// The reason.
        source: io::Error,
    },
}

/// An open tap queue (non-blocking).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the ioctls passed here (TUNSETOFFLOAD) take an integer by value; no memory
    // is passed.
    if unsafe { libc::ioctl(fd, req, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Attaches to the tap called `name`. Like Firecracker, the tap should exist (created
    /// by the operator or the host agent, with its owner set); when it does not and we are
    /// privileged, the kernel creates it, and it disappears when ember exits.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(TapError::BadName(name.to_string()));
        }
        // SAFETY: a NUL-terminated path; the returned descriptor is checked and owned below.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TapError::OpenTun(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        // struct ifreq: the name, then a union whose first member is the flags (short).
        let mut ifreq = [0u8; 40];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        ifreq[IFNAMSIZ..IFNAMSIZ + 2].copy_from_slice(&TAP_FLAGS.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq (40 bytes), which `ifreq` is,
        // and it lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF(), ifreq.as_mut_ptr()) } < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let hdr_len: libc::c_int = VNET_HDR_SIZE;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which lives across the call.
        if unsafe { libc::ioctl(tap.fd(), TUNSETVNETHDRSZ(), &hdr_len as *const libc::c_int) } < 0 {
            return Err(TapError::Configure {
                name: name.to_string(),
                what: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        Ok(tap)
    }

    /// Tells the kernel which offloads the guest accepts in received frames (TUN_F_*).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        ioctl_int(self.fd(), TUNSETOFFLOAD(), libc::c_ulong::from(flags)).map_err(|source| {
            TapError::Configure {
                name: self.name.clone(),
                what: "TUNSETOFFLOAD",
                source,
            }
        })
    }

    /// The tap's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor, for polling.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads one frame (with its header) into `buf`. `WouldBlock` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length during the call.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame gathered from `iovs` (header first).
    ///
    /// # Safety
    /// Every iovec must be valid for reads during the call.
    pub unsafe fn write_frame(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iovs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: forwarded from the caller's contract; `count` is the slice's length.
        let n = unsafe { libc::writev(self.fd(), iovs.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_and_layouts_are_the_kernels() {
        // The values of linux/if_tun.h on every architecture ember runs on.
        assert_eq!(TUNSETIFF(), 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD(), 0x4004_54d0);
        assert_eq!(TUNSETVNETHDRSZ(), 0x4004_54d8);
        assert_eq!(TAP_FLAGS, 0x5002);
        assert_eq!(VNET_HDR_LEN, 12);
    }
}
