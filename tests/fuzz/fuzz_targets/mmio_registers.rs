//! A hostile driver on the virtio-mmio register window: any sequence of reads and writes
//! of any width at any offset, with queue addresses the fuzzer picks. The transport must
//! never panic, must hand the device every queue (no larger than it allows) and start it
//! at most once between resets; the device, as the real ones do, refuses queues that are
//! not ready or not inside guest memory.
#![no_main]

use devices::bus::BusDevice;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::GuestMemoryMmap;
use devices::virtio::{ActivateError, Activation, Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 64 << 10;

#[derive(Default)]
struct Record {
    active: bool,
}

struct Device {
    record: Arc<Mutex<Record>>,
    sizes: [u16; 2],
}

impl VirtioDevice for Device {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        1 << 32 | 1 << 29 | 1 << 28
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut r = self.record.lock().unwrap();
        assert!(!r.active, "activated twice without a reset");
        assert_eq!(
            a.queues.len(),
            self.sizes.len(),
            "not every queue handed over"
        );
        assert_eq!(
            a.queue_evts.len(),
            self.sizes.len(),
            "not every eventfd handed over"
        );
        // As the real devices do: queues the driver did not finish are refused here.
        for (i, q) in a.queues.iter().enumerate() {
            assert!(
                q.size() <= self.sizes[i],
                "queue {i} larger than the device allows"
            );
            if !q.ready() || !q.is_valid(&*a.mem) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        r.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.record.lock().unwrap().active = false;
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
    let record = Arc::new(Mutex::new(Record::default()));
    let dev = Device {
        record: record.clone(),
        sizes: [16, 256],
    };
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(Box::new(dev), mem, irq).unwrap();
    // Each access: a byte of kind (read/write and width), a byte of offset (in 4-byte
    // steps over the window and the config space), and 4 bytes of value.
    for op in data.chunks_exact(6) {
        let width = [1usize, 2, 4, 8][usize::from(op[0] & 3)];
        let offset = u64::from(op[1]) * 4 + u64::from(op[0] >> 4 & 3);
        let value = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        if op[0] & 4 == 0 {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        } else {
            let bytes = u64::from(value).to_le_bytes();
            t.write(offset, &bytes[..width]);
        }
    }
});
