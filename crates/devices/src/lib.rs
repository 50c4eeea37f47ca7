//! Emulated devices and the buses the vCPUs reach them through.
//!
//! A device here knows nothing of KVM, of the VMM's configuration or of the API: it
//! implements [`BusDevice`] (register reads and writes at an offset in its window) and
//! signals the outside world only through event file descriptors it was given.

// Casts that can lose bits are errors in CI (-D warnings); the workspace cannot set this
// for some crates only. Tests cast known small values freely.
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

pub mod bus;
pub mod i8042;
pub mod rtc;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
