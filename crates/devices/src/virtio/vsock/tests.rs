//! The device driven through real queues in guest memory by a driver model (Linux 6.1's
//! framing: receive buffers of a 44-byte header descriptor and a 4 KiB data descriptor,
//! transmit chains of header then data), against real Unix sockets on the host side.

use super::conn::BUF_ALLOC;
use super::muxer::MAX_RSTS;
use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::Vsock;
use crate::virtio::test_ring::{leak_memory, Ring, NEXT, WRITE};
use crate::virtio::{Activation, GuestMemoryMmap, Interrupt, VirtioDevice};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 16 << 20;
const QSIZE: u16 = 256;
const CID: u64 = 3;
const RX_BUFS: u16 = 64;
const RX_DATA: u32 = 4096;
const RX_AT: u64 = 0x10_0000;
const TX_SLOTS: u16 = 64;
const TX_AT: u64 = 0x30_0000;
const TX_SLOT: u64 = 0x1_1000;
const EV_BUF: u64 = 0xf0_0000;
const GUEST_BUF: u32 = 256 << 10;

/// A fresh socket path in its own directory.
fn uds_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ember-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("v.sock")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn evt() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

/// The driver's side.
struct Guest {
    arc: Arc<GuestMemoryMmap>,
    mem: &'static GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    ev: Ring,
    evts: [EventFd; 3],
    interrupt: Arc<Interrupt>,
    rx_seen: u16,
    tx_posted: u16,
    /// Payload bytes this guest consumed (its fwd_cnt).
    fwd: u32,
    /// The device's credit as last seen: buf_alloc, fwd_cnt; and what we sent.
    peer: (u32, u32),
    sent: u32,
}

impl Guest {
    fn activation(&self) -> Activation {
        Activation {
            mem: self.arc.clone(),
            queues: vec![self.rx.queue(), self.tx.queue(), self.ev.queue()],
            queue_evts: self.evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: self.interrupt.clone(),
            acked_features: 0,
        }
    }

    fn rx_hdr_at(k: u16) -> u64 {
        RX_AT + u64::from(k) * 0x2000
    }

    /// Posts receive chain `k` (header descriptor, then a data descriptor).
    fn post_rx(&self, k: u16) {
        let at = Self::rx_hdr_at(k);
        self.rx
            .desc(2 * k, at, HDR_LEN as u32, WRITE | NEXT, 2 * k + 1);
        self.rx.desc(2 * k + 1, at + 0x100, RX_DATA, WRITE, 0);
        self.rx.publish(2 * k);
    }

    fn post_all_rx(&self) {
        for k in 0..RX_BUFS {
            self.post_rx(k);
        }
        self.evts[0].write(1).unwrap();
    }

    /// The next packet the device delivered, its buffer posted again.
    fn try_recv(&mut self) -> Option<(Header, Vec<u8>)> {
        if self.rx.used_idx() == self.rx_seen {
            return None;
        }
        let (id, len) = self.rx.used(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let k = u16::try_from(id).unwrap() / 2;
        let at = Self::rx_hdr_at(k);
        let mut raw = [0u8; HDR_LEN];
        self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
        let hdr = Header::from_bytes(&raw);
        assert_eq!(len as usize, HDR_LEN + hdr.len as usize, "used length");
        let mut data = vec![0u8; hdr.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(at + 0x100))
            .unwrap();
        assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, CID));
        self.peer = (hdr.buf_alloc, hdr.fwd_cnt);
        self.post_rx(k);
        self.evts[0].write(1).unwrap();
        Some((hdr, data))
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        let mut got = None;
        wait_until("a packet on the receive queue", || {
            got = self.try_recv();
            got.is_some()
        });
        got.unwrap()
    }

    /// The next packet that is not a credit update.
    fn recv_not_credit(&mut self) -> (Header, Vec<u8>) {
        loop {
            let p = self.recv();
            if p.0.op != op::CREDIT_UPDATE {
                return p;
            }
        }
    }

    fn hdr(&self, src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.fwd,
            ..Header::default()
        }
    }

    /// Offers a raw transmit chain of `descs` (address, length, flags), no notify.
    fn raw_tx(&mut self, descs: &[(u64, u32, u16)]) {
        let k = self.tx_slot();
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = u16::try_from(i).unwrap();
            let next = if usize::from(i) + 1 < descs.len() {
                NEXT
            } else {
                0
            };
            self.tx.desc(
                4 * k % QSIZE + i,
                addr,
                len,
                flags | next,
                4 * k % QSIZE + i + 1,
            );
        }
        self.tx.publish(4 * k % QSIZE);
        self.tx_posted = self.tx_posted.wrapping_add(1);
    }

    fn tx_slot(&self) -> u16 {
        wait_until("a free transmit slot", || {
            self.tx_posted.wrapping_sub(self.tx.used_idx()) < TX_SLOTS
        });
        self.tx_posted % TX_SLOTS
    }

    /// Sends a packet as header and data descriptors.
    fn send(&mut self, hdr: Header, data: &[u8]) {
        let k = self.tx_slot();
        let at = TX_AT + u64::from(k) * TX_SLOT;
        let hdr = Header {
            len: u32::try_from(data.len()).unwrap(),
            ..hdr
        };
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(at + 0x100))
            .unwrap();
        let len = u32::try_from(data.len()).unwrap();
        if data.is_empty() {
            self.raw_tx(&[(at, HDR_LEN as u32, 0)]);
        } else {
            self.raw_tx(&[(at, HDR_LEN as u32, 0), (at + 0x100, len, 0)]);
        }
        if hdr.op == op::RW {
            self.sent = self.sent.wrapping_add(len);
        }
        self.evts[1].write(1).unwrap();
    }

    /// The device's credit for us now.
    fn credit(&self) -> u32 {
        self.peer
            .0
            .saturating_sub(self.sent.wrapping_sub(self.peer.1))
    }

    fn wait_tx_drained(&self) {
        wait_until("the transmit queue drained", || {
            self.tx.used_idx() == self.tx_posted
        });
    }
}

fn device() -> (Vsock, PathBuf) {
    let path = uds_path();
    let mut dev = Vsock::new(CID, &path).unwrap();
    dev.set_handshake_timeout(Duration::from_millis(200));
    (dev, path)
}

/// A host client connected to guest port `port`: the REQUEST seen and answered. Returns
/// the client and the host port ember picked.
fn host_connect(g: &mut Guest, path: &PathBuf, port: u32) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    let (req, _) = g.recv();
    assert_eq!(
        (req.op, req.dst_port, req.type_),
        (op::REQUEST, port, TYPE_STREAM)
    );
    assert!(req.src_port >= 1 << 30, "ephemeral port {}", req.src_port);
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    g.send(g.hdr(port, req.src_port, op::RESPONSE), &[]);
    let want = format!("OK {}\n", req.src_port);
    let mut line = vec![0u8; want.len()];
    client.read_exact(&mut line).unwrap();
    assert_eq!(String::from_utf8(line).unwrap(), want);
    (client, req.src_port)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn new_guest(dev: &mut Vsock) -> Guest {
    let arc = leak_memory(MEM);
    let mem: &'static GuestMemoryMmap = arc.as_ref();
    let rx = Ring::new(mem, 0x1000, QSIZE);
    let tx = Ring::new(mem, 0x4000, QSIZE);
    let ev = Ring::new(mem, 0x8000, QSIZE);
    let g = Guest {
        arc: arc.clone(),
        mem,
        rx,
        tx,
        ev,
        evts: [evt(), evt(), evt()],
        interrupt: Arc::new(Interrupt::new(evt())),
        rx_seen: 0,
        tx_posted: 0,
        fwd: 0,
        peer: (0, 0),
        sent: 0,
    };
    dev.activate(g.activation()).unwrap();
    g
}

#[test]
fn host_client_connects_and_a_mebibyte_crosses_each_way_with_credit() {
    let (mut dev, path) = device();
    let mut g = new_guest(&mut dev);
    g.post_all_rx();
    let (client, local) = host_connect(&mut g, &path, 1234);
    let gport = 1234;

    // Host -> guest: the client writes 1 MiB; the guest consumes it and reports credit.
    let down = pattern(1 << 20, 1);
    let writer = {
        let mut c = client.try_clone().unwrap();
        let d = down.clone();
        std::thread::spawn(move || c.write_all(&d).unwrap())
    };
    let mut got = Vec::new();
    let mut told = 0u32;
    while got.len() < down.len() {
        let (h, data) = g.recv();
        assert_eq!((h.src_port, h.dst_port), (local, gport));
        if h.op == op::RW {
            assert!(data.len() <= RX_DATA as usize);
            got.extend_from_slice(&data);
            g.fwd = g.fwd.wrapping_add(data.len() as u32);
            // Never beyond the credit we gave.
            assert!(got.len() as u32 - told <= GUEST_BUF);
            if g.fwd - told >= 64 << 10 {
                told = g.fwd;
                g.send(g.hdr(gport, local, op::CREDIT_UPDATE), &[]);
            }
        }
    }
    writer.join().unwrap();
    assert!(got == down, "host -> guest data differs");

    // Guest -> host: 1 MiB in 4 KiB packets, within the device's credit.
    let up = pattern(1 << 20, 7);
    let reader = {
        let mut c = client.try_clone().unwrap();
        let n = up.len();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; n];
            c.read_exact(&mut buf).unwrap();
            buf
        })
    };
    let mut off = 0;
    let mut updates = 0;
    while off < up.len() {
        if g.credit() < 4096 {
            let (h, _) = g.recv();
            if h.op == op::CREDIT_UPDATE {
                updates += 1;
            }
            continue;
        }
        let n = 4096.min(up.len() - off);
        g.send(g.hdr(gport, local, op::RW), &up[off..off + n]);
        off += n;
    }
    assert!(reader.join().unwrap() == up, "guest -> host data differs");
    assert!(updates > 0, "the device sent credit updates");

    // The host closes: the guest hears SHUTDOWN(SEND), closes too, and gets an RST.
    drop(client);
    let (h, _) = g.recv_not_credit();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    g.send(
        Header {
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..g.hdr(gport, local, op::SHUTDOWN)
        },
        &[],
    );
    let (h, _) = g.recv();
    assert_eq!(h.op, op::RST);
    let c = dev.counters();
    assert_eq!(c.rx_bytes.load(Ordering::Relaxed), 1 << 20);
    assert_eq!(c.tx_bytes.load(Ordering::Relaxed), 1 << 20);
    assert_eq!(c.conns_added.load(Ordering::Relaxed), 1);
    assert_eq!(c.conns_killed.load(Ordering::Relaxed), 0);
    assert_eq!(c.invalid_packets.load(Ordering::Relaxed), 0);
    assert_ne!(g.interrupt.status() & 1, 0);
}

fn expect_closed(client: &mut UnixStream) {
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("client not closed: {other:?}"),
    }
}

#[test]
fn a_guest_rst_or_silence_closes_the_host_client() {
    let (mut dev, path) = device();
    let mut g = new_guest(&mut dev);
    g.post_all_rx();
    // Nobody listens on guest port 99: the guest answers RST.
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"CONNECT 99\n").unwrap();
    let (req, _) = g.recv();
    assert_eq!(req.op, op::REQUEST);
    g.send(g.hdr(99, req.src_port, op::RST), &[]);
    expect_closed(&mut client);

    // No answer at all: closed at the deadline, and the guest is told with an RST.
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"CONNECT 98\n").unwrap();
    let (req, _) = g.recv();
    assert_eq!(req.op, op::REQUEST);
    expect_closed(&mut client);
    let (rst, _) = g.recv();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (op::RST, req.src_port, 98)
    );
    assert_eq!(dev.counters().conns_killed.load(Ordering::Relaxed), 1);
}

#[test]
fn bad_connect_lines_and_silent_clients_are_closed() {
    let (mut dev, path) = device();
    let mut g = new_guest(&mut dev);
    g.post_all_rx();
    let long = [b'C'; 40];
    for line in [
        &b"HELLO\n"[..],
        b"CONNECT abc\n",
        b"CONNECT 5 6\n",
        &long,
        b"",
    ] {
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(line).unwrap();
        // The empty line case sends nothing: closed at the deadline.
        expect_closed(&mut client);
    }
    assert!(g.try_recv().is_none(), "no REQUEST for a bad line");
    // Still serving.
    let (_client, _) = host_connect(&mut g, &path, 5);
}

/// A running device with receive buffers posted, and a host listener at `<uds>_port`.
fn with_host_listener(port: u32) -> (Vsock, Guest, UnixListener) {
    let (mut dev, path) = device();
    let g = new_guest(&mut dev);
    g.post_all_rx();
    let mut lpath = path.into_os_string();
    lpath.push(format!("_{port}"));
    let listener = UnixListener::bind(&lpath).unwrap();
    (dev, g, listener)
}

#[test]
fn what_the_guest_sent_before_closing_reaches_the_host_then_the_reset() {
    let (_dev, mut g, listener) = with_host_listener(60);
    // The whole credit while the host reads nothing: more than its socket buffer takes,
    // so the device still holds some when the guest closes its socket.
    let data: Vec<u8> = (0..BUF_ALLOC as usize)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    // Connects guest port `gport` to the host listener, sends `data`, closes the socket.
    let send_then_close = |g: &mut Guest, gport: u32| {
        g.send(g.hdr(gport, 60, op::REQUEST), &[]);
        assert_eq!(g.recv_not_credit().0.op, op::RESPONSE);
        let (host, _) = listener.accept().unwrap();
        for chunk in data.chunks(4096) {
            g.send(g.hdr(gport, 60, op::RW), chunk);
        }
        g.send(
            Header {
                flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
                ..g.hdr(gport, 60, op::SHUTDOWN)
            },
            &[],
        );
        host
    };

    let mut host = send_then_close(&mut g, 4100);
    g.wait_tx_drained();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert!(
        got == data,
        "the host got {} of {} bytes",
        got.len(),
        data.len()
    );
    assert_eq!(g.recv_not_credit().0.op, op::RST);

    // A host that takes nothing after the guest's close: reset after CLOSE_DRAIN (2 s).
    let _idle = send_then_close(&mut g, 4101);
    let (h, _) = g.recv_not_credit();
    assert_eq!((h.op, h.src_port), (op::RST, 60));
}

#[test]
fn guest_requests_reach_host_listeners_or_get_rst() {
    let (_dev, mut g, listener) = with_host_listener(52);

    g.send(g.hdr(4000, 52, op::REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RESPONSE, 52, 4000));
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.send(g.hdr(4000, 52, op::RW), b"hello");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    host.write_all(b"world").unwrap();
    let (h, data) = g.recv();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"world"[..]));

    // The guest's half-close: the host reads EOF, and can still send.
    g.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..g.hdr(4000, 52, op::SHUTDOWN)
        },
        &[],
    );
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    host.write_all(b"late").unwrap();
    let (h, data) = g.recv();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"late"[..]));

    // A guest RST closes the host stream at once.
    g.send(g.hdr(4000, 52, op::RST), &[]);
    expect_closed(&mut host);

    // Nobody at <uds>_53.
    g.send(g.hdr(4001, 53, op::REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 53, 4001));
    // A data packet for no connection.
    g.send(g.hdr(4002, 54, op::RW), b"x");
    let (h, _) = g.recv();
    assert_eq!((h.op, h.dst_port), (op::RST, 4002));
    // A CREDIT_REQUEST is answered.
    g.send(g.hdr(4003, 52, op::REQUEST), &[]);
    assert_eq!(g.recv().0.op, op::RESPONSE);
    g.send(g.hdr(4003, 52, op::CREDIT_REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.buf_alloc), (op::CREDIT_UPDATE, BUF_ALLOC));
}

#[test]
fn a_guest_over_its_credit_is_reset_not_buffered() {
    let (dev, mut g, listener) = with_host_listener(60);
    g.send(g.hdr(5000, 60, op::REQUEST), &[]);
    assert_eq!(g.recv().0.op, op::RESPONSE);
    // The host never reads: its socket buffer fills, then ember's 256 KiB, then RST.
    let (mut host, _) = listener.accept().unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    let mut rst = false;
    for _ in 0..64 {
        g.send(g.hdr(5000, 60, op::RW), &chunk);
        g.wait_tx_drained();
        while let Some((h, _)) = g.try_recv() {
            if h.op != op::CREDIT_UPDATE {
                assert_eq!(h.op, op::RST);
                rst = true;
            }
        }
        if rst {
            break;
        }
    }
    if !rst {
        assert_eq!(g.recv_not_credit().0.op, op::RST);
    }
    assert_eq!(dev.counters().conns_killed.load(Ordering::Relaxed), 1);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    let _ = host.read_to_end(&mut sink);
    assert!(sink.len() <= 4 << 20);
}

#[test]
fn malformed_chains_are_counted_and_the_device_keeps_serving() {
    let (mut dev, _path) = device();
    let mut g = new_guest(&mut dev);
    let at = TX_AT + 0x20_0000;
    let mut h = g.hdr(1, 2, op::REQUEST);
    h.len = 1000;
    g.mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
    // Short header; len beyond the chain; outside memory; device-writable; both halves
    // of a header split across descriptors but too short.
    g.raw_tx(&[(at, 20, 0)]);
    g.raw_tx(&[(at, HDR_LEN as u32, 0), (at + 0x100, 100, 0)]);
    g.raw_tx(&[(MEM as u64 - 10, HDR_LEN as u32, 0)]);
    g.raw_tx(&[(at, HDR_LEN as u32, WRITE)]);
    g.raw_tx(&[(at, 30, 0), (at + 30, 10, 0)]);
    // Wrong CIDs.
    let mut wrong = g.hdr(1, 2, op::REQUEST);
    wrong.dst_cid = 7;
    g.send(wrong, &[]);
    g.evts[1].write(1).unwrap();
    g.wait_tx_drained();
    // A receive chain too short for a header, and one outside memory.
    g.rx.desc(200, RX_AT, 10, WRITE, 0);
    g.rx.publish(200);
    g.rx.desc(201, MEM as u64 - 8, 64, WRITE, 0);
    g.rx.publish(201);
    g.post_all_rx();
    // A REQUEST to a port nobody serves still gets its RST.
    g.send(g.hdr(1, 2, op::REQUEST), &[]);
    // The two bad receive chains come back unused first.
    wait_until("the bad receive chains", || g.rx.used_idx() >= 3);
    assert_eq!(g.rx.used(0), (200, 0));
    assert_eq!(g.rx.used(1), (201, 0));
    g.rx_seen = 2;
    let (h, _) = g.recv();
    assert_eq!(h.op, op::RST);
    assert_eq!(dev.counters().invalid_packets.load(Ordering::Relaxed), 8);
}

#[test]
fn a_flood_for_unknown_connections_stops_draining_until_rsts_are_delivered() {
    let (mut dev, _path) = device();
    let mut g = new_guest(&mut dev);
    let n = MAX_RSTS as u16;
    for i in 0..n {
        g.send(g.hdr(10_000 + u32::from(i), 77, op::RW), &[]);
    }
    g.wait_tx_drained();
    for i in 0..10u16 {
        g.send(g.hdr(20_000 + u32::from(i), 77, op::RW), &[]);
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(g.tx.used_idx(), n, "the transmit queue is held");
    g.post_all_rx();
    let mut ports = Vec::new();
    while ports.len() < usize::from(n) + 10 {
        let (h, _) = g.recv();
        assert_eq!(h.op, op::RST);
        ports.push(h.dst_port);
    }
    assert_eq!(ports[0], 10_000);
    assert_eq!(*ports.last().unwrap(), 20_009);
    g.wait_tx_drained();
    assert_eq!(
        dev.counters().rst_sent.load(Ordering::Relaxed),
        u64::from(n) + 10
    );
}

#[test]
fn pause_records_the_queues_and_reset_keeps_the_listener() {
    let (mut dev, path) = device();
    dev.request_transport_reset();
    let mut g = new_guest(&mut dev);
    // The event buffer posted after activation gets the TRANSPORT_RESET.
    g.mem
        .write_slice(&[0xffu8; 8], GuestAddress(EV_BUF))
        .unwrap();
    g.ev.desc(0, EV_BUF, 8, WRITE, 0);
    g.ev.publish(0);
    g.evts[2].write(1).unwrap();
    wait_until("the transport reset event", || g.ev.used_idx() == 1);
    assert_eq!(g.ev.used(0), (0, 4));
    let mut ev = [0u8; 8];
    g.mem.read_slice(&mut ev, GuestAddress(EV_BUF)).unwrap();
    assert_eq!(ev, [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);

    let pause = dev.pause_handle();
    assert!(pause.pause(Duration::from_secs(5)));
    let states = pause.parked_queues().unwrap();
    assert_eq!(states.len(), 3);
    assert_eq!(states[2].next_used, 1);
    g.post_all_rx();
    g.send(g.hdr(1, 2, op::REQUEST), &[]);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(g.tx.used_idx(), 0, "a paused device served its queue");
    pause.resume();
    assert_eq!(g.recv().0.op, op::RST);

    // Reset closes connections; the listener serves the next activation.
    let (mut client, _) = host_connect(&mut g, &path, 7);
    dev.reset();
    expect_closed(&mut client);
    let mut g = new_guest(&mut dev);
    g.post_all_rx();
    let (_client, _) = host_connect(&mut g, &path, 8);
    drop(g);
    drop(dev);
    assert!(!path.exists(), "the socket file is removed with the device");
}

#[test]
fn new_refuses_an_existing_path_and_reserved_cids() {
    let path = uds_path();
    let _dev = Vsock::new(CID, &path).unwrap();
    assert!(Vsock::new(CID, &path).is_err());
    assert!(Vsock::new(2, &uds_path()).is_err());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
