//! ember's allocator setting (`seccomp::one_arena`, made by `set_policy`) lets a confined
//! thread of every kind allocate and free megabytes without a system call outside its
//! filter. Its own harness (`harness = false`): the setting holds only if made before the
//! process's second thread starts, and libtest starts threads of its own. Without the
//! setting each of these threads has its own glibc arena, whose first trim opens
//! `/proc/sys/vm/overcommit_memory`: SIGSYS, and the process exits with 148.

use seccomp::{confine, set_policy, Policy, ThreadKind};
use std::sync::mpsc;

fn main() {
    if cfg!(target_arch = "aarch64")
        && std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER")
            .is_ok_and(|r| r.contains("qemu"))
    {
        println!("one_arena: skipped: seccomp filters cannot be installed under qemu-user");
        return;
    }
    set_policy(Policy::BuiltIn).expect("set the built-in policy");
    let (done, finished) = mpsc::channel();
    // The vsock thread first: its filter has no openat, so it must not be the first to
    // trim a heap (the vmm thread, which may open files, would survive it).
    let mut kinds = ThreadKind::ALL.to_vec();
    kinds.sort_by_key(|k| *k != ThreadKind::Vsock);
    for kind in kinds {
        let done = done.clone();
        std::thread::Builder::new()
            .name(kind.key().into())
            .spawn(move || {
                confine(kind).expect("install the filter");
                // 2 MiB in chunks under the mmap threshold, written and freed four times:
                // the heap grows and is trimmed each time.
                for round in 0..4u8 {
                    let chunks: Vec<Vec<u8>> = (0..32).map(|_| vec![round; 64 << 10]).collect();
                    drop(chunks);
                }
                done.send(kind.key()).expect("report");
                // Thread exit is not what is tested: the process ends with the main thread.
                loop {
                    std::thread::park();
                }
            })
            .expect("start a thread");
        let key = finished.recv().expect("a thread's report");
        assert_eq!(key, kind.key());
    }
    println!(
        "one_arena: {} thread kinds each allocated and freed 8 MiB under their filters",
        ThreadKind::ALL.len()
    );
}
