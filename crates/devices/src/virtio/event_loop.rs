//! The event loop every virtio device thread runs: one epoll over the device's own file
//! descriptors (queue eventfds, a tap, a disk-swap eventfd), each registered with a token
//! of the device's own type, plus the two every device thread has: the stop eventfd its
//! [`DeviceThread`](super::DeviceThread) fires, and the eventfd of its
//! [`DevicePause`]. The loop drains those two itself, so a device only sees its own
//! tokens and whether to stop.
//!
//! A pass of a device thread is: `paused()` at the top (which acknowledges a pause, so the
//! VMM's `pause` returns once the thread is here), the work that is due unless paused,
//! then `wait`.

use super::DevicePause;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Errors of a device's event loop; a device that gets one stops serving.
#[derive(Debug, Error)]
pub enum EventLoopError {
    /// The epoll instance could not be created.
    #[error("epoll: {0}")]
    Create(io::Error),
    /// A file descriptor could not be added or changed.
    #[error("epoll registration: {0}")]
    Register(io::Error),
    /// Waiting failed (other than by a signal).
    #[error("epoll wait: {0}")]
    Wait(io::Error),
}

/// What a wait ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go round again: the device's ready sources, if any, have been handed over.
    Continue,
    /// The stop eventfd fired (and was drained): the thread must return.
    Stop,
}

// Epoll data of the two sources the loop owns; a device's tokens follow them.
const STOP: u64 = 0;
const PAUSE: u64 = 1;
const OWN_SOURCES: usize = 2;
const FIRST_DEVICE: u64 = OWN_SOURCES as u64;

/// One device thread's event loop, with tokens of type `T` for the device's sources.
pub struct DeviceEvents<T> {
    epoll: Epoll,
    stop: EventFd,
    pause: Arc<DevicePause>,
    /// The device's tokens; a source's epoll data is `FIRST_DEVICE` + its index here. A
    /// removed source leaves a hole that the next `add` fills, so a device whose sources
    /// come and go (vsock's connections) keeps a table as big as its most sources at once.
    tokens: Vec<Option<T>>,
    ready: Vec<EpollEvent>,
}

impl<T: Copy + PartialEq> DeviceEvents<T> {
    /// A loop that ends on `stop` and answers `pause`.
    pub fn new(stop: EventFd, pause: Arc<DevicePause>) -> Result<Self, EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Create)?;
        let this = Self {
            epoll,
            stop,
            pause,
            tokens: Vec::new(),
            ready: vec![EpollEvent::default(); OWN_SOURCES],
        };
        this.ctl(
            ControlOperation::Add,
            this.stop.as_raw_fd(),
            STOP,
            EventSet::IN,
        )?;
        this.ctl(
            ControlOperation::Add,
            this.pause.evt().as_raw_fd(),
            PAUSE,
            EventSet::IN,
        )?;
        Ok(this)
    }

    fn ctl(
        &self,
        op: ControlOperation,
        fd: RawFd,
        data: u64,
        events: EventSet,
    ) -> Result<(), EventLoopError> {
        self.epoll
            .ctl(op, fd, EpollEvent::new(events, data))
            .map_err(EventLoopError::Register)
    }

    fn data_of(&self, token: T) -> Option<u64> {
        let index = self.tokens.iter().position(|t| *t == Some(token))?;
        u64::try_from(index).ok()?.checked_add(FIRST_DEVICE)
    }

    /// Watches `fd` for `events` (level-triggered), reported as `token`.
    pub fn add(
        &mut self,
        fd: &impl AsRawFd,
        token: T,
        events: EventSet,
    ) -> Result<(), EventLoopError> {
        let hole = self.tokens.iter().position(Option::is_none);
        let index = hole.unwrap_or(self.tokens.len());
        let data = u64::try_from(index)
            .ok()
            .and_then(|i| i.checked_add(FIRST_DEVICE))
            .ok_or_else(|| EventLoopError::Register(io::Error::from(io::ErrorKind::OutOfMemory)))?;
        self.ctl(ControlOperation::Add, fd.as_raw_fd(), data, events)?;
        match self.tokens.get_mut(index) {
            Some(slot) => *slot = Some(token),
            None => {
                self.tokens.push(Some(token));
                self.ready.push(EpollEvent::default());
            }
        }
        Ok(())
    }

    /// Stops watching `fd`, added as `token`; its slot is reused by a later `add`. The fd
    /// must still be open (epoll forgets a closed fd by itself, but only once every
    /// duplicate of it is closed).
    pub fn remove(&mut self, fd: &impl AsRawFd, token: T) -> Result<(), EventLoopError> {
        let index = self
            .tokens
            .iter()
            .position(|t| *t == Some(token))
            .ok_or_else(|| EventLoopError::Register(io::Error::from(io::ErrorKind::NotFound)))?;
        let data = u64::try_from(index)
            .ok()
            .and_then(|i| i.checked_add(FIRST_DEVICE))
            .ok_or_else(|| EventLoopError::Register(io::Error::from(io::ErrorKind::NotFound)))?;
        self.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            data,
            EventSet::empty(),
        )?;
        if let Some(slot) = self.tokens.get_mut(index) {
            *slot = None;
        }
        Ok(())
    }

    /// Changes what `fd`, added as `token`, is watched for; an empty set parks it.
    pub fn modify(
        &self,
        fd: &impl AsRawFd,
        token: T,
        events: EventSet,
    ) -> Result<(), EventLoopError> {
        let data = self
            .data_of(token)
            .ok_or_else(|| EventLoopError::Register(io::Error::from(io::ErrorKind::NotFound)))?;
        self.ctl(ControlOperation::Modify, fd.as_raw_fd(), data, events)
    }

    /// Top of a pass: whether to leave the queues, guest memory and the backend alone
    /// now. Acknowledges a pause request (see [`DevicePause::check`]).
    pub fn paused(&self) -> bool {
        self.pause.check()
    }

    /// As [`DeviceEvents::paused`], recording the device's queues (`queues()`) when it
    /// parks, for a snapshot of the paused VM.
    pub fn paused_with(&self, queues: impl FnOnce() -> Vec<virtio_queue::QueueState>) -> bool {
        self.pause.check_recording(queues)
    }

    /// Waits until something is ready. A stop wins over everything else in the same
    /// wake-up; otherwise `on_event` gets each of the device's ready sources with what it
    /// is ready for (the device drains its own eventfds). A signal ends the wait early
    /// with nothing handed over.
    pub fn wait(&mut self, mut on_event: impl FnMut(T, EventSet)) -> Result<Flow, EventLoopError> {
        let n = match self.epoll.wait(-1, &mut self.ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Flow::Continue),
            Err(e) => return Err(EventLoopError::Wait(e)),
        };
        let ready = &self.ready[..n.min(self.ready.len())];
        if ready.iter().any(|ev| ev.data() == STOP) {
            let _ = self.stop.read();
            return Ok(Flow::Stop);
        }
        for ev in ready {
            match ev.data() {
                // The switch itself is looked at by `paused` at the top of the next pass.
                PAUSE => {
                    let _ = self.pause.evt().read();
                }
                data => {
                    let token = data
                        .checked_sub(FIRST_DEVICE)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| self.tokens.get(i).copied().flatten());
                    if let Some(token) = token {
                        on_event(token, ev.event_set());
                    }
                }
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Source {
        A,
        B,
    }

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn collect(events: &mut DeviceEvents<Source>) -> (Flow, Vec<Source>) {
        let mut seen = Vec::new();
        let flow = events.wait(|s, _| seen.push(s)).unwrap();
        (flow, seen)
    }

    #[test]
    fn device_sources_arrive_as_their_tokens_and_stop_wins() {
        let stop = eventfd();
        let pause = Arc::new(DevicePause::new().unwrap());
        let mut events = DeviceEvents::new(stop.try_clone().unwrap(), pause).unwrap();
        let (a, b) = (eventfd(), eventfd());
        events.add(&a, Source::A, EventSet::IN).unwrap();
        events.add(&b, Source::B, EventSet::IN).unwrap();

        b.write(1).unwrap();
        assert_eq!(collect(&mut events), (Flow::Continue, vec![Source::B]));
        // Level-triggered, and the device drains its own eventfds.
        assert_eq!(collect(&mut events), (Flow::Continue, vec![Source::B]));
        b.read().unwrap();

        // A parked source is not reported.
        events.modify(&a, Source::A, EventSet::empty()).unwrap();
        a.write(1).unwrap();
        b.write(1).unwrap();
        assert_eq!(collect(&mut events), (Flow::Continue, vec![Source::B]));
        b.read().unwrap();

        events.modify(&a, Source::A, EventSet::IN).unwrap();
        stop.write(1).unwrap();
        assert_eq!(collect(&mut events), (Flow::Stop, vec![]));
        assert!(stop.read().is_err(), "the loop drains the stop eventfd");
    }

    #[test]
    fn a_removed_source_is_silent_and_its_slot_is_reused() {
        let pause = Arc::new(DevicePause::new().unwrap());
        let mut events = DeviceEvents::new(eventfd(), pause).unwrap();
        let (a, b) = (eventfd(), eventfd());
        events.add(&a, Source::A, EventSet::IN).unwrap();
        events.add(&b, Source::B, EventSet::IN).unwrap();
        a.write(1).unwrap();
        b.write(1).unwrap();
        events.remove(&a, Source::A).unwrap();
        assert_eq!(collect(&mut events), (Flow::Continue, vec![Source::B]));
        assert!(events.modify(&a, Source::A, EventSet::IN).is_err());
        assert!(events.remove(&a, Source::A).is_err(), "removed once only");
        // A's slot is taken again, now by a second fd, and nothing grew.
        let c = eventfd();
        events.add(&c, Source::A, EventSet::IN).unwrap();
        assert_eq!(events.tokens.len(), 2);
        b.read().unwrap();
        c.write(1).unwrap();
        assert_eq!(collect(&mut events), (Flow::Continue, vec![Source::A]));
    }

    #[test]
    fn a_pause_wakes_the_loop_and_is_acknowledged_at_the_top_of_the_pass() {
        let pause = Arc::new(DevicePause::new().unwrap());
        let mut events = DeviceEvents::<Source>::new(eventfd(), pause.clone()).unwrap();
        pause.attach();
        let thread = std::thread::spawn(move || {
            let mut passes = 0;
            loop {
                passes += 1;
                if !events.paused() && passes > 1 {
                    // Resumed after having been paused.
                    return passes;
                }
                if events.wait(|_, _| {}).unwrap() == Flow::Stop {
                    return 0;
                }
            }
        });
        assert!(pause.pause(std::time::Duration::from_secs(5)));
        pause.resume();
        assert!(thread.join().unwrap() >= 2);
    }
}
