//! The i8042 keyboard controller, as much of it as a Linux guest uses: the controller's
//! command set (configuration byte, self tests, enabling the keyboard port, output port),
//! a keyboard that acknowledges commands, the "pulse reset line" command (0xFE on port
//! 0x64, which Linux uses for `reboot=k`), and a way for the host to press Ctrl-Alt-Del.
//! There is no auxiliary (mouse) port: guests should boot with `i8042.noaux`, as
//! Firecracker's default command line has it.

use crate::bus::BusDevice;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use vmm_sys_util::eventfd::EventFd;

// Offsets in the controller's window (its place is arch's: data port 0x60, command and
// status port 0x64 on x86_64).
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_MODE: u8 = 0xca;
const CMD_WRITE_MODE: u8 = 0xcb;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_RESET_CPU: u8 = 0xfe;

const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_KBD_UNLOCKED: u8 = 0x10;

const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_GET_ID: u8 = 0xf2;

/// Bytes waiting for the guest; more than this and the keyboard drops keys, as a real
/// one does.
const BUFFER_MAX: usize = 16;

/// Scancode set 2 make codes of Left Ctrl, Left Alt and Delete.
const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];

/// The controller's registers and the keyboard's output buffer, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042Snapshot {
    /// The configuration byte.
    pub ctr: u8,
    /// The output port.
    pub outp: u8,
    /// Whether the last write was to the command port.
    pub last_was_cmd: bool,
    /// A command waiting for its data byte.
    pub pending: Option<u8>,
    /// Bytes waiting for the guest.
    pub out: Vec<u8>,
}

/// The i8042 controller with its keyboard.
pub struct I8042 {
    reset_evt: EventFd,
    kbd_evt: Option<EventFd>,
    ctr: u8,
    outp: u8,
    last_was_cmd: bool,
    /// A command waiting for its data byte.
    pending: Option<u8>,
    out: VecDeque<u8>,
}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest asks for a CPU reset. Without
    /// a keyboard interrupt (see [`I8042::with_keyboard_irq`]) it answers the guest but
    /// cannot send keys.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            reset_evt,
            kbd_evt: None,
            ctr: CTR_KBD_INT | CTR_SYSTEM | CTR_AUX_DISABLED,
            outp: 0x01, // A20 off, CPU not in reset
            last_was_cmd: false,
            pending: None,
            out: VecDeque::new(),
        }
    }

    /// The registers, for a snapshot.
    pub fn snapshot(&self) -> I8042Snapshot {
        I8042Snapshot {
            ctr: self.ctr,
            outp: self.outp,
            last_was_cmd: self.last_was_cmd,
            pending: self.pending,
            out: self.out.iter().copied().collect(),
        }
    }

    /// Puts the controller in a saved state (at most the keyboard's buffer is kept).
    pub fn restore(&mut self, s: &I8042Snapshot) {
        self.ctr = s.ctr;
        self.outp = s.outp;
        self.last_was_cmd = s.last_was_cmd;
        self.pending = s.pending;
        self.out = s.out.iter().copied().take(BUFFER_MAX).collect();
    }

    /// Raises `kbd_evt` (an irqfd on IRQ 1) when the keyboard has bytes for the guest.
    pub fn with_keyboard_irq(mut self, kbd_evt: EventFd) -> Self {
        self.kbd_evt = Some(kbd_evt);
        self
    }

    /// Presses Ctrl-Alt-Del. Errors if the guest has not enabled the keyboard and its
    /// interrupt, or if the keys could not all be queued.
    pub fn ctrl_alt_del(&mut self) -> Result<(), &'static str> {
        if self.kbd_evt.is_none() {
            return Err("the keyboard has no interrupt line");
        }
        if self.ctr & CTR_KBD_DISABLED != 0 || self.ctr & CTR_KBD_INT == 0 {
            return Err("the guest has not enabled the keyboard");
        }
        if self.out.len() + CTRL_ALT_DEL.len() > BUFFER_MAX {
            return Err("the keyboard buffer is full: the guest is not reading it");
        }
        self.out.extend(CTRL_ALT_DEL);
        self.interrupt();
        Ok(())
    }

    fn push(&mut self, byte: u8) {
        if self.out.len() < BUFFER_MAX {
            self.out.push_back(byte);
        }
        self.interrupt();
    }

    fn interrupt(&self) {
        if self.ctr & CTR_KBD_INT != 0 && !self.out.is_empty() {
            if let Some(evt) = &self.kbd_evt {
                if let Err(e) = evt.write(1) {
                    log::warn!("i8042: cannot raise the keyboard interrupt: {e}");
                }
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = SB_SYSTEM | SB_KBD_UNLOCKED;
        if !self.out.is_empty() {
            s |= SB_OUT_FULL;
        }
        if self.last_was_cmd {
            s |= SB_LAST_WAS_CMD;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_MODE | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT => {
                self.pending = Some(cmd)
            }
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLED,
            // No auxiliary port: its test reports a stuck clock line.
            CMD_AUX_TEST => self.push(0x01),
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_MODE => self.push(0x01),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_RESET_CPU => {
                if let Err(e) = self.reset_evt.write(1) {
                    log::error!("cannot signal the guest's reset request: {e}");
                }
            }
            other => log::debug!("i8042: command {other:#x} ignored"),
        }
    }

    fn data(&mut self, byte: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = byte,
            Some(CMD_WRITE_OUTP) => self.outp = byte,
            Some(CMD_WRITE_KBD_OUT) => self.push(byte),
            Some(_) => {}
            // A byte for the keyboard itself: it acknowledges everything.
            None => match byte {
                KBD_RESET => {
                    self.push(KBD_ACK);
                    self.push(0xaa); // self test passed
                }
                KBD_GET_ID => {
                    self.push(KBD_ACK);
                    self.push(0xab);
                    self.push(0x83);
                }
                _ => self.push(KBD_ACK),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            COMMAND_OFFSET => self.status(),
            DATA_OFFSET => {
                let b = self.out.pop_front().unwrap_or(0);
                // The next byte gets an interrupt of its own.
                self.interrupt();
                b
            }
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            COMMAND_OFFSET => {
                self.last_was_cmd = true;
                self.command(byte);
            }
            DATA_OFFSET => {
                self.last_was_cmd = false;
                self.data(byte);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        assert!(evt.read().is_err(), "data port writes do not reset");
        dev.write(COMMAND_OFFSET, &[CMD_KBD_ENABLE]);
        assert!(evt.read().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn the_linux_probe_sequence_is_answered() {
        let mut dev = I8042::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x55);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        let ctr = read(&mut dev, DATA_OFFSET);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[ctr | CTR_KBD_DISABLED]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), ctr | CTR_KBD_DISABLED);
        dev.write(DATA_OFFSET, &[KBD_RESET]);
        assert_eq!(
            (read(&mut dev, DATA_OFFSET), read(&mut dev, DATA_OFFSET)),
            (KBD_ACK, 0xaa)
        );
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL, 0);
    }

    #[test]
    fn ctrl_alt_del_needs_an_enabled_keyboard_and_raises_its_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .with_keyboard_irq(irq.try_clone().unwrap());
        dev.write(COMMAND_OFFSET, &[CMD_KBD_DISABLE]);
        assert!(dev.ctrl_alt_del().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_KBD_ENABLE]);
        dev.ctrl_alt_del().unwrap();
        assert!(irq.read().is_ok());
        let keys: Vec<u8> = (0..4).map(|_| read(&mut dev, DATA_OFFSET)).collect();
        assert_eq!(keys, CTRL_ALT_DEL);
        // A guest that never reads the keyboard cannot make ember queue without bound.
        for _ in 0..4 {
            dev.ctrl_alt_del().unwrap();
        }
        assert!(dev.ctrl_alt_del().is_err());
    }
}
