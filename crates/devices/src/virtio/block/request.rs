//! Turning a descriptor chain into a block request, trusting nothing in it.
//!
//! Layout (virtio 1.2, 5.2.6): a 16-byte header the device reads (type, reserved,
//! sector), the data buffers (device-readable for writes, device-writable for reads and
//! get-id), and a final device-writable status byte. The framing of these parts across
//! descriptors is not fixed, so the parser works on byte ranges, not on descriptor counts.

use super::disk::SECTOR_SIZE;
use crate::virtio::u8_of;
use crate::virtio::GuestMemoryMmap;
use thiserror::Error;
use virtio_bindings::virtio_blk;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Read sectors into the driver's buffers.
pub const T_IN: u32 = virtio_blk::VIRTIO_BLK_T_IN;
/// Write the driver's buffers to sectors.
pub const T_OUT: u32 = virtio_blk::VIRTIO_BLK_T_OUT;
/// Make completed writes durable.
pub const T_FLUSH: u32 = virtio_blk::VIRTIO_BLK_T_FLUSH;
/// Report the device id string.
pub const T_GET_ID: u32 = virtio_blk::VIRTIO_BLK_T_GET_ID;

/// Status: success.
pub const S_OK: u8 = u8_of(virtio_blk::VIRTIO_BLK_S_OK);
/// Status: the request failed.
pub const S_IOERR: u8 = u8_of(virtio_blk::VIRTIO_BLK_S_IOERR);
/// Status: the request type is not supported.
pub const S_UNSUPP: u8 = u8_of(virtio_blk::VIRTIO_BLK_S_UNSUPP);

/// Length of the device id a get-id request returns.
pub const ID_BYTES: usize = virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// The request header (type, ioprio, sector).
const HEADER_SIZE: usize = std::mem::size_of::<virtio_blk::virtio_blk_outhdr>();
const HEADER_LEN: u64 = HEADER_SIZE as u64;

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A read.
    In,
    /// A write.
    Out,
    /// A flush.
    Flush,
    /// The device id.
    GetId,
    /// A type this device does not implement (answered with UNSUPP).
    Unsupported(u32),
}

/// A guest buffer, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Start in guest physical memory.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub kind: RequestKind,
    /// First sector (reads and writes).
    pub sector: u64,
    /// The data buffers, in order.
    pub data: Vec<Segment>,
    /// Their total length.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a valid request. The status byte, when there is one, gets IOERR.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain does not end in a device-writable byte inside guest memory.
    #[error("the chain has no device-writable status byte in guest memory")]
    NoStatus,
    /// A device-readable descriptor comes after a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 device-readable bytes.
    #[error("the request header is shorter than 16 bytes")]
    ShortHeader,
    /// A buffer is not inside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// Buffers point the wrong way for the request type.
    #[error("{0} request with buffers in the wrong direction")]
    WrongDirection(&'static str),
    /// A read or write whose length is not whole sectors, or is empty.
    #[error("data length {0} is not a positive multiple of 512")]
    BadLength(u64),
    /// The sectors are past the end of the disk.
    #[error("sectors {sector}+{len} bytes are past the end of the disk ({capacity} bytes)")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        len: u64,
        /// Disk size in bytes.
        capacity: u64,
    },
}

/// Splits `descs` into device-readable and device-writable byte ranges, checking every
/// range lies in guest memory. Zero-length descriptors are dropped.
fn ranges(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
) -> Result<(Vec<Segment>, Vec<Segment>), RequestError> {
    let mut readable = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    for d in descs {
        if d.len() == 0 {
            continue;
        }
        let seg = Segment {
            addr: d.addr(),
            len: d.len(),
        };
        if mem.get_slice(seg.addr, seg.len as usize).is_err() {
            return Err(RequestError::OutOfMemory {
                addr: seg.addr.0,
                len: u64::from(seg.len),
            });
        }
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            return Err(RequestError::ReadableAfterWritable);
        }
    }
    Ok((readable, writable))
}

/// Where the status byte of this chain goes: the last byte of the last descriptor, which
/// must be device-writable and inside guest memory. `None` means the request cannot even
/// be failed; the caller must treat the queue as broken.
pub fn status_byte(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Option<GuestAddress> {
    let last = descs.iter().rev().find(|d| d.len() != 0)?;
    if !last.is_write_only() {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    mem.get_slice(addr, 1).ok()?;
    Some(addr)
}

/// Removes the first `n` bytes from `segs`, returning them as their own list.
fn take_front(segs: &mut Vec<Segment>, mut n: u64) -> Vec<Segment> {
    let mut taken = Vec::new();
    while n > 0 && !segs.is_empty() {
        let first = segs[0];
        if u64::from(first.len) <= n {
            n -= u64::from(first.len);
            taken.push(segs.remove(0));
        } else {
            // n < first.len <= u32::MAX, and the range was checked, so no overflow.
            let cut = u32::try_from(n).unwrap_or(u32::MAX).min(first.len);
            taken.push(Segment {
                addr: first.addr,
                len: cut,
            });
            segs[0] = Segment {
                addr: GuestAddress(first.addr.0 + u64::from(cut)),
                len: first.len - cut,
            };
            n = 0;
        }
    }
    taken
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Parses the chain `descs` (already walked by the queue, so bounded in count and total
/// length) into a request against a disk of `capacity` bytes.
pub fn parse(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    capacity: u64,
) -> Result<Request, RequestError> {
    let status = status_byte(mem, descs).ok_or(RequestError::NoStatus)?;
    let (mut readable, mut writable) = ranges(mem, descs)?;
    // The status byte is the last writable byte.
    if let Some(last) = writable.last_mut() {
        last.len -= 1;
        if last.len == 0 {
            writable.pop();
        }
    }

    let header_segs = take_front(&mut readable, HEADER_LEN);
    if total(&header_segs) < HEADER_LEN {
        return Err(RequestError::ShortHeader);
    }
    let mut header = [0u8; HEADER_SIZE];
    let mut at = 0usize;
    for s in &header_segs {
        let end = at + s.len as usize;
        mem.read_slice(&mut header[at..end], s.addr)
            .map_err(|_| RequestError::OutOfMemory {
                addr: s.addr.0,
                len: u64::from(s.len),
            })?;
        at = end;
    }
    let kind_raw = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    let kind = match kind_raw {
        T_IN => RequestKind::In,
        T_OUT => RequestKind::Out,
        T_FLUSH => RequestKind::Flush,
        T_GET_ID => RequestKind::GetId,
        other => RequestKind::Unsupported(other),
    };
    let data = match kind {
        RequestKind::In | RequestKind::GetId => {
            if !readable.is_empty() {
                return Err(RequestError::WrongDirection(name(kind)));
            }
            writable
        }
        RequestKind::Out => {
            if !writable.is_empty() {
                return Err(RequestError::WrongDirection(name(kind)));
            }
            readable
        }
        RequestKind::Flush | RequestKind::Unsupported(_) => Vec::new(),
    };
    let data_len = total(&data);
    if matches!(kind, RequestKind::In | RequestKind::Out) {
        if data_len == 0 || !data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::BadLength(data_len));
        }
        let in_range = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(data_len))
            .is_some_and(|end| end <= capacity);
        if !in_range {
            return Err(RequestError::OutOfRange {
                sector,
                len: data_len,
                capacity,
            });
        }
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

fn name(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::In => "read",
        RequestKind::Out => "write",
        RequestKind::Flush => "flush",
        RequestKind::GetId => "get-id",
        RequestKind::Unsupported(_) => "unsupported",
    }
}
