//! Launching: a tap, an `ember` process in its own process group and its own jail (made
//! by `ember-jailer`: see `jail`), the instance's files linked into the jail, then its
//! configuration over its API with the model crate's types (the same types ember parses),
//! then `InstanceStart`.

use super::metadata::Ec2Metadata;
use super::supervise::{Intent, Proc};
use super::{hibernate, jail, Agent, AgentError};
use crate::db::{self, Image, Instance, Volume};
use crate::host;
use crate::types::{self, InstanceType};
use agent_types::InstanceState;
use model::{
    ActionType, BootSource, CacheType, Drive, InstanceActionInfo, MachineConfig, Metrics,
    MmdsConfig, MmdsVersion, NetworkInterface,
};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uds_client::Client;

/// How long one configuration request to ember may take.
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a metrics flush may take (the VMM may be exiting: do not hold a stop up).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a launch failed (the instance is then stopped with this as its reason).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The instance's image was deregistered.
    #[error("its image is gone")]
    ImageGone,
    /// The instance's type left the catalogue.
    #[error("unknown type {0:?}")]
    UnknownType(String),
    /// The agent's state.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The tap could not be made.
    #[error("tap {tap}: {source}")]
    Tap {
        /// The tap's name.
        tap: String,
        /// Why.
        source: std::io::Error,
    },
    /// A log file could not be opened.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `ember` could not be started.
    #[error("{}: {source}", ember.display())]
    Spawn {
        /// The binary.
        ember: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process exited before its pid was read.
    #[error("the VMM exited as it started")]
    NoPid,
    /// The socket did not appear.
    #[error("the VMM's API socket never answered")]
    NeverAnswered,
    /// The jailer or the VMM exited before answering; its last line.
    #[error("the VMM did not start: {0}")]
    Jail(String),
    /// A configuration request failed; the message is ember's.
    #[error("{step}: {source}")]
    Configure {
        /// The request (`PUT /drives/rootfs`).
        step: String,
        /// ember's answer.
        source: uds_client::Error,
    },
    /// A helper thread failed.
    #[error("helper thread: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What ember is told before `InstanceStart`, in the order it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct VmmSetup {
    /// Kernel, command line, initrd.
    pub boot: BootSource,
    /// vCPUs and memory, from the type.
    pub machine: MachineConfig,
    /// The root drive, the data volumes, the user data.
    pub drives: Vec<Drive>,
    /// `eth0` on the instance's tap.
    pub net: NetworkInterface,
    /// MMDS (V2) on `eth0`.
    pub mmds_config: MmdsConfig,
    /// What MMDS serves: EC2's instance metadata.
    pub metadata: Ec2Metadata,
    /// Where ember appends its metrics lines.
    pub metrics: Metrics,
}

impl VmmSetup {
    /// The configuration of instance `inst` (its directory `dir`, its volumes `vols` root
    /// first) behind gateway `gw`.
    pub fn new(
        inst: &Instance,
        image: &Image,
        itype: &InstanceType,
        vols: &[Volume],
        dir: &Path,
        gw: Ipv4Addr,
        zone: &str,
    ) -> VmmSetup {
        let mut boot_args = format!(
            "{} ip={}::{gw}:255.255.255.0::eth0:off",
            image.boot_args, inst.ip
        );
        let drive = |drive_id: String, path: String, root: bool, read_only: bool| Drive {
            drive_id,
            path_on_host: Some(path),
            is_root_device: root,
            is_read_only: Some(read_only),
            partuuid: None,
            // Volumes are the customer's data: flushes reach the disk.
            cache_type: (!read_only).then_some(CacheType::Writeback),
            io_engine: None,
            rate_limiter: None,
            socket: None,
        };
        let mut drives: Vec<Drive> = vols
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let id = if v.root {
                    "rootfs".to_string()
                } else {
                    format!("data{}", k - 1)
                };
                drive(id, v.path.clone(), v.root, false)
            })
            .collect();
        if inst.user_data.is_some() {
            let path = dir.join("user-data.img").display().to_string();
            drives.push(drive("user_data".into(), path, false, true));
            boot_args.push_str(" ember_user_data=1");
        }
        VmmSetup {
            boot: BootSource {
                kernel_image_path: image.kernel.clone(),
                boot_args: Some(boot_args),
                initrd_path: image.initrd.clone(),
            },
            machine: MachineConfig {
                vcpu_count: u64::from(itype.vcpus),
                mem_size_mib: itype.memory_mib,
                ..MachineConfig::default()
            },
            drives,
            net: NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: inst.tap.clone(),
                guest_mac: Some(inst.mac.clone()),
                mtu: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            },
            mmds_config: MmdsConfig {
                version: MmdsVersion::V2,
                network_interfaces: vec!["eth0".into()],
                ipv4_address: None,
                imds_compat: None,
            },
            metadata: Ec2Metadata::of(inst, image, zone),
            metrics: Metrics {
                metrics_path: dir.join("metrics.jsonl").display().to_string(),
            },
        }
    }

    /// Sends the configuration, then `InstanceStart`.
    pub async fn apply(&self, vmm: &Client) -> Result<(), LaunchError> {
        async fn put<B: serde::Serialize>(
            vmm: &Client,
            path: &str,
            body: &B,
        ) -> Result<(), LaunchError> {
            vmm.put(path, body)
                .await
                .map_err(|source| LaunchError::Configure {
                    step: format!("PUT {path}"),
                    source,
                })
        }
        put(vmm, "/boot-source", &self.boot).await?;
        put(vmm, "/machine-config", &self.machine).await?;
        for d in &self.drives {
            put(vmm, &format!("/drives/{}", d.drive_id), d).await?;
        }
        put(
            vmm,
            &format!("/network-interfaces/{}", self.net.iface_id),
            &self.net,
        )
        .await?;
        put(vmm, "/mmds/config", &self.mmds_config).await?;
        put(vmm, "/mmds", &self.metadata).await?;
        put(vmm, "/metrics", &self.metrics).await?;
        let start = InstanceActionInfo::new(ActionType::InstanceStart);
        put(vmm, "/actions", &start).await
    }
}

impl Agent {
    /// A client of instance `id`'s VMM. Its socket is in the jail, below directories the
    /// VMM's user owns: it is reached without following links, and must be that user's
    /// socket (a VMM cannot point the agent at another socket).
    pub(super) fn vmm(&self, id: &str, timeout: Duration) -> Client {
        match self.instance(id) {
            Ok(inst) => {
                let jail = self.jail_of(&inst);
                let rel = Path::new("root").join(jail::SOCKET_IN_JAIL.trim_start_matches('/'));
                Client::verified(jail.dir, rel, jail.uid, timeout)
            }
            Err(_) => Client::new(self.api_socket(id), timeout),
        }
    }

    /// Asks instance `id`'s VMM for an action, within `timeout`.
    pub(super) async fn vmm_action(
        &self,
        id: &str,
        action: ActionType,
        timeout: Duration,
    ) -> Result<(), uds_client::Error> {
        self.vmm(id, timeout)
            .put("/actions", &InstanceActionInfo::new(action))
            .await
    }

    /// Asks the VMM to append a metrics line now; failures are only logged (the VMM may be
    /// exiting, or older than metering), since a sample then reads what lines there are.
    pub(super) async fn flush_metrics(&self, id: &str) {
        if let Err(e) = self
            .vmm_action(id, ActionType::FlushMetrics, FLUSH_TIMEOUT)
            .await
        {
            log::debug!("{id}: FlushMetrics: {e}");
        }
    }

    /// Launches instance `id` in the background; a failure stops it with the reason
    /// `<what>: <error>`.
    pub(super) fn spawn_launch(self: &Arc<Self>, id: &str, what: &'static str) {
        let agent = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = agent.launch(&id).await {
                log::warn!("{id}: {what}: {e}");
                agent.record_exit(&id, &format!("{what}: {e}"));
            }
        });
    }

    /// Starts the instance's VMM and configures it; the instance is `running` when the
    /// VMM has started the guest.
    pub(super) async fn launch(self: &Arc<Self>, id: &str) -> Result<(), LaunchError> {
        let inst = self.instance(id)?;
        let image = self
            .db(|c| db::image(c, &inst.image_id))?
            .ok_or(LaunchError::ImageGone)?;
        let itype = types::find(&inst.instance_type)
            .ok_or_else(|| LaunchError::UnknownType(inst.instance_type.clone()))?;
        let vols = self.db(|c| db::volumes(c, id))?;
        let dir = PathBuf::from(&inst.dir);
        let sock = self.api_socket(id);
        let jail = self.jail_of(&inst);
        // Before anything is made on the host (a tap): a missing VMM binary fails here.
        if !self.settings.ember.is_file() {
            return Err(LaunchError::Spawn {
                ember: self.settings.ember.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let (bridge, tap, uid) = (self.settings.bridge.clone(), inst.tap.clone(), jail.uid);
        tokio::task::spawn_blocking(move || host::create_tap(&tap, &bridge, uid))
            .await?
            .map_err(|source| LaunchError::Tap {
                tap: inst.tap.clone(),
                source,
            })?;
        let open_log = |name: &str| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| LaunchError::File { path, source })
        };
        let console = open_log("console.log")?;
        let log = open_log("ember.log")?;
        // What an earlier VMM of this instance left (if the host went down with it), then
        // the new jail's root with the instance's files, before any VMM runs in it.
        let mut setup = VmmSetup::new(
            &inst,
            &image,
            &itype,
            &vols,
            &dir,
            self.gateway(),
            &self.settings.availability_zone,
        );
        // A hibernated instance's snapshot goes into the jail too.
        let kept = hibernate::saved(&dir);
        setup = {
            let jail = jail.clone();
            let kept = kept.clone();
            tokio::task::spawn_blocking(move || {
                jail.clear();
                jail.prepare(&mut setup)?;
                hibernate::furnish(&jail.root, jail.uid, kept.as_ref())?;
                Ok::<_, LaunchError>(setup)
            })
            .await??
        };
        // The agent reaches the socket inside the jail through a short link in run_dir
        // (a socket's path is limited to 107 bytes; the link's target is not).
        let _ = std::fs::remove_file(&sock);
        std::os::unix::fs::symlink(jail.socket(), &sock).map_err(|source| LaunchError::File {
            path: sock.clone(),
            source,
        })?;
        let jailer = &self.settings.jail.jailer;
        let mut child = tokio::process::Command::new(jailer)
            .args(
                self.settings
                    .jail
                    .args(&jail, id, &itype, &self.settings.ember),
            )
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(log)
            // Its own process group: the VMM outlives the agent (a restart adopts it).
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                ember: jailer.clone(),
                source,
            })?;
        let pid = i64::from(child.id().ok_or(LaunchError::NoPid)?);
        log::info!("{id}: VMM started (pid {pid})");
        let start = host::pid_start_time(pid).unwrap_or(0);
        let (tx, rx) = watch::channel(false);
        self.procs().insert(
            id.to_string(),
            Proc {
                pid,
                intent: Intent::Run,
                exited: rx,
            },
        );
        self.stats.launches.fetch_add(1, Ordering::Relaxed);
        self.transition(
            id,
            InstanceState::Pending,
            "user request",
            Some((pid, start)),
        )?;
        {
            let agent = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                let why = match child.wait().await {
                    Ok(s) => match s.code() {
                        Some(0) => "guest shut down".to_string(),
                        Some(n) => format!("VMM exited with status {n}"),
                        None => "VMM was killed".to_string(),
                    },
                    Err(e) => format!("VMM lost: {e}"),
                };
                agent.record_exit(&id, &why);
                let _ = tx.send(true);
            });
        }
        // The socket appears within milliseconds of exec.
        let ping = self.vmm(id, Duration::from_secs(1));
        let (mut ready, mut exited) = (false, false);
        for _ in 0..500 {
            if ping.answers().await {
                ready = true;
                break;
            }
            exited = self.procs().get(id).is_none_or(|p| *p.exited.borrow());
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !ready {
            self.kill(id);
            return Err(match (exited, last_line(&dir.join("ember.log"))) {
                (true, Some(line)) => LaunchError::Jail(line),
                _ => LaunchError::NeverAnswered,
            });
        }
        let mut reason = "user request".to_string();
        let mut resumed = false;
        if kept.is_some() {
            // Used or not, the snapshot is spent: the guest's disks move on from here.
            let loaded = self.resume_hibernated(id, &setup, &inst.tap).await;
            hibernate::discard(&dir);
            hibernate::unlink_loaded(&jail.root);
            match loaded {
                Ok(()) => {
                    resumed = true;
                    reason = "resumed from hibernation".into();
                }
                Err(e) => {
                    log::warn!("{id}: its hibernation snapshot could not be loaded: {e}");
                    reason = format!("hibernation snapshot could not be loaded ({e}); booted cold");
                }
            }
        }
        if !resumed {
            if let Err(e) = setup.apply(&self.vmm(id, CONFIGURE_TIMEOUT)).await {
                self.kill(id);
                return Err(e);
            }
        }
        if self
            .procs()
            .get(id)
            .is_some_and(|p| p.intent != Intent::Run)
        {
            // A stop or terminate came while it was being configured: its state stands,
            // and its background task ends the VMM.
            return Ok(());
        }
        self.transition(id, InstanceState::Running, &reason, Some((pid, start)))?;
        log::info!("{id}: running ({reason})");
        Ok(())
    }

    /// Loads the hibernation snapshot linked into the jail, its metrics file first (the
    /// only configuration a load may follow). A failed load leaves ember unconfigured: the
    /// caller boots the same VMM cold.
    async fn resume_hibernated(
        &self,
        id: &str,
        setup: &VmmSetup,
        tap: &str,
    ) -> Result<(), uds_client::Error> {
        let vmm = self.vmm(id, Duration::from_secs(120));
        vmm.put("/metrics", &setup.metrics).await?;
        vmm.put("/snapshot/load", &hibernate::load_request(tap))
            .await?;
        // A snapshot holds MMDS's configuration, not its data.
        vmm.put("/mmds", &setup.metadata).await
    }
}

/// The last non-empty line of a log file (from its last 4 KiB: the file is the VMM's to
/// write, so it is never read whole).
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.take(4096).read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.chars().take(500).collect())
}

#[cfg(test)]
mod tests;
