//! The set of connections behind one vsock device: the host listener and its clients
//! still sending their `CONNECT <port>` line, the connections, the RSTs owed to guest
//! packets that belong to no connection, and the order connections get receive buffers
//! in. Everything it holds is bounded: at most [`MAX_CONNS`] connections and clients, at
//! most [`MAX_RSTS`] RSTs (when full, the transmit queue is not drained until they are
//! delivered), at most [`super::conn::BUF_ALLOC`] bytes held per connection.

use super::conn::{Conn, ConnKey};
use super::packet::{self, op, Header, RxBuffer, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use super::sock::{would_block, Stream};
use super::VsockCounters;
use crate::virtio::event_loop::{DeviceEvents, EventLoopError};
use crate::virtio::GuestMemoryMmap;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

/// Connections plus listener clients that have not sent their line yet.
pub const MAX_CONNS: usize = 1024;
/// RSTs for unknown connections waiting for receive buffers.
pub const MAX_RSTS: usize = 1024;
/// The longest `CONNECT <port>\n` line, newline included.
const MAX_LINE: usize = 32;
/// The first host port given to a host-initiated connection.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// The queues or the event loop can no longer be used; the device needs a reset.
#[derive(Debug, Error)]
pub enum MuxerError {
    /// The rings themselves are unusable.
    #[error("virtqueue: {0}")]
    Ring(#[from] virtio_queue::Error),
    /// epoll failed.
    #[error("{0}")]
    Events(#[from] EventLoopError),
}

/// What survives a device reset: the host listener, and the timer (created before the
/// thread, whose seccomp filter has no `timerfd_create`).
pub struct Backend {
    /// Host clients connect here.
    pub listener: UnixListener,
    /// Fires at the earliest handshake deadline.
    pub timer: TimerFd,
}

/// The vsock thread's event sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The receive queue was notified.
    Rx,
    /// The transmit queue was notified.
    Tx,
    /// The event queue was notified.
    Ev,
    /// A host client is connecting.
    Listener,
    /// A handshake deadline passed.
    Timer,
    /// A listener client (before its line).
    Client(u64),
    /// A connection's host stream.
    Conn(ConnKey),
}

/// A listener client that has not finished its `CONNECT` line.
struct Client {
    stream: Stream,
    line: [u8; MAX_LINE],
    len: usize,
    deadline: Instant,
    registered: bool,
}

/// The connections and what is owed to the guest.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    handshake: Duration,
    pub(super) backend: Backend,
    pub(super) events: DeviceEvents<Source>,
    conns: HashMap<ConnKey, Conn>,
    clients: HashMap<u64, Client>,
    next_client: u64,
    next_port: u32,
    /// Connections with something to send, in turn.
    rxq: VecDeque<ConnKey>,
    /// RSTs for packets of no connection.
    rsts: VecDeque<Header>,
    /// The transmit queue stopped being drained because `rsts` is full.
    pub tx_blocked: bool,
    /// Sockets are out of epoll while the device is paused.
    quiet: bool,
    listener_registered: bool,
    timer_registered: bool,
    armed: Option<Instant>,
    scratch: Vec<u8>,
    counters: Arc<VsockCounters>,
}

fn count(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Keeps `fd`'s epoll registration as `want` says; `None`-registered and empty `want`
/// means out of epoll (a hang-up is reported even for an empty set, so parking is not
/// enough for a socket).
fn sync(
    events: &mut DeviceEvents<Source>,
    fd: &impl AsRawFd,
    token: Source,
    registered: &mut Option<EventSet>,
    want: EventSet,
) -> Result<(), EventLoopError> {
    match *registered {
        Some(_) if want.is_empty() => {
            events.remove(fd, token)?;
            *registered = None;
        }
        Some(now) if now != want => {
            events.modify(fd, token, want)?;
            *registered = Some(want);
        }
        None if !want.is_empty() => {
            events.add(fd, token, want)?;
            *registered = Some(want);
        }
        _ => {}
    }
    Ok(())
}

impl Muxer {
    /// A muxer for a guest with `guest_cid`, whose guest-initiated connections reach
    /// `<uds_path>_<port>`; host handshakes must finish within `handshake`.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        handshake: Duration,
        backend: Backend,
        events: DeviceEvents<Source>,
        counters: Arc<VsockCounters>,
    ) -> Self {
        Muxer {
            guest_cid,
            uds_path,
            handshake,
            backend,
            events,
            conns: HashMap::new(),
            clients: HashMap::new(),
            next_client: 0,
            next_port: FIRST_LOCAL_PORT,
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            tx_blocked: false,
            quiet: false,
            listener_registered: false,
            timer_registered: false,
            armed: None,
            scratch: vec![0; MAX_PAYLOAD],
            counters,
        }
    }

    /// Whether packets wait for receive buffers.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    /// Whether the transmit queue may be drained again after being blocked.
    pub fn tx_unblocked(&self) -> bool {
        self.tx_blocked && self.rsts.len() < MAX_RSTS
    }

    /// The pause edges: out of epoll while paused (nothing of the backend is touched),
    /// back in after.
    pub fn set_quiet(&mut self, quiet: bool) -> Result<(), EventLoopError> {
        if self.quiet != quiet {
            self.quiet = quiet;
            self.sync_all()?;
        }
        Ok(())
    }

    /// Brings every epoll registration in line with what each source wants.
    pub fn sync_all(&mut self) -> Result<(), EventLoopError> {
        let quiet = self.quiet;
        let on = |b: bool| {
            if b && !quiet {
                EventSet::IN
            } else {
                EventSet::empty()
            }
        };
        let mut reg = self.listener_registered.then_some(EventSet::IN);
        sync(
            &mut self.events,
            &self.backend.listener,
            Source::Listener,
            &mut reg,
            on(true),
        )?;
        self.listener_registered = reg.is_some();
        let mut reg = self.timer_registered.then_some(EventSet::IN);
        sync(
            &mut self.events,
            &self.backend.timer,
            Source::Timer,
            &mut reg,
            on(true),
        )?;
        self.timer_registered = reg.is_some();
        for (id, c) in &mut self.clients {
            let mut reg = c.registered.then_some(EventSet::IN);
            sync(
                &mut self.events,
                &c.stream,
                Source::Client(*id),
                &mut reg,
                on(true),
            )?;
            c.registered = reg.is_some();
        }
        for (key, c) in &mut self.conns {
            let want = if quiet {
                EventSet::empty()
            } else {
                c.interest()
            };
            if let Some(stream) = c.stream() {
                let mut reg = c.registered;
                sync(&mut self.events, stream, Source::Conn(*key), &mut reg, want)?;
                c.registered = reg;
            }
        }
        Ok(())
    }

    /// After anything touched connection `key`: closes what was reset, forgets what is
    /// over, and gives it its turn for a receive buffer if it has something to send.
    fn settle(&mut self, key: ConnKey) -> Result<(), EventLoopError> {
        let Some(c) = self.conns.get_mut(&key) else {
            return Ok(());
        };
        let killed = c.killed_with_stream();
        if c.is_gone() || killed.is_some() {
            if c.registered.is_some() {
                if let Some(stream) = c.stream() {
                    self.events.remove(stream, Source::Conn(key))?;
                }
                c.registered = None;
            }
            if killed == Some(true) {
                count(&self.counters.conns_killed, 1);
            }
            c.close_stream();
            if c.is_gone() {
                let queued = c.queued;
                self.conns.remove(&key);
                if queued {
                    // No stale turns: the queue holds live connections only, so it is
                    // bounded by their number however fast the guest churns them.
                    self.rxq.retain(|k| *k != key);
                }
                return Ok(());
            }
        }
        if !self.quiet {
            if let Some(stream) = c.stream() {
                let mut reg = c.registered;
                sync(
                    &mut self.events,
                    stream,
                    Source::Conn(key),
                    &mut reg,
                    c.interest(),
                )?;
                c.registered = reg;
            }
        }
        if c.has_pending() && !c.queued {
            c.queued = true;
            self.rxq.push_back(key);
        }
        Ok(())
    }

    /// Handles one ready source (not the queues').
    pub fn on_event(&mut self, source: Source, ready: EventSet) -> Result<(), EventLoopError> {
        match source {
            Source::Listener => self.accept(),
            Source::Timer => {
                // Non-blocking; a timer re-armed since it fired just reads nothing.
                let _ = self.backend.timer.wait();
                self.armed = None;
                self.expire(Instant::now())
            }
            Source::Client(id) => self.read_line(id),
            Source::Conn(key) => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.on_ready(ready);
                }
                self.settle(key)
            }
            Source::Rx | Source::Tx | Source::Ev => Ok(()),
        }
    }

    fn occupancy(&self) -> usize {
        self.conns.len() + self.clients.len()
    }

    fn accept(&mut self) -> Result<(), EventLoopError> {
        loop {
            let stream = match Stream::accept(&self.backend.listener) {
                Ok(s) => s,
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, say: the client waits in the backlog.
                    log::warn!("vsock: accept: {e}");
                    return Ok(());
                }
            };
            if self.occupancy() >= MAX_CONNS {
                log::debug!("vsock: connection limit reached; client closed");
                continue;
            }
            let id = self.next_client;
            self.next_client = self.next_client.wrapping_add(1);
            let mut client = Client {
                stream,
                line: [0; MAX_LINE],
                len: 0,
                deadline: Instant::now() + self.handshake,
                registered: false,
            };
            if !self.quiet {
                self.events
                    .add(&client.stream, Source::Client(id), EventSet::IN)?;
                client.registered = true;
            }
            self.clients.insert(id, client);
        }
    }

    fn drop_client(&mut self, id: u64) -> Result<Option<Client>, EventLoopError> {
        let Some(mut c) = self.clients.remove(&id) else {
            return Ok(None);
        };
        if c.registered {
            self.events.remove(&c.stream, Source::Client(id))?;
            c.registered = false;
        }
        Ok(Some(c))
    }

    /// Reads a client's line a byte at a time, so nothing after the newline (the
    /// client's first data) is taken from the stream.
    fn read_line(&mut self, id: u64) -> Result<(), EventLoopError> {
        let Some(c) = self.clients.get_mut(&id) else {
            return Ok(());
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match c.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) => {
                    c.line[c.len] = byte[0];
                    c.len += 1;
                    if byte[0] == b'\n' {
                        break parse_connect(&c.line[..c.len - 1]);
                    }
                    if c.len == MAX_LINE {
                        break None;
                    }
                }
                Err(e) if would_block(&e) => return Ok(()),
                Err(_) => break None,
            }
        };
        let Some(client) = self.drop_client(id)? else {
            return Ok(());
        };
        let Some(port) = port else {
            log::debug!("vsock: bad CONNECT line; client closed");
            return Ok(());
        };
        let Some(local_port) = self.alloc_port() else {
            return Ok(());
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let deadline = Instant::now() + self.handshake;
        self.conns.insert(
            key,
            Conn::new_local(key, self.guest_cid, client.stream, deadline),
        );
        count(&self.counters.conns_added, 1);
        self.settle(key)
    }

    /// A free host port from 2^30 up, wrapping within that range.
    fn alloc_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNS {
            let p = self.next_port;
            self.next_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == p) {
                return Some(p);
            }
        }
        None
    }

    /// Drops clients and unanswered REQUESTs whose deadline passed.
    fn expire(&mut self, now: Instant) -> Result<(), EventLoopError> {
        let late: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            log::debug!("vsock: client sent no CONNECT line in time; closed");
            self.drop_client(id)?;
        }
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(c) = self.conns.get_mut(&key) {
                log::debug!("vsock: {key:?} timed out (no answer to our request, or a closed guest socket whose bytes the host did not take)");
                c.kill(true);
            }
            self.settle(key)?;
        }
        Ok(())
    }

    /// Arms the timer for the earliest deadline.
    pub fn arm_timer(&mut self) {
        let earliest = self
            .clients
            .values()
            .map(|c| c.deadline)
            .chain(self.conns.values().filter_map(Conn::deadline))
            .min();
        if earliest == self.armed {
            return;
        }
        self.armed = earliest;
        let result = match earliest {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Zero would disarm it.
                self.backend
                    .timer
                    .reset(left.max(Duration::from_millis(1)), None)
            }
            None => self.backend.timer.clear(),
        };
        if let Err(e) = result {
            log::warn!("vsock: timer: {e}");
        }
    }

    fn rst_for(&mut self, hdr: &Header) {
        self.rsts.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: hdr.type_,
            op: op::RST,
            ..Header::default()
        });
    }

    /// Drains the transmit queue (until `rsts` is full). Returns whether to interrupt.
    pub fn process_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        tx: &mut Queue,
    ) -> Result<bool, MuxerError> {
        self.with_scratch(|m, scratch| m.drain_tx(mem, tx, scratch))
    }

    /// Runs `f` with the payload buffer lent out of `self`.
    fn with_scratch<R>(&mut self, f: impl FnOnce(&mut Self, &mut [u8]) -> R) -> R {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = f(self, &mut scratch);
        self.scratch = scratch;
        result
    }

    fn drain_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        tx: &mut Queue,
        scratch: &mut [u8],
    ) -> Result<bool, MuxerError> {
        let mut returned = false;
        self.tx_blocked = false;
        loop {
            tx.disable_notification(mem)?;
            loop {
                if self.rsts.len() >= MAX_RSTS {
                    // Back-pressure: the guest's packets wait in its ring until the RSTs
                    // owed so far are delivered. Resumed by the receive side.
                    self.tx_blocked = true;
                    return Ok(returned && tx.needs_notification(mem)?);
                }
                let Some(chain) = tx.iter(mem)?.next() else {
                    break;
                };
                let head = chain.head_index();
                match packet::read_packet(mem, chain, scratch) {
                    Ok(hdr) => {
                        let len = hdr.len as usize;
                        self.on_guest_packet(&hdr, &scratch[..len])?;
                    }
                    Err(e) => {
                        log::debug!("vsock: transmit chain {head}: {e}");
                        count(&self.counters.invalid_packets, 1);
                    }
                }
                tx.add_used(mem, head, 0)?;
                returned = true;
            }
            if !tx.enable_notification(mem)? {
                break;
            }
        }
        Ok(returned && tx.needs_notification(mem)?)
    }

    fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) -> Result<(), EventLoopError> {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            log::debug!("vsock: packet {} -> {} dropped", hdr.src_cid, hdr.dst_cid);
            count(&self.counters.invalid_packets, 1);
            return Ok(());
        }
        count(&self.counters.tx_packets, 1);
        if hdr.op == op::RW {
            count(&self.counters.tx_bytes, payload.len() as u64);
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                self.rst_for(hdr);
            }
            return Ok(());
        }
        let key = ConnKey::of_guest(hdr);
        if let Some(c) = self.conns.get_mut(&key) {
            c.on_packet(hdr, payload);
            return self.settle(key);
        }
        match hdr.op {
            op::REQUEST => self.guest_connect(hdr, key),
            op::RST => Ok(()),
            _ => {
                self.rst_for(hdr);
                Ok(())
            }
        }
    }

    /// The guest connects to host port P: `<uds_path>_P`.
    fn guest_connect(&mut self, hdr: &Header, key: ConnKey) -> Result<(), EventLoopError> {
        if self.occupancy() >= MAX_CONNS {
            log::debug!("vsock: connection limit reached; guest REQUEST refused");
            self.rst_for(hdr);
            return Ok(());
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        match Stream::connect(std::path::Path::new(&path)) {
            Ok(stream) => {
                self.conns
                    .insert(key, Conn::new_peer(key, self.guest_cid, stream, hdr));
                count(&self.counters.conns_added, 1);
                self.settle(key)
            }
            Err(e) => {
                log::debug!("vsock: connecting to {path:?}: {e}");
                self.rst_for(hdr);
                Ok(())
            }
        }
    }

    /// Fills receive buffers with what waits: RSTs first, then each connection's next
    /// packet in turn. Returns whether to interrupt.
    pub fn process_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        rx: &mut Queue,
    ) -> Result<bool, MuxerError> {
        self.with_scratch(|m, scratch| m.fill_rx(mem, rx, scratch))
    }

    fn fill_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        rx: &mut Queue,
        scratch: &mut [u8],
    ) -> Result<bool, MuxerError> {
        let mut returned = false;
        while self.has_rx() {
            let Some(chain) = rx.iter(mem)?.next() else {
                // Out of buffers: the guest's next one is notified.
                if rx.enable_notification(mem)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let buf = match RxBuffer::new(mem, chain) {
                Ok(b) => b,
                Err(e) => {
                    log::debug!("vsock: receive chain {head}: {e}");
                    count(&self.counters.invalid_packets, 1);
                    rx.add_used(mem, head, 0)?;
                    returned = true;
                    continue;
                }
            };
            let (hdr, n, key) = if let Some(h) = self.rsts.pop_front() {
                (h, 0, None)
            } else {
                let Some(key) = self.rxq.pop_front() else {
                    rx.set_next_avail(rx.next_avail().wrapping_sub(1));
                    break;
                };
                let Some(c) = self.conns.get_mut(&key) else {
                    rx.set_next_avail(rx.next_avail().wrapping_sub(1));
                    continue;
                };
                c.queued = false;
                let packet = c.next_packet(buf.payload_room(), scratch);
                let Some((hdr, n)) = packet else {
                    // Nothing after all: the buffer goes back for the next one.
                    rx.set_next_avail(rx.next_avail().wrapping_sub(1));
                    self.settle(key)?;
                    continue;
                };
                (hdr, n, Some(key))
            };
            let used = match buf.put(&hdr, &scratch[..n]) {
                Ok(used) => used,
                Err(e) => {
                    log::debug!("vsock: receive chain {head}: {e}");
                    count(&self.counters.invalid_packets, 1);
                    if let Some(c) = key.and_then(|k| self.conns.get_mut(&k)) {
                        // The stream's bytes were lost with the packet.
                        c.kill(true);
                    }
                    0
                }
            };
            rx.add_used(mem, head, used)?;
            returned = true;
            if used > 0 {
                count(&self.counters.rx_packets, 1);
                if hdr.op == op::RW {
                    count(&self.counters.rx_bytes, n as u64);
                }
                if hdr.op == op::RST {
                    count(&self.counters.rst_sent, 1);
                }
            }
            if let Some(key) = key {
                self.settle(key)?;
            }
        }
        Ok(returned && rx.needs_notification(mem)?)
    }
}

/// The port of a `CONNECT <port>` line (without its newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"connect 52",
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"CONNECT 5 2",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
