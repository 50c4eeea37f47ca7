//! Per-thread seccomp filters for ember.
//!
//! Each kind of thread ([`ThreadKind`]) runs under its own allow-list, compiled at build time
//! from `resources/seccomp/<arch>.json` (rust-vmm seccompiler's JSON format) into the binary.
//! `ember` chooses the [`Policy`] once, at start ([`set_policy`]); every thread then calls
//! [`confine`] before it handles any guest or API input. A call outside the list is never
//! executed: the kernel sends the thread SIGSYS, and ember logs the thread kind and the
//! call's number and exits with status 148 ([`sigsys`]).
//!
//! Filters stack: a thread started by a confined thread inherits that thread's filter and
//! adds its own. A virtio device thread is started by the vCPU thread that handles the
//! driver's DRIVER_OK write, so it is held by the `vcpu` list and its own; the `vcpu` list
//! therefore allows what device activation and the device threads do, and each device
//! thread's own list is the tight one.

use seccompiler::{sock_filter, BpfProgram};
use std::collections::HashMap;
use std::sync::OnceLock;
use thiserror::Error;

pub mod sigsys;

/// One BPF instruction as build.rs writes it: (code, jt, jf, k).
pub type Insn = (u16, u8, u8, u32);

include!(concat!(env!("OUT_DIR"), "/filters.rs"));

/// The kinds of thread ember runs, each with its own filter (the key in the JSON file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The VMM thread: the event loop, the console, the API's requests, device setup.
    Vmm,
    /// The API server thread: the Unix socket and HTTP parsing.
    Api,
    /// A vCPU thread: `KVM_RUN` and the exits it handles.
    Vcpu,
    /// A virtio-blk device thread: the queue and the backing file.
    Block,
    /// A virtio-net device thread: the queues and the tap.
    Net,
    /// A virtio-vsock device thread: the queues, the Unix socket it listens on and the
    /// connections it relays.
    Vsock,
    /// A virtio-rng device thread: the queue and the host's `getrandom`.
    Entropy,
    /// A virtio-balloon device thread: the queues, `madvise` on guest memory, and the
    /// statistics timer.
    Balloon,
}

impl ThreadKind {
    /// Every kind, in the order the filter file lists them.
    pub const ALL: [ThreadKind; 8] = [
        Self::Vmm,
        Self::Api,
        Self::Vcpu,
        Self::Block,
        Self::Net,
        Self::Vsock,
        Self::Entropy,
        Self::Balloon,
    ];

    /// The kind's key in a filter file.
    pub fn key(self) -> &'static str {
        match self {
            Self::Vmm => "vmm",
            Self::Api => "api",
            Self::Vcpu => "vcpu",
            Self::Block => "block",
            Self::Net => "net",
            Self::Vsock => "vsock",
            Self::Entropy => "entropy",
            Self::Balloon => "balloon",
        }
    }
}

/// Errors choosing or installing filters.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The filter file cannot be read.
    #[error("cannot read seccomp filter file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        reason: String,
    },
    /// The filter file is not a valid seccompiler JSON filter set for this architecture.
    #[error("seccomp filter file {path}: {reason}")]
    Compile {
        /// The file.
        path: String,
        /// What the compiler said.
        reason: String,
    },
    /// The filter file lacks a thread kind's filter.
    #[error("seccomp filter file {path} has no filter for thread kind `{kind}` (it needs vmm, api, vcpu, block and net)")]
    MissingKind {
        /// The file.
        path: String,
        /// The missing key.
        kind: &'static str,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of the {kind} thread: {reason}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// What the kernel said.
        reason: String,
    },
    /// The SIGSYS handler cannot be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(String),
    /// `set_policy` was called twice.
    #[error("the seccomp policy is already set")]
    AlreadySet,
}

/// Which filters the threads install.
#[derive(Debug)]
pub enum Policy {
    /// The filters built into the binary (the default).
    BuiltIn,
    /// No filters (`--no-seccomp`).
    Off,
    /// Filters compiled from a file (`--seccomp-filter FILE`).
    Custom(HashMap<ThreadKind, BpfProgram>),
}

impl Policy {
    /// Compiles a filter file in seccompiler's JSON format for this architecture; it must
    /// have a filter for every thread kind.
    pub fn from_file(path: &str) -> Result<Self, SeccompError> {
        let file = std::fs::File::open(path).map_err(|e| SeccompError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let map = seccompiler::compile_from_json(file, host_arch()).map_err(|e| {
            SeccompError::Compile {
                path: path.into(),
                reason: e.to_string(),
            }
        })?;
        let mut out = HashMap::new();
        for kind in ThreadKind::ALL {
            let prog = map.get(kind.key()).ok_or(SeccompError::MissingKind {
                path: path.into(),
                kind: kind.key(),
            })?;
            out.insert(kind, prog.clone());
        }
        Ok(Self::Custom(out))
    }
}

#[cfg(target_arch = "x86_64")]
fn host_arch() -> seccompiler::TargetArch {
    seccompiler::TargetArch::x86_64
}

#[cfg(target_arch = "aarch64")]
fn host_arch() -> seccompiler::TargetArch {
    seccompiler::TargetArch::aarch64
}

static POLICY: OnceLock<Policy> = OnceLock::new();

/// Chooses the policy for every thread of the process, and installs the SIGSYS handler
/// that reports a forbidden call; once, before any other thread starts (see
/// [`one_arena`]). A process that never chooses (the device and VMM crates' own unit
/// tests, which start device and vCPU threads inside the test harness) installs no
/// filters; ember always chooses, and tests/e2e/test_seccomp.py checks that its every
/// thread is confined.
pub fn set_policy(policy: Policy) -> Result<(), SeccompError> {
    one_arena();
    if !matches!(policy, Policy::Off) {
        sigsys::install().map_err(|e| SeccompError::Handler(e.to_string()))?;
    }
    POLICY.set(policy).map_err(|_| SeccompError::AlreadySet)
}

/// Keeps every thread on glibc's main arena (`M_ARENA_MAX` = 1). A thread arena, the
/// first time it gives memory back (`shrink_heap`), makes glibc open
/// `/proc/sys/vm/overcommit_memory`, and only the vmm thread's filter has `openat` (seen:
/// the vsock thread freeing a connection's buffer mid-transfer died of SIGSYS 257). The
/// main arena grows and shrinks with `brk`, which every filter allows, and never reads that
/// file. (Priming a thread arena before any filter, which ember did before, cost a thread
/// and 0.2 ms of every start, a fifth of exec -> API ready.) One arena is one lock, as in
/// musl's allocator, which Firecracker's builds use; glibc's per-thread caches still serve
/// small allocations without it. Takes effect only if called before the process's second
/// thread starts: glibc fixes its arena limit when the first thread allocates. Elsewhere
/// (another libc) it does nothing.
pub fn one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a tunable of glibc's allocator; it takes the allocator's own
    // lock and touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The built-in filter of `kind`.
pub fn built_in(kind: ThreadKind) -> BpfProgram {
    DEFAULT_FILTERS
        .iter()
        .find(|(name, _)| *name == kind.key())
        .map(|(_, prog)| {
            prog.iter()
                .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
                .collect()
        })
        .unwrap_or_default()
}

/// Installs `kind`'s filter on the calling thread, as the policy says. The caller must not
/// go on if this fails: the thread would run unconfined.
pub fn confine(kind: ThreadKind) -> Result<(), SeccompError> {
    let prog = match POLICY.get().unwrap_or(&Policy::Off) {
        Policy::Off => return Ok(()),
        Policy::BuiltIn => built_in(kind),
        Policy::Custom(map) => map.get(&kind).cloned().unwrap_or_default(),
    };
    sigsys::KIND.with(|k| k.set(kind.key()));
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install {
        kind: kind.key(),
        reason: e.to_string(),
    })?;
    log::debug!("seccomp filter of the {} thread installed", kind.key());
    Ok(())
}

/// [`confine`], or the end of the process: for threads that cannot report an error to
/// anyone (a thread left unconfined must not handle guest or API input).
pub fn confine_or_exit(kind: ThreadKind) {
    if let Err(e) = confine(kind) {
        eprintln!("ember: error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests;
