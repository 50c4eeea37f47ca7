//! The Unix stream sockets of the vsock backend, on the system calls its seccomp filter
//! allows: `read`/`write` (std's `UnixStream::read` is `recvfrom`, which is not),
//! `accept4`, `socket(AF_UNIX)`, `connect`, `shutdown`. Every socket is non-blocking and
//! close-on-exec from its creation, so no `fcntl`/`ioctl` follows.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// A connected, non-blocking Unix stream socket.
#[derive(Debug)]
pub struct Stream(OwnedFd);

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn check(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// `path` as a socket address; refused if it is empty or too long for one.
fn address(path: &Path) -> io::Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation, reason = "AF_UNIX is 1")]
    let family = libc::AF_UNIX as libc::sa_family_t;
    addr.sun_family = family;
    let bytes = path.as_os_str().as_bytes();
    // One byte stays zero: the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path is empty or too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(addr)
}

#[allow(clippy::cast_possible_truncation, reason = "sockaddr_un is 110 bytes")]
const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;

/// A new non-blocking, close-on-exec Unix stream socket.
fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check_ret(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking listener bound at `path`, which must not exist, made with mode 0600
/// from the start: the socket's own mode is set before `bind` creates the file from it,
/// so there is no moment when others may connect.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    let addr = address(path)?;
    let fd = socket()?;
    // SAFETY: fchmod() takes no pointers; the result is checked.
    check_ret(unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) })?;
    // SAFETY: `addr` is a valid sockaddr_un of ADDR_LEN bytes, alive during the call.
    check_ret(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            ADDR_LEN,
        )
    })?;
    // SAFETY: listen() takes no pointers; the result is checked.
    if let Err(e) = check_ret(unsafe { libc::listen(fd.as_raw_fd(), 128) }) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

impl Stream {
    /// Connects to the listener at `path` without blocking. A listener that is absent,
    /// refuses, or has a full backlog (EAGAIN) is an error: the guest gets an RST.
    pub fn connect(path: &Path) -> io::Result<Stream> {
        let addr = address(path)?;
        let stream = Stream(socket()?);
        // SAFETY: `addr` is a valid sockaddr_un of ADDR_LEN bytes, alive during the call.
        check_ret(unsafe {
            libc::connect(
                stream.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                ADDR_LEN,
            )
        })?;
        Ok(stream)
    }

    /// Accepts one client of `listener`; `WouldBlock` when none waits.
    pub fn accept(listener: &impl AsRawFd) -> io::Result<Stream> {
        // SAFETY: null address pointers ask for no peer address; the result is checked.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by accept4() and nothing else owns it.
        Ok(Stream(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Reads what is there, at most `buf.len()` bytes; `Ok(0)` is end of stream.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of its length during the call.
            let n = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match check(n) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Writes what the socket takes now. A peer that is gone gives `EPIPE` (the process
    /// ignores SIGPIPE, as every Rust program does unless it asks otherwise).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for reads of its length during the call.
            let n = unsafe { libc::write(self.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            match check(n) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Ends our direction of the stream: the peer reads end of stream.
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: shutdown() takes no pointers; the result is checked.
        let ret = unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_WR) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Whether `e` from `read` or `write` only means "not now".
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}
