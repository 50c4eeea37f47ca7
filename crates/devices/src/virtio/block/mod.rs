//! virtio-blk on a raw host file.
//!
//! One request queue served by a dedicated thread ([`worker`]), so a slow disk never
//! stalls the vCPUs, the console or another drive.

pub mod disk;
pub mod request;
pub mod worker;

pub use disk::{CacheType, DiskError, DiskFile};
pub use worker::{BlockCounters, DiskSwap};

use super::{
    read_config_bytes, ActivateError, Activation, DevicePause, DeviceThread, VirtioDevice,
    F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, TYPE_BLOCK,
};
use std::mem::offset_of;
use std::sync::Arc;
use virtio_bindings::virtio_blk::{self, virtio_blk_config};
use worker::RequestHandler;

/// Feature: `seg_max` in the configuration space is valid.
pub const F_SEG_MAX: u32 = virtio_blk::VIRTIO_BLK_F_SEG_MAX;
/// Feature: the device is read-only.
pub const F_RO: u32 = virtio_blk::VIRTIO_BLK_F_RO;
/// Feature: the device has a volatile write cache and takes flush requests.
pub const F_FLUSH: u32 = virtio_blk::VIRTIO_BLK_F_FLUSH;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Largest number of data segments per request: the queue minus header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// virtio_blk_config up to and including `blk_size` (capacity, size_max, seg_max,
/// geometry, blk_size).
const CONFIG_LEN: usize = offset_of!(virtio_blk_config, blk_size) + 4;
const CAPACITY: usize = offset_of!(virtio_blk_config, capacity);
const SEG_MAX_AT: usize = offset_of!(virtio_blk_config, seg_max);

/// A virtio-blk device.
pub struct Block {
    id: String,
    /// Present while no worker runs.
    handler: Option<RequestHandler>,
    running: Option<DeviceThread<RequestHandler>>,
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 1],
    counters: Arc<BlockCounters>,
    swap: Arc<DiskSwap>,
    pause: Arc<DevicePause>,
}

impl Block {
    /// A block device named `id` (its get-id serial) on `disk`.
    pub fn new(id: &str, disk: DiskFile) -> std::io::Result<Self> {
        let mut features =
            1u64 << F_VERSION_1 | 1 << F_EVENT_IDX | 1 << F_INDIRECT_DESC | 1 << F_SEG_MAX;
        if disk.read_only() {
            features |= 1 << F_RO;
        }
        if disk.cache() == CacheType::Writeback {
            features |= 1 << F_FLUSH;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[CAPACITY..CAPACITY + 8]
            .copy_from_slice(&(disk.size() / disk::SECTOR_SIZE).to_le_bytes());
        config[SEG_MAX_AT..SEG_MAX_AT + 4].copy_from_slice(&SEG_MAX.to_le_bytes());
        let counters = Arc::new(BlockCounters::default());
        let swap = Arc::new(DiskSwap::new(disk.size() / disk::SECTOR_SIZE)?);
        Ok(Self {
            id: id.to_string(),
            handler: Some(RequestHandler::new(disk, id, counters.clone())),
            running: None,
            features,
            config,
            queue_sizes: [QUEUE_SIZE],
            counters,
            swap,
            pause: Arc::new(DevicePause::new()?),
        })
    }

    /// The switch that pauses this drive's I/O thread.
    pub fn pause_handle(&self) -> Arc<DevicePause> {
        self.pause.clone()
    }

    /// Where a new backing file for this drive is handed in after boot.
    pub fn swap_handle(&self) -> Arc<DiskSwap> {
        self.swap.clone()
    }

    /// The drive id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The device's counters (shared with its worker).
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = self.config;
        // The capacity follows a swapped backing file.
        config[CAPACITY..CAPACITY + 8].copy_from_slice(&self.swap.sectors().to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Only `writeback` is writable in the spec, and only with CONFIG_WCE, not offered.
        log::debug!("block {}: config write at {offset:#x} ignored", self.id);
    }

    fn activate(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::BadState);
        }
        let queue = a.queues.pop().ok_or(ActivateError::QueueNotReady(0))?;
        let queue_evt = a.queue_evts.pop().ok_or(ActivateError::QueueNotReady(0))?;
        if !virtio_queue::QueueT::is_valid(&queue, a.mem.as_ref()) {
            return Err(ActivateError::QueueNotReady(0));
        }
        let mut handler = self.handler.take().ok_or(ActivateError::BadState)?;
        // A file swapped in while no thread ran.
        self.swap.apply(&mut handler);
        let (mem, interrupt) = (a.mem, a.interrupt);
        let handles = worker::Handles {
            swap: self.swap.clone(),
            pause: self.pause.clone(),
        };
        // If the thread cannot start, the handler is lost with the closure and the device
        // cannot be activated again (reported as BadState).
        self.running = Some(DeviceThread::spawn(
            format!("blk-{}", self.id),
            seccomp::ThreadKind::Block,
            move |stop| {
                handles.pause.attach();
                let handler =
                    worker::run(handler, queue, mem, interrupt, queue_evt, stop, &handles);
                handles.pause.detach();
                handler
            },
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(running) = self.running.take() {
            self.handler = running.stop();
            if self.handler.is_none() {
                log::error!("block {}: worker lost; device unusable", self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
