//! [`MmdsStack`]: the metadata service's end of the guest's network, one IPv4 address
//! answering ARP and serving HTTP on TCP port 80.

use crate::http::{self, Request, Response, Version};
use crate::store::MmdsStore;
use crate::tcp::{Connection, Serve, Verdict, OUR_MSS};
use crate::token::{self, TokenAuthority};
use crate::wire::{self, ArpRequest, Ends, TcpHeader, TcpSegment, WireError, ACK, RST};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use thiserror::Error;

/// Firecracker's default MMDS address.
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The MAC the service answers as.
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The port served.
pub const HTTP_PORT: u16 = 80;
/// Connections held at most; a SYN beyond them is reset.
pub const MAX_CONNECTIONS: usize = 30;
/// ARP replies and resets waiting for the guest at most; more are dropped (the guest retries).
pub const MAX_CONTROL_FRAMES: usize = 32;

/// Why a frame for the service was dropped (logged at debug level).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DropReason {
    /// A header failed its checks.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Not TCP (UDP, ICMP, ...): nothing answers it.
    #[error("IP protocol {0} is not served")]
    Protocol(u8),
    /// No room for another ARP reply or reset.
    #[error("control frame queue full")]
    QueueFull,
}

/// A frame owed to the guest that belongs to no connection.
#[derive(Debug, Clone, Copy)]
enum Control {
    Arp(ArpRequest),
    Tcp(Ends, TcpHeader),
}

/// What connections answer requests with.
struct Responder {
    store: Arc<Mutex<MmdsStore>>,
    tokens: TokenAuthority,
    version: Version,
}

impl Serve for Responder {
    fn serve(&mut self, req: &Request, now: Instant) -> Response {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        http::respond(req, &store, &mut self.tokens, self.version, now)
    }
}

/// The service's network endpoint: feed it the guest's transmitted frames, and give the
/// guest what [`MmdsStack::next_frame`] produces.
pub struct MmdsStack {
    ip: Ipv4Addr,
    responder: Responder,
    conns: Vec<Connection>,
    cursor: usize,
    control: VecDeque<Control>,
    ip_id: u16,
}

impl std::fmt::Debug for MmdsStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdsStack")
            .field("ip", &self.ip)
            .field("version", &self.responder.version)
            .field("connections", &self.conns.len())
            .field("control", &self.control.len())
            .finish()
    }
}

impl MmdsStack {
    /// A stack answering at `ipv4` from `store`, authenticating as `version` says.
    pub fn new(ipv4: Ipv4Addr, store: Arc<Mutex<MmdsStore>>, version: Version) -> Self {
        Self {
            ip: ipv4,
            responder: Responder {
                store,
                tokens: TokenAuthority::default(),
                version,
            },
            conns: Vec::new(),
            cursor: 0,
            control: VecDeque::new(),
            ip_id: 0,
        }
    }

    /// The version in force.
    pub fn version(&self) -> Version {
        self.responder.version
    }

    /// Changes the version; later requests follow it. Issued tokens stay valid.
    pub fn set_version(&mut self, v: Version) {
        self.responder.version = v;
    }

    /// The address served.
    pub fn address(&self) -> Ipv4Addr {
        self.ip
    }

    /// Serves `a` from now on; connections to the old address are forgotten.
    pub fn set_address(&mut self, a: Ipv4Addr) {
        if a != self.ip {
            self.ip = a;
            self.conns.clear();
            self.control.clear();
        }
    }

    /// Connections held.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// An Ethernet frame the guest sent (no virtio-net header). `true`: it was for the
    /// service (consumed; the caller must not send it to the tap). `false`: not ours,
    /// pass it on.
    pub fn handle_guest_frame(&mut self, frame: &[u8], now: Instant) -> bool {
        let Some((_, src_mac, ethertype)) = wire::ethernet(frame) else {
            return false;
        };
        let payload = &frame[wire::ETH_LEN..];
        match ethertype {
            wire::ETHERTYPE_ARP => match wire::arp_request(payload) {
                Some(req) if req.tpa == self.ip => {
                    self.push_control(Control::Arp(req));
                    true
                }
                _ => false,
            },
            wire::ETHERTYPE_IPV4 => {
                if wire::ipv4_destination(payload) != Some(self.ip) {
                    return false;
                }
                if let Err(e) = self.handle_ipv4(src_mac, payload, now) {
                    log::debug!("mmds: dropped a frame: {e}");
                }
                true
            }
            _ => false,
        }
    }

    fn push_control(&mut self, c: Control) {
        if self.control.len() >= MAX_CONTROL_FRAMES {
            log::debug!("mmds: dropped a frame: {}", DropReason::QueueFull);
        } else {
            self.control.push_back(c);
        }
    }

    fn ends(&self, peer_mac: [u8; 6], peer_ip: Ipv4Addr) -> Ends {
        Ends {
            src_mac: MMDS_MAC,
            dst_mac: peer_mac,
            src_ip: self.ip,
            dst_ip: peer_ip,
        }
    }

    fn handle_ipv4(
        &mut self,
        src_mac: [u8; 6],
        pkt: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let ip = wire::ipv4(pkt)?;
        if ip.proto != wire::PROTO_TCP {
            return Err(DropReason::Protocol(ip.proto));
        }
        let seg = wire::tcp(ip.src, ip.dst, ip.payload)?;
        let found = self.conns.iter().position(|c| {
            c.peer_ip == ip.src
                && c.peer_port == seg.header.src_port
                && c.local_port == seg.header.dst_port
        });
        match found {
            Some(i) => {
                let verdict = self.conns[i].on_segment(&seg, now, &mut self.responder);
                self.apply(i, verdict);
            }
            None if seg.has(RST) => {}
            None if seg.header.dst_port == HTTP_PORT
                && seg.header.flags & (wire::SYN | ACK) == wire::SYN
                && self.conns.len() < MAX_CONNECTIONS =>
            {
                let conn = Connection::accept(src_mac, ip.src, &seg, initial_sequence(now), now);
                self.conns.push(conn);
            }
            None => {
                let ends = self.ends(src_mac, ip.src);
                self.push_control(Control::Tcp(ends, reset_for(&seg)));
            }
        }
        Ok(())
    }

    /// Carries out a connection's verdict; `i` is its index.
    fn apply(&mut self, i: usize, verdict: Verdict) {
        let last = match verdict {
            Verdict::Keep => return,
            Verdict::Remove(reason) => {
                log::debug!("mmds: connection ended: {reason}");
                self.conns[i].final_ack()
            }
            Verdict::Reset(reason) => {
                log::debug!("mmds: connection reset: {reason}");
                Some(self.conns[i].reset_header())
            }
        };
        let conn = self.conns.swap_remove(i);
        if let Some(h) = last {
            let ends = self.ends(conn.peer_mac, conn.peer_ip);
            self.push_control(Control::Tcp(ends, h));
        }
    }

    /// Whether [`MmdsStack::next_frame`] has a frame now.
    pub fn has_frames(&self) -> bool {
        !self.control.is_empty() || self.conns.iter().any(Connection::has_output)
    }

    /// The next frame for the guest, written into `buf` (no virtio-net header): its
    /// length, or `None`. A `buf` too small for the frame due loses a control frame (the
    /// guest retries) and shortens a data segment.
    pub fn next_frame(&mut self, buf: &mut [u8], now: Instant) -> Option<usize> {
        while let Some(c) = self.control.pop_front() {
            let n = match c {
                Control::Arp(req) => wire::write_arp_reply(buf, MMDS_MAC, &req),
                Control::Tcp(ends, h) => {
                    self.ip_id = self.ip_id.wrapping_add(1);
                    wire::write_tcp_frame(buf, &ends, self.ip_id, &h, &[])
                }
            };
            if n.is_some() {
                return n;
            }
        }
        // Room for data after the headers (a SYN-ACK's MSS option needs 4 bytes more: a
        // buffer without them loses it, and the retransmission timer sends it again).
        let room = buf
            .len()
            .checked_sub(wire::FRAME_OVERHEAD)?
            .min(usize::from(OUR_MSS));
        let count = self.conns.len();
        for k in 0..count {
            let i = (self.cursor + k) % count;
            let Some((h, range)) = self.conns[i].next_segment(now, room) else {
                continue;
            };
            self.cursor = (i + 1) % count;
            let conn = &self.conns[i];
            let ends = self.ends(conn.peer_mac, conn.peer_ip);
            let payload = conn.send_buffer().get(range).unwrap_or(&[]);
            self.ip_id = self.ip_id.wrapping_add(1);
            return wire::write_tcp_frame(buf, &ends, self.ip_id, &h, payload);
        }
        None
    }

    /// The earliest instant [`MmdsStack::tick`] should be called, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(Connection::deadline).min()
    }

    /// Runs the timers: retransmissions, idle and request timeouts.
    pub fn tick(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.conns.len() {
            let verdict = self.conns[i].tick(now);
            if verdict == Verdict::Keep {
                i += 1;
            } else {
                self.apply(i, verdict);
            }
        }
    }
}

/// The reset for a segment that has no connection (RFC 9293 3.10.7.1).
fn reset_for(seg: &TcpSegment<'_>) -> TcpHeader {
    let (seq, ack, flags) = if seg.has(ACK) {
        (seg.header.ack, 0, RST)
    } else {
        (0, seg.header.seq.wrapping_add(seg.seq_len()), RST | ACK)
    };
    TcpHeader {
        src_port: seg.header.dst_port,
        dst_port: seg.header.src_port,
        seq,
        ack,
        flags,
        window: 0,
        mss: None,
    }
}

/// A random initial sequence number (the clock's if the random source fails).
fn initial_sequence(now: Instant) -> u32 {
    let mut b = [0u8; 4];
    match token::fill_random(&mut b) {
        Ok(()) => u32::from_be_bytes(b),
        Err(_) => {
            let t = now.elapsed().subsec_nanos();
            t.wrapping_mul(2_654_435_761)
        }
    }
}
