//! Builds a running microVM from validated resources: memory, kernel, boot structures,
//! legacy devices on the port bus, vCPUs. Each step's failure is an error naming it.

use crate::console_input::ConsoleInput;
use crate::device_manager::{DeviceManagerError, MmioDeviceManager};
use crate::event_loop::{self, ExitWatcher, GuestEnd, SubscriberOps};
use crate::memory::{self, MemoryError};
use crate::metrics::{CountingWriter, Sources};
use crate::snapshot::MicrovmState;
use crate::vstate::vcpu::{FirstRunHook, StopNotifier, Vcpu, VcpuControl, VcpuError};
use crate::vstate::vm::{Vm, VmError};
use arch::boot::{self, BootError};
use arch::layout::CMDLINE_MAX_SIZE;
use arch::BootSetup;
use arch::{DeviceBus, DevicePlace};
use devices::i8042::I8042;
use devices::rtc::RtcDevice;
use devices::serial::SerialDevice;
use devices::virtio::balloon::{Balloon, BalloonControl};
use devices::virtio::block::{Block, CacheType, DiskError, DiskFile, DiskSwap};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{MmdsPort, Net, NetConfig, Tap, TapError};
use devices::virtio::rng::Entropy;
use devices::virtio::vsock::Vsock;
use devices::virtio::{DevicePause, GuestMemory};
use devices::{Bus, BusError};
use linux_loader::cmdline::Cmdline;
use model::drive::{self as drive_config, DriveSpec};
use model::VmResources;
use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

/// Errors building or running the VM.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The kernel file cannot be opened.
    #[error("cannot open kernel image {0}: {1}")]
    KernelOpen(PathBuf, std::io::Error),
    /// The kernel file is not a loadable kernel.
    #[error("kernel image {0}: {1}")]
    Kernel(PathBuf, BootError),
    /// The initrd cannot be opened.
    #[error("cannot open initrd {0}: {1}")]
    InitrdOpen(PathBuf, std::io::Error),
    /// The initrd cannot be loaded.
    #[error("initrd {0}: {1}")]
    Initrd(PathBuf, BootError),
    /// The command line is too long or malformed.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// A drive's backing file is unusable.
    #[error("drive {id:?} ({path}): {source}")]
    Drive {
        /// The drive id.
        id: String,
        /// Its backing file.
        path: PathBuf,
        /// What is wrong with it.
        source: DiskError,
    },
    /// A network interface's tap cannot be used.
    #[error("network interface {id:?}: {source}")]
    Tap {
        /// The interface id.
        id: String,
        /// What is wrong.
        source: TapError,
    },
    /// The vsock device's socket cannot be bound.
    #[error("vsock: cannot listen on {0}: {1}")]
    Vsock(PathBuf, std::io::Error),
    /// A device could not be attached.
    #[error(transparent)]
    Device(#[from] DeviceManagerError),
    /// KVM setup failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory could not be allocated.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Boot structures could not be written.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Device placement failed.
    #[error("device setup: {0}")]
    Bus(#[from] BusError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// The serial output file cannot be opened.
    #[error("cannot open serial output {0}: {1}")]
    SerialOut(PathBuf, std::io::Error),
    /// The event loop failed.
    #[error("{0}")]
    EventLoop(String),
    /// The guest could not be run.
    #[error("{0}")]
    GuestFailed(String),
    /// The snapshot does not fit its configuration or this host.
    #[error("snapshot: {0}")]
    Restore(String),
    /// KVM on this host runs fewer vCPUs per VM than configured.
    #[error("vcpu_count {asked} is more than KVM on this host runs in one VM ({max}; an aarch64 host with a GICv2 runs at most 8)")]
    TooManyVcpus {
        /// vCPUs configured.
        asked: u8,
        /// KVM's limit.
        max: u32,
    },
}

/// Options that are about this process rather than the guest.
#[derive(Default)]
pub struct RunOptions {
    /// Called on the boot vCPU's thread right before its first KVM_RUN.
    pub on_first_run: Option<FirstRunHook>,
    /// Where the guest's console input comes from (ember passes its stdin).
    pub console_input: Option<File>,
    /// MMDS's data, served by the interfaces `mmds-config` names.
    pub mmds: Arc<Mutex<mmds::MmdsStore>>,
}

/// Puts a platform device on the bus its architecture gives it.
fn place(
    pio: &mut Bus,
    mmio: &mut Bus,
    dev: Arc<Mutex<dyn devices::BusDevice>>,
    at: DevicePlace,
) -> Result<(), BusError> {
    let bus = match at.bus {
        DeviceBus::Pio => pio,
        DeviceBus::Mmio => mmio,
    };
    bus.insert(dev, at.base, at.len)
}

/// Opens a boot file, refusing directories and devices (a directory opens fine on Linux
/// and would only fail later, obscurely).
fn open_regular(path: &Path) -> Result<File, std::io::Error> {
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

fn serial_output(res: &VmResources) -> Result<Box<dyn Write + Send>, BuildError> {
    match &res.serial_out_path {
        None => Ok(Box::new(std::io::stdout())),
        Some(p) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| BuildError::SerialOut(p.clone(), e))?;
            Ok(Box::new(LineWriter::new(f)))
        }
    }
}

/// Opens every drive's file before any KVM work, so a bad path is reported first.
/// The device's caching mode for the configuration's `cache_type`.
pub fn cache_type(c: model::CacheType) -> CacheType {
    match c {
        model::CacheType::Unsafe => CacheType::Unsafe,
        model::CacheType::Writeback => CacheType::Writeback,
    }
}

fn open_drives(drives: &[DriveSpec]) -> Result<Vec<DiskFile>, BuildError> {
    drives
        .iter()
        .map(|d| {
            DiskFile::open(&d.path, d.read_only, cache_type(d.cache)).map_err(|source| {
                BuildError::Drive {
                    id: d.id.clone(),
                    path: d.path.clone(),
                    source,
                }
            })
        })
        .collect()
}

/// How a VM starts: booting its kernel, or continuing from a snapshot.
pub enum Start<'a> {
    /// Load the kernel (and initrd) and enter it.
    Boot,
    /// Put the saved state in the rebuilt VM; `mem` is the snapshot's memory file.
    Restore {
        /// The saved state.
        state: &'a MicrovmState,
        /// Its memory file.
        mem: &'a File,
        /// Whether the guest runs at once (else it stays paused until resumed).
        resume: bool,
    },
}

/// What a built VM offers the API after start: pausing, metrics sources, keystrokes,
/// and what a snapshot reads.
#[derive(Clone)]
pub struct Runtime {
    /// One handle per vCPU.
    pub vcpus: Vec<Arc<VcpuControl>>,
    /// Device and vCPU counters.
    pub metrics: Sources,
    /// The keyboard controller (Ctrl-Alt-Del), where the architecture has one.
    pub i8042: Option<Arc<Mutex<I8042>>>,
    /// Each drive as configured, and where a new backing file is handed to it.
    pub drives: Vec<(DriveSpec, Arc<DiskSwap>)>,
    /// Every virtio device's pause switch.
    pub devices: Vec<Arc<DevicePause>>,
    /// The KVM VM (its interrupt controllers, clocks and dirty log).
    pub vm: Arc<Vm>,
    /// The interrupt controller's handle.
    pub irqchip: Arc<arch::vm::IrqChip>,
    /// Guest memory.
    pub mem: GuestMemory,
    /// The memory file guest RAM is mapped from (a restored VM): `(device, inode)`.
    pub mem_file: Option<(u64, u64)>,
    /// Every virtio transport with its device's pause switch, in attachment order.
    pub transports: Vec<(Arc<Mutex<MmioTransport>>, Arc<DevicePause>)>,
    /// The UART.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The RTC, where the architecture has one.
    pub rtc: Option<Arc<Mutex<RtcDevice>>>,
    /// The balloon's target, the guest's answer and its statistics.
    pub balloon: Option<Arc<BalloonControl>>,
}

/// A built, running VM.
pub struct Vmm {
    // The VM and the interrupt controller's handle (aarch64: the GIC's device fd) are
    // held in `runtime` for the guest's whole life: closing the VM fd would tear down its
    // irqfds and ioeventfds, silencing every device interrupt while the vCPUs still run.
    em: event_loop::Loop,
    watcher: Arc<Mutex<ExitWatcher>>,
    serial: Arc<Mutex<SerialDevice>>,
    runtime: Runtime,
}

impl Vmm {
    /// The handles the API uses.
    pub fn runtime(&self) -> Runtime {
        self.runtime.clone()
    }

    /// Adds something that reacts to file descriptors on the VMM thread (the API).
    pub fn add_subscriber(&mut self, s: Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>) {
        self.em.add_subscriber(s);
    }

    /// Runs the VMM thread's loop until the guest ends, and reports how.
    pub fn run_until_end(mut self) -> Result<(), BuildError> {
        let end =
            event_loop::run_until_end(&mut self.em, &self.watcher).map_err(BuildError::EventLoop);
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush();
        match end? {
            GuestEnd::Clean => Ok(()),
            GuestEnd::Failed(msg) => Err(BuildError::GuestFailed(msg)),
        }
    }
}

/// Builds the VM described by `res`, runs it until the guest ends, and reports how.
pub fn build_and_run(res: &VmResources, mut opts: RunOptions) -> Result<(), BuildError> {
    build(res, &mut opts)?.run_until_end()
}

/// Builds the VM described by `res` and starts its vCPUs. Takes the options it uses out
/// of `opts` (a failed start leaves them for the next attempt only if it failed before
/// using them).
pub fn build(res: &VmResources, opts: &mut RunOptions) -> Result<Vmm, BuildError> {
    build_with(res, opts, Start::Boot)
}

/// Builds the VM described by `res` and starts it as `start` says.
pub fn build_with(
    res: &VmResources,
    opts: &mut RunOptions,
    start: Start<'_>,
) -> Result<Vmm, BuildError> {
    let restore = match &start {
        Start::Boot => None,
        Start::Restore { state, .. } => Some(*state),
    };
    // Inputs first: a missing file is reported before any KVM work. A restored guest
    // needs no kernel.
    let mut kernel = match restore {
        Some(_) => None,
        None => Some(
            open_regular(&res.kernel_path)
                .map_err(|e| BuildError::KernelOpen(res.kernel_path.clone(), e))?,
        ),
    };
    let mut initrd = match (&res.initrd_path, restore) {
        (Some(p), None) => Some((
            p,
            open_regular(p).map_err(|e| BuildError::InitrdOpen(p.clone(), e))?,
        )),
        _ => None,
    };
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline
        .insert_str(&res.boot_args)
        .map_err(BuildError::Cmdline)?;
    let disks = open_drives(&res.drives)?;
    let taps = res
        .net
        .iter()
        .map(|n| {
            Tap::open(&n.tap).map_err(|source| BuildError::Tap {
                id: n.id.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Bound before the VM is made, so a path that is taken fails early and cheaply.
    let vsock = match &res.vsock {
        Some(v) => Some(
            Vsock::new(v.guest_cid, &v.uds_path)
                .map_err(|e| BuildError::Vsock(v.uds_path.clone(), e))?,
        ),
        None => None,
    };
    if let Some(root) = res.drives.first().filter(|d| d.is_root) {
        cmdline
            .insert_str(drive_config::root_args(root))
            .map_err(BuildError::Cmdline)?;
    }
    let serial_out = serial_output(res)?;

    let mut vm = Vm::new()?;
    log::debug!("KVM VM created");
    vm.track_dirty_pages(res.track_dirty_pages);
    let guest_mem = Arc::new(match &start {
        Start::Boot => memory::create_guest_memory(res.mem_size_mib)?,
        Start::Restore { state, mem, .. } => {
            check_layout(state, res)?;
            memory::guest_memory_from_file(res.mem_size_mib, mem)?
        }
    });
    vm.register_memory(&guest_mem)?;
    log::debug!("guest memory mapped and registered");
    let mem_size = res.mem_size_mib << 20;
    if let Some(max) = vm
        .max_vcpus()
        .filter(|max| u32::from(res.vcpu_count) > *max)
    {
        return Err(BuildError::TooManyVcpus {
            asked: res.vcpu_count,
            max,
        });
    }
    // Every vCPU exists before the interrupt controller is completed (aarch64's GIC is
    // sized by them) and before any device interrupt is wired to it.
    let vcpu_fds = (0..res.vcpu_count)
        .map(|index| vm.create_vcpu(index))
        .collect::<Result<Vec<_>, _>>()?;
    let irqchip = vm.create_irqchip(&vcpu_fds)?;

    let kernel_entry = match kernel.as_mut() {
        Some(k) => Some(
            boot::load_kernel(guest_mem.as_ref(), k, mem_size)
                .map_err(|e| BuildError::Kernel(res.kernel_path.clone(), e))?,
        ),
        None => None,
    };
    log::debug!("kernel loaded: {kernel_entry:?}");
    let initrd = match (initrd.as_mut(), &kernel_entry) {
        (Some((path, file)), Some(k)) => Some(
            boot::load_initrd(guest_mem.as_ref(), file, k.end, mem_size)
                .map_err(|e| BuildError::Initrd((*path).clone(), e))?,
        ),
        _ => None,
    };
    log::debug!("initrd loaded");
    // Virtio devices before the boot structures, which describe them.
    let mut mmio = Bus::new();
    let mut device_manager = MmioDeviceManager::new();
    let mut sources = Sources::default();
    let mut swaps = Vec::new();
    let mut device_pauses = Vec::new();
    for (spec, disk) in res.drives.iter().zip(disks) {
        let block = Block::new(&spec.id, disk).map_err(BuildError::EventFd)?;
        sources.block.push((spec.id.clone(), block.counters()));
        swaps.push((spec.clone(), block.swap_handle()));
        device_pauses.push(block.pause_handle());
        device_manager.attach(&vm, &guest_mem, &mut mmio, &mut cmdline, Box::new(block))?;
    }
    for (spec, tap) in res.net.iter().zip(taps) {
        let cfg = NetConfig {
            id: spec.id.clone(),
            mac: spec.mac,
            mtu: spec.mtu,
        };
        let port = match res
            .mmds
            .as_ref()
            .filter(|m| m.network_interfaces.contains(&spec.id))
        {
            Some(m) => {
                let version = match m.version {
                    model::MmdsVersion::V1 => mmds::Version::V1,
                    model::MmdsVersion::V2 => mmds::Version::V2,
                };
                let stack = mmds::MmdsStack::new(m.ipv4_address, opts.mmds.clone(), version);
                Some(MmdsPort::new(stack).map_err(BuildError::EventFd)?)
            }
            None => None,
        };
        let net = Net::new(&cfg, tap, port).map_err(BuildError::EventFd)?;
        device_pauses.push(net.pause_handle());
        sources.net.push((spec.id.clone(), net.counters()));
        device_manager.attach(&vm, &guest_mem, &mut mmio, &mut cmdline, Box::new(net))?;
    }
    if let Some(vsock) = vsock {
        // The guest's connections did not survive the snapshot: it is told when the
        // device restarts.
        if restore.is_some() {
            vsock.request_transport_reset();
        }
        device_pauses.push(vsock.pause_handle());
        sources.vsock = Some(vsock.counters());
        device_manager.attach(&vm, &guest_mem, &mut mmio, &mut cmdline, Box::new(vsock))?;
    }
    if res.entropy {
        let rng = Entropy::new().map_err(BuildError::EventFd)?;
        device_pauses.push(rng.pause_handle());
        sources.entropy = Some(rng.counters());
        device_manager.attach(&vm, &guest_mem, &mut mmio, &mut cmdline, Box::new(rng))?;
    }
    let mut balloon_control = None;
    if let Some(b) = &res.balloon {
        let balloon = Balloon::new(
            b.target_pages,
            b.deflate_on_oom,
            u32::from(b.stats_interval_s),
        )
        .map_err(BuildError::EventFd)?;
        device_pauses.push(balloon.pause_handle());
        balloon_control = Some(balloon.control());
        device_manager.attach(&vm, &guest_mem, &mut mmio, &mut cmdline, Box::new(balloon))?;
    }
    if let Some(kernel) = &kernel_entry {
        boot::configure_system(
            guest_mem.as_ref(),
            &BootSetup {
                kernel,
                cmdline: &cmdline,
                initrd,
                mem_size,
                vcpus: res.vcpu_count,
                virtio: device_manager.devices(),
                irqchip: &irqchip,
            },
        )?;
    }
    let transports: Vec<_> = device_manager
        .transports()
        .iter()
        .cloned()
        .zip(device_pauses.iter().cloned())
        .collect();

    // The platform's own devices, on the bus and at the lines the architecture gives them.
    let mut pio = Bus::new();
    let new_evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd);
    let serial_irq = new_evt()?;
    if let Some(irq) = arch::layout::SERIAL.irq {
        vm.register_irqfd(&serial_irq, irq)?;
    }
    let rx_drained = new_evt()?;
    let uart_out = Arc::new(AtomicU64::new(0));
    sources.uart_out = Some(uart_out.clone());
    let serial_out: Box<dyn Write + Send> = Box::new(CountingWriter::new(serial_out, uart_out));
    let rx_evt = rx_drained.try_clone().map_err(BuildError::EventFd)?;
    let serial = Arc::new(Mutex::new(match restore {
        Some(state) => SerialDevice::from_snapshot(&state.serial, serial_irq, serial_out, rx_evt)
            .map_err(BuildError::Restore)?,
        None => SerialDevice::new(serial_irq, serial_out, rx_evt),
    }));
    place(&mut pio, &mut mmio, serial.clone(), arch::layout::SERIAL)?;
    let reset_evt = new_evt()?;
    let i8042 = match arch::layout::I8042 {
        Some(at) => {
            let mut dev = I8042::new(reset_evt.try_clone().map_err(BuildError::EventFd)?);
            if let Some(irq) = at.irq {
                let kbd_irq = new_evt()?;
                vm.register_irqfd(&kbd_irq, irq)?;
                dev = dev.with_keyboard_irq(kbd_irq);
            }
            if let Some(saved) = restore.and_then(|s| s.i8042.as_ref()) {
                dev.restore(saved);
            }
            let dev = Arc::new(Mutex::new(dev));
            place(&mut pio, &mut mmio, dev.clone(), at)?;
            Some(dev)
        }
        None => None,
    };
    let rtc = match arch::layout::RTC {
        Some(at) => {
            let dev = match restore.and_then(|s| s.rtc.as_ref()) {
                Some(saved) => RtcDevice::from_snapshot(saved),
                None => RtcDevice::new(),
            };
            let dev = Arc::new(Mutex::new(dev));
            place(&mut pio, &mut mmio, dev.clone(), at)?;
            Some(dev)
        }
        None => None,
    };
    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);

    // The event loop must exist before the vCPUs can report to it.
    let stop_evt = Arc::new(new_evt()?);
    let (tx, rx) = mpsc::channel();
    let watcher = Arc::new(Mutex::new(ExitWatcher::new(
        reset_evt,
        stop_evt.clone(),
        rx,
    )));
    let mut em = event_loop::Loop::new().map_err(|e| BuildError::EventLoop(format!("{e:?}")))?;
    em.add_subscriber(watcher.clone());
    if let Some(input) = opts.console_input.take() {
        em.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
            serial.clone(),
            input,
            rx_drained,
        ))));
    }

    let mut vcpus = Vec::with_capacity(vcpu_fds.len());
    for (index, fd) in (0..res.vcpu_count).zip(vcpu_fds) {
        let vcpu = Vcpu::new(
            index,
            fd,
            pio.clone(),
            mmio.clone(),
            guest_mem.clone(),
            StopNotifier::new(tx.clone(), stop_evt.clone()),
            &vm,
        );
        match (&kernel_entry, restore) {
            (Some(kernel), _) => vcpu.configure(&vm, res.vcpu_count, kernel, mem_size)?,
            (None, Some(state)) => {
                let saved = state.vcpus.get(usize::from(index)).ok_or_else(|| {
                    BuildError::Restore(format!("no saved state for vCPU {index}"))
                })?;
                vcpu.restore(&vm, saved)?;
            }
            (None, None) => return Err(BuildError::Restore("nothing to start from".into())),
        }
        if matches!(start, Start::Restore { resume: false, .. }) {
            vcpu.control().start_paused();
        }
        vcpus.push(vcpu);
    }
    if let Some(state) = restore {
        // After every vCPU: aarch64's redistributors belong to them.
        vm.restore_state(&irqchip, &state.vcpus, &state.vm)?;
        // The devices last: a load that fails before here has started no device thread,
        // so the process is as it was and can be configured or loaded again.
        restore_virtio(
            state,
            &transports,
            matches!(start, Start::Restore { resume: false, .. }),
        )?;
    }
    if let (Some(hook), Some(boot_vcpu)) = (opts.on_first_run.take(), vcpus.first_mut()) {
        boot_vcpu.on_first_run(hook);
    }
    sources.vcpus = vcpus.iter().map(Vcpu::control).collect();
    for vcpu in vcpus {
        // Never joined: the process ends with the guest. Each thread's JoinHandle stays in
        // its VcpuControl, for kicks and its CPU clock.
        vcpu.start()?;
    }
    Ok(Vmm {
        em,
        watcher,
        serial: serial.clone(),
        runtime: Runtime {
            vcpus: sources.vcpus.clone(),
            metrics: sources,
            i8042,
            drives: swaps,
            devices: device_pauses,
            vm: Arc::new(vm),
            irqchip: Arc::new(irqchip),
            mem: guest_mem,
            mem_file: match &start {
                Start::Restore { mem, .. } => {
                    use std::os::unix::fs::MetadataExt;
                    mem.metadata().ok().map(|m| (m.dev(), m.ino()))
                }
                Start::Boot => None,
            },
            transports,
            serial,
            rtc,
            balloon: balloon_control,
        },
    })
}

/// The snapshot's memory layout and vCPU count must be what its configuration builds.
fn check_layout(state: &MicrovmState, res: &VmResources) -> Result<(), BuildError> {
    let expected: Vec<(u64, u64)> = arch::layout::ram_regions(res.mem_size_mib << 20)
        .unwrap_or_default()
        .into_iter()
        .map(|(a, len)| (a.0, len))
        .collect();
    if state.memory != expected {
        return Err(BuildError::Restore(format!(
            "its memory regions {:x?} are not those of a {} MiB guest ({expected:x?})",
            state.memory, res.mem_size_mib
        )));
    }
    if state.vcpus.len() != usize::from(res.vcpu_count) {
        return Err(BuildError::Restore(format!(
            "it has {} vCPU states for vcpu_count {}",
            state.vcpus.len(),
            res.vcpu_count
        )));
    }
    let devices = res.drives.len()
        + res.net.len()
        + usize::from(res.vsock.is_some())
        + usize::from(res.entropy)
        + usize::from(res.balloon.is_some());
    if state.virtio.len() != devices {
        return Err(BuildError::Restore(format!(
            "it has {} virtio devices, its configuration {devices}",
            state.virtio.len(),
        )));
    }
    Ok(())
}

/// Puts each transport in its saved state, restarting the devices that ran; those of a
/// guest that stays paused are paused before their threads start.
fn restore_virtio(
    state: &MicrovmState,
    transports: &[(Arc<Mutex<MmioTransport>>, Arc<DevicePause>)],
    paused: bool,
) -> Result<(), BuildError> {
    for (i, ((t, pause), saved)) in transports.iter().zip(&state.virtio).enumerate() {
        if paused {
            // No thread runs yet: this only sets the switch, which the thread obeys from
            // its first pass.
            pause.pause(std::time::Duration::ZERO);
        }
        t.lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(saved)
            .map_err(|e| BuildError::Restore(format!("virtio device {i}: {e}")))?;
    }
    Ok(())
}
