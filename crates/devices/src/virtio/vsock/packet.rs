//! The vsock packet header (virtio 1.2, 5.10.6) and how packets are read from transmit
//! chains and written into receive chains. A chain is a byte stream across its
//! descriptors: Linux 6.1 puts the header and the data in separate descriptors, newer
//! kernels put both in one, and nothing here depends on either layout.

use crate::virtio::GuestMemoryMmap;
use std::io::{Read, Write};
use thiserror::Error;
use virtio_queue::DescriptorChain;

/// Size of the header on the wire.
pub const HDR_LEN: usize = 44;
/// The largest payload of one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a guest
/// packet claiming more is malformed.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// The host's context id.
pub const HOST_CID: u64 = 2;

/// Socket type: stream, the only one served.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// One or both directions are finished.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's buffer space changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Why a guest chain is not a packet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    /// A buffer is outside guest memory, or the chain is framed wrongly.
    #[error("descriptor chain is unusable")]
    BadChain,
    /// Fewer readable (or writable) bytes than a header.
    #[error("chain of {0} bytes is shorter than a header")]
    Short(usize),
    /// The header's `len` is more than the chain carries, or more than a packet may.
    #[error("payload of {len} bytes in a chain with {room} bytes after the header")]
    BadLen {
        /// What the header says.
        len: u32,
        /// What the chain holds.
        room: usize,
    },
}

/// A packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (SHUTDOWN's).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the wire form.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// The wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A transmit chain's packet: its header, and its payload copied into `payload`
/// (`header.len` bytes of it).
pub fn read_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    payload: &mut [u8],
) -> Result<Header, PacketError> {
    // The reader checks every readable buffer against guest memory (and the sum of their
    // lengths for overflow) before anything is copied.
    let mut r = chain.reader(mem).map_err(|_| PacketError::BadChain)?;
    let avail = r.available_bytes();
    if avail < HDR_LEN {
        return Err(PacketError::Short(avail));
    }
    let mut raw = [0u8; HDR_LEN];
    r.read_exact(&mut raw).map_err(|_| PacketError::BadChain)?;
    let hdr = Header::from_bytes(&raw);
    let room = avail - HDR_LEN;
    let len = usize::try_from(hdr.len).unwrap_or(usize::MAX);
    if len > room || len > MAX_PAYLOAD || len > payload.len() {
        return Err(PacketError::BadLen { len: hdr.len, room });
    }
    r.read_exact(&mut payload[..len])
        .map_err(|_| PacketError::BadChain)?;
    Ok(hdr)
}

/// A receive chain's writable bytes, checked to lie in guest memory, to put one packet in.
pub struct RxBuffer<'a> {
    w: virtio_queue::Writer<'a, vm_memory::bitmap::MS<'a, GuestMemoryMmap>>,
}

impl<'a> RxBuffer<'a> {
    /// The chain's writable space; refused if it cannot take a header.
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: DescriptorChain<&'a GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let w = chain.writer(mem).map_err(|_| PacketError::BadChain)?;
        let room = w.available_bytes();
        if room < HDR_LEN {
            return Err(PacketError::Short(room));
        }
        Ok(RxBuffer { w })
    }

    /// How many payload bytes fit after the header (at most [`MAX_PAYLOAD`]).
    pub fn payload_room(&self) -> usize {
        (self.w.available_bytes() - HDR_LEN).min(MAX_PAYLOAD)
    }

    /// Writes `hdr` (its `len` set from `payload`) and `payload`; returns the used length.
    /// `payload` must fit ([`RxBuffer::payload_room`]).
    pub fn put(mut self, hdr: &Header, payload: &[u8]) -> Result<u32, PacketError> {
        if payload.len() > self.payload_room() {
            return Err(PacketError::BadChain);
        }
        let len = u32::try_from(payload.len()).map_err(|_| PacketError::BadChain)?;
        let hdr = Header { len, ..*hdr };
        // The writer marks what it writes dirty in guest memory's bitmap (snapshots).
        self.w
            .write_all(&hdr.to_bytes())
            .and_then(|()| self.w.write_all(payload))
            .map_err(|_| PacketError::BadChain)?;
        u32::try_from(self.w.bytes_written()).map_err(|_| PacketError::BadChain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_little_endian() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x0102_0304,
            dst_port: 52,
            len: 7,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 256 << 10,
            fwd_cnt: u32::MAX,
        };
        let b = h.to_bytes();
        assert_eq!(&b[16..20], &[4, 3, 2, 1]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(Header::from_bytes(&b), h);
    }
}
