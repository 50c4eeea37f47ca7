//! Guest RAM: anonymous private mappings laid out by the architecture's memory map.

use arch::layout;
use thiserror::Error;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestMemoryMmap, GuestRegionMmap};

/// Errors allocating guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The size cannot be represented in the guest's physical address space.
    #[error("mem_size_mib {0} is larger than a guest can address")]
    TooLarge(u64),
    /// The host refused the mapping.
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    CannotMap {
        /// Requested size.
        mib: u64,
        /// What the host said.
        reason: String,
    },
}

/// Allocates `mib` MiB of guest RAM.
///
/// The mapping is not `MAP_NORESERVE`: the host's overcommit policy refuses a size it
/// could never back, here, with a clear error, instead of the guest being killed later.
/// Pages are only touched (and counted in RSS) when the guest uses them.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = mib.checked_mul(1 << 20).ok_or(MemoryError::TooLarge(mib))?;
    let ranges = layout::ram_regions(bytes).ok_or(MemoryError::TooLarge(mib))?;
    let mut regions = Vec::with_capacity(ranges.len());
    for (addr, size) in ranges {
        let size = usize::try_from(size).map_err(|_| MemoryError::TooLarge(mib))?;
        let mapping = MmapRegionBuilder::new(size)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE)
            .build()
            .map_err(|e| MemoryError::CannotMap {
                mib,
                reason: e.to_string(),
            })?;
        let region = GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::TooLarge(mib))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::CannotMap {
        mib,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes, GuestMemoryBackend};

    #[test]
    fn small_guest() {
        let m = create_guest_memory(16).unwrap();
        assert_eq!(m.num_regions(), 1);
        let base = layout::ram_regions(16 << 20).unwrap()[0].0;
        let at = base.unchecked_add(0x1000);
        m.write_obj(0xdead_beefu32, at).unwrap();
        assert_eq!(m.read_obj::<u32>(at).unwrap(), 0xdead_beef);
        assert!(m.read_obj::<u32>(base.unchecked_add(16 << 20)).is_err());
    }

    #[test]
    fn absurd_sizes_fail_cleanly() {
        assert!(matches!(
            create_guest_memory(u64::MAX),
            Err(MemoryError::TooLarge(_))
        ));
        assert!(matches!(
            create_guest_memory(1 << 40),
            Err(MemoryError::TooLarge(_))
        ));
        // 64 TiB passes the address check but no host of ours can back it.
        assert!(matches!(
            create_guest_memory(64 << 20),
            Err(MemoryError::TooLarge(_)) | Err(MemoryError::CannotMap { .. })
        ));
    }
}
