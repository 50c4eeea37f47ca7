//! virtio-rng (virtio 1.2, section 5.4): one queue of buffers the guest wants filled with
//! random bytes, filled from the host's `getrandom` on the device's own thread.

use super::event_loop::{DeviceEvents, EventLoopError, Flow};
use super::{
    ActivateError, Activation, DevicePause, DeviceThread, GuestMemoryMmap, Interrupt,
    InterruptKind, VirtioDevice, F_VERSION_1,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_ids;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Virtio device type of an entropy device.
pub const TYPE_RNG: u32 = virtio_ids::VIRTIO_ID_RNG;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// At most this many bytes per request: a guest asking for a huge buffer gets a short
/// answer (the driver asks again) rather than a long stall of the device thread.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// What the device has done, for metrics.
#[derive(Debug, Default)]
pub struct EntropyCounters {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Random bytes written to the guest.
    pub bytes: AtomicU64,
    /// Requests with a buffer the device could not write (bad address, no writable part).
    pub invalid_requests: AtomicU64,
    /// Times the host's `getrandom` failed.
    pub host_failures: AtomicU64,
}

/// The entropy device.
pub struct Entropy {
    running: Option<DeviceThread<()>>,
    queue_sizes: [u16; 1],
    counters: Arc<EntropyCounters>,
    pause: Arc<DevicePause>,
}

impl Entropy {
    /// A device; it has no backend to open.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            running: None,
            queue_sizes: [QUEUE_SIZE],
            counters: Arc::new(EntropyCounters::default()),
            pause: Arc::new(DevicePause::new()?),
        })
    }

    /// The switch that pauses the device's thread.
    pub fn pause_handle(&self) -> Arc<DevicePause> {
        self.pause.clone()
    }

    /// The device's counters (shared with its thread).
    pub fn counters(&self) -> Arc<EntropyCounters> {
        self.counters.clone()
    }
}

impl VirtioDevice for Entropy {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        1 << F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("entropy: config write at {offset:#x} ignored");
    }

    fn activate(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::BadState);
        }
        let queue = a.queues.pop().ok_or(ActivateError::QueueNotReady(0))?;
        let queue_evt = a.queue_evts.pop().ok_or(ActivateError::QueueNotReady(0))?;
        if !queue.is_valid(a.mem.as_ref()) {
            return Err(ActivateError::QueueNotReady(0));
        }
        let (mem, interrupt) = (a.mem, a.interrupt);
        let (pause, counters) = (self.pause.clone(), self.counters.clone());
        self.running = Some(DeviceThread::spawn(
            "entropy".into(),
            seccomp::ThreadKind::Entropy,
            move |stop| {
                pause.attach();
                let worker = Worker {
                    queue,
                    mem,
                    interrupt,
                    counters,
                };
                worker.run(queue_evt, stop, &pause);
                pause.detach();
            },
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(running) = self.running.take() {
            if running.stop().is_none() {
                log::error!("entropy: worker lost");
            }
        }
    }
}

/// The device thread's own event sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Queue,
}

struct Worker {
    queue: Queue,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    counters: Arc<EntropyCounters>,
}

impl Worker {
    fn run(mut self, queue_evt: EventFd, stop: EventFd, pause: &Arc<DevicePause>) {
        let mut events = match event_loop(stop, pause, &queue_evt) {
            Ok(events) => events,
            Err(e) => {
                log::error!("entropy: {e}; the device stops");
                self.interrupt.fail();
                return;
            }
        };
        let mut broken = false;
        // Buffers posted before the first notification are served.
        let mut pending = true;
        loop {
            let paused = events.paused_with(|| vec![self.queue.state()]);
            if pending && !broken && !paused {
                pending = false;
                match self.process_queue() {
                    Ok(true) => self.interrupt.trigger(InterruptKind::Vring),
                    Ok(false) => {}
                    Err(e) => {
                        log::error!("entropy: virtqueue: {e}; the device needs a reset");
                        broken = true;
                        self.interrupt.fail();
                    }
                }
            }
            let flow = events.wait(|Source::Queue, _| {
                if queue_evt.read().is_ok() {
                    pending = true;
                }
            });
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => return,
                Err(e) => {
                    log::error!("entropy: {e}; the device stops");
                    self.interrupt.fail();
                    return;
                }
            }
        }
    }

    /// Fills every available buffer; returns whether the guest needs an interrupt.
    fn process_queue(&mut self) -> Result<bool, virtio_queue::Error> {
        let mem = self.mem.as_ref();
        let mut returned = false;
        loop {
            self.queue.disable_notification(mem)?;
            while let Some(chain) = self.queue.iter(mem)?.next() {
                let head = chain.head_index();
                let written = fill_chain(mem, chain, &self.counters);
                self.queue.add_used(mem, head, written)?;
                returned = true;
            }
            if !self.queue.enable_notification(mem)? {
                break;
            }
        }
        Ok(returned && self.queue.needs_notification(mem)?)
    }
}

/// Writes random bytes into the chain's device-writable buffers (readable ones are
/// skipped: the spec has none); returns the bytes written. A buffer the device cannot
/// write ends the request with what was written before it.
fn fill_chain<C>(mem: &GuestMemoryMmap, chain: C, counters: &EntropyCounters) -> u32
where
    C: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut buf = vec![0u8; 4096];
    let mut total = 0usize;
    let mut invalid = true;
    'descs: for desc in chain {
        if !desc.is_write_only() {
            continue;
        }
        invalid = false;
        let mut left = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        let mut addr = desc.addr();
        while left > 0 && total < MAX_REQUEST_BYTES {
            let n = left.min(buf.len()).min(MAX_REQUEST_BYTES - total);
            if let Err(e) = getrandom(&mut buf[..n]) {
                log::warn!("entropy: getrandom: {e}");
                counters.host_failures.fetch_add(1, Ordering::Relaxed);
                break 'descs;
            }
            if mem.write_slice(&buf[..n], addr).is_err() {
                invalid = true;
                break 'descs;
            }
            total += n;
            left -= n;
            addr = GuestAddress(addr.0.wrapping_add(n as u64));
        }
    }
    counters.requests.fetch_add(1, Ordering::Relaxed);
    if invalid {
        counters.invalid_requests.fetch_add(1, Ordering::Relaxed);
    }
    counters.bytes.fetch_add(total as u64, Ordering::Relaxed);
    // At most MAX_REQUEST_BYTES.
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// Fills `buf` from the host's entropy pool (blocks only before the pool is initialised,
/// which a host running VMs is long past).
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live mutable slice the call
        // writes at most `rest.len()` bytes into.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

fn event_loop(
    stop: EventFd,
    pause: &Arc<DevicePause>,
    queue_evt: &EventFd,
) -> Result<DeviceEvents<Source>, EventLoopError> {
    let mut events = DeviceEvents::new(stop, pause.clone())?;
    events.add(queue_evt, Source::Queue, EventSet::IN)?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_ring::{leak_memory, Ring, NEXT, WRITE};

    fn worker(ring: &Ring, mem: &'static Arc<GuestMemoryMmap>) -> Worker {
        Worker {
            queue: ring.queue(),
            mem: mem.clone(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            counters: Arc::new(EntropyCounters::default()),
        }
    }

    #[test]
    fn writable_buffers_are_filled_and_capped() {
        let mem = leak_memory(1 << 20);
        let ring = Ring::new(mem, 0, 16);
        let mut w = worker(&ring, mem);
        // One chain of two writable buffers (100 and 200 bytes), then a huge one.
        ring.desc(0, 0x10000, 100, WRITE | NEXT, 1);
        ring.desc(1, 0x20000, 200, WRITE, 0);
        ring.publish(0);
        ring.desc(2, 0x40000, 512 << 10, WRITE, 0);
        ring.publish(2);
        assert!(w.process_queue().unwrap(), "the guest is interrupted");
        assert_eq!(ring.used_idx(), 2);
        assert_eq!(ring.used(0), (0, 300));
        assert_eq!(ring.used(1), (2, MAX_REQUEST_BYTES as u32));
        let mut got = [0u8; 200];
        mem.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert!(got.iter().any(|b| *b != 0), "random bytes, not zeros");
        assert_eq!(
            w.counters.bytes.load(Ordering::Relaxed),
            300 + MAX_REQUEST_BYTES as u64
        );
        assert_eq!(w.counters.invalid_requests.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn unwritable_requests_are_answered_empty_and_counted() {
        let mem = leak_memory(1 << 20);
        let ring = Ring::new(mem, 0, 16);
        let mut w = worker(&ring, mem);
        // Readable only; then a buffer running past the end of guest memory.
        ring.desc(0, 0x10000, 64, 0, 0);
        ring.publish(0);
        ring.desc(1, (1 << 20) - 16, 64, WRITE, 0);
        ring.publish(1);
        assert!(w.process_queue().unwrap());
        assert_eq!(ring.used(0), (0, 0));
        assert_eq!(ring.used(1), (1, 0));
        assert_eq!(w.counters.invalid_requests.load(Ordering::Relaxed), 2);
        // A corrupt available index breaks the queue: an error, not a panic.
        ring.set_avail_idx(ring.used_idx().wrapping_add(100));
        assert!(w.process_queue().is_err());
    }
}
