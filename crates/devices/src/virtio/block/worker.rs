//! The block device's I/O thread: drains the request queue, does the file I/O, returns
//! the buffers and interrupts the guest, until the driver resets the device.

use super::disk::{DiskFile, SECTOR_SIZE};
use super::request::{self, Request, RequestError, RequestKind, ID_BYTES, S_IOERR, S_OK, S_UNSUPP};
use crate::virtio::event_loop::{DeviceEvents, EventLoopError, Flow};
use crate::virtio::DevicePause;
use crate::virtio::GuestMemoryMmap;
use crate::virtio::{Interrupt, InterruptKind};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Exact counters of what the guest asked and got, for metrics and metering.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Bytes read by successful read requests.
    pub read_bytes: AtomicU64,
    /// Bytes written by successful write requests.
    pub write_bytes: AtomicU64,
    /// Successful read requests.
    pub read_count: AtomicU64,
    /// Successful write requests.
    pub write_count: AtomicU64,
    /// Successful flush requests.
    pub flush_count: AtomicU64,
    /// Requests that failed in the host (I/O errors, writes to a read-only drive).
    pub io_errors: AtomicU64,
    /// Requests that were malformed (answered IOERR or UNSUPP, or that broke the queue).
    pub invalid_requests: AtomicU64,
}

/// The queue can no longer be trusted; the device needs a reset.
#[derive(Debug, Error)]
pub enum QueueBroken {
    /// The rings themselves are unusable (e.g. an available index far ahead).
    #[error("virtqueue: {0}")]
    Ring(virtio_queue::Error),
    /// A chain cannot even be answered.
    #[error("descriptor chain {head}: {reason}")]
    Chain {
        /// Its head index.
        head: u16,
        /// Why.
        reason: RequestError,
    },
}

impl From<virtio_queue::Error> for QueueBroken {
    fn from(e: virtio_queue::Error) -> Self {
        QueueBroken::Ring(e)
    }
}

/// Executes requests against one disk.
pub struct RequestHandler {
    disk: DiskFile,
    id: [u8; ID_BYTES],
    counters: Arc<BlockCounters>,
}

impl RequestHandler {
    /// A handler for `disk`, answering get-id with `id` (truncated to 20 bytes).
    pub fn new(disk: DiskFile, id: &str, counters: Arc<BlockCounters>) -> Self {
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            disk,
            id: id_bytes,
            counters,
        }
    }

    /// Puts `disk` in place of the current one (a drive's backing file swapped after
    /// boot); the old file is closed, its lock released.
    pub fn replace_disk(&mut self, disk: DiskFile) {
        self.disk = disk;
    }

    /// The disk.
    pub fn disk(&self) -> &DiskFile {
        &self.disk
    }

    /// Processes every available request on `queue`. Returns whether the guest needs an
    /// interrupt for the buffers returned.
    pub fn process_queue(
        &self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueBroken> {
        let mut returned = false;
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = queue.iter(mem)?.next() {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                let used_len = self.handle_chain(mem, &descs).map_err(|reason| {
                    self.counters
                        .invalid_requests
                        .fetch_add(1, Ordering::Relaxed);
                    QueueBroken::Chain { head, reason }
                })?;
                queue.add_used(mem, head, used_len)?;
                returned = true;
            }
            // With EVENT_IDX, a request that arrived after the last check and before
            // notifications were re-enabled would otherwise wait for the next kick.
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        Ok(returned && queue.needs_notification(mem)?)
    }

    /// Answers one chain; returns the used length. Fails only when there is no status
    /// byte to answer in.
    fn handle_chain(
        &self,
        mem: &GuestMemoryMmap,
        descs: &[Descriptor],
    ) -> Result<u32, RequestError> {
        let req = match request::parse(mem, descs, self.disk.size()) {
            Ok(req) => req,
            Err(RequestError::NoStatus) => return Err(RequestError::NoStatus),
            Err(e) => {
                log::debug!("block: invalid request: {e}");
                self.counters
                    .invalid_requests
                    .fetch_add(1, Ordering::Relaxed);
                let status = request::status_byte(mem, descs).ok_or(RequestError::NoStatus)?;
                mem.write_obj(S_IOERR, status)
                    .map_err(|_| RequestError::NoStatus)?;
                return Ok(1);
            }
        };
        let (status, written) = self.execute(mem, &req);
        mem.write_obj(status, req.status)
            .map_err(|_| RequestError::NoStatus)?;
        Ok(written.saturating_add(1))
    }

    /// Runs a parsed request; returns its status and the bytes written into guest buffers.
    fn execute(&self, mem: &GuestMemoryMmap, req: &Request) -> (u8, u32) {
        let c = &self.counters;
        let result = match req.kind {
            RequestKind::In => self.transfer(mem, req, false).map(|()| {
                c.read_count.fetch_add(1, Ordering::Relaxed);
                c.read_bytes.fetch_add(req.data_len, Ordering::Relaxed);
                // The used length only hints at what was written; a read of 4 GiB or
                // more (many large segments) reports the most it can.
                u32::try_from(req.data_len).unwrap_or(u32::MAX)
            }),
            RequestKind::Out => self.transfer(mem, req, true).map(|()| {
                c.write_count.fetch_add(1, Ordering::Relaxed);
                c.write_bytes.fetch_add(req.data_len, Ordering::Relaxed);
                0
            }),
            RequestKind::Flush => self.disk.flush().map(|()| {
                c.flush_count.fetch_add(1, Ordering::Relaxed);
                0
            }),
            RequestKind::GetId => self.write_id(mem, req),
            RequestKind::Unsupported(t) => {
                log::debug!("block: unsupported request type {t}");
                c.invalid_requests.fetch_add(1, Ordering::Relaxed);
                return (S_UNSUPP, 0);
            }
        };
        match result {
            Ok(n) => (S_OK, n),
            Err(e) => {
                log::warn!("block: {:?} at sector {}: {e}", req.kind, req.sector);
                c.io_errors.fetch_add(1, Ordering::Relaxed);
                (S_IOERR, 0)
            }
        }
    }

    fn transfer(&self, mem: &GuestMemoryMmap, req: &Request, write: bool) -> io::Result<()> {
        // The slices borrow `mem`, so the mappings outlive the system call.
        let mut iovs = Vec::with_capacity(req.data.len());
        for seg in &req.data {
            let slice = mem
                .get_slice(seg.addr, seg.len as usize)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            if !write {
                // The read lands in guest memory behind vm-memory's back: mark the pages
                // for diff snapshots.
                vm_memory::bitmap::Bitmap::mark_dirty(slice.bitmap(), 0, slice.len());
            }
            iovs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        // Checked against the capacity by the parser.
        let offset = req.sector * SECTOR_SIZE;
        // SAFETY: each iovec covers a range of guest memory that get_slice verified lies
        // inside one mapped region of `mem`, which stays mapped while `mem` is borrowed.
        // Guest memory may change under us; that only affects the bytes moved.
        unsafe {
            if write {
                self.disk.write_vectored_at(&mut iovs, offset)
            } else {
                self.disk.read_vectored_at(&mut iovs, offset)
            }
        }
    }

    fn write_id(&self, mem: &GuestMemoryMmap, req: &Request) -> io::Result<u32> {
        let want = usize::try_from(req.data_len).unwrap_or(usize::MAX);
        let mut left = &self.id[..want.min(ID_BYTES)];
        let mut written = 0usize;
        for seg in &req.data {
            if left.is_empty() {
                break;
            }
            let n = left.len().min(seg.len as usize);
            mem.write_slice(&left[..n], seg.addr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            left = &left[n..];
            written += n;
        }
        // At most ID_BYTES.
        Ok(u32::try_from(written).unwrap_or(u32::MAX))
    }
}

/// The block thread's own event sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The guest notified the request queue.
    Queue,
    /// A backing file waits to be swapped in.
    Swap,
}

/// Runs the queue until `stop` fires; returns the handler for a later activation. A disk
/// swapped in through `swap` replaces the current one between requests, and the guest is
/// told of the new capacity by a configuration-change interrupt.
pub fn run(
    mut handler: RequestHandler,
    mut queue: Queue,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    queue_evt: EventFd,
    stop: EventFd,
    handles: &Handles,
) -> RequestHandler {
    let swap = &handles.swap;
    let mut events = match event_loop(stop, handles, &queue_evt) {
        Ok(events) => events,
        Err(e) => {
            log::error!("block: {e}; the device stops");
            interrupt.fail();
            return handler;
        }
    };
    let mut broken = false;
    // Requests queued before the first notification (possible after a reset) are served.
    let mut pending = true;
    loop {
        // While paused, notifications are remembered and served after resume.
        let paused = events.paused_with(|| vec![queue.state()]);
        if pending && !broken && !paused {
            pending = false;
            match handler.process_queue(&mut queue, &mem) {
                Ok(true) => interrupt.trigger(InterruptKind::Vring),
                Ok(false) => {}
                Err(e) => {
                    log::error!("block: {e}; the device needs a reset");
                    broken = true;
                    interrupt.fail();
                }
            }
        }
        let flow = events.wait(|source, _| match source {
            Source::Swap => {
                let _ = swap.evt.read();
                if swap.apply(&mut handler) {
                    interrupt.trigger(InterruptKind::Config);
                }
            }
            Source::Queue => {
                if queue_evt.read().is_ok() {
                    pending = true;
                }
            }
        });
        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop) => return handler,
            Err(e) => {
                log::error!("block: {e}; the device stops");
                interrupt.fail();
                return handler;
            }
        }
    }
}

fn event_loop(
    stop: EventFd,
    handles: &Handles,
    queue_evt: &EventFd,
) -> Result<DeviceEvents<Source>, EventLoopError> {
    let mut events = DeviceEvents::new(stop, handles.pause.clone())?;
    events.add(&handles.swap.evt, Source::Swap, EventSet::IN)?;
    events.add(queue_evt, Source::Queue, EventSet::IN)?;
    Ok(events)
}

/// What the VMM thread reaches a running drive's thread with.
pub struct Handles {
    /// Backing-file swaps.
    pub swap: Arc<DiskSwap>,
    /// Pause and resume.
    pub pause: Arc<DevicePause>,
}

/// A new backing file for a running drive, handed from the VMM thread to the drive's
/// I/O thread, and the capacity the guest reads from config space.
#[derive(Debug)]
pub struct DiskSwap {
    pending: std::sync::Mutex<Option<DiskFile>>,
    evt: EventFd,
    sectors: std::sync::atomic::AtomicU64,
}

impl DiskSwap {
    /// For a drive of `sectors` sectors.
    pub fn new(sectors: u64) -> io::Result<Self> {
        Ok(DiskSwap {
            pending: std::sync::Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            sectors: std::sync::atomic::AtomicU64::new(sectors),
        })
    }

    /// Asks for `disk` to replace the drive's file; applied between requests.
    pub fn request(&self, disk: DiskFile) -> io::Result<()> {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(disk);
        self.evt.write(1)
    }

    /// The capacity in sectors the guest should see.
    pub fn sectors(&self) -> u64 {
        self.sectors.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applies a pending swap to `handler`; returns whether there was one.
    pub fn apply(&self, handler: &mut RequestHandler) -> bool {
        let Some(disk) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return false;
        };
        self.sectors.store(
            disk.size() / SECTOR_SIZE,
            std::sync::atomic::Ordering::Release,
        );
        handler.replace_disk(disk);
        true
    }
}
