//! ember's command line: Firecracker's flags where they apply.
//!
//! Parsed with lexopt, a parser and nothing more: the flags are few and fixed, and clap,
//! which ember used before, built its whole command model at every start (about 9 ms of
//! exec -> API ready in the emulated KVM host, where Firecracker's own parser costs
//! nothing measurable). The help text is written out below for the same reason.

use log::LevelFilter;
use std::ffi::OsString;
use std::path::PathBuf;
use thiserror::Error;

/// The API socket when `--api-sock` is not given (Firecracker's default).
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// The microVM id when `--id` is not given (Firecracker's default).
pub const DEFAULT_ID: &str = "anonymous-instance";

/// What `--help` prints.
pub const HELP: &str = "\
Ember microVM monitor: one process, one KVM guest

Usage: ember [OPTIONS]

Options:
      --api-sock <PATH>          Path of the API socket (Firecracker's default)
                                 [default: /run/firecracker.socket]
      --id <ID>                  MicroVM id, used in log lines and `GET /`
                                 [default: anonymous-instance]
      --config-file <PATH>       Start the VM described by this JSON file (Firecracker's
                                 format) at once
      --no-api                   Do not serve the API; requires --config-file
      --log-path <PATH>          Log file (or FIFO); stderr when absent
      --level <LEVEL>            Log level: Error, Warning, Info, Debug, Trace or Off
                                 [default: Warning]
      --show-level               Show the level in each log line
      --show-log-origin          Show the source file and line in each log line
      --metrics-path <PATH>      Metrics file (or FIFO): one JSON line on FlushMetrics and
                                 every 60 s
      --http-api-max-payload-size <BYTES>
                                 Largest API request body, in bytes [default: 51200]
      --start-time-us <MICROSECONDS>
                                 The launcher's CLOCK_MONOTONIC time at exec, in
                                 microseconds; ember then logs (at Info) how long it took
                                 from exec to the guest's first instruction
      --start-time-cpu-us <MICROSECONDS>
                                 The launcher's CPU time at exec (accepted for Firecracker
                                 compatibility)
      --parent-cpu-time-us <MICROSECONDS>
                                 The launcher's own CPU time (accepted for Firecracker
                                 compatibility: its jailer passes it)
      --seccomp-filter <PATH>    A seccomp filter file (seccompiler's JSON format, a filter
                                 per thread kind: vmm, api, vcpu, block, net, vsock,
                                 entropy, balloon) instead of the built-in filters
      --no-seccomp               Run every thread without a seccomp filter (for debugging;
                                 not for untrusted guests)
      --mmds-size-limit <BYTES>  The largest MMDS data store, bytes of its JSON
                                 (Firecracker's default) [default: 51200]
      --metadata <PATH>          A JSON file to fill MMDS's data with at start
  -h, --help                     Print help
  -V, --version                  Print version
";

/// Firecracker flags ember does not implement: refused by name.
/// (the flag, whether it takes a value).
const UNSUPPORTED: [(&str, bool); 4] = [
    ("--boot-timer", false),
    ("--snapshot-version", false),
    ("--describe-snapshot", true),
    ("--enable-pci", false),
];

/// The flags, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--api-sock`.
    pub api_sock: PathBuf,
    /// `--id`.
    pub id: String,
    /// `--config-file`.
    pub config_file: Option<PathBuf>,
    /// `--no-api`.
    pub no_api: bool,
    /// `--log-path`.
    pub log_path: Option<String>,
    /// `--level`.
    pub level: LevelFilter,
    /// `--show-level`.
    pub show_level: bool,
    /// `--show-log-origin`.
    pub show_log_origin: bool,
    /// `--metrics-path`.
    pub metrics_path: Option<String>,
    /// `--http-api-max-payload-size`.
    pub max_payload: usize,
    /// `--start-time-us`.
    pub start_time_us: Option<u64>,
    /// `--start-time-cpu-us` (accepted, unused).
    pub start_time_cpu_us: Option<u64>,
    /// `--parent-cpu-time-us` (accepted, unused).
    pub parent_cpu_time_us: Option<u64>,
    /// `--seccomp-filter`.
    pub seccomp_filter: Option<String>,
    /// `--no-seccomp`.
    pub no_seccomp: bool,
    /// `--mmds-size-limit`.
    pub mmds_size_limit: usize,
    /// `--metadata`.
    pub metadata: Option<PathBuf>,
    /// The first Firecracker flag given that ember does not implement, as typed.
    pub unsupported: Option<&'static str>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run a VMM with these flags.
    Run(Box<Args>),
    /// Print [`HELP`].
    Help,
    /// Print the version.
    Version,
}

/// A command line ember cannot use; each names the flag.
#[derive(Debug, Error)]
pub enum ArgsError {
    /// lexopt's own: an unknown flag, a flag without its value, a stray argument.
    #[error("{0} (see --help)")]
    Parse(#[from] lexopt::Error),
    /// A value that does not parse as the flag's type.
    #[error("invalid value {value:?} for --{flag}: {reason}")]
    Value {
        /// The flag, without its dashes.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// Two flags that exclude each other.
    #[error("--{0} cannot be used with --{1}")]
    Conflict(&'static str, &'static str),
    /// A flag that needs another.
    #[error("--{0} requires --{1}")]
    Requires(&'static str, &'static str),
}

impl Default for Args {
    fn default() -> Self {
        Self {
            api_sock: PathBuf::from(DEFAULT_API_SOCK),
            id: DEFAULT_ID.into(),
            config_file: None,
            no_api: false,
            log_path: None,
            level: LevelFilter::Warn,
            show_level: false,
            show_log_origin: false,
            metrics_path: None,
            max_payload: api::http::DEFAULT_MAX_PAYLOAD,
            start_time_us: None,
            start_time_cpu_us: None,
            parent_cpu_time_us: None,
            seccomp_filter: None,
            no_seccomp: false,
            mmds_size_limit: mmds::DEFAULT_SIZE_LIMIT,
            metadata: None,
            unsupported: None,
        }
    }
}

/// A flag's value as text (paths stay `OsString`s: they need not be UTF-8).
fn text(flag: &'static str, value: OsString) -> Result<String, ArgsError> {
    value.into_string().map_err(|v| ArgsError::Value {
        flag,
        value: v.to_string_lossy().into_owned(),
        reason: "not UTF-8".into(),
    })
}

fn number<T: std::str::FromStr>(flag: &'static str, value: OsString) -> Result<T, ArgsError>
where
    T::Err: std::fmt::Display,
{
    let value = text(flag, value)?;
    value.parse().map_err(|e: T::Err| ArgsError::Value {
        flag,
        reason: e.to_string(),
        value,
    })
}

/// Parses `argv` (without the program name).
pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Result<Command, ArgsError> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(argv);
    let mut a = Args::default();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("api-sock") => a.api_sock = p.value()?.into(),
            Long("id") => a.id = text("id", p.value()?)?,
            Long("config-file") => a.config_file = Some(p.value()?.into()),
            Long("no-api") => a.no_api = true,
            Long("log-path") => a.log_path = Some(text("log-path", p.value()?)?),
            Long("level") => {
                let value = text("level", p.value()?)?;
                a.level =
                    crate::logger::parse_level(&value).map_err(|reason| ArgsError::Value {
                        flag: "level",
                        value,
                        reason,
                    })?;
            }
            Long("show-level") => a.show_level = true,
            Long("show-log-origin") => a.show_log_origin = true,
            Long("metrics-path") => a.metrics_path = Some(text("metrics-path", p.value()?)?),
            Long("http-api-max-payload-size") => {
                a.max_payload = number("http-api-max-payload-size", p.value()?)?
            }
            Long("start-time-us") => a.start_time_us = Some(number("start-time-us", p.value()?)?),
            Long("start-time-cpu-us") => {
                a.start_time_cpu_us = Some(number("start-time-cpu-us", p.value()?)?)
            }
            Long("parent-cpu-time-us") => {
                a.parent_cpu_time_us = Some(number("parent-cpu-time-us", p.value()?)?)
            }
            Long("seccomp-filter") => a.seccomp_filter = Some(text("seccomp-filter", p.value()?)?),
            Long("no-seccomp") => a.no_seccomp = true,
            Long("mmds-size-limit") => a.mmds_size_limit = number("mmds-size-limit", p.value()?)?,
            Long("metadata") => a.metadata = Some(p.value()?.into()),
            Long(name) => match UNSUPPORTED.iter().find(|(f, _)| f[2..] == *name) {
                Some(&(flag, takes_value)) => {
                    if takes_value {
                        p.value()?;
                    }
                    a.unsupported = a.unsupported.or(Some(flag));
                }
                None => return Err(Long(name).unexpected().into()),
            },
            other => return Err(other.unexpected().into()),
        }
    }
    if a.seccomp_filter.is_some() && a.no_seccomp {
        return Err(ArgsError::Conflict("seccomp-filter", "no-seccomp"));
    }
    if a.no_api && a.config_file.is_none() {
        return Err(ArgsError::Requires("no-api", "config-file"));
    }
    Ok(Command::Run(Box::new(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse(args.iter().map(OsString::from)) {
            Ok(Command::Run(a)) => Ok(*a),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn defaults_are_firecrackers() {
        let a = run(&[]).unwrap();
        assert_eq!(a, Args::default());
        assert_eq!(a.api_sock, PathBuf::from("/run/firecracker.socket"));
        assert_eq!(a.id, "anonymous-instance");
        assert_eq!(a.level, LevelFilter::Warn);
        assert_eq!(a.max_payload, 51200);
    }

    #[test]
    fn every_flag_is_read_in_both_spellings() {
        let a = run(&[
            "--api-sock",
            "/tmp/a.sock",
            "--id=vm1",
            "--config-file",
            "c.json",
            "--no-api",
            "--log-path",
            "l.log",
            "--level",
            "debug",
            "--show-level",
            "--show-log-origin",
            "--metrics-path=m.fifo",
            "--http-api-max-payload-size",
            "1000",
            "--start-time-us",
            "12",
            "--start-time-cpu-us",
            "3",
            "--parent-cpu-time-us",
            "4",
            "--mmds-size-limit",
            "99",
            "--metadata",
            "md.json",
            "--no-seccomp",
        ])
        .unwrap();
        assert_eq!(a.api_sock, PathBuf::from("/tmp/a.sock"));
        assert_eq!(a.id, "vm1");
        assert_eq!(a.config_file, Some(PathBuf::from("c.json")));
        assert!(a.no_api && a.show_level && a.show_log_origin && a.no_seccomp);
        assert_eq!(a.log_path.as_deref(), Some("l.log"));
        assert_eq!(a.level, LevelFilter::Debug);
        assert_eq!(a.metrics_path.as_deref(), Some("m.fifo"));
        assert_eq!(a.max_payload, 1000);
        assert_eq!(
            (a.start_time_us, a.start_time_cpu_us, a.parent_cpu_time_us),
            (Some(12), Some(3), Some(4))
        );
        assert_eq!(a.mmds_size_limit, 99);
        assert_eq!(a.metadata, Some(PathBuf::from("md.json")));
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(parse(["--help".into()]).unwrap(), Command::Help));
        assert!(matches!(parse(["-V".into()]).unwrap(), Command::Version));
        for line in HELP.lines().filter(|l| l.trim_start().starts_with("--")) {
            let flag = line.split_whitespace().next().unwrap();
            assert!(
                flag == "--help"
                    || flag == "--version"
                    || run(&[flag]).map_or_else(|e| !e.contains("unexpected"), |_| true),
                "{flag} is in --help but not parsed"
            );
        }
    }

    #[test]
    fn bad_lines_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus"], "invalid option '--bogus'"),
            (&["stray"], "unexpected argument \"stray\""),
            (&["--api-sock"], "missing argument for option '--api-sock'"),
            (
                &["--level", "loud"],
                "invalid value \"loud\" for --level: unknown log level",
            ),
            (
                &["--start-time-us", "-1"],
                "invalid value \"-1\" for --start-time-us: invalid digit",
            ),
            (
                &["--http-api-max-payload-size", "big"],
                "invalid value \"big\" for --http-api-max-payload-size",
            ),
            (&["--no-api"], "--no-api requires --config-file"),
            (
                &["--seccomp-filter", "f.json", "--no-seccomp"],
                "--seccomp-filter cannot be used with --no-seccomp",
            ),
            (
                &["--no-seccomp=yes"],
                "unexpected argument for option '--no-seccomp'",
            ),
        ];
        for (argv, want) in cases {
            let err = run(argv).unwrap_err();
            assert!(err.contains(want), "{argv:?}: {err}");
        }
    }

    #[test]
    fn firecracker_flags_ember_lacks_are_kept_by_name() {
        assert_eq!(
            run(&["--boot-timer"]).unwrap().unsupported,
            Some("--boot-timer")
        );
        let a = run(&["--describe-snapshot", "s.snap", "--enable-pci"]).unwrap();
        assert_eq!(a.unsupported, Some("--describe-snapshot"));
    }
}
