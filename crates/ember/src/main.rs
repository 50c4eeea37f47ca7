//! `ember`: one process, one KVM guest. Command-line flags follow Firecracker's.

mod args;
mod logger;
mod terminal;

use args::{Args, Command};
use std::process::ExitCode;

fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which lives on this stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The guest console's input: a duplicate of stdin, if stdin is open.
fn console_input() -> Option<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    Some(std::fs::File::from(fd))
}

fn run(args: Args) -> Result<(), String> {
    if let Some(flag) = args.unsupported {
        return Err(format!("{flag} is not supported by ember"));
    }
    let policy = match (&args.seccomp_filter, args.no_seccomp) {
        (Some(path), _) => seccomp::Policy::from_file(path).map_err(|e| e.to_string())?,
        (None, true) => seccomp::Policy::Off,
        (None, false) => seccomp::Policy::BuiltIn,
    };
    seccomp::set_policy(policy).map_err(|e| e.to_string())?;
    let mut config = match &args.config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            let cfg =
                vmm::VmConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if cfg.boot_source.is_none() {
                return Err(format!("{}: missing field `boot-source`", path.display()));
            }
            Some(cfg)
        }
        None => None,
    };
    // Command-line outputs apply unless the file names its own.
    let mut base = config.take().unwrap_or_default();
    if base.logger.is_none() && (args.log_path.is_some() || args.show_level || args.show_log_origin)
    {
        base.logger = Some(model::Logger {
            log_path: args.log_path.clone(),
            show_level: Some(args.show_level),
            show_log_origin: Some(args.show_log_origin),
            ..Default::default()
        });
    }
    if base.metrics.is_none() {
        if let Some(p) = &args.metrics_path {
            base.metrics = Some(model::Metrics {
                metrics_path: p.clone(),
            });
        }
    }
    let start_from_file = args.config_file.is_some();
    let resources = if start_from_file {
        Some(base.validate().map_err(|e| {
            format!(
                "{}: {e}",
                args.config_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            )
        })?)
    } else {
        None
    };
    let mut ctl = vmm::rpc::Controller::new(&args.id, base, Box::new(logger::configure));
    ctl.apply_outputs()?;
    let store = mmds_store(&args)?;
    ctl.set_mmds_store(store.clone());

    let start = args.start_time_us;
    let mut opts = vmm::RunOptions {
        mmds: store,
        console_input: console_input(),
        on_first_run: Some(Box::new(move || {
            let now = monotonic_us();
            match start {
                Some(t0) => log::info!("exec to first KVM_RUN: {} us", now.saturating_sub(t0)),
                None => log::info!("first KVM_RUN at monotonic {now} us"),
            }
        })),
    };
    let link = if args.no_api {
        None
    } else {
        let (server, link) =
            api::ApiServer::bind(&args.api_sock, args.max_payload).map_err(|e| e.to_string())?;
        let counters = server.counters();
        ctl.set_api_counters(std::sync::Arc::new(move || counters.snapshot()));
        server.start().map_err(|e| e.to_string())?;
        if let Some(t0) = args.start_time_us {
            log::info!(
                "exec to API ready: {} us",
                monotonic_us().saturating_sub(t0)
            );
        }
        // The same channels, seen from the VMM's side (the VMM does not know the api crate).
        Some(vmm::rpc::RequestLink {
            requests: link.requests,
            answers: link.answers,
            wake: link.wake,
        })
    };
    let _raw = terminal::RawTerminal::enable();
    let vmm = match (&resources, &link) {
        (Some(res), _) => {
            let vmm = vmm::build(res, &mut opts).map_err(|e| e.to_string())?;
            ctl.started(vmm.runtime());
            vmm
        }
        (None, Some(link)) => {
            vmm::rpc::serve_until_started(&mut ctl, link, &mut opts).map_err(|e| e.to_string())?
        }
        (None, None) => return Err("--no-api needs --config-file".into()),
    };
    let mut vmm = vmm;
    let api = std::sync::Arc::new(std::sync::Mutex::new(vmm::rpc::ApiSubscriber::new(
        ctl, link,
    )));
    vmm.add_subscriber(api.clone());
    // The guest runs from here on: the VMM thread handles its devices and the API's requests
    // under its filter (threads it starts from now inherit it, under their own).
    seccomp::confine(seccomp::ThreadKind::Vmm).map_err(|e| e.to_string())?;
    let end = vmm.run_until_end().map_err(|e| e.to_string());
    api.lock().unwrap_or_else(|p| p.into_inner()).final_flush();
    end
}

/// MMDS's data store: `--mmds-size-limit`, filled from `--metadata` if given.
fn mmds_store(args: &Args) -> Result<std::sync::Arc<std::sync::Mutex<mmds::MmdsStore>>, String> {
    let mut store = mmds::MmdsStore::new(args.mmds_size_limit);
    if let Some(path) = &args.metadata {
        let text =
            std::fs::read(path).map_err(|e| format!("--metadata {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| format!("--metadata {}: invalid JSON: {e}", path.display()))?;
        store
            .put(value)
            .map_err(|e| format!("--metadata {}: {e}", path.display()))?;
    }
    Ok(std::sync::Arc::new(std::sync::Mutex::new(store)))
}

fn main() -> ExitCode {
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(args)) => *args,
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("ember {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ember: error: {e}");
            // A usage error, as clap and most tools report it.
            return ExitCode::from(2);
        }
    };
    logger::init(&args.id, args.level);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            // One line, whatever the cause: launchers grep for it.
            eprintln!("ember: error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
