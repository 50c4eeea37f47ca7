//! Placing and loading the initrd, the same on every architecture: page-aligned, as high
//! as the architecture allows (`top`), never below the kernel (`floor`).

use std::fs::File;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Errors placing or reading the initrd.
#[derive(Debug, Error)]
pub enum InitrdError {
    /// The initrd does not fit between the kernel and the top of its area.
    #[error("the initrd ({size} bytes) does not fit in guest memory ({avail} bytes free above the kernel)")]
    TooBig {
        /// initrd size.
        size: u64,
        /// Bytes available for it.
        avail: u64,
    },
    /// Reading the initrd failed.
    #[error("cannot read the initrd: {0}")]
    Read(std::io::Error),
}

/// A loaded initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Where an initrd of `size` bytes goes: page-aligned, ending at or below `top`, starting
/// at or above `floor`.
pub fn place(size: u64, floor: u64, top: u64) -> Result<u64, InitrdError> {
    let avail = top.saturating_sub(floor);
    let too_big = InitrdError::TooBig { size, avail };
    let addr = top.checked_sub(size).ok_or(too_big)? & !0xfff;
    if addr < floor {
        return Err(InitrdError::TooBig { size, avail });
    }
    Ok(addr)
}

/// Loads `initrd` as high as [`place`] puts it.
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
    floor: u64,
    top: u64,
) -> Result<InitrdPlacement, InitrdError> {
    let size = initrd.metadata().map_err(InitrdError::Read)?.len();
    let addr = place(size, floor, top)?;
    let len = usize::try_from(size)
        .map_err(|_| InitrdError::Read(std::io::ErrorKind::FileTooLarge.into()))?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(|e| InitrdError::Read(std::io::Error::other(e.to_string())))?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn goes_as_high_as_allowed_and_never_below_the_floor() {
        let addr = place(3 * MIB + 5, 20 * MIB, 128 * MIB).unwrap();
        assert_eq!(addr & 0xfff, 0);
        assert!(addr + 3 * MIB + 5 <= 128 * MIB);
        assert!(addr >= 20 * MIB);
        assert!(matches!(
            place(200 * MIB, 20 * MIB, 128 * MIB),
            Err(InitrdError::TooBig { .. })
        ));
        assert!(matches!(
            place(110 * MIB, 20 * MIB, 128 * MIB),
            Err(InitrdError::TooBig { .. })
        ));
    }
}
