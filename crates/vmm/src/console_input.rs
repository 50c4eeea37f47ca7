//! Feeds bytes from the console's input (ember's stdin) into the guest's UART, on the
//! VMM's event loop. Never more is read than the UART's receive FIFO can take: with a full
//! FIFO the input is left unread (and unwatched) until the guest drains it, so nothing is
//! dropped and nothing is buffered without bound.

use devices::serial::SerialDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Most bytes moved per wake-up (the 16550's FIFO is 64 bytes).
const CHUNK: usize = 64;

/// The console input subscriber.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice>>,
    input: File,
    rx_drained: EventFd,
    paused: bool,
    closed: bool,
}

impl ConsoleInput {
    /// Moves bytes from `input` to `serial`; `rx_drained` is the eventfd the UART signals
    /// when its receive FIFO has been emptied.
    pub fn new(serial: Arc<Mutex<SerialDevice>>, input: File, rx_drained: EventFd) -> Self {
        Self {
            serial,
            input,
            rx_drained,
            paused: false,
            closed: false,
        }
    }

    fn stop_watching_input(&mut self, ops: &mut EventOps) {
        let _ = ops.remove(Events::new(&self.input, EventSet::IN));
    }

    fn on_input(&mut self, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let room = serial.rx_room().min(CHUNK);
        if room == 0 {
            drop(serial);
            self.stop_watching_input(ops);
            self.paused = true;
            return;
        }
        let mut buf = [0u8; CHUNK];
        match self.input.read(&mut buf[..room]) {
            Ok(0) => {
                drop(serial);
                log::debug!("console input closed");
                self.closed = true;
                self.stop_watching_input(ops);
            }
            Ok(n) => {
                serial.receive(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                drop(serial);
                log::warn!("console input failed, no more input is read: {e}");
                self.closed = true;
                self.stop_watching_input(ops);
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input.as_raw_fd() {
            self.on_input(ops);
        } else if events.fd() == self.rx_drained.as_raw_fd() {
            let _ = self.rx_drained.read();
            if self.paused && !self.closed {
                self.paused = false;
                if ops.add(Events::new(&self.input, EventSet::IN)).is_err() {
                    self.closed = true;
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new(&self.rx_drained, EventSet::IN))
            .is_err()
        {
            log::warn!("cannot watch the serial port's drain events; console input is off");
            self.closed = true;
            return;
        }
        // Files and /dev/null cannot be polled; such an input simply has nothing to give.
        if let Err(e) = ops.add(Events::new(&self.input, EventSet::IN)) {
            log::debug!("console input not watched: {e:?}");
            self.closed = true;
        }
    }
}
