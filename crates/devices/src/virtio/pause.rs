//! Pausing a device's thread from the VMM thread (`PATCH /vm` `Paused`): the thread stops
//! touching its queues, guest memory and its backend at the top of its next pass, and
//! says so; the VMM waits for that before answering, so a paused VM's devices are quiet.
//! Work the thread skipped while paused is done after resume: nothing is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use virtio_queue::QueueState;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, Default, Clone, Copy)]
struct State {
    requested: bool,
    parked: bool,
    /// A device thread is running and will answer.
    attached: bool,
}

/// One device thread's pause switch.
#[derive(Debug)]
pub struct DevicePause {
    /// Mirrors `state.requested`, so a device pass checks one atomic, not a lock.
    requested: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    evt: EventFd,
    /// The device's queues as the thread left them when it parked (for snapshots: the
    /// thread's next_avail/next_used, which the transport's copy does not follow).
    queues: Mutex<Option<Vec<QueueState>>>,
}

impl DevicePause {
    /// A switch in the running position.
    pub fn new() -> std::io::Result<Self> {
        Ok(DevicePause {
            requested: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            queues: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The eventfd the device thread polls: readable when the switch moved.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    /// Device thread: whether to stay away from the queues now. Acknowledges a pause.
    /// Cheap when no pause is asked for: one atomic load. The thread drains `evt` itself
    /// when its poll reports it.
    pub fn check(&self) -> bool {
        self.check_recording(Vec::new)
    }

    /// As [`DevicePause::check`]; on parking, first records `queues()`, the state of the
    /// thread's queues, so the VMM reads them once `pause` returns.
    pub fn check_recording(&self, queues: impl FnOnce() -> Vec<QueueState>) -> bool {
        if !self.requested.load(Ordering::Acquire) {
            return false;
        }
        let mut st = self.lock();
        if st.requested && !st.parked {
            *self.queues.lock().unwrap_or_else(|p| p.into_inner()) = Some(queues());
            st.parked = true;
            self.changed.notify_all();
        }
        st.requested
    }

    /// VMM thread, while paused: the queues the device thread recorded when it parked, or
    /// `None` if no thread runs (the device is not active).
    pub fn parked_queues(&self) -> Option<Vec<QueueState>> {
        let st = self.lock();
        if !(st.attached && st.parked) {
            return None;
        }
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Device thread: it starts serving (and will check the switch).
    pub fn attach(&self) {
        self.lock().attached = true;
    }

    /// Device thread: it stops serving (reset, or the device failed).
    pub fn detach(&self) {
        let mut st = self.lock();
        st.attached = false;
        st.parked = false;
        self.changed.notify_all();
    }

    /// VMM thread: asks the device thread to pause and waits until it has, for at most
    /// `within`. A device with no thread running is quiet already. Returns whether the
    /// device is quiet.
    pub fn pause(&self, within: Duration) -> bool {
        let mut st = self.lock();
        st.requested = true;
        self.requested.store(true, Ordering::Release);
        if !st.attached {
            return true;
        }
        let _ = self.evt.write(1);
        let deadline = Instant::now() + within;
        while st.attached && !st.parked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// VMM thread: lets the device thread run again.
    pub fn resume(&self) {
        let mut st = self.lock();
        *self.queues.lock().unwrap_or_else(|p| p.into_inner()) = None;
        st.requested = false;
        st.parked = false;
        self.requested.store(false, Ordering::Release);
        let _ = self.evt.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pause_waits_for_the_thread_and_resume_releases_it() {
        let p = Arc::new(DevicePause::new().unwrap());
        assert!(
            p.pause(Duration::from_millis(1)),
            "no thread: quiet at once"
        );
        p.resume();
        p.attach();
        assert!(
            !p.pause(Duration::from_millis(5)),
            "a thread that never checks"
        );
        let t = {
            let p = p.clone();
            std::thread::spawn(move || {
                while !p.check() {
                    std::thread::yield_now();
                }
                while p.check() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        assert!(p.pause(Duration::from_secs(5)));
        p.resume();
        t.join().unwrap();
    }
}
