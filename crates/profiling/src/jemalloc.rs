//! Runtime controls of jemalloc's sampling heap profiler, which `main`'s `malloc_conf` turns on.

use tikv_jemalloc_ctl::raw;

/// While alive, allocations made by this thread are not sampled, so the profiler's own transient
/// work (loading debug info to symbolise) never shows in the heap profile it produces.
pub struct UnsampledThread {
    previous: Option<bool>,
}

impl UnsampledThread {
    /// Stops sampling this thread's allocations until the value is dropped.
    #[allow(unsafe_code)]
    pub fn begin() -> Self {
        // SAFETY: `thread.prof.active` is a read-write `bool` mallctl of the calling thread;
        // `update` writes the new value and returns the old one, both as `bool`.
        let previous = unsafe { raw::update(b"thread.prof.active\0", false) }.ok();
        Self { previous }
    }
}

impl Drop for UnsampledThread {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Some(previous) = self.previous {
            // SAFETY: as in `begin`: a `bool` written to this thread's `thread.prof.active`.
            let _ = unsafe { raw::write(b"thread.prof.active\0", previous) };
        }
    }
}

/// Writes jemalloc's heap profile (its `heap_v2` text) and returns it.
///
/// The dump goes to an anonymous in-memory file (`memfd`), which jemalloc opens by its
/// `/proc/self/fd` path: no file is created, written back or deleted on disk (closing the
/// deleted temporary file alone was a third of the dump's time under `perf`). Callers serialise
/// dumps (jemalloc's `prof.dump` is process-wide).
#[allow(unsafe_code)]
pub fn dump_heap_profile() -> std::io::Result<String> {
    use std::io::{Read, Seek};
    use std::os::fd::FromRawFd;
    // SAFETY: `memfd_create` takes a NUL-terminated name and flags and returns a new descriptor
    // or -1; the descriptor is owned by the `File` from here on.
    let fd = unsafe { libc::memfd_create(c"leakfinder-heap".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let path =
        std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("a path of digits has no NUL");
    // SAFETY: `prof.dump` is a write-only mallctl taking a `const char *` file name, which
    // `path` is, alive for the call.
    unsafe { raw::write(b"prof.dump\0", path.as_ptr()) }
        .map_err(|error| std::io::Error::other(format!("prof.dump: {error}")))?;
    file.rewind()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}
