//! In-process symbolisation: instruction addresses to functions, files and lines, inline frames
//! included, so every profile this service serves is readable without the binary.
//!
//! Results are cached by address, so repeated scrapes are cheap. The debug info is loaded only
//! when an address is new, on a thread whose allocations jemalloc does not sample, and dropped
//! right after: kept for good, its tens of MiB would look exactly like a leak. Loading it costs
//! about 100 ms, so a caller that profiles in a loop (the task profile, whose new addresses come
//! in bursts as tasks move between awaits) asks for it to be kept warm for a while
//! ([`Symbolizer::resolve_warm`]); it is dropped, and its pages purged, once that time has passed.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::jemalloc::UnsampledThread;
use super::pprof::Frame;

/// This crate's root, stripped from its source paths so `go tool pprof -list` works from a checkout.
const CRATE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/");

/// The most addresses kept; past it the cache starts over (profiles name far fewer).
const MAX_CACHED_ADDRESSES: usize = 200_000;

/// Symbolises addresses of this process, caching what it resolved.
#[derive(Default)]
pub struct Symbolizer {
    cache: Mutex<Cache>,
    /// The executable's debug info while it is loaded. Resolving runs under this lock alone, so
    /// profiles whose addresses are all cached never wait behind it.
    debug_info: Mutex<Option<Loaded>>,
}

/// Loaded debug info, and until when it is kept warm (`None`: dropped after this use).
struct Loaded {
    info: DebugInfo,
    warm_until: Option<Instant>,
}

/// What resolving needs, loaded once.
struct DebugInfo {
    executable: Option<Executable>,
    loader: Option<addr2line::Loader>,
}

impl DebugInfo {
    fn load() -> Self {
        let loader = match addr2line::Loader::new("/proc/self/exe") {
            Ok(loader) => Some(loader),
            Err(error) => {
                tracing::warn!(%error, "cannot load this executable's debug info; profiles will show addresses");
                None
            }
        };
        Self {
            executable: Executable::current(),
            loader,
        }
    }
}

#[derive(Default)]
struct Cache {
    frames: HashMap<u64, Arc<[Frame]>>,
    strings: HashSet<Arc<str>>,
}

impl Cache {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(interned) = self.strings.get(s) {
            return Arc::clone(interned);
        }
        let interned: Arc<str> = s.into();
        self.strings.insert(Arc::clone(&interned));
        interned
    }
}

/// The main executable's load bias, and the runtime address ranges it covers.
struct Executable {
    ranges: Vec<(u64, u64, u64)>,
}

impl Executable {
    fn current() -> Option<Self> {
        let mappings = mappings::MAPPINGS.as_deref()?;
        let main = mappings.first()?;
        let ranges = mappings
            .iter()
            .filter(|mapping| mapping.pathname == main.pathname)
            .map(|mapping| {
                let bias = (mapping.memory_start - mapping.memory_offset) as u64;
                (mapping.memory_start as u64, mapping.memory_end as u64, bias)
            })
            .collect();
        Some(Self { ranges })
    }

    /// The address as a virtual address of the executable file, if it lies in it.
    fn file_address(&self, address: u64) -> Option<u64> {
        self.ranges
            .iter()
            .find(|(start, end, _)| (*start..*end).contains(&address))
            .map(|(_, _, bias)| address - bias)
    }
}

impl Symbolizer {
    /// Frames for each address, innermost (inlined) first. Pass instruction addresses: for a
    /// return address, one byte earlier (see [`caller`]), so the lookup lands inside the call.
    /// Blocking: run it off the async workers.
    pub fn resolve(&self, addresses: impl IntoIterator<Item = u64>) -> HashMap<u64, Arc<[Frame]>> {
        self.resolve_keeping(addresses, None)
    }

    /// As [`Symbolizer::resolve`], and keeps the debug info loaded for `keep` after this call,
    /// for callers that profile in a loop.
    pub fn resolve_warm(
        &self,
        addresses: impl IntoIterator<Item = u64>,
        keep: Duration,
    ) -> HashMap<u64, Arc<[Frame]>> {
        self.resolve_keeping(addresses, Some(keep))
    }

    fn resolve_keeping(
        &self,
        addresses: impl IntoIterator<Item = u64>,
        keep: Option<Duration>,
    ) -> HashMap<u64, Arc<[Frame]>> {
        self.expire();
        let wanted: HashSet<u64> = addresses.into_iter().collect();
        let missing: Vec<u64> = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            wanted
                .iter()
                .copied()
                .filter(|address| !cache.frames.contains_key(address))
                .collect()
        };
        if !missing.is_empty() {
            // The cache is long-lived: neither it nor the debug info shows in the heap profile.
            let _unsampled = UnsampledThread::begin();
            let mut resolved = Cache::default();
            {
                let mut slot = self
                    .debug_info
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let loaded = slot.get_or_insert_with(|| Loaded {
                    info: DebugInfo::load(),
                    warm_until: None,
                });
                resolve_missing(&loaded.info, &mut resolved, &missing);
                let now = Instant::now();
                loaded.warm_until = match (loaded.warm_until, keep) {
                    (until, Some(keep)) => until.max(Some(now + keep)),
                    (Some(until), None) if until > now => Some(until),
                    _ => None,
                };
                if loaded.warm_until.is_none() {
                    drop(slot.take());
                    crate::process::return_freed_memory();
                }
            }
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.frames.len() + missing.len() > MAX_CACHED_ADDRESSES {
                cache.frames.clear();
                cache.strings.clear();
            }
            cache.strings.extend(resolved.strings);
            cache.frames.extend(resolved.frames);
        }
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        wanted
            .into_iter()
            .filter_map(|address| Some((address, Arc::clone(cache.frames.get(&address)?))))
            .collect()
    }

    /// Drops debug info kept warm past its time. Never waits: a load in progress is left alone.
    fn expire(&self) {
        let Ok(mut slot) = self.debug_info.try_lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|loaded| {
            loaded
                .warm_until
                .is_none_or(|until| until <= Instant::now())
        }) {
            let _unsampled = UnsampledThread::begin();
            drop(slot.take());
            crate::process::return_freed_memory();
        }
    }

    /// How many addresses are cached.
    pub fn cached_addresses(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .frames
            .len()
    }
}

fn resolve_missing(debug_info: &DebugInfo, cache: &mut Cache, missing: &[u64]) {
    let (executable, loader) = (&debug_info.executable, &debug_info.loader);
    for &probe in missing {
        let address = probe;
        let in_executable = executable.as_ref().and_then(|exe| exe.file_address(probe));
        let frames = match (in_executable, loader.as_ref()) {
            (Some(file_address), Some(loader)) => executable_frames(loader, file_address),
            _ => shared_object_frame(probe).into_iter().collect(),
        };
        let frames: Vec<Frame> = if frames.is_empty() {
            vec![unknown_frame(address)]
        } else {
            frames
        };
        let frames = frames
            .into_iter()
            .map(|frame| Frame {
                function: cache.intern(&frame.function),
                file: cache.intern(&frame.file),
                line: frame.line,
            })
            .collect();
        cache.frames.insert(address, frames);
    }
}

fn executable_frames(loader: &addr2line::Loader, probe: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    if let Ok(mut iter) = loader.find_frames(probe) {
        while let Ok(Some(frame)) = iter.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|name| name.demangle().ok())
                .map(Cow::into_owned)
                .unwrap_or_default();
            let (file, line) = frame.location.map_or((String::new(), 0), |location| {
                (
                    location.file.map(source_path).unwrap_or_default(),
                    location.line.unwrap_or(0),
                )
            });
            frames.push(Frame {
                function: function.into(),
                file: file.into(),
                line,
            });
        }
    }
    // Dependencies carry line tables only, whose names are bare (`poll`, `{async_fn#0}`); the
    // outermost frame is a real function, so the symbol table has its full name.
    let symbol = loader
        .find_symbol(probe)
        .map(|name| addr2line::demangle_auto(Cow::Borrowed(name), None).into_owned());
    match (frames.last_mut(), symbol) {
        (Some(outer), Some(symbol)) if !outer.function.contains("::") => {
            outer.function = symbol.into();
        }
        (None, Some(symbol)) => frames.push(Frame {
            function: symbol.into(),
            file: "".into(),
            line: 0,
        }),
        _ => {}
    }
    frames
}

/// The address to look a return address up by: inside the call instruction that pushed it.
pub fn caller(return_address: u64) -> u64 {
    return_address.saturating_sub(1)
}

/// A frame outside the executable (libc, the vDSO): named by the dynamic symbol table.
#[allow(unsafe_code)]
fn shared_object_frame(probe: u64) -> Option<Frame> {
    // SAFETY: `Dl_info` is plain old data for which all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `dladdr` only reads its address argument (it is never dereferenced) and fills `info`.
    let found = unsafe { libc::dladdr(probe as *const libc::c_void, &mut info) };
    if found == 0 {
        return None;
    }
    // SAFETY: on success, non-null `dli_sname`/`dli_fname` point to NUL-terminated strings owned by
    // the dynamic loader, valid while the object stays loaded; they are copied at once.
    let text = |ptr: *const libc::c_char| {
        (!ptr.is_null()).then(|| {
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        })
    };
    let object = text(info.dli_fname).unwrap_or_default();
    let function = match text(info.dli_sname) {
        Some(name) => addr2line::demangle_auto(Cow::Owned(name), None).into_owned(),
        None => format!(
            "{}+{:#x}",
            short_object(&object),
            probe - info.dli_fbase as u64
        ),
    };
    Some(Frame {
        function: function.into(),
        file: object.into(),
        line: 0,
    })
}

fn short_object(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn unknown_frame(address: u64) -> Frame {
    Frame {
        function: format!("{address:#x}").into(),
        file: "".into(),
        line: 0,
    }
}

/// A source path as profiles show it: this crate's relative to its root (`src/...`), a
/// dependency's from its package directory (`tokio-1.54.1/src/...`), anything else as built.
pub fn source_path(path: &str) -> String {
    if let Some(relative) = path.strip_prefix(CRATE_ROOT) {
        return relative.to_owned();
    }
    registry_package_path(path).unwrap_or(path).to_owned()
}

/// A path inside a cargo registry's source tree, from its package directory
/// (`tokio-1.54.1/src/...`); `None` for a path outside any registry.
pub fn registry_package_path(path: &str) -> Option<&str> {
    let index = path.find("/registry/src/")?;
    let rest = &path[index + "/registry/src/".len()..];
    rest.split_once('/').map(|(_, package_path)| package_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_paths_are_short_and_relative() {
        assert_eq!(
            source_path(&format!("{CRATE_ROOT}src/leaks/slice.rs")),
            "src/leaks/slice.rs"
        );
        assert_eq!(
            source_path(
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/sync/mpsc/bounded.rs"
            ),
            "tokio-1.54.1/src/sync/mpsc/bounded.rs"
        );
        assert_eq!(
            source_path("/rustc/abc/library/alloc/src/vec/mod.rs"),
            "/rustc/abc/library/alloc/src/vec/mod.rs"
        );
    }

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn addresses_of_this_binary_resolve_to_their_function_and_are_cached() {
        let address = a_function_to_find as *const () as u64;
        let symbolizer = Symbolizer::default();
        let frames = symbolizer.resolve([address]);
        let outer = frames[&address].last().unwrap().clone();
        assert!(outer.function.contains("a_function_to_find"), "{outer:?}");
        assert_eq!(&*outer.file, "src/profiling/symbols.rs");
        assert!(outer.line > 0);
        assert_eq!(symbolizer.cached_addresses(), 1);
        let again = symbolizer.resolve([address]);
        assert!(
            Arc::ptr_eq(&again[&address], &frames[&address]),
            "served from the cache"
        );
    }

    #[test]
    fn libc_addresses_are_named_by_the_dynamic_symbol_table() {
        let address = libc::getpid as *const () as u64;
        let frames = Symbolizer::default().resolve([address]);
        let frame = &frames[&address][0];
        assert!(frame.function.contains("getpid"), "{frame:?}");
        assert!(frame.file.contains("libc"), "{frame:?}");
    }
}
