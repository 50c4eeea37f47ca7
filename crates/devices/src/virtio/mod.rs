//! Virtio devices and the virtio-mmio transport that presents them to the guest.
//!
//! The split: [`mmio::MmioTransport`] owns the register window (feature negotiation, queue
//! setup, device status) and knows nothing of what the device does; a [`VirtioDevice`]
//! owns the device's behaviour and configuration space and knows nothing of registers.
//! Once the driver sets DRIVER_OK the transport hands the device its queues, the eventfds
//! the guest's queue notifications arrive on (KVM ioeventfds) and an [`Interrupt`] to
//! signal through (a KVM irqfd), and the device does its work on its own thread: a vCPU
//! thread never runs device code beyond a register access.

pub mod balloon;
pub mod block;
mod device_thread;
pub mod event_loop;
mod interrupt;
pub mod mmio;
pub mod net;
pub mod pause;
pub mod rng;
#[cfg(test)]
mod test_ring;
pub mod vsock;

pub use device_thread::{read_config_bytes, DeviceThread};
pub use event_loop::DeviceEvents;
pub use interrupt::{Interrupt, InterruptKind};
pub use pause::DevicePause;

use std::sync::Arc;
use thiserror::Error;
use virtio_bindings::{virtio_config, virtio_ids, virtio_ring};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM, with a bitmap of the pages devices wrote (vm-memory marks writes made
/// through it; raw-pointer I/O marks its own), for diff snapshots.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Guest memory as devices hold it: shared with the vCPUs and the other devices.
pub type GuestMemory = Arc<GuestMemoryMmap>;

/// Virtio device type of a block device (virtio 1.2, section 5).
pub const TYPE_BLOCK: u32 = virtio_ids::VIRTIO_ID_BLOCK;
/// Virtio device type of a network device.
pub const TYPE_NET: u32 = virtio_ids::VIRTIO_ID_NET;
/// Virtio device type of a socket (vsock) device.
pub const TYPE_VSOCK: u32 = virtio_ids::VIRTIO_ID_VSOCK;

/// Feature bit: the device conforms to virtio 1.x (the only mode we offer).
pub const F_VERSION_1: u32 = virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: the driver may use indirect descriptor tables.
pub const F_INDIRECT_DESC: u32 = virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Feature bit: used/avail event indices suppress notifications and interrupts.
pub const F_EVENT_IDX: u32 = virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    use virtio_bindings::virtio_config as c;
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = c::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = c::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is ready: queues may be used.
    pub const DRIVER_OK: u32 = c::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = c::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = c::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = c::VIRTIO_CONFIG_S_FAILED;
}

/// `v` as a byte, for virtio-bindings' values (all `u32`) that fill a one-byte field;
/// a value that does not fit fails the build, where this is used in a `const`.
pub(crate) const fn u8_of(v: u32) -> u8 {
    assert!(v <= u8::MAX as u32, "value does not fit in a byte");
    #[allow(clippy::cast_possible_truncation, reason = "checked just above")]
    let b = v as u8;
    b
}

/// `v` as a u16, for virtio-bindings' values that fill a two-byte field; as [`u8_of`].
pub(crate) const fn u16_of(v: u32) -> u16 {
    assert!(v <= u16::MAX as u32, "value does not fit in 16 bits");
    #[allow(clippy::cast_possible_truncation, reason = "checked just above")]
    let h = v as u16;
    h
}

/// Why a device could not start.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// The driver did not set up a queue the device needs.
    #[error("queue {0} is not ready or not valid")]
    QueueNotReady(usize),
    /// The device's worker thread could not be started.
    #[error("cannot start the device thread: {0}")]
    Thread(std::io::Error),
    /// The device was already started or its backend is gone.
    #[error("device is not in a state that can be activated")]
    BadState,
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory, for the descriptor rings and buffers.
    pub mem: GuestMemory,
    /// The queues as the driver configured them, in order.
    pub queues: Vec<Queue>,
    /// One eventfd per queue; readable when the guest notified that queue.
    pub queue_evts: Vec<EventFd>,
    /// How the device interrupts the guest.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device, independent of the transport it sits behind.
pub trait VirtioDevice: Send {
    /// The virtio device type.
    fn device_type(&self) -> u32;
    /// The largest size of each of the device's queues; its length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn features(&self) -> u64;
    /// Reads the device configuration space at `offset`. Bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space. Read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the queues the driver set up.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device (driver reset): afterwards no thread touches guest memory on its
    /// behalf, and it can be activated again.
    fn reset(&mut self);
}
