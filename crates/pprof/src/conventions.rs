//! Conventions that writers and readers of these profiles share: how a task stack names its spawn
//! site, which frames are allocation machinery, and how a dependency's source path is shortened.
//!
//! The profiling engine writes profiles by them; the detector reads profiles (its own or Go's) by
//! them. Pure functions of strings.

/// How the root-most frame of every stack starts: `created by` and the spawning function, as in
/// Go's goroutine profiles. Readers of the profile (the detector) find the spawn site by it.
pub const CREATED_BY: &str = "created by ";

/// Whether a frame, given as its function's name and file, is allocation machinery (jemalloc,
/// its profiler, the global allocator shim, or the standard library's containers), which Go's
/// profiles hide as `runtime.mallocgc`.
pub fn is_allocator(function: &str, file: &str) -> bool {
    file.starts_with("/rustc/")
        || file.starts_with("/rust/deps/")
        || file.contains("jemalloc")
        || ALLOCATOR_FUNCTIONS.contains(&function)
        || ALLOCATOR_PREFIXES
            .iter()
            .any(|prefix| function.starts_with(prefix))
}

/// Exact names of allocator entry points.
const ALLOCATOR_FUNCTIONS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "mallocx",
    "rallocx",
    "xallocx",
    "sdallocx",
];

/// Name prefixes of allocator, profiler and standard-library allocation plumbing.
const ALLOCATOR_PREFIXES: &[&str] = &[
    "_rjem_",
    "je_",
    "prof_",
    "imalloc",
    "ialloc",
    "iralloc",
    "malloc_default",
    "__rust_",
    "__rdl_",
    "__rg_",
    "__rustc::",
    "tikv_jemallocator::",
    "<tikv_jemallocator::",
    "alloc::",
    "<alloc::",
    "core::",
    "<core::",
    "std::",
    "<std::",
    "hashbrown::",
    "<hashbrown::",
];

/// A path inside a cargo registry's source tree, from its package directory
/// (`tokio-1.54.1/src/...`); `None` for a path outside any registry.
pub fn registry_package_path(path: &str) -> Option<&str> {
    let index = path.find("/registry/src/")?;
    let rest = &path[index + "/registry/src/".len()..];
    rest.split_once('/').map(|(_, package_path)| package_path)
}
