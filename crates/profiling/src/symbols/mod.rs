//! In-process symbolisation: instruction addresses to functions, files and lines, inline frames
//! included, so every profile this service serves is readable without the binary.
//!
//! Each address is resolved once: through the prebuilt symbol table beside the executable
//! ([`table`], written by `leakfinder symbols` after the build; one binary search, no debug info
//! read) or, without one, from the debug info ([`dwarf`] reads only the units that hold new
//! addresses, and only as far as they need). What it resolved is kept in a compact, long-lived
//! index: every function, file and inline chain is stored once and shared by the addresses that
//! use it, and the span of addresses sharing an address's frames is kept too, so a new address
//! inside it (the next CPU sample on the same line) needs no lookup. The index is bounded,
//! reported in `/leak-test` (`symbol_index_bytes`, and the CPU it has cost as
//! `symbolising_cpu_ms`), and built on threads whose allocations jemalloc does not sample, so it
//! never shows in the heap profile it helps to produce.

pub mod objects;
/// The debug-info reader and the prebuilt table, from `leakfinder-symbols` (which the
/// `leakfinder` command writes tables with), under the paths they have always had here.
pub use leakfinder_symbols::{dwarf, table};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::jemalloc::UnsampledThread;
use leakfinder_pprof::Frame;

/// The most addresses kept; past it the index starts over (profiles name far fewer).
const MAX_INDEXED_ADDRESSES: usize = 200_000;
/// The batches [`RecentBatches`] keeps: the heap and task profiles of the leak watch and of the
/// push, each asked for again and again, with room for a few variants of each.
const RECENT_BATCHES: usize = 8;
/// A batch of more addresses than this (a long CPU profile's) is answered but not kept.
const MAX_RECENT_ADDRESSES: usize = 16_384;

/// Symbolises addresses of this process, keeping what it resolved.
#[derive(Default)]
pub struct Symbolizer {
    index: Mutex<Index>,
    /// One batch of new addresses resolves at a time, so two profiles that meet the same new
    /// addresses read their debug info once.
    resolving: Mutex<()>,
    /// CPU time spent in [`Self::resolve`], in nanoseconds.
    cpu_nanos: AtomicU64,
    /// The answers to the last few batches of addresses.
    recent: RecentBatches,
    /// The symbol tables of libc and the other shared objects, read on their first frame.
    objects: objects::SharedObjects,
    /// Stripped from the program's own source paths (with its trailing `/`), if set.
    source_root: Option<Box<str>>,
}

/// Frames by address, as [`Symbolizer::resolve`] returns them.
pub type FramesByAddress = HashMap<u64, Arc<[Frame]>, BuildHasherDefault<AddressHash>>;

/// The answers to the last few batches of addresses, by the batch (sorted, each address once).
///
/// The leak watch symbolises a heap profile every second and a task profile as often, and the
/// push both again every interval: their addresses change only when a new stack appears. Until
/// then the answer given last time is shared, where rebuilding it touched every address's entry
/// and chain, a cache miss each on a service that was idle in between (a hundred times the cost
/// of the same work in a loop, measured).
#[derive(Default)]
struct RecentBatches(Mutex<VecDeque<Batch>>);

/// A batch of addresses (sorted, each once) and the answer given to it.
type Batch = (Box<[u64]>, Arc<FramesByAddress>);

impl RecentBatches {
    /// The answer to exactly this batch, if it is kept (and now the most recent).
    fn find(&self, addresses: &[u64]) -> Option<Arc<FramesByAddress>> {
        let mut batches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let position = batches
            .iter()
            .position(|(batch, _)| **batch == *addresses)?;
        let hit = batches.remove(position)?;
        let frames = Arc::clone(&hit.1);
        batches.push_front(hit);
        Some(frames)
    }

    /// Keeps an answer, dropping the least recent past [`RECENT_BATCHES`].
    fn keep(&self, addresses: Vec<u64>, frames: &Arc<FramesByAddress>) {
        if addresses.len() > MAX_RECENT_ADDRESSES {
            return;
        }
        let mut batches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        batches.push_front((addresses.into_boxed_slice(), Arc::clone(frames)));
        batches.truncate(RECENT_BATCHES);
    }

    /// Bytes the kept batches hold: their addresses and maps (the chains are the index's).
    fn bytes(&self) -> usize {
        let batches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        batches
            .iter()
            .map(|(batch, frames)| {
                batch.len() * size_of::<u64>()
                    + frames.capacity() * (size_of::<u64>() + size_of::<Arc<[Frame]>>() + 1)
            })
            .sum()
    }
}

/// A hash for code addresses: one multiply, folded. Addresses are not chosen by an attacker, so
/// SipHash's resistance to flooding buys nothing here, and it was most of the cost of a profile
/// whose addresses are all known already.
#[derive(Default)]
pub struct AddressHash(u64);

impl Hasher for AddressHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let mixed = (self.0 ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = mixed ^ (mixed >> 29);
    }
}

/// Resolved addresses, their frame chains and strings, each stored once.
#[derive(Default)]
struct Index {
    frames: FramesByAddress,
    /// Spans of addresses known to share a chain (the same line in the same inlined calls),
    /// by start: end and chain. A new address inside one needs no debug info.
    spans: BTreeMap<u64, (u64, Arc<[Frame]>)>,
    chains: HashSet<Arc<[Frame]>>,
    strings: HashSet<Arc<str>>,
    /// Bytes the index holds, approximately: its entries and the strings and chains they share.
    bytes: usize,
}

impl Index {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(interned) = self.strings.get(s) {
            return Arc::clone(interned);
        }
        let interned: Arc<str> = s.into();
        self.bytes += s.len() + 2 * size_of::<usize>() + size_of::<Arc<str>>();
        self.strings.insert(Arc::clone(&interned));
        interned
    }

    /// Keeps an address's frames, and the span of addresses sharing them (if wider than it).
    fn insert(&mut self, address: u64, frames: Vec<Frame>, span: Range<u64>) {
        let chain: Arc<[Frame]> = match self.chains.get(frames.as_slice()) {
            Some(chain) => Arc::clone(chain),
            None => {
                let chain: Arc<[Frame]> = frames.into();
                self.bytes += chain.len() * size_of::<Frame>() + 2 * size_of::<usize>();
                self.chains.insert(Arc::clone(&chain));
                chain
            }
        };
        if span.end.saturating_sub(span.start) > 1 && span.contains(&address) {
            // A BTreeMap entry: key, end, chain, and its share of the node.
            self.bytes += 2 * size_of::<u64>() + 2 * size_of::<Arc<[Frame]>>();
            self.spans
                .insert(span.start, (span.end, Arc::clone(&chain)));
        }
        self.bytes += size_of::<u64>() + size_of::<Arc<[Frame]>>();
        self.frames.insert(address, chain);
    }

    /// The chain of an address: its own, or that of a known span holding it. Addresses found
    /// through a span are not added, so the index grows only with what debug info resolved.
    fn chain(&self, address: u64) -> Option<&Arc<[Frame]>> {
        if let Some(chain) = self.frames.get(&address) {
            return Some(chain);
        }
        let (_, (end, chain)) = self.spans.range(..=address).next_back()?;
        (address < *end).then_some(chain)
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
    /// A symboliser that shows the program's own source files relative to `root`, the directory
    /// it was built in (pass `env!("CARGO_MANIFEST_DIR")`): `src/leaks/slice.rs` rather than
    /// `/home/me/leakfinder/src/leaks/slice.rs`, so that `go tool pprof -list` finds the file in
    /// any checkout. Without it, those paths are shown as built (absolute), which `-list` reads on
    /// the machine that built the binary.
    pub fn with_source_root(root: &str) -> Self {
        Self {
            source_root: Some(format!("{}/", root.trim_end_matches('/')).into()),
            ..Self::default()
        }
    }

    /// A path as this symboliser shows it: relative to the source root when under it.
    fn shown_path<'a>(&self, path: &'a str) -> &'a str {
        self.source_root
            .as_deref()
            .and_then(|root| path.strip_prefix(root))
            .unwrap_or(path)
    }

    /// Frames for each address, innermost (inlined) first. Pass instruction addresses: for a
    /// return address, one byte earlier (see [`caller`]), so the lookup lands inside the call.
    /// The same addresses as one of the last few calls (in any order, repeated or not) get that
    /// call's answer, shared. Blocking: run it off the async workers.
    pub fn resolve(&self, addresses: impl IntoIterator<Item = u64>) -> Arc<FramesByAddress> {
        self.resolve_and_keep(addresses, true)
    }

    /// [`Self::resolve`] for a CPU profile's addresses: a batch of samples is never asked for
    /// again, so it is not kept among the recent batches (where it would only push out the heap
    /// and task profiles' batches, which are).
    pub fn resolve_samples(
        &self,
        addresses: impl IntoIterator<Item = u64>,
    ) -> Arc<FramesByAddress> {
        self.resolve_and_keep(addresses, false)
    }

    fn resolve_and_keep(
        &self,
        addresses: impl IntoIterator<Item = u64>,
        keep: bool,
    ) -> Arc<FramesByAddress> {
        let started = crate::thread_cpu_time();
        // The kept batches are long-lived: like the index, they never show in the heap profile.
        let _unsampled = UnsampledThread::begin();
        // A profile names each address many times (every stack through it): sorted and
        // deduplicated first, the batch is compared with the recent ones, and otherwise each
        // address is looked up in the index once.
        let mut addresses: Vec<u64> = addresses.into_iter().collect();
        addresses.sort_unstable();
        addresses.dedup();
        let found = match self.recent.find(&addresses) {
            Some(found) => found,
            None => {
                let found = Arc::new(self.resolve_batch(&addresses));
                if keep {
                    self.recent.keep(addresses, &found);
                }
                found
            }
        };
        let spent = crate::thread_cpu_time().saturating_sub(started);
        self.cpu_nanos
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        found
    }

    /// Frames for each of `addresses` (sorted, each once), from the index or, for those it does
    /// not hold yet, from the symbol tables (and kept in the index).
    fn resolve_batch(&self, addresses: &[u64]) -> FramesByAddress {
        let mut found =
            FramesByAddress::with_capacity_and_hasher(addresses.len(), Default::default());
        let mut missing = Vec::new();
        {
            let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            for &address in addresses {
                match index.chain(address) {
                    Some(chain) => {
                        found.insert(address, Arc::clone(chain));
                    }
                    None => missing.push(address),
                }
            }
        }
        if !missing.is_empty() {
            let _one_batch = self
                .resolving
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Another batch may have resolved some of them meanwhile: those are taken from it.
            {
                let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
                missing.retain(|&address| match index.chain(address) {
                    Some(chain) => {
                        found.insert(address, Arc::clone(chain));
                        false
                    }
                    None => true,
                });
            }
            let resolved = resolve_missing(&missing, &self.objects);
            let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            if index.frames.len() + resolved.len() > MAX_INDEXED_ADDRESSES {
                *index = Index::default();
            }
            for (address, frames, span) in resolved {
                let frames = frames
                    .into_iter()
                    .map(|frame| Frame {
                        function: index.intern(&frame.function),
                        file: index.intern(self.shown_path(&frame.file)),
                        line: frame.line,
                    })
                    .collect();
                index.insert(address, frames, span);
            }
            for address in missing {
                if let Some(chain) = index.chain(address) {
                    found.insert(address, Arc::clone(chain));
                }
            }
        }
        found
    }

    /// The entry address of the function holding each address (an instruction address, as for
    /// [`Self::resolve`]), from the executable's and the shared objects' symbol tables: Go's text
    /// forms show a frame's offset in its function (`+0x1a`). Addresses in no known function are
    /// left out. One pass over the executable's `.symtab` per call, nothing kept: for the text
    /// forms of the task profile, not for profiles taken in a loop. Blocking.
    pub fn function_entries(&self, addresses: impl IntoIterator<Item = u64>) -> HashMap<u64, u64> {
        let _unsampled = UnsampledThread::begin();
        let executable = Executable::current();
        let mut entries = HashMap::new();
        let mut in_executable: Vec<(u64, u64)> = Vec::new();
        for address in addresses {
            match executable
                .as_ref()
                .and_then(|exe| exe.file_address(address))
            {
                Some(file_address) => in_executable.push((address, file_address)),
                None => {
                    if let Some(frame) = self.objects.frame(address)
                        && frame.span.end - frame.span.start > 1
                    {
                        entries.insert(address, frame.span.start);
                    }
                }
            }
        }
        let mut sorted: Vec<u64> = in_executable.iter().map(|&(_, file)| file).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let starts = dwarf::DebugInfo::executable()
            .map(|debug_info| debug_info.function_starts(&sorted))
            .unwrap_or_default();
        for (address, file_address) in in_executable {
            if let Some(&start) = starts.get(&file_address) {
                // The start in file addresses, moved by the same load bias as the address.
                entries.insert(
                    address,
                    start.wrapping_add(address.wrapping_sub(file_address)),
                );
            }
        }
        entries
    }

    /// CPU time this symboliser has spent in [`Self::resolve`], all threads together.
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.cpu_nanos.load(Ordering::Relaxed))
    }

    /// How many addresses are indexed.
    pub fn cached_addresses(&self) -> usize {
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .frames
            .len()
    }

    /// Bytes the index holds (entries, shared chains and strings, the debug info's lookup
    /// tables and the prebuilt table's memo), approximately.
    pub fn index_bytes(&self) -> usize {
        let tables = dwarf::DebugInfo::loaded().map_or(0, dwarf::DebugInfo::table_bytes)
            + prebuilt_table().map_or(0, table::Table::memo_bytes);
        let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        tables
            + self.recent.bytes()
            + self.objects.bytes()
            + index.bytes
            + index.frames.capacity() * (size_of::<u64>() + size_of::<Arc<[Frame]>>() + 1)
            + index.chains.capacity() * (size_of::<Arc<[Frame]>>() + 1)
            + index.strings.capacity() * (size_of::<Arc<str>>() + 1)
    }
}

/// Frames for each address (`function`, `file`, `line` as plain strings), innermost first, and
/// the span of addresses around it with the same frames.
fn resolve_missing(
    missing: &[u64],
    objects: &objects::SharedObjects,
) -> Vec<(u64, Vec<Frame>, Range<u64>)> {
    let executable = Executable::current();
    let table = prebuilt_table();
    let mut in_executable: Vec<(u64, u64)> = Vec::new();
    let mut resolved = Vec::with_capacity(missing.len());
    for &address in missing {
        match executable
            .as_ref()
            .and_then(|exe| exe.file_address(address))
        {
            Some(file_address) => in_executable.push((address, file_address)),
            None => match objects.frame(address) {
                Some(frame) => resolved.push((
                    address,
                    vec![Frame {
                        function: frame.function.into(),
                        file: frame.object.into(),
                        line: 0,
                    }],
                    frame.span,
                )),
                None => {
                    resolved.push((address, vec![unknown_frame(address)], address..address + 1))
                }
            },
        }
    }
    let mut found = match table {
        Some(table) => table.lookup_all(in_executable.iter().map(|&(_, file)| file).collect()),
        None => HashMap::new(),
    };
    // What the table does not hold (or all, without a table) is read from the debug info.
    let unfound: Vec<u64> = in_executable
        .iter()
        .map(|&(_, file)| file)
        .filter(|file| !found.contains_key(file))
        .collect();
    if !unfound.is_empty()
        && let Some(debug_info) = dwarf::DebugInfo::executable()
    {
        found.extend(debug_info.resolve(&unfound));
    }
    for (address, file_address) in in_executable {
        let (frames, span) = match found.remove(&file_address) {
            // The span in file addresses, moved by the same load bias as the address.
            Some(dwarf::Resolved { frames, span }) => (
                frames,
                span.start.wrapping_add(address.wrapping_sub(file_address))
                    ..span.end.wrapping_add(address.wrapping_sub(file_address)),
            ),
            None => (Vec::new(), address..address + 1),
        };
        let frames: Vec<Frame> = frames
            .into_iter()
            .map(|frame| Frame {
                function: frame.function.into(),
                file: source_path(&frame.file).into(),
                line: frame.line,
            })
            .collect();
        let (frames, span) = if frames.is_empty() {
            (vec![unknown_frame(address)], address..address + 1)
        } else {
            (frames, span)
        };
        resolved.push((address, frames, span));
    }
    resolved
}

/// The prebuilt symbol table beside this executable ([`table`]), opened on first use; `None`
/// (symbolising from debug info) if there is none or it is of another build.
fn prebuilt_table() -> Option<&'static table::Table> {
    static TABLE: std::sync::OnceLock<Option<table::Table>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| match table::Table::for_this_executable() {
            Ok(table) => {
                tracing::info!(
                    bytes = table.file_bytes(),
                    "symbolising through the prebuilt symbol table"
                );
                Some(table)
            }
            Err(error @ table::TableError::Io { .. }) => {
                tracing::info!(%error, "no prebuilt symbol table (`leakfinder symbols` writes one): symbolising from debug info");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "prebuilt symbol table unusable (`leakfinder symbols` rewrites it): symbolising from debug info");
                None
            }
        })
        .as_ref()
}

/// The address to look a return address up by: inside the call instruction that pushed it.
pub fn caller(return_address: u64) -> u64 {
    return_address.saturating_sub(1)
}

fn unknown_frame(address: u64) -> Frame {
    Frame {
        function: format!("{address:#x}").into(),
        file: "".into(),
        line: 0,
    }
}

/// A source path as profiles show it: a dependency's from its package directory
/// (`tokio-1.54.1/src/...`), anything else as built (see [`Symbolizer::with_source_root`]).
pub fn source_path(path: &str) -> String {
    leakfinder_pprof::conventions::registry_package_path(path)
        .unwrap_or(path)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_paths_are_short_and_relative() {
        let symbols = Symbolizer::with_source_root("/home/me/service/");
        assert_eq!(
            symbols.shown_path("/home/me/service/src/leaks/slice.rs"),
            "src/leaks/slice.rs"
        );
        assert_eq!(
            Symbolizer::with_source_root("/home/me/service")
                .shown_path("/home/me/service/src/a.rs"),
            "src/a.rs"
        );
        assert_eq!(
            symbols.shown_path("/elsewhere/src/a.rs"),
            "/elsewhere/src/a.rs"
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
        let symbolizer = Symbolizer::with_source_root(env!("CARGO_MANIFEST_DIR"));
        let frames = symbolizer.resolve([address]);
        let outer = frames[&address].last().unwrap().clone();
        assert!(outer.function.contains("a_function_to_find"), "{outer:?}");
        assert_eq!(&*outer.file, "src/symbols/mod.rs");
        assert!(outer.line > 0);
        assert_eq!(symbolizer.cached_addresses(), 1);
        let again = symbolizer.resolve([address]);
        assert!(
            Arc::ptr_eq(&again[&address], &frames[&address]),
            "served from the cache"
        );
        // Another address on the same line of the same function comes from the span, with no
        // new lookup (which would add a span).
        let (spans, neighbour) = {
            let index = symbolizer.index.lock().unwrap();
            let (_, (end, _)) = index.spans.range(..=address).next_back().expect("a span");
            (index.spans.len(), end - 1)
        };
        assert_ne!(neighbour, address, "the span is wider than the address");
        let near = symbolizer.resolve([neighbour]);
        assert!(Arc::ptr_eq(&near[&neighbour], &frames[&address]));
        assert_eq!(symbolizer.index.lock().unwrap().spans.len(), spans);
        assert_eq!(
            symbolizer.cached_addresses(),
            1,
            "found through the span, not added"
        );
    }

    #[test]
    fn function_entries_are_the_start_of_the_function_holding_each_address() {
        let start = a_function_to_find as *const () as u64;
        let getpid = libc::getpid as *const () as u64;
        let entries = Symbolizer::default().function_entries([start, start + 3, getpid + 1, 8]);
        assert_eq!(entries.get(&start), Some(&start));
        assert_eq!(entries.get(&(start + 3)), Some(&start), "{entries:x?}");
        assert_eq!(entries.get(&(getpid + 1)), Some(&getpid), "{entries:x?}");
        assert_eq!(entries.get(&8), None, "no function holds address 8");
    }

    #[test]
    fn the_same_batch_again_is_answered_with_the_answer_given_last_time() {
        let symbolizer = Symbolizer::default();
        let [a, b, c] = [
            a_function_to_find as *const () as u64,
            source_path as *const () as u64,
            caller as *const () as u64,
        ];
        let first = symbolizer.resolve([a, b, b]);
        // The same addresses in another order, repeated otherwise: the same batch.
        let again = symbolizer.resolve([b, a, a]);
        assert!(Arc::ptr_eq(&first, &again), "shared, not rebuilt");
        assert_eq!(first.len(), 2);
        let other = symbolizer.resolve([a, b, c]);
        assert!(!Arc::ptr_eq(&first, &other), "another batch is resolved");
        assert_eq!(other[&a], first[&a], "from the same index");
        // Past RECENT_BATCHES other batches, the first is no longer kept.
        for k in 0..RECENT_BATCHES as u64 {
            symbolizer.resolve([a + 1 + k]);
        }
        assert!(!Arc::ptr_eq(&first, &symbolizer.resolve([a, b])));
        // A CPU profile's batch is answered, not kept.
        let samples = symbolizer.resolve_samples([a, c]);
        assert_eq!(samples[&c], other[&c]);
        assert!(!Arc::ptr_eq(&samples, &symbolizer.resolve_samples([a, c])));
        // A batch too large to keep is answered all the same.
        let large: Vec<u64> = (0..=MAX_RECENT_ADDRESSES as u64).map(|k| a + k).collect();
        assert_eq!(symbolizer.resolve(large.iter().copied()).len(), large.len());
        assert!(!Arc::ptr_eq(
            &symbolizer.resolve(large.iter().copied()),
            &symbolizer.resolve(large.iter().copied())
        ));
    }

    #[test]
    fn batches_racing_for_the_same_new_addresses_each_get_all_of_them() {
        let addresses: Vec<u64> = [
            a_function_to_find as *const () as u64,
            source_path as *const () as u64,
            source_path as *const () as u64,
            caller as *const () as u64,
            unknown_frame as *const () as u64,
        ]
        .into_iter()
        .flat_map(|start| (0..8).map(move |k| start + k))
        .collect();
        for _ in 0..20 {
            let symbolizer = Symbolizer::default();
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(|| {
                        barrier.wait();
                        let frames = symbolizer.resolve(addresses.iter().copied());
                        for address in &addresses {
                            assert!(frames.contains_key(address), "{address:#x} missing");
                        }
                    });
                }
            });
        }
    }

    #[test]
    fn the_address_hash_spreads_nearby_addresses_over_the_low_bits() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<AddressHash>::default();
        let buckets: HashSet<u64> = (0..4096u64)
            .map(|k| hasher.hash_one(0x55d0_1234_0000 + k * 16) & 0xfff)
            .collect();
        assert!(buckets.len() > 2400, "{} of 4096 buckets", buckets.len());
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
