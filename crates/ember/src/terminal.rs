//! Puts an interactive terminal on stdin into raw mode while the guest runs, so keys reach
//! the guest as typed (the guest's own tty echoes and edits), and restores it on every way
//! out: normal return, or SIGINT/SIGTERM/SIGHUP (Ctrl-C still stops ember).

use std::sync::OnceLock;

static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Restores the terminal when dropped.
pub struct RawTerminal;

extern "C" fn restore_and_exit(sig: libc::c_int) {
    if let Some(t) = SAVED.get() {
        // SAFETY: tcsetattr is async-signal-safe and `t` is a valid termios saved before
        // the handler was installed.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
    // SAFETY: _exit is async-signal-safe; 128 + signal is the shell's convention.
    unsafe { libc::_exit(128 + sig) };
}

impl RawTerminal {
    /// Raw mode if stdin is a terminal; `None` (nothing changed) otherwise.
    pub fn enable() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it and we check the result.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid, writable termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return None;
        }
        let saved = *SAVED.get_or_init(|| t);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only calls async-signal-safe functions.
            unsafe { libc::signal(sig, restore_and_exit as *const () as libc::sighandler_t) };
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep signals (Ctrl-C stops ember) and output processing (our own log lines).
        raw.c_lflag |= libc::ISIG;
        raw.c_oflag |= libc::OPOST;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = SAVED.get() {
            // SAFETY: restores the termios saved in `enable`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}
