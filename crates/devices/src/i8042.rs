//! Just enough of the i8042 keyboard controller for the guest to reset the machine:
//! the "pulse reset line" command (0xFE on port 0x64), which Linux uses for `reboot=k`.
//! The status register reads as empty, so probing drivers find no keyboard data.

use crate::bus::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// I/O port base of the controller (data port 0x60, command/status port 0x64).
pub const I8042_PORT: u64 = 0x60;
/// Length of the controller's port window.
pub const I8042_LEN: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 controller.
pub struct I8042 {
    reset_evt: EventFd,
}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        Self { reset_evt }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            if let Err(e) = self.reset_evt.write(1) {
                log::error!("cannot signal the guest's reset request: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(0, &[CMD_RESET_CPU]);
        assert!(evt.read().is_err(), "data port writes do not reset");
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert!(evt.read().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b[0], 0);
    }
}
