//! The network device's frame path on guest memory the fuzzer controls: descriptor table,
//! rings and buffers come from the input, and so does a frame arriving from the tap.
//! Receive and transmit must return (never panic, never hang), every buffer handed to the
//! tap must lie inside guest memory, and nothing delivered may exceed what arrived.
#![no_main]

use devices::virtio::net::engine::{Engine, FrameIo, NetCounters};
use devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const MEM_SIZE: usize = 64 << 10;
const QSIZE: u16 = 16;

/// A tap with one frame to give and a record of what was written to it.
struct Tap {
    frame: RefCell<Option<Vec<u8>>>,
    mem: (usize, usize),
    sent: Cell<usize>,
}

impl FrameIo for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.frame.borrow_mut().take() {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    unsafe fn write_frame(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let (lo, hi) = self.mem;
        let mut total = 0;
        for v in iovs {
            let start = v.iov_base as usize;
            assert!(
                start >= lo && start + v.iov_len <= hi,
                "an iovec outside guest memory"
            );
            total += v.iov_len;
        }
        self.sent.set(self.sent.get() + 1);
        Ok(total)
    }
}

fn queue(base: u32, event_idx: bool) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(base), Some(0));
    q.set_avail_ring_address(Some(base + 0x100), Some(0));
    q.set_used_ring_address(Some(base + 0x200), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let frame_len = (usize::from(data[1]) << 8 | usize::from(data[2])).min(data.len() - 3);
    let (frame, image) = data[3..].split_at(frame_len);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0)).unwrap();
    let region = mem.iter().next().unwrap();
    let lo = region.as_ptr() as usize;
    let tap = Tap {
        frame: RefCell::new(Some(frame.to_vec())),
        mem: (lo, lo + MEM_SIZE),
        sent: Cell::new(0),
    };
    let counters = Arc::new(NetCounters::default());
    let event_idx = flags & 2 != 0;
    let mut engine = Engine::new(
        tap,
        queue(0x0, event_idx),
        queue(0x400, event_idx),
        flags & 1 != 0,
        counters.clone(),
    );
    // Two passes each way, as after a second notification.
    for _ in 0..2 {
        if engine.process_rx(&mem).is_err() || engine.process_tx(&mem).is_err() {
            break;
        }
    }
    assert!(counters.rx_bytes.load(Ordering::Relaxed) <= frame.len() as u64);
    assert!(counters.rx_packets.load(Ordering::Relaxed) <= 1);
    assert_eq!(
        counters.tx_packets.load(Ordering::Relaxed),
        engine.io().sent.get() as u64
    );
});
