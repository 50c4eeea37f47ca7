//! `boot-source`: the kernel, its command line and an initrd.

use serde::{Deserialize, Serialize};

/// Kernel command line when `boot_args` is absent (Firecracker's default).
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// `PUT /boot-source`, and the file's `boot-source`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Path to the kernel (x86_64: ELF vmlinux or bzImage; aarch64: `Image`).
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default)]
    pub boot_args: Option<String>,
    /// Path to an initrd.
    #[serde(default)]
    pub initrd_path: Option<String>,
}
