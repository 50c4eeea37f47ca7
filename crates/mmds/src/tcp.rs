//! One passive-open TCP connection serving HTTP: sequence state, the request being
//! received, the response being sent, and its timers.
//!
//! Frames are not queued: [`Connection::next_segment`] makes the next one from the state
//! when the guest can take it, cutting data straight from the response buffer.

use crate::http::{self, Parsed, Request, Response};
use crate::wire::{TcpHeader, TcpSegment, ACK, FIN, PSH, RST, SYN};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The MSS we announce and the most data we put in one segment.
pub const OUR_MSS: u16 = 1460;
/// The peer's MSS when its SYN names none (RFC 9293).
const DEFAULT_PEER_MSS: u16 = 536;
/// Bytes of requests we hold at most (heads waiting to be answered); also our window.
pub const RECV_WINDOW: usize = 2 * http::HEAD_LIMIT;
/// The first retransmission timeout; each expiry doubles it.
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
/// Expiries of the retransmission timer in a row before the connection is reset.
pub const MAX_RETRIES: u32 = 5;
/// A connection the guest has not sent anything on for this long is reset.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request must be whole within this long of its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ended (for logs).
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum CloseReason {
    /// Both FINs were sent and acknowledged.
    #[error("closed")]
    Closed,
    /// The guest reset it.
    #[error("reset by the guest")]
    PeerReset,
    /// The guest's handshake ACK did not acknowledge our SYN.
    #[error("bad handshake acknowledgement")]
    BadHandshake,
    /// Our data went unacknowledged through every retransmission.
    #[error("retransmissions exhausted")]
    Retransmissions,
    /// Nothing from the guest for [`IDLE_TIMEOUT`].
    #[error("idle")]
    Idle,
    /// A request took longer than [`REQUEST_TIMEOUT`] to arrive.
    #[error("request timed out")]
    RequestTimeout,
}

/// What the connection's owner must do after an event.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Forget it silently.
    Remove(CloseReason),
    /// Send the guest [`Connection::reset_header`], then forget it.
    Reset(CloseReason),
}

/// Answers requests: the connection calls it for each request it frames.
pub trait Serve {
    /// The response to `req` at `now`.
    fn serve(&mut self, req: &Request, now: Instant) -> Response;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SynReceived,
    Established,
}

/// `a < b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    // Reinterpreting the distance as signed is how sequence numbers compare (RFC 1982).
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One connection from the guest to port 80.
#[derive(Debug)]
pub struct Connection {
    /// The guest's MAC.
    pub peer_mac: [u8; 6],
    /// The guest's address.
    pub peer_ip: Ipv4Addr,
    /// The guest's port.
    pub peer_port: u16,
    /// Our port.
    pub local_port: u16,
    state: State,
    iss: u32,
    irs: u32,
    snd_una: u32,
    snd_nxt: u32,
    snd_max: u32,
    /// The response being sent; `send[0]` is at sequence `send_seq`.
    send: Vec<u8>,
    send_seq: u32,
    fin_queued: bool,
    rcv_nxt: u32,
    peer_fin: bool,
    peer_wnd: u32,
    peer_mss: usize,
    /// Received request bytes not yet framed.
    recv: Vec<u8>,
    /// Body bytes still to be skipped.
    skip: u64,
    /// No more requests are read: a response closes, or a framing error.
    closing: bool,
    need_ack: bool,
    rto: Duration,
    rto_deadline: Option<Instant>,
    retries: u32,
    probe: bool,
    last_seen: Instant,
    request_started: Option<Instant>,
}

impl Connection {
    /// A connection for the guest's SYN `syn` (from `peer_*`), our initial sequence `iss`.
    pub fn accept(
        peer_mac: [u8; 6],
        peer_ip: Ipv4Addr,
        syn: &TcpSegment<'_>,
        iss: u32,
        now: Instant,
    ) -> Self {
        let mss = syn
            .header
            .mss
            .unwrap_or(DEFAULT_PEER_MSS)
            .clamp(64, OUR_MSS);
        Self {
            peer_mac,
            peer_ip,
            peer_port: syn.header.src_port,
            local_port: syn.header.dst_port,
            state: State::SynReceived,
            iss,
            irs: syn.header.seq,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            send: Vec::new(),
            send_seq: iss.wrapping_add(1),
            fin_queued: false,
            rcv_nxt: syn.header.seq.wrapping_add(1),
            peer_fin: false,
            peer_wnd: u32::from(syn.header.window),
            peer_mss: usize::from(mss),
            recv: Vec::new(),
            skip: 0,
            closing: false,
            need_ack: false,
            rto: INITIAL_RTO,
            rto_deadline: None,
            retries: 0,
            probe: false,
            last_seen: now,
            request_started: None,
        }
    }

    fn our_window(&self) -> usize {
        RECV_WINDOW.saturating_sub(self.recv.len())
    }

    fn data_end(&self) -> u32 {
        self.send_seq.wrapping_add(len32(self.send.len()))
    }

    /// Everything sent has been acknowledged and no response is waiting.
    fn send_idle(&self) -> bool {
        self.send.is_empty() && !self.fin_queued && self.snd_una == self.snd_max
    }

    /// Handles a segment of this connection.
    pub fn on_segment(
        &mut self,
        seg: &TcpSegment<'_>,
        now: Instant,
        serve: &mut dyn Serve,
    ) -> Verdict {
        if seg.has(RST) {
            if seg.header.seq == self.rcv_nxt {
                return Verdict::Remove(CloseReason::PeerReset);
            }
            // RFC 5961: a reset not exactly in sequence gets a challenge ACK.
            self.need_ack = true;
            return Verdict::Keep;
        }
        if seg.has(SYN) {
            if self.state == State::SynReceived && seg.header.seq == self.irs {
                // Our SYN-ACK was lost: send it again.
                self.snd_nxt = self.iss;
            } else {
                self.need_ack = true;
            }
            return Verdict::Keep;
        }
        if !seg.has(ACK) {
            return Verdict::Keep;
        }
        self.last_seen = now;
        if self.state == State::SynReceived {
            if seg.header.ack != self.iss.wrapping_add(1) {
                return Verdict::Reset(CloseReason::BadHandshake);
            }
            self.state = State::Established;
        }
        if seq_lt(self.snd_max, seg.header.ack) {
            // Acknowledges what we never sent.
            self.need_ack = true;
            return Verdict::Keep;
        }
        self.on_ack(seg, now);
        self.on_data(seg, now);
        self.process(now, serve);
        let fin_acked = self.fin_queued && self.snd_una == self.data_end().wrapping_add(1);
        if fin_acked && self.peer_fin {
            return Verdict::Remove(CloseReason::Closed);
        }
        self.update_timer(now);
        Verdict::Keep
    }

    fn on_ack(&mut self, seg: &TcpSegment<'_>, now: Instant) {
        let window = u32::from(seg.header.window);
        if seq_lt(self.snd_una, seg.header.ack) {
            self.snd_una = seg.header.ack;
            self.retries = 0;
            self.rto = INITIAL_RTO;
            self.rto_deadline = None;
            self.probe = false;
            if seq_lt(self.snd_nxt, self.snd_una) {
                self.snd_nxt = self.snd_una;
            }
            // The whole response acknowledged: drop it.
            if !self.fin_queued && seq_le(self.data_end(), self.snd_una) {
                self.send = Vec::new();
                self.send_seq = self.snd_una;
            }
        } else if window != self.peer_wnd {
            // A window update keeps a stalled sender alive.
            self.retries = 0;
        }
        self.peer_wnd = window;
        self.update_timer(now);
    }

    fn on_data(&mut self, seg: &TcpSegment<'_>, now: Instant) {
        let fin = seg.has(FIN);
        if seg.payload.is_empty() && !fin {
            return;
        }
        let mut data = seg.payload;
        let mut seq = seg.header.seq;
        if seq_lt(seq, self.rcv_nxt) {
            // A retransmission overlapping what we have: keep only the new part.
            let old = self.rcv_nxt.wrapping_sub(seq);
            let Some(rest) = usize::try_from(old).ok().and_then(|o| data.get(o..)) else {
                self.need_ack = true;
                return;
            };
            if rest.is_empty() && !fin {
                self.need_ack = true;
                return;
            }
            data = rest;
            seq = self.rcv_nxt;
        }
        self.need_ack = true;
        if seq != self.rcv_nxt || self.peer_fin {
            // Out of order (dropped; the guest retransmits) or past the guest's FIN.
            return;
        }
        let take = data.len().min(self.our_window());
        let taken = &data[..take];
        self.rcv_nxt = self.rcv_nxt.wrapping_add(len32(take));
        if !self.closing {
            let skipped = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(taken.len());
            self.skip -= skipped as u64;
            self.recv.extend_from_slice(&taken[skipped..]);
            if !taken.is_empty() && self.request_started.is_none() {
                self.request_started = Some(now);
            }
        }
        if fin && take == data.len() {
            self.peer_fin = true;
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        }
    }

    /// Frames and answers requests while nothing is being sent.
    fn process(&mut self, now: Instant, serve: &mut dyn Serve) {
        while !self.closing && self.send_idle() {
            let response = match http::parse_request(&self.recv) {
                Parsed::Incomplete => {
                    if self.peer_fin {
                        // The guest will send no more: finish.
                        self.closing = true;
                        self.fin_queued = true;
                    }
                    break;
                }
                Parsed::Invalid(e) => e.response(),
                Parsed::Complete { request, head_len } => {
                    let body_here = self.recv.len().saturating_sub(head_len);
                    let body_here =
                        body_here.min(usize::try_from(request.body_len).unwrap_or(usize::MAX));
                    self.recv.drain(..head_len + body_here);
                    self.skip = request.body_len - body_here as u64;
                    // The window grew: tell the guest.
                    self.need_ack = true;
                    serve.serve(&request, now)
                }
            };
            self.request_started = (!self.recv.is_empty() || self.skip > 0).then_some(now);
            if response.close {
                self.closing = true;
                self.fin_queued = true;
                self.recv = Vec::new();
            }
            self.send = response.into_bytes();
            self.send_seq = self.snd_una;
        }
    }

    fn data_pending(&self) -> bool {
        seq_lt(self.snd_nxt, self.data_end())
    }

    fn update_timer(&mut self, now: Instant) {
        let outstanding = self.snd_max != self.snd_una;
        let stalled = self.data_pending() && self.peer_wnd == 0;
        if !(outstanding || stalled) {
            self.rto_deadline = None;
        } else if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto);
        }
    }

    fn header(&self, seq: u32, flags: u8) -> TcpHeader {
        TcpHeader {
            src_port: self.local_port,
            dst_port: self.peer_port,
            seq,
            ack: self.rcv_nxt,
            flags,
            window: u16::try_from(self.our_window()).unwrap_or(u16::MAX),
            mss: None,
        }
    }

    /// The RST that ends this connection.
    pub fn reset_header(&self) -> TcpHeader {
        self.header(self.snd_nxt, RST | ACK)
    }

    /// The ACK still owed to the guest when the connection is forgotten (its FIN), if any.
    pub fn final_ack(&self) -> Option<TcpHeader> {
        self.need_ack.then(|| self.header(self.snd_nxt, ACK))
    }

    fn usable_window(&self) -> u32 {
        let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
        let usable = self.peer_wnd.saturating_sub(in_flight);
        if usable == 0 && self.probe && in_flight == 0 {
            1
        } else {
            usable
        }
    }

    /// Whether [`Connection::next_segment`] has something to send.
    pub fn has_output(&self) -> bool {
        match self.state {
            State::SynReceived => self.snd_nxt == self.iss,
            State::Established => {
                self.need_ack
                    || (self.data_pending() && self.usable_window() > 0)
                    || (self.fin_queued && self.snd_nxt == self.data_end())
            }
        }
    }

    /// The next segment to send, with at most `room` bytes of data: its header and the
    /// range of [`Connection::send_buffer`] it carries.
    pub fn next_segment(&mut self, now: Instant, room: usize) -> Option<(TcpHeader, Range<usize>)> {
        let out = self.pick_segment(room);
        if out.is_some() {
            self.update_timer(now);
        }
        out
    }

    fn pick_segment(&mut self, room: usize) -> Option<(TcpHeader, Range<usize>)> {
        if self.state == State::SynReceived {
            if self.snd_nxt != self.iss {
                return None;
            }
            self.advance(1);
            let mut h = self.header(self.iss, SYN | ACK);
            h.mss = Some(OUR_MSS);
            return Some((h, 0..0));
        }
        if self.data_pending() {
            let remaining = self.data_end().wrapping_sub(self.snd_nxt);
            let n = [
                self.usable_window(),
                len32(self.peer_mss),
                remaining,
                len32(room),
            ]
            .into_iter()
            .min()
            .unwrap_or(0);
            if n > 0 {
                let off = usize::try_from(self.snd_nxt.wrapping_sub(self.send_seq)).ok()?;
                let end = off + usize::try_from(n).ok()?;
                let flags = if n == remaining { ACK | PSH } else { ACK };
                let h = self.header(self.snd_nxt, flags);
                self.probe = false;
                self.advance(n);
                return Some((h, off..end));
            }
        }
        if self.fin_queued && self.snd_nxt == self.data_end() {
            let h = self.header(self.snd_nxt, FIN | ACK);
            self.advance(1);
            return Some((h, 0..0));
        }
        if self.need_ack {
            self.need_ack = false;
            return Some((self.header(self.snd_nxt, ACK), 0..0));
        }
        None
    }

    fn advance(&mut self, n: u32) {
        self.snd_nxt = self.snd_nxt.wrapping_add(n);
        if seq_lt(self.snd_max, self.snd_nxt) {
            self.snd_max = self.snd_nxt;
        }
        self.need_ack = false;
    }

    /// The response bytes segments are cut from.
    pub fn send_buffer(&self) -> &[u8] {
        &self.send
    }

    /// The earliest instant [`Connection::tick`] has something to do.
    pub fn deadline(&self) -> Instant {
        let mut d = self.last_seen + IDLE_TIMEOUT;
        if let Some(r) = self.rto_deadline {
            d = d.min(r);
        }
        if let (Some(t), true) = (self.request_started, self.send_idle()) {
            d = d.min(t + REQUEST_TIMEOUT);
        }
        d
    }

    /// Runs the timers.
    pub fn tick(&mut self, now: Instant) -> Verdict {
        if now >= self.last_seen + IDLE_TIMEOUT {
            return Verdict::Reset(CloseReason::Idle);
        }
        if let (Some(t), true) = (self.request_started, self.send_idle()) {
            if now >= t + REQUEST_TIMEOUT {
                return Verdict::Reset(CloseReason::RequestTimeout);
            }
        }
        if self.rto_deadline.is_some_and(|d| now >= d) {
            self.retries += 1;
            if self.retries > MAX_RETRIES {
                return Verdict::Reset(CloseReason::Retransmissions);
            }
            self.rto = self.rto.saturating_mul(2);
            self.snd_nxt = self.snd_una;
            self.probe = true;
            self.rto_deadline = Some(now + self.rto);
        }
        Verdict::Keep
    }
}
