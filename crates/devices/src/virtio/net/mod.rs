//! virtio-net on a Linux tap: one receive and one transmit queue, checksum and TSO
//! offloads in both directions, mergeable receive buffers, served by one thread per device.

pub mod engine;
pub mod mmds_port;
pub mod tap;

pub use engine::NetCounters;
pub use mmds_port::MmdsPort;
pub use tap::{Tap, TapError};

use super::event_loop::{DeviceEvents, EventLoopError, Flow};
use super::GuestMemoryMmap;
use super::{
    read_config_bytes, u16_of, ActivateError, Activation, DevicePause, DeviceThread, Interrupt,
    VirtioDevice, F_EVENT_IDX, F_VERSION_1, TYPE_NET,
};
use engine::{Engine, RxState, TxState};
use std::mem::offset_of;
use std::sync::Arc;
use virtio_bindings::virtio_net::{self, virtio_net_config};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod features {
    use virtio_bindings::virtio_net as n;
    /// The device takes frames with partial checksums.
    pub const CSUM: u32 = n::VIRTIO_NET_F_CSUM;
    /// The driver takes frames with partial checksums.
    pub const GUEST_CSUM: u32 = n::VIRTIO_NET_F_GUEST_CSUM;
    /// `mtu` in the configuration space is valid.
    pub const MTU: u32 = n::VIRTIO_NET_F_MTU;
    /// `mac` in the configuration space is valid.
    pub const MAC: u32 = n::VIRTIO_NET_F_MAC;
    /// The driver takes TCPv4 segments larger than the MTU.
    pub const GUEST_TSO4: u32 = n::VIRTIO_NET_F_GUEST_TSO4;
    /// The driver takes TCPv6 segments larger than the MTU.
    pub const GUEST_TSO6: u32 = n::VIRTIO_NET_F_GUEST_TSO6;
    /// The device takes TCPv4 segments larger than the MTU.
    pub const HOST_TSO4: u32 = n::VIRTIO_NET_F_HOST_TSO4;
    /// The device takes TCPv6 segments larger than the MTU.
    pub const HOST_TSO6: u32 = n::VIRTIO_NET_F_HOST_TSO6;
    /// The driver can merge receive buffers.
    pub const MRG_RXBUF: u32 = n::VIRTIO_NET_F_MRG_RXBUF;
    /// `status` in the configuration space is valid.
    pub const STATUS: u32 = n::VIRTIO_NET_F_STATUS;
}

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Configuration space: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = offset_of!(virtio_net_config, mtu) + 2;
const MAC_AT: usize = offset_of!(virtio_net_config, mac);
const STATUS_AT: usize = offset_of!(virtio_net_config, status);
const PAIRS_AT: usize = offset_of!(virtio_net_config, max_virtqueue_pairs);
const MTU_AT: usize = offset_of!(virtio_net_config, mtu);
const STATUS_LINK_UP: u16 = u16_of(virtio_net::VIRTIO_NET_S_LINK_UP);

/// A virtio-net device's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Interface id.
    pub id: String,
    /// The guest's MAC address; the guest picks a random one when absent.
    pub mac: Option<[u8; 6]>,
    /// MTU announced to the guest.
    pub mtu: Option<u16>,
}

/// A virtio-net device.
pub struct Net {
    id: String,
    tap: Option<Tap>,
    /// MMDS, while no thread holds it.
    mmds: Option<MmdsPort>,
    running: Option<DeviceThread<(Tap, Option<MmdsPort>)>>,
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 2],
    counters: Arc<NetCounters>,
    pause: Arc<DevicePause>,
}

impl Net {
    /// A device on `tap`, serving MMDS through `mmds` if given.
    pub fn new(cfg: &NetConfig, tap: Tap, mmds: Option<MmdsPort>) -> std::io::Result<Self> {
        use features::*;
        let mut features = 1u64 << F_VERSION_1
            | 1 << F_EVENT_IDX
            | 1 << CSUM
            | 1 << GUEST_CSUM
            | 1 << GUEST_TSO4
            | 1 << GUEST_TSO6
            | 1 << HOST_TSO4
            | 1 << HOST_TSO6
            | 1 << MRG_RXBUF
            | 1 << STATUS;
        let mut config = [0u8; CONFIG_LEN];
        if let Some(mac) = cfg.mac {
            features |= 1 << MAC;
            config[MAC_AT..MAC_AT + 6].copy_from_slice(&mac);
        }
        config[STATUS_AT..STATUS_AT + 2].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        config[PAIRS_AT..PAIRS_AT + 2].copy_from_slice(&1u16.to_le_bytes());
        if let Some(mtu) = cfg.mtu {
            features |= 1 << MTU;
            config[MTU_AT..MTU_AT + 2].copy_from_slice(&mtu.to_le_bytes());
        }
        Ok(Self {
            id: cfg.id.clone(),
            tap: Some(tap),
            mmds,
            running: None,
            features,
            config,
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
            counters: Arc::new(NetCounters::default()),
            pause: Arc::new(DevicePause::new()?),
        })
    }

    /// The switch that pauses this device's thread.
    pub fn pause_handle(&self) -> Arc<DevicePause> {
        self.pause.clone()
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }
}

/// The offloads the tap may use towards a guest that accepted `acked` features.
fn tap_offloads(acked: u64) -> u32 {
    use features::*;
    let has = |bit: u32| acked & (1 << bit) != 0;
    let mut flags = 0;
    if has(GUEST_CSUM) {
        flags |= tap::TUN_F_CSUM;
        if has(GUEST_TSO4) {
            flags |= tap::TUN_F_TSO4;
        }
        if has(GUEST_TSO6) {
            flags |= tap::TUN_F_TSO6;
        }
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The MAC is writable only with the legacy interface; modern drivers use the
        // control queue, which is not offered.
        log::debug!("net {}: config write at {offset:#x} ignored", self.id);
    }

    fn activate(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        if self.running.is_some() || a.queues.len() != 2 || a.queue_evts.len() != 2 {
            return Err(ActivateError::BadState);
        }
        for (i, q) in a.queues.iter().enumerate() {
            if !virtio_queue::QueueT::is_valid(q, a.mem.as_ref()) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        let tap = self.tap.take().ok_or(ActivateError::BadState)?;
        if let Err(e) = tap.set_offload(tap_offloads(a.acked_features)) {
            log::warn!("net {}: {e}", self.id);
        }
        let tx = a.queues.pop().ok_or(ActivateError::QueueNotReady(TX))?;
        let rx = a.queues.pop().ok_or(ActivateError::QueueNotReady(RX))?;
        let tx_evt = a.queue_evts.pop().ok_or(ActivateError::QueueNotReady(TX))?;
        let rx_evt = a.queue_evts.pop().ok_or(ActivateError::QueueNotReady(RX))?;
        let mergeable = a.acked_features & (1 << features::MRG_RXBUF) != 0;
        let engine =
            Engine::new(tap, rx, tx, mergeable, self.counters.clone()).with_mmds(self.mmds.take());
        let (mem, interrupt) = (a.mem, a.interrupt);
        let pause = self.pause.clone();
        self.running = Some(DeviceThread::spawn(
            format!("net-{}", self.id),
            seccomp::ThreadKind::Net,
            move |stop| {
                pause.attach();
                let tap = Worker {
                    engine,
                    mem,
                    interrupt,
                    rx_evt,
                    tx_evt,
                    stop,
                    pause: pause.clone(),
                }
                .run();
                pause.detach();
                tap
            },
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(running) = self.running.take() {
            match running.stop() {
                Some((tap, mmds)) => {
                    self.tap = Some(tap);
                    self.mmds = mmds;
                }
                None => self.tap = None,
            }
            if self.tap.is_none() {
                log::error!("net {}: worker lost; device unusable", self.id);
            }
        }
    }
}

struct Worker {
    engine: Engine<Tap>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    rx_evt: EventFd,
    tx_evt: EventFd,
    stop: EventFd,
    pause: Arc<DevicePause>,
}

/// The net thread's own event sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Tap,
    RxQueue,
    TxQueue,
    MmdsTimer,
}

impl Worker {
    fn run(self) -> (Tap, Option<MmdsPort>) {
        let Worker {
            mut engine,
            mem,
            interrupt,
            rx_evt,
            tx_evt,
            stop,
            pause,
        } = self;
        let served = DeviceEvents::new(stop, pause)
            .map_err(|e| e.to_string())
            .and_then(|mut events| {
                serve(&mut engine, &mem, &interrupt, &rx_evt, &tx_evt, &mut events)
            });
        if let Err(e) = served {
            // The thread ends here; the reset's join takes the tap back.
            log::error!("net: {e}; the device needs a reset");
            interrupt.fail();
        }
        engine.into_parts()
    }
}

/// The event loop; returns `Ok` on stop, `Err` when the queues are broken.
fn serve(
    engine: &mut Engine<Tap>,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    rx_evt: &EventFd,
    tx_evt: &EventFd,
    events: &mut DeviceEvents<Source>,
) -> Result<(), String> {
    let tap_fd = engine.io().fd();
    let err = |e: EventLoopError| e.to_string();
    events
        .add(&tap_fd, Source::Tap, EventSet::IN)
        .map_err(err)?;
    events
        .add(rx_evt, Source::RxQueue, EventSet::IN)
        .map_err(err)?;
    events
        .add(tx_evt, Source::TxQueue, EventSet::IN)
        .map_err(err)?;
    if let Some(port) = engine.mmds() {
        events
            .add(port.timer(), Source::MmdsTimer, EventSet::IN)
            .map_err(err)?;
    }

    // What the tap is polled for: input unless a frame waits for buffers, output while
    // the tap refuses frames.
    let mut want_in = true;
    let mut want_out = false;
    // Buffers posted before activation are served at once.
    let mut do_rx = true;
    let mut do_tx = true;
    loop {
        // Paused: leave the queues, guest memory and the tap alone; what was due is
        // done after resume (do_rx/do_tx stay set).
        let paused = events.paused_with(|| engine.queue_states());
        if do_tx && !paused {
            do_tx = false;
            let (state, irq) = engine.process_tx(mem).map_err(|e| e.to_string())?;
            want_out = state == TxState::TapFull;
            if irq {
                interrupt.trigger(super::InterruptKind::Vring);
            }
        }
        // What MMDS answered (or retransmits) goes out with the receive pass.
        if engine.mmds().is_some_and(|p| p.has_frames()) {
            do_rx = true;
        }
        if do_rx && !paused {
            do_rx = false;
            let (state, irq) = engine.process_rx(mem).map_err(|e| e.to_string())?;
            want_in = state == RxState::TapEmpty;
            if state == RxState::TapGone {
                log::warn!("net: the tap stopped working; no more frames will be received");
            }
            if irq {
                interrupt.trigger(super::InterruptKind::Vring);
            }
        }
        let mut set = EventSet::empty();
        if want_in && !paused {
            set |= EventSet::IN;
        }
        if want_out && !paused {
            set |= EventSet::OUT;
        }
        events.modify(&tap_fd, Source::Tap, set).map_err(err)?;
        if let Some(port) = engine.mmds() {
            port.arm();
        }
        let flow = events
            .wait(|source, ready| match source {
                Source::RxQueue => {
                    let _ = rx_evt.read();
                    do_rx = true;
                }
                Source::TxQueue => {
                    let _ = tx_evt.read();
                    do_tx = true;
                }
                Source::Tap => {
                    if ready.contains(EventSet::OUT) {
                        do_tx = true;
                    }
                    if ready.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                        do_rx = true;
                    }
                }
                // Its timeouts touch only its own state, never guest memory: they run
                // even while paused (which also drains the timer).
                Source::MmdsTimer => {
                    if let Some(port) = engine.mmds() {
                        port.on_timer();
                    }
                }
            })
            .map_err(err)?;
        if flow == Flow::Stop {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
