//! Ethernet, ARP, IPv4 and TCP headers: parsing what the guest sent (every length
//! checked) and writing what goes back.

use std::net::Ipv4Addr;
use thiserror::Error;

/// Ethernet header bytes.
pub const ETH_LEN: usize = 14;
/// IPv4 header bytes without options (all we send).
pub const IPV4_LEN: usize = 20;
/// TCP header bytes without options.
pub const TCP_LEN: usize = 20;
/// Headers of a TCP frame we send without options.
pub const FRAME_OVERHEAD: usize = ETH_LEN + IPV4_LEN + TCP_LEN;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Bytes of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// TCP FIN flag.
pub const FIN: u8 = 0x01;
/// TCP SYN flag.
pub const SYN: u8 = 0x02;
/// TCP RST flag.
pub const RST: u8 = 0x04;
/// TCP PSH flag.
pub const PSH: u8 = 0x08;
/// TCP ACK flag.
pub const ACK: u8 = 0x10;

/// Why a packet was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header (or its stated length) needs.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// IPv4 version is not 4 or the header length is below 20 bytes.
    #[error("bad IPv4 version or header length")]
    BadHeader,
    /// The IPv4 header checksum does not match.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// The TCP checksum does not match.
    #[error("bad TCP checksum")]
    BadTcpChecksum,
    /// A fragment (reassembly is not done).
    #[error("IPv4 fragment")]
    Fragment,
    /// The TCP data offset is below 20 bytes or past the segment.
    #[error("bad TCP data offset")]
    BadDataOffset,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// The Ethernet header's fields: destination, source and EtherType.
pub fn ethernet(frame: &[u8]) -> Option<([u8; 6], [u8; 6], u16)> {
    let dst = frame.get(0..6)?.try_into().ok()?;
    let src = frame.get(6..12)?.try_into().ok()?;
    Some((dst, src, be16(frame, 12)?))
}

/// An ARP request: who asks (MAC, IPv4) and for which IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target protocol address: the address asked about.
    pub tpa: Ipv4Addr,
}

/// An Ethernet/IPv4 ARP request in `pkt` (the Ethernet payload), or `None`.
pub fn arp_request(pkt: &[u8]) -> Option<ArpRequest> {
    let fixed = pkt.get(..ARP_LEN)?;
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, oper 1 (request).
    if fixed[..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return None;
    }
    Some(ArpRequest {
        sha: fixed[8..14].try_into().ok()?,
        spa: ip_at(fixed, 14)?,
        tpa: ip_at(fixed, 24)?,
    })
}

fn ip_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    be32(b, at).map(Ipv4Addr::from)
}

/// The destination address of an IPv4 packet, read before anything else is checked.
pub fn ipv4_destination(pkt: &[u8]) -> Option<Ipv4Addr> {
    ip_at(pkt, 16)
}

/// A checked IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// The payload, up to the stated total length (Ethernet padding dropped).
    pub payload: &'a [u8],
}

/// Checks an IPv4 packet's version, lengths, checksum and that it is not a fragment.
pub fn ipv4(pkt: &[u8]) -> Result<Ipv4<'_>, WireError> {
    let first = *pkt.first().ok_or(WireError::Truncated("IPv4 header"))?;
    let ihl = usize::from(first & 0xf) * 4;
    if first >> 4 != 4 || ihl < IPV4_LEN {
        return Err(WireError::BadHeader);
    }
    let header = pkt.get(..ihl).ok_or(WireError::Truncated("IPv4 header"))?;
    let total = usize::from(be16(header, 2).ok_or(WireError::Truncated("IPv4 header"))?);
    if total < ihl {
        return Err(WireError::BadHeader);
    }
    let packet = pkt
        .get(..total)
        .ok_or(WireError::Truncated("IPv4 packet"))?;
    if checksum(&[header]) != 0 {
        return Err(WireError::BadIpChecksum);
    }
    let frag = be16(header, 6).ok_or(WireError::Truncated("IPv4 header"))?;
    if frag & 0x3fff != 0 {
        return Err(WireError::Fragment);
    }
    Ok(Ipv4 {
        src: ip_at(header, 12).ok_or(WireError::Truncated("IPv4 header"))?,
        dst: ip_at(header, 16).ok_or(WireError::Truncated("IPv4 header"))?,
        proto: header[9],
        payload: &packet[ihl..],
    })
}

/// A checked TCP segment: its header fields and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    /// The header (the window as advertised: no scaling is negotiated).
    pub header: TcpHeader,
    /// The data.
    pub payload: &'a [u8],
}

impl TcpSegment<'_> {
    /// Whether all of `flags` are set.
    pub fn has(&self, flags: u8) -> bool {
        self.header.flags & flags == flags
    }

    /// Sequence space the segment takes: data plus one each for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        let n = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        n.wrapping_add(u32::from(self.has(SYN)))
            .wrapping_add(u32::from(self.has(FIN)))
    }
}

/// Checks a TCP segment (checksum over the pseudo header with `src` and `dst`) and reads it.
pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> Result<TcpSegment<'_>, WireError> {
    if seg.len() < TCP_LEN {
        return Err(WireError::Truncated("TCP header"));
    }
    let offset = usize::from(seg[12] >> 4) * 4;
    if offset < TCP_LEN || offset > seg.len() {
        return Err(WireError::BadDataOffset);
    }
    let len = u16::try_from(seg.len()).map_err(|_| WireError::Truncated("TCP segment"))?;
    if checksum(&[&pseudo_header(src, dst, len), seg]) != 0 {
        return Err(WireError::BadTcpChecksum);
    }
    let truncated = || WireError::Truncated("TCP header");
    Ok(TcpSegment {
        header: TcpHeader {
            src_port: be16(seg, 0).ok_or_else(truncated)?,
            dst_port: be16(seg, 2).ok_or_else(truncated)?,
            seq: be32(seg, 4).ok_or_else(truncated)?,
            ack: be32(seg, 8).ok_or_else(truncated)?,
            flags: seg[13] & 0x3f,
            window: be16(seg, 14).ok_or_else(truncated)?,
            mss: mss_option(&seg[TCP_LEN..offset]),
        },
        payload: &seg[offset..],
    })
}

/// The MSS option among TCP options; malformed options end the walk.
fn mss_option(mut opts: &[u8]) -> Option<u16> {
    while let Some(&kind) = opts.first() {
        match kind {
            0 => return None,
            1 => opts = &opts[1..],
            _ => {
                let len = usize::from(*opts.get(1)?);
                if len < 2 || len > opts.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    return be16(opts, 2);
                }
                opts = &opts[len..];
            }
        }
    }
    None
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = PROTO_TCP;
    p[10..12].copy_from_slice(&tcp_len.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071) of the parts taken as one byte stream: 0 when a
/// header that carries its checksum is intact.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        let mut bytes = *part;
        if let (Some(hi), Some((&lo, rest))) = (odd, bytes.split_first()) {
            sum += u64::from(u16::from_be_bytes([hi, lo]));
            odd = None;
            bytes = rest;
        }
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            odd = Some(*last);
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Writes an Ethernet header into `buf[..14]`.
fn write_eth(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes the ARP reply to `req` (we are `mac` at `req.tpa`) into `buf`; its length, or
/// `None` if `buf` is too small.
pub fn write_arp_reply(buf: &mut [u8], mac: [u8; 6], req: &ArpRequest) -> Option<usize> {
    let out = buf.get_mut(..ETH_LEN + ARP_LEN)?;
    write_eth(out, req.sha, mac, ETHERTYPE_ARP);
    let a = &mut out[ETH_LEN..];
    a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&req.tpa.octets());
    a[18..24].copy_from_slice(&req.sha);
    a[24..28].copy_from_slice(&req.spa.octets());
    Some(ETH_LEN + ARP_LEN)
}

/// Addressing of a frame we send: Ethernet and IP ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// Our MAC.
    pub src_mac: [u8; 6],
    /// The guest's MAC.
    pub dst_mac: [u8; 6],
    /// Our address.
    pub src_ip: Ipv4Addr,
    /// The guest's address.
    pub dst_ip: Ipv4Addr,
}

/// The fields of a TCP header, received or to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (meaningful with [`ACK`]).
    pub ack: u32,
    /// Flag bits ([`FIN`], [`SYN`], [`RST`], [`PSH`], [`ACK`]).
    pub flags: u8,
    /// The window.
    pub window: u16,
    /// The MSS option (sent on our SYN-ACK).
    pub mss: Option<u16>,
}

/// Writes an Ethernet/IPv4/TCP frame with `payload` into `buf`; its length, or `None` if
/// `buf` is too small.
pub fn write_tcp_frame(
    buf: &mut [u8],
    ends: &Ends,
    ip_id: u16,
    h: &TcpHeader,
    payload: &[u8],
) -> Option<usize> {
    let opt_len = if h.mss.is_some() { 4 } else { 0 };
    let tcp_len = TCP_LEN + opt_len + payload.len();
    let ip_total = u16::try_from(IPV4_LEN + tcp_len).ok()?;
    let total = ETH_LEN + usize::from(ip_total);
    let out = buf.get_mut(..total)?;
    write_eth(out, ends.dst_mac, ends.src_mac, ETHERTYPE_IPV4);
    let (ip, seg) = out[ETH_LEN..].split_at_mut(IPV4_LEN);
    ip.fill(0);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6] = 0x40; // Don't fragment.
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&ends.src_ip.octets());
    ip[16..20].copy_from_slice(&ends.dst_ip.octets());
    let c = checksum(&[ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    seg[0..2].copy_from_slice(&h.src_port.to_be_bytes());
    seg[2..4].copy_from_slice(&h.dst_port.to_be_bytes());
    seg[4..8].copy_from_slice(&h.seq.to_be_bytes());
    seg[8..12].copy_from_slice(&h.ack.to_be_bytes());
    // The data offset in 32-bit words: 5, or 6 with the MSS option.
    seg[12] = if h.mss.is_some() { 6 << 4 } else { 5 << 4 };
    seg[13] = h.flags;
    seg[14..16].copy_from_slice(&h.window.to_be_bytes());
    seg[16..20].fill(0);
    if let Some(mss) = h.mss {
        seg[20..22].copy_from_slice(&[2, 4]);
        seg[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    seg[TCP_LEN + opt_len..].copy_from_slice(payload);
    let tcp_len16 = u16::try_from(tcp_len).ok()?;
    let c = checksum(&[&pseudo_header(ends.src_ip, ends.dst_ip, tcp_len16), seg]);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_rfc1071_and_odd_parts() {
        // RFC 1071's example bytes sum to 0xddf2, whose complement is 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), 0x220d);
        assert_eq!(checksum(&[&data[..3], &data[3..]]), 0x220d);
        assert_eq!(checksum(&[&data[..1], &data[1..5], &data[5..]]), 0x220d);
        assert_eq!(checksum(&[&[0xff]]), checksum(&[&[0xff, 0x00]]));
    }

    #[test]
    fn frame_round_trip() {
        let ends = Ends {
            src_mac: [1; 6],
            dst_mac: [2; 6],
            src_ip: Ipv4Addr::new(10, 0, 0, 1),
            dst_ip: Ipv4Addr::new(10, 0, 0, 2),
        };
        let h = TcpHeader {
            src_port: 80,
            dst_port: 5555,
            seq: 7,
            ack: 9,
            flags: SYN | ACK,
            window: 1000,
            mss: Some(1460),
        };
        let mut buf = [0u8; 128];
        let n = write_tcp_frame(&mut buf, &ends, 1, &h, b"abc").unwrap();
        assert_eq!(n, FRAME_OVERHEAD + 4 + 3);
        assert!(write_tcp_frame(&mut buf[..n - 1], &ends, 1, &h, b"abc").is_none());
        let (dst, src, et) = ethernet(&buf[..n]).unwrap();
        assert_eq!((dst, src, et), ([2; 6], [1; 6], ETHERTYPE_IPV4));
        let ip = ipv4(&buf[ETH_LEN..n]).unwrap();
        assert_eq!(
            (ip.src, ip.dst, ip.proto),
            (ends.src_ip, ends.dst_ip, PROTO_TCP)
        );
        let t = tcp(ip.src, ip.dst, ip.payload).unwrap();
        assert_eq!(
            (
                t.header.seq,
                t.header.ack,
                t.header.flags,
                t.header.window,
                t.header.mss
            ),
            (7, 9, SYN | ACK, 1000, Some(1460))
        );
        assert_eq!(t.payload, b"abc");
        assert_eq!(t.seq_len(), 4);
        // A flipped bit is caught.
        let mut bad = buf;
        bad[n - 1] ^= 1;
        let ip = ipv4(&bad[ETH_LEN..n]).unwrap();
        assert_eq!(
            tcp(ip.src, ip.dst, ip.payload),
            Err(WireError::BadTcpChecksum)
        );
        bad[ETH_LEN + 8] ^= 1;
        assert_eq!(ipv4(&bad[ETH_LEN..n]), Err(WireError::BadIpChecksum));
    }

    #[test]
    fn hostile_lengths() {
        for n in 0..40 {
            let junk = vec![0x45u8; n];
            let _ = ipv4(&junk);
            let _ = tcp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, &junk);
            let _ = arp_request(&junk);
            let _ = ethernet(&junk);
        }
        assert_eq!(
            ipv4(&[0x46, 0, 0, 20]),
            Err(WireError::Truncated("IPv4 header"))
        );
        assert_eq!(ipv4(&[0x44; 20]), Err(WireError::BadHeader));
        assert_eq!(mss_option(&[1, 1, 2, 4, 5, 180]), Some(1460));
        assert_eq!(mss_option(&[3, 0, 2, 4, 5, 180]), None);
        assert_eq!(mss_option(&[3, 9]), None);
        assert_eq!(mss_option(&[2]), None);
    }
}
