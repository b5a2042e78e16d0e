//! A lean reader of this executable's debug info: for a batch of addresses, only the compilation
//! units that hold them are read (found through `.debug_aranges`), each once, streaming its DIEs
//! and line rows without building tables; names the DWARF leaves bare come from `.symtab`.
//!
//! The executable is mapped once, read-only, for the life of the process: the mapping costs no
//! memory until it is read, and the pages a batch reads are dropped from this process again
//! (`MADV_DONTNEED`) after each unit, so symbolising never holds more than one unit's pages and
//! nothing stays resident between batches. General-purpose readers (addr2line) parse every
//! unit's header, ranges and abbreviations up front, which for this 85 MB binary of about 4,000
//! units costs 60 to 100 ms and 30 to 45 MB per load.

use std::collections::HashMap;
use std::sync::OnceLock;

use gimli::{
    AttributeValue, DebugInfoOffset, EndianSlice, RunTimeEndian, Unit, UnitHeader, UnitOffset,
};
use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSymbol};

type Reader = EndianSlice<'static, RunTimeEndian>;

/// A resolved frame, innermost first when in a list: function, file as recorded, line (0 if
/// unknown). Empty names are filled from the symbol table by the caller of [`DebugInfo::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// The executable's sections, mapped for the life of the process, and two compact tables built
/// from them on first use: which unit holds each address range, and where each function symbol
/// starts and ends.
pub struct DebugInfo {
    data: &'static [u8],
    dwarf: gimli::Dwarf<Reader>,
    tables: OnceLock<Tables>,
}

/// Lookups every batch needs, kept so a batch never scans whole sections.
struct Tables {
    /// Address ranges of `.debug_aranges`, sorted: start, length, index into `units`.
    ranges: Box<[(u64, u32, u32)]>,
    /// Where each unit starts in `.debug_info`, sorted.
    units: Box<[usize]>,
    /// Function symbols of `.symtab`, sorted: start, size, symbol index (names are read only
    /// when needed: reading them all would touch all of `.strtab`).
    functions: Box<[(u64, u32, u32)]>,
}

impl Tables {
    fn bytes(&self) -> usize {
        size_of_val(&*self.ranges) + size_of_val(&*self.units) + size_of_val(&*self.functions)
    }
}

/// How deep a chain of `abstract_origin`/`specification` references is followed for a name.
const MAX_NAME_HOPS: usize = 8;

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

    fn map(path: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
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
        })
    }

    /// Bytes the lookup tables hold (0 until the first batch built them).
    pub fn table_bytes(&self) -> usize {
        self.tables.get().map_or(0, Tables::bytes)
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
        let mut functions = Vec::new();
        if let Ok(object) = object::File::parse(self.data) {
            for symbol in object.symbols() {
                if symbol.kind() != object::SymbolKind::Text || symbol.size() == 0 {
                    continue;
                }
                if let (Ok(size), Ok(index)) = (
                    u32::try_from(symbol.size()),
                    u32::try_from(symbol.index().0),
                ) {
                    functions.push((symbol.address(), size, index));
                }
            }
        }
        functions.sort_unstable();
        Tables {
            ranges: ranges.into(),
            units: starts.into(),
            functions: functions.into(),
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
    pub fn resolve(&self, addresses: &[u64]) -> HashMap<u64, Vec<RawFrame>> {
        let mut sorted = addresses.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut resolved: HashMap<u64, Vec<RawFrame>> = HashMap::new();
        let tables = self.tables();
        for (unit, probes) in units_of(tables, &sorted) {
            if let Err(error) = self.resolve_in_unit(tables, unit, &probes, &mut resolved) {
                tracing::debug!(%error, "debug info unit unreadable");
            }
            self.forget_pages();
        }
        for &address in &sorted {
            resolved.entry(address).or_default();
        }
        self.name_from_symbols(tables, &mut resolved);
        self.forget_pages();
        resolved
    }

    fn resolve_in_unit(
        &self,
        tables: &Tables,
        offset: DebugInfoOffset,
        probes: &[u64],
        resolved: &mut HashMap<u64, Vec<RawFrame>>,
    ) -> gimli::Result<()> {
        let header = self.dwarf.debug_info.header_from_offset(offset)?;
        let unit = self.dwarf.unit(header)?;
        // Functions and inlined calls holding each probe, outermost first.
        let mut scopes: Vec<Vec<Scope>> = vec![Vec::new(); probes.len()];
        let mut tree = unit.entries_tree(None)?;
        self.walk(tables, &unit, tree.root()?, 0, probes, &mut scopes)?;
        let leaves = self.leaf_locations(&unit, probes)?;
        let mut paths: HashMap<u64, String> = HashMap::new();
        let mut path = |file: u64| -> String {
            paths
                .entry(file)
                .or_insert_with(|| self.file_path(&unit, file).unwrap_or_default())
                .clone()
        };
        for (index, &probe) in probes.iter().enumerate() {
            let chain = &mut scopes[index];
            chain.sort_by_key(|scope| scope.depth);
            let (mut file, mut line) = match leaves[index] {
                Some((file, line)) => (path(file), line),
                None => (String::new(), 0),
            };
            let mut frames = Vec::with_capacity(chain.len().max(1));
            for scope in chain.iter().rev() {
                frames.push(RawFrame {
                    function: scope.function.clone(),
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
            resolved.insert(probe, frames);
        }
        Ok(())
    }

    /// Collects the functions and inlined calls holding each probe under `node`. The children
    /// of a function whose code holds no probe are never looked at: most of a unit is skipped.
    fn walk(
        &self,
        tables: &Tables,
        unit: &Unit<Reader>,
        node: gimli::EntriesTreeNode<'_, '_, Reader>,
        depth: usize,
        probes: &[u64],
        scopes: &mut [Vec<Scope>],
    ) -> gimli::Result<()> {
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            let tag = entry.tag();
            if tag != gimli::DW_TAG_subprogram && tag != gimli::DW_TAG_inlined_subroutine {
                self.walk(tables, unit, child, depth + 1, probes, scopes)?;
                continue;
            }
            let mut ranges = self.dwarf.die_ranges(unit, entry)?;
            let mut scope: Option<Scope> = None;
            let mut has_code = false;
            while let Some(range) = ranges.next()? {
                has_code |= range.end > range.begin;
                for chain in &mut scopes[probe_indexes(probes, range.begin, range.end)] {
                    let scope = scope.get_or_insert_with(|| Scope {
                        depth,
                        function: self.name(tables, unit, entry.offset(), 0),
                        call_file: match entry.attr_value(gimli::DW_AT_call_file) {
                            Some(AttributeValue::FileIndex(file) | AttributeValue::Udata(file)) => {
                                Some(file)
                            }
                            _ => None,
                        },
                        call_line: entry
                            .attr_value(gimli::DW_AT_call_line)
                            .and_then(|value| value.udata_value())
                            .unwrap_or(0),
                    });
                    chain.push(scope.clone());
                }
            }
            // A declaration or abstract function (no code) may still hold concrete ones.
            if scope.is_some() || !has_code {
                self.walk(tables, unit, child, depth + 1, probes, scopes)?;
            }
        }
        Ok(())
    }

    /// The line-table row holding each probe: its file index and line.
    fn leaf_locations(
        &self,
        unit: &Unit<Reader>,
        probes: &[u64],
    ) -> gimli::Result<Vec<Option<(u64, u32)>>> {
        let mut found = vec![None; probes.len()];
        let Some(program) = unit.line_program.clone() else {
            return Ok(found);
        };
        let mut rows = program.rows();
        let mut previous: Option<(u64, u64, u32)> = None;
        while let Some((_, row)) = rows.next_row()? {
            if let Some((start, file, line)) = previous
                && row.address() > start
            {
                for slot in &mut found[probe_indexes(probes, start, row.address())] {
                    *slot = Some((file, line));
                }
            }
            previous = (!row.end_sequence()).then(|| {
                let line = row.line().map_or(0, |line| line.get() as u32);
                (row.address(), row.file_index(), line)
            });
        }
        Ok(found)
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

    /// Fills the outermost frame's name from `.symtab` where the DWARF left it bare (line-tables
    /// -only dependencies name functions `poll`), and names addresses no unit holds.
    fn name_from_symbols(&self, tables: &Tables, resolved: &mut HashMap<u64, Vec<RawFrame>>) {
        let Ok(object) = object::File::parse(self.data) else {
            return;
        };
        for (&probe, frames) in resolved.iter_mut() {
            let bare = frames
                .last()
                .is_none_or(|outer| !outer.function.contains("::"));
            if !bare {
                continue;
            }
            let index = tables
                .functions
                .partition_point(|&(start, _, _)| start <= probe);
            let Some(&(start, size, symbol)) =
                index.checked_sub(1).and_then(|i| tables.functions.get(i))
            else {
                continue;
            };
            let Some(name) = (probe - start < u64::from(size))
                .then(|| {
                    object
                        .symbol_by_index(object::SymbolIndex(symbol as usize))
                        .ok()
                })
                .flatten()
                .and_then(|symbol| symbol.name().ok())
            else {
                continue;
            };
            match frames.last_mut() {
                Some(outer) => outer.function = demangle(name),
                None => frames.push(RawFrame {
                    function: demangle(name),
                    file: String::new(),
                    line: 0,
                }),
            }
        }
    }
}

/// The unit holding each address (sorted), from the `.debug_aranges` table.
fn units_of(tables: &Tables, sorted: &[u64]) -> HashMap<DebugInfoOffset, Vec<u64>> {
    let mut units: HashMap<DebugInfoOffset, Vec<u64>> = HashMap::new();
    for &address in sorted {
        let index = tables
            .ranges
            .partition_point(|&(start, _, _)| start <= address);
        let Some(&(start, length, unit)) = index.checked_sub(1).and_then(|i| tables.ranges.get(i))
        else {
            continue;
        };
        if address - start < u64::from(length)
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

/// A function or inlined call holding a probe.
#[derive(Debug, Clone)]
struct Scope {
    depth: usize,
    function: String,
    call_file: Option<u64>,
    call_line: u64,
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

    #[test]
    fn an_inlined_call_resolves_to_its_chain_with_the_call_line() {
        let Some(info) = DebugInfo::executable() else {
            panic!("this test binary has debug info");
        };
        let probes: Vec<u64> = outer_function()
            .into_iter()
            .filter_map(|ip| super::super::Executable::current()?.file_address(ip.checked_sub(1)?))
            .collect();
        let mut resolved = info.resolve(&probes);
        let frames = probes
            .iter()
            .filter_map(|probe| resolved.remove(probe))
            .find(|frames| frames[0].function.ends_with("inlined_into_its_caller"))
            .expect("a return address inside the inlined call");
        let names: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
        assert!(names[1].ends_with("outer_function"), "{frames:#?}");
        assert!(frames[0].file.ends_with("src/profiling/symbols/dwarf.rs"));
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
