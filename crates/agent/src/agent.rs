//! Instances' lives: launching `ember`, configuring it over its API, supervising it, and
//! every transition EC2 has (pending, running, stopping, stopped, shutting-down,
//! terminated), each written to the state database before it is reported.

use crate::db::{self, Image, Instance, Volume};
use crate::error::ApiError;
use crate::host;
use crate::ids;
use crate::meter::{self, SampleAt};
use crate::types::{self, InstanceType};
use crate::vmm_client;
use serde_json::json;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a terminated instance stays describable.
pub const TERMINATED_KEPT_S: i64 = 3600;

/// How long raw usage samples are kept (hourly rollups are kept for good).
pub const RAW_SAMPLES_KEPT_MS: i64 = 48 * meter::HOUR_MS;

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the database, images and instances live.
    pub state_dir: PathBuf,
    /// The host bridge instances' taps join.
    pub bridge: String,
    /// The instances' /24: the bridge gets .1, instances .2 to .254.
    pub subnet: Ipv4Addr,
    /// The `ember` binary.
    pub ember: PathBuf,
    /// How long a stop waits for the guest to shut down before killing it.
    pub stop_timeout: Duration,
    /// Where the VMMs' API sockets live (`<id>.sock`): a short path, since a Unix socket
    /// path is at most 107 bytes.
    pub run_dir: PathBuf,
    /// How often usage is sampled (it is also sampled at every state change).
    pub sample_interval: Duration,
}

/// The agent's own counters, for `GET /metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// API requests answered, by method and status.
    pub requests: Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    /// VMM processes started.
    pub launches: std::sync::atomic::AtomicU64,
    /// VMM exits seen.
    pub vmm_exits: std::sync::atomic::AtomicU64,
    /// Usage samples taken.
    pub samples: std::sync::atomic::AtomicU64,
    /// Usage samples that failed (database errors).
    pub sample_failures: std::sync::atomic::AtomicU64,
}

/// What the agent was asked to do with an instance whose VMM exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// Nothing: an exit is the guest's own doing (or a crash).
    Run,
    Stop,
    Reboot,
    Terminate,
}

/// A VMM the agent watches.
struct Proc {
    pid: i64,
    intent: Intent,
    /// Becomes `true` once the process has exited and its exit is recorded.
    exited: watch::Receiver<bool>,
}

/// The agent.
pub struct Agent {
    /// Settings.
    pub settings: Settings,
    db: Mutex<rusqlite::Connection>,
    procs: Mutex<HashMap<String, Proc>>,
    /// Counters about the agent itself.
    pub stats: Stats,
}

/// A run request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// `img-...`
    pub image_id: String,
    /// A type name from the catalogue.
    pub instance_type: String,
    /// How many (default 1).
    #[serde(default)]
    pub count: Option<u32>,
    /// Given to the guest as a read-only drive `user-data`.
    #[serde(default)]
    pub user_data: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Option<HashMap<String, String>>,
    /// The same token twice returns the first run's instances.
    #[serde(default)]
    pub client_token: Option<String>,
    /// Sizes of empty data volumes to attach, in MiB.
    #[serde(default)]
    pub data_volumes_mib: Vec<u64>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

impl Agent {
    /// An agent on `settings`, its database opened.
    pub fn open(settings: Settings) -> Result<Arc<Agent>, String> {
        for sub in ["images", "instances"] {
            std::fs::create_dir_all(settings.state_dir.join(sub))
                .map_err(|e| format!("{}: {e}", settings.state_dir.display()))?;
        }
        std::fs::create_dir_all(&settings.run_dir)
            .map_err(|e| format!("{}: {e}", settings.run_dir.display()))?;
        // An instance socket path is run_dir + "/i-" + 17 hex + ".sock".
        if settings.run_dir.as_os_str().len() + 25 > 107 {
            return Err(format!(
                "--run-dir {}: too long for Unix socket paths (at most 82 bytes)",
                settings.run_dir.display()
            ));
        }
        let db = db::open(&settings.state_dir.join("state.db"))
            .map_err(|e| format!("state database: {e}"))?;
        Ok(Arc::new(Agent {
            settings,
            db: Mutex::new(db),
            procs: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        }))
    }

    /// The API socket of instance `id`'s VMM.
    pub fn api_socket(&self, id: &str) -> PathBuf {
        self.settings.run_dir.join(format!("{id}.sock"))
    }

    /// Runs `f` on the database.
    pub fn db<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> db::DbResult<T>,
    ) -> Result<T, ApiError> {
        let c = self.db.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&c)?)
    }

    /// Moves instance `id` to `state`, sampling its usage up to now first, in one
    /// transaction: the time before goes to the old state, the VMM's new counters with it.
    fn transition(
        &self,
        id: &str,
        state: &str,
        reason: &str,
        pid: Option<(i64, i64)>,
    ) -> Result<(), ApiError> {
        self.transition_with(id, state, reason, pid, false)
    }

    fn transition_with(
        &self,
        id: &str,
        state: &str,
        reason: &str,
        pid: Option<(i64, i64)>,
        exit_unseen: bool,
    ) -> Result<(), ApiError> {
        let rss_kib = self.vmm_pid(id).and_then(host::rss_kib);
        let mut c = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = c.transaction()?;
        let at = SampleAt {
            now_ms: meter::now_ms(),
            new_state: Some(state),
            rss_kib,
            exit_unseen,
        };
        meter::sample(&tx, id, at)?;
        db::set_state(&tx, id, state, reason, pid)?;
        tx.commit()?;
        self.stats
            .samples
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Samples instance `id`'s usage up to now, its state unchanged.
    fn sample(&self, id: &str) {
        let rss_kib = self.vmm_pid(id).and_then(host::rss_kib);
        let result = self.db(|c| {
            let tx = c.unchecked_transaction()?;
            let at = SampleAt {
                now_ms: meter::now_ms(),
                rss_kib,
                ..Default::default()
            };
            meter::sample(&tx, id, at)?;
            tx.commit()
        });
        let counter = match result {
            Ok(()) => &self.stats.samples,
            Err(e) => {
                log::error!("{id}: usage sample failed: {}", e.message);
                &self.stats.sample_failures
            }
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The pid of instance `id`'s VMM, if it runs.
    fn vmm_pid(&self, id: &str) -> Option<i64> {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|p| p.pid)
    }

    /// Asks every running VMM for a metrics line, then samples every metered instance.
    pub async fn sample_all(self: &Arc<Self>) {
        let live: Vec<String> = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let flushes: Vec<_> = live
            .into_iter()
            .map(|id| {
                let sock = self.api_socket(&id);
                tokio::spawn(async move { vmm_client::flush_metrics(&sock).await })
            })
            .collect();
        for f in flushes {
            let _ = f.await;
        }
        let ids = match self.db(meter::metered) {
            Ok(ids) => ids,
            Err(e) => {
                log::error!("usage sampling: {}", e.message);
                return;
            }
        };
        for id in ids {
            self.sample(&id);
        }
        // Old terminated instances and raw samples go even if nobody describes anything.
        self.purge();
    }

    fn gateway(&self) -> Ipv4Addr {
        let o = self.settings.subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// Creates the bridge if needed.
    pub fn setup_network(&self) -> Result<(), String> {
        host::ensure_bridge(&self.settings.bridge, &format!("{}/24", self.gateway()))
            .map_err(|e| format!("bridge {}: {e}", self.settings.bridge))
    }

    // ----- images ---------------------------------------------------------------------

    /// Registers an image: the agent copies the files into its own directory.
    pub fn register_image(
        &self,
        name: &str,
        kernel: &Path,
        initrd: Option<&Path>,
        rootfs: &Path,
        boot_args: Option<String>,
    ) -> Result<Image, ApiError> {
        for (what, p) in [
            ("kernel", Some(kernel)),
            ("initrd", initrd),
            ("rootfs", Some(rootfs)),
        ] {
            if let Some(p) = p {
                let md = std::fs::metadata(p).map_err(|e| {
                    ApiError::bad(
                        "InvalidParameterValue",
                        format!("{what} {}: {e}", p.display()),
                    )
                })?;
                if !md.is_file() {
                    return Err(ApiError::bad(
                        "InvalidParameterValue",
                        format!("{what} {}: not a regular file", p.display()),
                    ));
                }
            }
        }
        if std::fs::metadata(rootfs)
            .map(|m| m.len() % 512)
            .unwrap_or(1)
            != 0
        {
            return Err(ApiError::bad(
                "InvalidParameterValue",
                "rootfs: size must be a multiple of 512 bytes",
            ));
        }
        let id = ids::new_id("img").map_err(internal)?;
        let dir = self.settings.state_dir.join("images").join(&id);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let copy = |src: &Path, name: &str| -> Result<(String, String), ApiError> {
            let dst = dir.join(name);
            let sum = host::copy_file(src, &dst).map_err(|e| {
                ApiError::bad(
                    "InvalidParameterValue",
                    format!("copying {}: {e}", src.display()),
                )
            })?;
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
                boot_args: boot_args.unwrap_or_else(|| {
                    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd".into()
                }),
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

    /// Deregisters an image no instance uses.
    pub fn deregister_image(&self, id: &str) -> Result<(), ApiError> {
        let image = self.db(|c| db::image(c, id))?.ok_or_else(|| {
            ApiError::not_found("InvalidImageID.NotFound", format!("no image {id}"))
        })?;
        if self.db(|c| db::image_in_use(c, id))? {
            return Err(ApiError::conflict(
                "InvalidImage.InUse",
                format!("image {id} is used by instances that are not terminated"),
            ));
        }
        self.db(|c| db::delete_image(c, id))?;
        let _ = std::fs::remove_dir_all(self.settings.state_dir.join("images").join(&image.id));
        Ok(())
    }

    // ----- instances ------------------------------------------------------------------

    fn instance(&self, id: &str) -> Result<Instance, ApiError> {
        self.db(|c| db::instance(c, id))?.ok_or_else(|| {
            ApiError::not_found("InvalidInstanceID.NotFound", format!("no instance {id}"))
        })
    }

    /// Memory (MiB) the host can give instances: 90% of its RAM.
    fn memory_budget_mib() -> u64 {
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                    })
            })
            .unwrap_or(0);
        total_kib / 1024 * 9 / 10
    }

    fn memory_in_use_mib(&self) -> Result<u64, ApiError> {
        let all = self.db(db::instances)?;
        Ok(all
            .iter()
            .filter(|i| matches!(i.state.as_str(), "pending" | "running" | "stopping"))
            .filter_map(|i| types::find(&i.instance_type))
            .map(|t| t.memory_mib)
            .sum())
    }

    fn free_ip(&self, taken: &[String]) -> Option<Ipv4Addr> {
        let o = self.settings.subnet.octets();
        (2..=254u8)
            .map(|h| Ipv4Addr::new(o[0], o[1], o[2], h))
            .find(|a| !taken.contains(&a.to_string()))
    }

    /// Runs instances; with a client token seen before, returns that run's instances.
    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<Vec<Instance>, ApiError> {
        if let Some(token) = &req.client_token {
            if token.is_empty() || token.len() > 64 {
                return Err(ApiError::bad(
                    "InvalidParameterValue",
                    "client_token: 1 to 64 characters",
                ));
            }
            let seen = self.db(|c| db::instances_by_token(c, token))?;
            if !seen.is_empty() {
                return Ok(seen);
            }
        }
        let count = req.count.unwrap_or(1);
        if count == 0 {
            return Err(ApiError::bad(
                "InvalidParameterValue",
                "count must be at least 1",
            ));
        }
        let itype: InstanceType = types::find(&req.instance_type).ok_or_else(|| {
            ApiError::bad(
                "InvalidInstanceType",
                format!(
                    "unknown instance type {:?}; see GET /v1/types",
                    req.instance_type
                ),
            )
        })?;
        let image = self.db(|c| db::image(c, &req.image_id))?.ok_or_else(|| {
            ApiError::bad(
                "InvalidImageID.NotFound",
                format!("no image {:?}", req.image_id),
            )
        })?;
        let want = itype.memory_mib * u64::from(count);
        let budget = Self::memory_budget_mib();
        let used = self.memory_in_use_mib()?;
        if used + want > budget {
            return Err(ApiError::bad(
                "InsufficientInstanceCapacity",
                format!(
                    "{count} x {} needs {want} MiB; the host has {} MiB left for instances",
                    itype.name,
                    budget.saturating_sub(used)
                ),
            ));
        }
        if req.data_volumes_mib.iter().any(|&m| m == 0 || m > 1 << 20) {
            return Err(ApiError::bad(
                "InvalidParameterValue",
                "data_volumes_mib: 1 to 1048576 each",
            ));
        }
        let tags = serde_json::to_value(req.tags.clone().unwrap_or_default()).map_err(internal)?;
        // Copying root volumes is slow file I/O: off the async threads.
        let agent = self.clone();
        let made = tokio::task::spawn_blocking(move || {
            (0..count)
                .map(|_| agent.create_instance(&image, itype, &req, &tags))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(internal)??;
        for inst in &made {
            let agent = self.clone();
            let id = inst.id.clone();
            tokio::spawn(async move {
                if let Err(e) = agent.launch(&id).await {
                    log::warn!("{id}: launch failed: {e}");
                    agent.record_exit(&id, &format!("launch failed: {e}"));
                }
            });
        }
        Ok(made)
    }

    fn create_instance(
        &self,
        image: &Image,
        itype: InstanceType,
        req: &RunRequest,
        tags: &serde_json::Value,
    ) -> Result<Instance, ApiError> {
        let id = ids::new_id("i").map_err(internal)?;
        let dir = self.settings.state_dir.join("instances").join(&id);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        // The address is taken under the database lock, with the row written.
        let c = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let taken = db::ips_in_use(&c)?;
        let ip = self
            .free_ip(&taken)
            .ok_or_else(|| ApiError::bad("InsufficientAddressCapacity", "the subnet is full"))?;
        let o = ip.octets();
        let inst = Instance {
            id: id.clone(),
            image_id: image.id.clone(),
            instance_type: itype.name.to_string(),
            state: "pending".into(),
            reason: "user request".into(),
            pid: None,
            pid_start: None,
            dir: dir.display().to_string(),
            ip: ip.to_string(),
            tap: format!("em-{}", &id[2..14]),
            mac: format!("06:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
            client_token: req.client_token.clone(),
            user_data: req.user_data.clone(),
            tags: tags.clone(),
            launched_at: db::now(),
            changed_at: db::now(),
            terminated_at: None,
        };
        db::insert_instance(&c, &inst)?;
        meter::open(
            &c,
            &id,
            itype.name,
            itype.memory_mib,
            &dir.join("metrics.jsonl"),
            meter::now_ms(),
        )?;
        drop(c);
        // Volumes: the root copy of the image, then the data volumes.
        let root = dir.join("root.img");
        host::copy_file(Path::new(&image.rootfs), &root).map_err(internal)?;
        let size = std::fs::metadata(&root)
            .map(|m| m.len() as i64)
            .unwrap_or(0);
        let mut vols = vec![Volume {
            id: ids::new_id("vol").map_err(internal)?,
            instance_id: id.clone(),
            path: root.display().to_string(),
            size_bytes: size,
            root: true,
        }];
        for (k, mib) in req.data_volumes_mib.iter().enumerate() {
            let p = dir.join(format!("data{k}.img"));
            host::create_sparse(&p, mib << 20).map_err(internal)?;
            vols.push(Volume {
                id: ids::new_id("vol").map_err(internal)?,
                instance_id: id.clone(),
                path: p.display().to_string(),
                size_bytes: (*mib as i64) << 20,
                root: false,
            });
        }
        if let Some(ud) = &req.user_data {
            // Padded to whole sectors; the guest reads it from the drive `user-data`.
            let mut bytes = ud.as_bytes().to_vec();
            bytes.resize(bytes.len().div_ceil(512).max(1) * 512, 0);
            std::fs::write(dir.join("user-data.img"), bytes).map_err(internal)?;
        }
        self.db(|c| {
            for v in &vols {
                db::insert_volume(c, v)?;
            }
            Ok(())
        })?;
        Ok(inst)
    }

    /// Starts the instance's VMM and configures it; the instance is `running` when the
    /// VMM has started the guest.
    async fn launch(self: &Arc<Self>, id: &str) -> Result<(), String> {
        let inst = self.instance(id).map_err(|e| e.message)?;
        let image = self
            .db(|c| db::image(c, &inst.image_id))
            .map_err(|e| e.message)?
            .ok_or("its image is gone")?;
        let itype = types::find(&inst.instance_type).ok_or("unknown type")?;
        let vols = self.db(|c| db::volumes(c, id)).map_err(|e| e.message)?;
        let dir = PathBuf::from(&inst.dir);
        let sock = self.api_socket(id);
        let (bridge, tap) = (self.settings.bridge.clone(), inst.tap.clone());
        tokio::task::spawn_blocking(move || host::create_tap(&tap, &bridge))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("tap {}: {e}", inst.tap))?;
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))
            .map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("ember.log"))
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&sock);
        let mut child = tokio::process::Command::new(&self.settings.ember)
            .arg("--api-sock")
            .arg(&sock)
            .arg("--id")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(log)
            // Its own process group: the VMM outlives the agent (a restart adopts it).
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.settings.ember.display()))?;
        let pid = i64::from(child.id().ok_or("no pid")?);
        log::info!("{id}: VMM started (pid {pid})");
        let start = host::pid_start_time(pid).unwrap_or(0);
        let (tx, rx) = watch::channel(false);
        self.procs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.to_string(),
            Proc {
                pid,
                intent: Intent::Run,
                exited: rx,
            },
        );
        self.stats
            .launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.transition(id, "pending", "user request", Some((pid, start)))
            .map_err(|e| e.message)?;
        {
            let agent = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                let status = child.wait().await;
                let why = match status {
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
        let gw = self.gateway();
        let mut boot_args = format!(
            "{} ip={}::{gw}:255.255.255.0::eth0:off",
            image.boot_args, inst.ip
        );
        let mut drives = Vec::new();
        for (k, v) in vols.iter().enumerate() {
            let drive_id = if v.root {
                "rootfs".to_string()
            } else {
                format!("data{}", k - 1)
            };
            drives.push(json!({"drive_id": drive_id, "path_on_host": v.path,
                "is_root_device": v.root, "is_read_only": false, "cache_type": "Writeback"}));
        }
        if inst.user_data.is_some() {
            drives.push(
                json!({"drive_id": "user_data", "path_on_host": dir.join("user-data.img"),
                "is_root_device": false, "is_read_only": true}),
            );
            boot_args.push_str(" ember_user_data=1");
        }
        // The socket appears within milliseconds of exec.
        let mut ready = false;
        for _ in 0..200 {
            if vmm_client::call(&sock, "GET", "/", None, Duration::from_secs(1))
                .await
                .is_ok()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !ready {
            self.kill(id);
            return Err("the VMM's API socket never answered".into());
        }
        let mut boot = json!({"kernel_image_path": image.kernel, "boot_args": boot_args});
        if let Some(i) = &image.initrd {
            boot["initrd_path"] = json!(i);
        }
        let steps: Vec<(&str, String, serde_json::Value)> = vec![
            ("PUT", "/boot-source".into(), boot),
            (
                "PUT",
                "/machine-config".into(),
                json!({"vcpu_count": itype.vcpus, "mem_size_mib": itype.memory_mib}),
            ),
        ];
        let mut steps = steps;
        for d in drives {
            let path = format!("/drives/{}", d["drive_id"].as_str().unwrap_or("x"));
            steps.push(("PUT", path, d));
        }
        steps.push((
            "PUT",
            "/network-interfaces/eth0".into(),
            json!({"iface_id": "eth0", "host_dev_name": inst.tap, "guest_mac": inst.mac}),
        ));
        steps.push((
            "PUT",
            "/metrics".into(),
            json!({"metrics_path": dir.join("metrics.jsonl")}),
        ));
        steps.push((
            "PUT",
            "/actions".into(),
            json!({"action_type": "InstanceStart"}),
        ));
        for (m, p, b) in &steps {
            if let Err(e) = vmm_client::expect_ok(&sock, m, p, b).await {
                self.kill(id);
                return Err(e);
            }
        }
        self.transition(id, "running", "user request", Some((pid, start)))
            .map_err(|e| e.message)?;
        log::info!("{id}: running");
        Ok(())
    }

    fn kill(&self, id: &str) {
        if let Some(p) = self.procs.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our VMM's.
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
    }

    /// Records that an instance's VMM has exited, per what was asked of it, and frees its
    /// tap (and, for terminate, its volumes and directory).
    fn record_exit(self: &Arc<Self>, id: &str, why: &str) {
        log::info!("{id}: VMM gone ({why})");
        self.stats
            .vmm_exits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let intent = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .map(|p| p.intent)
            .unwrap_or(Intent::Run);
        let Ok(Some(inst)) = self.db(|c| db::instance(c, id)) else {
            return;
        };
        let _ = host::delete_link(&inst.tap);
        let _ = std::fs::remove_file(self.api_socket(id));
        let result = match intent {
            Intent::Terminate => {
                // The sample reads the VMM's last metrics line before the directory goes.
                let r = self.transition(id, "terminated", "user request", None);
                let _ = std::fs::remove_dir_all(&inst.dir);
                r
            }
            Intent::Stop => self.transition(id, "stopped", "user request", None),
            Intent::Reboot => {
                self.sample(id);
                let agent = self.clone();
                let id2 = id.to_string();
                tokio::spawn(async move {
                    if let Err(e) = agent.launch(&id2).await {
                        agent.record_exit(&id2, &format!("reboot failed: {e}"));
                    }
                });
                Ok(())
            }
            Intent::Run => self.transition(id, "stopped", why, None),
        };
        if let Err(e) = result {
            log::error!("{id}: cannot record its exit: {}", e.message);
        }
    }

    /// Sets what an exit of `id`'s VMM will mean; returns its exit watch if it runs.
    fn intend(&self, id: &str, intent: Intent) -> Option<(i64, watch::Receiver<bool>)> {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let p = procs.get_mut(id)?;
        p.intent = intent;
        Some((p.pid, p.exited.clone()))
    }

    async fn wait_exit(rx: &mut watch::Receiver<bool>, within: Duration) -> bool {
        tokio::time::timeout(within, rx.wait_for(|done| *done))
            .await
            .is_ok()
    }

    /// Stops an instance: Ctrl-Alt-Del, wait, then kill (`force`: kill at once).
    pub async fn stop(self: &Arc<Self>, id: &str, force: bool) -> Result<Instance, ApiError> {
        let inst = self.instance(id)?;
        match inst.state.as_str() {
            "running" | "pending" => {}
            "stopped" | "stopping" => return Ok(inst),
            s => {
                return Err(ApiError::conflict(
                    "IncorrectInstanceState",
                    format!("instance {id} is {s}; only running instances can be stopped"),
                ))
            }
        }
        self.transition(id, "stopping", "user request", inst.pid.zip(inst.pid_start))?;
        self.shut_down(id, Intent::Stop, force).await;
        self.instance(id)
    }

    async fn shut_down(self: &Arc<Self>, id: &str, intent: Intent, force: bool) {
        let Some((pid, mut rx)) = self.intend(id, intent) else {
            // No VMM (it died, or a launch never got one): record the end directly.
            self.record_exit(id, "no VMM");
            return;
        };
        if !force {
            let sock = self.api_socket(id);
            let _ = vmm_client::call(
                &sock,
                "PUT",
                "/actions",
                Some(&json!({"action_type": "SendCtrlAltDel"})),
                Duration::from_secs(2),
            )
            .await;
            if Self::wait_exit(&mut rx, self.settings.stop_timeout).await {
                return;
            }
            log::warn!("{id}: the guest did not shut down in time; killing its VMM");
        }
        // Its counters up to now, before it goes without a last line.
        vmm_client::flush_metrics(&self.api_socket(id)).await;
        // SAFETY: kill has no memory-safety preconditions; the pid is the instance's VMM.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = Self::wait_exit(&mut rx, Duration::from_secs(10)).await;
    }

    /// Starts a stopped instance on its root volume.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<Instance, ApiError> {
        let inst = self.instance(id)?;
        if inst.state != "stopped" {
            return Err(ApiError::conflict(
                "IncorrectInstanceState",
                format!(
                    "instance {id} is {}; only stopped instances can be started",
                    inst.state
                ),
            ));
        }
        self.transition(id, "pending", "user request", None)?;
        let agent = self.clone();
        let id2 = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = agent.launch(&id2).await {
                agent.record_exit(&id2, &format!("launch failed: {e}"));
            }
        });
        self.instance(id)
    }

    /// Reboots a running instance (the guest restarts on the same volumes).
    pub async fn reboot(self: &Arc<Self>, id: &str) -> Result<Instance, ApiError> {
        let inst = self.instance(id)?;
        if inst.state != "running" {
            return Err(ApiError::conflict(
                "IncorrectInstanceState",
                format!(
                    "instance {id} is {}; only running instances can be rebooted",
                    inst.state
                ),
            ));
        }
        self.shut_down(id, Intent::Reboot, false).await;
        self.instance(id)
    }

    /// Terminates an instance: its VMM, tap, volumes and directory are gone.
    pub async fn terminate(self: &Arc<Self>, id: &str) -> Result<Instance, ApiError> {
        let inst = self.instance(id)?;
        match inst.state.as_str() {
            "terminated" | "shutting-down" => return Ok(inst),
            _ => {}
        }
        self.transition(
            id,
            "shutting-down",
            "user request",
            inst.pid.zip(inst.pid_start),
        )?;
        if self.intend(id, Intent::Terminate).is_some() {
            self.shut_down(id, Intent::Terminate, true).await;
        } else {
            let _ = host::delete_link(&inst.tap);
            self.transition(id, "terminated", "user request", None)?;
            let _ = std::fs::remove_dir_all(&inst.dir);
        }
        self.instance(id)
    }

    /// The last `bytes` of an instance's console.
    pub fn console(&self, id: &str, bytes: u64) -> Result<String, ApiError> {
        let inst = self.instance(id)?;
        let path = Path::new(&inst.dir).join("console.log");
        let data = std::fs::read(&path).unwrap_or_default();
        let from = data.len().saturating_sub(bytes as usize);
        Ok(String::from_utf8_lossy(&data[from..]).to_string())
    }

    /// After a restart: adopts every VMM still running as recorded (same pid, same start
    /// time, its socket answering); marks the others stopped with the reason.
    pub async fn adopt(self: &Arc<Self>) -> Result<(), ApiError> {
        let all = self.db(db::instances)?;
        for inst in all {
            if !matches!(
                inst.state.as_str(),
                "pending" | "running" | "stopping" | "shutting-down"
            ) {
                continue;
            }
            let alive = match (inst.pid, inst.pid_start) {
                (Some(pid), Some(start)) => host::pid_start_time(pid) == Some(start),
                _ => false,
            };
            let sock = self.api_socket(&inst.id);
            let answers = alive
                && vmm_client::call(&sock, "GET", "/", None, Duration::from_secs(2))
                    .await
                    .is_ok();
            let (Some(pid), true) = (inst.pid, answers) else {
                log::info!("{}: its VMM is gone; marking it stopped", inst.id);
                let _ = host::delete_link(&inst.tap);
                let _ = std::fs::remove_file(&sock);
                let (state, reason) = if inst.state == "shutting-down" {
                    ("terminated", "user request")
                } else {
                    ("stopped", "VMM exited while the agent was down")
                };
                self.transition_with(&inst.id, state, reason, None, true)?;
                if state == "terminated" {
                    let _ = std::fs::remove_dir_all(&inst.dir);
                }
                continue;
            };
            log::info!("{}: adopted its VMM (pid {pid})", inst.id);
            let (tx, rx) = watch::channel(false);
            let intent = match inst.state.as_str() {
                "stopping" => Intent::Stop,
                "shutting-down" => Intent::Terminate,
                _ => Intent::Run,
            };
            self.procs.lock().unwrap_or_else(|p| p.into_inner()).insert(
                inst.id.clone(),
                Proc {
                    pid,
                    intent,
                    exited: rx,
                },
            );
            if inst.state == "pending" {
                self.transition(
                    &inst.id,
                    "running",
                    "user request",
                    inst.pid.zip(inst.pid_start),
                )?;
            }
            // Not our child any more: watch it by polling (an exit is seen within 250 ms).
            let agent = self.clone();
            let id = inst.id.clone();
            let start = inst.pid_start;
            tokio::spawn(async move {
                while host::pid_start_time(pid) == start {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                agent.record_exit(
                    &id,
                    "VMM exited (status unknown: adopted after an agent restart)",
                );
                let _ = tx.send(true);
            });
        }
        Ok(())
    }

    /// Forgets terminated instances older than an hour.
    pub fn purge(&self) {
        let _ = self.db(|c| db::purge_terminated(c, db::now() - TERMINATED_KEPT_S));
        let _ = self.db(|c| meter::prune(c, meter::now_ms() - RAW_SAMPLES_KEPT_MS));
    }
}
