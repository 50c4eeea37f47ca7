//! The KVM VM: opening `/dev/kvm`, checking the capabilities we rely on, creating the
//! in-kernel interrupt controllers and registering guest memory.

use devices::virtio::GuestMemoryMmap;
use kvm_bindings::kvm_userspace_memory_region;
#[cfg(target_arch = "x86_64")]
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Errors creating or configuring the VM.
#[derive(Debug, Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("unsupported KVM API version {0} (need 12)")]
    ApiVersion(i32),
    /// A capability we need is missing.
    #[error("KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
    /// The interrupt controllers KVM creates before the vCPUs could not be created.
    #[error(transparent)]
    Setup(#[from] arch::VmSetupError),
    /// The interrupt controller could not be created.
    #[error("interrupt controller: {0}")]
    IrqChip(arch::vm::IrqChipError),
    /// Saving or restoring KVM's state of the VM failed.
    #[error(transparent)]
    State(#[from] arch::state::StateError),
}

/// A KVM virtual machine and its in-kernel interrupt controller.
pub struct Vm {
    fd: VmFd,
    #[cfg(target_arch = "x86_64")]
    cpuid: arch::cpuid::CpuidSource,
    #[cfg(target_arch = "x86_64")]
    msrs: std::sync::Arc<[u32]>,
    /// Memory slots keep KVM's dirty log.
    dirty_log: bool,
}

impl Vm {
    /// Opens `/dev/kvm`, creates the VM and whatever interrupt controller must exist
    /// before its vCPUs (see [`Vm::create_irqchip`] for the rest).
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(version));
        }
        for cap in arch::vm::REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::MissingCap(*cap));
            }
        }
        #[cfg(target_arch = "x86_64")]
        let cpuid = arch::cpuid::CpuidSource {
            supported: kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(|e| VmError::Ioctl("KVM_GET_SUPPORTED_CPUID", e))?,
            // KVM's api.rst: older KVMs leave TSC-deadline out of the supported CPUID; the
            // capability says the in-kernel LAPIC emulates it.
            tsc_deadline_timer: kvm.check_extension(Cap::TscDeadlineTimer),
            host: arch::cpuid::HostCpuid::read(),
        };
        #[cfg(target_arch = "x86_64")]
        let msrs = arch::state::saveable_msrs(&kvm)?.into();
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_VM", e))?;
        arch::vm::setup_before_vcpus(&fd)?;
        Ok(Vm {
            fd,
            #[cfg(target_arch = "x86_64")]
            cpuid,
            #[cfg(target_arch = "x86_64")]
            msrs,
            dirty_log: false,
        })
    }

    /// Completes the interrupt controller once every vCPU in `vcpus` exists (aarch64's
    /// GIC is sized by them); before the first KVM_RUN. The caller keeps it for the VM's
    /// life.
    pub fn create_irqchip(&self, vcpus: &[VcpuFd]) -> Result<arch::vm::IrqChip, VmError> {
        let chip = arch::vm::create_irqchip(&self.fd, vcpus).map_err(VmError::IrqChip)?;
        log::info!("interrupt controller: {}", chip.describe());
        Ok(chip)
    }

    /// How many vCPUs KVM lets this VM have (on aarch64 hosts whose GIC is a GICv2: 8),
    /// or `None` if KVM does not say.
    pub fn max_vcpus(&self) -> Option<u32> {
        u32::try_from(self.fd.check_extension_int(Cap::MaxVcpus))
            .ok()
            .filter(|n| *n > 0)
    }

    /// The KVM VM file descriptor (vCPU setup on aarch64 asks it for the CPU target).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The MSRs a vCPU snapshot saves.
    #[cfg(target_arch = "x86_64")]
    pub fn saveable_msrs(&self) -> std::sync::Arc<[u32]> {
        self.msrs.clone()
    }

    /// Makes memory registered from now on keep KVM's dirty log (diff snapshots).
    pub fn track_dirty_pages(&mut self, on: bool) {
        self.dirty_log = on;
    }

    /// Whether the memory slots keep a dirty log.
    pub fn tracks_dirty_pages(&self) -> bool {
        self.dirty_log
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot_region = kvm_userspace_memory_region {
                slot: u32::try_from(slot).map_err(|_| {
                    VmError::Ioctl(
                        "KVM_SET_USER_MEMORY_REGION",
                        kvm_ioctls::Error::new(libc::ENOSPC),
                    )
                })?,
                flags: if self.dirty_log {
                    kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host mapping behind `region` stays alive as long as `mem`, which
            // the VMM keeps until the process exits; the slots do not overlap because the
            // regions of a GuestMemoryMmap do not.
            unsafe { self.fd.set_user_memory_region(slot_region) }
                .map_err(|e| VmError::Ioctl("KVM_SET_USER_MEMORY_REGION", e))?;
            log::debug!(
                "guest RAM slot {slot}: guest {:#x}+{:#x} at host {:#x}",
                slot_region.guest_phys_addr,
                slot_region.memory_size,
                slot_region.userspace_addr
            );
        }
        Ok(())
    }

    /// Makes a write to `evt` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| VmError::Ioctl("KVM_IRQFD", e))
    }

    /// Makes a 4-byte guest write of `datamatch` to MMIO address `addr` signal `evt`
    /// inside KVM, without a vCPU exit to userspace.
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &kvm_ioctls::IoEventAddress::Mmio(addr), datamatch)
            .map_err(|e| VmError::Ioctl("KVM_IOEVENTFD", e))
    }

    /// Creates vCPU `index`.
    pub fn create_vcpu(&self, index: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(index))
            .map_err(|e| VmError::Ioctl("KVM_CREATE_VCPU", e))
    }

    /// Saves the VM-wide state (interrupt controllers, clocks), with every vCPU paused and
    /// `vcpus` their saved states.
    pub fn save_state(
        &self,
        chip: &arch::vm::IrqChip,
        vcpus: &[arch::state::VcpuState],
    ) -> Result<arch::state::VmState, VmError> {
        Ok(arch::state::save_vm(&self.fd, chip, vcpus)?)
    }

    /// Restores the VM-wide state once every vCPU was restored.
    pub fn restore_state(
        &self,
        chip: &arch::vm::IrqChip,
        vcpus: &[arch::state::VcpuState],
        state: &arch::state::VmState,
    ) -> Result<(), VmError> {
        Ok(arch::state::restore_vm(&self.fd, chip, vcpus, state)?)
    }

    /// The pages of memory slot `slot` (`len` bytes) the guest wrote since the last call,
    /// one bit per page; clears KVM's log.
    pub fn dirty_log(&self, slot: u32, len: usize) -> Result<Vec<u64>, VmError> {
        self.fd
            .get_dirty_log(slot, len)
            .map_err(|e| VmError::Ioctl("KVM_GET_DIRTY_LOG", e))
    }

    /// What each vCPU's CPUID is derived from: KVM's supported CPUID, its TSC-deadline
    /// capability and the host's own CPUID.
    #[cfg(target_arch = "x86_64")]
    pub fn cpuid(&self) -> &arch::cpuid::CpuidSource {
        &self.cpuid
    }
}
