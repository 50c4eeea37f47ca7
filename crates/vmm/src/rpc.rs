//! What the API's actions do: the pre-boot configuration (the same [`VmConfig`] a
//! configuration file fills), starting the guest, and the runtime actions (pause,
//! resume, metrics). The HTTP side lives in the `api` crate; this module only sees
//! actions and answers.

use crate::builder::{self, BuildError, RunOptions, Runtime, Vmm};
use crate::config::{
    self, from_json, ConfigError, LoggerConfig, MachineConfig, MetricsConfig, VmConfig,
};
use crate::drive_config::DriveConfig;
use crate::metrics::{MetricsWriter, Sources, PERIOD};
use crate::net_config::NetworkInterfaceConfig;
use crate::vstate::vcpu;
use api::server::{ApiCounters, VmmLink};
use api::{Action, Response};
use devices::virtio::block::DiskFile;
use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::Deserialize;
use serde_json::json;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;
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
pub type LoggerHook = Box<dyn FnMut(&LoggerConfig) -> Result<(), String> + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Running,
    Paused,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::NotStarted => "Not started",
            State::Running => "Running",
            State::Paused => "Paused",
        }
    }
}

/// What handling an action led to.
pub enum Outcome {
    /// Answer the client.
    Answer(Response),
    /// `InstanceStart` with a valid configuration: build the VM, then answer.
    Start(config::VmResources),
}

/// The per-VM state behind the API.
pub struct Controller {
    id: String,
    config: VmConfig,
    state: State,
    runtime: Option<Runtime>,
    metrics: Option<MetricsWriter>,
    api_counters: Option<Arc<ApiCounters>>,
    logger: LoggerHook,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrivePatch {
    drive_id: String,
    #[serde(default)]
    path_on_host: Option<String>,
    #[serde(default)]
    rate_limiter: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachinePatch {
    vcpu_count: Option<u64>,
    mem_size_mib: Option<u64>,
    smt: Option<bool>,
    track_dirty_pages: Option<bool>,
    huge_pages: Option<config::HugePages>,
    cpu_template: Option<String>,
}

fn bad(e: impl std::fmt::Display) -> Response {
    Response::fault(400, e.to_string())
}

fn body_or_empty_error(body: &[u8]) -> Result<&[u8], Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Err(bad("the request needs a JSON body"))
    } else {
        Ok(body)
    }
}

/// The id in a request's path must be the body's.
fn same_id(kind: &str, path_id: &str, body_id: &str) -> Result<(), Response> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(bad(format!(
            "the {kind} id in the path ({path_id:?}) does not match the one in the body ({body_id:?})"
        )))
    }
}

/// `list` with `item` in place of the entry with the same id, or added at the end; the id
/// in the request's path must be the body's.
fn upsert<T: Clone>(
    list: &[T],
    item: T,
    kind: &str,
    path_id: &str,
    id_of: impl Fn(&T) -> &String,
) -> Result<Vec<T>, Response> {
    let id = id_of(&item).clone();
    same_id(kind, path_id, &id)?;
    let mut out = list.to_vec();
    match out.iter_mut().find(|x| *id_of(x) == id) {
        Some(x) => *x = item,
        None => out.push(item),
    }
    Ok(out)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    from_json(body_or_empty_error(body)?).map_err(bad)
}

impl Controller {
    /// A controller for microVM `id`, starting from `config` (a configuration file's
    /// content, or empty).
    pub fn new(id: &str, config: VmConfig, logger: LoggerHook) -> Self {
        Controller {
            id: id.to_string(),
            config,
            state: State::NotStarted,
            runtime: None,
            metrics: None,
            api_counters: None,
            logger,
        }
    }

    /// The API's request counters, reported in the metrics.
    pub fn set_api_counters(&mut self, c: Arc<ApiCounters>) {
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
        self.state = State::Running;
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
    pub fn flush_metrics(&mut self) -> Result<(), String> {
        let src = self.sources();
        match self.metrics.as_mut() {
            Some(m) => m.flush(&src).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn pre_boot(&self, what: &str) -> Result<(), Response> {
        if self.state == State::NotStarted {
            Ok(())
        } else {
            Err(bad(format!(
                "{what} is a pre-boot resource: it cannot be changed after the guest has started"
            )))
        }
    }

    /// Handles one action.
    pub fn handle(&mut self, action: Action) -> Outcome {
        match self.dispatch(action) {
            Ok(o) => o,
            Err(r) => Outcome::Answer(r),
        }
    }

    fn dispatch(&mut self, action: Action) -> Result<Outcome, Response> {
        let ok = || Ok(Outcome::Answer(Response::no_content()));
        match action {
            Action::GetInstanceInfo => Ok(Outcome::Answer(Response::json(&json!({
                "id": self.id,
                "state": self.state.name(),
                "vmm_version": env!("CARGO_PKG_VERSION"),
                "app_name": "Ember",
            })))),
            Action::GetVersion => Ok(Outcome::Answer(Response::json(&json!({
                "firecracker_version": env!("CARGO_PKG_VERSION"),
            })))),
            Action::GetVmConfig => {
                let v = serde_json::to_value(&self.config)
                    .map_err(|e| Response::fault(500, e.to_string()))?;
                Ok(Outcome::Answer(Response::json(&v)))
            }
            Action::GetMachineConfig => {
                let m = self.machine();
                let v =
                    serde_json::to_value(&m).map_err(|e| Response::fault(500, e.to_string()))?;
                Ok(Outcome::Answer(Response::json(&v)))
            }
            Action::PutBootSource(body) => {
                self.pre_boot("boot-source")?;
                let b: config::BootSourceConfig = parse(&body)?;
                if b.kernel_image_path.is_empty() {
                    return Err(bad(ConfigError::EmptyKernelPath));
                }
                self.config.boot_source = Some(b);
                ok()
            }
            Action::PutMachineConfig(body) => {
                self.pre_boot("machine-config")?;
                let m: MachineConfig = parse(&body)?;
                config::validate_machine(&m).map_err(bad)?;
                self.config.machine_config = Some(m);
                ok()
            }
            Action::PatchMachineConfig(body) => {
                self.pre_boot("machine-config")?;
                let p: MachinePatch = parse(&body)?;
                let mut m = self.machine();
                if let Some(v) = p.vcpu_count {
                    m.vcpu_count = v;
                }
                if let Some(v) = p.mem_size_mib {
                    m.mem_size_mib = v;
                }
                if let Some(v) = p.smt {
                    m.smt = v;
                }
                if let Some(v) = p.track_dirty_pages {
                    m.track_dirty_pages = v;
                }
                if let Some(v) = p.huge_pages {
                    m.huge_pages = v;
                }
                if p.cpu_template.is_some() {
                    m.cpu_template = p.cpu_template;
                }
                config::validate_machine(&m).map_err(bad)?;
                self.config.machine_config = Some(m);
                ok()
            }
            Action::PutDrive(id, body) => {
                self.pre_boot("a drive")?;
                let d: DriveConfig = parse(&body)?;
                let drives = upsert(&self.config.drives, d, "drive", &id, |x| &x.drive_id)?;
                crate::drive_config::validate_drives(&drives).map_err(bad)?;
                self.config.drives = drives;
                ok()
            }
            Action::PatchDrive(id, body) => {
                let p: DrivePatch = parse(&body)?;
                same_id("drive", &id, &p.drive_id)?;
                if p.rate_limiter.is_some() {
                    return Err(bad("drives: rate_limiter is not supported by ember"));
                }
                let Some(rt) = self.runtime.as_ref() else {
                    return Err(bad(
                        "PATCH /drives is for a running guest; before InstanceStart use PUT",
                    ));
                };
                let Some((spec, swap)) = rt.drives.iter().find(|(d, _)| d.id == id) else {
                    return Err(bad(format!("no drive with id {id:?}")));
                };
                let Some(path) = p.path_on_host else {
                    return ok();
                };
                let disk = DiskFile::open(std::path::Path::new(&path), spec.read_only, spec.cache)
                    .map_err(|e| bad(format!("drive {id:?} ({path}): {e}")))?;
                swap.request(disk)
                    .map_err(|e| Response::fault(500, format!("drive {id:?}: {e}")))?;
                if let Some(d) = self.config.drives.iter_mut().find(|d| d.drive_id == id) {
                    d.path_on_host = Some(path);
                }
                ok()
            }
            Action::PutNetworkInterface(id, body) => {
                self.pre_boot("a network interface")?;
                let n: NetworkInterfaceConfig = parse(&body)?;
                let ifaces = upsert(&self.config.network_interfaces, n, "interface", &id, |x| {
                    &x.iface_id
                })?;
                crate::net_config::validate_interfaces(&ifaces).map_err(bad)?;
                self.config.network_interfaces = ifaces;
                ok()
            }
            Action::PatchNetworkInterface(id, _) => Err(bad(format!(
                "PATCH /network-interfaces/{id}: rate limiters are not supported by ember"
            ))),
            Action::PutLogger(body) => {
                self.pre_boot("logger")?;
                let l: LoggerConfig = parse(&body)?;
                (self.logger)(&l).map_err(bad)?;
                self.config.logger = Some(l);
                ok()
            }
            Action::PutMetrics(body) => {
                self.pre_boot("metrics")?;
                let m: MetricsConfig = parse(&body)?;
                let w = MetricsWriter::open(std::path::Path::new(&m.metrics_path)).map_err(bad)?;
                self.metrics = Some(w);
                self.config.metrics = Some(m);
                ok()
            }
            Action::PutActions(body) => {
                let a: ActionBody = parse(&body)?;
                match a.action_type.as_str() {
                    "InstanceStart" => {
                        self.pre_boot("InstanceStart")
                            .map_err(|_| bad("the guest has already been started"))?;
                        let res = self.config.validate().map_err(bad)?;
                        Ok(Outcome::Start(res))
                    }
                    "FlushMetrics" => {
                        if self.metrics.is_none() {
                            return Err(bad(crate::metrics::MetricsError::NotConfigured));
                        }
                        self.flush_metrics().map_err(bad)?;
                        ok()
                    }
                    "SendCtrlAltDel" => {
                        let Some(rt) = self.runtime.as_ref() else {
                            return Err(bad("SendCtrlAltDel: the guest has not been started"));
                        };
                        let Some(i8042) = rt.i8042.as_ref() else {
                            return Err(bad(
                                "SendCtrlAltDel: this machine has no keyboard controller (x86_64 only)",
                            ));
                        };
                        i8042
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .ctrl_alt_del()
                            .map_err(|e| bad(format!("SendCtrlAltDel: {e}")))?;
                        ok()
                    }
                    other => Err(bad(format!(
                        "unknown action_type {:?}: expected InstanceStart, SendCtrlAltDel or FlushMetrics",
                        api::http::printable(other)
                    ))),
                }
            }
            Action::PatchVm(body) => {
                let v: VmStateBody = parse(&body)?;
                let Some(rt) = self.runtime.as_ref() else {
                    return Err(bad("the guest has not been started"));
                };
                match v.state.as_str() {
                    "Paused" => {
                        if self.state != State::Paused {
                            vcpu::pause_all(&rt.vcpus, PAUSE_WITHIN).map_err(|e| {
                                vcpu::resume_all(&rt.vcpus);
                                Response::fault(500, e)
                            })?;
                            // With the vCPUs stopped no new request arrives; each device
                            // finishes the one it is on and parks.
                            if !rt.devices.iter().all(|d| d.pause(DEVICE_PAUSE_WITHIN)) {
                                resume(rt);
                                return Err(Response::fault(
                                    500,
                                    "a device did not stop within 1 s; the VM keeps running",
                                ));
                            }
                            self.state = State::Paused;
                        }
                        ok()
                    }
                    "Resumed" => {
                        resume(rt);
                        self.state = State::Running;
                        ok()
                    }
                    other => Err(bad(format!(
                        "unknown vm state {:?}: expected Paused or Resumed",
                        api::http::printable(other)
                    ))),
                }
            }
        }
    }

    fn machine(&self) -> MachineConfig {
        self.config.machine_config.clone().unwrap_or(MachineConfig {
            vcpu_count: u64::from(config::DEFAULT_VCPUS),
            mem_size_mib: config::DEFAULT_MEM_MIB,
            smt: false,
            track_dirty_pages: false,
            huge_pages: config::HugePages::None,
            cpu_template: None,
        })
    }
}

/// Serves the API before start: answers actions on this thread until `InstanceStart`
/// builds the VM (or the API thread is gone). Returns the running VM.
pub fn serve_until_started(
    ctl: &mut Controller,
    link: &VmmLink,
    opts: &mut RunOptions,
) -> Result<Vmm, BuildError> {
    loop {
        let Ok(action) = link.requests.recv() else {
            return Err(BuildError::EventLoop("the API server stopped".into()));
        };
        let _ = link.wake.read();
        let answer = match ctl.handle(action) {
            Outcome::Answer(r) => r,
            Outcome::Start(res) => match builder::build(&res, opts) {
                Ok(vmm) => {
                    ctl.started(vmm.runtime());
                    let _ = link.answers.send(Response::no_content());
                    return Ok(vmm);
                }
                Err(e) => bad(format!("cannot start the guest: {e}")),
            },
        };
        let _ = link.answers.send(answer);
    }
}

/// The API after start, on the VMM thread's event loop: actions, and the periodic
/// metrics line.
pub struct ApiSubscriber {
    ctl: Controller,
    link: Option<VmmLink>,
    timer: Option<TimerFd>,
}

impl ApiSubscriber {
    /// Serves `link` (if there is an API) with `ctl` once the guest runs.
    pub fn new(ctl: Controller, link: Option<VmmLink>) -> Self {
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
        while let Ok(action) = link.requests.try_recv() {
            let answer = match self.ctl.handle(action) {
                Outcome::Answer(r) => r,
                Outcome::Start(_) => bad("the guest has already been started"),
            };
            let _ = link.answers.send(answer);
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
