//! An address space (port I/O or MMIO) that routes accesses to the device owning the
//! address. Built before the vCPUs start, then shared read-only between vCPU threads;
//! each device has its own lock, so vCPUs touching different devices never contend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// A device register window on a bus.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the start of the device's window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset` from the start of the device's window.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors inserting a device on a bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// The new window overlaps a device already on the bus.
    #[error("bus window {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the refused window.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// The window is empty or wraps around the address space.
    #[error("bus window {base:#x}+{len:#x} is empty or wraps")]
    BadWindow {
        /// Start of the refused window.
        base: u64,
        /// Its length.
        len: u64,
    },
}

/// A shared, lockable device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Window {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping device windows.
#[derive(Default, Clone)]
pub struct Bus {
    windows: BTreeMap<u64, Window>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadWindow { base, len })?;
        // The window starting at or before our end must end at or before our start.
        if let Some((&b, w)) = self.windows.range(..end).next_back() {
            if b + w.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.windows.insert(base, Window { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Window)> {
        let (&base, w) = self.windows.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= w.len).then_some((offset, w))
    }

    /// Routes a read; returns `false` if no device covers the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, w)) => {
                lock(&w.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; returns `false` if no device covers the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, w)) => {
                lock(&w.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device; a panic while holding the lock aborts the process (panic = abort), so
/// a poisoned lock cannot be observed in release builds and is recovered in tests.
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder {
        last: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder { last: vec![] }))
    }

    #[test]
    fn routes_by_offset() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert(d.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(d.lock().unwrap().last, vec![(7, vec![9])]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn accesses_straddling_the_end_are_refused() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x1000, 0x10).unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x100e, &mut b));
        assert!(bus.read(0x100c, &mut b));
        let mut big = [0u8; 4];
        assert!(!bus.read(u64::MAX - 1, &mut big));
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert!(bus.insert(dev(), 0x10f, 1).is_err());
        assert!(bus.insert(dev(), 0xf8, 0x9).is_err());
        assert!(bus.insert(dev(), 0xf0, 0x10).is_ok());
        assert!(bus.insert(dev(), 0x110, 0x10).is_ok());
        assert!(bus.insert(dev(), 0x200, 0).is_err());
        assert!(bus.insert(dev(), u64::MAX, 2).is_err());
    }
}
