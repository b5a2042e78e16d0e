//! The whole executable's code, read once for the prebuilt symbol table ([`super::super::table`],
//! written by `leakfinder symbols` after the build; the service itself never runs this): every
//! unit read to its end, its line rows cut at the ends of every function's and inlined call's
//! ranges, each piece with the calls holding it. The frames a piece gives are those
//! [`DebugInfo::resolve`] gives for its addresses; the table's tests check that.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use gimli::{Unit, UnitOffset};
use object::{Object, ObjectSymbol};

use super::{DebugInfo, Reader, Tables, UnitMap, demangle, lines, next_scope};

/// One unit's code for the prebuilt table: runs of addresses sharing their frames, the
/// functions and inlined calls they are in, and the files both name (indexes into `files`).
#[derive(Debug, Default)]
pub struct UnitCode {
    /// The functions and inlined calls, each chain of inlining stored once; segments and other
    /// scopes refer to them by index.
    pub scopes: Vec<CodeScope>,
    /// The runs of addresses, each in one innermost scope at one file and line; in address
    /// order within each function, adjacent runs with the same frames merged.
    pub segments: Vec<CodeSegment>,
    /// The source files (full paths) that segments and scopes name, each once.
    pub files: Vec<String>,
}

/// A function (no parent) or an inlined call: its name, the scope it was inlined into (an index
/// into [`UnitCode::scopes`]), and where in that scope it was called.
#[derive(Debug, Clone)]
pub struct CodeScope {
    /// The function's name, demangled (from `.symtab` where the DWARF leaves it bare); empty
    /// where nothing names it.
    pub name: String,
    /// The scope this call was inlined into (an index into [`UnitCode::scopes`]); `None` for
    /// an outermost function.
    pub parent: Option<u32>,
    /// The file of the call in `parent` (an index into [`UnitCode::files`]), if recorded.
    pub call_file: Option<u32>,
    /// The line of the call in `parent`, 0 when unknown or for an outermost function.
    pub call_line: u32,
}

/// Addresses `start..end` are in `scope` (innermost) at `file`:`line`.
#[derive(Debug)]
pub struct CodeSegment {
    /// The first address (a file address of the executable).
    pub start: u64,
    /// The address just past the last one.
    pub end: u64,
    /// The innermost function or inlined call (an index into [`UnitCode::scopes`]).
    pub scope: u32,
    /// The source file of the line row holding these addresses (an index into
    /// [`UnitCode::files`]); `None` where no row does.
    pub file: Option<u32>,
    /// The line of that row, 0 when no row holds these addresses.
    pub line: u32,
}

/// A text symbol of `.symtab`: start, end, demangled name.
pub type TextSymbol = (u64, u64, String);

/// A line row: start, end, file index in the unit's line program, line.
type Row = (u64, u64, u64, u32);

/// A function's or inlined call's range: start, end, depth in the function's DIE tree, and the
/// scope (an index into [`FunctionScopes::scopes`]).
type Range = (u64, u64, isize, u32);

impl DebugInfo {
    /// Every unit's code, one unit at a time, with the mapping's pages dropped after each.
    /// Unreadable units are left out (their addresses fall back to debug info at run time).
    pub fn every_unit_code(&self, mut on_unit: impl FnMut(UnitCode)) -> gimli::Result<()> {
        let tables = self.tables();
        let symbols = self.text_symbols();
        let mut headers = self.dwarf.units();
        while let Some(header) = headers.next()? {
            match self
                .dwarf
                .unit(header)
                .and_then(|unit| self.unit_code(tables, &unit, &symbols))
            {
                Ok(code) => on_unit(code),
                Err(error) => tracing::debug!(%error, "debug info unit unreadable"),
            }
            self.forget_pages();
        }
        Ok(())
    }

    /// The text symbols of `.symtab`, sorted by start.
    pub fn text_symbols(&self) -> Vec<TextSymbol> {
        let Ok(object) = object::File::parse(self.data) else {
            return Vec::new();
        };
        let mut symbols: Vec<TextSymbol> = object
            .symbols()
            .filter(|symbol| symbol.kind() == object::SymbolKind::Text && symbol.size() > 0)
            .filter_map(|symbol| {
                let start = symbol.address();
                Some((start, start + symbol.size(), demangle(symbol.name().ok()?)))
            })
            .collect();
        symbols.sort_unstable_by_key(|&(start, ..)| start);
        symbols
    }

    fn unit_code(
        &self,
        tables: &Tables,
        unit: &Unit<Reader>,
        symbols: &[TextSymbol],
    ) -> gimli::Result<UnitCode> {
        let mut map = UnitMap::new(unit);
        // No function holds this probe: the scan maps every function.
        self.map_function(unit, &mut map, u64::MAX)?;
        let mut writer = UnitWriter {
            info: self,
            unit,
            rows: line_rows(unit)?,
            code: UnitCode::default(),
            file_ids: HashMap::new(),
        };
        let mut functions: Vec<u32> = map.functions.iter().map(|&(_, _, die)| die).collect();
        functions.sort_unstable();
        functions.dedup();
        for die in functions {
            let function = self.function_scopes(tables, unit, die, symbols, &mut writer)?;
            writer.cut(&function);
        }
        writer.rows_outside_functions(symbols);
        Ok(writer.code)
    }

    /// Every function and inlined call in the function at `die`, with their ranges. The
    /// function's bare name (line tables name it `poll`) comes from `.symtab`, as `resolve`'s does.
    fn function_scopes(
        &self,
        tables: &Tables,
        unit: &Unit<Reader>,
        die: u32,
        symbols: &[TextSymbol],
        writer: &mut UnitWriter<'_>,
    ) -> gimli::Result<FunctionScopes> {
        let mut function = FunctionScopes::default();
        let mut open: Vec<(isize, u32)> = Vec::new();
        let mut entries = unit.entries_raw(Some(UnitOffset(die as usize)))?;
        let (mut skipping, mut floor) = (None, isize::MIN);
        while let Some((depth, offset, abbrev)) =
            next_scope(&mut entries, 0, floor, &mut skipping, true)?
        {
            floor = 0;
            let attributes = self.read_scope(unit, &mut entries, abbrev)?;
            while open.last().is_some_and(|&(outer, _)| outer >= depth) {
                open.pop();
            }
            let ranges = self.code_ranges(unit, &attributes)?;
            let mut name = self.name(tables, unit, offset, 0);
            if open.is_empty()
                && !name.contains("::")
                && let Some(&(begin, _)) = ranges.first()
                && let Some(symbol) = symbol_at(symbols, begin)
            {
                name = symbol.2.clone();
            }
            let scope = function.scopes.len() as u32;
            function.scopes.push(CodeScope {
                name,
                parent: None,
                call_file: attributes.call_file.map(|file| writer.file_id(file)),
                call_line: u32::try_from(attributes.call_line).unwrap_or(0),
            });
            open.push((depth, scope));
            // Code at address 0 is code the linker discarded.
            function.ranges.extend(
                ranges
                    .into_iter()
                    .filter(|&(begin, _)| begin > 0)
                    .map(|(begin, end)| (begin, end, depth, scope)),
            );
        }
        Ok(function)
    }
}

/// A function's DIE tree as found: its scopes (parents not set) and their ranges.
#[derive(Default)]
struct FunctionScopes {
    scopes: Vec<CodeScope>,
    ranges: Vec<Range>,
}

/// One unit's code as it is built.
struct UnitWriter<'a> {
    info: &'a DebugInfo,
    unit: &'a Unit<Reader>,
    /// Sorted by start.
    rows: Vec<Row>,
    code: UnitCode,
    file_ids: HashMap<u64, u32>,
}

impl UnitWriter<'_> {
    /// The index in [`UnitCode::files`] of the line program's file `index`.
    fn file_id(&mut self, index: u64) -> u32 {
        *self.file_ids.entry(index).or_insert_with(|| {
            let path = self.info.file_path(self.unit, index).unwrap_or_default();
            self.code.files.push(path);
            (self.code.files.len() - 1) as u32
        })
    }

    /// Cuts a function's code at every range's ends and every row's start; each piece gets the
    /// scopes holding it (its innermost scope's ancestors, less any whose ranges leave it out,
    /// as `resolve` leaves them out) and the row holding it. Adjacent pieces that agree merge.
    fn cut(&mut self, function: &FunctionScopes) {
        let mut ranges = function.ranges.clone();
        ranges.sort_unstable();
        let mut cuts: Vec<u64> = ranges
            .iter()
            .flat_map(|&(begin, end, ..)| [begin, end])
            .collect();
        let (low, high) = ranges
            .iter()
            .fold((u64::MAX, 0), |(low, high), &(begin, end, ..)| {
                (low.min(begin), high.max(end))
            });
        let first_row = self.rows.partition_point(|&(_, end, ..)| end <= low);
        cuts.extend(
            self.rows[first_row..]
                .iter()
                .take_while(|&&(start, ..)| start < high)
                .map(|&(start, ..)| start),
        );
        cuts.sort_unstable();
        cuts.dedup();
        // The chains made so far: (scope as found, chain it is inside) to an index in `code`.
        let mut chains: HashMap<(u32, Option<u32>), u32> = HashMap::new();
        let mut next = 0;
        let mut holding: BTreeSet<(isize, u32)> = BTreeSet::new();
        let mut ends: BinaryHeap<Reverse<(u64, isize, u32)>> = BinaryHeap::new();
        for cut in cuts.windows(2) {
            let (begin, end) = (cut[0], cut[1]);
            while let Some(&Reverse((ends_at, depth, scope))) = ends.peek()
                && ends_at <= begin
            {
                ends.pop();
                holding.remove(&(depth, scope));
            }
            while let Some(&(from, to, depth, scope)) = ranges.get(next)
                && from <= begin
            {
                if to > begin {
                    holding.insert((depth, scope));
                    ends.push(Reverse((to, depth, scope)));
                }
                next += 1;
            }
            let mut chain = None;
            for &(_, held) in &holding {
                let parent = chain;
                chain = Some(*chains.entry((held, parent)).or_insert_with(|| {
                    self.code.scopes.push(CodeScope {
                        parent,
                        ..function.scopes[held as usize].clone()
                    });
                    (self.code.scopes.len() - 1) as u32
                }));
            }
            let Some(scope) = chain else { continue };
            let (file, line) = match self.row_at(begin) {
                Some((_, _, file, line)) => (Some(self.file_id(file)), line),
                None => (None, 0),
            };
            self.push(CodeSegment {
                start: begin,
                end,
                scope,
                file,
                line,
            });
        }
    }

    /// Rows outside every function's DIE, named from `.symtab` as `resolve` names them.
    fn rows_outside_functions(&mut self, symbols: &[TextSymbol]) {
        let mut covered: Vec<(u64, u64)> = self
            .code
            .segments
            .iter()
            .map(|segment| (segment.start, segment.end))
            .collect();
        covered.sort_unstable();
        let mut by_symbol: HashMap<u64, u32> = HashMap::new();
        for (start, end, file, line) in std::mem::take(&mut self.rows) {
            let mut at = start;
            while at < end {
                let index = covered.partition_point(|&(from, _)| from <= at);
                if let Some(&(_, to)) = index.checked_sub(1).map(|i| &covered[i])
                    && to > at
                {
                    at = to;
                    continue;
                }
                let uncovered_end = covered.get(index).map_or(end, |&(from, _)| from.min(end));
                let (key, name, until) = match symbol_at(symbols, at) {
                    Some((from, to, name)) => (*from, name.as_str(), *to),
                    None => {
                        let next = symbols.partition_point(|&(from, ..)| from <= at);
                        let until = symbols.get(next).map_or(u64::MAX, |&(from, ..)| from);
                        (0, "", until)
                    }
                };
                let piece_end = uncovered_end.min(until).max(at + 1);
                let scope = *by_symbol.entry(key).or_insert_with(|| {
                    self.code.scopes.push(CodeScope {
                        name: name.to_owned(),
                        parent: None,
                        call_file: None,
                        call_line: 0,
                    });
                    (self.code.scopes.len() - 1) as u32
                });
                let file = Some(self.file_id(file));
                self.push(CodeSegment {
                    start: at,
                    end: piece_end,
                    scope,
                    file,
                    line,
                });
                at = piece_end;
            }
        }
    }

    /// The row holding `address`.
    fn row_at(&self, address: u64) -> Option<Row> {
        let index = self.rows.partition_point(|&(start, ..)| start <= address);
        let row = *self.rows.get(index.checked_sub(1)?)?;
        (address < row.1).then_some(row)
    }

    /// Appends a segment, or extends the last one if it ends where this starts with the same
    /// frames.
    fn push(&mut self, segment: CodeSegment) {
        match self.code.segments.last_mut() {
            Some(last)
                if last.end == segment.start
                    && (last.scope, last.file, last.line)
                        == (segment.scope, segment.file, segment.line) =>
            {
                last.end = segment.end;
            }
            _ => self.code.segments.push(segment),
        }
    }
}

/// Every row of the unit's line program with code, sorted by start.
fn line_rows(unit: &Unit<Reader>) -> gimli::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let Some(program) = &unit.line_program else {
        return Ok(rows);
    };
    let header = program.header();
    let mut sequences = Vec::new();
    lines::scan_sequences(header, 0, u64::MAX, &mut sequences)?;
    for (_, _, offset) in sequences {
        let mut previous: Option<lines::Row> = None;
        lines::rows_from(header, offset, |row| {
            // A row covers the addresses up to the next row's (the last of several at one
            // address wins, as in `lines::find`).
            if let Some(before) = previous
                && row.address > before.address
            {
                let line = u32::try_from(before.line).unwrap_or(0);
                rows.push((before.address, row.address, before.file, line));
            }
            previous = (!row.end_sequence).then_some(row);
            lines::Flow::Continue
        })?;
    }
    rows.sort_unstable_by_key(|&(start, ..)| start);
    Ok(rows)
}

/// The text symbol holding `address`, in a table sorted by start.
fn symbol_at(symbols: &[TextSymbol], address: u64) -> Option<&TextSymbol> {
    let index = symbols.partition_point(|&(start, ..)| start <= address);
    let symbol = symbols.get(index.checked_sub(1)?)?;
    (address < symbol.1).then_some(symbol)
}
