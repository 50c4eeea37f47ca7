//! The device-to-guest signal: the interrupt status register the driver reads and
//! acknowledges, plus the eventfd that raises the guest interrupt (a KVM irqfd).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use virtio_bindings::virtio_mmio;
use vmm_sys_util::eventfd::EventFd;

/// Why the device interrupts (bits of the InterruptStatus register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// Buffers were returned on a used ring.
    Vring = virtio_mmio::VIRTIO_MMIO_INT_VRING as isize,
    /// The configuration space (or the device status) changed.
    Config = virtio_mmio::VIRTIO_MMIO_INT_CONFIG as isize,
}

/// Shared between a transport (which reads and acknowledges the status) and a device
/// worker (which raises it).
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    evt: EventFd,
}

impl Interrupt {
    /// An interrupt line that fires `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            evt,
        }
    }

    /// Sets the status bit for `kind` and raises the interrupt.
    pub fn trigger(&self, kind: InterruptKind) {
        self.status.fetch_or(kind as u32, Ordering::SeqCst);
        // A full eventfd counter (2^64 - 2 pending) still means "interrupt pending": the
        // only possible error leaves the guest's view unchanged.
        if let Err(e) = self.evt.write(1) {
            log::warn!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledges the bits in `bits` (InterruptACK register).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device failed and needs a reset: the driver sees DEVICE_NEEDS_RESET in the status
    /// register, announced by a configuration interrupt.
    pub fn fail(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(InterruptKind::Config);
    }

    /// Whether [`Interrupt::fail`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Restores a saved InterruptStatus and failure flag (snapshots). The line itself is
    /// not raised: the interrupt controller's own saved state holds what was pending.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Driver reset: no pending status, no failure.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}
