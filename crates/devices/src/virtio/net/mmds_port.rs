//! The net device's door to MMDS (the metadata service): frames the guest sends to the
//! metadata address (ARP for it, IPv4 to it) are answered by an [`mmds::MmdsStack`]
//! instead of reaching the tap, and the stack's frames are delivered to the guest like
//! frames from the tap. Every other frame is left alone; only the first bytes of a frame
//! are looked at to decide, so bulk traffic is not copied.

use super::tap::VNET_HDR_LEN;
use mmds::MmdsStack;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use vmm_sys_util::timerfd::TimerFd;

/// Ethernet header, then an ARP packet's target address ends at byte 42; an IPv4
/// header's destination at byte 34.
pub const PEEK_LEN: usize = 42;
const ETH_TYPE: usize = 12;
const ARP_TARGET_IP: usize = 38;
const IPV4_DST: usize = 30;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// The virtio-net header's fields this needs (virtio 1.2, 5.1.6).
const HDR_FLAGS: usize = 0;
const HDR_CSUM_START: usize = 6;
const HDR_CSUM_OFFSET: usize = 8;
const NEEDS_CSUM: u8 = 1;

/// MMDS as one net device sees it, with the timer its retransmissions and timeouts run on.
pub struct MmdsPort {
    stack: MmdsStack,
    /// Made with the device (activation runs on a vCPU thread, whose filter has no
    /// timerfd_create); armed for the stack's next deadline.
    timer: TimerFd,
    armed: Option<Instant>,
    frame: Vec<u8>,
}

impl MmdsPort {
    /// A port for `stack`.
    pub fn new(stack: MmdsStack) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        // SAFETY: fcntl() on a descriptor we own takes no pointers; the result is checked.
        // Non-blocking: a timer re-armed between the wake-up and the read cannot stall.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            stack,
            timer,
            armed: None,
            frame: Vec::new(),
        })
    }

    /// Whether a frame beginning with `head` (its first [`PEEK_LEN`] bytes or fewer,
    /// without the virtio-net header) is for MMDS.
    pub fn wants(&self, head: &[u8]) -> bool {
        let addr = self.stack.address().octets();
        let at = |range: std::ops::Range<usize>| head.get(range);
        match at(ETH_TYPE..ETH_TYPE + 2) {
            Some(t) if t == ETHERTYPE_ARP => {
                at(ARP_TARGET_IP..ARP_TARGET_IP + 4) == Some(&addr[..])
            }
            Some(t) if t == ETHERTYPE_IPV4 => at(IPV4_DST..IPV4_DST + 4) == Some(&addr[..]),
            _ => false,
        }
    }

    /// Hands the stack a frame of `len` bytes with its virtio-net header, which `fill`
    /// copies in; whether the stack took it (otherwise it goes to the tap as usual).
    ///
    /// A guest that negotiated checksum offload leaves its TCP checksum for the device to
    /// finish (`NEEDS_CSUM`, with where the sum starts and where it goes): it is finished
    /// here, as a tap would, so the stack sees a frame as it would cross a wire.
    pub fn take(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        self.frame.resize(len, 0);
        let n = fill(&mut self.frame).min(self.frame.len());
        let Some(frame) = self.frame.get_mut(..n) else {
            return false;
        };
        if frame.len() <= VNET_HDR_LEN {
            return false;
        }
        if frame[HDR_FLAGS] & NEEDS_CSUM != 0 {
            let at = |i: usize| usize::from(u16::from_le_bytes([frame[i], frame[i + 1]]));
            let (start, offset) = (VNET_HDR_LEN + at(HDR_CSUM_START), at(HDR_CSUM_OFFSET));
            let field = start.saturating_add(offset);
            if field.saturating_add(2) > frame.len() {
                // Nonsense offsets: the frame cannot be checked, so it is not answered.
                return true;
            }
            // The sum covers the segment only: not the Ethernet padding after the IPv4
            // packet's total length.
            let ip = VNET_HDR_LEN + 14;
            let end = frame
                .get(ip + 2..ip + 4)
                .map(|b| ip + usize::from(u16::from_be_bytes([b[0], b[1]])))
                .map_or(frame.len(), |e| e.min(frame.len()));
            let Some(covered) = frame.get(start..end) else {
                return true;
            };
            let sum = mmds::wire::checksum(&[covered]);
            frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
        }
        self.stack
            .handle_guest_frame(&frame[VNET_HDR_LEN..], Instant::now())
    }

    /// Whether the stack has frames for the guest.
    pub fn has_frames(&self) -> bool {
        self.stack.has_frames()
    }

    /// The stack's next frame for the guest, written into `buf`.
    pub fn next_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.stack.next_frame(buf, Instant::now())
    }

    /// The timer to poll.
    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    /// Arms the timer for the stack's next deadline (or disarms it).
    pub fn arm(&mut self) {
        let next = self.stack.next_deadline();
        if next == self.armed {
            return;
        }
        self.armed = next;
        let result = match next {
            // Zero would disarm it.
            Some(t) => self.timer.reset(
                t.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            log::warn!("net: MMDS timer: {e}");
        }
    }

    /// The timer fired: the stack's timeouts run.
    pub fn on_timer(&mut self) {
        let _ = self.timer.wait();
        self.armed = None;
        self.stack.tick(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};

    fn port() -> MmdsPort {
        let store = Arc::new(Mutex::new(mmds::MmdsStore::default()));
        MmdsPort::new(MmdsStack::new(
            Ipv4Addr::new(169, 254, 169, 254),
            store,
            mmds::Version::V1,
        ))
        .unwrap()
    }

    #[test]
    fn only_arp_for_and_ipv4_to_the_address_are_wanted() {
        let p = port();
        let mut arp = [0u8; PEEK_LEN];
        arp[ETH_TYPE..ETH_TYPE + 2].copy_from_slice(&ETHERTYPE_ARP);
        arp[ARP_TARGET_IP..].copy_from_slice(&[169, 254, 169, 254]);
        assert!(p.wants(&arp));
        arp[ARP_TARGET_IP] = 10;
        assert!(!p.wants(&arp));
        let mut ip = [0u8; PEEK_LEN];
        ip[ETH_TYPE..ETH_TYPE + 2].copy_from_slice(&ETHERTYPE_IPV4);
        ip[IPV4_DST..IPV4_DST + 4].copy_from_slice(&[169, 254, 169, 254]);
        assert!(p.wants(&ip));
        assert!(!p.wants(&ip[..20]), "a frame too short to tell");
        ip[IPV4_DST + 3] = 1;
        assert!(!p.wants(&ip));
        assert!(!p.wants(&[]));
    }
}
