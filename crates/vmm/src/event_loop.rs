//! The VMM thread's event loop. It owns everything that reacts to file descriptors:
//! today the guest's reset request and the vCPUs' stop reports; device queues join it
//! as subscribers, so device work never runs on a vCPU thread.

use crate::vstate::vcpu::{StopReason, VcpuEvent};
pub use event_manager::SubscriberOps;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEnd {
    /// The guest rebooted or powered off.
    Clean,
    /// KVM could not run the guest.
    Failed(String),
}

/// Watches for the end of the guest.
pub struct ExitWatcher {
    reset_evt: EventFd,
    stop_evt: Arc<EventFd>,
    stops: Receiver<VcpuEvent>,
    end: Option<GuestEnd>,
}

impl ExitWatcher {
    /// Ends on a write to `reset_evt` (i8042 reset) or on a vCPU stop report.
    pub fn new(reset_evt: EventFd, stop_evt: Arc<EventFd>, stops: Receiver<VcpuEvent>) -> Self {
        Self {
            reset_evt,
            stop_evt,
            stops,
            end: None,
        }
    }

    /// How the guest ended, once it has.
    pub fn end(&self) -> Option<&GuestEnd> {
        self.end.as_ref()
    }

    fn record(&mut self, end: GuestEnd) {
        // A failure outranks a clean end reported by another vCPU at the same time.
        match (&self.end, &end) {
            (Some(GuestEnd::Failed(_)), _) => {}
            _ => self.end = Some(end),
        }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            log::info!("guest requested a reset through the i8042 controller");
            self.record(GuestEnd::Clean);
        } else if events.fd() == self.stop_evt.as_raw_fd() {
            let _ = self.stop_evt.read();
            while let Ok(ev) = self.stops.try_recv() {
                match ev.reason {
                    StopReason::GuestReset => {
                        log::info!("vcpu {}: guest reset", ev.index);
                        self.record(GuestEnd::Clean)
                    }
                    StopReason::GuestShutdown => {
                        log::info!("vcpu {}: guest shut down", ev.index);
                        self.record(GuestEnd::Clean)
                    }
                    StopReason::Failed(msg) => self.record(GuestEnd::Failed(msg)),
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.reset_evt.as_raw_fd(), self.stop_evt.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch fd {fd}: {e:?}");
                self.end = Some(GuestEnd::Failed(format!(
                    "event loop: cannot watch fd {fd}: {e:?}"
                )));
            }
        }
    }
}

/// The event manager type the VMM runs.
pub type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Runs `em` until `watcher` reports the end of the guest.
pub fn run_until_end(em: &mut Loop, watcher: &Arc<Mutex<ExitWatcher>>) -> Result<GuestEnd, String> {
    loop {
        if let Some(end) = watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .end()
            .cloned()
        {
            return Ok(end);
        }
        em.run().map_err(|e| format!("event loop failed: {e:?}"))?;
    }
}
