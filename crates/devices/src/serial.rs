//! The 16550A UART (COM1 on x86_64, an MMIO window on aarch64), on top of vm-superio's
//! register model.
//! The guest's transmit bytes go to any writer (stdout, a file); received bytes are pushed
//! in by the VMM's event loop with [`SerialDevice::receive`], never more than the receive
//! FIFO has room for, and an eventfd says when the guest has drained it. The interrupt line
//! is an eventfd that the VMM registers with KVM as an irqfd.

use crate::bus::BusDevice;
use serde::{Deserialize, Serialize};
use std::io::Write;
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Number of the UART's byte-wide registers.
const UART_REGS: u64 = 8;

/// An interrupt line backed by an eventfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Signals an eventfd when the guest has read every received byte, so input can resume.
pub struct RxDrained(EventFd);

impl SerialEvents for RxDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // If this fails the event loop simply waits for the next input event.
        let _ = self.0.write(1);
    }
}

/// The UART's registers and receive FIFO, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

/// A serial port device.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, RxDrained, Box<dyn Write + Send>>,
    write_failed: bool,
}

impl SerialDevice {
    /// A UART whose output goes to `out`, whose interrupt fires `irq`, and which signals
    /// `rx_drained` when the guest has emptied its receive FIFO.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>, rx_drained: EventFd) -> Self {
        Self {
            uart: Serial::with_events(EventFdTrigger::new(irq), RxDrained(rx_drained), out),
            write_failed: false,
        }
    }

    /// A UART in a saved state (see [`SerialDevice::new`] for the rest). A saved FIFO
    /// longer than the UART's is refused.
    pub fn from_snapshot(
        snap: &SerialSnapshot,
        irq: EventFd,
        out: Box<dyn Write + Send>,
        rx_drained: EventFd,
    ) -> Result<Self, String> {
        let state = SerialState {
            baud_divisor_low: snap.baud_divisor[0],
            baud_divisor_high: snap.baud_divisor[1],
            interrupt_enable: snap.interrupt_enable,
            interrupt_identification: snap.interrupt_identification,
            line_control: snap.line_control,
            line_status: snap.line_status,
            modem_control: snap.modem_control,
            modem_status: snap.modem_status,
            scratch: snap.scratch,
            in_buffer: snap.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, EventFdTrigger::new(irq), RxDrained(rx_drained), out)
            .map_err(|e| format!("serial: {e:?}"))?;
        Ok(Self {
            uart,
            write_failed: false,
        })
    }

    /// The registers and FIFO, for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Free space in the receive FIFO.
    pub fn rx_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues bytes received from the outside for the guest; returns how many fitted.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Flushes buffered guest output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Eight byte-wide registers; the rest of an MMIO window reads as nothing.
        if data.len() != 1 || offset >= UART_REGS {
            data.fill(0xff);
            return;
        }
        // Below UART_REGS, so it fits.
        let Ok(reg) = u8::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        data[0] = self.uart.read(reg);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= UART_REGS {
            return;
        }
        let Ok(reg) = u8::try_from(offset) else {
            return;
        };
        if let Err(e) = self.uart.write(reg, data[0]) {
            // Losing console output must not stop the guest; say so once.
            if !self.write_failed {
                log::warn!("serial output failed, further errors are not reported: {e:?}");
                self.write_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone()), drained);
        // Enable the transmit-empty interrupt, then send two bytes.
        s.write(1, &[0x02]);
        s.write(0, b"o");
        s.write(0, b"k");
        assert_eq!(&*sink.0.lock().unwrap(), b"ok");
        assert!(irq.read().unwrap() >= 1);
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Wide accesses are ignored, not misinterpreted.
        let mut wide = [0u8; 2];
        s.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn received_bytes_are_bounded_by_the_fifo_and_drain_is_signalled() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq, Box::new(Sink::default()), drained.try_clone().unwrap());
        let room = s.rx_room();
        assert!(room > 0);
        let big = vec![b'x'; room + 10];
        assert_eq!(s.receive(&big), room);
        assert_eq!(s.rx_room(), 0);
        assert_eq!(s.receive(b"y"), 0, "a full FIFO takes nothing");
        let mut b = [0u8];
        for _ in 0..room {
            s.read(0, &mut b);
            assert_eq!(b[0], b'x');
        }
        assert!(drained.read().is_ok(), "draining the FIFO is signalled");
        assert_eq!(s.rx_room(), room);
    }
}
