//! Places virtio-mmio devices: gives each a register window and an interrupt line, wires
//! its queue notifications (ioeventfd) and its interrupt (irqfd) into KVM, puts it on the
//! MMIO bus, and tells the guest where it is (the kernel command line on x86_64, the
//! device tree on aarch64: see `arch::boot`).

use crate::vstate::vm::{Vm, VmError};
use arch::layout::{IRQ_DEVICES_FIRST, IRQ_DEVICES_LAST, MMIO_DEVICES_SIZE, MMIO_DEVICES_START};
use arch::VirtioDeviceInfo;
use devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_LEN, QUEUE_NOTIFY_OFFSET};
use devices::virtio::{GuestMemory, Interrupt, VirtioDevice};
use devices::{Bus, BusError};
use linux_loader::cmdline::Cmdline;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

/// Errors attaching a device.
#[derive(Debug, Error)]
pub enum DeviceManagerError {
    /// Every interrupt line is taken.
    #[error("too many devices: at most {} virtio devices fit", IRQ_DEVICES_LAST - IRQ_DEVICES_FIRST + 1)]
    NoIrq,
    /// The MMIO space for devices is full.
    #[error("too many devices: no MMIO window left")]
    NoWindow,
    /// An eventfd could not be created or shared.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// KVM refused an irqfd or ioeventfd.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The bus refused the window.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The kernel command line has no room for the device.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
}

/// Hands out windows and interrupt lines in order, so the n-th device attached is the
/// n-th the guest probes (`/dev/vda` before `/dev/vdb`).
pub struct MmioDeviceManager {
    next_base: u64,
    next_irq: u32,
    attached: Vec<VirtioDeviceInfo>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl Default for MmioDeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl MmioDeviceManager {
    /// An empty layout.
    pub fn new() -> Self {
        Self {
            next_base: MMIO_DEVICES_START,
            next_irq: IRQ_DEVICES_FIRST,
            attached: Vec::new(),
            transports: Vec::new(),
        }
    }

    /// Attaches `device`; returns its window base and interrupt line.
    pub fn attach(
        &mut self,
        vm: &Vm,
        mem: &GuestMemory,
        bus: &mut Bus,
        cmdline: &mut Cmdline,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(u64, u32), DeviceManagerError> {
        if self.next_irq > IRQ_DEVICES_LAST {
            return Err(DeviceManagerError::NoIrq);
        }
        if self.next_base + MMIO_WINDOW_LEN > MMIO_DEVICES_START + MMIO_DEVICES_SIZE {
            return Err(DeviceManagerError::NoWindow);
        }
        let (base, irq) = (self.next_base, self.next_irq);

        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&irq_evt, irq)?;
        let transport = MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(irq_evt)))
            .map_err(DeviceManagerError::EventFd)?;
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, base + QUEUE_NOTIFY_OFFSET, index as u32)?;
        }
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(transport.clone(), base, MMIO_WINDOW_LEN)?;
        self.transports.push(transport);
        let info = VirtioDeviceInfo {
            addr: base,
            len: MMIO_WINDOW_LEN,
            irq,
        };
        arch::boot::announce_virtio_device(cmdline, &info).map_err(DeviceManagerError::Cmdline)?;
        self.attached.push(info);
        log::debug!("virtio-mmio device at {base:#x}, irq {irq}");
        self.next_base += MMIO_WINDOW_LEN;
        self.next_irq += 1;
        Ok((base, irq))
    }

    /// Every transport attached so far, in order (snapshots read and restore them).
    pub fn transports(&self) -> &[Arc<Mutex<MmioTransport>>] {
        &self.transports
    }

    /// Every device attached so far, in order.
    pub fn devices(&self) -> &[VirtioDeviceInfo] {
        &self.attached
    }
}
