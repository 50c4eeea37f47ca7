//! The block device's request path on guest memory the fuzzer controls: descriptor table,
//! rings and buffers all come from the input. Processing must return (never panic, never
//! hang), never touch memory outside the guest's, and never change the disk's size.
#![no_main]

use devices::virtio::block::disk::{CacheType, DiskFile};
use devices::virtio::block::worker::{BlockCounters, RequestHandler};
use devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::os::unix::io::FromRawFd;
use std::sync::{Arc, OnceLock};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 << 10;
const DISK_SIZE: u64 = 64 << 10;
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;

fn disk_file() -> &'static File {
    static DISK: OnceLock<File> = OnceLock::new();
    DISK.get_or_init(|| {
        // SAFETY: valid NUL-terminated name; the new fd is owned by the File.
        let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is fresh and owned by nobody else.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(DISK_SIZE).unwrap();
        f
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, image)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0)).unwrap();

    let read_only = flags & 1 != 0;
    let cache = if flags & 2 != 0 {
        CacheType::Writeback
    } else {
        CacheType::Unsafe
    };
    let file = disk_file().try_clone().unwrap();
    let disk = DiskFile::from_file(file, read_only, cache).unwrap();
    let handler = RequestHandler::new(disk, "fuzz", Arc::new(BlockCounters::default()));

    let mut queue = Queue::new(QSIZE).unwrap();
    queue.set_size(QSIZE);
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_event_idx(flags & 4 != 0);
    queue.set_ready(true);
    // Two passes, as after a second notification.
    for _ in 0..2 {
        if handler.process_queue(&mut queue, &mem).is_err() {
            break;
        }
    }
    assert_eq!(disk_file().metadata().unwrap().len(), DISK_SIZE);
});
