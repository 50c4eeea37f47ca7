//! `ember`: one process, one KVM guest. Command-line flags follow Firecracker's.

mod logger;
mod terminal;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Command-line flags (the Firecracker subset this build implements).
#[derive(Parser, Debug)]
#[command(
    name = "ember",
    version,
    about = "Ember microVM monitor: one process, one KVM guest"
)]
struct Args {
    /// Path of the API socket (the API server arrives in a later release; see docs/api.md).
    #[arg(long = "api-sock", value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// MicroVM id, used in log lines.
    #[arg(long = "id", default_value = "anonymous-instance")]
    id: String,
    /// Start the VM described by this JSON file (Firecracker's format).
    #[arg(long = "config-file", value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// Do not serve the API; requires --config-file and starts the guest at once.
    #[arg(long = "no-api", requires = "config_file")]
    no_api: bool,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long = "level", default_value = "Warning", value_parser = logger::parse_level)]
    level: log::LevelFilter,
    /// The launcher's CLOCK_MONOTONIC time at exec, in microseconds; ember then logs
    /// (at Info) how long it took from exec to the guest's first instruction.
    #[arg(long = "start-time-us", value_name = "MICROSECONDS")]
    start_time_us: Option<u64>,
}

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
    if !args.no_api {
        return Err(
            "the HTTP API is not part of this build yet: start the guest with --no-api --config-file FILE"
                .to_string(),
        );
    }
    let path = args
        .config_file
        .as_ref()
        .ok_or("--no-api needs --config-file")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let resources = vmm::parse_config(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let start = args.start_time_us;
    let opts = vmm::RunOptions {
        console_input: console_input(),
        on_first_run: Some(Box::new(move || {
            let now = monotonic_us();
            match start {
                Some(t0) => log::info!("exec to first KVM_RUN: {} us", now.saturating_sub(t0)),
                None => log::info!("first KVM_RUN at monotonic {now} us"),
            }
        })),
    };
    let _raw = terminal::RawTerminal::enable();
    vmm::build_and_run(&resources, opts).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    logger::init(&args.id, args.level);
    if args.api_sock.is_some() {
        log::debug!("--api-sock given; the API server is not part of this build");
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            // One line, whatever the cause: launchers grep for it.
            eprintln!("ember: error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
