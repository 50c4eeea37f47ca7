//! `emberd`: the host agent's daemon.

use agent::instances::{Agent, Settings};
use clap::Parser;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// emberd: runs ember instances on this host, EC2-style, through a REST API on a Unix socket.
#[derive(Parser, Debug)]
#[command(name = "emberd", version)]
struct Args {
    /// A JSON file with any of `socket`, `state_dir`, `bridge`, `subnet`, `ember`,
    /// `stop_timeout`, `run_dir`, `sample_interval`, `jailer`, `chroot_base_dir`,
    /// `uid_range`, `memory_overhead_mib`, `availability_zone`, `region`, `ec2_listen`,
    /// `ec2_credentials`; flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The API socket.
    #[arg(long, default_value = "/run/ember/emberd.sock")]
    socket: PathBuf,
    /// Database, images and instances.
    #[arg(long, default_value = "/var/lib/emberd")]
    state_dir: PathBuf,
    /// The host bridge for instances' taps (created if missing).
    #[arg(long, default_value = "ember0")]
    bridge: String,
    /// The instances' /24 network (the bridge takes .1).
    #[arg(long, default_value = "172.31.0.0")]
    subnet: std::net::Ipv4Addr,
    /// The ember binary.
    #[arg(long, default_value = "ember")]
    ember: PathBuf,
    /// Seconds a stop waits for the guest before killing its VMM.
    #[arg(long, default_value_t = 30)]
    stop_timeout: u64,
    /// Where the VMMs' API sockets go (keep it short: socket paths are limited).
    #[arg(long, default_value = "/run/ember/vms")]
    run_dir: PathBuf,
    /// Seconds between usage samples (1 to 300); usage is also sampled at every state change.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    sample_interval: u64,
    /// The ember-jailer binary every VMM is started through.
    #[arg(long, default_value = "ember-jailer")]
    jailer: PathBuf,
    /// Where jails are made (default: <state-dir>/jail; it must be on the state
    /// directory's file system: volumes are hard-linked into jails).
    #[arg(long, value_name = "DIR")]
    chroot_base_dir: Option<PathBuf>,
    /// The VMMs' uids and gids, START-END (at least 256): an instance runs as START plus
    /// the last octet of its address.
    #[arg(long, default_value = "900000-900255", value_parser = parse_uid_range)]
    uid_range: (u32, u32),
    /// Memory a VMM may use beyond its guest's (its cgroup's memory.max is the guest's
    /// memory plus this), in MiB.
    #[arg(long, default_value_t = 64)]
    memory_overhead_mib: u64,
    /// The availability zone instances see in their metadata (and the EC2 API's one zone).
    #[arg(long, default_value = "ember-1a")]
    availability_zone: String,
    /// The EC2 API's region: DescribeRegions's one region, and the region requests must
    /// be signed for.
    #[arg(long, default_value = "ember-1")]
    region: String,
    /// Serve EC2's Query API on this TCP address (off unless given; with no address,
    /// 127.0.0.1:8788). See docs/ec2.md.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = agent::ec2::DEFAULT_LISTEN)]
    ec2_listen: Option<std::net::SocketAddr>,
    /// The EC2 API's access keys: an AWS shared credentials file (`[profile]`,
    /// `aws_access_key_id`, `aws_secret_access_key`), mode 0600, owned by emberd's user.
    #[arg(long, value_name = "FILE")]
    ec2_credentials: Option<PathBuf>,
}

/// `START-END` with END - START + 1 >= 256 (one uid per address of the /24), START > 0.
fn parse_uid_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: must be START-END"))?;
    let (a, b): (u32, u32) = (
        a.parse()
            .map_err(|_| format!("{s:?}: START is not a number"))?,
        b.parse()
            .map_err(|_| format!("{s:?}: END is not a number"))?,
    );
    if a == 0 || b < a || b - a < 255 {
        return Err(format!(
            "{s:?}: must not include 0 and must span at least 256 ids (one per address)"
        ));
    }
    Ok((a, b))
}

/// The config file's keys.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    bridge: Option<String>,
    subnet: Option<std::net::Ipv4Addr>,
    ember: Option<PathBuf>,
    stop_timeout: Option<u64>,
    run_dir: Option<PathBuf>,
    sample_interval: Option<u64>,
    jailer: Option<PathBuf>,
    chroot_base_dir: Option<PathBuf>,
    uid_range: Option<String>,
    memory_overhead_mib: Option<u64>,
    availability_zone: Option<String>,
    region: Option<String>,
    ec2_listen: Option<std::net::SocketAddr>,
    ec2_credentials: Option<PathBuf>,
}

/// Applies the config file under the flags the user gave explicitly.
fn merge(mut args: Args, matches: &clap::ArgMatches) -> Result<Args, String> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: FileConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    if let (Some(v), false) = (f.availability_zone, given("availability_zone")) {
        args.availability_zone = v;
    }
    if let (Some(v), false) = (f.region, given("region")) {
        args.region = v;
    }
    if let (Some(v), false) = (f.ec2_listen, given("ec2_listen")) {
        args.ec2_listen = Some(v);
    }
    if let (Some(v), false) = (f.ec2_credentials, given("ec2_credentials")) {
        args.ec2_credentials = Some(v);
    }
    if let (Some(v), false) = (f.socket, given("socket")) {
        args.socket = v;
    }
    if let (Some(v), false) = (f.state_dir, given("state_dir")) {
        args.state_dir = v;
    }
    if let (Some(v), false) = (f.bridge, given("bridge")) {
        args.bridge = v;
    }
    if let (Some(v), false) = (f.subnet, given("subnet")) {
        args.subnet = v;
    }
    if let (Some(v), false) = (f.ember, given("ember")) {
        args.ember = v;
    }
    if let (Some(v), false) = (f.stop_timeout, given("stop_timeout")) {
        args.stop_timeout = v;
    }
    if let (Some(v), false) = (f.run_dir, given("run_dir")) {
        args.run_dir = v;
    }
    if let (Some(v), false) = (f.sample_interval, given("sample_interval")) {
        if !(1..=300).contains(&v) {
            return Err(format!(
                "{}: sample_interval must be 1 to 300 seconds",
                path.display()
            ));
        }
        args.sample_interval = v;
    }
    if let (Some(v), false) = (f.jailer, given("jailer")) {
        args.jailer = v;
    }
    if let (Some(v), false) = (f.chroot_base_dir, given("chroot_base_dir")) {
        args.chroot_base_dir = Some(v);
    }
    if let (Some(v), false) = (f.uid_range, given("uid_range")) {
        args.uid_range =
            parse_uid_range(&v).map_err(|e| format!("{}: uid_range {e}", path.display()))?;
    }
    if let (Some(v), false) = (f.memory_overhead_mib, given("memory_overhead_mib")) {
        args.memory_overhead_mib = v;
    }
    Ok(args)
}

struct Logger;
impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("emberd: {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn resolve(p: PathBuf) -> PathBuf {
    if p.components().count() > 1 {
        return p;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(&p))
                .find(|c| c.is_file())
        })
        .unwrap_or(p)
}

/// The EC2 listener, bound, with its settings; `None` when `--ec2-listen` is off. Done
/// before anything else starts, so a bad flag or credentials file stops emberd at once.
async fn ec2_listener(
    args: &Args,
) -> Result<Option<(tokio::net::TcpListener, agent::ec2::Ec2Settings)>, String> {
    if !agent::ec2::valid_region(&args.region) {
        return Err(format!(
            "--region {:?}: 1 to 32 lowercase letters, digits and dashes",
            args.region
        ));
    }
    let Some(addr) = args.ec2_listen else {
        if args.ec2_credentials.is_some() {
            log::warn!("--ec2-credentials is only used with --ec2-listen; the EC2 API is off");
        }
        return Ok(None);
    };
    let path = args.ec2_credentials.as_ref().ok_or(
        "--ec2-listen needs --ec2-credentials FILE (an AWS shared credentials file, mode 0600)",
    )?;
    let credentials = agent::ec2::credentials::Credentials::load(path)
        .map_err(|e| format!("--ec2-credentials {e}"))?;
    if !addr.ip().is_loopback() {
        log::warn!(
            "the EC2 API listens on {addr}, beyond this host: requests are signed, \
             but travel in clear HTTP"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--ec2-listen {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--ec2-listen {addr}: {e}"))?;
    Ok(Some((
        listener,
        agent::ec2::Ec2Settings {
            region: args.region.clone(),
            endpoint: format!("http://{bound}"),
            credentials,
        },
    )))
}

async fn serve(args: Args) -> Result<(), String> {
    let ec2 = ec2_listener(&args).await?;
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(|e| format!("/proc/mounts: {e}"))?;
    let cgroup_root = agent::instances::jail::cgroup2_mount(&mounts).ok_or(
        "no cgroup v2 hierarchy is mounted (every VMM runs in a cgroup of its own): \
         mount -t cgroup2 none /sys/fs/cgroup",
    )?;
    let jailer = resolve(args.jailer);
    if !jailer.is_file() {
        return Err(format!("--jailer {}: no such file", jailer.display()));
    }
    let settings = Settings {
        jail: agent::instances::jail::JailSettings {
            jailer,
            chroot_base: args
                .chroot_base_dir
                .unwrap_or_else(|| args.state_dir.join("jail")),
            uid_start: args.uid_range.0,
            memory_overhead_mib: args.memory_overhead_mib,
            cgroup_root,
        },
        state_dir: args.state_dir,
        bridge: args.bridge,
        subnet: args.subnet,
        ember: resolve(args.ember),
        stop_timeout: Duration::from_secs(args.stop_timeout),
        run_dir: args.run_dir,
        sample_interval: Duration::from_secs(args.sample_interval),
        availability_zone: args.availability_zone,
    };
    let agent = Agent::open(settings).map_err(|e| e.to_string())?;
    agent.setup_network().map_err(|e| e.to_string())?;
    agent.adopt().await.map_err(|e| e.to_string())?;
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    match std::fs::symlink_metadata(&args.socket) {
        Ok(md) if std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()) => {
            let _ = std::fs::remove_file(&args.socket);
        }
        Ok(_) => {
            return Err(format!(
                "{}: a file that is not a socket is in the way",
                args.socket.display()
            ))
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .map_err(|e| format!("{}: {e}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("{}: {e}", args.socket.display()))?;
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(agent.settings.sample_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                agent.sample_all().await;
            }
        });
    }
    if let Some((listener, settings)) = ec2 {
        log::info!(
            "EC2 API on {} (region {}, {} access key(s))",
            settings.endpoint,
            settings.region,
            settings.credentials.len()
        );
        let app = agent::ec2::router(agent.clone(), settings);
        tokio::spawn(async move {
            if let Err(e) =
                agent::serve::serve_tcp(listener, app, agent::ec2::errors::head_error).await
            {
                log::error!("EC2 API: {e}");
            }
        });
    }
    log::info!("serving on {}", args.socket.display());
    agent::serve::serve(listener, agent::api::router(agent))
        .await
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches)
        .map_err(|e| e.to_string())
        .and_then(|a| merge(a, &matches))
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("emberd: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = log::set_logger(&Logger);
    log::set_max_level(log::LevelFilter::Info);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emberd: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emberd: error: {e}");
            ExitCode::FAILURE
        }
    }
}
