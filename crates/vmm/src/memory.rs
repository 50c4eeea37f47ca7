//! Guest RAM: anonymous private mappings laid out by the architecture's memory map.

use arch::layout;
use devices::virtio::GuestMemoryMmap;
use std::fs::File;
use std::os::fd::AsRawFd;
use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::bitmap::NewBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::GuestRegionMmap;

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

/// Host alignment of guest RAM. KVM maps guest memory with 2 MiB entries (NPT/EPT on
/// x86_64, stage-2 blocks on aarch64) only where the host address and the guest address
/// agree modulo 2 MiB and the host backs the span with a huge page (transparent huge
/// pages, as the host's policy allows). An anonymous mapping is only page-aligned, so
/// without this every guest page is mapped and faulted in 4 KiB at a time: measured in
/// the emulated host, the guest's memmap setup took 173 ms against 2.6 ms under
/// Firecracker, whose mapping happened to be aligned.
const HUGE_PAGE: usize = 2 << 20;

/// The host's page size (4 KiB on x86_64; 4, 16 or 64 KiB on aarch64 hosts).
fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(4096)
}

/// Maps `size` bytes of anonymous, private, read-write memory at a 2 MiB-aligned address,
/// with an inaccessible guard page on each side: a stray access just outside guest RAM
/// faults instead of reaching other memory, and the guest RAM mapping never merges with
/// a neighbouring anonymous mapping (so /proc/PID/smaps shows it as its own range).
fn map_aligned(size: usize) -> std::io::Result<*mut u8> {
    let page = page_size();
    let total = size
        .checked_add(HUGE_PAGE + 2 * page)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new anonymous mapping at an address the kernel chooses; it replaces
    // nothing, and the result is checked before use.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base_addr = base as usize;
    // At most base + HUGE_PAGE, so the guard after the region still lies inside `total`.
    let start = (base_addr + page).next_multiple_of(HUGE_PAGE);
    let guard_before = start - page;
    let guard_after = start + size;
    // SAFETY: both guard pages lie inside the mapping made above, which nothing uses yet.
    let guarded = unsafe {
        libc::mprotect(guard_before as *mut libc::c_void, page, libc::PROT_NONE) == 0
            && libc::mprotect(guard_after as *mut libc::c_void, page, libc::PROT_NONE) == 0
    };
    if !guarded {
        let e = std::io::Error::last_os_error();
        // SAFETY: the whole mapping made above, still used by nothing.
        unsafe { libc::munmap(base, total) };
        return Err(e);
    }
    // Give back the slack beyond the guards. Unmapping page-aligned spans of a mapping just
    // made does not fail; if it did, the slack would only stay reserved, untouched.
    let head = guard_before - base_addr;
    if head > 0 {
        // SAFETY: [base, guard_before) is the head of the mapping made above, unused.
        unsafe { libc::munmap(base, head) };
    }
    let tail_at = guard_after + page;
    let tail = base_addr + total - tail_at;
    if tail > 0 {
        // SAFETY: [tail_at, base + total) is its tail, unused as well.
        unsafe { libc::munmap(tail_at as *mut libc::c_void, tail) };
    }
    Ok(start as *mut u8)
}

/// Allocates `mib` MiB of guest RAM, each region at a 2 MiB-aligned host address.
///
/// The mapping is not `MAP_NORESERVE`: the host's overcommit policy refuses a size it
/// could never back, here, with a clear error, instead of the guest being killed later.
/// Pages are only touched (and counted in RSS) when the guest uses them. Guest RAM lives
/// as long as the process (one ember process runs one guest, and its vCPU and device
/// threads use the memory until the process exits), so nothing unmaps it.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    create(mib, None)
}

/// Guest RAM of `mib` MiB whose content is `file` (a snapshot's memory file, regions back
/// to back), mapped privately: pages are read from the file when the guest first touches
/// them, clones of one snapshot share the pages none of them wrote (the page cache), and
/// the guest's writes never reach the file. Same placement as [`create_guest_memory`].
pub fn guest_memory_from_file(mib: u64, file: &File) -> Result<GuestMemoryMmap, MemoryError> {
    create(mib, Some(file))
}

fn create(mib: u64, file: Option<&File>) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = mib.checked_mul(1 << 20).ok_or(MemoryError::TooLarge(mib))?;
    let ranges = layout::ram_regions(bytes).ok_or(MemoryError::TooLarge(mib))?;
    let cannot_map = |reason: String| MemoryError::CannotMap { mib, reason };
    let mut regions = Vec::with_capacity(ranges.len());
    let mut file_offset: u64 = 0;
    for (addr, size) in ranges {
        let size = usize::try_from(size).map_err(|_| MemoryError::TooLarge(mib))?;
        let ptr = map_aligned(size).map_err(|e| cannot_map(e.to_string()))?;
        let mut flags = libc::MAP_ANONYMOUS | libc::MAP_PRIVATE;
        if let Some(f) = file {
            let offset =
                libc::off_t::try_from(file_offset).map_err(|_| MemoryError::TooLarge(mib))?;
            // SAFETY: replaces [ptr, ptr + size), the anonymous mapping map_aligned just
            // made and nothing uses yet, with a private mapping of the file at the same
            // place (MAP_FIXED); the guard pages around it stay. The result is checked.
            let got = unsafe {
                libc::mmap(
                    ptr.cast(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    f.as_raw_fd(),
                    offset,
                )
            };
            if got == libc::MAP_FAILED || got.cast::<u8>() != ptr {
                return Err(cannot_map(format!(
                    "the memory file: {}",
                    std::io::Error::last_os_error()
                )));
            }
            flags = libc::MAP_PRIVATE;
        }
        file_offset += size as u64;
        // SAFETY: [ptr, ptr + size) is the mapping made above, readable and writable, and
        // never unmapped (see above), so it stays valid for the region.
        let builder = unsafe {
            MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::with_len(size))
                .with_raw_mmap_pointer(ptr)
        };
        let mapping = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .build()
            .map_err(|e| cannot_map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::TooLarge(mib))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| cannot_map(e.to_string()))
}

/// Adds to `bits` (one bit per page of `region`, KVM's dirty-log layout) the pages devices
/// wrote since the last call, and clears the device bitmap.
pub fn take_device_dirty(region: &GuestRegionMmap<AtomicBitmap>, bits: &mut Vec<u64>) {
    let device = std::ops::Deref::deref(region).bitmap().get_and_reset();
    if bits.len() < device.len() {
        bits.resize(device.len(), 0);
    }
    for (b, d) in bits.iter_mut().zip(device) {
        *b |= d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};

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
    fn regions_are_2mib_aligned_in_the_host() {
        let m = create_guest_memory(64).unwrap();
        for r in m.iter() {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap() as usize;
            assert_eq!(
                host % HUGE_PAGE,
                0,
                "region at guest {:#x}",
                r.start_addr().0
            );
            assert_eq!(host % HUGE_PAGE, (r.start_addr().0 as usize) % HUGE_PAGE);
            // Guard pages on both sides, and the region is a mapping of its own.
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let perms = |lo: usize, hi: usize| {
                maps.lines()
                    .find(|l| l.starts_with(&format!("{lo:x}-{hi:x} ")))
                    .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            };
            let end = host + r.len() as usize;
            assert_eq!(perms(host, end).as_deref(), Some("rw-p"));
            assert_eq!(perms(host - page_size(), host).as_deref(), Some("---p"));
            assert_eq!(perms(end, end + page_size()).as_deref(), Some("---p"));
        }
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
