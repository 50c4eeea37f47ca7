//! The stack end to end, with frames built by hand as a guest would send them.

use crate::stack::{HTTP_PORT, MAX_CONNECTIONS};
use crate::tcp::{IDLE_TIMEOUT, INITIAL_RTO, MAX_RETRIES, REQUEST_TIMEOUT};
use crate::wire::{self, Ends, TcpHeader, ACK, FIN, PSH, RST, SYN};
use crate::{MmdsStack, MmdsStore, Version, DEFAULT_IPV4, MMDS_MAC};
use serde_json::json;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GUEST_MAC: [u8; 6] = [0xaa, 0xfc, 0, 0, 0, 1];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);

/// A segment the stack sent, read back with the wire module (which checks our checksums).
#[derive(Debug)]
struct Out {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    mss: Option<u16>,
    dst_port: u16,
    payload: Vec<u8>,
}

fn stack() -> MmdsStack {
    let mut s = MmdsStore::default();
    s.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "hostname": "h"}}}))
        .unwrap();
    MmdsStack::new(DEFAULT_IPV4, Arc::new(Mutex::new(s)), Version::V1)
}

fn tcp_frame(
    port: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ends = Ends {
        src_mac: GUEST_MAC,
        dst_mac: MMDS_MAC,
        src_ip: GUEST_IP,
        dst_ip: DEFAULT_IPV4,
    };
    let h = TcpHeader {
        src_port: port,
        dst_port: dport,
        seq,
        ack,
        flags,
        window,
        mss: (flags & SYN != 0).then_some(1460),
    };
    let mut buf = vec![0u8; 2048];
    let n = wire::write_tcp_frame(&mut buf, &ends, 7, &h, payload).unwrap();
    buf.truncate(n);
    buf
}

fn arp_request(tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

fn read_out(frame: &[u8]) -> Out {
    let (dst, src, et) = wire::ethernet(frame).unwrap();
    assert_eq!((dst, src, et), (GUEST_MAC, MMDS_MAC, wire::ETHERTYPE_IPV4));
    let ip = wire::ipv4(&frame[wire::ETH_LEN..]).unwrap();
    assert_eq!((ip.src, ip.dst), (DEFAULT_IPV4, GUEST_IP));
    let t = wire::tcp(ip.src, ip.dst, ip.payload).unwrap();
    Out {
        seq: t.header.seq,
        ack: t.header.ack,
        flags: t.header.flags,
        window: t.header.window,
        mss: t.header.mss,
        dst_port: t.header.dst_port,
        payload: t.payload.to_vec(),
    }
}

fn pull(s: &mut MmdsStack, now: Instant) -> Vec<Out> {
    let mut v = Vec::new();
    let mut buf = [0u8; 1600];
    while let Some(n) = s.next_frame(&mut buf, now) {
        v.push(read_out(&buf[..n]));
        assert!(v.len() < 1000, "no end of frames");
    }
    assert!(!s.has_frames());
    v
}

/// A guest's end of one connection.
struct Peer {
    port: u16,
    seq: u32,
    ack: u32,
    window: u16,
}

impl Peer {
    /// SYN, SYN-ACK, ACK.
    fn connect(s: &mut MmdsStack, port: u16, window: u16, now: Instant) -> Peer {
        let isn = 1000u32.wrapping_mul(u32::from(port));
        assert!(s.handle_guest_frame(&tcp_frame(port, 80, isn, 0, SYN, window, &[]), now));
        let out = pull(s, now);
        assert_eq!(out.len(), 1);
        let sa = &out[0];
        assert_eq!(sa.flags, SYN | ACK);
        assert_eq!(sa.ack, isn.wrapping_add(1));
        assert_eq!(sa.mss, Some(1460));
        assert!(sa.window > 0);
        let mut p = Peer {
            port,
            seq: isn.wrapping_add(1),
            ack: sa.seq.wrapping_add(1),
            window,
        };
        p.send(s, ACK, &[], now);
        assert!(pull(s, now).is_empty());
        p
    }

    fn send(&mut self, s: &mut MmdsStack, flags: u8, data: &[u8], now: Instant) {
        let f = tcp_frame(self.port, 80, self.seq, self.ack, flags, self.window, data);
        assert!(s.handle_guest_frame(&f, now));
        self.seq = self
            .seq
            .wrapping_add(data.len() as u32)
            .wrapping_add(u32::from(flags & FIN != 0));
    }

    /// Takes segments, acknowledging each batch, until a FIN (or nothing more) arrives;
    /// checks every batch fits the window and the MSS. The bytes received and whether a
    /// FIN came.
    fn receive(&mut self, s: &mut MmdsStack, now: Instant, until_fin: bool) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        loop {
            let out = pull(s, now);
            if out.is_empty() {
                return (data, false);
            }
            let mut in_flight = 0;
            for o in &out {
                assert!(o.payload.len() <= 1460);
                in_flight += o.payload.len();
                assert!(in_flight <= usize::from(self.window), "window overrun");
                if o.payload.is_empty() && o.flags & FIN == 0 {
                    continue;
                }
                assert_eq!(o.seq, self.ack, "in order");
                data.extend_from_slice(&o.payload);
                self.ack = self.ack.wrapping_add(o.payload.len() as u32);
                if o.flags & FIN != 0 {
                    self.ack = self.ack.wrapping_add(1);
                    return (data, true);
                }
            }
            self.send(s, ACK, &[], now);
            if !until_fin && data.ends_with(b"ami-1") || data.ends_with(b"}") {
                return (data, false);
            }
        }
    }
}

fn body_of(resp: &[u8]) -> &[u8] {
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    &resp[at + 4..]
}

#[test]
fn arp() {
    let now = Instant::now();
    let mut s = stack();
    assert!(s.handle_guest_frame(&arp_request(DEFAULT_IPV4), now));
    let mut buf = [0u8; 64];
    let n = s.next_frame(&mut buf, now).unwrap();
    assert_eq!(n, 42);
    assert_eq!(&buf[0..6], &GUEST_MAC);
    assert_eq!(&buf[6..12], &MMDS_MAC);
    assert_eq!(&buf[20..22], &[0, 2], "a reply");
    assert_eq!(&buf[22..28], &MMDS_MAC);
    assert_eq!(&buf[28..32], &DEFAULT_IPV4.octets());
    assert_eq!(&buf[32..38], &GUEST_MAC);
    assert_eq!(&buf[38..42], &GUEST_IP.octets());
    assert!(s.next_frame(&mut buf, now).is_none());
    // Not ours: another address, a reply, truncated.
    assert!(!s.handle_guest_frame(&arp_request(Ipv4Addr::new(172, 16, 0, 1)), now));
    let mut reply = arp_request(DEFAULT_IPV4);
    reply[21] = 2;
    assert!(!s.handle_guest_frame(&reply, now));
    assert!(!s.handle_guest_frame(&arp_request(DEFAULT_IPV4)[..30], now));
    assert!(!s.has_frames());
    // A moved address answers there only.
    let other = Ipv4Addr::new(169, 254, 170, 2);
    s.set_address(other);
    assert!(!s.handle_guest_frame(&arp_request(DEFAULT_IPV4), now));
    assert!(s.handle_guest_frame(&arp_request(other), now));
}

#[test]
fn full_exchange_in_a_small_window() {
    let now = Instant::now();
    let mut s = stack();
    let mut p = Peer::connect(&mut s, 40000, 100, now);
    p.send(
        &mut s,
        ACK,
        b"GET /latest/meta-data HTTP/1.1\r\nHost: 169.2",
        now,
    );
    let out = pull(&mut s, now);
    assert_eq!(out.len(), 1, "an ACK of the first part");
    assert_eq!((out[0].flags, out[0].ack), (ACK, p.seq));
    p.send(
        &mut s,
        ACK | PSH,
        b"54.169.254\r\nConnection: close\r\n\r\n",
        now,
    );
    let (resp, fin) = p.receive(&mut s, now, true);
    assert!(fin, "Connection: close ends with our FIN");
    let text = String::from_utf8(resp.clone()).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain\r\n"));
    assert!(text.contains("Connection: close\r\n"));
    assert_eq!(body_of(&resp), b"ami-id\nhostname");
    assert!(resp.len() > 100, "took several segments");
    // The guest acknowledges our FIN and sends its own; we acknowledge it and forget.
    p.send(&mut s, ACK | FIN, &[], now);
    let out = pull(&mut s, now);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].flags, out[0].ack), (ACK, p.seq));
    assert_eq!(s.connections(), 0);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn keep_alive_then_guest_closes() {
    let now = Instant::now();
    let mut s = stack();
    let mut p = Peer::connect(&mut s, 40001, 65535, now);
    for _ in 0..2 {
        p.send(
            &mut s,
            ACK | PSH,
            b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
            now,
        );
        let (resp, fin) = p.receive(&mut s, now, false);
        assert!(!fin);
        assert_eq!(body_of(&resp), b"ami-1");
    }
    // JSON, then two pipelined requests in one segment.
    p.send(
        &mut s,
        ACK | PSH,
        b"GET / HTTP/1.1\r\nAccept: application/json\r\n\r\nGET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
        now,
    );
    let (resp, _) = p.receive(&mut s, now, false);
    assert!(String::from_utf8_lossy(&resp).contains("application/json"));
    let (resp, _) = p.receive(&mut s, now, false);
    assert_eq!(body_of(&resp), b"ami-1");
    assert_eq!(s.connections(), 1);
    p.send(&mut s, ACK | FIN, &[], now);
    let (_, fin) = p.receive(&mut s, now, true);
    assert!(fin);
    p.send(&mut s, ACK, &[], now);
    assert_eq!(s.connections(), 0);
    assert!(pull(&mut s, now).is_empty());
}

#[test]
fn version_2_token_over_tcp() {
    let now = Instant::now();
    let mut s = stack();
    s.set_version(Version::V2);
    assert_eq!(s.version(), Version::V2);
    let mut p = Peer::connect(&mut s, 40002, 65535, now);
    p.send(
        &mut s,
        ACK,
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
        now,
    );
    let (resp, _) = p.receive(&mut s, now, false);
    assert!(resp.starts_with(b"HTTP/1.1 401 Unauthorized\r\n"));
    p.send(
        &mut s,
        ACK,
        b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\nContent-Length: 5\r\n\r\nhel",
        now,
    );
    let (resp, _) = p.receive(&mut s, now, false);
    assert!(resp.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let token = String::from_utf8(body_of(&resp).to_vec()).unwrap();
    assert_eq!(token.len(), 64);
    // The rest of the body is skipped, not taken for a request.
    let req =
        format!("loGET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    p.send(&mut s, ACK, req.as_bytes(), now);
    let (resp, _) = p.receive(&mut s, now, false);
    assert_eq!(body_of(&resp), b"ami-1");
}

#[test]
fn retransmission_and_give_up() {
    let t0 = Instant::now();
    let mut s = stack();
    let mut p = Peer::connect(&mut s, 40003, 65535, t0);
    p.send(
        &mut s,
        ACK,
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
        t0,
    );
    let first = pull(&mut s, t0);
    assert_eq!(first.len(), 1);
    let deadline = s.next_deadline().unwrap();
    assert_eq!(deadline, t0 + INITIAL_RTO);
    // Not yet.
    s.tick(t0 + INITIAL_RTO - Duration::from_millis(1));
    assert!(pull(&mut s, t0).is_empty());
    let mut now = t0;
    let mut rto = INITIAL_RTO;
    for _ in 0..MAX_RETRIES {
        now += rto;
        s.tick(now);
        let again = pull(&mut s, now);
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].seq, &again[0].payload),
            (first[0].seq, &first[0].payload)
        );
        rto *= 2;
        assert_eq!(s.next_deadline(), Some(now + rto));
    }
    now += rto;
    s.tick(now);
    let out = pull(&mut s, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flags & RST, RST);
    assert_eq!(s.connections(), 0);
    let _ = p;
}

#[test]
fn retransmitted_data_is_acknowledged_once_received() {
    let t0 = Instant::now();
    let mut s = stack();
    let mut p = Peer::connect(&mut s, 40010, 65535, t0);
    p.send(
        &mut s,
        ACK,
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
        t0,
    );
    let lost = pull(&mut s, t0);
    s.tick(t0 + INITIAL_RTO);
    let again = pull(&mut s, t0 + INITIAL_RTO);
    assert_eq!(lost[0].payload, again[0].payload);
    p.ack = p.ack.wrapping_add(again[0].payload.len() as u32);
    p.send(&mut s, ACK, &[], t0 + INITIAL_RTO);
    assert_eq!(s.next_deadline(), Some(t0 + INITIAL_RTO + IDLE_TIMEOUT));
    // The guest's duplicate of its request is acknowledged, not answered again.
    let f = tcp_frame(
        40010,
        80,
        p.seq.wrapping_sub(10),
        p.ack,
        ACK,
        65535,
        b"\r\n\r\n",
    );
    assert!(s.handle_guest_frame(&f, t0));
    let out = pull(&mut s, t0);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].ack, out[0].payload.len()), (p.seq, 0));
}

#[test]
fn syn_ack_retransmitted_and_duplicate_syn() {
    let t0 = Instant::now();
    let mut s = stack();
    assert!(s.handle_guest_frame(&tcp_frame(40004, 80, 5, 0, SYN, 1000, &[]), t0));
    let a = pull(&mut s, t0);
    s.tick(t0 + INITIAL_RTO);
    let b = pull(&mut s, t0 + INITIAL_RTO);
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].flags, b[0].seq), (SYN | ACK, a[0].seq));
    // The guest sends its SYN again: the same SYN-ACK again.
    assert!(s.handle_guest_frame(&tcp_frame(40004, 80, 5, 0, SYN, 1000, &[]), t0));
    let c = pull(&mut s, t0);
    assert_eq!((c[0].flags, c[0].seq), (SYN | ACK, a[0].seq));
    // A handshake ACK acknowledging the wrong number is reset.
    assert!(s.handle_guest_frame(&tcp_frame(40004, 80, 6, 12345, ACK, 1000, &[]), t0));
    let d = pull(&mut s, t0);
    assert_eq!(d[0].flags & RST, RST);
    assert_eq!(s.connections(), 0);
}

#[test]
fn resets_and_drops() {
    let now = Instant::now();
    let mut s = stack();
    // Port 22: RST|ACK acknowledging the SYN.
    assert!(s.handle_guest_frame(&tcp_frame(40005, 22, 77, 0, SYN, 1000, &[]), now));
    let out = pull(&mut s, now);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].flags, out[0].ack, out[0].dst_port),
        (RST | ACK, 78, 40005)
    );
    // A stray ACK to port 80 with no connection: RST at its acknowledgement number.
    assert!(s.handle_guest_frame(&tcp_frame(40006, HTTP_PORT, 1, 999, ACK, 1000, &[]), now));
    let out = pull(&mut s, now);
    assert_eq!((out[0].flags, out[0].seq), (RST, 999));
    // A stray RST gets nothing.
    assert!(s.handle_guest_frame(&tcp_frame(40006, 80, 1, 0, RST, 0, &[]), now));
    assert!(pull(&mut s, now).is_empty());
    // UDP and ICMP to the address: consumed, unanswered.
    let mut udp = tcp_frame(40007, 80, 0, 0, ACK, 0, &[]);
    for proto in [17u8, 1] {
        udp[wire::ETH_LEN + 9] = proto;
        fix_ip_checksum(&mut udp);
        assert!(s.handle_guest_frame(&udp, now));
        assert!(pull(&mut s, now).is_empty());
    }
    // Another address, and non-IP frames: not ours.
    let mut other = tcp_frame(40008, 80, 0, 0, SYN, 0, &[]);
    other[wire::ETH_LEN + 19] = 1;
    assert!(!s.handle_guest_frame(&other, now));
    let mut ipv6 = tcp_frame(40008, 80, 0, 0, SYN, 0, &[]);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert!(!s.handle_guest_frame(&ipv6, now));
}

fn fix_ip_checksum(f: &mut [u8]) {
    let ip = &mut f[wire::ETH_LEN..wire::ETH_LEN + 20];
    ip[10..12].fill(0);
    let c = wire::checksum(&[ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn malformed_frames_every_layer() {
    let now = Instant::now();
    let mut s = stack();
    let syn = tcp_frame(40009, 80, 1, 0, SYN, 1000, &[]);
    let get = tcp_frame(40009, 80, 2, 0, ACK | PSH, 1000, b"GET / HTTP/1.1\r\n\r\n");
    for f in [&syn, &get, &arp_request(DEFAULT_IPV4)] {
        for n in 0..f.len() {
            s.handle_guest_frame(&f[..n], now);
        }
        for i in 0..f.len() {
            for bit in [0x01, 0x80, 0xff] {
                let mut g = f.clone();
                g[i] ^= bit;
                s.handle_guest_frame(&g, now);
                let mut buf = [0u8; 1600];
                while s.next_frame(&mut buf, now).is_some() {}
                s.tick(now + IDLE_TIMEOUT);
            }
        }
    }
    let mut s = stack();
    // Bad IP checksum, bad TCP checksum, a fragment, a bad header length: consumed, dropped.
    let mut bad_ip = syn.clone();
    bad_ip[wire::ETH_LEN + 8] = 1;
    let mut bad_tcp = syn.clone();
    let last = bad_tcp.len() - 1;
    bad_tcp[last] ^= 0x55;
    let mut frag = syn.clone();
    frag[wire::ETH_LEN + 6] = 0x20;
    fix_ip_checksum(&mut frag);
    let mut ihl = syn.clone();
    ihl[wire::ETH_LEN] = 0x4f;
    fix_ip_checksum(&mut ihl);
    let mut total = syn.clone();
    total[wire::ETH_LEN + 2..wire::ETH_LEN + 4].copy_from_slice(&[0xff, 0xff]);
    fix_ip_checksum(&mut total);
    let mut offset = syn.clone();
    offset[wire::ETH_LEN + 20 + 12] = 0xf0;
    for f in [&bad_ip, &bad_tcp, &frag, &ihl, &total, &offset] {
        assert!(s.handle_guest_frame(f, now));
        assert!(pull(&mut s, now).is_empty());
        assert_eq!(s.connections(), 0);
    }
    // Ethernet padding after the IP packet is ignored.
    let mut padded = syn.clone();
    padded.extend_from_slice(&[0; 6]);
    assert!(s.handle_guest_frame(&padded, now));
    assert_eq!(pull(&mut s, now).len(), 1);
    // A buffer too small for any frame gets none.
    assert!(s.handle_guest_frame(&arp_request(DEFAULT_IPV4), now));
    assert_eq!(s.next_frame(&mut [0u8; 10], now), None);
}

#[test]
fn malformed_http_is_answered_and_closed() {
    let now = Instant::now();
    let mut s = stack();
    let mut p = Peer::connect(&mut s, 40011, 65535, now);
    p.send(&mut s, ACK, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n", now);
    let (resp, fin) = p.receive(&mut s, now, true);
    assert!(fin);
    assert!(resp.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    // A head past 4 KiB without an end: 400 and close too.
    let mut p = Peer::connect(&mut s, 40012, 65535, now);
    let chunk = [b'a'; 1000];
    p.send(&mut s, ACK, b"GET / HTTP/1.1\r\nX: ", now);
    for _ in 0..5 {
        p.send(&mut s, ACK, &chunk, now);
    }
    let (resp, fin) = p.receive(&mut s, now, true);
    assert!(fin);
    assert!(
        resp.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
}

#[test]
fn out_of_order_segment_dropped() {
    let now = Instant::now();
    let mut s = stack();
    let mut p = Peer::connect(&mut s, 40013, 65535, now);
    let req = b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n";
    let late = tcp_frame(
        p.port,
        80,
        p.seq.wrapping_add(10),
        p.ack,
        ACK,
        65535,
        &req[10..],
    );
    assert!(s.handle_guest_frame(&late, now));
    let out = pull(&mut s, now);
    assert_eq!((out.len(), out[0].ack), (1, p.seq), "a duplicate ACK");
    p.send(&mut s, ACK, &req[..10], now);
    let out = pull(&mut s, now);
    assert!(out.iter().all(|o| o.payload.is_empty()), "no answer yet");
    p.send(&mut s, ACK, &req[10..], now);
    let (resp, _) = p.receive(&mut s, now, false);
    assert_eq!(body_of(&resp), b"ami-1");
}

#[test]
fn connection_limit() {
    let now = Instant::now();
    let mut s = stack();
    for i in 0..MAX_CONNECTIONS {
        let port = 30000 + i as u16;
        assert!(s.handle_guest_frame(&tcp_frame(port, 80, 1, 0, SYN, 1000, &[]), now));
    }
    assert_eq!(pull(&mut s, now).len(), MAX_CONNECTIONS);
    assert!(s.handle_guest_frame(&tcp_frame(31000, 80, 1, 0, SYN, 1000, &[]), now));
    let out = pull(&mut s, now);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].flags, out[0].dst_port), (RST | ACK, 31000));
    assert_eq!(s.connections(), MAX_CONNECTIONS);
    // A guest reset frees a place.
    assert!(s.handle_guest_frame(&tcp_frame(30000, 80, 2, 0, RST, 0, &[]), now));
    assert_eq!(s.connections(), MAX_CONNECTIONS - 1);
}

#[test]
fn idle_and_request_timeouts() {
    let t0 = Instant::now();
    let mut s = stack();
    let _idle = Peer::connect(&mut s, 40014, 65535, t0);
    let mut slow = Peer::connect(&mut s, 40015, 65535, t0);
    slow.send(&mut s, ACK, b"GET / HTT", t0);
    pull(&mut s, t0);
    assert_eq!(s.next_deadline(), Some(t0 + REQUEST_TIMEOUT));
    s.tick(t0 + REQUEST_TIMEOUT);
    let out = pull(&mut s, t0);
    assert_eq!(
        (out.len(), out[0].dst_port, out[0].flags & RST),
        (1, 40015, RST)
    );
    assert_eq!(s.connections(), 1);
    s.tick(t0 + IDLE_TIMEOUT);
    let out = pull(&mut s, t0);
    assert_eq!((out.len(), out[0].dst_port), (1, 40014));
    assert_eq!(s.connections(), 0);
}

#[test]
fn large_response_in_mss_segments() {
    let now = Instant::now();
    let mut store = MmdsStore::default();
    let big = "x".repeat(50_000);
    store.put(json!({ "big": big })).unwrap();
    let mut s = MmdsStack::new(DEFAULT_IPV4, Arc::new(Mutex::new(store)), Version::V1);
    let mut p = Peer::connect(&mut s, 40016, 8192, now);
    p.send(
        &mut s,
        ACK,
        b"GET /big HTTP/1.1\r\nConnection: close\r\n\r\n",
        now,
    );
    let (resp, fin) = p.receive(&mut s, now, true);
    assert!(fin);
    assert_eq!(body_of(&resp), big.as_bytes());
    let mut q = Peer::connect(&mut s, 40017, 65535, now);
    q.send(
        &mut s,
        ACK,
        b"GET / HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        now,
    );
    let (resp, _) = q.receive(&mut s, now, false);
    assert_eq!(body_of(&resp).len(), big.len() + 10);
}

#[test]
fn zero_window_probe() {
    let t0 = Instant::now();
    let mut s = stack();
    let mut p = Peer::connect(&mut s, 40018, 65535, t0);
    p.window = 0;
    p.send(
        &mut s,
        ACK,
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
        t0,
    );
    let out = pull(&mut s, t0);
    assert!(
        out.iter().all(|o| o.payload.is_empty()),
        "nothing past a zero window"
    );
    let d = s.next_deadline().unwrap();
    s.tick(d);
    let out = pull(&mut s, d);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload.len(), 1, "a one-byte probe");
    // The window opens: the rest flows.
    p.window = 65535;
    p.ack = p.ack.wrapping_add(1);
    p.send(&mut s, ACK, &[], d);
    let (resp, _) = p.receive(&mut s, d, false);
    assert!(resp.ends_with(b"ami-1"));
}
