//! One vsock stream connection between a guest socket and a host Unix stream: its state,
//! the credit accounting in both directions (virtio 1.2, 5.10.6.3) and the bytes it holds
//! for a host stream that is slow to take them. The muxer owns the connections, their
//! place in the receive queue and their epoll registration; a connection only says what
//! it wants (to send a packet, to be polled) and does its stream I/O.

use super::packet::{op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::sock::{would_block, Stream};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::EventSet;

/// The receive buffer we advertise per connection: the most guest data ember ever holds
/// for one host stream that does not read.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Forwarded bytes after which the guest is told of the space freed, unasked: a quarter
/// of the buffer, so a sender waiting on credit never waits for long.
const CREDIT_UPDATE_AFTER: u32 = BUF_ALLOC / 4;
/// How long a connection whose guest socket is closed may wait for the host to take the
/// bytes still held for it (Firecracker's bound too); then it is reset, the bytes lost.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// A connection's identity: the host-side port and the guest-side port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Host-side port (ours: the destination of the guest's packets).
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
}

impl ConnKey {
    /// The connection a guest packet belongs to.
    pub fn of_guest(hdr: &Header) -> Self {
        ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A host client asked to connect; the guest has not answered the REQUEST yet.
    LocalInit { deadline: Instant },
    /// Data may flow.
    Established,
    /// Reset by us: the host stream is closed and an RST waits to be sent.
    Killed,
}

// What waits to be sent to the guest (bit set).
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_RST: u8 = 4;
const P_CREDIT: u8 = 8;
const P_SHUTDOWN: u8 = 16;

/// One connection.
#[derive(Debug)]
pub struct Conn {
    key: ConnKey,
    guest_cid: u64,
    stream: Option<Stream>,
    state: State,
    pending: u8,
    /// The host stream has data (epoll said so): read it when credit and a receive
    /// buffer allow. While set the stream is not polled for input.
    rx_ready: bool,
    /// In the muxer's receive queue.
    pub queued: bool,
    /// What epoll watches the stream for now (`None`: not registered); the muxer's.
    pub registered: Option<EventSet>,
    /// Set when the connection is over and must be forgotten (the guest reset it, or our
    /// RST was sent).
    gone: bool,
    /// Killed because something went wrong (not the guest's orderly close).
    abnormal: bool,
    // Credit (wrapping counters, as on the wire).
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    /// Guest payload bytes written to the host stream.
    fwd_cnt: u32,
    /// `fwd_cnt` as the guest last saw it.
    fwd_cnt_sent: u32,
    /// Bytes for the host stream that it could not take yet.
    buf: VecDeque<u8>,
    /// Of `buf`, the first bytes that are our `OK <port>\n`, not guest data (no credit).
    greeting_left: usize,
    peer_shut_rcv: bool,
    peer_shut_send: bool,
    /// The guest closed its socket with bytes still held for the host: the reset comes
    /// when they are out, or at this time.
    drain_by: Option<Instant>,
    host_eof: bool,
    write_shut: bool,
}

impl Conn {
    fn new(key: ConnKey, guest_cid: u64, stream: Stream, state: State, pending: u8) -> Self {
        Conn {
            key,
            guest_cid,
            stream: Some(stream),
            state,
            pending,
            rx_ready: false,
            queued: false,
            registered: None,
            gone: false,
            abnormal: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            buf: VecDeque::new(),
            greeting_left: 0,
            peer_shut_rcv: false,
            peer_shut_send: false,
            drain_by: None,
            host_eof: false,
            write_shut: false,
        }
    }

    /// A host client's connection: a REQUEST to send, answered before `deadline`.
    pub fn new_local(key: ConnKey, guest_cid: u64, stream: Stream, deadline: Instant) -> Self {
        Conn::new(
            key,
            guest_cid,
            stream,
            State::LocalInit { deadline },
            P_REQUEST,
        )
    }

    /// The guest's connection, `req` its REQUEST, connected to a host listener: a
    /// RESPONSE to send.
    pub fn new_peer(key: ConnKey, guest_cid: u64, stream: Stream, req: &Header) -> Self {
        let mut c = Conn::new(key, guest_cid, stream, State::Established, P_RESPONSE);
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        c
    }

    /// The host stream, while it is open.
    pub fn stream(&self) -> Option<&Stream> {
        self.stream.as_ref()
    }

    /// Closes the host stream (after the muxer took it out of epoll).
    pub fn close_stream(&mut self) {
        self.stream = None;
    }

    /// Whether the connection must be forgotten now.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Whether it was reset by us and its stream still waits to be closed; with whether
    /// the reset was for an error.
    pub fn killed_with_stream(&self) -> Option<bool> {
        (self.state == State::Killed && self.stream.is_some()).then_some(self.abnormal)
    }

    /// When an unanswered REQUEST gives up.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::LocalInit { deadline } => Some(deadline),
            State::Established => self.drain_by,
            State::Killed => None,
        }
    }

    /// Resets the connection: the host stream is to be closed and an RST sent.
    /// `abnormal`: for an error, not the guest's orderly close.
    pub fn kill(&mut self, abnormal: bool) {
        if self.state != State::Killed {
            self.state = State::Killed;
            self.abnormal = abnormal;
            self.pending = P_RST;
            self.rx_ready = false;
            self.buf.clear();
        }
    }

    /// Whether the muxer should give this connection a receive buffer.
    pub fn has_pending(&self) -> bool {
        self.pending != 0 || (self.can_read() && self.peer_credit() > 0)
    }

    /// What the host stream must be polled for.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state != State::Established || self.stream.is_none() {
            return set;
        }
        if !self.rx_ready && !self.host_eof && !self.peer_shut_rcv {
            set |= EventSet::IN;
        }
        if !self.buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// The stream reported `ready`.
    pub fn on_ready(&mut self, ready: EventSet) {
        if ready.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            // A hang-up or error surfaces as end of stream or an error from the read.
            self.rx_ready = true;
        }
        if ready.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.flush();
        }
    }

    fn can_read(&self) -> bool {
        self.state == State::Established
            && self.rx_ready
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.pending & P_RESPONSE == 0
    }

    /// How many bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest data held for the host stream (what counts against our credit).
    fn buffered(&self) -> usize {
        self.buf.len() - self.greeting_left
    }

    /// A packet from the guest for this connection; `payload` is its data.
    pub fn on_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.op == op::RST {
            // The guest's socket is gone: nothing to answer.
            self.gone = true;
            return;
        }
        if self.state == State::Killed {
            // Our RST is on its way.
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        match (self.state, hdr.op) {
            (State::LocalInit { .. }, op::RESPONSE) => {
                self.state = State::Established;
                let greeting = format!("OK {}\n", self.key.local_port);
                self.write_host(greeting.as_bytes(), true);
            }
            (State::Established, op::RW) => {
                if self.peer_shut_send || self.write_shut {
                    // Data after the guest said it sends no more: dropped.
                    return;
                }
                if self.buffered() + payload.len() > BUF_ALLOC as usize {
                    log::debug!("vsock: {:?} overran its credit", self.key);
                    self.kill(true);
                    return;
                }
                self.write_host(payload, false);
            }
            (State::Established, op::CREDIT_UPDATE) => {}
            (State::Established, op::CREDIT_REQUEST) => self.pending |= P_CREDIT,
            (State::Established, op::SHUTDOWN) => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                // Both flags: the guest closed its socket. What it sent before still goes
                // to the host, as TCP's data before a FIN does; the reset follows once the
                // held bytes are out (`maybe_shut_write`). A guest that will not wait
                // resets the connection itself (Linux does after 8 s); we wait
                // CLOSE_DRAIN at most.
                self.flush();
                if self.peer_shut_rcv && self.peer_shut_send && self.state == State::Established {
                    self.drain_by
                        .get_or_insert_with(|| Instant::now() + CLOSE_DRAIN);
                }
            }
            _ => {
                log::debug!("vsock: {:?}: unexpected op {}", self.key, hdr.op);
                self.kill(true);
            }
        }
    }

    /// Writes to the host stream what it takes, holds the rest.
    fn write_host(&mut self, data: &[u8], greeting: bool) {
        let mut rest = data;
        if self.buf.is_empty() {
            let Some(stream) = &self.stream else { return };
            match stream.write(data) {
                Ok(n) => {
                    rest = &data[n..];
                    if !greeting {
                        self.forwarded(n);
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => {
                    log::debug!("vsock: {:?}: host write: {e}", self.key);
                    self.kill(true);
                    return;
                }
            }
        }
        self.buf.extend(rest);
        if greeting {
            self.greeting_left += rest.len();
        }
        self.maybe_shut_write();
    }

    /// Writes held bytes while the host stream takes them.
    fn flush(&mut self) {
        while !self.buf.is_empty() {
            let Some(stream) = &self.stream else { return };
            let (front, _) = self.buf.as_slices();
            match stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.buf.drain(..n);
                    let g = n.min(self.greeting_left);
                    self.greeting_left -= g;
                    self.forwarded(n - g);
                }
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    log::debug!("vsock: {:?}: host write: {e}", self.key);
                    self.kill(true);
                    return;
                }
            }
        }
        self.maybe_shut_write();
    }

    /// The guest shut its sending side and all its data is out: the host reads EOF.
    fn maybe_shut_write(&mut self) {
        if self.peer_shut_send && self.buf.is_empty() && !self.write_shut {
            self.write_shut = true;
            if let Some(Err(e)) = self.stream.as_ref().map(Stream::shutdown_write) {
                log::debug!("vsock: {:?}: shutdown: {e}", self.key);
                self.kill(true);
                return;
            }
        }
        if self.write_shut && self.peer_shut_rcv && self.state == State::Established {
            // The guest closed its socket and everything it sent is out: reset.
            self.kill(false);
        }
    }

    fn forwarded(&mut self, n: usize) {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "fwd_cnt counts modulo 2^32, as on the wire"
        )]
        let n = n as u32;
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_AFTER {
            self.pending |= P_CREDIT;
        }
    }

    /// A header from us to the guest; it carries our credit, so no update is owed after.
    fn header(&mut self, op: u16) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !P_CREDIT;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, in a receive buffer with `room` payload bytes; a
    /// data packet's payload is read into `scratch`. Returns the header and the payload
    /// length, or `None` if there is nothing to send after all.
    pub fn next_packet(&mut self, room: usize, scratch: &mut [u8]) -> Option<(Header, usize)> {
        if self.state == State::Killed {
            if self.pending & P_RST != 0 {
                self.pending = 0;
                self.gone = true;
                return Some((self.header(op::RST), 0));
            }
            return None;
        }
        if self.pending & P_REQUEST != 0 {
            self.pending &= !P_REQUEST;
            return Some((self.header(op::REQUEST), 0));
        }
        if self.pending & P_RESPONSE != 0 {
            self.pending &= !P_RESPONSE;
            return Some((self.header(op::RESPONSE), 0));
        }
        if self.can_read() {
            let credit = usize::try_from(self.peer_credit()).unwrap_or(usize::MAX);
            let want = credit.min(room).min(scratch.len());
            if want > 0 {
                if let Some(packet) = self.read_host(&mut scratch[..want]) {
                    return Some(packet);
                }
            }
        }
        if self.pending & P_SHUTDOWN != 0 {
            self.pending &= !P_SHUTDOWN;
            let mut h = self.header(op::SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            return Some((h, 0));
        }
        if self.pending & P_CREDIT != 0 {
            return Some((self.header(op::CREDIT_UPDATE), 0));
        }
        None
    }

    /// Reads host data for the guest into `buf`: a data packet, an RST for a failed
    /// stream, or nothing (the stream had no data after all, or ended: then a SHUTDOWN
    /// waits).
    fn read_host(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let stream = self.stream.as_ref()?;
        match stream.read(buf) {
            Ok(0) => {
                // The host is done sending; data from the guest still flows to it.
                self.host_eof = true;
                self.rx_ready = false;
                self.pending |= P_SHUTDOWN;
                None
            }
            Ok(n) => {
                if n < buf.len() {
                    // Drained for now: poll the stream again.
                    self.rx_ready = false;
                }
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "at most a packet's payload, 64 KiB"
                )]
                let n32 = n as u32;
                self.tx_cnt = self.tx_cnt.wrapping_add(n32);
                Some((self.header(op::RW), n))
            }
            Err(e) if would_block(&e) => {
                self.rx_ready = false;
                None
            }
            Err(e) => {
                log::debug!("vsock: {:?}: host read: {e}", self.key);
                self.kill(true);
                self.pending = 0;
                self.gone = true;
                Some((self.header(op::RST), 0))
            }
        }
    }
}
