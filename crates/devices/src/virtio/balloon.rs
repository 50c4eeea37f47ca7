//! virtio-balloon (virtio 1.2, section 5.5): the host asks for a number of the guest's
//! pages (`num_pages` in the configuration space), the guest's driver hands them over on
//! the inflate queue, and the device gives their memory back to the host
//! (`madvise(MADV_DONTNEED)`: ember's RSS falls). Pages handed back on the deflate queue
//! need nothing: the guest's next touch faults in a fresh page. With a statistics
//! interval, the device keeps the guest's statistics buffer and returns it every interval,
//! which makes the driver refill it with fresh numbers.

use super::event_loop::{DeviceEvents, EventLoopError, Flow};
use super::{
    read_config_bytes, ActivateError, Activation, DevicePause, DeviceThread, GuestMemoryMmap,
    Interrupt, InterruptKind, VirtioDevice, F_VERSION_1,
};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use virtio_bindings::virtio_ids;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// Virtio device type of a memory balloon.
pub const TYPE_BALLOON: u32 = virtio_ids::VIRTIO_ID_BALLOON;
/// Feature: the statistics queue exists.
pub const F_STATS_VQ: u32 = 1;
/// Feature: the guest may take pages back from the balloon when it runs out of memory.
pub const F_DEFLATE_ON_OOM: u32 = 2;
/// The balloon's page size: PFNs are in 4 KiB units whatever the guest's page size.
pub const PAGE_SHIFT: u32 = 12;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;
/// The statistics buffer: at most this many (tag, value) entries are read.
const MAX_STATS: usize = 16;

/// The guest's statistics (virtio's tags 0 to 9), as it last reported them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestStats {
    /// Bytes swapped in.
    pub swap_in: Option<u64>,
    /// Bytes swapped out.
    pub swap_out: Option<u64>,
    /// Major page faults.
    pub major_faults: Option<u64>,
    /// Minor page faults.
    pub minor_faults: Option<u64>,
    /// Free memory, bytes.
    pub free_memory: Option<u64>,
    /// Total memory, bytes.
    pub total_memory: Option<u64>,
    /// Available memory, bytes.
    pub available_memory: Option<u64>,
    /// Page cache, bytes.
    pub disk_caches: Option<u64>,
    /// Huge page allocations.
    pub hugetlb_allocations: Option<u64>,
    /// Huge page allocation failures.
    pub hugetlb_failures: Option<u64>,
}

impl GuestStats {
    fn set(&mut self, tag: u16, value: u64) -> bool {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// What the VMM thread reaches the balloon with: the target, the guest's answer, the
/// statistics, and a configuration interrupt when the target moves.
#[derive(Default)]
pub struct BalloonControl {
    /// Pages the host asks the guest for (`num_pages`).
    target_pages: AtomicU32,
    /// Pages the guest says it has given (`actual`, written by the driver).
    actual_pages: AtomicU32,
    /// Seconds between statistics requests (0: no statistics).
    stats_interval_s: AtomicU32,
    stats: Mutex<GuestStats>,
    /// The running device's interrupt, to announce a new target.
    interrupt: Mutex<Option<Arc<Interrupt>>>,
    /// Pages given back to the host (inflations that reached madvise).
    pub pages_released: AtomicU64,
    /// Inflate or deflate entries that named memory outside the guest.
    pub invalid_pfns: AtomicU64,
}

impl BalloonControl {
    /// Pages asked for.
    pub fn target_pages(&self) -> u32 {
        self.target_pages.load(Ordering::Acquire)
    }

    /// Pages the guest reports in the balloon.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages.load(Ordering::Acquire)
    }

    /// The statistics interval in seconds.
    pub fn stats_interval_s(&self) -> u32 {
        self.stats_interval_s.load(Ordering::Acquire)
    }

    /// The guest's last statistics.
    pub fn stats(&self) -> GuestStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the guest for `pages` pages; a running driver is told at once.
    pub fn set_target(&self, pages: u32) {
        self.target_pages.store(pages, Ordering::Release);
        if let Some(i) = self
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            i.trigger(InterruptKind::Config);
        }
    }

    /// Changes the statistics interval (the device's timer follows at its next tick).
    pub fn set_stats_interval(&self, seconds: u32) {
        self.stats_interval_s.store(seconds, Ordering::Release);
    }
}

/// The balloon device.
pub struct Balloon {
    features: u64,
    queue_sizes: Vec<u16>,
    control: Arc<BalloonControl>,
    /// The statistics timer, while no thread holds it. Made with the device: activation
    /// runs on a vCPU thread, whose filter has no timerfd_create.
    timer: Option<TimerFd>,
    running: Option<DeviceThread<TimerFd>>,
    pause: Arc<DevicePause>,
}

impl Balloon {
    /// A balloon asking for `target_pages` from the start, offering deflate-on-OOM and a
    /// statistics queue polled every `stats_interval_s` seconds (0: none) as asked.
    pub fn new(
        target_pages: u32,
        deflate_on_oom: bool,
        stats_interval_s: u32,
    ) -> std::io::Result<Self> {
        let mut features = 1u64 << F_VERSION_1;
        if deflate_on_oom {
            features |= 1 << F_DEFLATE_ON_OOM;
        }
        let mut queue_sizes = vec![QUEUE_SIZE, QUEUE_SIZE];
        if stats_interval_s > 0 {
            features |= 1 << F_STATS_VQ;
            queue_sizes.push(QUEUE_SIZE);
        }
        let control = Arc::new(BalloonControl::default());
        control.target_pages.store(target_pages, Ordering::Release);
        control
            .stats_interval_s
            .store(stats_interval_s, Ordering::Release);
        Ok(Self {
            features,
            queue_sizes,
            control,
            timer: Some(TimerFd::new()?),
            running: None,
            pause: Arc::new(DevicePause::new()?),
        })
    }

    /// The handle the VMM thread uses.
    pub fn control(&self) -> Arc<BalloonControl> {
        self.control.clone()
    }

    /// The switch that pauses the device's thread.
    pub fn pause_handle(&self) -> Arc<DevicePause> {
        self.pause.clone()
    }

    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..4].copy_from_slice(&self.control.target_pages().to_le_bytes());
        c[4..].copy_from_slice(&self.control.actual_pages().to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write; a partial write updates
        // the bytes it covers.
        let mut c = self.config();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start < 4 || start.saturating_add(data.len()) > c.len() {
            log::debug!("balloon: config write at {offset:#x} ignored");
            return;
        }
        c[start..start + data.len()].copy_from_slice(data);
        let actual = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        self.control.actual_pages.store(actual, Ordering::Release);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.running.is_some() || a.queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::BadState);
        }
        for (i, q) in a.queues.iter().enumerate() {
            if !q.is_valid(a.mem.as_ref()) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        let timer = self.timer.take().ok_or(ActivateError::BadState)?;
        *self
            .control
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(a.interrupt.clone());
        let worker = Worker {
            queues: a.queues,
            mem: a.mem,
            interrupt: a.interrupt,
            control: self.control.clone(),
            held_stats: None,
        };
        let (evts, pause) = (a.queue_evts, self.pause.clone());
        self.running = Some(DeviceThread::spawn(
            "balloon".into(),
            seccomp::ThreadKind::Balloon,
            move |stop| {
                pause.attach();
                let timer = worker.run(evts, timer, stop, &pause);
                pause.detach();
                timer
            },
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        *self
            .control
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(running) = self.running.take() {
            self.timer = running.stop();
            if self.timer.is_none() {
                log::error!("balloon: worker lost; device unusable");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Queue(usize),
    Timer,
}

struct Worker {
    queues: Vec<Queue>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    control: Arc<BalloonControl>,
    /// The statistics buffer the device holds until the next interval.
    held_stats: Option<u16>,
}

impl Worker {
    /// Serves until stopped; hands the timer back.
    fn run(
        mut self,
        evts: Vec<EventFd>,
        mut timer: TimerFd,
        stop: EventFd,
        pause: &Arc<DevicePause>,
    ) -> TimerFd {
        let mut events = match event_loop(stop, pause, &evts, &timer) {
            Ok(events) => events,
            Err(e) => {
                log::error!("balloon: {e}; the device stops");
                self.interrupt.fail();
                return timer;
            }
        };
        let mut interval = 0;
        let mut pending = vec![true; self.queues.len()];
        let mut tick = false;
        let mut broken = false;
        loop {
            let paused = events.paused_with(|| self.queues.iter().map(|q| q.state()).collect());
            let wanted = self.control.stats_interval_s();
            if wanted != interval && self.queues.len() > STATS {
                interval = wanted;
                let period = Duration::from_secs(u64::from(interval));
                let armed = if interval == 0 {
                    timer.clear()
                } else {
                    timer.reset(period, Some(period))
                };
                if let Err(e) = armed {
                    log::warn!("balloon: statistics timer: {e}");
                }
            }
            if !paused && !broken {
                match self.serve(&mut pending, std::mem::take(&mut tick)) {
                    Ok(true) => self.interrupt.trigger(InterruptKind::Vring),
                    Ok(false) => {}
                    Err(e) => {
                        log::error!("balloon: virtqueue: {e}; the device needs a reset");
                        broken = true;
                        self.interrupt.fail();
                    }
                }
            }
            let flow = events.wait(|source, _| match source {
                Source::Queue(i) => {
                    if evts.get(i).is_some_and(|e| e.read().is_ok()) {
                        if let Some(p) = pending.get_mut(i) {
                            *p = true;
                        }
                    }
                }
                Source::Timer => {
                    let _ = timer.wait();
                    tick = true;
                }
            });
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => {
                    let _ = timer.clear();
                    return timer;
                }
                Err(e) => {
                    log::error!("balloon: {e}; the device stops");
                    self.interrupt.fail();
                    return timer;
                }
            }
        }
    }

    /// One pass over the queues that were kicked; returns whether to interrupt.
    fn serve(&mut self, pending: &mut [bool], tick: bool) -> Result<bool, virtio_queue::Error> {
        let mut irq = false;
        for q in [INFLATE, DEFLATE] {
            if std::mem::take(&mut pending[q]) {
                irq |= self.drain(q)?;
            }
        }
        if self.queues.len() > STATS {
            if std::mem::take(&mut pending[STATS]) {
                self.take_stats()?;
            }
            // The interval is up: hand the buffer back, and the driver refills it.
            if tick {
                if let Some(head) = self.held_stats.take() {
                    self.queues[STATS].add_used(self.mem.as_ref(), head, 0)?;
                    irq |= self.queues[STATS].needs_notification(self.mem.as_ref())?;
                }
            }
        }
        Ok(irq)
    }

    /// Processes every inflate (or deflate) chain.
    fn drain(&mut self, q: usize) -> Result<bool, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut returned = false;
        loop {
            self.queues[q].disable_notification(mem.as_ref())?;
            while let Some(chain) = self.queues[q].iter(mem.as_ref())?.next() {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                if q == INFLATE {
                    release_pfns(mem.as_ref(), &descs, &self.control);
                }
                self.queues[q].add_used(mem.as_ref(), head, 0)?;
                returned = true;
            }
            if !self.queues[q].enable_notification(mem.as_ref())? {
                break;
            }
        }
        Ok(returned && self.queues[q].needs_notification(mem.as_ref())?)
    }

    /// Reads the statistics the driver put in its buffer and keeps the buffer.
    fn take_stats(&mut self) -> Result<(), virtio_queue::Error> {
        let mem = self.mem.clone();
        while let Some(chain) = self.queues[STATS].iter(mem.as_ref())?.next() {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            if let Some(stats) = read_stats(mem.as_ref(), &descs) {
                *self.control.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
            }
            // A driver that posts a second buffer gets the first back.
            if let Some(old) = self.held_stats.replace(head) {
                self.queues[STATS].add_used(mem.as_ref(), old, 0)?;
            }
        }
        Ok(())
    }
}

/// Gives the pages named by the chain's PFNs back to the host. Runs of adjacent pages are
/// released together; a PFN outside guest memory is counted and skipped.
fn release_pfns(mem: &GuestMemoryMmap, descs: &[Descriptor], control: &BalloonControl) {
    let mut run: Option<(u64, u64)> = None;
    for d in descs.iter().filter(|d| !d.is_write_only()) {
        let count = d.len() / 4;
        for i in 0..u64::from(count) {
            let Ok(pfn) = mem.read_obj::<u32>(GuestAddress(d.addr().0.wrapping_add(i * 4))) else {
                control.invalid_pfns.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let addr = u64::from(pfn) << PAGE_SHIFT;
            run = match run {
                Some((start, len)) if start + len == addr => Some((start, len + PAGE_SIZE)),
                Some(r) => {
                    release(mem, r, control);
                    Some((addr, PAGE_SIZE))
                }
                None => Some((addr, PAGE_SIZE)),
            };
        }
    }
    if let Some(r) = run {
        release(mem, r, control);
    }
}

fn release(mem: &GuestMemoryMmap, (start, len): (u64, u64), control: &BalloonControl) {
    // A run may cross a region boundary: each page is released within its region.
    let mut at = start;
    let end = start.saturating_add(len);
    while at < end {
        let Some(region) = mem.find_region(GuestAddress(at)) else {
            control.invalid_pfns.fetch_add(1, Ordering::Relaxed);
            at += PAGE_SIZE;
            continue;
        };
        let region_end = vm_memory::GuestMemoryRegion::last_addr(region)
            .0
            .saturating_add(1);
        let n = end.min(region_end) - at;
        let slice = usize::try_from(n)
            .ok()
            .and_then(|len| mem.get_slice(GuestAddress(at), len).ok());
        let Some(slice) = slice else {
            control
                .invalid_pfns
                .fetch_add(n / PAGE_SIZE, Ordering::Relaxed);
            at += n;
            continue;
        };
        let ptr = slice.ptr_guard_mut().as_ptr();
        // SAFETY: `ptr`..`ptr + n` is guest memory inside one mapped region (get_slice
        // checked it); MADV_DONTNEED only drops the pages' contents (the guest gave them
        // up), the mapping itself stays valid.
        let r = unsafe { libc::madvise(ptr.cast(), slice.len(), libc::MADV_DONTNEED) };
        if r == 0 {
            // The page now reads as zeros (or the snapshot file's contents): a change of
            // guest memory a diff snapshot must carry.
            vm_memory::bitmap::Bitmap::mark_dirty(slice.bitmap(), 0, slice.len());
            control
                .pages_released
                .fetch_add(n / PAGE_SIZE, Ordering::Relaxed);
        } else {
            log::warn!("balloon: madvise: {}", std::io::Error::last_os_error());
        }
        at += n;
    }
}

/// The (tag u16, value u64) entries of a statistics buffer; `None` if it cannot be read.
fn read_stats(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Option<GuestStats> {
    let d = descs.iter().find(|d| !d.is_write_only())?;
    let entries = (d.len() as usize / 10).min(MAX_STATS);
    let mut stats = GuestStats::default();
    for i in 0..entries as u64 {
        let at = d.addr().0.wrapping_add(i * 10);
        let tag: u16 = mem.read_obj(GuestAddress(at)).ok()?;
        let value: u64 = mem.read_obj(GuestAddress(at.wrapping_add(2))).ok()?;
        stats.set(tag, value);
    }
    Some(stats)
}

fn event_loop(
    stop: EventFd,
    pause: &Arc<DevicePause>,
    evts: &[EventFd],
    timer: &TimerFd,
) -> Result<DeviceEvents<Source>, EventLoopError> {
    let mut events = DeviceEvents::new(stop, pause.clone())?;
    for (i, e) in evts.iter().enumerate() {
        events.add(e, Source::Queue(i), EventSet::IN)?;
    }
    events.add(timer, Source::Timer, EventSet::IN)?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_ring::{leak_memory, Ring};

    fn worker(
        mem: &'static Arc<GuestMemoryMmap>,
        rings: &[&Ring],
        control: Arc<BalloonControl>,
    ) -> Worker {
        Worker {
            queues: rings.iter().map(|r| r.queue()).collect(),
            mem: mem.clone(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            control,
            held_stats: None,
        }
    }

    #[test]
    fn inflated_pages_read_as_zero_and_bad_pfns_are_counted() {
        let mem = leak_memory(1 << 20);
        let (inflate, deflate) = (Ring::new(mem, 0, 16), Ring::new(mem, 0x1000, 16));
        let control = Arc::new(BalloonControl::default());
        let mut w = worker(mem, &[&inflate, &deflate], control.clone());
        for pfn in 0x80u64..0x84 {
            mem.write_obj(0xabu8, GuestAddress(pfn << PAGE_SHIFT))
                .unwrap();
        }
        // PFNs 0x80..0x82 (one run), 0x83 alone... and one past the end of memory.
        let pfns: [u32; 4] = [0x80, 0x81, 0x83, 0x1000];
        for (i, p) in pfns.iter().enumerate() {
            mem.write_obj(*p, GuestAddress(0x8000 + 4 * i as u64))
                .unwrap();
        }
        inflate.desc(0, 0x8000, 16, 0, 0);
        inflate.publish(0);
        assert!(w.serve(&mut [true, false], false).unwrap());
        assert_eq!(inflate.used(0), (0, 0));
        for (pfn, want) in [(0x80u64, 0u8), (0x81, 0), (0x82, 0xab), (0x83, 0)] {
            let got: u8 = mem.read_obj(GuestAddress(pfn << PAGE_SHIFT)).unwrap();
            assert_eq!(got, want, "pfn {pfn:#x}");
        }
        assert_eq!(control.pages_released.load(Ordering::Relaxed), 3);
        assert_eq!(control.invalid_pfns.load(Ordering::Relaxed), 1);
        // Deflating returns the chain and touches nothing.
        deflate.desc(0, 0x8000, 8, 0, 0);
        deflate.publish(0);
        assert!(w.serve(&mut [false, true], false).unwrap());
        assert_eq!(deflate.used_idx(), 1);
        // A corrupt ring is an error, not a panic.
        inflate.set_avail_idx(100);
        assert!(w.serve(&mut [true, false], false).is_err());
    }

    #[test]
    fn the_driver_writes_only_actual_and_the_target_follows_the_host() {
        let mut b = Balloon::new(256, true, 0).unwrap();
        assert_eq!(
            b.features() & (1 << F_DEFLATE_ON_OOM),
            1 << F_DEFLATE_ON_OOM
        );
        assert_eq!(b.features() & (1 << F_STATS_VQ), 0);
        assert_eq!(b.queue_max_sizes().len(), 2);
        b.write_config(0, &7u32.to_le_bytes());
        b.write_config(4, &100u32.to_le_bytes());
        let mut c = [0u8; 8];
        b.read_config(0, &mut c);
        assert_eq!(c[..4], 256u32.to_le_bytes());
        assert_eq!(c[4..], 100u32.to_le_bytes());
        b.control().set_target(512);
        b.read_config(0, &mut c[..4]);
        assert_eq!(c[..4], 512u32.to_le_bytes());
        assert_eq!(b.control().actual_pages(), 100);
        b.write_config(6, &[1, 0, 0]);
        assert_eq!(
            b.control().actual_pages(),
            100,
            "a write past the end is ignored"
        );
    }

    #[test]
    fn statistics_are_read_and_the_buffer_returned_each_interval() {
        let mem = leak_memory(1 << 20);
        let rings = [
            Ring::new(mem, 0, 16),
            Ring::new(mem, 0x1000, 16),
            Ring::new(mem, 0x2000, 16),
        ];
        let control = Arc::new(BalloonControl::default());
        let mut w = worker(mem, &[&rings[0], &rings[1], &rings[2]], control.clone());
        let entries: [(u16, u64); 3] = [(4, 1234), (5, 5678), (99, 1)];
        for (i, (tag, val)) in entries.iter().enumerate() {
            let at = 0x9000 + 10 * i as u64;
            mem.write_obj(*tag, GuestAddress(at)).unwrap();
            mem.write_obj(*val, GuestAddress(at + 2)).unwrap();
        }
        rings[2].desc(0, 0x9000, 30, 0, 0);
        rings[2].publish(0);
        assert!(
            !w.serve(&mut [false, false, true], false).unwrap(),
            "held, not returned"
        );
        let s = control.stats();
        assert_eq!(
            (s.free_memory, s.total_memory, s.swap_in),
            (Some(1234), Some(5678), None)
        );
        assert_eq!(rings[2].used_idx(), 0);
        w.serve(&mut [false, false, false], true).unwrap();
        assert_eq!(rings[2].used_idx(), 1, "returned at the tick");
    }
}
