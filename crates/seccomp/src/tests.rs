//! Each built-in filter, installed in a forked child: what its thread does is allowed, and
//! a call outside its list kills the child with SIGSYS.

use super::*;

/// Whether these tests run under qemu-user (the aarch64 unit tests on an x86_64 machine):
/// it cannot install a filter for the program it emulates (the filter would judge qemu's
/// own system calls), so the filter tests skip there; the aarch64 filters are exercised by
/// the real-guest suite in the emulated aarch64 KVM host (tests/e2e/test_seccomp.py).
fn under_qemu_user() -> bool {
    cfg!(target_arch = "aarch64")
        && std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER")
            .is_ok_and(|r| r.contains("qemu"))
}

/// Runs `body` in a forked child confined by `prog`; returns the child's wait status.
fn in_child(prog: &BpfProgram, body: impl FnOnce() -> i32) -> i32 {
    in_child_with(prog, None, body)
}

/// [`in_child`], with ember's SIGSYS handler installed first and the thread marked as
/// `report`'s kind when given.
fn in_child_with(
    prog: &BpfProgram,
    report: Option<&'static str>,
    body: impl FnOnce() -> i32,
) -> i32 {
    // SAFETY: the child only installs the filter, makes raw system calls and _exits; it
    // touches no lock another thread of the test harness could hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if let Some(kind) = report {
            if sigsys::install().is_err() {
                // SAFETY: ends the child.
                unsafe { libc::_exit(98) };
            }
            sigsys::KIND.with(|k| k.set(kind));
        }
        let code = match seccompiler::apply_filter(prog) {
            Ok(()) => body(),
            Err(_) => 99,
        };
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    status
}

fn killed_by_sigsys(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

fn exited_zero(status: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// A read and a write (on a closed descriptor: they fail, but get past the filter), which
/// every thread kind does.
fn io_on_own_fds() -> i32 {
    let mut b = [0u8];
    // SAFETY: -1 is no descriptor; the calls fail with EBADF and touch nothing.
    unsafe {
        libc::read(-1, b.as_mut_ptr().cast(), 1);
        libc::write(-1, b.as_ptr().cast(), 1);
    }
    0
}

/// openat of a host file, as a guest that took over the thread would try.
fn open_host_file() -> i32 {
    let path = c"/etc/hostname";
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
    i32::from(fd < 0) + 10
}

/// execve of a shell: no thread of ember may start a program.
fn exec_shell() -> i32 {
    let sh = c"/bin/sh";
    let argv = [sh.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated strings and NULL-terminated arrays that outlive the call.
    unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    20
}

#[test]
fn every_thread_kind_has_a_built_in_filter() {
    for kind in ThreadKind::ALL {
        assert!(
            !built_in(kind).is_empty(),
            "no built-in filter for {}",
            kind.key()
        );
    }
}

#[test]
fn every_filter_kills_on_exec() {
    if under_qemu_user() {
        eprintln!("skipped: seccomp filters cannot be installed under qemu-user");
        return;
    }
    for kind in ThreadKind::ALL {
        let status = in_child(&built_in(kind), exec_shell);
        assert!(
            killed_by_sigsys(status),
            "{}: exec not killed ({status:#x})",
            kind.key()
        );
    }
}

#[test]
fn threads_that_open_nothing_are_killed_when_they_open_a_host_file() {
    if under_qemu_user() {
        eprintln!("skipped: seccomp filters cannot be installed under qemu-user");
        return;
    }
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Vsock,
        ThreadKind::Entropy,
        ThreadKind::Balloon,
    ] {
        let status = in_child(&built_in(kind), open_host_file);
        assert!(
            killed_by_sigsys(status),
            "{}: openat not killed ({status:#x})",
            kind.key()
        );
    }
}

#[test]
fn what_every_thread_does_is_allowed() {
    if under_qemu_user() {
        eprintln!("skipped: seccomp filters cannot be installed under qemu-user");
        return;
    }
    for kind in ThreadKind::ALL {
        let status = in_child(&built_in(kind), io_on_own_fds);
        assert!(
            exited_zero(status),
            "{}: ordinary I/O refused ({status:#x})",
            kind.key()
        );
    }
}

#[test]
fn only_the_vmm_thread_removes_files() {
    if under_qemu_user() {
        eprintln!("skipped: seccomp filters cannot be installed under qemu-user");
        return;
    }
    // The VMM thread removes the vsock socket it bound when ember ends (a guest reset with
    // a vsock device used to end ember by SIGSYS here); no other thread removes anything.
    let unlink = || {
        // The path does not exist: the call fails with ENOENT where the filter allows it.
        let _ = std::fs::remove_file("/nonexistent/ember-seccomp-test");
        0
    };
    for kind in ThreadKind::ALL {
        let status = in_child(&built_in(kind), unlink);
        if kind == ThreadKind::Vmm {
            assert!(exited_zero(status), "vmm: unlink refused ({status:#x})");
        } else {
            assert!(
                killed_by_sigsys(status),
                "{}: unlink allowed ({status:#x})",
                kind.key()
            );
        }
    }
}

#[test]
fn only_the_vcpu_filter_allows_kvm_run() {
    if under_qemu_user() {
        eprintln!("skipped: seccomp filters cannot be installed under qemu-user");
        return;
    }
    // KVM_RUN on a descriptor that is not a vCPU fails with an error, but only where the
    // filter lets the ioctl through; elsewhere the filter kills first.
    const KVM_RUN: libc::c_ulong = 0xae80;
    let kvm_run = || {
        // SAFETY: an ioctl on stdin with no argument: it fails, and nothing is written.
        unsafe { libc::ioctl(0, KVM_RUN as _, 0) };
        0
    };
    for kind in ThreadKind::ALL {
        let status = in_child(&built_in(kind), kvm_run);
        if kind == ThreadKind::Vcpu {
            assert!(exited_zero(status), "vcpu: KVM_RUN refused ({status:#x})");
        } else {
            assert!(
                killed_by_sigsys(status),
                "{}: KVM_RUN allowed ({status:#x})",
                kind.key()
            );
        }
    }
}

#[test]
fn only_vsock_and_vcpu_make_sockets_and_only_unix_ones() {
    if under_qemu_user() {
        eprintln!("skipped: seccomp filters cannot be installed under qemu-user");
        return;
    }
    let socket = |domain: libc::c_int| {
        move || {
            // SAFETY: socket() takes no pointers; the descriptor is left to the child's exit.
            let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            i32::from(fd < 0)
        }
    };
    for kind in ThreadKind::ALL {
        let unix = in_child(&built_in(kind), socket(libc::AF_UNIX));
        let inet = in_child(&built_in(kind), socket(libc::AF_INET));
        // The vCPU list holds what the device threads it starts do (filters stack).
        if matches!(kind, ThreadKind::Vsock | ThreadKind::Vcpu) {
            assert!(
                exited_zero(unix),
                "{}: AF_UNIX refused ({unix:#x})",
                kind.key()
            );
        } else {
            assert!(
                killed_by_sigsys(unix),
                "{}: socket allowed ({unix:#x})",
                kind.key()
            );
        }
        assert!(
            killed_by_sigsys(inet),
            "{}: AF_INET allowed ({inet:#x})",
            kind.key()
        );
    }
}

#[test]
fn a_filter_file_needs_every_thread_kind_and_names_what_is_missing() {
    let dir = std::env::temp_dir().join(format!("ember-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let partial = dir.join("partial.json");
    std::fs::write(
        &partial,
        r#"{"vmm": {"mismatch_action": "kill_process", "match_action": "allow", "filter": []}}"#,
    )
    .unwrap();
    let err = Policy::from_file(partial.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no filter for thread kind `api`"), "{err}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let err = Policy::from_file(bad.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("seccomp filter file {}", bad.display())),
        "{err}"
    );
    let err = Policy::from_file("/nonexistent/filters.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read seccomp filter file /nonexistent/filters.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_forbidden_call_is_reported_and_ends_the_process_with_148() {
    if under_qemu_user() {
        eprintln!("skipped: seccomp filters cannot be installed under qemu-user");
        return;
    }
    let status = in_child_with(&built_in(ThreadKind::Vcpu), Some("vcpu"), open_host_file);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == sigsys::BAD_SYSCALL_EXIT,
        "status {status:#x}"
    );
}
