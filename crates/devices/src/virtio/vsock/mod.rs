//! virtio-vsock (virtio 1.2, 5.10) on host Unix sockets, as Firecracker's backend: a
//! host client connects to the listener at `uds_path` and writes `CONNECT <port>\n` to
//! reach guest port `port`; a guest connecting to host port P reaches the listener at
//! `<uds_path>_P`. Three queues (receive, transmit, event) served by one thread.
//!
//! Files: [`packet`] the header and chains, [`conn`] one connection, [`muxer`] all of
//! them and the listener, [`sock`] the socket system calls; this file the device and its
//! thread.

pub mod conn;
pub mod muxer;
pub mod packet;
pub mod sock;

use super::event_loop::{DeviceEvents, Flow};
use super::{
    read_config_bytes, ActivateError, Activation, DevicePause, DeviceThread, GuestMemoryMmap,
    Interrupt, InterruptKind, VirtioDevice, F_EVENT_IDX, F_VERSION_1, TYPE_VSOCK,
};
use muxer::{Backend, Muxer, MuxerError, Source};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EV: usize = 2;
/// How long a host client has to send its line, and the guest to answer its REQUEST.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// The event queue's only event (virtio 1.2, 5.10.6.5): the guest must drop every
/// connection.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Exact counters of the device's traffic, for metrics.
#[derive(Debug, Default)]
pub struct VsockCounters {
    /// Packets delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Packets taken from the guest (valid ones).
    pub tx_packets: AtomicU64,
    /// Payload bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// Payload bytes taken from the guest.
    pub tx_bytes: AtomicU64,
    /// Connections set up (either side's request).
    pub conns_added: AtomicU64,
    /// Connections reset for an error: a failed host stream, a guest over its credit, an
    /// unanswered request, a protocol violation.
    pub conns_killed: AtomicU64,
    /// RSTs delivered to the guest.
    pub rst_sent: AtomicU64,
    /// Malformed chains and packets (dropped, or returned unused).
    pub invalid_packets: AtomicU64,
}

/// A virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    /// The listener file as bound: removed on drop only if it is still ours.
    bound: (u64, u64),
    handshake: Duration,
    /// Present while no thread runs.
    backend: Option<Backend>,
    running: Option<DeviceThread<Backend>>,
    config: [u8; 8],
    queue_sizes: [u16; 3],
    counters: Arc<VsockCounters>,
    pause: Arc<DevicePause>,
    transport_reset: Arc<AtomicBool>,
}

impl Vsock {
    /// Binds the host-side listener at `uds_path` (fails if the path exists: the caller
    /// reports it), mode 0600. `guest_cid` must be at least 3 (0-2 are reserved).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        if guest_cid < 3 || guest_cid > u64::from(u32::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("guest CID {guest_cid} is reserved or out of range"),
            ));
        }
        let timer = TimerFd::new()?;
        // The thread reads the timer when epoll says so; non-blocking, so a timer re-armed
        // in between cannot stall it.
        // SAFETY: fcntl() on a descriptor we own takes no pointers; the result is checked.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let pause = Arc::new(DevicePause::new()?);
        let listener = sock::listen(uds_path)?;
        let meta = std::fs::symlink_metadata(uds_path)?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            bound: (meta.dev(), meta.ino()),
            handshake: HANDSHAKE_TIMEOUT,
            backend: Some(Backend { listener, timer }),
            running: None,
            config: guest_cid.to_le_bytes(),
            queue_sizes: [QUEUE_SIZE; 3],
            counters: Arc::new(VsockCounters::default()),
            pause,
            transport_reset: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The switch that pauses this device's thread.
    pub fn pause_handle(&self) -> Arc<DevicePause> {
        self.pause.clone()
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<VsockCounters> {
        self.counters.clone()
    }

    /// After a snapshot restore: the device sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on
    /// the event queue when it is (re)activated, so the guest drops connections that no
    /// longer exist.
    pub fn request_transport_reset(&self) {
        self.transport_reset.store(true, Ordering::Release);
    }

    /// Shorter handshake deadlines, for tests.
    #[cfg(test)]
    pub(crate) fn set_handshake_timeout(&mut self, t: Duration) {
        self.handshake = t;
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
        // Firecracker leaves the file; we remove what we created, and only that.
        if let Ok(meta) = std::fs::symlink_metadata(&self.uds_path) {
            if (meta.dev(), meta.ino()) == self.bound {
                let _ = std::fs::remove_file(&self.uds_path);
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        1u64 << F_VERSION_1 | 1 << F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vsock: config write at {offset:#x} ignored (read-only)");
    }

    fn activate(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        if self.running.is_some() || a.queues.len() != 3 || a.queue_evts.len() != 3 {
            return Err(ActivateError::BadState);
        }
        for (i, q) in a.queues.iter().enumerate() {
            if !q.is_valid(a.mem.as_ref()) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        let backend = self.backend.take().ok_or(ActivateError::BadState)?;
        let ev = a.queues.pop().ok_or(ActivateError::QueueNotReady(EV))?;
        let tx = a.queues.pop().ok_or(ActivateError::QueueNotReady(TX))?;
        let rx = a.queues.pop().ok_or(ActivateError::QueueNotReady(RX))?;
        let ev_evt = a.queue_evts.pop().ok_or(ActivateError::QueueNotReady(EV))?;
        let tx_evt = a.queue_evts.pop().ok_or(ActivateError::QueueNotReady(TX))?;
        let rx_evt = a.queue_evts.pop().ok_or(ActivateError::QueueNotReady(RX))?;
        let worker = Worker {
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone(),
            handshake: self.handshake,
            mem: a.mem,
            interrupt: a.interrupt,
            evts: [rx_evt, tx_evt, ev_evt],
            counters: self.counters.clone(),
            pause: self.pause.clone(),
            transport_reset: self.transport_reset.clone(),
        };
        // If the thread cannot start, the listener is lost with the closure and the
        // device cannot be activated again (reported as BadState).
        self.running = Some(DeviceThread::spawn(
            "vsock".to_string(),
            seccomp::ThreadKind::Vsock,
            move |stop| worker.run(backend, [rx, tx, ev], stop),
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(running) = self.running.take() {
            // The thread's end closed every connection; the listener comes back.
            self.backend = running.stop();
            if self.backend.is_none() {
                log::error!("vsock: worker lost; device unusable");
            }
        }
    }
}

/// What the thread is given.
struct Worker {
    guest_cid: u64,
    uds_path: PathBuf,
    handshake: Duration,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    evts: [EventFd; 3],
    counters: Arc<VsockCounters>,
    pause: Arc<DevicePause>,
    transport_reset: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, backend: Backend, mut queues: [Queue; 3], stop: EventFd) -> Backend {
        self.pause.attach();
        let backend = match DeviceEvents::new(stop, self.pause.clone()) {
            Ok(events) => {
                let mut mux = Muxer::new(
                    self.guest_cid,
                    self.uds_path.clone(),
                    self.handshake,
                    backend,
                    events,
                    self.counters.clone(),
                );
                if let Err(e) = self.serve(&mut mux, &mut queues) {
                    log::error!("vsock: {e}; the device needs a reset");
                    self.interrupt.fail();
                }
                mux.backend
            }
            Err(e) => {
                log::error!("vsock: {e}; the device needs a reset");
                self.interrupt.fail();
                backend
            }
        };
        self.pause.detach();
        backend
    }

    /// The event loop; returns `Ok` on stop, `Err` when the queues or epoll are broken.
    fn serve(&self, mux: &mut Muxer, queues: &mut [Queue; 3]) -> Result<(), MuxerError> {
        let [rx_evt, tx_evt, ev_evt] = &self.evts;
        mux.events.add(rx_evt, Source::Rx, EventSet::IN)?;
        mux.events.add(tx_evt, Source::Tx, EventSet::IN)?;
        mux.events.add(ev_evt, Source::Ev, EventSet::IN)?;
        mux.sync_all()?;
        let mem = self.mem.as_ref();
        // Buffers posted before activation are served at once.
        let (mut do_tx, mut do_ev) = (true, true);
        let mut ready: Vec<(Source, EventSet)> = Vec::new();
        loop {
            let [rx, tx, ev] = &mut *queues;
            // Paused: the queues, guest memory and the sockets are left alone (the sockets
            // out of epoll, so they cannot wake us); what was due is done after resume.
            let paused = mux
                .events
                .paused_with(|| vec![rx.state(), tx.state(), ev.state()]);
            mux.set_quiet(paused)?;
            if !paused {
                for (source, set) in ready.drain(..) {
                    mux.on_event(source, set)?;
                }
                let mut irq = false;
                if std::mem::take(&mut do_ev) {
                    irq |= self.deliver_reset(mem, ev)?;
                }
                if std::mem::take(&mut do_tx) {
                    irq |= mux.process_tx(mem, tx)?;
                }
                // Delivering RSTs makes room for the transmit queue, whose packets may
                // owe more: until neither side moves.
                loop {
                    if mux.has_rx() {
                        irq |= mux.process_rx(mem, rx)?;
                    }
                    if !mux.tx_unblocked() {
                        break;
                    }
                    irq |= mux.process_tx(mem, tx)?;
                }
                mux.arm_timer();
                if irq {
                    self.interrupt.trigger(InterruptKind::Vring);
                }
            }
            let flow = mux.events.wait(|source, set| match source {
                Source::Rx => {
                    // Packets that wait are tried every pass; the kick only wakes us.
                    let _ = rx_evt.read();
                }
                Source::Tx => {
                    let _ = tx_evt.read();
                    do_tx = true;
                }
                Source::Ev => {
                    let _ = ev_evt.read();
                    do_ev = true;
                }
                other => ready.push((other, set)),
            });
            match flow.map_err(MuxerError::from)? {
                Flow::Continue => {}
                Flow::Stop => return Ok(()),
            }
        }
    }

    /// Writes the pending TRANSPORT_RESET into an event buffer, if one was asked for and
    /// the guest has a buffer. Returns whether to interrupt.
    fn deliver_reset(
        &self,
        mem: &GuestMemoryMmap,
        ev: &mut Queue,
    ) -> Result<bool, virtio_queue::Error> {
        let mut returned = false;
        while self.transport_reset.load(Ordering::Acquire) {
            let Some(chain) = ev.iter(mem)?.next() else {
                if ev.enable_notification(mem)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let used = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= 4 => w
                    .write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                    .map(|()| 4)
                    .unwrap_or(0),
                _ => 0,
            };
            if used == 0 {
                self.counters
                    .invalid_packets
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.transport_reset.store(false, Ordering::Release);
            }
            ev.add_used(mem, head, used)?;
            returned = true;
        }
        Ok(returned && ev.needs_notification(mem)?)
    }
}

#[cfg(test)]
mod tests;
