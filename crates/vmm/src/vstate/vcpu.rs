//! A vCPU: its boot configuration and the thread that runs it.
//!
//! The run loop only routes exits: port and MMIO accesses go to the buses (and from there
//! to devices), and exits that end the guest are reported to the VMM's event loop through
//! a channel plus an eventfd. Device work never happens here beyond a register access.

use crate::vstate::vm::Vm;
use arch::boot::KernelEntry;
use arch::regs::{self, RegsError};
use devices::virtio::GuestMemoryMmap;
use devices::Bus;
use kvm_bindings::kvm_run;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{self, Killable};

/// Errors configuring or starting a vCPU.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// KVM refused the CPUID table.
    #[cfg(target_arch = "x86_64")]
    #[error("vcpu {0}: KVM_SET_CPUID2 failed: {1}")]
    SetCpuid(u8, kvm_ioctls::Error),
    /// The guest's CPUID table could not be built.
    #[cfg(target_arch = "x86_64")]
    #[error("vcpu {0}: {1}")]
    Cpuid(u8, arch::cpuid::CpuidError),
    /// Boot registers could not be set.
    #[error("vcpu {0}: {1}")]
    Regs(u8, RegsError),
    /// The thread could not be spawned.
    #[error("vcpu {0}: cannot start its thread: {1}")]
    Spawn(u8, std::io::Error),
    /// The saved state could not be restored.
    #[error("vcpu {0}: cannot restore its state: {1}")]
    Restore(u8, arch::state::StateError),
}

/// Why a vCPU stopped running the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest asked for a reset (reboot) or triple-faulted (KVM_EXIT_SHUTDOWN).
    GuestReset,
    /// The guest asked to power off, or halted with no way to be woken.
    GuestShutdown,
    /// KVM could not run the guest; the message names the cause and the registers.
    Failed(String),
}

/// A message from a vCPU thread to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuEvent {
    /// Which vCPU.
    pub index: u8,
    /// What happened.
    pub reason: StopReason,
}

/// Where a vCPU reports that it stopped.
#[derive(Clone)]
pub struct StopNotifier {
    tx: Sender<VcpuEvent>,
    evt: Arc<EventFd>,
}

impl StopNotifier {
    /// Reports on `tx` and wakes the event loop through `evt`.
    pub fn new(tx: Sender<VcpuEvent>, evt: Arc<EventFd>) -> Self {
        Self { tx, evt }
    }

    fn notify(&self, event: VcpuEvent) {
        // If the VMM is already gone there is nobody left to tell.
        let _ = self.tx.send(event);
        let _ = self.evt.write(1);
    }
}

/// Exits of one vCPU by kind, for the metrics (Firecracker's `vcpu` group).
#[derive(Debug, Default)]
pub struct VcpuExits {
    /// Port reads.
    pub exit_io_in: AtomicU64,
    /// Port writes.
    pub exit_io_out: AtomicU64,
    /// MMIO reads.
    pub exit_mmio_read: AtomicU64,
    /// MMIO writes.
    pub exit_mmio_write: AtomicU64,
    /// KVM_RUN interrupted by a signal (pause requests).
    pub exit_intr: AtomicU64,
    /// Exits that ended the guest with a failure.
    pub failures: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    PauseRequested,
    Paused,
    /// Paused, and the VMM asks the thread to save the vCPU's state (a snapshot).
    SaveRequested,
}

/// A vCPU's saved state, or why it could not be saved.
pub type SavedVcpu = Result<arch::state::VcpuState, String>;

/// The signal that kicks a vCPU thread out of KVM_RUN so it sees a pause request.
fn kick_signal() -> libc::c_int {
    signal::SIGRTMIN()
}

thread_local! {
    // The `kvm_run` of the vCPU this thread runs, for the kick handler; null on threads
    // that run no vCPU, and before and after the run loop. A `const` initialiser and no
    // destructor, so reading it from a signal handler is a plain TLS load.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick handler. It runs on the vCPU thread and sets the thread's vCPU's
/// `immediate_exit`, so a kick that lands after the thread looked at its pause request
/// but before it entered KVM_RUN still makes KVM_RUN return EINTR at once: one kick is
/// always enough. (A kick that lands inside KVM_RUN makes it return EINTR by itself.)
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if run.is_null() {
        return;
    }
    // SAFETY: a non-null KVM_RUN is this thread's vCPU's kvm_run mapping, which stays
    // mapped while it is set (the run loop clears it before the vCPU fd is dropped). The
    // signal interrupts that same thread, so nothing else writes the field meanwhile; a
    // volatile one-byte store is async-signal-safe, and KVM reads it with READ_ONCE.
    unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    // Keeps the store before whatever the interrupted code does next (KVM_RUN).
    compiler_fence(Ordering::SeqCst);
}

/// Installs the kick handler (vmm-sys-util's: SA_SIGINFO, no SA_RESTART, so KVM_RUN
/// returns EINTR). Idempotent.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = signal::register_signal_handler(kick_signal(), on_kick) {
            log::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// The vCPU's thread as the control sees it.
#[derive(Debug, Default)]
struct ThreadSlot {
    /// Set once the thread is spawned; kept (never joined: the process ends with the
    /// guest) so its `pthread_t` stays valid for kicks and its CPU clock.
    handle: Option<JoinHandle<()>>,
    /// The run loop has ended: the thread's CPU clock may no longer be read (its kernel
    /// thread id can be reused).
    ended: bool,
}

/// Pausing and resuming one vCPU thread from another thread, and its exit counters.
#[derive(Debug)]
pub struct VcpuControl {
    /// Mirrors "state is not Running", so the exit loop checks one atomic, not a lock.
    pausing: AtomicBool,
    state: Mutex<RunState>,
    changed: Condvar,
    thread: Mutex<ThreadSlot>,
    /// CPU time (µs) of the thread once it has ended.
    final_cpu_us: AtomicU64,
    /// The state the thread saved on a SaveRequested, until the VMM takes it.
    saved: Mutex<Option<SavedVcpu>>,
    /// Exit counters.
    pub exits: VcpuExits,
}

impl Default for VcpuControl {
    fn default() -> Self {
        VcpuControl {
            pausing: AtomicBool::new(false),
            state: Mutex::new(RunState::Running),
            changed: Condvar::new(),
            thread: Mutex::new(ThreadSlot::default()),
            final_cpu_us: AtomicU64::new(0),
            saved: Mutex::new(None),
            exits: VcpuExits::default(),
        }
    }
}

impl VcpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_thread(&self) -> std::sync::MutexGuard<'_, ThreadSlot> {
        self.thread.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the vCPU thread between exits: parks it while a pause is requested, and
    /// saves the vCPU's state with `save` when the VMM asks for it meanwhile.
    fn checkpoint(&self, save: &dyn Fn() -> SavedVcpu) {
        if !self.pausing.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.lock();
        if *st == RunState::PauseRequested {
            *st = RunState::Paused;
            self.changed.notify_all();
        }
        loop {
            match *st {
                RunState::Paused => st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
                RunState::SaveRequested => {
                    let saved = save();
                    *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
                    *st = RunState::Paused;
                    self.changed.notify_all();
                }
                RunState::Running | RunState::PauseRequested => return,
            }
        }
    }

    /// Makes the vCPU start parked: its thread waits at its first checkpoint, before the
    /// first KVM_RUN, until [`resume_all`] (a restored VM that is not resumed yet).
    pub fn start_paused(&self) {
        *self.lock() = RunState::Paused;
        self.pausing.store(true, Ordering::Release);
    }

    /// VMM thread, with the VM paused: has the vCPU's thread save its state, and waits
    /// for it at most `within`.
    pub fn save_state(&self, within: Duration) -> SavedVcpu {
        let mut st = self.lock();
        if *st != RunState::Paused {
            return Err("the vCPU is not paused".into());
        }
        if self.lock_thread().ended {
            return Err("the vCPU's thread has ended".into());
        }
        *st = RunState::SaveRequested;
        self.changed.notify_all();
        let deadline = Instant::now() + within;
        while *st == RunState::SaveRequested {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                *st = RunState::Paused;
                return Err(format!(
                    "its state was not saved within {} ms",
                    within.as_millis()
                ));
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Err("the vCPU's thread saved nothing".into()))
    }

    /// Sends the thread the kick signal, once: the handler's `immediate_exit` makes sure
    /// it leaves (or does not enter) KVM_RUN and reaches its checkpoint.
    fn kick(&self) {
        let slot = self.lock_thread();
        if let (Some(handle), false) = (slot.handle.as_ref(), slot.ended) {
            if let Err(e) = handle.kill(kick_signal()) {
                log::warn!("cannot kick a vCPU thread: {e}");
            }
        }
    }

    /// CPU time the vCPU's thread has used so far (guest time included: KVM_RUN runs on
    /// it), in microseconds. What metering bills as the guest's vCPU time.
    pub fn cpu_time_us(&self) -> u64 {
        let slot = self.lock_thread();
        match (slot.handle.as_ref(), slot.ended) {
            (Some(handle), false) => {
                let mut clock: libc::clockid_t = 0;
                // SAFETY: the handle is not joined, so its pthread_t is valid, and the
                // thread is still in its run loop (it sets `ended` under this lock before
                // leaving it, and we hold the lock); `clock` is a valid out-pointer.
                if unsafe { libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock) } != 0 {
                    return self.final_cpu_us.load(Ordering::Relaxed);
                }
                clock_us(clock).unwrap_or_else(|| self.final_cpu_us.load(Ordering::Relaxed))
            }
            _ => self.final_cpu_us.load(Ordering::Relaxed),
        }
    }

    /// Called by the vCPU thread as it ends: keeps its final CPU time.
    fn thread_ending(&self) {
        let mut slot = self.lock_thread();
        if let Some(us) = clock_us(libc::CLOCK_THREAD_CPUTIME_ID) {
            self.final_cpu_us.store(us, Ordering::Relaxed);
        }
        slot.ended = true;
    }
}

/// Reads `clock` in microseconds.
fn clock_us(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    // A CPU clock is never negative.
    let (secs, nanos) = (
        u64::try_from(ts.tv_sec).ok()?,
        u64::try_from(ts.tv_nsec).ok()?,
    );
    Some(secs.saturating_mul(1_000_000).saturating_add(nanos / 1000))
}

/// Stops every vCPU in `vcpus` outside the guest; returns once all are parked or, if
/// some thread never comes back from KVM_RUN, after `within` with an error naming it.
pub fn pause_all(vcpus: &[Arc<VcpuControl>], within: Duration) -> Result<(), String> {
    for v in vcpus {
        let mut st = v.lock();
        if *st == RunState::Running {
            *st = RunState::PauseRequested;
            v.pausing.store(true, Ordering::Release);
            drop(st);
            v.kick();
        }
    }
    let deadline = Instant::now() + within;
    for (index, v) in vcpus.iter().enumerate() {
        let mut st = v.lock();
        while *st != RunState::Paused {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "vCPU {index} did not stop within {} ms",
                    within.as_millis()
                ));
            }
            st = v
                .changed
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
    Ok(())
}

/// Lets every paused vCPU run the guest again.
pub fn resume_all(vcpus: &[Arc<VcpuControl>]) {
    for v in vcpus {
        let mut st = v.lock();
        *st = RunState::Running;
        v.pausing.store(false, Ordering::Release);
        v.changed.notify_all();
    }
}

/// Observes the moment the boot vCPU first enters the guest.
pub type FirstRunHook = Box<dyn FnOnce() + Send>;

/// A configured vCPU, ready to run.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    // Keeps guest memory mapped for as long as this vCPU can enter the guest, even if the
    // thread that built the VM has moved on.
    _mem: Arc<GuestMemoryMmap>,
    stop: StopNotifier,
    first_run: Option<FirstRunHook>,
    control: Arc<VcpuControl>,
    /// The MSRs a snapshot saves (KVM's saveable list).
    #[cfg(target_arch = "x86_64")]
    msrs: Arc<[u32]>,
}

enum Step {
    Continue,
    Stop(StopReason),
}

impl Vcpu {
    /// Wraps a KVM vCPU with the buses it routes exits to.
    pub fn new(
        index: u8,
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        mem: Arc<GuestMemoryMmap>,
        stop: StopNotifier,
        vm: &Vm,
    ) -> Self {
        #[cfg(target_arch = "aarch64")]
        let _ = vm;
        Vcpu {
            index,
            fd,
            pio,
            mmio,
            _mem: mem,
            stop,
            first_run: None,
            control: Arc::default(),
            #[cfg(target_arch = "x86_64")]
            msrs: vm.saveable_msrs(),
        }
    }

    /// The handle that pauses and resumes this vCPU and reads its exit counters.
    pub fn control(&self) -> Arc<VcpuControl> {
        self.control.clone()
    }

    /// Runs `hook` just before the first KVM_RUN of this vCPU.
    pub fn on_first_run(&mut self, hook: FirstRunHook) {
        self.first_run = Some(hook);
    }

    /// Puts the vCPU in its boot state for `kernel`: on x86_64 CPUID, MSRs, registers, FPU
    /// and LAPIC; on aarch64 KVM_ARM_VCPU_INIT and the boot registers.
    #[cfg(target_arch = "x86_64")]
    pub fn configure(
        &self,
        vm: &Vm,
        vcpu_count: u8,
        kernel: &KernelEntry,
        _mem_size: u64,
    ) -> Result<(), VcpuError> {
        let cpuid = vm
            .cpuid()
            .for_vcpu(self.index, vcpu_count)
            .map_err(|e| VcpuError::Cpuid(self.index, e))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetCpuid(self.index, e))?;
        regs::setup_vcpu(&self.fd, kernel.mode, kernel.entry)
            .map_err(|e| VcpuError::Regs(self.index, e))
    }

    /// Puts the vCPU in its boot state for `kernel`: on x86_64 CPUID, MSRs, registers, FPU
    /// and LAPIC; on aarch64 KVM_ARM_VCPU_INIT and the boot registers.
    #[cfg(target_arch = "aarch64")]
    pub fn configure(
        &self,
        vm: &Vm,
        _vcpu_count: u8,
        kernel: &KernelEntry,
        mem_size: u64,
    ) -> Result<(), VcpuError> {
        let fdt = arch::layout::fdt_addr(mem_size);
        regs::setup_vcpu(vm.fd(), &self.fd, self.index, kernel.entry, fdt)
            .map_err(|e| VcpuError::Regs(self.index, e))
    }

    /// Saves this vCPU's state (on its own thread, while it is out of KVM_RUN).
    #[cfg(target_arch = "x86_64")]
    fn save(&self) -> SavedVcpu {
        arch::state::save_vcpu(&self.fd, self.index, &self.msrs).map_err(|e| e.to_string())
    }

    /// Saves this vCPU's state (on its own thread, while it is out of KVM_RUN).
    #[cfg(target_arch = "aarch64")]
    fn save(&self) -> SavedVcpu {
        arch::state::save_vcpu(&self.fd).map_err(|e| e.to_string())
    }

    /// Puts the vCPU in a saved state, in place of [`Vcpu::configure`].
    pub fn restore(&self, vm: &Vm, state: &arch::state::VcpuState) -> Result<(), VcpuError> {
        arch::state::restore_vcpu(vm.fd(), &self.fd, self.index, state)
            .map_err(|e| VcpuError::Restore(self.index, e))
    }

    /// Starts the vCPU's thread. Its handle is kept in the vCPU's [`VcpuControl`], which
    /// kicks it through it.
    pub fn start(self) -> Result<(), VcpuError> {
        let index = self.index;
        let control = self.control.clone();
        install_kick_handler();
        // Held across the spawn so the handle is in place before anyone can kick.
        let mut slot = control.lock_thread();
        let handle = std::thread::Builder::new()
            .name(format!("ember_vcpu{index}"))
            .spawn(move || self.run())
            .map_err(|e| VcpuError::Spawn(index, e))?;
        slot.handle = Some(handle);
        Ok(())
    }

    fn run(mut self) {
        // Before the guest runs: every exit is guest input.
        seccomp::confine_or_exit(seccomp::ThreadKind::Vcpu);
        // From here on a kick sets this vCPU's immediate_exit. The pointer stays valid
        // until it is cleared below: `self` (and with it the fd's kvm_run mapping) lives
        // until this function returns.
        let run: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run));
        if let Some(hook) = self.first_run.take() {
            hook();
        }
        loop {
            self.control.checkpoint(&|| self.save());
            if let Step::Stop(reason) = self.run_once() {
                KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
                self.control.exits.failures.fetch_add(
                    u64::from(matches!(reason, StopReason::Failed(_))),
                    Ordering::Relaxed,
                );
                self.control.thread_ending();
                self.stop.notify(VcpuEvent {
                    index: self.index,
                    reason,
                });
                return;
            }
        }
    }

    fn run_once(&mut self) -> Step {
        let exits = &self.control.exits;
        let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
        let failure = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                count(&exits.exit_io_in);
                if !self.pio.read(u64::from(port), data) {
                    // Nothing there: an ISA bus floats high.
                    data.fill(0xff);
                }
                return Step::Continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                count(&exits.exit_io_out);
                self.pio.write(u64::from(port), data);
                return Step::Continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                count(&exits.exit_mmio_read);
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                }
                return Step::Continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                count(&exits.exit_mmio_write);
                self.mmio.write(addr, data);
                return Step::Continue;
            }
            Ok(VcpuExit::Intr) => return Step::Continue,
            Ok(VcpuExit::Shutdown) => {
                // A triple fault: how `reboot=t` resets, and how a guest that corrupted its
                // own state dies. Either way the machine resets, so ember ends as on reboot.
                log::warn!(
                    "vcpu {}: the guest triple-faulted (KVM_EXIT_SHUTDOWN); treated as a reset",
                    self.index
                );
                return Step::Stop(StopReason::GuestReset);
            }
            Ok(VcpuExit::Hlt) => return Step::Stop(StopReason::GuestShutdown),
            Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _)) => {
                return Step::Stop(StopReason::GuestReset)
            }
            Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _)) => {
                return Step::Stop(StopReason::GuestShutdown)
            }
            Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, _)) => {
                "the guest reported a crash".to_string()
            }
            Ok(VcpuExit::SystemEvent(other, _)) => format!("unexpected system event {other}"),
            Ok(VcpuExit::FailEntry(reason, cpu)) => format!(
                "KVM failed to enter the guest (hardware entry failure reason {reason:#x}, host cpu {cpu})"
            ),
            Ok(VcpuExit::InternalError) => {
                format!("KVM internal error (suberror {})", self.internal_suberror())
            }
            Ok(other) => format!("unexpected KVM exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                count(&exits.exit_intr);
                // A kick set it (or raced with an exit): the kick has been seen, and the
                // checkpoint this returns to parks the thread if a pause was asked for.
                self.fd.set_kvm_immediate_exit(0);
                return Step::Continue;
            }
            Err(e) => format!("KVM_RUN failed: {e}"),
        };
        Step::Stop(StopReason::Failed(format!(
            "vcpu {}: {failure}: {}",
            self.index,
            regs::describe(&self.fd)
        )))
    }

    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // member of the exit union; reading a u32 from it is always defined.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }
}

// The guest code here is x86 machine code.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use arch::regs::EntryMode;
    use devices::i8042::I8042;
    use devices::BusDevice;
    use std::sync::{mpsc, Mutex};
    use vm_memory::{Bytes, GuestAddress};

    const CODE_AT: u64 = 0x10_0000;
    const I8042_AT: arch::DevicePlace = match arch::layout::I8042 {
        Some(at) => at,
        None => panic!("x86_64 has an i8042"),
    };

    /// KVM, or `None` (the test is skipped, and says so) where /dev/kvm is missing or
    /// unusable, such as under qemu-user.
    fn kvm_vm() -> Option<Vm> {
        match Vm::new() {
            Ok(vm) => Some(vm),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    /// Port writes, and what port reads return.
    #[derive(Default)]
    struct PortLog(Vec<(u64, u8)>, u8);
    impl BusDevice for PortLog {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    struct Rig {
        vcpu: Vcpu,
        ports: Arc<Mutex<PortLog>>,
        reset: EventFd,
    }

    /// One vCPU in the PVH entry state (32-bit, paging off) about to run `code`.
    fn rig(vm: &Vm, code: &[u8], entry: u64) -> Rig {
        let mem = Arc::new(crate::memory::create_guest_memory(16).unwrap());
        vm.register_memory(&mem).unwrap();
        mem.write_slice(code, GuestAddress(CODE_AT)).unwrap();
        regs::setup_boot_tables(mem.as_ref(), EntryMode::Pvh).unwrap();
        let ports = Arc::new(Mutex::new(PortLog::default()));
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut pio = Bus::new();
        pio.insert(ports.clone(), 0x3f8, 8).unwrap();
        pio.insert(
            Arc::new(Mutex::new(I8042::new(reset.try_clone().unwrap()))),
            I8042_AT.base,
            I8042_AT.len,
        )
        .unwrap();
        let (tx, _rx) = mpsc::channel();
        let stop = StopNotifier::new(tx, Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let vcpu = Vcpu::new(
            0,
            vm.create_vcpu(0).unwrap(),
            Arc::new(pio),
            Arc::new(Bus::new()),
            mem,
            stop,
            vm,
        );
        let kernel = KernelEntry {
            mode: EntryMode::Pvh,
            entry,
            end: entry,
            setup_header: None,
        };
        vcpu.configure(vm, 1, &kernel, 16 << 20).unwrap();
        Rig { vcpu, ports, reset }
    }

    #[test]
    fn port_writes_reach_devices_and_the_reset_command_is_seen() {
        let Some(vm) = kvm_vm() else { return };
        // mov dx, 0x3f8; mov al, 'K'; out dx, al; mov al, 0xfe; out 0x64, al; hlt
        let code = [
            0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
        ];
        let mut r = rig(&vm, &code, CODE_AT);
        for _ in 0..16 {
            if r.reset.read().is_ok() {
                assert_eq!(r.ports.lock().unwrap().0, vec![(0, b'K')]);
                return;
            }
            if let Step::Stop(reason) = r.vcpu.run_once() {
                panic!("guest stopped before resetting: {reason:?}");
            }
        }
        panic!("the guest's reset request never arrived");
    }

    #[test]
    fn a_guest_kvm_cannot_run_is_a_failure_with_registers() {
        let Some(vm) = kvm_vm() else { return };
        // Entry in the MMIO gap, where there is no RAM to fetch instructions from.
        let mut r = rig(&vm, &[0xf4], 0xd000_0000);
        for _ in 0..16 {
            match r.vcpu.run_once() {
                Step::Continue => continue,
                Step::Stop(StopReason::Failed(msg)) => {
                    assert!(msg.starts_with("vcpu 0: "), "{msg}");
                    assert!(msg.contains("rip=0xd0000000"), "{msg}");
                    return;
                }
                Step::Stop(other) => panic!("expected a failure, got {other:?}"),
            }
        }
        panic!("KVM kept running a guest with no code");
    }

    #[test]
    fn a_kick_just_before_kvm_run_makes_it_return_at_once() {
        let Some(vm) = kvm_vm() else { return };
        // mov dx, 0x3f8; out dx, al
        let mut r = rig(&vm, &[0x66, 0xba, 0xf8, 0x03, 0xee], CODE_AT);
        install_kick_handler();
        KVM_RUN.with(|c| c.set(r.vcpu.fd.get_kvm_run()));
        // The kick lands here, outside KVM_RUN: its handler has run by the time
        // pthread_kill returns, so nothing is left pending for KVM to notice but the
        // immediate_exit the handler set.
        // SAFETY: signals this thread with the kick signal, whose handler is installed.
        unsafe { libc::pthread_kill(libc::pthread_self(), kick_signal()) };
        let first = r.vcpu.run_once();
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
        assert!(matches!(first, Step::Continue));
        assert_eq!(r.vcpu.control.exits.exit_intr.load(Ordering::Relaxed), 1);
        assert!(
            r.ports.lock().unwrap().0.is_empty(),
            "the guest did not run"
        );
        assert_eq!(
            r.vcpu.fd.get_kvm_run().immediate_exit,
            0,
            "cleared once seen"
        );
        assert!(matches!(r.vcpu.run_once(), Step::Continue));
        assert_eq!(r.ports.lock().unwrap().0.len(), 1, "then the guest runs");
    }

    #[test]
    fn one_kick_pauses_a_running_vcpu_and_resume_lets_it_run() {
        let Some(vm) = kvm_vm() else { return };
        // mov dx, 0x3f8; l: in al, dx; test al, al; jz l; mov eax, 0xd0000000; jmp eax
        // (the jump into the MMIO gap, where there is no code, ends the thread).
        let code = [
            0x66, 0xba, 0xf8, 0x03, 0xec, 0x84, 0xc0, 0x74, 0xfb, 0xb8, 0x00, 0x00, 0x00, 0xd0,
            0xff, 0xe0,
        ];
        let r = rig(&vm, &code, CODE_AT);
        let control = r.vcpu.control();
        let vcpus = [control.clone()];
        let reads = || control.exits.exit_io_in.load(Ordering::Relaxed);
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        r.vcpu.start().unwrap();
        wait_for("the guest to run", &|| reads() > 0);
        for round in 0..3 {
            pause_all(&vcpus, Duration::from_secs(5)).unwrap();
            let at_pause = reads();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                reads(),
                at_pause,
                "round {round}: a paused vCPU ran the guest"
            );
            resume_all(&vcpus);
            wait_for("the guest to run again", &|| reads() > at_pause);
        }
        r.ports.lock().unwrap().1 = 1;
        wait_for("the vCPU thread to end", &|| control.lock_thread().ended);
        assert_eq!(control.exits.failures.load(Ordering::Relaxed), 1);
        assert!(control.cpu_time_us() > 0);
    }
}
