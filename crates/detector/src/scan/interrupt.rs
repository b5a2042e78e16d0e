//! SIGINT and SIGTERM, caught so that a scan that is stopped prints what it found so far and
//! keeps the profiles it saved, instead of dying with nothing.
//!
//! A signal handler can only touch process-wide state, so the one signal received is kept in a
//! process-wide atomic; the scan polls it between profiles and while it waits for one.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received, or 0. Process-wide, as signal handlers are.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM from now on (a scan is the process's only work).
#[allow(unsafe_code)]
pub fn catch() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only stores to an atomic, which
        // is async-signal-safe; `signal` installs it for a valid signal number.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

/// The name of the signal received since [`catch`], if any.
pub fn received() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}

/// The exit code of a process ended by `signal` without a verdict: 128 + its number, as shells
/// report it (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(signal: &str) -> u8 {
    match signal {
        "SIGINT" => 128 + libc::SIGINT as u8,
        _ => 128 + libc::SIGTERM as u8,
    }
}

/// Sleeps until `deadline`, waking early when a signal arrives; returns whether one did.
pub fn sleep_until(deadline: std::time::Instant) -> bool {
    const TICK: std::time::Duration = std::time::Duration::from_millis(20);
    loop {
        if received().is_some() {
            return true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(TICK));
    }
}
