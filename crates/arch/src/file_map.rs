//! Loading boot files (kernel, initrd) into guest memory by mapping instead of copying.
//!
//! [`GuestFileReader`] wraps a file for the loaders: where a read targets whole,
//! page-aligned pages of guest memory from a page-aligned file offset, it maps the file's
//! pages there (private, copy-on-write) instead of reading them. Boot then costs page-table
//! updates instead of a copy of every byte plus a fault and a zeroing of every page, and
//! guests booting the same kernel share its unmodified pages through the host's page
//! cache. Anything else (headers, unaligned spans, tails, files that cannot be mapped)
//! is read normally.
//!
//! The mapped files must not be rewritten in place while guests use them (replace them by
//! renaming a new file over the old one): like any private mapping, pages the guest has not
//! written yet follow the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress, ReadVolatile};
use vm_memory::{VolatileMemoryError, VolatileSlice};

const PAGE: u64 = 4096;

/// A file reader that maps page-aligned spans into guest memory.
pub struct GuestFileReader<'a> {
    file: &'a mut File,
    len: u64,
    /// Host address ranges of guest RAM: the only places a mapping may replace.
    guest: Vec<(usize, usize)>,
}

impl<'a> GuestFileReader<'a> {
    /// Wraps `file` for loading into `mem`.
    pub fn new<M: GuestMemoryBackend>(file: &'a mut File, mem: &M) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let guest = mem
            .iter()
            .filter_map(|r| {
                let start = r.get_host_address(MemoryRegionAddress(0)).ok()? as usize;
                Some((start, usize::try_from(r.len()).ok()?))
            })
            .collect();
        Ok(Self { file, len, guest })
    }

    fn in_guest(&self, addr: usize, len: usize) -> bool {
        self.guest.iter().any(|&(start, size)| {
            addr >= start && addr.checked_add(len).is_some_and(|end| end <= start + size)
        })
    }

    /// Maps up to `want` bytes of the file at the current position over `dst`, if the
    /// alignment allows; returns how many bytes were mapped (0 if none).
    fn try_map(&mut self, dst: *mut u8, want: usize) -> std::io::Result<usize> {
        let pos = self.file.stream_position()?;
        let left = self.len.saturating_sub(pos);
        let span = (want as u64).min(left) & !(PAGE - 1);
        if span == 0 || !pos.is_multiple_of(PAGE) || !(dst as u64).is_multiple_of(PAGE) {
            return Ok(0);
        }
        // At most `want`, so it fits.
        let Ok(span) = usize::try_from(span) else {
            return Ok(0);
        };
        if !self.in_guest(dst as usize, span) {
            return Ok(0);
        }
        // SAFETY: [dst, dst + span) lies inside one guest RAM mapping owned by the VMM
        // (checked above) and nothing holds references into those pages while a boot file
        // is loaded: the guest has not started. MAP_FIXED replaces exactly those pages with
        // a private, writable mapping of the file, so the range stays valid, readable and
        // writable for as long as the guest memory mapping exists.
        let ret = unsafe {
            libc::mmap(
                dst.cast(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                pos as libc::off_t,
            )
        };
        if ret == libc::MAP_FAILED {
            // Not every file system can map: copy instead. A failed MAP_FIXED may already
            // have dropped the old pages, so put fresh anonymous memory back first.
            // SAFETY: same range and reasoning as above, with anonymous memory.
            let back = unsafe {
                libc::mmap(
                    dst.cast(),
                    span,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if back == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(0);
        }
        self.file.seek(SeekFrom::Current(span as i64))?;
        Ok(span)
    }
}

impl Read for GuestFileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for GuestFileReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for GuestFileReader<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let dst = buf.ptr_guard_mut().as_ptr();
        let mut done = self
            .try_map(dst, buf.len())
            .map_err(VolatileMemoryError::IOError)?;
        if done > 0 {
            buf.bitmap().mark_dirty(0, done);
        }
        // Fill the rest by reading: callers copy region by region and treat a short read
        // inside a region as an error, so a mapped head must not end the call early.
        while done < buf.len() {
            let mut rest = buf.offset(done)?;
            let n = self.file.read_volatile(&mut rest)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn file_with(data: &[u8]) -> File {
        let mut f = tempfile_in_tmp();
        f.write_all(data).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!(
            "ember-file-map-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn aligned_and_unaligned_loads_give_the_file_bytes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let data = pattern(3 * 4096 + 123);
        for (file_off, guest_at) in [
            (0u64, 0x10000u64),
            (4096, 0x20000),
            (100, 0x30000),
            (0, 0x40010),
        ] {
            let mut f = file_with(&data);
            f.seek(SeekFrom::Start(file_off)).unwrap();
            let mut r = GuestFileReader::new(&mut f, &mem).unwrap();
            let n = data.len() - file_off as usize;
            mem.read_exact_volatile_from(GuestAddress(guest_at), &mut r, n)
                .unwrap();
            let mut back = vec![0u8; n];
            mem.read_slice(&mut back, GuestAddress(guest_at)).unwrap();
            assert_eq!(
                back,
                &data[file_off as usize..],
                "offset {file_off} at {guest_at:#x}"
            );
            // Beyond what was loaded the guest still sees zeroes, not later file bytes.
            let after: u8 = mem.read_obj(GuestAddress(guest_at + n as u64)).unwrap();
            assert_eq!(after, 0);
            assert_eq!(f.stream_position().unwrap(), data.len() as u64);
        }
    }

    #[test]
    fn guest_writes_do_not_reach_the_file() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let data = pattern(2 * 4096);
        let mut f = file_with(&data);
        let mut r = GuestFileReader::new(&mut f, &mem).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x8000), &mut r, data.len())
            .unwrap();
        mem.write_obj(0xffu8, GuestAddress(0x8000)).unwrap();
        let mut on_disk = vec![0u8; data.len()];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut on_disk).unwrap();
        assert_eq!(on_disk, data);
    }

    #[test]
    fn never_maps_outside_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let data = pattern(4096);
        let mut f = file_with(&data);
        let mut r = GuestFileReader::new(&mut f, &mem).unwrap();
        // A page-aligned host buffer that is not guest memory must be filled by reading.
        let mut local = vec![0u8; 3 * 4096];
        let start = local.as_ptr().align_offset(4096);
        let page = &mut local[start..start + 4096];
        assert!(!r.in_guest(page.as_ptr() as usize, 4096));
        assert_eq!(r.try_map(page.as_mut_ptr(), 4096).unwrap(), 0);
        r.read_exact(page).unwrap();
        assert_eq!(page, &data[..]);
    }
}
