//! A vCPU: its boot configuration and the thread that runs it.
//!
//! The run loop only routes exits: port and MMIO accesses go to the buses (and from there
//! to devices), and exits that end the guest are reported to the VMM's event loop through
//! a channel plus an eventfd. Device work never happens here beyond a register access.

use arch::regs::{self, EntryMode, RegsError};
use devices::Bus;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Errors configuring or starting a vCPU.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// KVM refused the CPUID table.
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
        }
    }

    /// Runs `hook` just before the first KVM_RUN of this vCPU.
    pub fn on_first_run(&mut self, hook: FirstRunHook) {
        self.first_run = Some(hook);
    }

    /// Sets CPUID, MSRs, registers, FPU and LAPIC for entry at `entry` in `mode`.
    pub fn configure(
        &self,
        supported_cpuid: &kvm_bindings::CpuId,
        vcpu_count: u8,
        mode: EntryMode,
        entry: u64,
    ) -> Result<(), VcpuError> {
        let cpuid = arch::cpuid::for_vcpu(supported_cpuid, self.index, vcpu_count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetCpuid(self.index, e))?;
        regs::setup_vcpu(&self.fd, mode, entry).map_err(|e| VcpuError::Regs(self.index, e))
    }

    /// Starts the vCPU's thread.
    pub fn start(self) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("ember_vcpu{index}"))
            .spawn(move || self.run())
            .map_err(|e| VcpuError::Spawn(index, e))
    }

    fn run(mut self) {
        if let Some(hook) = self.first_run.take() {
            hook();
        }
        loop {
            if let Step::Stop(reason) = self.run_once() {
                self.stop.notify(VcpuEvent {
                    index: self.index,
                    reason,
                });
                return;
            }
        }
    }

    fn run_once(&mut self) -> Step {
        let failure = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    // Nothing there: an ISA bus floats high.
                    data.fill(0xff);
                }
                return Step::Continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                return Step::Continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                }
                return Step::Continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                return Step::Continue;
            }
            Ok(VcpuExit::Intr) => return Step::Continue,
            Ok(VcpuExit::Shutdown) => return Step::Stop(StopReason::GuestReset),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::vm::Vm;
    use devices::i8042::{I8042, I8042_LEN, I8042_PORT};
    use devices::BusDevice;
    use std::sync::{mpsc, Mutex};
    use vm_memory::{Bytes, GuestAddress};

    const CODE_AT: u64 = 0x10_0000;

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
            I8042_PORT,
            I8042_LEN,
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
        vcpu.configure(vm.supported_cpuid(), 1, EntryMode::Pvh, entry)
            .unwrap();
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
