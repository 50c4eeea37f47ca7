//! The metadata service's network stack on frames the fuzzer controls. The input is a
//! list of records `[control][length: u16 LE][frame bytes]`; the control byte can have the
//! target fix the frame's IPv4/TCP checksums and acknowledge the stack's last segment (so
//! inputs reach the TCP and HTTP states), advance the clock, run the timers and switch
//! the version. Nothing may panic, every frame must fit the buffer it was given, and the
//! stack must run out of frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmds::wire;
use mmds::{MmdsStack, MmdsStore, Version, DEFAULT_IPV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FIX_CHECKSUMS: u8 = 0x01;
const ACK_LAST: u8 = 0x02;
const TICK: u8 = 0x04;
const SMALL_BUFFER: u8 = 0x08;
const TOGGLE_VERSION: u8 = 0x10;
/// The top three bits: clock steps of 150 ms.
const CLOCK_SHIFT: u8 = 5;

/// Where the stack's last segment ends in sequence space.
fn segment_end(frame: &[u8]) -> Option<u32> {
    let ip = wire::ipv4(frame.get(wire::ETH_LEN..)?).ok()?;
    let t = wire::tcp(ip.src, ip.dst, ip.payload).ok()?;
    Some(t.header.seq.wrapping_add(t.seq_len()))
}

/// Acknowledges `ack` in a TCP frame and recomputes its checksums.
fn patch(frame: &mut [u8], ctl: u8, ack: Option<u32>) {
    if frame.len() < wire::ETH_LEN + 20 || frame[12..14] != [8, 0] {
        return;
    }
    let ihl = usize::from(frame[wire::ETH_LEN] & 0xf) * 4;
    let ip_end = wire::ETH_LEN + ihl;
    if ihl < 20 || frame.len() < ip_end {
        return;
    }
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let end = (wire::ETH_LEN + total).min(frame.len());
    if ctl & ACK_LAST != 0 && end >= ip_end + 20 {
        if let Some(a) = ack {
            frame[ip_end + 8..ip_end + 12].copy_from_slice(&a.to_be_bytes());
        }
    }
    if ctl & FIX_CHECKSUMS == 0 {
        return;
    }
    frame[wire::ETH_LEN + 10..wire::ETH_LEN + 12].fill(0);
    let c = wire::checksum(&[&frame[wire::ETH_LEN..ip_end]]);
    frame[wire::ETH_LEN + 10..wire::ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    if frame[wire::ETH_LEN + 9] == wire::PROTO_TCP && end >= ip_end + 20 {
        let Ok(len) = u16::try_from(end - ip_end) else {
            return;
        };
        frame[ip_end + 16..ip_end + 18].fill(0);
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&frame[wire::ETH_LEN + 12..wire::ETH_LEN + 20]);
        pseudo[9] = wire::PROTO_TCP;
        pseudo[10..].copy_from_slice(&len.to_be_bytes());
        let c = wire::checksum(&[&pseudo, &frame[ip_end..end]]);
        frame[ip_end + 16..ip_end + 18].copy_from_slice(&c.to_be_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut store = MmdsStore::default();
    let _ = store.put(serde_json::json!({
        "latest": {"meta-data": {"ami-id": "ami-1", "n": 1, "big": "y".repeat(5000)}}
    }));
    let mut stack = MmdsStack::new(DEFAULT_IPV4, Arc::new(Mutex::new(store)), Version::V1);
    let mut now = Instant::now();
    let mut last_end: Option<u32> = None;
    let mut rest = data;
    let mut out = vec![0u8; 1600];
    while let [ctl, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let mut frame = tail[..len].to_vec();
        rest = &tail[len..];
        patch(&mut frame, *ctl, last_end);
        now += Duration::from_millis(150 * u64::from(*ctl >> CLOCK_SHIFT));
        if ctl & TOGGLE_VERSION != 0 {
            let v = match stack.version() {
                Version::V1 => Version::V2,
                Version::V2 => Version::V1,
            };
            stack.set_version(v);
        }
        stack.handle_guest_frame(&frame, now);
        if ctl & TICK != 0 {
            if let Some(d) = stack.next_deadline() {
                now = now.max(d);
            }
            stack.tick(now);
        }
        let size = if ctl & SMALL_BUFFER != 0 {
            60 + usize::from(*lo)
        } else {
            out.len()
        };
        let buf = &mut out[..size.min(1600)];
        let mut frames = 0;
        while let Some(n) = stack.next_frame(buf, now) {
            assert!(n <= buf.len(), "a frame larger than its buffer");
            if let Some(e) = segment_end(&buf[..n]) {
                last_end = Some(e);
            }
            frames += 1;
            assert!(frames < 10_000, "the stack never runs out of frames");
        }
        assert!(!stack.has_frames());
        assert!(stack.connections() <= mmds::stack::MAX_CONNECTIONS);
    }
});
