//! What the API's requests do: the pre-boot configuration (the same [`VmConfig`] a
//! configuration file fills), starting the guest, and the runtime requests (pause,
//! resume, drive swaps, metrics). Requests arrive typed ([`model::rpc::Request`]) and
//! leave as typed data or a typed error; the HTTP side (status codes included) is the
//! `api` crate's.

use crate::builder::{self, BuildError, RunOptions, Runtime, Start, Vmm};
use crate::metrics::{MetricsError, MetricsWriter, RequestCounts, Sources, PERIOD};
use crate::snapshot;
use crate::vstate::vcpu;
use devices::virtio::balloon::BalloonControl;
use devices::virtio::block::DiskFile;
use event_manager::{EventOps, Events, MutEventSubscriber};
use mmds::MmdsStore;
use model::rpc::{Answer, Outcome, Request, RequestError};
use model::services::BALLOON_PAGES_PER_MIB;
use model::{
    drive, net, ActionType, InstanceInfo, InstanceState, Logger, MachineConfig, Version, VmConfig,
    VmResources, VmState,
};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// Most time a pause may take before it is reported as failed.
const PAUSE_WITHIN: Duration = Duration::from_millis(10);

/// Most time a device may take to finish its current request when the VM pauses.
const DEVICE_PAUSE_WITHIN: Duration = Duration::from_secs(1);

fn resume(rt: &Runtime) {
    for d in &rt.devices {
        d.resume();
    }
    vcpu::resume_all(&rt.vcpus);
}

/// Applies a `logger` configuration (ember's logger lives in the binary).
pub type LoggerHook = Box<dyn FnMut(&Logger) -> Result<(), String> + Send>;

/// The VMM's end of the API: requests in, one outcome out per request, and an eventfd
/// readable while requests wait (so the event loop can watch it).
pub struct RequestLink {
    /// Requests, in order.
    pub requests: Receiver<Request>,
    /// Outcomes, one per request, in the same order.
    pub answers: Sender<Outcome>,
    /// Readable while a request waits.
    pub wake: EventFd,
}

/// What handling a request led to.
pub enum Handled {
    /// Answer the client.
    Answer(Outcome),
    /// `InstanceStart` with a valid configuration: build the VM, then answer.
    Start(Box<VmResources>),
    /// `PUT /snapshot/load` with a snapshot that reads and checks: build the VM from it.
    Restore(Box<RestoreJob>),
}

/// A snapshot to load: what to build, and the state to put in it.
pub struct RestoreJob {
    /// The saved configuration, validated.
    pub resources: VmResources,
    /// The saved configuration as the API shows it afterwards.
    pub config: VmConfig,
    /// The snapshot.
    pub loaded: snapshot::Loaded,
    /// Whether the guest runs at once.
    pub resume: bool,
}

/// The per-VM state behind the API.
pub struct Controller {
    id: String,
    config: VmConfig,
    state: InstanceState,
    runtime: Option<Runtime>,
    metrics: Option<MetricsWriter>,
    api_counters: Option<RequestCounts>,
    logger: LoggerHook,
    /// A pre-boot resource other than the logger and metrics was configured: a snapshot
    /// can no longer be loaded (Firecracker's rule).
    configured: bool,
    /// MMDS's data: the API writes it, the net devices that serve MMDS read it.
    mmds: Arc<Mutex<MmdsStore>>,
}

/// The id in a request's path must be the body's.
fn same_id(kind: &'static str, path_id: &str, body_id: &str) -> Result<(), RequestError> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(RequestError::IdMismatch {
            kind,
            path: path_id.to_string(),
            body: body_id.to_string(),
        })
    }
}

/// `list` with `item` in place of the entry with the same id, or added at the end; the id
/// in the request's path must be the body's.
fn upsert<T: Clone>(
    list: &[T],
    item: T,
    kind: &'static str,
    path_id: &str,
    id_of: impl Fn(&T) -> &String,
) -> Result<Vec<T>, RequestError> {
    let id = id_of(&item).clone();
    same_id(kind, path_id, &id)?;
    let mut out = list.to_vec();
    match out.iter_mut().find(|x| *id_of(x) == id) {
        Some(x) => *x = item,
        None => out.push(item),
    }
    Ok(out)
}

impl From<MetricsError> for RequestError {
    fn from(e: MetricsError) -> Self {
        RequestError::Invalid(e.to_string())
    }
}

impl From<BuildError> for RequestError {
    fn from(e: BuildError) -> Self {
        RequestError::Start(e.to_string())
    }
}

impl Controller {
    /// A controller for microVM `id`, starting from `config` (a configuration file's
    /// content, or empty).
    pub fn new(id: &str, config: VmConfig, logger: LoggerHook) -> Self {
        Controller {
            id: id.to_string(),
            config,
            state: InstanceState::NotStarted,
            runtime: None,
            metrics: None,
            api_counters: None,
            logger,
            configured: false,
            mmds: Arc::new(Mutex::new(MmdsStore::default())),
        }
    }

    /// Uses `store` for MMDS's data (ember makes it with `--mmds-size-limit` and fills it
    /// from `--metadata`); the builder hands the same store to the net devices.
    pub fn set_mmds_store(&mut self, store: Arc<Mutex<MmdsStore>>) {
        self.mmds = store;
    }

    /// MMDS's data.
    pub fn mmds_store(&self) -> Arc<Mutex<MmdsStore>> {
        self.mmds.clone()
    }

    fn mmds_lock(&self) -> std::sync::MutexGuard<'_, MmdsStore> {
        self.mmds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The API's request counters, reported in the metrics.
    pub fn set_api_counters(&mut self, c: RequestCounts) {
        self.api_counters = Some(c);
    }

    /// Applies the configuration's `logger` and `metrics` sections (done at start-up for a
    /// configuration file).
    pub fn apply_outputs(&mut self) -> Result<(), String> {
        if let Some(l) = self.config.logger.clone() {
            (self.logger)(&l)?;
        }
        if let Some(m) = &self.config.metrics {
            self.metrics = Some(
                MetricsWriter::open(std::path::Path::new(&m.metrics_path))
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(())
    }

    /// Records that the guest runs, with the handles of its VM.
    pub fn started(&mut self, rt: Runtime) {
        self.runtime = Some(rt);
        self.state = InstanceState::Running;
    }

    /// Records a VM restored from a snapshot: its configuration is the snapshot's (this
    /// process's logger and metrics kept), running or paused as the load asked.
    pub fn restored(&mut self, rt: Runtime, mut config: VmConfig, resumed: bool) {
        config.logger = self.config.logger.take();
        config.metrics = self.config.metrics.take();
        self.config = config;
        self.runtime = Some(rt);
        self.state = if resumed {
            InstanceState::Running
        } else {
            InstanceState::Paused
        };
    }

    fn sources(&self) -> Sources {
        let mut s = self
            .runtime
            .as_ref()
            .map(|r| r.metrics.clone())
            .unwrap_or_default();
        s.api = self.api_counters.clone();
        s
    }

    /// Writes a metrics line, if a metrics path is configured.
    pub fn flush_metrics(&mut self) -> Result<(), MetricsError> {
        let src = self.sources();
        match self.metrics.as_mut() {
            Some(m) => m.flush(&src),
            None => Ok(()),
        }
    }

    fn pre_boot(&self, what: &'static str) -> Result<(), RequestError> {
        if self.state == InstanceState::NotStarted {
            Ok(())
        } else {
            Err(RequestError::PreBoot(what))
        }
    }

    fn running(&self, what: &str) -> Result<&Runtime, RequestError> {
        self.runtime
            .as_ref()
            .ok_or_else(|| RequestError::NotStarted(what.to_string()))
    }

    /// Handles one request.
    pub fn handle(&mut self, request: Request) -> Handled {
        match self.dispatch(request) {
            Ok(h) => h,
            Err(e) => Handled::Answer(Err(e)),
        }
    }

    fn dispatch(&mut self, request: Request) -> Result<Handled, RequestError> {
        let done = |a: Answer| Ok(Handled::Answer(Ok(a)));
        match request {
            Request::GetInstanceInfo => done(Answer::InstanceInfo(InstanceInfo {
                id: self.id.clone(),
                state: self.state,
                vmm_version: env!("CARGO_PKG_VERSION").to_string(),
                app_name: "Ember".to_string(),
            })),
            Request::GetVersion => done(Answer::Version(Version {
                firecracker_version: env!("CARGO_PKG_VERSION").to_string(),
            })),
            Request::GetVmConfig => done(Answer::VmConfig(Box::new(self.config.clone()))),
            Request::GetMachineConfig => done(Answer::MachineConfig(self.config.machine())),
            Request::CreateSnapshot(p) => {
                p.validate()
                    .map_err(|e| RequestError::Invalid(e.to_string()))?;
                let rt = self.running("snapshot/create: the guest has not been started")?;
                if self.state != InstanceState::Paused {
                    return Err(RequestError::Invalid(
                        "snapshot/create: the microVM must be paused first (PATCH /vm {\"state\": \"Paused\"})".into(),
                    ));
                }
                let t0 = std::time::Instant::now();
                let w = snapshot::create(rt, &self.config, &p)
                    .map_err(|e| RequestError::Invalid(format!("snapshot/create: {e}")))?;
                log::info!(
                    "snapshot ({:?}) created in {} ms: state {} bytes, memory {} bytes written",
                    p.snapshot_type,
                    t0.elapsed().as_millis(),
                    w.state_bytes,
                    w.memory_bytes
                );
                done(Answer::Empty)
            }
            Request::LoadSnapshot(p) => {
                if self.state != InstanceState::NotStarted {
                    return Err(RequestError::Invalid(
                        "snapshot/load: the guest has already been started; load into a new ember"
                            .into(),
                    ));
                }
                if self.configured {
                    return Err(RequestError::Invalid(
                        "snapshot/load: only logger and metrics may be configured before a snapshot is loaded".into(),
                    ));
                }
                let loaded = snapshot::load(&p)
                    .map_err(|e| RequestError::Invalid(format!("snapshot/load: {e}")))?;
                let resources = loaded.config.validate().map_err(|e| {
                    RequestError::Invalid(format!(
                        "snapshot/load: the snapshot's configuration: {e}"
                    ))
                })?;
                Ok(Handled::Restore(Box::new(RestoreJob {
                    resources,
                    config: loaded.config.clone(),
                    loaded,
                    resume: p.resume_vm,
                })))
            }
            Request::PutBootSource(b) => {
                self.pre_boot("boot-source")?;
                self.configured = true;
                if b.kernel_image_path.is_empty() {
                    return Err(model::ConfigError::EmptyKernelPath.into());
                }
                self.config.boot_source = Some(b);
                done(Answer::Empty)
            }
            Request::PutMachineConfig(m) => {
                self.pre_boot("machine-config")?;
                self.configured = true;
                self.set_machine(m)
            }
            Request::PatchMachineConfig(p) => {
                self.pre_boot("machine-config")?;
                self.configured = true;
                let m = self.config.machine().patched(p);
                self.set_machine(m)
            }
            Request::PutDrive(id, d) => {
                self.pre_boot("a drive")?;
                self.configured = true;
                let opened = (
                    d.path_on_host.clone(),
                    d.is_read_only.unwrap_or(false),
                    builder::cache_type(d.cache_type.unwrap_or_default()),
                );
                let drives = upsert(&self.config.drives, d, "drive", &id, |x| &x.drive_id)?;
                drive::validate_drives(&drives).map_err(model::ConfigError::from)?;
                // Opened now, as Firecracker does, so a path the VMM cannot open (missing,
                // outside a jail, not the VMM user's) is refused here, not at InstanceStart.
                if let (Some(path), read_only, cache) = opened {
                    DiskFile::open(std::path::Path::new(&path), read_only, cache).map_err(|e| {
                        RequestError::Invalid(format!("drive {id:?} ({path}): {e}"))
                    })?;
                }
                self.config.drives = drives;
                done(Answer::Empty)
            }
            Request::PatchDrive(id, p) => {
                same_id("drive", &id, &p.drive_id)?;
                if p.rate_limiter.is_some() {
                    return Err(RequestError::Unsupported(
                        "drives: rate_limiter is not supported by ember".into(),
                    ));
                }
                let rt = self.running(
                    "PATCH /drives is for a running guest; before InstanceStart use PUT",
                )?;
                let Some((spec, swap)) = rt.drives.iter().find(|(d, _)| d.id == id) else {
                    return Err(RequestError::NoSuchDrive(id));
                };
                let Some(path) = p.path_on_host else {
                    return done(Answer::Empty);
                };
                let disk = DiskFile::open(
                    std::path::Path::new(&path),
                    spec.read_only,
                    builder::cache_type(spec.cache),
                )
                .map_err(|e| RequestError::Invalid(format!("drive {id:?} ({path}): {e}")))?;
                swap.request(disk)
                    .map_err(|e| RequestError::Internal(format!("drive {id:?}: {e}")))?;
                if let Some(d) = self.config.drives.iter_mut().find(|d| d.drive_id == id) {
                    d.path_on_host = Some(path);
                }
                done(Answer::Empty)
            }
            Request::PutNetworkInterface(id, n) => {
                self.pre_boot("a network interface")?;
                self.configured = true;
                let ifaces = upsert(&self.config.network_interfaces, n, "interface", &id, |x| {
                    &x.iface_id
                })?;
                net::validate_interfaces(&ifaces).map_err(model::ConfigError::from)?;
                self.config.network_interfaces = ifaces;
                done(Answer::Empty)
            }
            Request::PatchNetworkInterface(id, _) => Err(RequestError::Unsupported(format!(
                "PATCH /network-interfaces/{id}: rate limiters are not supported by ember"
            ))),
            Request::PutVsock(v) => {
                self.pre_boot("vsock")?;
                self.configured = true;
                v.validate().map_err(model::ConfigError::from)?;
                self.config.vsock = Some(v);
                done(Answer::Empty)
            }
            Request::PutEntropy(e) => {
                self.pre_boot("entropy")?;
                self.configured = true;
                e.validate().map_err(model::ConfigError::from)?;
                self.config.entropy = Some(e);
                done(Answer::Empty)
            }
            Request::PutBalloon(b) => {
                self.pre_boot("balloon")?;
                self.configured = true;
                b.validate(self.config.machine().mem_size_mib)
                    .map_err(model::ConfigError::from)?;
                self.config.balloon = Some(b);
                done(Answer::Empty)
            }
            Request::PatchBalloon(u) => {
                let rt = self.running(
                    "PATCH /balloon is for a running guest; before InstanceStart use PUT",
                )?;
                let control = rt.balloon.clone().ok_or_else(no_balloon)?;
                model::services::check_balloon_target(
                    u.amount_mib,
                    self.config.machine().mem_size_mib,
                )
                .map_err(model::ConfigError::from)?;
                control.set_target(u.amount_mib.saturating_mul(BALLOON_PAGES_PER_MIB));
                if let Some(b) = self.config.balloon.as_mut() {
                    b.amount_mib = u.amount_mib;
                }
                done(Answer::Empty)
            }
            Request::GetBalloon => {
                let b = self.config.balloon.clone().ok_or_else(no_balloon)?;
                done(Answer::Balloon(b))
            }
            Request::GetBalloonStats => {
                let rt = self.running("the guest has not been started")?;
                let control = rt.balloon.clone().ok_or_else(no_balloon)?;
                if control.stats_interval_s() == 0 {
                    return Err(RequestError::Invalid(
                        "balloon statistics are not enabled (stats_polling_interval_s is 0)".into(),
                    ));
                }
                done(Answer::BalloonStats(balloon_stats(&control)))
            }
            Request::PatchBalloonStats(u) => {
                let rt = self.running(
                    "PATCH /balloon/statistics is for a running guest; before InstanceStart \
                     use PUT /balloon",
                )?;
                let control = rt.balloon.clone().ok_or_else(no_balloon)?;
                let (now, new) = (control.stats_interval_s(), u.stats_polling_interval_s);
                if (now == 0) != (new == 0) {
                    return Err(RequestError::Invalid(format!(
                        "balloon: stats_polling_interval_s cannot go from {now} to {new}: \
                         statistics are turned on or off only before start"
                    )));
                }
                control.set_stats_interval(u32::from(new));
                if let Some(b) = self.config.balloon.as_mut() {
                    b.stats_polling_interval_s = new;
                }
                done(Answer::Empty)
            }
            Request::PutMmdsConfig(c) => {
                self.pre_boot("mmds-config")?;
                self.configured = true;
                let ifaces: Vec<&str> = self
                    .config
                    .network_interfaces
                    .iter()
                    .map(|n| n.iface_id.as_str())
                    .collect();
                c.validate(&ifaces).map_err(model::ConfigError::from)?;
                self.config.mmds_config = Some(c);
                done(Answer::Empty)
            }
            Request::PutMmds(v) => {
                self.mmds_lock()
                    .put(v)
                    .map_err(|e| RequestError::Invalid(format!("mmds: {e}")))?;
                done(Answer::Empty)
            }
            Request::PatchMmds(v) => {
                self.mmds_lock()
                    .patch(&v)
                    .map_err(|e| RequestError::Invalid(format!("mmds: {e}")))?;
                done(Answer::Empty)
            }
            Request::GetMmds => {
                let v = self.mmds_lock().get().clone();
                done(Answer::Mmds(v))
            }
            Request::PutLogger(l) => {
                self.pre_boot("logger")?;
                (self.logger)(&l).map_err(RequestError::Invalid)?;
                self.config.logger = Some(l);
                done(Answer::Empty)
            }
            Request::PutMetrics(m) => {
                self.pre_boot("metrics")?;
                let w = MetricsWriter::open(std::path::Path::new(&m.metrics_path))?;
                self.metrics = Some(w);
                self.config.metrics = Some(m);
                done(Answer::Empty)
            }
            Request::Action(ActionType::InstanceStart) => {
                if self.state != InstanceState::NotStarted {
                    return Err(RequestError::AlreadyStarted);
                }
                Ok(Handled::Start(Box::new(self.config.validate()?)))
            }
            Request::Action(ActionType::FlushMetrics) => {
                if self.metrics.is_none() {
                    return Err(MetricsError::NotConfigured.into());
                }
                self.flush_metrics()?;
                done(Answer::Empty)
            }
            Request::Action(ActionType::SendCtrlAltDel) => {
                let rt = self.running("SendCtrlAltDel: the guest has not been started")?;
                let Some(i8042) = rt.i8042.as_ref() else {
                    return Err(RequestError::Invalid(
                        "SendCtrlAltDel: this machine has no keyboard controller (x86_64 only)"
                            .into(),
                    ));
                };
                i8042
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ctrl_alt_del()
                    .map_err(|e| RequestError::Invalid(format!("SendCtrlAltDel: {e}")))?;
                done(Answer::Empty)
            }
            Request::SetVmState(state) => {
                let rt = self.running("the guest has not been started")?;
                match state {
                    VmState::Paused => {
                        if self.state != InstanceState::Paused {
                            vcpu::pause_all(&rt.vcpus, PAUSE_WITHIN).map_err(|e| {
                                vcpu::resume_all(&rt.vcpus);
                                RequestError::Internal(e)
                            })?;
                            // With the vCPUs stopped no new request arrives; each device
                            // finishes the one it is on and parks.
                            if !rt.devices.iter().all(|d| d.pause(DEVICE_PAUSE_WITHIN)) {
                                resume(rt);
                                return Err(RequestError::Internal(
                                    "a device did not stop within 1 s; the VM keeps running".into(),
                                ));
                            }
                            self.state = InstanceState::Paused;
                        }
                    }
                    VmState::Resumed => {
                        resume(rt);
                        self.state = InstanceState::Running;
                    }
                }
                done(Answer::Empty)
            }
        }
    }

    fn set_machine(&mut self, m: MachineConfig) -> Result<Handled, RequestError> {
        m.validate().map_err(model::ConfigError::from)?;
        self.config.machine_config = Some(m);
        Ok(Handled::Answer(Ok(Answer::Empty)))
    }
}

/// Serves the API before start: answers requests on this thread until `InstanceStart`
/// builds the VM (or the API thread is gone). Returns the running VM.
pub fn serve_until_started(
    ctl: &mut Controller,
    link: &RequestLink,
    opts: &mut RunOptions,
) -> Result<Vmm, BuildError> {
    loop {
        let Ok(request) = link.requests.recv() else {
            return Err(BuildError::EventLoop("the API server stopped".into()));
        };
        let _ = link.wake.read();
        let outcome = match ctl.handle(request) {
            Handled::Answer(o) => o,
            Handled::Start(res) => match builder::build(&res, opts) {
                Ok(vmm) => {
                    ctl.started(vmm.runtime());
                    let _ = link.answers.send(Ok(Answer::Empty));
                    return Ok(vmm);
                }
                Err(e) => Err(e.into()),
            },
            Handled::Restore(job) => {
                let t0 = std::time::Instant::now();
                let start = Start::Restore {
                    state: &job.loaded.state,
                    mem: &job.loaded.mem_file,
                    resume: job.resume,
                };
                match builder::build_with(&job.resources, opts, start) {
                    Ok(vmm) => {
                        log::info!("snapshot loaded in {} ms", t0.elapsed().as_millis());
                        ctl.restored(vmm.runtime(), job.config, job.resume);
                        let _ = link.answers.send(Ok(Answer::Empty));
                        return Ok(vmm);
                    }
                    Err(e) => Err(RequestError::Invalid(format!("snapshot/load: {e}"))),
                }
            }
        };
        let _ = link.answers.send(outcome);
    }
}

/// The API after start, on the VMM thread's event loop: requests, and the periodic
/// metrics line.
pub struct ApiSubscriber {
    ctl: Controller,
    link: Option<RequestLink>,
    timer: Option<TimerFd>,
}

impl ApiSubscriber {
    /// Serves `link` (if there is an API) with `ctl` once the guest runs.
    pub fn new(ctl: Controller, link: Option<RequestLink>) -> Self {
        let timer = TimerFd::new().ok().and_then(|mut t| {
            t.reset(PERIOD, Some(PERIOD)).ok()?;
            Some(t)
        });
        ApiSubscriber { ctl, link, timer }
    }

    /// Writes a last metrics line (when the guest has ended), so every count is in the
    /// file.
    pub fn final_flush(&mut self) {
        if let Err(e) = self.ctl.flush_metrics() {
            log::warn!("metrics: {e}");
        }
    }
}

impl MutEventSubscriber for ApiSubscriber {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(t) = &mut self.timer {
            if events.fd() == t.as_raw_fd() {
                let _ = t.wait();
                if let Err(e) = self.ctl.flush_metrics() {
                    log::warn!("metrics: {e}");
                }
                return;
            }
        }
        let Some(link) = &self.link else { return };
        let _ = link.wake.read();
        while let Ok(request) = link.requests.try_recv() {
            let outcome = match self.ctl.handle(request) {
                Handled::Answer(o) => o,
                Handled::Start(_) | Handled::Restore(_) => Err(RequestError::AlreadyStarted),
            };
            let _ = link.answers.send(outcome);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Some(link) = &self.link {
            if let Err(e) = ops.add(Events::new_raw(link.wake.as_raw_fd(), EventSet::IN)) {
                log::error!("API: cannot watch its eventfd: {e:?}");
            }
        }
        if let Some(t) = &self.timer {
            if let Err(e) = ops.add(Events::new_raw(t.as_raw_fd(), EventSet::IN)) {
                log::error!("metrics: cannot watch the timer: {e:?}");
            }
        }
    }
}

fn no_balloon() -> RequestError {
    RequestError::Invalid("no balloon device is configured (PUT /balloon before start)".into())
}

/// The balloon's target and the guest's last report, in the API's shape.
fn balloon_stats(control: &BalloonControl) -> model::BalloonStats {
    let (target, actual) = (control.target_pages(), control.actual_pages());
    let g = control.stats();
    model::BalloonStats {
        target_pages: target,
        actual_pages: actual,
        target_mib: target / BALLOON_PAGES_PER_MIB,
        actual_mib: actual / BALLOON_PAGES_PER_MIB,
        swap_in: g.swap_in,
        swap_out: g.swap_out,
        major_faults: g.major_faults,
        minor_faults: g.minor_faults,
        free_memory: g.free_memory,
        total_memory: g.total_memory,
        available_memory: g.available_memory,
        disk_caches: g.disk_caches,
        hugetlb_allocations: g.hugetlb_allocations,
        hugetlb_failures: g.hugetlb_failures,
    }
}
