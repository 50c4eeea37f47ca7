//! Loading the kernel and initrd and writing the structures the kernel reads at entry:
//! the Linux zero page (64-bit boot protocol) or PVH `hvm_start_info`.

use super::layout::*;
use super::mptable::{self, MpTableError};
use super::regs::{self, EntryMode, RegsError};
use crate::initrd::{self, InitrdError, InitrdPlacement};
use crate::{BootSetup, VirtioDeviceInfo};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::{self, BzImage};
use linux_loader::loader::elf::{self, start_info, Elf, PvhBootCapability};
use linux_loader::loader::{self as loader, KernelLoader};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use thiserror::Error;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

/// Errors loading a kernel or initrd, or writing boot structures.
#[derive(Debug, Error)]
pub enum BootError {
    /// The kernel image is neither an ELF vmlinux nor a bzImage.
    #[error("not a kernel image (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel,
    /// The ELF loader refused the image.
    #[error("invalid ELF kernel: {0}")]
    Elf(elf::Error),
    /// The bzImage loader refused the image.
    #[error("invalid bzImage kernel: {0}")]
    BzImage(bzimage::Error),
    /// Reading the kernel file failed.
    #[error("cannot read the kernel image: {0}")]
    Io(std::io::Error),
    /// The kernel does not fit in guest memory.
    #[error("the kernel does not fit in {0} MiB of guest memory")]
    KernelTooBig(u64),
    /// The initrd cannot be placed or read.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// The command line could not be placed in memory.
    #[error("cannot write the kernel command line: {0}")]
    Cmdline(loader::Error),
    /// The MP table could not be built.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// Boot tables could not be written.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// A boot structure could not be written to guest memory.
    #[error("cannot write the {0} into guest memory")]
    Memory(&'static str),
    /// A value does not fit the boot protocol's field for it (32-bit addresses).
    #[error("the {0} does not fit the boot protocol's field for it")]
    OutOfReach(&'static str),
    /// The memory map has more entries than the boot protocol carries.
    #[error("the memory map has too many entries ({0})")]
    MemoryMapTooLarge(usize),
}

/// Where and how the loaded kernel is entered.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    /// Entry protocol.
    pub mode: EntryMode,
    /// Guest-physical entry point.
    pub entry: u64,
    /// First byte past the loaded kernel.
    pub end: u64,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

/// Loads `kernel` into guest memory: an ELF vmlinux (PVH entry if it has the note,
/// else the 64-bit entry) or a bzImage (64-bit entry at load address + 0x200).
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
    mem_size: u64,
) -> Result<KernelEntry, BootError> {
    let too_big = || BootError::KernelTooBig(mem_size >> 20);
    match Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            let (mode, entry) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (EntryMode::Pvh, addr.raw_value()),
                _ => (EntryMode::LinuxLongMode, r.kernel_load.raw_value()),
            };
            return Ok(KernelEntry {
                mode,
                entry,
                end: r.kernel_end,
                setup_header: None,
            });
        }
        Err(loader::Error::Elf(elf::Error::InvalidElfMagicNumber))
        | Err(loader::Error::Elf(elf::Error::ReadElfHeader)) => {}
        Err(loader::Error::Elf(elf::Error::ReadKernelImage)) => return Err(too_big()),
        Err(loader::Error::Elf(e)) => return Err(BootError::Elf(e)),
        Err(_) => return Err(BootError::NotAKernel),
    }
    kernel.seek(SeekFrom::Start(0)).map_err(BootError::Io)?;
    match BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => Ok(KernelEntry {
            mode: EntryMode::LinuxLongMode,
            entry: r.kernel_load.raw_value() + 0x200,
            end: r.kernel_end,
            setup_header: r.setup_header,
        }),
        Err(loader::Error::Bzimage(bzimage::Error::InvalidBzImage))
        | Err(loader::Error::Bzimage(bzimage::Error::ReadBzImageHeader))
        | Err(loader::Error::Bzimage(bzimage::Error::SeekBzImageHeader)) => {
            Err(BootError::NotAKernel)
        }
        Err(loader::Error::Bzimage(bzimage::Error::ReadBzImageCompressedKernel)) => Err(too_big()),
        Err(loader::Error::Bzimage(e)) => Err(BootError::BzImage(e)),
        Err(_) => Err(BootError::NotAKernel),
    }
}

/// Loads the initrd page-aligned as high as it may go, above the kernel.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
    kernel_end: u64,
    mem_size: u64,
) -> Result<InitrdPlacement, BootError> {
    Ok(initrd::load(
        mem,
        initrd,
        kernel_end.max(HIMEM_START),
        low_ram_end(mem_size),
    )?)
}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a plain-old-data repr(C) struct of integers and arrays of them;
// every bit pattern is valid.
unsafe impl ByteValued for ZeroPage {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(start_info::hvm_start_info);
// SAFETY: hvm_start_info is a repr(C) struct of integers only.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(start_info::hvm_modlist_entry);
// SAFETY: hvm_modlist_entry is a repr(C) struct of integers only.
unsafe impl ByteValued for ModlistEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(start_info::hvm_memmap_table_entry);
// SAFETY: hvm_memmap_table_entry is a repr(C) struct of integers only.
unsafe impl ByteValued for MemmapEntry {}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Tells the guest about a virtio-mmio device: on x86_64 through the command line
/// (`virtio_mmio.device=<size>@<addr>:<irq>`), which the kernel parses at boot.
pub fn announce_virtio_device(
    cmdline: &mut Cmdline,
    device: &VirtioDeviceInfo,
) -> Result<(), linux_loader::cmdline::Error> {
    cmdline.add_virtio_mmio_device(device.len, GuestAddress(device.addr), device.irq, None)
}

/// Writes the command line, MP table, boot page tables/GDT and the zero page or PVH
/// start info into guest memory.
pub fn configure_system<M: GuestMemoryBackend>(mem: &M, s: &BootSetup) -> Result<(), BootError> {
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), s.cmdline)
        .map_err(BootError::Cmdline)?;
    let cmdline_len = s
        .cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    mptable::setup(mem, s.vcpus)?;
    regs::setup_boot_tables(mem, s.kernel.mode)?;
    let map = memory_map(s.mem_size);
    match s.kernel.mode {
        EntryMode::Pvh => write_pvh_start_info(mem, &map, s.initrd),
        EntryMode::LinuxLongMode => {
            write_zero_page(mem, s.kernel.setup_header, &map, s.initrd, cmdline_len)
        }
    }
}

fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    map: &[MemoryMapEntry],
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::MemoryMapTooLarge(map.len()));
    }
    let mut info = start_info::hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(map.len())
            .map_err(|_| BootError::MemoryMapTooLarge(map.len()))?,
        ..Default::default()
    };
    if let Some(rd) = initrd {
        let module = start_info::hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        };
        mem.write_obj(ModlistEntry(module), GuestAddress(PVH_MODLIST_START))
            .map_err(|_| BootError::Memory("PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    for (i, e) in map.iter().enumerate() {
        let entry = start_info::hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = GuestAddress(PVH_MEMMAP_START + (i * std::mem::size_of::<MemmapEntry>()) as u64);
        mem.write_obj(MemmapEntry(entry), at)
            .map_err(|_| BootError::Memory("PVH memory map"))?;
    }
    mem.write_obj(StartInfo(info), GuestAddress(PVH_INFO_START))
        .map_err(|_| BootError::Memory("PVH start info"))
}

fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    header: Option<setup_header>,
    map: &[MemoryMapEntry],
    initrd: Option<InitrdPlacement>,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let mut params = ZeroPage::default();
    if let Some(hdr) = header {
        params.0.hdr = hdr;
    }
    let hdr = &mut params.0.hdr;
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    let out_of_reach = |what| move |_| BootError::OutOfReach(what);
    hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).map_err(out_of_reach("command line"))?;
    hdr.cmdline_size = u32::try_from(cmdline_len).map_err(out_of_reach("command line"))?;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    if let Some(rd) = initrd {
        // Placed below the MMIO gap, so within 4 GiB.
        hdr.ramdisk_image = u32::try_from(rd.addr).map_err(out_of_reach("initrd"))?;
        hdr.ramdisk_size = u32::try_from(rd.size).map_err(out_of_reach("initrd"))?;
    }
    if map.len() > params.0.e820_table.len() {
        return Err(BootError::MemoryMapTooLarge(map.len()));
    }
    for (slot, e) in params.0.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.0.e820_entries =
        u8::try_from(map.len()).map_err(|_| BootError::MemoryMapTooLarge(map.len()))?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootError::Memory("zero page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initrd_area_ends_at_the_mmio_gap() {
        assert_eq!(low_ram_end(128 << 20), 128 << 20);
        assert_eq!(low_ram_end(8192 << 20), MMIO_GAP_START);
    }
}
