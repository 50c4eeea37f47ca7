//! Loading the arm64 `Image` and the initrd, and writing the device tree the kernel reads
//! at entry (its address is passed in X0, see `regs`).

use super::fdt::{self, FdtError, FdtSetup};
use super::layout::*;
use crate::initrd::{self, InitrdError, InitrdPlacement};
use crate::{BootSetup, VirtioDeviceInfo};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{self as loader, pe, KernelLoader, PE};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Errors loading a kernel or initrd, or writing boot structures.
#[derive(Debug, Error)]
pub enum BootError {
    /// The kernel image is not an arm64 `Image`.
    #[error("not a kernel image (not an arm64 Image: no \"ARM\\x64\" magic)")]
    NotAKernel,
    /// The Image loader refused the image.
    #[error("invalid arm64 Image: {0}")]
    Pe(pe::Error),
    /// Reading the kernel file failed.
    #[error("cannot read the kernel image: {0}")]
    Io(std::io::Error),
    /// The kernel (with the device tree above it) does not fit in guest memory.
    #[error("the kernel does not fit in {0} MiB of guest memory")]
    KernelTooBig(u64),
    /// The initrd cannot be placed or read.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// The command line is not valid text.
    #[error("cannot write the kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// The device tree could not be built.
    #[error(transparent)]
    Fdt(#[from] FdtError),
    /// A boot structure could not be written to guest memory.
    #[error("cannot write the {0} into guest memory")]
    Memory(&'static str),
}

/// Where the loaded kernel is entered.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    /// Guest-physical entry point (the start of the loaded Image).
    pub entry: u64,
    /// First byte past the memory the kernel claims (its image size from the header).
    pub end: u64,
}

/// Offset of `image_size` in the arm64 Image header.
const IMAGE_SIZE_OFFSET: u64 = 16;

/// Loads an arm64 `Image` at the start of RAM.
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
    mem_size: u64,
) -> Result<KernelEntry, BootError> {
    let r = match PE::load(mem, Some(GuestAddress(KERNEL_START)), kernel, None) {
        Ok(r) => r,
        Err(loader::Error::Pe(pe::Error::InvalidImageMagicNumber))
        | Err(loader::Error::Pe(pe::Error::ReadImageHeader)) => return Err(BootError::NotAKernel),
        Err(loader::Error::Pe(pe::Error::ReadKernelImage)) => {
            return Err(BootError::KernelTooBig(mem_size >> 20))
        }
        Err(loader::Error::Pe(e)) => return Err(BootError::Pe(e)),
        Err(_) => return Err(BootError::NotAKernel),
    };
    // The kernel's BSS and early page tables follow the file: its header says how much
    // memory it takes in all, and nothing else may be put there.
    let mut size = [0u8; 8];
    kernel
        .seek(SeekFrom::Start(IMAGE_SIZE_OFFSET))
        .and_then(|_| kernel.read_exact(&mut size))
        .map_err(BootError::Io)?;
    let load = r.kernel_load.raw_value();
    let end = r
        .kernel_end
        .max(load.saturating_add(u64::from_le_bytes(size)));
    if end > DRAM_START + mem_size {
        return Err(BootError::KernelTooBig(mem_size >> 20));
    }
    Ok(KernelEntry { entry: load, end })
}

/// Loads the initrd page-aligned as high as it may go, above the kernel.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
    kernel_end: u64,
    mem_size: u64,
) -> Result<InitrdPlacement, BootError> {
    Ok(initrd::load(mem, initrd, kernel_end, fdt_addr(mem_size))?)
}

/// Writes the device tree at the top of RAM.
pub fn configure_system<M: GuestMemoryBackend>(mem: &M, s: &BootSetup) -> Result<(), BootError> {
    // In a small RAM the device tree's area would overlap the kernel.
    if fdt_addr(s.mem_size) < s.kernel.end {
        return Err(BootError::KernelTooBig(s.mem_size >> 20));
    }
    let cmdline = s.cmdline.as_cstring().map_err(BootError::Cmdline)?;
    let blob = fdt::build(&FdtSetup {
        cmdline: &cmdline.to_string_lossy(),
        mem_size: s.mem_size,
        vcpus: s.vcpus,
        gic: s.irqchip.layout(),
        initrd: s.initrd.map(|rd| (rd.addr, rd.size)),
        virtio: s.virtio,
    })?;
    mem.write_slice(&blob, GuestAddress(fdt_addr(s.mem_size)))
        .map_err(|_| BootError::Memory("device tree"))
}

/// Tells the guest about a virtio-mmio device: on aarch64 the device tree does that, so
/// the command line is left alone.
pub fn announce_virtio_device(
    _cmdline: &mut Cmdline,
    _device: &VirtioDeviceInfo,
) -> Result<(), linux_loader::cmdline::Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_below_the_device_tree() {
        let mib = 1 << 20;
        let kernel_end = DRAM_START + 20 * mib;
        let top = fdt_addr(128 * mib);
        let addr = initrd::place(3 * mib + 5, kernel_end, top).unwrap();
        assert!(addr + 3 * mib + 5 <= top && top + FDT_MAX_SIZE == DRAM_START + 128 * mib);
    }
}
