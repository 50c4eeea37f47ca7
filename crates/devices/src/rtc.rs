//! The PL031 real-time clock (aarch64 guests read the wall-clock time from it at boot), on
//! top of vm-superio's register model. Its registers are 32 bits wide; other accesses read
//! as zero and are ignored on write. It raises no interrupt (no alarm).

use crate::bus::BusDevice;
use serde::{Deserialize, Serialize};
use vm_superio::rtc_pl031::{NoEvents, RtcState};
use vm_superio::Rtc;

/// The RTC's registers, for snapshots. `offset` is against the host's clock, so a
/// restored guest's wall clock moves on with the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcSnapshot {
    /// Load register.
    pub lr: u32,
    /// Counter offset from the host's time.
    pub offset: i64,
    /// Match register.
    pub mr: u32,
    /// Interrupt mask.
    pub imsc: u32,
    /// Raw interrupt status.
    pub ris: u32,
}

/// A PL031 RTC.
#[derive(Default)]
pub struct RtcDevice {
    rtc: Rtc<NoEvents>,
}

impl RtcDevice {
    /// An RTC counting from the host's current time.
    pub fn new() -> Self {
        Self::default()
    }

    /// An RTC in a saved state.
    pub fn from_snapshot(s: &RtcSnapshot) -> Self {
        let state = RtcState {
            lr: s.lr,
            offset: s.offset,
            mr: s.mr,
            imsc: s.imsc,
            ris: s.ris,
        };
        Self {
            rtc: Rtc::from_state(&state, NoEvents),
        }
    }

    /// The registers, for a snapshot.
    pub fn snapshot(&self) -> RtcSnapshot {
        let s = self.rtc.state();
        RtcSnapshot {
            lr: s.lr,
            offset: s.offset,
            mr: s.mr,
            imsc: s.imsc,
            ris: s.ris,
        }
    }
}

impl BusDevice for RtcDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u16::try_from(offset), <&mut [u8; 4]>::try_from(&mut *data)) {
            (Ok(off), Ok(word)) => self.rtc.read(off, word),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Ok(word)) = (u16::try_from(offset), <&[u8; 4]>::try_from(data)) {
            self.rtc.write(off, word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_and_the_primecell_id() {
        let mut rtc = RtcDevice::new();
        let mut word = [0u8; 4];
        rtc.read(0, &mut word);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = u64::from(u32::from_le_bytes(word));
        assert!(t + 5 >= now && t <= now + 5, "rtc says {t}, host {now}");
        // PrimeCell id: 0xb105f00d in the four bytes at 0xff0..0xfff.
        let mut id = Vec::new();
        for off in [0xff0, 0xff4, 0xff8, 0xffc] {
            rtc.read(off, &mut word);
            id.push(word[0]);
        }
        assert_eq!(id, [0x0d, 0xf0, 0x05, 0xb1]);
        let mut odd = [7u8; 2];
        rtc.read(0, &mut odd);
        assert_eq!(odd, [0, 0]);
        rtc.write(0x1_0000, &[1, 2, 3, 4]);
    }
}
