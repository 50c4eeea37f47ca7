//! The driver's side of a split virtqueue in guest memory, for the device tests, on
//! virtio-queue's mock rings (`virtio_queue::mock`, feature `test-utils`). Tests write descriptors with any flags and `next`
//! values they like (loops, bad addresses, bad indirect tables): nothing here checks them.

use crate::virtio::GuestMemoryMmap;
use std::sync::Arc;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress};

/// Descriptor flag: the chain goes on at `next`.
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the device writes the buffer.
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer is a table of descriptors.
pub const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Guest memory for a test, alive until the test process ends: the mock's rings borrow
/// it, and a device thread may hold it too.
pub fn leak_memory(size: usize) -> &'static Arc<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap();
    Box::leak(Box::new(Arc::new(mem)))
}

/// A queue of `size` entries: its descriptor table at `base`, then its available ring,
/// then its used ring. (Not `MockSplitQueue` itself: in virtio-queue 0.18 it places the
/// used ring inside the available ring of queues bigger than a few entries, and it resets
/// the rings whenever one is made, so it cannot be made per access.)
pub struct Ring {
    mem: &'static GuestMemoryMmap,
    size: u16,
    addrs: [GuestAddress; 3],
    desc: DescriptorTable<'static, GuestMemoryMmap>,
    avail: AvailRing<'static, GuestMemoryMmap>,
    used: UsedRing<'static, GuestMemoryMmap>,
}

impl Ring {
    /// A ring at `base` in `mem`, with empty available and used rings.
    pub fn new(mem: &'static GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc_at = GuestAddress(base);
        // Descriptors are 16 bytes; the available ring is flags, idx, the ring and
        // used_event (2-byte aligned); the used ring is 4-byte aligned.
        let avail_at = desc_at.unchecked_add(16 * u64::from(size));
        let avail_len = 6 + 2 * u64::from(size);
        let used_at = GuestAddress((avail_at.0 + avail_len).next_multiple_of(4));
        Self {
            mem,
            size,
            addrs: [desc_at, avail_at, used_at],
            desc: DescriptorTable::new(mem, desc_at, size),
            avail: AvailRing::new(mem, avail_at, size),
            used: UsedRing::new(mem, used_at, size),
        }
    }

    /// The device's view, as a driver that set the queue up and made it ready leaves it.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        let [desc, avail, used] = self
            .addrs
            .map(|a| (Some((a.0 & 0xffff_ffff) as u32), Some((a.0 >> 32) as u32)));
        q.set_desc_table_address(desc.0, desc.1);
        q.set_avail_ring_address(avail.0, avail.1);
        q.set_used_ring_address(used.0, used.1);
        q.set_ready(true);
        assert!(q.is_valid(self.mem));
        q
    }

    /// Writes descriptor `i` of the ring's table.
    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc.store(i, raw(addr, len, flags, next)).unwrap();
    }

    /// Offers the chain at `head` to the device (the available ring wraps at its size).
    pub fn publish(&self, head: u16) {
        let idx = self.avail.idx().load();
        self.avail
            .ring()
            .ref_at(usize::from(idx % self.size))
            .unwrap()
            .store(head);
        self.avail.idx().store(idx.wrapping_add(1));
    }

    /// Sets the available index without offering anything (a corrupt ring).
    pub fn set_avail_idx(&self, idx: u16) {
        self.avail.idx().store(idx);
    }

    /// The `n`th used element (wrapping): the chain's head and the length written.
    pub fn used(&self, n: u16) -> (u32, u32) {
        let elem = self
            .used
            .ring()
            .ref_at(usize::from(n % self.size))
            .unwrap()
            .load();
        (elem.id(), elem.len())
    }

    /// How many chains the device has returned.
    pub fn used_idx(&self) -> u16 {
        self.used.idx().load()
    }
}

/// Writes descriptor `i` of the (indirect) table at `table`.
pub fn table_desc(
    mem: &GuestMemoryMmap,
    table: u64,
    i: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    DescriptorTable::new(mem, GuestAddress(table), i + 1)
        .store(i, raw(addr, len, flags, next))
        .unwrap();
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}
