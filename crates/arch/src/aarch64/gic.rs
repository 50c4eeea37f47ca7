//! The guest's interrupt controller: KVM's in-kernel GICv3, or GICv2 where the host has
//! no GICv3 emulation. It must be created after every vCPU exists (KVM sizes the
//! redistributors from them) and before the first KVM_RUN.

use super::layout::*;
use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};
use thiserror::Error;

/// Errors creating the GIC.
#[derive(Debug, Error)]
pub enum GicError {
    /// Neither a GICv3 nor a GICv2 could be created.
    #[error("KVM cannot create a GICv3 ({v3}) or a GICv2 ({v2})")]
    Create {
        /// Why GICv3 failed.
        v3: kvm_ioctls::Error,
        /// Why GICv2 failed.
        v2: kvm_ioctls::Error,
    },
    /// More vCPUs than a GIC is laid out for.
    #[error("{0} vCPUs: more than the GIC is laid out for")]
    TooManyVcpus(usize),
    /// KVM refused one of the GIC's settings.
    #[error("GIC setup ({0}) failed: {1}")]
    Attr(&'static str, kvm_ioctls::Error),
}

/// Which GIC the guest has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv3: distributor and per-vCPU redistributors.
    V3,
    /// GICv2: distributor and CPU interface.
    V2,
}

/// Where the GIC's register frames are, as the device tree describes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicLayout {
    /// The version.
    pub version: GicVersion,
    /// `(base, size)` pairs: distributor, then redistributors (v3) or CPU interface (v2).
    pub regions: [(u64, u64); 2],
}

impl GicLayout {
    /// The frames of a `version` GIC for `vcpus` vCPUs.
    pub fn new(version: GicVersion, vcpus: u8) -> Self {
        let regions = match version {
            GicVersion::V3 => [
                (GICV3_DIST_ADDR, GICV3_DIST_SIZE),
                (
                    gicv3_redist_addr(vcpus),
                    u64::from(vcpus) * GICV3_REDIST_SIZE,
                ),
            ],
            GicVersion::V2 => [
                (GICV2_DIST_ADDR, GICV2_DIST_SIZE),
                (GICV2_CPU_ADDR, GICV2_CPU_SIZE),
            ],
        };
        GicLayout { version, regions }
    }
}

/// The in-kernel GIC. Dropping it would not remove it from the VM, but the VM keeps it for
/// the guest's life anyway, as the owner of the device fd.
pub struct Gic {
    fd: DeviceFd,
    layout: GicLayout,
}

impl Gic {
    /// Creates and initialises the GIC for `vcpus` vCPUs (all already created).
    pub fn create(vm: &VmFd, vcpus: u8) -> Result<Gic, GicError> {
        let (fd, version) = match new_device(vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3) {
            Ok(fd) => (fd, GicVersion::V3),
            Err(v3) => match new_device(vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2) {
                Ok(fd) => (fd, GicVersion::V2),
                Err(v2) => return Err(GicError::Create { v3, v2 }),
            },
        };
        let layout = GicLayout::new(version, vcpus);
        let (dist_type, second_type) = match version {
            GicVersion::V3 => (KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST),
            GicVersion::V2 => (KVM_VGIC_V2_ADDR_TYPE_DIST, KVM_VGIC_V2_ADDR_TYPE_CPU),
        };
        let dist = layout.regions[0].0;
        let second = layout.regions[1].0;
        set_attr(
            &fd,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(dist_type),
            &dist as *const u64 as u64,
            "distributor address",
        )?;
        set_attr(
            &fd,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(second_type),
            &second as *const u64 as u64,
            "redistributor/CPU interface address",
        )?;
        // 32 private interrupts (SGIs and PPIs) come before the SPIs.
        let nr_irqs: u32 = 32 + GIC_NR_SPIS;
        set_attr(
            &fd,
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &nr_irqs as *const u32 as u64,
            "number of interrupts",
        )?;
        set_attr(
            &fd,
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
            "initialisation",
        )?;
        Ok(Gic { fd, layout })
    }

    /// Where its frames are.
    pub fn layout(&self) -> GicLayout {
        self.layout
    }

    /// Which GIC KVM gave the guest.
    pub fn version(&self) -> GicVersion {
        self.layout.version
    }

    /// The KVM device, for saving and restoring its registers (`state`).
    pub(crate) fn fd(&self) -> &DeviceFd {
        &self.fd
    }

    /// One line for the log: the version and where it is.
    pub fn describe(&self) -> String {
        let [(a, a_len), (b, b_len)] = self.layout.regions;
        match self.layout.version {
            GicVersion::V3 => {
                format!("GICv3 (distributor {a:#x}+{a_len:#x}, redistributors {b:#x}+{b_len:#x})")
            }
            GicVersion::V2 => {
                format!("GICv2 (distributor {a:#x}+{a_len:#x}, CPU interface {b:#x}+{b_len:#x})")
            }
        }
    }
}

fn new_device(vm: &VmFd, kind: u32) -> Result<DeviceFd, kvm_ioctls::Error> {
    let mut dev = kvm_create_device {
        type_: kind,
        fd: 0,
        flags: 0,
    };
    vm.create_device(&mut dev)
}

fn set_attr(
    fd: &DeviceFd,
    group: u32,
    attr: u64,
    addr: u64,
    what: &'static str,
) -> Result<(), GicError> {
    // `addr` points at a local of the caller that outlives this call (or is 0 where the
    // attribute takes no value); KVM only reads through it.
    let a = kvm_device_attr {
        group,
        attr,
        addr,
        flags: 0,
    };
    fd.set_device_attr(&a).map_err(|e| GicError::Attr(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let v3 = GicLayout::new(GicVersion::V3, 2);
        assert_eq!(v3.regions[0], (0x3fff_0000, 0x1_0000));
        assert_eq!(v3.regions[1], (0x3ffb_0000, 0x4_0000));
        let v2 = GicLayout::new(GicVersion::V2, 2);
        assert_eq!(v2.regions[0], (0x3fff_f000, 0x1000));
        assert_eq!(v2.regions[1], (0x3fff_d000, 0x2000));
    }
}
