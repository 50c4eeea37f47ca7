//! Snapshots: a paused VM's state and memory to files (`PUT /snapshot/create`), and a new
//! VM made from them (`PUT /snapshot/load`).
//!
//! - [`file`]: the state file's format (magic, version, CRC-64) and its atomic write.
//! - [`memory`]: guest RAM to the memory file (sparse; Full or only dirty pages).
//!
//! What is saved is everything the guest can observe: each vCPU's KVM state (saved on its
//! own thread), the VM's interrupt controllers and clocks, every virtio transport with
//! where its device had got to in the rings, the UART, the i8042 and the RTC, and the
//! configuration (the API's own `VmConfig`), from which a restore rebuilds the same devices
//! at the same addresses and interrupt lines before putting the saved state in them.

pub mod file;
pub mod memory;

use crate::builder::Runtime;
use crate::vstate::vm::VmError;
use devices::i8042::I8042Snapshot;
use devices::rtc::RtcSnapshot;
use devices::serial::SerialSnapshot;
use devices::virtio::mmio::TransportState;
use model::snapshot::{SnapshotCreateParams, SnapshotLoadParams, SnapshotType};
use model::VmConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Most time a vCPU's thread may take to save its state.
const VCPU_SAVE_WITHIN: Duration = Duration::from_secs(2);

/// Why a snapshot could not be made or loaded.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The state file.
    #[error(transparent)]
    File(#[from] file::FileError),
    /// KVM's VM-wide state.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU's state.
    #[error("vcpu {0}: {1}")]
    Vcpu(usize, String),
    /// The memory file.
    #[error("memory file {0}: {1}")]
    Memory(String, std::io::Error),
    /// A Diff without dirty page tracking.
    #[error("a Diff snapshot needs track_dirty_pages (machine-config, or snapshot/load)")]
    NoDirtyLog,
    /// The snapshot's content does not fit (its configuration, its memory, its devices).
    #[error("{0}")]
    Invalid(String),
}

/// A VM's whole saved state: what the state file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct MicrovmState {
    /// The configuration as `GET /vm/config` shows it, as JSON (it is the API's type and
    /// carries serde attributes for JSON only).
    pub config: String,
    /// Guest RAM regions `(guest address, length)`, in the memory file's order.
    pub memory: Vec<(u64, u64)>,
    /// Each vCPU, in index order.
    pub vcpus: Vec<arch::state::VcpuState>,
    /// The interrupt controllers and clocks.
    pub vm: arch::state::VmState,
    /// Each virtio device's transport, in attachment order.
    pub virtio: Vec<TransportState>,
    /// The UART.
    pub serial: SerialSnapshot,
    /// The i8042 (x86_64).
    pub i8042: Option<I8042Snapshot>,
    /// The RTC (aarch64).
    pub rtc: Option<RtcSnapshot>,
}

/// What a snapshot cost, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// Bytes of guest memory written (zero pages and clean pages are not).
    pub memory_bytes: u64,
    /// Size of the state file.
    pub state_bytes: usize,
}

/// Saves the paused VM behind `rt` with configuration `config`: memory first, then the
/// state file (written atomically), so a state file always has its memory.
pub fn create(
    rt: &Runtime,
    config: &VmConfig,
    params: &SnapshotCreateParams,
) -> Result<Written, SnapshotError> {
    let diff = params.snapshot_type == SnapshotType::Diff;
    refuse_mapped_file(rt, &params.mem_file_path)?;
    if diff && !rt.vm.tracks_dirty_pages() {
        return Err(SnapshotError::NoDirtyLog);
    }
    let mut vcpus = Vec::with_capacity(rt.vcpus.len());
    for (i, v) in rt.vcpus.iter().enumerate() {
        vcpus.push(
            v.save_state(VCPU_SAVE_WITHIN)
                .map_err(|e| SnapshotError::Vcpu(i, e))?,
        );
    }
    let vm = rt.vm.save_state(&rt.irqchip, &vcpus)?;
    let virtio = rt
        .transports
        .iter()
        .map(|(t, pause)| {
            let parked = pause.parked_queues();
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .save(parked.as_deref())
        })
        .collect();
    let lock = |m: &std::sync::Mutex<devices::serial::SerialDevice>| {
        m.lock().unwrap_or_else(|p| p.into_inner()).snapshot()
    };
    let state = MicrovmState {
        config: serde_json::to_string(config)
            .map_err(|e| SnapshotError::Invalid(format!("the configuration: {e}")))?,
        memory: rt.mem.iter().map(|r| (r.start_addr().0, r.len())).collect(),
        vcpus,
        vm,
        virtio,
        serial: lock(&rt.serial),
        i8042: rt
            .i8042
            .as_ref()
            .map(|d| d.lock().unwrap_or_else(|p| p.into_inner()).snapshot()),
        rtc: rt
            .rtc
            .as_ref()
            .map(|d| d.lock().unwrap_or_else(|p| p.into_inner()).snapshot()),
    };
    let mem_path = Path::new(&params.mem_file_path);
    let io = |e| SnapshotError::Memory(params.mem_file_path.clone(), e);
    // KVM's log is read (and cleared) for both kinds: a Full snapshot is the base the
    // next Diff applies to.
    let dirty = if rt.vm.tracks_dirty_pages() {
        Some(dirty_bitmaps(rt)?)
    } else {
        None
    };
    let pages = match (&dirty, diff) {
        (Some(maps), true) => memory::Pages::Dirty(maps),
        _ => memory::Pages::All,
    };
    let memory_bytes = memory::write(&rt.mem, mem_path, pages).map_err(io)?;
    let bytes = file::encode(&state)?;
    file::write_atomically(Path::new(&params.snapshot_path), &bytes)?;
    Ok(Written {
        memory_bytes,
        state_bytes: bytes.len(),
    })
}

/// Writing into the file guest RAM is mapped from would change the memory of this guest
/// (truncating it: SIGBUS on its next touch of a page it has not written) and of every
/// clone mapping it. Refused before anything is saved.
fn refuse_mapped_file(rt: &Runtime, path: &str) -> Result<(), SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let Some(mapped) = rt.mem_file else {
        return Ok(());
    };
    match std::fs::metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == mapped => Err(SnapshotError::Invalid(format!(
            "mem_file_path {path} is the file this VM's memory is mapped from: write the snapshot to another file"
        ))),
        _ => Ok(()),
    }
}

/// Per memory region, the pages written since the last call: KVM's dirty log (the
/// guest's writes) together with the pages the devices wrote (vm-memory's bitmap).
fn dirty_bitmaps(rt: &Runtime) -> Result<Vec<Vec<u64>>, SnapshotError> {
    let mut out = Vec::new();
    for (slot, region) in rt.mem.iter().enumerate() {
        let len = usize::try_from(region.len())
            .map_err(|_| SnapshotError::Invalid("a memory region does not fit usize".into()))?;
        let slot = u32::try_from(slot)
            .map_err(|_| SnapshotError::Invalid("too many memory slots".into()))?;
        let mut bits = rt.vm.dirty_log(slot, len)?;
        crate::memory::take_device_dirty(region, &mut bits);
        out.push(bits);
    }
    Ok(out)
}

/// A load request read and checked: the configuration to build, the state to put in it,
/// and the memory file to map.
pub struct Loaded {
    /// The saved configuration, with the request's network overrides applied.
    pub config: VmConfig,
    /// The saved state.
    pub state: MicrovmState,
    /// The memory file, its size checked against the saved RAM.
    pub mem_file: std::fs::File,
}

/// Reads the snapshot a load request names and checks it against its memory file.
pub fn load(params: &SnapshotLoadParams) -> Result<Loaded, SnapshotError> {
    let mem_path = params
        .mem_file()
        .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    let state: MicrovmState = file::read(Path::new(&params.snapshot_path))?;
    let mut config: VmConfig = model::from_json(state.config.as_bytes()).map_err(|e| {
        SnapshotError::Invalid(format!("{}: its configuration: {e}", params.snapshot_path))
    })?;
    for o in &params.network_overrides {
        let Some(iface) = config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
        else {
            return Err(SnapshotError::Invalid(format!(
                "network_overrides: the snapshot has no interface {:?}",
                o.iface_id
            )));
        };
        iface.host_dev_name = o.host_dev_name.clone();
    }
    if let Some(m) = config.machine_config.as_mut() {
        m.track_dirty_pages = params.dirty_pages();
    } else if params.dirty_pages() {
        config.machine_config = Some(model::MachineConfig {
            track_dirty_pages: true,
            ..Default::default()
        });
    }
    let ram: u64 = state.memory.iter().map(|(_, len)| len).sum();
    let mem_file = memory::open(Path::new(mem_path), ram).map_err(SnapshotError::Invalid)?;
    Ok(Loaded {
        config,
        state,
        mem_file,
    })
}
