//! A lean reader of this executable's debug info: for a batch of addresses, only the compilation
//! units that hold them are read (found through `.debug_aranges`), and each only as far as the
//! addresses need; names the DWARF leaves bare come from `.symtab`.
//!
//! A unit's first read streams its DIEs, skipping every function's subtree, until it meets the
//! function holding the address, and runs its line program until the address's sequence; a
//! `UnitMap` keeps what was learnt (each function's DIE, each sequence's start), so a later
//! address in the unit reads one function's DIEs and one sequence's rows, and the scans go on
//! from where they stopped only for an address the map does not cover yet. Each address comes
//! back with the span around it that shares its frames ([`Resolved::span`]).
//!
//! The executable is mapped once, read-only, for the life of the process: the mapping costs no
//! memory until it is read, and the pages a unit's read touched are dropped from this process
//! again (`MADV_DONTNEED`) after it, so symbolising never holds more than one unit's pages.
//! General-purpose readers (addr2line) parse every unit's header, ranges and abbreviations up
//! front, which for this 85 MB binary of about 4,000 units costs 60 to 100 ms and 30 to 45 MB per
//! load.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use gimli::{
    AttributeValue, DebugInfoOffset, EndianSlice, RunTimeEndian, Unit, UnitHeader, UnitOffset,
};
use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSymbol};

use super::lines;

mod code;
pub use code::{CodeScope, CodeSegment, TextSymbol, UnitCode};

type Reader = EndianSlice<'static, RunTimeEndian>;

/// A resolved frame, innermost first when in a list: function, file as recorded, line (0 if
/// unknown). Empty names are filled from the symbol table by the caller of [`DebugInfo::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The function or inlined callee, demangled; empty where neither the DWARF nor `.symtab`
    /// names it.
    pub function: String,
    /// The source file, as the line program records it (a full path); empty when unknown.
    pub file: String,
    /// The line in `file`, 0 when unknown.
    pub line: u32,
}

/// What an address resolved to: its frames, and the addresses around it that resolve to the
/// same frames (the same line, in the same inlined calls), so those need no lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The frames at the address, innermost (inlined) first.
    pub frames: Vec<RawFrame>,
    /// The addresses around it, itself included, that resolve to the same frames.
    pub span: std::ops::Range<u64>,
}

/// The executable's sections, mapped for the life of the process; a compact table built from
/// them on first use (which unit holds each address range); and what reading units has learnt.
pub struct DebugInfo {
    data: &'static [u8],
    dwarf: gimli::Dwarf<Reader>,
    tables: OnceLock<Tables>,
    maps: Mutex<UnitMaps>,
}

/// Lookups every batch needs, kept so a batch never scans whole sections.
struct Tables {
    /// Address ranges of `.debug_aranges`, sorted: start, length, index into `units`.
    ranges: Box<[(u64, u32, u32)]>,
    /// Where each unit starts in `.debug_info`, sorted.
    units: Box<[usize]>,
}

impl Tables {
    fn bytes(&self) -> usize {
        size_of_val(&*self.ranges) + size_of_val(&*self.units)
    }
}

/// What reading a unit has learnt so far, so every later address in it goes straight to its
/// function's DIEs and its line-table sequence. A unit is read only as far as the addresses
/// asked for need: its DIEs up to the function holding the last of them, its line program up to
/// their sequences; a later address the map does not cover reads on from there.
#[derive(Default)]
struct UnitMap {
    /// Outermost functions with code: start, length, DIE offset in the unit; sorted.
    functions: Vec<(u64, u32, u32)>,
    /// Where the DIE scan goes on: the next DIE, its depth, and the depth of the function whose
    /// subtree is being skipped. `None` once every DIE was read.
    next_die: Option<(UnitOffset, isize, Option<isize>)>,
    /// Line-table sequences; sorted.
    sequences: Vec<lines::Sequence>,
    /// Where the line program goes on; `None` once it was read to its end.
    next_line: Option<usize>,
}

impl UnitMap {
    fn new(unit: &Unit<Reader>) -> Self {
        Self {
            next_die: Some((unit.header.root_offset(), 0, None)),
            next_line: unit.line_program.as_ref().map(|_| 0),
            ..Self::default()
        }
    }

    fn bytes(&self) -> usize {
        size_of::<Self>()
            + self.functions.capacity() * size_of::<(u64, u32, u32)>()
            + self.sequences.capacity() * size_of::<lines::Sequence>()
    }
}

/// The units read so far, by offset in `.debug_info`. Bounded by the executable: 16 bytes per
/// function and per sequence at most (about 1 MiB for this 85 MB one, if every unit were read).
#[derive(Default)]
struct UnitMaps {
    units: HashMap<usize, UnitMap>,
    bytes: usize,
}

/// How deep a chain of `abstract_origin`/`specification` references is followed for a name.
const MAX_NAME_HOPS: usize = 8;

/// This process's own executable, mapped once and read by every profile: global, as the
/// executable is one per process.
static EXECUTABLE: OnceLock<Option<DebugInfo>> = OnceLock::new();

impl DebugInfo {
    /// This executable's debug info if it was mapped already (never maps it).
    pub fn loaded() -> Option<&'static DebugInfo> {
        EXECUTABLE.get()?.as_ref()
    }

    /// This executable's debug info, mapped on first use; `None` if it cannot be read.
    pub fn executable() -> Option<&'static DebugInfo> {
        EXECUTABLE
            .get_or_init(|| match Self::map("/proc/self/exe") {
                Ok(info) => Some(info),
                Err(error) => {
                    tracing::warn!(%error, "cannot read this executable's debug info; profiles will show addresses");
                    None
                }
            })
            .as_ref()
    }

    /// The debug info of the executable at `path`, mapped for the life of the process.
    pub fn map(path: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let file = std::fs::File::open(path)?;
        // SAFETY: a read-only mapping of our own executable, which the loader also maps
        // and which is not modified while this process runs.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }?;
        // Mapped for the life of the process: a reference to it is kept by every `Reader`.
        let data: &'static [u8] = &Box::leak(Box::new(map))[..];
        let object = object::File::parse(data)?;
        let endian = if object.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, object::Error> {
            let bytes = match object.section_by_name(id.name()) {
                Some(section) => section.data()?,
                None => &[],
            };
            Ok(EndianSlice::new(bytes, endian))
        })?;
        Ok(Self {
            data,
            dwarf,
            tables: OnceLock::new(),
            maps: Mutex::default(),
        })
    }

    /// Bytes the lookup tables and unit maps hold (0 until the first batch).
    pub fn table_bytes(&self) -> usize {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        self.tables.get().map_or(0, Tables::bytes)
            + maps.bytes
            + maps.units.capacity() * (size_of::<usize>() + size_of::<UnitMap>() + 1)
    }

    fn tables(&self) -> &Tables {
        self.tables.get_or_init(|| {
            let tables = self.build_tables();
            self.forget_pages();
            tables
        })
    }

    fn build_tables(&self) -> Tables {
        let mut starts = Vec::new();
        let mut ranges = Vec::new();
        let mut headers = self.dwarf.debug_aranges.headers();
        while let Ok(Some(header)) = headers.next() {
            let unit = starts.len() as u32;
            starts.push(header.debug_info_offset().0);
            let mut entries = header.entries();
            while let Ok(Some(entry)) = entries.next() {
                let range = entry.range();
                // A range of 4 GiB or more is not code of this executable.
                if let Ok(length) = u32::try_from(range.end.saturating_sub(range.begin))
                    && length > 0
                {
                    ranges.push((range.begin, length, unit));
                }
            }
        }
        // Units in section order; the ranges' indexes follow them.
        let mut order: Vec<usize> = (0..starts.len()).collect();
        order.sort_by_key(|&index| starts[index]);
        let mut position = vec![0u32; starts.len()];
        for (sorted, &index) in order.iter().enumerate() {
            position[index] = sorted as u32;
        }
        for range in &mut ranges {
            range.2 = position[range.2 as usize];
        }
        ranges.sort_unstable();
        // A unit's functions mostly follow each other: one entry per run of them.
        let mut merged: Vec<(u64, u32, u32)> = Vec::with_capacity(ranges.len() / 4);
        for (start, length, unit) in ranges {
            match merged.last_mut() {
                Some((last_start, last_length, last_unit))
                    if *last_unit == unit && *last_start + u64::from(*last_length) == start =>
                {
                    match u32::try_from(u64::from(*last_length) + u64::from(length)) {
                        Ok(joined) => *last_length = joined,
                        Err(_) => merged.push((start, length, unit)),
                    }
                }
                _ => merged.push((start, length, unit)),
            }
        }
        let ranges = merged;
        starts.sort_unstable();
        Tables {
            ranges: ranges.into(),
            units: starts.into(),
        }
    }

    /// Drops every page of the mapping from this process (they stay in the page cache).
    fn forget_pages(&self) {
        let (start, len) = (self.data.as_ptr(), self.data.len());
        let page = 4096usize;
        let aligned = (start as usize) & !(page - 1);
        // SAFETY: the range covers only our own read-only file mapping, which is never written:
        // dropping its pages from this process only makes the next read fault them in again
        // from the page cache.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                len + (start as usize - aligned),
                libc::MADV_DONTNEED,
            );
        }
    }

    /// Frames for each file address (innermost first). Addresses outside every unit get one
    /// frame named from the symbol table, or none.
    pub fn resolve(&self, addresses: &[u64]) -> HashMap<u64, Resolved> {
        let mut sorted = addresses.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let started = std::time::Instant::now();
        let mut resolved: HashMap<u64, Resolved> = HashMap::new();
        let tables = self.tables();
        let units = units_of(tables, &sorted);
        let read = units.len();
        for (unit, probes) in units {
            if let Err(error) = self.resolve_in_unit(tables, unit, &probes, &mut resolved) {
                tracing::debug!(%error, "debug info unit unreadable");
            }
            // Dropped after each unit, not each batch: a first batch reads some twenty units,
            // whose pages together would be a peak of several times the idle RSS.
            self.forget_pages();
        }
        for &address in &sorted {
            resolved.entry(address).or_insert_with(|| Resolved {
                frames: Vec::new(),
                span: address..address + 1,
            });
        }
        self.name_from_symbols(&mut resolved);
        self.forget_pages();
        tracing::debug!(
            addresses = sorted.len(),
            units = read,
            micros = started.elapsed().as_micros() as u64,
            "addresses symbolised"
        );
        resolved
    }

    fn resolve_in_unit(
        &self,
        tables: &Tables,
        offset: DebugInfoOffset,
        probes: &[u64],
        resolved: &mut HashMap<u64, Resolved>,
    ) -> gimli::Result<()> {
        let header = self.dwarf.debug_info.header_from_offset(offset)?;
        let unit = self.dwarf.unit(header)?;
        let line_header = unit.line_program.as_ref().map(|program| program.header());
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let UnitMaps { units, bytes } = &mut *maps;
        let map = units.entry(offset.0).or_insert_with(|| UnitMap::new(&unit));
        let before = map.bytes();
        let mapped = probes.iter().try_for_each(|&probe| {
            self.map_function(&unit, map, probe)?;
            match line_header {
                Some(header) => map_sequence(header, map, probe),
                None => Ok(()),
            }
        });
        *bytes = *bytes + map.bytes() - before;
        let map = &*map;
        mapped?;
        let mut paths: HashMap<u64, String> = HashMap::new();
        let mut path = |file: u64| -> String {
            paths
                .entry(file)
                .or_insert_with(|| self.file_path(&unit, file).unwrap_or_default())
                .clone()
        };
        // Probes grouped by the function holding them: its subtree is read once for all.
        let mut start = 0;
        while start < probes.len() {
            let function = find_range(&map.functions, probes[start]);
            let end = match function {
                Some((begin, length, _)) => {
                    start + probe_indexes(&probes[start..], begin, begin + u64::from(length)).end
                }
                None => start + 1,
            };
            let group = &probes[start..end.max(start + 1)];
            // Functions and inlined calls holding each probe, outermost first, and the span
            // around each probe that is in the same ones.
            let mut scopes: Vec<Vec<Scope>> = vec![Vec::new(); group.len()];
            let mut spans: Vec<std::ops::Range<u64>> = match function {
                Some((begin, length, _)) => vec![begin..begin + u64::from(length); group.len()],
                None => group.iter().map(|&probe| probe..probe + 1).collect(),
            };
            if let Some((_, _, die)) = function {
                self.scopes_in_function(
                    &unit,
                    UnitOffset(die as usize),
                    group,
                    &mut scopes,
                    &mut spans,
                )?;
            }
            for (index, &probe) in group.iter().enumerate() {
                let leaf = match (line_header, find_range(&map.sequences, probe)) {
                    (Some(header), Some(sequence)) => lines::find(header, sequence, probe)?,
                    _ => None,
                };
                let span = &mut spans[index];
                let (mut file, mut line) = match leaf {
                    Some((file, line, row)) => {
                        *span = span.start.max(row.start)..span.end.min(row.end);
                        (path(file), line)
                    }
                    None => {
                        *span = probe..probe + 1;
                        (String::new(), 0)
                    }
                };
                let chain = &mut scopes[index];
                let mut frames = Vec::with_capacity(chain.len().max(1));
                for scope in chain.iter().rev() {
                    frames.push(RawFrame {
                        function: self.name(tables, &unit, scope.entry, 0),
                        file: std::mem::take(&mut file),
                        line,
                    });
                    file = scope.call_file.map(&mut path).unwrap_or_default();
                    line = scope.call_line as u32;
                }
                if frames.is_empty() {
                    frames.push(RawFrame {
                        function: String::new(),
                        file,
                        line,
                    });
                }
                let span = spans[index].clone();
                resolved.insert(probe, Resolved { frames, span });
            }
            start = end.max(start + 1);
        }
        Ok(())
    }

    /// Reads the unit's DIEs on from where the map stopped, skipping every function's subtree,
    /// until a function holding `probe` is found or no DIE is left.
    fn map_function(
        &self,
        unit: &Unit<Reader>,
        map: &mut UnitMap,
        probe: u64,
    ) -> gimli::Result<()> {
        if find_range(&map.functions, probe).is_some() {
            return Ok(());
        }
        let Some((offset, base, mut skipping)) = map.next_die.take() else {
            return Ok(());
        };
        let mut entries = unit.entries_raw(Some(offset))?;
        let found = map.functions.len();
        while let Some((depth, offset, abbrev)) =
            next_scope(&mut entries, base, isize::MIN, &mut skipping, false)?
        {
            let attributes = self.read_scope(unit, &mut entries, abbrev)?;
            let Ok(die) = u32::try_from(offset.0) else {
                continue;
            };
            let mut has_code = false;
            let mut holds_probe = false;
            for (begin, end) in self.code_ranges(unit, &attributes)? {
                // Code at address 0 is code the linker discarded.
                if let Ok(length) = u32::try_from(end - begin)
                    && begin > 0
                {
                    map.functions.push((begin, length, die));
                    has_code = true;
                    holds_probe |= (begin..end).contains(&probe);
                }
            }
            // A declaration or abstract function (no code) may still hold concrete ones.
            if has_code && abbrev.has_children() {
                skipping = Some(depth);
            }
            if holds_probe && !entries.is_empty() {
                map.next_die = Some((entries.next_offset(), base + entries.next_depth(), skipping));
                break;
            }
        }
        if map.functions.len() > found {
            map.functions.sort_unstable();
        }
        Ok(())
    }

    /// Collects the function at `function` and the inlined calls in it holding each probe.
    /// The subtrees of inlined calls holding no probe are skipped.
    /// Each probe's span narrows to the ranges holding it and away from every other range seen
    /// (an inlined call beside or inside its own), so its addresses are in the same calls.
    fn scopes_in_function(
        &self,
        unit: &Unit<Reader>,
        function: UnitOffset,
        probes: &[u64],
        scopes: &mut [Vec<Scope>],
        spans: &mut [std::ops::Range<u64>],
    ) -> gimli::Result<()> {
        let mut entries = unit.entries_raw(Some(function))?;
        let mut skipping: Option<isize> = None;
        // The function's DIE is at depth 0; its subtree ends at the next DIE back at 0.
        let mut floor = isize::MIN;
        while let Some((depth, offset, abbrev)) =
            next_scope(&mut entries, 0, floor, &mut skipping, true)?
        {
            floor = 0;
            let attributes = self.read_scope(unit, &mut entries, abbrev)?;
            let mut holds_probe = false;
            for (begin, end) in self.code_ranges(unit, &attributes)? {
                for (&probe, span) in probes.iter().zip(spans.iter_mut()) {
                    *span = if probe < begin {
                        span.start..span.end.min(begin)
                    } else if probe >= end {
                        span.start.max(end)..span.end
                    } else {
                        span.start.max(begin)..span.end.min(end)
                    };
                }
                for chain in &mut scopes[probe_indexes(probes, begin, end)] {
                    holds_probe = true;
                    if chain.last().is_none_or(|scope| scope.entry != offset) {
                        chain.push(Scope {
                            entry: offset,
                            call_file: attributes.call_file,
                            call_line: attributes.call_line,
                        });
                    }
                }
            }
            if !holds_probe && abbrev.has_children() {
                skipping = Some(depth);
            }
        }
        Ok(())
    }

    /// The attributes of a function or inlined call that say where its code is and where it
    /// was called from; the cursor moves past them.
    fn read_scope(
        &self,
        unit: &Unit<Reader>,
        entries: &mut gimli::EntriesRaw<'_, Reader>,
        abbrev: &gimli::Abbreviation,
    ) -> gimli::Result<ScopeAttributes> {
        let mut scope = ScopeAttributes::default();
        for spec in abbrev.attributes() {
            let attribute = entries.read_attribute(*spec)?;
            match attribute.name() {
                gimli::DW_AT_low_pc => {
                    scope.low = self.dwarf.attr_address(unit, attribute.value())?;
                }
                gimli::DW_AT_high_pc => {
                    scope.high = match attribute.value() {
                        AttributeValue::Addr(address) => Some(HighPc::Address(address)),
                        value => value.udata_value().map(HighPc::Length),
                    };
                }
                gimli::DW_AT_ranges => {
                    scope.ranges = self.dwarf.attr_ranges_offset(unit, attribute.value())?;
                }
                gimli::DW_AT_call_file => {
                    scope.call_file = match attribute.value() {
                        AttributeValue::FileIndex(file) | AttributeValue::Udata(file) => Some(file),
                        value => value.udata_value(),
                    };
                }
                gimli::DW_AT_call_line => {
                    scope.call_line = attribute.udata_value().unwrap_or(0);
                }
                _ => {}
            }
        }
        Ok(scope)
    }

    /// The non-empty address ranges of a function or inlined call.
    fn code_ranges(
        &self,
        unit: &Unit<Reader>,
        scope: &ScopeAttributes,
    ) -> gimli::Result<Vec<(u64, u64)>> {
        let mut ranges = Vec::new();
        match (scope.low, scope.high) {
            (Some(low), Some(HighPc::Address(high))) if high > low => ranges.push((low, high)),
            (Some(low), Some(HighPc::Length(length))) if length > 0 => {
                ranges.push((low, low.saturating_add(length)));
            }
            _ => {}
        }
        if let Some(offset) = scope.ranges {
            let mut list = self.dwarf.ranges(unit, offset)?;
            while let Some(range) = list.next()? {
                if range.end > range.begin {
                    ranges.push((range.begin, range.end));
                }
            }
        }
        Ok(ranges)
    }

    /// Every unit's line program (for tests of the line-program runner).
    #[cfg(test)]
    pub fn line_programs(&self) -> impl Iterator<Item = gimli::IncompleteLineProgram<Reader>> + '_ {
        let mut headers = self.dwarf.units();
        std::iter::from_fn(move || {
            loop {
                let header = headers.next().ok()??;
                if let Some(program) = self.dwarf.unit(header).ok()?.line_program {
                    return Some(program);
                }
            }
        })
    }

    /// A file of the unit's line program, as its full path.
    fn file_path(&self, unit: &Unit<Reader>, index: u64) -> Option<String> {
        let header = unit.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let text = |value: AttributeValue<Reader>| -> Option<String> {
            let bytes = self.dwarf.attr_string(unit, value).ok()?;
            Some(String::from_utf8_lossy(bytes.slice()).into_owned())
        };
        let name = text(file.path_name())?;
        if name.starts_with('/') {
            return Some(name);
        }
        let mut path = file.directory(header).and_then(text).unwrap_or_default();
        if !path.starts_with('/')
            && let Some(comp_dir) = &unit.comp_dir
        {
            let comp_dir = String::from_utf8_lossy(comp_dir.slice());
            path = if path.is_empty() {
                comp_dir.into_owned()
            } else {
                format!("{comp_dir}/{path}")
            };
        }
        Some(if path.is_empty() {
            name
        } else {
            format!("{path}/{name}")
        })
    }

    /// A function's name: its demangled linkage name, else its name, else its origin's.
    fn name(
        &self,
        tables: &Tables,
        unit: &Unit<Reader>,
        offset: UnitOffset,
        hops: usize,
    ) -> String {
        let Ok(entry) = unit.entry(offset) else {
            return String::new();
        };
        let text = |at| {
            entry
                .attr_value(at)
                .and_then(|value| self.dwarf.attr_string(unit, value).ok())
                .map(|bytes| String::from_utf8_lossy(bytes.slice()).into_owned())
        };
        if let Some(linkage) = text(gimli::DW_AT_linkage_name) {
            return demangle(&linkage);
        }
        if let Some(name) = text(gimli::DW_AT_name) {
            return name;
        }
        if hops >= MAX_NAME_HOPS {
            return String::new();
        }
        for at in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
            match entry.attr_value(at) {
                Some(AttributeValue::UnitRef(origin)) => {
                    return self.name(tables, unit, origin, hops + 1);
                }
                Some(AttributeValue::DebugInfoRef(origin)) => {
                    if let Some(local) = origin.to_unit_offset(&unit.header) {
                        return self.name(tables, unit, local, hops + 1);
                    }
                    return self
                        .name_elsewhere(tables, origin, hops + 1)
                        .unwrap_or_default();
                }
                _ => {}
            }
        }
        String::new()
    }

    /// The name of a DIE in another unit.
    fn name_elsewhere(
        &self,
        tables: &Tables,
        offset: DebugInfoOffset,
        hops: usize,
    ) -> Option<String> {
        let header = self.unit_containing(tables, offset)?;
        let local = offset.to_unit_offset(&header)?;
        let unit = self.dwarf.unit(header).ok()?;
        Some(self.name(tables, &unit, local, hops))
    }

    /// The header of the unit holding `offset`: from the last unit with code that starts before
    /// it (the table), forward over units without code (they have no ranges, so no table entry),
    /// one header each. Walking every header from the start would read a page per unit.
    fn unit_containing(
        &self,
        tables: &Tables,
        offset: DebugInfoOffset,
    ) -> Option<UnitHeader<Reader>> {
        let index = tables.units.partition_point(|&start| start <= offset.0);
        let mut start = index.checked_sub(1).map_or(0, |i| tables.units[i]);
        loop {
            let header = self
                .dwarf
                .debug_info
                .header_from_offset(DebugInfoOffset(start))
                .ok()?;
            if offset.to_unit_offset(&header).is_some() {
                return Some(header);
            }
            let next = start + header.length_including_self();
            if next <= start || next > offset.0 {
                return None;
            }
            start = next;
        }
    }

    /// The start of the `.symtab` function holding each of `sorted` (file addresses, sorted), by
    /// address: where Go's text forms count a frame's `+0x` offset from. One pass over the symbol
    /// table, as naming from `.symtab` does; addresses no function symbol holds are left out.
    pub fn function_starts(&self, sorted: &[u64]) -> HashMap<u64, u64> {
        let mut starts = HashMap::new();
        if sorted.is_empty() {
            return starts;
        }
        let Ok(object) = object::File::parse(self.data) else {
            return starts;
        };
        for symbol in object.symbols() {
            if symbol.kind() != object::SymbolKind::Text || symbol.size() == 0 {
                continue;
            }
            let (start, end) = (symbol.address(), symbol.address() + symbol.size());
            for &address in &sorted[probe_indexes(sorted, start, end)] {
                starts.insert(address, start);
            }
        }
        starts
    }

    /// Fills the outermost frame's name from `.symtab` where the DWARF left it bare (line-tables
    /// -only dependencies name functions `poll`), and names addresses no unit holds. One pass
    /// over the symbol table per batch (about 0.1 ms), rather than a sorted copy of it kept for
    /// good (half a megabyte).
    fn name_from_symbols(&self, resolved: &mut HashMap<u64, Resolved>) {
        let mut bare: Vec<u64> = resolved
            .iter()
            .filter(|(_, found)| {
                found
                    .frames
                    .last()
                    .is_none_or(|outer| !outer.function.contains("::"))
            })
            .map(|(&probe, _)| probe)
            .collect();
        if bare.is_empty() {
            return;
        }
        bare.sort_unstable();
        let Ok(object) = object::File::parse(self.data) else {
            return;
        };
        for symbol in object.symbols() {
            if symbol.kind() != object::SymbolKind::Text || symbol.size() == 0 {
                continue;
            }
            let (start, end) = (symbol.address(), symbol.address() + symbol.size());
            let inside = probe_indexes(&bare, start, end);
            if inside.is_empty() {
                continue;
            }
            let Ok(name) = symbol.name() else {
                continue;
            };
            let name = demangle(name);
            for probe in &bare[inside] {
                let Some(Resolved { frames, span }) = resolved.get_mut(probe) else {
                    continue;
                };
                *span = span.start.max(start)..span.end.min(end);
                match frames.last_mut() {
                    Some(outer) => outer.function = name.clone(),
                    None => frames.push(RawFrame {
                        function: name.clone(),
                        file: String::new(),
                        line: 0,
                    }),
                }
            }
        }
    }
}

/// The unit holding each address (sorted), from the `.debug_aranges` table.
fn units_of(tables: &Tables, sorted: &[u64]) -> HashMap<DebugInfoOffset, Vec<u64>> {
    let mut units: HashMap<DebugInfoOffset, Vec<u64>> = HashMap::new();
    for &address in sorted {
        if let Some((_, _, unit)) = find_range(&tables.ranges, address)
            && let Some(&offset) = tables.units.get(unit as usize)
        {
            units
                .entry(DebugInfoOffset(offset))
                .or_default()
                .push(address);
        }
    }
    units
}

/// A function or inlined call holding a probe: its DIE (named only when a frame is made) and
/// where it was called from.
#[derive(Debug, Clone)]
struct Scope {
    entry: UnitOffset,
    call_file: Option<u64>,
    call_line: u64,
}

/// What [`DebugInfo::read_scope`] keeps of a function's or inlined call's attributes.
#[derive(Default)]
struct ScopeAttributes {
    low: Option<u64>,
    high: Option<HighPc>,
    ranges: Option<gimli::RangeListsOffset>,
    call_file: Option<u64>,
    call_line: u64,
}

/// `DW_AT_high_pc`: an address, or (DWARF 4 and later) a length from `DW_AT_low_pc`.
#[derive(Clone, Copy)]
enum HighPc {
    Address(u64),
    Length(u64),
}

/// The next function (and, with `inlined`, inlined call) in a raw DIE stream: its depth (counted
/// from `base`), offset and abbreviation, with the cursor at its attributes. DIEs inside the
/// subtree being skipped (`skipping`: its root's depth) and of other tags are passed over;
/// `None` once the stream ends or comes back to depth `floor`.
fn next_scope<'abbrev>(
    entries: &mut gimli::EntriesRaw<'abbrev, Reader>,
    base: isize,
    floor: isize,
    skipping: &mut Option<isize>,
    inlined: bool,
) -> gimli::Result<Option<(isize, UnitOffset, &'abbrev gimli::Abbreviation)>> {
    while !entries.is_empty() {
        let depth = base + entries.next_depth();
        let offset = entries.next_offset();
        if depth <= floor {
            return Ok(None);
        }
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        if skipping.is_some_and(|skipped| depth > skipped) {
            entries.skip_attributes(abbrev.attributes())?;
            continue;
        }
        *skipping = None;
        let tag = abbrev.tag();
        if tag == gimli::DW_TAG_subprogram || (inlined && tag == gimli::DW_TAG_inlined_subroutine) {
            return Ok(Some((depth, offset, abbrev)));
        }
        entries.skip_attributes(abbrev.attributes())?;
    }
    Ok(None)
}

/// Reads the unit's line program on from where the map stopped, until the sequence holding
/// `probe` is found or the program ends.
fn map_sequence(
    header: &gimli::LineProgramHeader<Reader>,
    map: &mut UnitMap,
    probe: u64,
) -> gimli::Result<()> {
    if find_range(&map.sequences, probe).is_some() {
        return Ok(());
    }
    let Some(from) = map.next_line.take() else {
        return Ok(());
    };
    let found = map.sequences.len();
    map.next_line = lines::scan_sequences(header, from, probe, &mut map.sequences)?;
    if map.sequences.len() > found {
        map.sequences.sort_unstable();
    }
    Ok(())
}

/// The entry of a sorted table of (start, length, value) holding `address`.
fn find_range<T: Copy>(table: &[(u64, u32, T)], address: u64) -> Option<(u64, u32, T)> {
    let index = table.partition_point(|&(start, _, _)| start <= address);
    let entry = *table.get(index.checked_sub(1)?)?;
    (address - entry.0 < u64::from(entry.1)).then_some(entry)
}

/// The indexes of a sorted slice's addresses within `begin..end`.
fn probe_indexes(sorted: &[u64], begin: u64, end: u64) -> std::ops::Range<usize> {
    let first = sorted.partition_point(|&a| a < begin);
    let last = sorted.partition_point(|&a| a < end);
    first..last.max(first)
}

/// A symbol name as profiles show it: Rust and C++ names demangled, Rust's without their hash.
pub fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The return addresses on the stack, innermost first.
    #[inline(never)]
    fn return_addresses() -> Vec<u64> {
        let mut addresses = Vec::new();
        backtrace::trace(|frame| {
            addresses.push(frame.ip() as u64);
            addresses.len() < 16
        });
        addresses
    }

    #[inline(always)]
    fn inlined_into_its_caller() -> Vec<u64> {
        std::hint::black_box(return_addresses()) // the inlined call
    }

    #[inline(never)]
    fn outer_function() -> Vec<u64> {
        std::hint::black_box(inlined_into_its_caller()) // the call site
    }

    /// A runtime address of this test binary as a virtual address of its file.
    fn file_address(address: u64) -> Option<u64> {
        let mappings = mappings::MAPPINGS.as_deref()?;
        let main = mappings.first()?;
        mappings
            .iter()
            .filter(|mapping| mapping.pathname == main.pathname)
            .find(|mapping| {
                (mapping.memory_start as u64..mapping.memory_end as u64).contains(&address)
            })
            .map(|mapping| address - (mapping.memory_start - mapping.memory_offset) as u64)
    }

    #[test]
    fn an_inlined_call_resolves_to_its_chain_with_the_call_line() {
        let Some(info) = DebugInfo::executable() else {
            panic!("this test binary has debug info");
        };
        let probes: Vec<u64> = outer_function()
            .into_iter()
            .filter_map(|ip| file_address(ip.checked_sub(1)?))
            .collect();
        let mut resolved = info.resolve(&probes);
        let frames = probes
            .iter()
            .filter_map(|probe| Some(resolved.remove(probe)?.frames))
            .find(|frames| frames[0].function.ends_with("inlined_into_its_caller"))
            .expect("a return address inside the inlined call");
        let names: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
        assert!(names[1].ends_with("outer_function"), "{frames:#?}");
        assert!(frames[0].file.ends_with("crates/symbols/src/dwarf.rs"));
        let source = include_str!("dwarf.rs");
        let line_of = |marker: &str| {
            source
                .lines()
                .position(|line| line.contains(marker) && line.contains("//"))
                .unwrap() as u32
                + 1
        };
        assert_eq!(
            frames[0].line,
            line_of("// the inlined call"),
            "{frames:#?}"
        );
        assert_eq!(frames[1].line, line_of("// the call site"), "{frames:#?}");
    }

    /// Frames as binutils' `addr2line -a -f -i` prints them: (file name, line) per frame,
    /// innermost first, for each address.
    fn binutils_frames(addresses: &[u64]) -> Vec<Vec<(String, u32)>> {
        let output = std::process::Command::new("addr2line")
            .args(["-a", "-f", "-i", "-e"])
            .arg(std::env::current_exe().unwrap())
            .args(addresses.iter().map(|address| format!("{address:#x}")))
            .output()
            .expect("binutils' addr2line runs (apt package binutils)");
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        let mut all: Vec<Vec<(String, u32)>> = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.starts_with("0x") {
                all.push(Vec::new());
                continue;
            }
            let location = lines.next().unwrap_or_default();
            let location = location.split(" (discriminator").next().unwrap_or_default();
            let (file, number) = location.rsplit_once(':').unwrap_or((location, "0"));
            let name = file.rsplit('/').next().unwrap_or(file).to_owned();
            all.last_mut()
                .unwrap()
                .push((name, number.parse().unwrap_or(0)));
        }
        all
    }

    #[test]
    fn addresses_resolve_to_the_inline_chains_files_and_lines_binutils_addr2line_gives() {
        let info = DebugInfo::executable().expect("this test binary has debug info");
        let tables = info.tables();
        // Addresses inside functions all over the binary, some sharing a function.
        let object = object::File::parse(info.data).unwrap();
        let functions: Vec<(u64, u64)> = object
            .symbols()
            .filter(|symbol| symbol.kind() == object::SymbolKind::Text && symbol.size() > 0)
            .map(|symbol| (symbol.address(), symbol.size()))
            .collect();
        let mut probes: Vec<u64> = functions
            .iter()
            .step_by(functions.len() / 300)
            .flat_map(|&(start, size)| [start + size / 2, start + size / 3])
            .filter(|&address| find_range(&tables.ranges, address).is_some())
            .collect();
        probes.sort_unstable();
        probes.dedup();
        let resolved = info.resolve(&probes);
        let expected = binutils_frames(&probes);
        assert_eq!(expected.len(), probes.len());
        let (mut agree, mut frames) = (0, 0);
        for (probe, binutils) in probes.iter().zip(&expected) {
            let ours: Vec<(String, u32)> = resolved[probe]
                .frames
                .iter()
                .map(|frame| {
                    let name = frame.file.rsplit('/').next().unwrap_or_default();
                    (
                        if name.is_empty() { "??" } else { name }.to_owned(),
                        frame.line,
                    )
                })
                .collect();
            frames += binutils.len();
            if &ours == binutils {
                agree += 1;
            } else {
                eprintln!("{probe:#x}: ours {ours:?}, binutils {binutils:?}");
            }
        }
        assert!(frames > probes.len(), "inline chains were compared");
        // Every address of a probe's span resolves to the probe's frames.
        let mut wide = 0;
        for probe in &probes {
            let Resolved { frames, span } = &resolved[probe];
            assert!(
                span.contains(probe),
                "{probe:#x} outside its span {span:x?}"
            );
            if span.end - span.start > 1 {
                wide += 1;
                for other in [span.start, span.end - 1, (span.start + span.end) / 2] {
                    let alone = info.resolve(&[other]);
                    assert_eq!(
                        &alone[&other].frames, frames,
                        "{other:#x} in {probe:#x}'s span {span:x?}"
                    );
                }
            }
        }
        assert!(
            wide * 2 > probes.len(),
            "most spans hold more than their probe ({wide})"
        );
        assert!(
            agree * 100 >= probes.len() * 98,
            "{agree} of {} addresses agree with binutils",
            probes.len()
        );
    }

    #[test]
    fn addresses_are_picked_by_range_and_names_demangled_without_hash() {
        assert_eq!(probe_indexes(&[1, 5, 9, 12], 5, 12), 1..3);
        assert!(probe_indexes(&[1, 5], 6, 9).is_empty());
        assert!(probe_indexes(&[1, 5], 9, 6).is_empty());
        assert_eq!(
            demangle("_ZN10leakfinder5leaks5slice4push17h0123456789abcdefE"),
            "leakfinder::leaks::slice::push"
        );
        assert_eq!(demangle("memcpy"), "memcpy");
    }
}
