//! The thread a virtio device runs on between activation and reset, and how it is
//! stopped: a stop eventfd the thread polls, then a join that hands back what the thread
//! owned (the disk, the tap) for the next activation.

use super::ActivateError;
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

/// A running device thread that returns a `T` when stopped.
pub struct DeviceThread<T> {
    thread: JoinHandle<T>,
    stop: EventFd,
}

impl<T: Send + 'static> DeviceThread<T> {
    /// Starts `body` on a thread called `name`, confined by `kind`'s seccomp filter before
    /// `body` runs; `body` gets the eventfd that becomes readable when it must return.
    pub fn spawn(
        name: String,
        kind: seccomp::ThreadKind,
        body: impl FnOnce(EventFd) -> T + Send + 'static,
    ) -> Result<Self, ActivateError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Thread)?;
        let theirs = stop.try_clone().map_err(ActivateError::Thread)?;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                seccomp::confine_or_exit(kind);
                body(theirs)
            })
            .map_err(ActivateError::Thread)?;
        Ok(Self { thread, stop })
    }

    /// Tells the thread to stop and waits for it. `None` if it could not be told or it
    /// died (the device then cannot be activated again).
    pub fn stop(self) -> Option<T> {
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot stop a device thread: {e}");
            return None;
        }
        self.thread.join().ok()
    }
}

/// Reads `data.len()` bytes of the configuration space `config` at `offset`; bytes past
/// its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}
