//! Moving frames between a tap and the guest's queues.
//!
//! Receive: a frame is read from the tap only when the previous one has been delivered, so
//! when the guest has no free buffers the frame waits here (one frame, never more) and the
//! tap is not polled until the guest posts buffers. Transmit: every available chain is
//! gathered straight from guest memory into one `writev` to the tap.

use super::mmds_port::{MmdsPort, PEEK_LEN};
use super::tap::VNET_HDR_LEN;
use crate::virtio::GuestMemoryMmap;
use std::io;
use std::mem::offset_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;
use virtio_bindings::virtio_net::virtio_net_hdr_v1;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Where the header says how many buffers a merged frame spans.
const NUM_BUFFERS_AT: usize = offset_of!(virtio_net_hdr_v1, num_buffers);

/// Largest frame with its header: a 64 KiB GSO packet plus the Ethernet and virtio-net
/// headers.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 14 + 65535;

/// Exact counters, for metrics and metering.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Bytes of frames delivered to the guest (without the virtio-net header).
    pub rx_bytes: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Frames read from the tap that could not be delivered (too big for a guest that
    /// does not merge buffers).
    pub rx_dropped: AtomicU64,
    /// Times the guest had no receive buffer for a waiting frame (it waited, not dropped).
    pub rx_no_buffer: AtomicU64,
    /// Bytes of frames sent by the guest (without the virtio-net header).
    pub tx_bytes: AtomicU64,
    /// Frames sent by the guest.
    pub tx_packets: AtomicU64,
    /// Frames from the guest that were malformed or that the tap refused (bad header).
    pub tx_dropped: AtomicU64,
}

/// The queues can no longer be trusted; the device needs a reset.
#[derive(Debug, Error)]
pub enum QueueBroken {
    /// The rings themselves are unusable.
    #[error("virtqueue: {0}")]
    Ring(#[from] virtio_queue::Error),
    /// A receive chain has no writable space or points outside guest memory.
    #[error("receive chain {0} is unusable")]
    RxChain(u16),
}

/// Where frames go and come from: a tap, or a test double.
pub trait FrameIo {
    /// Reads one frame with its header; `WouldBlock` when there is none.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame gathered from `iovs`.
    ///
    /// # Safety
    /// The iovecs must be valid for reads during the call.
    unsafe fn write_frame(&self, iovs: &[libc::iovec]) -> io::Result<usize>;
}

impl FrameIo for super::tap::Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        super::tap::Tap::read_frame(self, buf)
    }
    unsafe fn write_frame(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { super::tap::Tap::write_frame(self, iovs) }
    }
}

/// What a receive pass ended on.
#[derive(Debug, PartialEq, Eq)]
pub enum RxState {
    /// The tap has nothing more.
    TapEmpty,
    /// A frame waits for the guest to post buffers.
    NeedBuffers,
    /// Reading the tap failed (its interface was deleted): stop polling it.
    TapGone,
}

/// What a transmit pass ended on.
#[derive(Debug, PartialEq, Eq)]
pub enum TxState {
    /// The queue is empty.
    Drained,
    /// The tap cannot take more now; resume when it is writable.
    TapFull,
}

/// One device's frame mover.
pub struct Engine<T: FrameIo> {
    io: T,
    rx: Queue,
    tx: Queue,
    mergeable: bool,
    frame: Vec<u8>,
    frame_len: usize,
    /// A frame spanning several buffers was published in one step, which the queue's
    /// notification bookkeeping does not see: interrupt the guest regardless.
    force_irq: bool,
    counters: Arc<NetCounters>,
    /// MMDS, when this interface serves it.
    mmds: Option<MmdsPort>,
}

/// Guest buffers of one chain, checked to lie in guest memory.
type Segments = Vec<(GuestAddress, usize)>;

/// A receive chain taken for a frame.
struct RxChain {
    head: u16,
    segs: Segments,
}

fn segments(mem: &GuestMemoryMmap, descs: &[Descriptor], writable: bool) -> Option<Segments> {
    let mut out = Vec::with_capacity(descs.len());
    for d in descs {
        if d.len() == 0 {
            continue;
        }
        if d.is_write_only() != writable {
            return None;
        }
        mem.get_slice(d.addr(), d.len() as usize).ok()?;
        out.push((d.addr(), d.len() as usize));
    }
    Some(out)
}

impl<T: FrameIo> Engine<T> {
    /// The receive and transmit queues' state, in queue order (for snapshots).
    pub fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        vec![self.rx.state(), self.tx.state()]
    }

    /// An engine on `io` with the receive and transmit queues the driver set up.
    pub fn new(io: T, rx: Queue, tx: Queue, mergeable: bool, counters: Arc<NetCounters>) -> Self {
        Self {
            io,
            rx,
            tx,
            mergeable,
            frame: vec![0; MAX_FRAME],
            frame_len: 0,
            force_irq: false,
            counters,
            mmds: None,
        }
    }

    /// This interface also serves MMDS through `port`.
    pub fn with_mmds(mut self, port: Option<MmdsPort>) -> Self {
        self.mmds = port;
        self
    }

    /// MMDS on this interface, if it serves it.
    pub fn mmds(&mut self) -> Option<&mut MmdsPort> {
        self.mmds.as_mut()
    }

    /// The frame source and sink.
    pub fn io(&self) -> &T {
        &self.io
    }

    /// Whether a frame is waiting for receive buffers.
    pub fn has_pending_frame(&self) -> bool {
        self.frame_len > 0
    }

    /// Delivers frames from the tap until it is empty or the guest runs out of buffers.
    /// Returns the state and whether the guest should be interrupted.
    pub fn process_rx(&mut self, mem: &GuestMemoryMmap) -> Result<(RxState, bool), QueueBroken> {
        let mut delivered = false;
        loop {
            // MMDS's answers first: they are few and small, and the guest is waiting.
            if self.frame_len == 0 {
                if let Some(port) = self.mmds.as_mut().filter(|p| p.has_frames()) {
                    self.frame[..VNET_HDR_LEN].fill(0);
                    if let Some(n) = port.next_frame(&mut self.frame[VNET_HDR_LEN..]) {
                        self.frame_len = VNET_HDR_LEN + n;
                    }
                }
            }
            if self.frame_len == 0 {
                match self.io.read_frame(&mut self.frame) {
                    Ok(n) if n > VNET_HDR_LEN => self.frame_len = n,
                    Ok(0) => {
                        let irq = self.rx_irq(mem, delivered)?;
                        return Ok((RxState::TapEmpty, irq));
                    }
                    Ok(_) => {
                        // A header without a frame: nothing to deliver.
                        self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let irq = self.rx_irq(mem, delivered)?;
                        return Ok((RxState::TapEmpty, irq));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("net: reading the tap failed: {e}");
                        let irq = self.rx_irq(mem, delivered)?;
                        return Ok((RxState::TapGone, irq));
                    }
                }
            }
            if self.deliver(mem)? {
                delivered = true;
            } else if !self.ask_for_buffers(mem)? {
                // Not enough buffers, and none came meanwhile: wait for the guest's kick.
                self.counters.rx_no_buffer.fetch_add(1, Ordering::Relaxed);
                let irq = self.rx_irq(mem, delivered)?;
                return Ok((RxState::NeedBuffers, irq));
            }
        }
    }

    /// Whether the guest must be interrupted after a receive pass.
    fn rx_irq(&mut self, mem: &GuestMemoryMmap, delivered: bool) -> Result<bool, QueueBroken> {
        if !delivered {
            return Ok(false);
        }
        // Always asked, so the queue's bookkeeping restarts from here.
        let needed = self.rx.needs_notification(mem)?;
        Ok(needed || std::mem::take(&mut self.force_irq))
    }

    /// Asks the guest to notify us when it posts the next receive buffer; returns whether
    /// it posted some since we looked (then the caller tries again instead of waiting).
    ///
    /// The buffers already available may be too few for the waiting frame, so the
    /// notification point must be the driver's current index, not our position in the
    /// ring: with EVENT_IDX the driver only notifies when it moves past that point.
    fn ask_for_buffers(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        let ours = self.rx.next_avail();
        let theirs = self.rx.avail_idx(mem, Ordering::Acquire)?.0;
        self.rx.set_next_avail(theirs);
        let more = self.rx.enable_notification(mem);
        self.rx.set_next_avail(ours);
        Ok(more?)
    }

    /// Places the pending frame in receive buffers. `Ok(false)` when there are not enough
    /// (nothing consumed).
    fn deliver(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        let len = self.frame_len;
        let start = self.rx.next_avail();
        let mut chains: Vec<RxChain> = Vec::new();
        let mut room = 0usize;
        while room < len {
            let Some(chain) = self.rx.iter(mem)?.next() else {
                self.rx.set_next_avail(start);
                return Ok(false);
            };
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let segs = segments(mem, &descs, true).ok_or(QueueBroken::RxChain(head))?;
            let cap: usize = segs.iter().map(|s| s.1).sum();
            if cap < VNET_HDR_LEN && chains.is_empty() {
                return Err(QueueBroken::RxChain(head));
            }
            room += cap;
            chains.push(RxChain { head, segs });
            if !self.mergeable {
                break;
            }
        }
        if room < len {
            // Only without mergeable buffers: the frame does not fit the one buffer a
            // packet may use. Drop it, give the buffer back unused.
            self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
            self.frame_len = 0;
            for c in &chains {
                self.rx.add_used(mem, c.head, 0)?;
            }
            return Ok(true);
        }
        // At most the queue size (chains are distinct heads).
        let num_buffers = u16::try_from(chains.len())
            .map_err(|_| QueueBroken::RxChain(chains.first().map_or(0, |c| c.head)))?;
        self.frame[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2].copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0usize;
        let mut used = Vec::with_capacity(chains.len());
        for RxChain { head, segs } in &chains {
            let mut written = 0usize;
            for &(addr, seg_len) in segs {
                if off >= len {
                    break;
                }
                let n = seg_len.min(len - off);
                // Checked by `segments`; a failure here means the memory map changed.
                mem.write_slice(&self.frame[off..off + n], addr)
                    .map_err(|_| QueueBroken::RxChain(*head))?;
                off += n;
                written += n;
            }
            // At most MAX_FRAME.
            used.push((*head, u32::try_from(written).unwrap_or(u32::MAX)));
        }
        self.publish_used(mem, &used)?;
        self.counters
            .rx_bytes
            .fetch_add((len - VNET_HDR_LEN) as u64, Ordering::Relaxed);
        self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.frame_len = 0;
        Ok(true)
    }

    /// Returns a frame's buffers to the guest in one step: the driver must never see the
    /// first buffer of a merged frame before the others (it would count the frame as
    /// broken and drop it). The elements are written first, then the used index is
    /// published once, by `add_used` of the last one.
    fn publish_used(
        &mut self,
        mem: &GuestMemoryMmap,
        used: &[(u16, u32)],
    ) -> Result<(), QueueBroken> {
        let Some((&(last_head, last_len), rest)) = used.split_last() else {
            return Ok(());
        };
        let base = self.rx.next_used();
        let size = self.rx.size();
        for (k, &(head, len)) in rest.iter().enumerate() {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "ring indices count modulo 2^16, like the driver's"
            )]
            let slot = u64::from(base.wrapping_add(k as u16) % size);
            let elem = GuestAddress(self.rx.used_ring())
                .checked_add(4 + slot * 8)
                .ok_or(QueueBroken::RxChain(head))?;
            mem.write_obj(u32::from(head), elem)
                .map_err(|_| QueueBroken::RxChain(head))?;
            mem.write_obj(len, elem.unchecked_add(4))
                .map_err(|_| QueueBroken::RxChain(head))?;
        }
        if !rest.is_empty() {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "ring indices count modulo 2^16, like the driver's"
            )]
            let next = base.wrapping_add(rest.len() as u16);
            self.rx.set_next_used(next);
            self.force_irq = true;
        }
        self.rx.add_used(mem, last_head, last_len)?;
        Ok(())
    }

    /// Sends every available transmit chain to the tap. Returns the state and whether the
    /// guest should be interrupted.
    pub fn process_tx(&mut self, mem: &GuestMemoryMmap) -> Result<(TxState, bool), QueueBroken> {
        let mut returned = false;
        loop {
            self.tx.disable_notification(mem)?;
            while let Some(chain) = self.tx.iter(mem)?.next() {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                match self.send(mem, &descs) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Retry this chain when the tap drains.
                        let back = self.tx.next_avail().wrapping_sub(1);
                        self.tx.set_next_avail(back);
                        self.tx.enable_notification(mem)?;
                        let irq = returned && self.tx.needs_notification(mem)?;
                        return Ok((TxState::TapFull, irq));
                    }
                    Err(e) => {
                        log::debug!("net: transmit frame dropped: {e}");
                        self.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => {}
                }
                self.tx.add_used(mem, head, 0)?;
                returned = true;
            }
            if !self.tx.enable_notification(mem)? {
                break;
            }
        }
        let irq = returned && self.tx.needs_notification(mem)?;
        Ok((TxState::Drained, irq))
    }

    fn send(&mut self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> io::Result<()> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        let segs = segments(mem, descs, false)
            .ok_or_else(|| invalid("device-writable or out-of-memory buffer"))?;
        let total: usize = segs.iter().map(|s| s.1).sum();
        if total <= VNET_HDR_LEN {
            return Err(invalid("no frame after the header"));
        }
        if total > MAX_FRAME {
            return Err(invalid("frame larger than 64 KiB"));
        }
        if let Some(port) = self.mmds.as_mut() {
            let mut head = [0u8; PEEK_LEN];
            let n = copy_out(mem, &segs, VNET_HDR_LEN, &mut head);
            if port.wants(&head[..n]) && port.take(total, |buf| copy_out(mem, &segs, 0, buf)) {
                return Ok(());
            }
        }
        let mut iovs = Vec::with_capacity(segs.len());
        for &(addr, len) in &segs {
            let slice = mem
                .get_slice(addr, len)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            iovs.push(libc::iovec {
                iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                iov_len: len,
            });
        }
        // SAFETY: each iovec covers guest memory checked by get_slice, mapped while `mem`
        // is borrowed.
        let n = unsafe { self.io.write_frame(&iovs) }?;
        if n != total {
            return Err(invalid("short write to the tap"));
        }
        self.counters
            .tx_bytes
            .fetch_add((total - VNET_HDR_LEN) as u64, Ordering::Relaxed);
        self.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives the frame source and the MMDS port back (device reset).
    pub fn into_parts(self) -> (T, Option<MmdsPort>) {
        (self.io, self.mmds)
    }
}

/// Copies the chain's bytes from offset `skip` into `out`; returns how many were copied.
fn copy_out(
    mem: &GuestMemoryMmap,
    segs: &[(GuestAddress, usize)],
    skip: usize,
    out: &mut [u8],
) -> usize {
    let (mut at, mut done) = (0usize, 0usize);
    for &(addr, len) in segs {
        if done == out.len() {
            break;
        }
        let seg_end = at + len;
        if seg_end > skip {
            let from = skip.saturating_sub(at);
            let n = (len - from).min(out.len() - done);
            let src = addr.unchecked_add(from as u64);
            // Checked by `segments`; a failure leaves the rest unread.
            if mem.read_slice(&mut out[done..done + n], src).is_err() {
                break;
            }
            done += n;
        }
        at = seg_end;
    }
    done
}
