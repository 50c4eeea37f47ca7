//! The frame engine against a fake tap: frames cross intact, a guest without buffers makes
//! the frame wait (not vanish), and hostile transmit chains are dropped and counted.

use super::engine::{Engine, FrameIo, NetCounters, RxState, TxState, MAX_FRAME};
use super::tap::VNET_HDR_LEN;
use crate::virtio::test_ring::{leak_memory, Ring, NEXT, WRITE};
use crate::virtio::GuestMemoryMmap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 4 << 20;
const QSIZE: u16 = 16;
const RX_BASE: u64 = 0x1000;
const TX_BASE: u64 = 0x4000;

#[derive(Default)]
struct FakeTap {
    incoming: RefCell<VecDeque<Vec<u8>>>,
    sent: RefCell<Vec<Vec<u8>>>,
    full: RefCell<bool>,
}

impl FrameIo for FakeTap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.incoming.borrow_mut().pop_front() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    unsafe fn write_frame(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        if *self.full.borrow() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut f = Vec::new();
        for v in iovs {
            // SAFETY: the engine passes iovecs into live guest memory.
            f.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        self.sent.borrow_mut().push(f.clone());
        Ok(f.len())
    }
}

struct Rig {
    mem: &'static GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    engine: Engine<FakeTap>,
    counters: Arc<NetCounters>,
}

impl Rig {
    fn new(mergeable: bool) -> Self {
        let mem: &'static GuestMemoryMmap = leak_memory(MEM).as_ref();
        let rx = Ring::new(mem, RX_BASE, QSIZE);
        let tx = Ring::new(mem, TX_BASE, QSIZE);
        let counters = Arc::new(NetCounters::default());
        let engine = Engine::new(
            FakeTap::default(),
            rx.queue(),
            tx.queue(),
            mergeable,
            counters.clone(),
        );
        Self {
            mem,
            rx,
            tx,
            engine,
            counters,
        }
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

#[test]
fn received_frames_arrive_intact_across_merged_buffers() {
    let mut r = Rig::new(true);
    // Four 1500-byte buffers; a 4000-byte frame needs three of them.
    for i in 0..4u16 {
        r.rx.desc(i, 0x10000 + u64::from(i) * 0x1000, 1500, WRITE, 0);
        r.rx.publish(i);
    }
    let f = frame(4000 - VNET_HDR_LEN, 7);
    r.engine.io().incoming.borrow_mut().push_back(f.clone());
    let (state, irq) = r.engine.process_rx(r.mem).unwrap();
    assert_eq!(state, RxState::TapEmpty);
    assert!(irq);
    assert_eq!(r.rx.used_idx(), 3);
    let mut got = Vec::new();
    for n in 0..3u16 {
        let (id, len) = r.rx.used(n);
        let mut buf = vec![0u8; len as usize];
        r.mem
            .read_slice(&mut buf, GuestAddress(0x10000 + u64::from(id) * 0x1000))
            .unwrap();
        got.extend(buf);
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(got[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
    assert_eq!(r.counters.rx_packets.load(Ordering::Relaxed), 1);
    assert_eq!(
        r.counters.rx_bytes.load(Ordering::Relaxed),
        4000 - VNET_HDR_LEN as u64
    );
}

#[test]
fn without_buffers_the_frame_waits_and_nothing_is_lost() {
    let mut r = Rig::new(true);
    let a = frame(100, 1);
    let b = frame(200, 2);
    r.engine
        .io()
        .incoming
        .borrow_mut()
        .extend([a.clone(), b.clone()]);
    let (state, _) = r.engine.process_rx(r.mem).unwrap();
    assert_eq!(state, RxState::NeedBuffers);
    assert!(r.engine.has_pending_frame());
    // Only the one frame was taken from the tap; the other is still queued there.
    assert_eq!(r.engine.io().incoming.borrow().len(), 1);
    assert_eq!(r.counters.rx_no_buffer.load(Ordering::Relaxed), 1);
    for i in 0..2u16 {
        r.rx.desc(i, 0x20000 + u64::from(i) * 0x1000, 2048, WRITE, 0);
        r.rx.publish(i);
    }
    let (state, irq) = r.engine.process_rx(r.mem).unwrap();
    assert_eq!((state, irq), (RxState::TapEmpty, true));
    for (n, f) in [(0u16, &a), (1, &b)] {
        let (id, len) = r.rx.used(n);
        assert_eq!(len as usize, f.len());
        let mut buf = vec![0u8; f.len()];
        r.mem
            .read_slice(&mut buf, GuestAddress(0x20000 + u64::from(id) * 0x1000))
            .unwrap();
        assert_eq!(buf[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
    }
    assert_eq!(r.counters.rx_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_frame_too_big_for_a_non_merging_guest_is_dropped_and_counted() {
    let mut r = Rig::new(false);
    r.rx.desc(0, 0x10000, 1000, WRITE, 0);
    r.rx.publish(0);
    r.engine
        .io()
        .incoming
        .borrow_mut()
        .push_back(frame(5000, 3));
    r.engine.process_rx(r.mem).unwrap();
    assert_eq!(r.counters.rx_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(r.rx.used(0), (0, 0));
}

#[test]
fn hostile_rx_chains_break_the_queue_without_panic() {
    for (addr, len, flags) in [
        (MEM as u64 - 8, 64u32, WRITE), // outside memory
        (0x10000, 64, 0),               // device-readable receive buffer
        (0x10000, 4, WRITE),            // smaller than the header
    ] {
        let mut r = Rig::new(true);
        r.rx.desc(0, addr, len, flags, 0);
        r.rx.publish(0);
        r.engine.io().incoming.borrow_mut().push_back(frame(60, 0));
        assert!(
            r.engine.process_rx(r.mem).is_err(),
            "{addr:#x}+{len} flags {flags}"
        );
    }
}

#[test]
fn transmitted_frames_reach_the_tap_and_bad_ones_are_counted() {
    let mut r = Rig::new(true);
    let f = frame(1000, 9);
    // A good frame split over two descriptors.
    r.mem.write_slice(&f[..300], GuestAddress(0x30000)).unwrap();
    r.mem.write_slice(&f[300..], GuestAddress(0x31000)).unwrap();
    r.tx.desc(0, 0x30000, 300, NEXT, 1);
    r.tx.desc(1, 0x31000, (f.len() - 300) as u32, 0, 0);
    r.tx.publish(0);
    // Hostile: outside memory, only a header, zero length, writable, oversize.
    let bad: [(u64, u32, u16); 5] = [
        (MEM as u64 - 100, 200, 0),
        (0x30000, VNET_HDR_LEN as u32, 0),
        (0x30000, 0, 0),
        (0x30000, 100, WRITE),
        (0x40000, (MAX_FRAME + 1) as u32, 0),
    ];
    for (k, &(addr, len, flags)) in bad.iter().enumerate() {
        let i = 2 + k as u16;
        r.tx.desc(i, addr, len, flags, 0);
        r.tx.publish(i);
    }
    let (state, irq) = r.engine.process_tx(r.mem).unwrap();
    assert_eq!((state, irq), (TxState::Drained, true));
    assert_eq!(
        r.engine.io().sent.borrow().as_slice(),
        std::slice::from_ref(&f)
    );
    assert_eq!(r.counters.tx_packets.load(Ordering::Relaxed), 1);
    assert_eq!(r.counters.tx_dropped.load(Ordering::Relaxed), 5);
    assert_eq!(r.tx.used_idx(), 6, "every chain is returned");
}

#[test]
fn a_full_tap_defers_the_frame_instead_of_dropping_it() {
    let mut r = Rig::new(true);
    let f = frame(64, 4);
    r.mem.write_slice(&f, GuestAddress(0x30000)).unwrap();
    r.tx.desc(0, 0x30000, f.len() as u32, 0, 0);
    r.tx.publish(0);
    *r.engine.io().full.borrow_mut() = true;
    let (state, _) = r.engine.process_tx(r.mem).unwrap();
    assert_eq!(state, TxState::TapFull);
    assert_eq!(r.tx.used_idx(), 0);
    *r.engine.io().full.borrow_mut() = false;
    let (state, _) = r.engine.process_tx(r.mem).unwrap();
    assert_eq!(state, TxState::Drained);
    assert_eq!(r.engine.io().sent.borrow().as_slice(), &[f]);
    assert_eq!(r.counters.tx_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn too_few_buffers_for_a_frame_wait_without_spinning() {
    let mut r = Rig::new(true);
    // One 1500-byte buffer for a 4000-byte frame: the engine must not loop on it.
    r.rx.desc(0, 0x10000, 1500, WRITE, 0);
    r.rx.publish(0);
    r.engine
        .io()
        .incoming
        .borrow_mut()
        .push_back(frame(4000, 5));
    let (state, _) = r.engine.process_rx(r.mem).unwrap();
    assert_eq!(state, RxState::NeedBuffers);
    assert_eq!(r.rx.used_idx(), 0, "nothing consumed");
    // Two more buffers arrive: the frame is delivered across all three.
    for i in 1..3u16 {
        r.rx.desc(i, 0x10000 + u64::from(i) * 0x1000, 1500, WRITE, 0);
        r.rx.publish(i);
    }
    let (state, irq) = r.engine.process_rx(r.mem).unwrap();
    assert_eq!((state, irq), (RxState::TapEmpty, true));
    assert_eq!(r.rx.used_idx(), 3);
}
