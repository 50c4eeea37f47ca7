//! What happens when a thread makes a call outside its list: the filters' mismatch action
//! is `trap`, so the kernel skips the call and sends the thread SIGSYS; this handler writes
//! one line to stderr (the thread kind, the call's number) and ends the process with
//! [`BAD_SYSCALL_EXIT`], as Firecracker does. It runs on the offending thread, under that
//! thread's filter, so it only uses `write` and `exit_group`, which every list allows, and
//! allocates nothing. A thread that blocks or overrides SIGSYS gains nothing: the call it
//! made is never executed.

use std::cell::Cell;

/// Exit status of a process ended by a forbidden system call (Firecracker's, 148).
pub const BAD_SYSCALL_EXIT: i32 = 148;

thread_local! {
    /// The calling thread's kind, as `ThreadKind::key()`, once it confined itself.
    pub(crate) static KIND: Cell<&'static str> = const { Cell::new("unconfined") };
}

/// Where `si_syscall` lies in the kernel's `siginfo_t` on 64-bit Linux: after `si_signo`,
/// `si_errno`, `si_code` (and padding to 8 bytes), then `si_call_addr`.
const SI_SYSCALL_OFFSET: usize = 24;

/// Formats `n` in decimal into `buf`; returns the digits' slice.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; for SIGSYS from
    // seccomp, si_syscall is the int at SI_SYSCALL_OFFSET.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let kind = KIND.with(|k| k.get());
    let mut digits = [0u8; 20];
    let parts: [&[u8]; 5] = [
        b"ember: error: the ",
        kind.as_bytes(),
        b" thread made a system call outside its seccomp filter: number ",
        decimal(u64::try_from(nr).unwrap_or(0), &mut digits),
        b"; ending the process\n",
    ];
    for p in parts {
        // SAFETY: writes a live buffer to stderr; a failure changes nothing.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    // SAFETY: ends every thread at once; nothing runs after it.
    unsafe { libc::syscall(libc::SYS_exit_group, BAD_SYSCALL_EXIT) };
}

/// Installs the SIGSYS handler for the whole process.
pub(crate) fn install() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the fields set below are the handler, SA_SIGINFO
    // and an empty mask.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act` is initialized and outlives the calls; the old action is not wanted.
    let r = unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 20];
        assert_eq!(super::decimal(0, &mut b), b"0");
        assert_eq!(super::decimal(435, &mut b), b"435");
        assert_eq!(super::decimal(u64::MAX, &mut b), b"18446744073709551615");
    }
}
