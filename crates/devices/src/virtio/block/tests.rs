//! Hostile-guest tests: crafted descriptor chains go straight to the block device's queue
//! handling. Every one must end in a status byte (OK, IOERR, UNSUPP) or a broken queue,
//! never a panic, and never an access outside guest memory or the disk.

use super::disk::{CacheType, DiskFile};
use super::request::{S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::worker::{BlockCounters, QueueBroken, RequestHandler};
use crate::virtio::test_ring::{leak_memory, table_desc, Ring, INDIRECT, NEXT, WRITE};
use crate::virtio::GuestMemoryMmap;
use crate::virtio::{Activation, Interrupt, VirtioDevice};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::io::FromRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 1 << 20;
const QSIZE: u16 = 16;
/// The ring's descriptor table; its available and used rings follow it.
const DESC: u64 = 0x1000;
const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const DISK_SIZE: u64 = 1 << 20;

fn memfd(size: u64) -> File {
    // SAFETY: the name is a valid NUL-terminated string; the fd returned is owned below.
    let fd = unsafe { libc::memfd_create(c"ember-test-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    ring: Ring,
    queue: Queue,
    handler: RequestHandler,
    counters: Arc<BlockCounters>,
    file: File,
}

impl Rig {
    fn new(read_only: bool) -> Self {
        let mem = leak_memory(MEM_SIZE);
        let file = memfd(DISK_SIZE);
        let disk = DiskFile::from_file(file.try_clone().unwrap(), read_only, CacheType::Writeback)
            .unwrap();
        let counters = Arc::new(BlockCounters::default());
        let handler = RequestHandler::new(disk, "test-drive-id", counters.clone());
        let ring = Ring::new(mem.as_ref(), DESC, QSIZE);
        let queue = ring.queue();
        Self {
            mem: mem.clone(),
            ring,
            queue,
            handler,
            counters,
            file,
        }
    }

    /// Writes descriptor `i` of the table at `table` (the ring's, `DESC`, or an indirect
    /// one).
    fn desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        if table == DESC {
            self.ring.desc(i, addr, len, flags, next);
        } else {
            table_desc(&self.mem, table, i, addr, len, flags, next);
        }
    }

    /// Writes a chain of `(addr, len, writable)` at descriptor `first` onwards.
    fn chain(&self, first: u16, parts: &[(u64, u32, bool)]) {
        for (k, &(addr, len, w)) in parts.iter().enumerate() {
            let i = first + k as u16;
            let last = k + 1 == parts.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            self.desc(DESC, i, addr, len, flags, i + 1);
        }
    }

    fn header(&self, at: u64, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    fn publish(&mut self, head: u16) {
        self.ring.publish(head);
    }

    fn run(&mut self) -> Result<bool, QueueBroken> {
        self.handler.process_queue(&mut self.queue, &self.mem)
    }

    /// Publishes the chain at `head`, runs the queue, and returns the status byte and the
    /// used length.
    fn submit(&mut self, head: u16) -> (u8, u32) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.publish(head);
        self.run().expect("queue should not break");
        let used_idx = self.ring.used_idx();
        let (id, len) = self.ring.used(used_idx.wrapping_sub(1));
        assert_eq!(id, u32::from(head), "used element is for another chain");
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    fn simple(&mut self, kind: u32, sector: u64, data: Option<(u64, u32, bool)>) -> (u8, u32) {
        self.header(HDR, kind, sector);
        let mut parts = vec![(HDR, 16, false)];
        parts.extend(data);
        parts.push((STATUS, 1, true));
        self.chain(0, &parts);
        self.submit(0)
    }

    fn disk_bytes(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.file.seek(SeekFrom::Start(offset)).unwrap();
        self.file.read_exact(&mut buf).unwrap();
        buf
    }
}

#[test]
fn write_read_flush_get_id_round_trip() {
    let mut r = Rig::new(false);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    r.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    assert_eq!(r.simple(T_OUT, 8, Some((DATA, 4096, false))), (S_OK, 1));
    assert_eq!(r.disk_bytes(8 * 512, 4096), pattern);

    r.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    assert_eq!(r.simple(T_IN, 8, Some((DATA, 4096, true))), (S_OK, 4097));
    let mut back = vec![0u8; 4096];
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);

    assert_eq!(r.simple(T_FLUSH, 0, None), (S_OK, 1));
    // The id is 20 bytes, NUL-padded.
    assert_eq!(r.simple(T_GET_ID, 0, Some((DATA, 20, true))), (S_OK, 21));
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..13], b"test-drive-id");
    assert_eq!(r.simple(11, 0, None).0, S_UNSUPP);

    let c = &r.counters;
    assert_eq!(c.write_bytes.load(Ordering::Relaxed), 4096);
    assert_eq!(c.read_bytes.load(Ordering::Relaxed), 4096);
    assert_eq!(c.write_count.load(Ordering::Relaxed), 1);
    assert_eq!(c.read_count.load(Ordering::Relaxed), 1);
    assert_eq!(c.flush_count.load(Ordering::Relaxed), 1);
}

#[test]
fn header_and_data_framed_any_way() {
    // Header split over two descriptors, data in three pieces with the first sharing the
    // header's descriptor, status in a descriptor with data before it.
    let mut r = Rig::new(false);
    let payload: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    r.header(HDR, T_OUT, 2);
    r.mem
        .write_slice(&payload[..100], GuestAddress(HDR + 16))
        .unwrap();
    r.mem
        .write_slice(&payload[100..600], GuestAddress(DATA))
        .unwrap();
    r.mem
        .write_slice(&payload[600..], GuestAddress(DATA + 0x1000))
        .unwrap();
    r.chain(
        0,
        &[
            (HDR, 10, false),
            (HDR + 10, 6 + 100, false),
            (DATA, 500, false),
            (DATA + 0x1000, 424, false),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(r.submit(0).0, S_OK);
    assert_eq!(r.disk_bytes(1024, 1024), payload);

    // A read whose status byte shares a descriptor with the data.
    r.header(HDR, T_IN, 2);
    r.chain(0, &[(HDR, 16, false), (STATUS - 1024, 1025, true)]);
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    r.publish(0);
    r.run().unwrap();
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
    let mut back = vec![0u8; 1024];
    r.mem
        .read_slice(&mut back, GuestAddress(STATUS - 1024))
        .unwrap();
    assert_eq!(back, payload);
}

#[test]
fn read_only_drive_fails_writes_and_keeps_the_file() {
    let mut r = Rig::new(true);
    r.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.simple(T_OUT, 0, Some((DATA, 512, false))).0, S_IOERR);
    assert_eq!(r.disk_bytes(0, 512), vec![0u8; 512]);
    assert_eq!(r.counters.io_errors.load(Ordering::Relaxed), 1);
    assert_eq!(r.simple(T_IN, 0, Some((DATA, 512, true))).0, S_OK);
    assert_eq!(r.simple(T_FLUSH, 0, None).0, S_OK);
}

#[test]
fn sectors_past_the_end_and_bad_lengths_get_ioerr() {
    let mut r = Rig::new(false);
    let last = DISK_SIZE / 512 - 1;
    for (kind, sector, len) in [
        (T_IN, last + 1, 512),
        (T_IN, last, 1024),
        (T_OUT, last, 1024),
        (T_IN, u64::MAX, 512),
        (T_OUT, u64::MAX / 512 + 1, 512),
        (T_IN, 0, 100),
        (T_OUT, 0, 513),
    ] {
        let w = kind == T_IN;
        assert_eq!(
            r.simple(kind, sector, Some((DATA, len, w))).0,
            S_IOERR,
            "type {kind} sector {sector} len {len}"
        );
    }
    // An empty read or write is not a request either.
    assert_eq!(r.simple(T_IN, 0, None).0, S_IOERR);
    assert_eq!(r.simple(T_OUT, 0, None).0, S_IOERR);
    // Nothing was written anywhere.
    r.file.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    r.file.read_to_end(&mut all).unwrap();
    assert!(all.iter().all(|&b| b == 0));
}

#[test]
fn buffers_outside_guest_memory_get_ioerr() {
    let mut r = Rig::new(false);
    let end = MEM_SIZE as u64;
    for (addr, len) in [
        (end, 512),
        (end - 256, 512),
        (u64::MAX - 255, 512),
        (0xd000_0000, 4096),
    ] {
        for (kind, w) in [(T_IN, true), (T_OUT, false)] {
            assert_eq!(
                r.simple(kind, 0, Some((addr, len, w))).0,
                S_IOERR,
                "type {kind} buffer {addr:#x}+{len:#x}"
            );
        }
    }
    // A chain longer than 2^32 bytes is illegal: its walk stops before the status byte.
    r.header(HDR, T_IN, 0);
    r.chain(
        0,
        &[
            (HDR, 16, false),
            (u64::MAX, u32::MAX, true),
            (STATUS, 1, true),
        ],
    );
    r.publish(0);
    assert!(matches!(r.run(), Err(QueueBroken::Chain { .. })));
    let mut r = Rig::new(false);
    // A header outside memory.
    r.chain(0, &[(end - 8, 16, false), (STATUS, 1, true)]);
    assert_eq!(r.submit(0).0, S_IOERR);
    assert_eq!(r.counters.read_count.load(Ordering::Relaxed), 0);
}

#[test]
fn wrong_directions_get_ioerr() {
    let mut r = Rig::new(false);
    // A read into device-readable buffers, a write from device-writable ones.
    assert_eq!(r.simple(T_IN, 0, Some((DATA, 512, false))).0, S_IOERR);
    assert_eq!(r.simple(T_OUT, 0, Some((DATA, 512, true))).0, S_IOERR);
    // A device-readable descriptor after a device-writable one.
    r.header(HDR, T_OUT, 0);
    r.chain(
        0,
        &[
            (HDR, 16, false),
            (DATA, 512, true),
            (DATA, 512, false),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(r.submit(0).0, S_IOERR);
    // A header shorter than 16 bytes.
    r.chain(0, &[(HDR, 8, false), (STATUS, 1, true)]);
    assert_eq!(r.submit(0).0, S_IOERR);
    // A get-id with its buffer device-readable.
    assert_eq!(r.simple(T_GET_ID, 0, Some((DATA, 20, false))).0, S_IOERR);
}

#[test]
fn missing_or_unwritable_status_breaks_the_queue() {
    for parts in [
        // Last descriptor device-readable.
        vec![(HDR, 16, false), (DATA, 512, false)],
        // Status outside guest memory.
        vec![(HDR, 16, false), (MEM_SIZE as u64, 1, true)],
        // Only zero-length descriptors.
        vec![(HDR, 0, false), (STATUS, 0, true)],
    ] {
        let mut r = Rig::new(false);
        r.header(HDR, T_IN, 0);
        r.chain(0, &parts);
        r.publish(0);
        assert!(
            matches!(r.run(), Err(QueueBroken::Chain { .. })),
            "{parts:?}"
        );
        assert_eq!(r.counters.invalid_requests.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn looping_chain_terminates() {
    let mut r = Rig::new(false);
    r.header(HDR, T_OUT, 0);
    // 0 -> 1 -> 0 -> ...: the walk stops after the queue size and the request fails or
    // breaks the queue; either way the call returns.
    r.desc(DESC, 0, HDR, 16, NEXT, 1);
    r.desc(DESC, 1, DATA, 512, NEXT | WRITE, 0);
    r.publish(0);
    let _ = r.run();
    // A self-loop on a writable descriptor that ends up "complete".
    let mut r = Rig::new(false);
    r.header(HDR, T_IN, 0);
    r.desc(DESC, 0, HDR, 16, NEXT, 1);
    r.desc(DESC, 1, STATUS, 1, NEXT | WRITE, 1);
    r.publish(0);
    let _ = r.run();
    assert_eq!(r.counters.read_count.load(Ordering::Relaxed), 0);
}

#[test]
fn ring_corruption_breaks_the_queue() {
    // The available index jumps further than the queue holds.
    let mut r = Rig::new(false);
    r.ring.set_avail_idx(QSIZE + 5);
    assert!(matches!(r.run(), Err(QueueBroken::Ring(_))));
    // A head index beyond the table: the chain is empty, so it cannot be answered.
    let mut r = Rig::new(false);
    r.publish(QSIZE + 3);
    assert!(r.run().is_err());
}

#[test]
fn indirect_tables_work_and_bad_ones_do_not_panic() {
    let mut r = Rig::new(false);
    let table = 0x40000;
    r.header(HDR, T_OUT, 4);
    r.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    r.desc(table, 0, HDR, 16, NEXT, 1);
    r.desc(table, 1, DATA, 512, NEXT, 2);
    r.desc(table, 2, STATUS, 1, WRITE, 0);
    r.desc(DESC, 0, table, 48, INDIRECT, 0);
    assert_eq!(r.submit(0).0, S_OK);
    assert_eq!(r.disk_bytes(4 * 512, 512), vec![0x5a; 512]);

    // Table outside memory, table of odd length, an indirect inside an indirect.
    for (addr, len) in [(MEM_SIZE as u64 - 16, 48u32), (table, 20), (table, 0)] {
        let mut r = Rig::new(false);
        r.desc(DESC, 0, addr, len, INDIRECT, 0);
        r.publish(0);
        let _ = r.run();
    }
    let mut r = Rig::new(false);
    r.desc(table, 0, table, 16, INDIRECT, 0);
    r.desc(DESC, 0, table, 16, INDIRECT, 0);
    r.publish(0);
    let _ = r.run();
}

#[test]
fn unaligned_disk_files_are_refused() {
    let f = memfd(1000);
    assert!(DiskFile::from_file(f, false, CacheType::Unsafe).is_err());
}

#[test]
fn many_requests_in_one_pass_are_all_answered() {
    let mut r = Rig::new(false);
    // Five one-sector writes published together, each with its own status byte.
    for k in 0..5u16 {
        let hdr = HDR + u64::from(k) * 32;
        let data = DATA + u64::from(k) * 512;
        r.header(hdr, T_OUT, u64::from(k));
        r.mem
            .write_slice(&[k as u8 + 1; 512], GuestAddress(data))
            .unwrap();
        let status = STATUS + u64::from(k);
        r.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let d = k * 3;
        r.desc(DESC, d, hdr, 16, NEXT, d + 1);
        r.desc(DESC, d + 1, data, 512, NEXT, d + 2);
        r.desc(DESC, d + 2, status, 1, WRITE, 0);
        r.publish(d);
    }
    r.run().unwrap();
    for k in 0..5u64 {
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(STATUS + k)).unwrap(),
            S_OK
        );
        assert_eq!(r.disk_bytes(k * 512, 512), vec![k as u8 + 1; 512]);
    }
    assert_eq!(r.ring.used_idx(), 5);
}

fn used_idx(r: &Rig) -> u16 {
    r.ring.used_idx()
}

fn wait_for_used(r: &Rig, idx: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_idx(r) != idx {
        assert!(
            Instant::now() < deadline,
            "used index stuck at {}",
            used_idx(r)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn the_io_thread_serves_parks_while_paused_and_stops_on_reset() {
    let mut r = Rig::new(false);
    let disk =
        DiskFile::from_file(r.file.try_clone().unwrap(), false, CacheType::Writeback).unwrap();
    let mut block = super::Block::new("thread-test", disk).unwrap();
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let activation = |r: &Rig| Activation {
        mem: r.mem.clone(),
        queues: vec![r.ring.queue()],
        queue_evts: vec![notify.try_clone().unwrap()],
        interrupt: interrupt.clone(),
        acked_features: 0,
    };
    r.header(HDR, T_GET_ID, 0);
    r.chain(0, &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    // Posted before activation: served without a notification.
    r.publish(0);
    block.activate(activation(&r)).unwrap();
    wait_for_used(&r, 1);

    let pause = block.pause_handle();
    assert!(pause.pause(Duration::from_secs(5)));
    r.publish(0);
    notify.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(used_idx(&r), 1, "a paused thread served the queue");
    pause.resume();
    wait_for_used(&r, 2);
    assert_ne!(interrupt.status() & 1, 0, "the guest was interrupted");

    // Reset joins the thread and hands the disk back for the next activation.
    block.reset();
    assert!(
        pause.pause(Duration::from_millis(1)),
        "no thread left to answer"
    );
    pause.resume();
    block.activate(activation(&r)).unwrap();
    block.reset();
}
