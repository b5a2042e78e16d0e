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
