//! Walking the frame-pointer chain from a tokio leaf future up to the poll that traces a task.
//!
//! `.cargo/config.toml` builds every crate with frame pointers, so each frame of the path from
//! [`super::roots`]' traced poll down to tokio's leaf starts with a record `[saved fp, return
//! address]`, and a walk costs a few nanoseconds per frame: a parked task's await stack is read
//! in well under a microsecond, with no DWARF unwinding and no lock.
//!
//! Every read is bounds-checked against the current thread's stack, between the stack pointer
//! and the traced poll's own frame, with addresses rising: a binary built without frame pointers
//! yields a short or empty walk, never a read outside the stack. [`available`] checks once that
//! walks work in this binary; when they do not, tasks are counted but not traced.

#![allow(unsafe_code)]

use std::sync::OnceLock;

/// The most return addresses read for one leaf.
pub const MAX_DEPTH: usize = 128;

/// Copies a register: `$x86` on x86_64, `$arm` on aarch64 (0 elsewhere, where walks are
/// unavailable).
macro_rules! read_register {
    ($x86:literal, $arm:literal) => {{
        let value: usize;
        // SAFETY: copies one register into another; reads and writes no memory.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!(concat!("mov {}, ", $x86), out(reg) value, options(nomem, nostack, preserves_flags));
        }
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!(concat!("mov {}, ", $arm), out(reg) value, options(nomem, nostack, preserves_flags));
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            value = 0;
        }
        value
    }};
}

/// The current function's frame pointer.
#[inline(always)]
pub fn frame_pointer() -> usize {
    read_register!("rbp", "x29")
}

/// The current stack pointer.
#[inline(always)]
fn stack_pointer() -> usize {
    read_register!("rsp", "sp")
}

/// The return addresses from the caller of this function up to, not including, the frame whose
/// frame pointer is `root` (an ancestor frame on this thread's stack), innermost first.
/// `None` when the chain does not reach `root` (no frame pointers, or a frame without one).
#[inline(never)]
pub fn return_addresses(root: usize) -> Option<Vec<u64>> {
    let low = stack_pointer();
    // `root` must be a frame above this one on this stack; the stack holds it and its record.
    if root <= low || root - low > 64 << 20 || !root.is_multiple_of(align_of::<usize>()) {
        return None;
    }
    let mut fp = frame_pointer();
    let mut addresses = Vec::with_capacity(32);
    while fp != root {
        // Each record lies between the stack pointer and `root`, 8-aligned, rising towards it.
        if fp < low || fp > root - 2 * size_of::<usize>() || !fp.is_multiple_of(align_of::<usize>())
        {
            return None;
        }
        if addresses.len() == MAX_DEPTH {
            return None;
        }
        // SAFETY: `low <= fp` and `fp + 16 <= root`, and everything from the stack pointer up to
        // `root`'s own record is this thread's live, mapped stack (`root` is an ancestor frame,
        // still executing), so both words are readable.
        let (next, ret) = unsafe {
            let record = fp as *const usize;
            (record.read(), record.add(1).read())
        };
        addresses.push(ret as u64);
        if next <= fp {
            return None;
        }
        fp = next;
    }
    Some(addresses)
}

/// Whether frame-pointer walks work in this binary: checked once, on a known chain of calls
/// (three nested calls below the root and the walker itself: four return addresses).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| probe_root(3) == Some(4))
}

#[inline(never)]
fn probe_root(depth: usize) -> Option<usize> {
    let root = frame_pointer();
    let walked = probe_call(root, depth);
    std::hint::black_box(&walked);
    walked
}

#[inline(never)]
fn probe_call(root: usize, depth: usize) -> Option<usize> {
    let walked = if depth <= 1 {
        return_addresses(std::hint::black_box(root)).map(|addresses| addresses.len())
    } else {
        probe_call(root, std::hint::black_box(depth - 1))
    };
    std::hint::black_box(&walked);
    walked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_reach_their_root_in_this_build() {
        assert!(
            available(),
            "this crate is built with frame pointers (.cargo/config.toml)"
        );
        assert_eq!(probe_root(3), Some(4));
        assert_eq!(probe_root(10), Some(11));
    }

    #[test]
    fn a_root_that_is_not_an_ancestor_frame_is_refused() {
        assert_eq!(return_addresses(0), None);
        assert_eq!(return_addresses(usize::MAX - 7), None);
        assert_eq!(return_addresses(stack_pointer() + 1), None);
        // On the stack and aligned, but no frame's record: the walk passes it and stops.
        assert_eq!(return_addresses(stack_pointer()), None);
    }
}
