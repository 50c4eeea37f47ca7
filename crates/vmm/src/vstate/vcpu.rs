//! A vCPU: its boot configuration and the thread that runs it.
//!
//! The run loop only routes exits: port and MMIO accesses go to the buses (and from there
//! to devices), and exits that end the guest are reported to the VMM's event loop through
//! a channel plus an eventfd. Device work never happens here beyond a register access.

use crate::vstate::vm::Vm;
use arch::boot::KernelEntry;
use arch::regs::{self, RegsError};
use devices::Bus;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Errors configuring or starting a vCPU.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// KVM refused the CPUID table.
    #[cfg(target_arch = "x86_64")]
    #[error("vcpu {0}: KVM_SET_CPUID2 failed: {1}")]
    SetCpuid(u8, kvm_ioctls::Error),
    /// Boot registers could not be set.
    #[error("vcpu {0}: {1}")]
    Regs(u8, RegsError),
    /// The thread could not be spawned.
    #[error("vcpu {0}: cannot start its thread: {1}")]
    Spawn(u8, std::io::Error),
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
}

/// The signal that kicks a vCPU thread out of KVM_RUN so it sees a pause request.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the (empty) handler of the kick signal, without SA_RESTART so KVM_RUN returns
/// EINTR. Idempotent.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
        // is an extern "C" fn that does nothing, which is async-signal-safe.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(kick_signal(), &act, std::ptr::null_mut()) != 0 {
                log::error!(
                    "cannot install the vCPU kick handler: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// Pausing and resuming one vCPU thread from another thread, and its exit counters.
#[derive(Debug)]
pub struct VcpuControl {
    /// Mirrors "state is not Running", so the exit loop checks one atomic, not a lock.
    pausing: std::sync::atomic::AtomicBool,
    state: Mutex<RunState>,
    changed: Condvar,
    /// The running thread; `None` before it starts and once it has ended.
    thread: Mutex<Option<libc::pthread_t>>,
    /// CPU time (µs) of the thread once it has ended.
    final_cpu_us: AtomicU64,
    /// Exit counters.
    pub exits: VcpuExits,
}

impl Default for VcpuControl {
    fn default() -> Self {
        VcpuControl {
            pausing: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(RunState::Running),
            changed: Condvar::new(),
            thread: Mutex::new(None),
            final_cpu_us: AtomicU64::new(0),
            exits: VcpuExits::default(),
        }
    }
}

impl VcpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the vCPU thread between exits: parks it while a pause is requested.
    fn checkpoint(&self) {
        if !self.pausing.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.lock();
        if *st == RunState::PauseRequested {
            *st = RunState::Paused;
            self.changed.notify_all();
        }
        while *st == RunState::Paused {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn kick(&self) {
        if let Some(t) = *self.thread.lock().unwrap_or_else(|p| p.into_inner()) {
            // SAFETY: `t` is the id of this vCPU's thread, alive while it is recorded here
            // (the thread clears it under this lock before it ends); the handler is a no-op.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// CPU time the vCPU's thread has used so far (guest time included: KVM_RUN runs on
    /// it), in microseconds. What metering bills as the guest's vCPU time.
    pub fn cpu_time_us(&self) -> u64 {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        match *thread {
            Some(t) => {
                let mut clock: libc::clockid_t = 0;
                // SAFETY: `t` is a live thread (it clears itself from `thread` under this
                // lock before ending, and we hold the lock); `clock` is a valid out-pointer.
                if unsafe { libc::pthread_getcpuclockid(t, &mut clock) } != 0 {
                    return self.final_cpu_us.load(Ordering::Relaxed);
                }
                clock_us(clock).unwrap_or_else(|| self.final_cpu_us.load(Ordering::Relaxed))
            }
            None => self.final_cpu_us.load(Ordering::Relaxed),
        }
    }

    /// Called by the vCPU thread as it ends: keeps its final CPU time.
    fn thread_ending(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(us) = clock_us(libc::CLOCK_THREAD_CPUTIME_ID) {
            self.final_cpu_us.store(us, Ordering::Relaxed);
        }
        *thread = None;
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
    Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000)
}

/// Stops every vCPU in `vcpus` outside the guest; returns once all are parked or, if
/// some thread never comes back from KVM_RUN, after `within` with an error naming it.
pub fn pause_all(vcpus: &[Arc<VcpuControl>], within: Duration) -> Result<(), String> {
    for v in vcpus {
        let mut st = v.lock();
        if *st == RunState::Running {
            *st = RunState::PauseRequested;
            v.pausing.store(true, Ordering::Release);
        }
    }
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        for v in vcpus {
            if *v.lock() != RunState::Paused {
                all = false;
                // Re-sent until seen: a kick that lands just before KVM_RUN is lost.
                v.kick();
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "a vCPU did not stop within {} ms",
                within.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
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
    ) -> Self {
        Vcpu {
            index,
            fd,
            pio,
            mmio,
            _mem: mem,
            stop,
            first_run: None,
            control: Arc::default(),
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
        let cpuid = arch::cpuid::for_vcpu(vm.supported_cpuid(), self.index, vcpu_count);
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

    /// Starts the vCPU's thread.
    pub fn start(self) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        install_kick_handler();
        std::thread::Builder::new()
            .name(format!("ember_vcpu{index}"))
            .spawn(move || self.run())
            .map_err(|e| VcpuError::Spawn(index, e))
    }

    fn run(mut self) {
        // SAFETY: pthread_self has no preconditions.
        *self
            .control
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(unsafe { libc::pthread_self() });
        if let Some(hook) = self.first_run.take() {
            hook();
        }
        loop {
            self.control.checkpoint();
            if let Step::Stop(reason) = self.run_once() {
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
                return Step::Continue
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

    #[derive(Default)]
    struct PortLog(Vec<(u64, u8)>);
    impl BusDevice for PortLog {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
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
}
