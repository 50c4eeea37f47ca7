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

use std::process::ExitCode;

fn main() -> ExitCode {
    let start_us = sys::clock_us(libc::CLOCK_MONOTONIC);
    let parsed = match args::parse(std::env::args_os().skip(1)) {
        Ok(args::Command::Jail(a)) => *a,
        Ok(args::Command::Help) => {
            print!("{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(args::Command::Version) => {
            println!("ember-jailer {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // A usage error: one line, and clap's usage code, as before.
            eprintln!("ember-jailer: error: {e}");
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
