//! `ember-jailer`: makes a jail (a chroot with a copy of the VMM and its device nodes, a
//! cgroup v2, a mount namespace, optionally a network and a PID namespace), drops to an
//! unprivileged user and execs ember in it. Flags and order of operations follow
//! Firecracker's jailer (docs/jailer.md).

mod args;
mod cgroup;
mod error;
mod fs;
mod run;
mod sys;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let start_us = sys::clock_us(libc::CLOCK_MONOTONIC);
    let parsed = match args::Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first, without its usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!(
                "ember-jailer: {} (see --help)",
                first
                    .strip_prefix("error: ")
                    .map_or(first.to_string(), |r| format!("error: {r}"))
            );
            return ExitCode::from(2);
        }
    };
    let outcome = parsed.into_spec().and_then(|spec| run::run(spec, start_us));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-jailer: error: {e}");
            ExitCode::FAILURE
        }
    }
}
