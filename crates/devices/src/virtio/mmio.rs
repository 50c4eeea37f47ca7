//! The virtio-mmio transport, modern interface (virtio 1.2, section 4.2.2): a 4 KiB
//! register window per device. Legacy (version 1) drivers are not offered.
//!
//! Queue notifications are meant to bypass this code: the VMM registers each entry of
//! [`MmioTransport::queue_evts`] as a KVM ioeventfd on the QueueNotify register with the
//! queue index as data match. A notify that reaches [`BusDevice::write`] anyway (no
//! ioeventfd) is forwarded to the same eventfd.

use super::{status, Activation, GuestMemory, Interrupt, VirtioDevice, F_EVENT_IDX, F_VERSION_1};
use crate::bus::BusDevice;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// Size of a device's register window.
pub const MMIO_WINDOW_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register, where queue ioeventfds are registered.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "EMBR" as a little-endian u32.
const VENDOR_ID: u32 = u32::from_le_bytes(*b"EMBR");
const CONFIG_SPACE: u64 = reg::CONFIG;

/// Register offsets (virtio 1.2, 4.2.2), from the kernel's virtio_mmio.h. The driver and
/// device areas are what the legacy names call the avail and used rings.
mod reg {
    use virtio_bindings::virtio_mmio as m;
    // Widening u32 -> u64; `From` is not const.
    pub const MAGIC: u64 = m::VIRTIO_MMIO_MAGIC_VALUE as u64;
    pub const VERSION: u64 = m::VIRTIO_MMIO_VERSION as u64;
    pub const DEVICE_ID: u64 = m::VIRTIO_MMIO_DEVICE_ID as u64;
    pub const VENDOR_ID: u64 = m::VIRTIO_MMIO_VENDOR_ID as u64;
    pub const DEVICE_FEATURES: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES as u64;
    pub const DEVICE_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    pub const DRIVER_FEATURES: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES as u64;
    pub const DRIVER_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    pub const QUEUE_SEL: u64 = m::VIRTIO_MMIO_QUEUE_SEL as u64;
    pub const QUEUE_NUM_MAX: u64 = m::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    pub const QUEUE_NUM: u64 = m::VIRTIO_MMIO_QUEUE_NUM as u64;
    pub const QUEUE_READY: u64 = m::VIRTIO_MMIO_QUEUE_READY as u64;
    pub const QUEUE_NOTIFY: u64 = m::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    pub const INTERRUPT_STATUS: u64 = m::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    pub const INTERRUPT_ACK: u64 = m::VIRTIO_MMIO_INTERRUPT_ACK as u64;
    pub const STATUS: u64 = m::VIRTIO_MMIO_STATUS as u64;
    pub const QUEUE_DESC_LOW: u64 = m::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    pub const QUEUE_DESC_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    pub const QUEUE_DRIVER_LOW: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    pub const QUEUE_DRIVER_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    pub const QUEUE_DEVICE_LOW: u64 = m::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    pub const QUEUE_DEVICE_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    pub const SHM_LEN_LOW: u64 = m::VIRTIO_MMIO_SHM_LEN_LOW as u64;
    pub const SHM_LEN_HIGH: u64 = m::VIRTIO_MMIO_SHM_LEN_HIGH as u64;
    pub const CONFIG_GENERATION: u64 = m::VIRTIO_MMIO_CONFIG_GENERATION as u64;
    pub const CONFIG: u64 = m::VIRTIO_MMIO_CONFIG as u64;
}

/// One queue of a transport in a snapshot: the driver's configuration, and where the
/// device had got to in the rings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The queue size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Driver area (available ring) address.
    pub avail_ring: u64,
    /// Device area (used ring) address.
    pub used_ring: u64,
    /// The device's next available index to read.
    pub next_avail: u16,
    /// The device's next used index to write.
    pub next_used: u16,
}

/// A transport's registers and its queues, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The virtio device type behind it (checked on restore).
    pub device_type: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// The device status register.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Whether the device had failed (DEVICE_NEEDS_RESET).
    pub needs_reset: bool,
    /// Whether the device was running (DRIVER_OK accepted).
    pub active: bool,
    /// Every queue, in order.
    pub queues: Vec<QueueSnapshot>,
}

/// Why a saved transport cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot has another device at this window.
    #[error("the snapshot has virtio device type {saved} here, the configuration type {actual}")]
    DeviceType {
        /// In the snapshot.
        saved: u32,
        /// Configured now.
        actual: u32,
    },
    /// The queue count or a queue's setting does not fit the device.
    #[error("queue {0}: {1}")]
    Queue(usize, String),
    /// The device could not be started again.
    #[error("the device could not be started: {0}")]
    Activate(String),
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    active: bool,
}

impl MmioTransport {
    /// Puts `device` behind a register window. `interrupt` must fire the irqfd of the
    /// interrupt line announced to the guest for this window.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}"))
            })?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The registers and queues, for a snapshot. Call with the VM paused: `device_queues`
    /// are the queues as the device's thread left them ([`super::DevicePause::parked_queues`]),
    /// `None` if no thread runs.
    pub fn save(&self, device_queues: Option<&[QueueState]>) -> TransportState {
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                // The device's copy moved on through the rings; the transport's did not.
                let live = device_queues.and_then(|d| d.get(i)).filter(|_| self.active);
                QueueSnapshot {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail: live.map_or(q.next_avail(), |s| s.next_avail),
                    next_used: live.map_or(q.next_used(), |s| s.next_used),
                }
            })
            .collect();
        TransportState {
            device_type: self.device.device_type(),
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            active: self.active,
            queues,
        }
    }

    /// Puts a new transport (as [`MmioTransport::new`] made it) in a saved state and, if
    /// the device was running, starts it on the saved queues. Nothing in `state` is
    /// trusted: a queue that does not fit the device is an error.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        let actual = self.device.device_type();
        if state.device_type != actual {
            return Err(RestoreError::DeviceType {
                saved: state.device_type,
                actual,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(RestoreError::Queue(
                state.queues.len(),
                format!("the device has {} queues", self.queues.len()),
            ));
        }
        for (i, (q, s)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            let saved = QueueState {
                max_size: q.max_size(),
                next_avail: s.next_avail,
                next_used: s.next_used,
                event_idx_enabled: state.driver_features & (1 << F_EVENT_IDX) != 0,
                size: s.size,
                ready: s.ready,
                desc_table: s.desc_table,
                avail_ring: s.avail_ring,
                used_ring: s.used_ring,
            };
            *q = Queue::try_from(saved).map_err(|e| RestoreError::Queue(i, e.to_string()))?;
        }
        self.queue_sel = state.queue_sel;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        if state.active {
            self.activate();
            if !self.active {
                return Err(RestoreError::Activate(format!(
                    "virtio device type {actual} refused its saved queues"
                )));
            }
        }
        Ok(())
    }

    /// The per-queue notification eventfds, in queue order (for KVM ioeventfds).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's status register as the driver sees it.
    pub fn device_status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue setup is frozen once the device runs (virtio 1.2, 4.2.2.3).
        if self.active {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                #[allow(clippy::cast_possible_truncation, reason = "the low word, by design")]
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.device_status(),
            // No shared memory regions: their length reads as all ones.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                // Features are only negotiable before FEATURES_OK.
                if self.status & status::FEATURES_OK != 0 {
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    // Not a power of two or above the maximum: refused, the queue stays
                    // invalid and activation fails visibly.
                    if let Ok(size) = u16::try_from(v) {
                        q.set_size(size);
                    }
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_NOTIFY => {
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    if let Err(e) = evt.write(1) {
                        log::warn!("cannot forward a queue notification: {e}");
                    }
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => log::debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }

    /// Applies `f` to the selected queue while it may still be configured (not ready).
    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            if !q.ready() {
                f(q);
            }
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (virtio 1.2, 3.1.1); anything else is ignored.
        if v & self.status != self.status {
            log::warn!(
                "virtio-mmio: driver cleared status bits ({:#x} -> {v:#x}); ignored",
                self.status
            );
            return;
        }
        let added = v & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let accepted = self.driver_features;
            if accepted & !offered != 0 || accepted & (1 << F_VERSION_1) == 0 {
                log::warn!(
                    "virtio-mmio: driver features {accepted:#x} not acceptable (offered {offered:#x})"
                );
                // FEATURES_OK stays clear; the driver reads it back and gives up.
                self.status = v & !status::FEATURES_OK & !status::DRIVER_OK;
                return;
            }
        }
        self.status = v;
        if added & status::DRIVER_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.status & status::FEATURES_OK == 0 {
            log::warn!("virtio-mmio: DRIVER_OK without FEATURES_OK");
            self.interrupt.fail();
            return;
        }
        let event_idx = self.driver_features & (1 << F_EVENT_IDX) != 0;
        let mut queue_evts = Vec::with_capacity(self.queue_evts.len());
        for evt in &self.queue_evts {
            match evt.try_clone() {
                Ok(e) => queue_evts.push(e),
                Err(e) => {
                    log::error!("virtio-mmio: cannot share a queue eventfd: {e}");
                    self.interrupt.fail();
                    return;
                }
            }
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            // The device gets its own copy; the transport keeps the registers' view.
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(e) => {
                    log::warn!("virtio-mmio: queue {i} is invalid: {e}");
                    self.interrupt.fail();
                    return;
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::warn!(
                    "virtio-mmio: device type {} not started: {e}",
                    self.device.device_type()
                );
                self.interrupt.fail();
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        for evt in &self.queue_evts {
            // Drop notifications from before the reset.
            let _ = evt.read();
        }
        self.interrupt.reset();
        self.status = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and accessed as such (virtio 1.2, 4.2.2.2).
        let v = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_reg(offset)
        } else {
            log::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            0
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::GuestMemoryMmap;
    use crate::virtio::{ActivateError, TYPE_BLOCK};
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Record {
        activations: usize,
        resets: usize,
        acked: u64,
    }

    struct FakeDevice {
        record: Arc<Mutex<Record>>,
        sizes: [u16; 1],
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn features(&self) -> u64 {
            1 << F_VERSION_1 | 1 << F_EVENT_IDX | 1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            let mut r = self.record.lock().unwrap();
            r.activations += 1;
            r.acked = a.acked_features;
            Ok(())
        }
        fn reset(&mut self) {
            self.record.lock().unwrap().resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Record>>) {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let record = Arc::new(Mutex::new(Record::default()));
        let dev = FakeDevice {
            record: record.clone(),
            sizes: [16],
        };
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        (MmioTransport::new(Box::new(dev), mem, irq).unwrap(), record)
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        wr(t, reg::STATUS, status::ACKNOWLEDGE);
        wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, reg::DRIVER_FEATURES_SEL, 0);
        wr(t, reg::DRIVER_FEATURES, features as u32);
        wr(t, reg::DRIVER_FEATURES_SEL, 1);
        wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        rd(t, reg::STATUS)
    }

    fn setup_queue(t: &mut MmioTransport) {
        wr(t, reg::QUEUE_SEL, 0);
        assert_eq!(rd(t, reg::QUEUE_NUM_MAX), 16);
        wr(t, reg::QUEUE_NUM, 16);
        wr(t, reg::QUEUE_DESC_LOW, 0x1000);
        wr(t, reg::QUEUE_DESC_HIGH, 0);
        wr(t, reg::QUEUE_DRIVER_LOW, 0x2000);
        wr(t, reg::QUEUE_DRIVER_HIGH, 0);
        wr(t, reg::QUEUE_DEVICE_LOW, 0x3000);
        wr(t, reg::QUEUE_DEVICE_HIGH, 0);
        wr(t, reg::QUEUE_READY, 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, reg::MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), TYPE_BLOCK);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1 << F_EVENT_IDX | 1 << 5);
        assert_eq!(rd(&mut t, reg::SHM_LEN_LOW), u32::MAX);
        // Odd-sized register accesses read as zero and change nothing.
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[1, 0]);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        // Config space passes through, at any width.
        let mut c = [0u8; 3];
        t.read(CONFIG_SPACE + 5, &mut c);
        assert_eq!(c, [5, 6, 7]);
    }

    #[test]
    fn feature_negotiation_refuses_what_was_not_offered() {
        let (mut t, _) = transport();
        // A feature the device did not offer.
        let s = negotiate(&mut t, 1 << F_VERSION_1 | 1 << 7);
        assert_eq!(s & status::FEATURES_OK, 0);
        wr(&mut t, reg::STATUS, 0);
        // A legacy driver (no VERSION_1).
        let s = negotiate(&mut t, 1 << 5);
        assert_eq!(s & status::FEATURES_OK, 0);
        wr(&mut t, reg::STATUS, 0);
        let s = negotiate(&mut t, 1 << F_VERSION_1 | 1 << 5);
        assert_ne!(s & status::FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_activates_and_reset_stops() {
        let (mut t, rec) = transport();
        negotiate(&mut t, 1 << F_VERSION_1 | 1 << F_EVENT_IDX);
        setup_queue(&mut t);
        wr(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert_eq!(rec.lock().unwrap().activations, 1);
        assert_eq!(
            rec.lock().unwrap().acked,
            1 << F_VERSION_1 | 1 << F_EVENT_IDX
        );
        // Queue registers are frozen while the device runs.
        wr(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
        // A notify that did not go through an ioeventfd still reaches the queue's eventfd.
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
        wr(&mut t, reg::QUEUE_NOTIFY, 7); // no such queue: ignored
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rec.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn driver_ok_without_features_ok_fails_the_device() {
        let (mut t, rec) = transport();
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(rec.lock().unwrap().activations, 0);
        assert_ne!(rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), InterruptKindBits::CONFIG);
        wr(&mut t, reg::INTERRUPT_ACK, InterruptKindBits::CONFIG);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn bad_queue_sizes_are_not_accepted() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << F_VERSION_1);
        wr(&mut t, reg::QUEUE_SEL, 0);
        for bad in [0u32, 3, 32, 1 << 16] {
            wr(&mut t, reg::QUEUE_NUM, bad);
        }
        // Selecting a queue that does not exist reads as absent.
        wr(&mut t, reg::QUEUE_SEL, 9);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
        wr(&mut t, reg::QUEUE_NUM, 8);
        wr(&mut t, reg::QUEUE_READY, 1);
    }

    struct InterruptKindBits;
    impl InterruptKindBits {
        const CONFIG: u32 = crate::virtio::InterruptKind::Config as u32;
    }
}
