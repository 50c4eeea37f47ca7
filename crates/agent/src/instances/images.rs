//! Images: the agent's own copies of a kernel, an optional initrd and a root filesystem.

use super::{Agent, AgentError};
use crate::db::{self, Image};
use crate::host;
use crate::ids;
use std::path::Path;

/// Boot arguments of an image registered without any: Firecracker's console and i8042
/// options.
pub const DEFAULT_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

/// Checks that each given file is a regular file, and the root filesystem whole sectors.
fn check_files(kernel: &Path, initrd: Option<&Path>, rootfs: &Path) -> Result<(), AgentError> {
    for (what, p) in [
        ("kernel", Some(kernel)),
        ("initrd", initrd),
        ("rootfs", Some(rootfs)),
    ] {
        let Some(p) = p else { continue };
        let md = std::fs::metadata(p)
            .map_err(|e| AgentError::invalid(format!("{what} {}: {e}", p.display())))?;
        if !md.is_file() {
            return Err(AgentError::invalid(format!(
                "{what} {}: not a regular file",
                p.display()
            )));
        }
    }
    if std::fs::metadata(rootfs)
        .map(|m| m.len() % 512)
        .unwrap_or(1)
        != 0
    {
        return Err(AgentError::invalid(
            "rootfs: size must be a multiple of 512 bytes",
        ));
    }
    Ok(())
}

impl Agent {
    /// Registers an image: the agent copies the files into its own directory.
    pub fn register_image(
        &self,
        name: &str,
        kernel: &Path,
        initrd: Option<&Path>,
        rootfs: &Path,
        boot_args: Option<String>,
    ) -> Result<Image, AgentError> {
        check_files(kernel, initrd, rootfs)?;
        let id = ids::new_id("img").map_err(AgentError::internal)?;
        let dir = self.settings.state_dir.join("images").join(&id);
        std::fs::create_dir_all(&dir).map_err(AgentError::internal)?;
        let copy = |src: &Path, name: &str| -> Result<(String, String), AgentError> {
            let dst = dir.join(name);
            let sum = host::copy_file(src, &dst)
                .map_err(|e| AgentError::invalid(format!("copying {}: {e}", src.display())))?;
            Ok((dst.display().to_string(), sum))
        };
        let result = (|| {
            let (kernel, _) = copy(kernel, "kernel")?;
            let initrd = match initrd {
                Some(p) => Some(copy(p, "initrd")?.0),
                None => None,
            };
            let (rootfs, sum) = copy(rootfs, "rootfs.img")?;
            let image = Image {
                id: id.clone(),
                name: name.to_string(),
                kernel,
                initrd,
                rootfs,
                boot_args: boot_args.unwrap_or_else(|| DEFAULT_BOOT_ARGS.into()),
                rootfs_sha256: sum,
                created_at: db::now(),
            };
            self.db(|c| db::insert_image(c, &image))?;
            Ok(image)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Image `id`, or [`AgentError::ImageNotFound`].
    pub fn image(&self, id: &str) -> Result<Image, AgentError> {
        self.db(|c| db::image(c, id))?
            .ok_or_else(|| AgentError::ImageNotFound { id: id.to_string() })
    }

    /// Deregisters an image no instance uses.
    pub fn deregister_image(&self, id: &str) -> Result<(), AgentError> {
        let image = self.image(id)?;
        if self.db(|c| db::image_in_use(c, id))? {
            return Err(AgentError::ImageInUse { id: id.to_string() });
        }
        self.db(|c| db::delete_image(c, id))?;
        let _ = std::fs::remove_dir_all(self.settings.state_dir.join("images").join(&image.id));
        Ok(())
    }
}
