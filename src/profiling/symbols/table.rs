//! A prebuilt symbol table for an executable, written next to it after the build
//! (`leakfinder symbols`), as Go's linker writes `pclntab` into every Go binary: every code
//! address of the executable's functions, in runs that share frames, each with its innermost
//! function or inlined call, file and line, and the chain of calls it was inlined into.
//!
//! Symbolising a new address through it is a binary search in a mapped file: no debug info is
//! read, so the first profile of each line of code costs microseconds instead of a unit's DIEs
//! and line program. The service uses the table only when its build ID is the executable's own
//! (a stale table from an earlier build is ignored, with a warning); any address it does not
//! hold falls back to the debug info ([`super::dwarf`]).
//!
//! The file (little-endian, every field 4 bytes unless said):
//!
//! ```text
//! magic "LFSYMTB1" (8) | segments | scopes | strings | build-ID length | base address (8)
//! build ID, padded to 8
//! segments × (start - base, scope, file, line)     scope NONE: no code here
//! every 256th segment's start - base                so a lookup reads one block of segments
//! scopes   × (name, parent, call file, call line)  parent NONE: a function
//! strings + 1 offsets into the bytes that follow, then the bytes (UTF-8)
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dwarf::{DebugInfo, RawFrame};

const MAGIC: &[u8; 8] = b"LFSYMTB1";
const HEADER: usize = 32;
const NONE: u32 = u32::MAX;
/// Segments per block of the directory (one 4 KiB page of them).
const BLOCK: usize = 256;
/// The deepest chain of inlined calls followed (a corrupt file's cycle ends here).
const MAX_DEPTH: usize = 256;

/// Why a table cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a symbol table of this format")]
    Format { path: PathBuf },
    #[error("{path} was built for another build of the executable")]
    Stale { path: PathBuf },
    #[error("cannot read debug info of {path}: {message}")]
    DebugInfo { path: PathBuf, message: String },
    #[error("{path} has no build ID to match a table with")]
    NoBuildId { path: PathBuf },
    #[error("{0} does not fit this format's 32-bit fields")]
    TooLarge(&'static str),
}

/// Where the table of the executable at `executable` lives: beside it, `.symbols` appended.
pub fn path_beside(executable: &Path) -> PathBuf {
    let mut path = executable.as_os_str().to_owned();
    path.push(".symbols");
    PathBuf::from(path)
}

/// The GNU build ID of the executable at `path`.
pub fn build_id(path: &Path) -> Result<Vec<u8>, TableError> {
    use object::Object;
    let io = |source| TableError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: a read-only mapping of an executable that is not modified while it is read; it is
    // unmapped when this function returns.
    #[allow(unsafe_code)]
    let data = unsafe { Mmap::map(&file) }.map_err(io)?;
    let object = object::File::parse(&*data).map_err(|_| TableError::Format {
        path: path.to_owned(),
    })?;
    match object.build_id() {
        Ok(Some(id)) => Ok(id.to_vec()),
        _ => Err(TableError::NoBuildId {
            path: path.to_owned(),
        }),
    }
}

/// What [`write`] wrote.
#[derive(Debug)]
pub struct Written {
    pub segments: usize,
    pub scopes: usize,
    pub strings: usize,
    pub bytes: usize,
}

/// Builds the table of the executable at `executable` from its debug info and writes it to
/// `output` (through a temporary file renamed into place, so a reader never sees half of it).
pub fn write(executable: &Path, output: &Path) -> Result<Written, TableError> {
    let build_id = build_id(executable)?;
    let info =
        DebugInfo::map(&executable.to_string_lossy()).map_err(|error| TableError::DebugInfo {
            path: executable.to_owned(),
            message: error.to_string(),
        })?;
    let mut builder = Builder::default();
    info.every_unit_code(|code| builder.add(code))
        .map_err(|error| TableError::DebugInfo {
            path: executable.to_owned(),
            message: error.to_string(),
        })?;
    builder.add_symbols(&info.text_symbols());
    let bytes = builder.encode(&build_id)?;
    let temporary = output.with_extension("symbols.partial");
    let io = |source| TableError::Io {
        path: output.to_owned(),
        source,
    };
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, output).map_err(io)?;
    Ok(Written {
        segments: builder.segments.len(),
        scopes: builder.scopes.len(),
        strings: builder.strings.len(),
        bytes: bytes.len(),
    })
}

/// `leakfinder symbols`: writes the table and says what it wrote, or why it could not.
pub fn run(args: &crate::config::SymbolsArgs) -> std::process::ExitCode {
    let executable = match &args.executable {
        Some(path) => path.clone(),
        None => match std::env::current_exe() {
            Ok(path) => path,
            Err(error) => {
                eprintln!("leakfinder symbols: cannot find this executable: {error}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| path_beside(&executable));
    let started = std::time::Instant::now();
    match write(&executable, &output) {
        Ok(written) => {
            println!(
                "wrote {} ({:.1} MiB: {} address runs, {} scopes, {} strings) in {:.1} s",
                output.display(),
                written.bytes as f64 / (1024.0 * 1024.0),
                written.segments,
                written.scopes,
                written.strings,
                started.elapsed().as_secs_f64()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("leakfinder symbols: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Units' code gathered into one table: strings stored once, scopes renumbered.
#[derive(Default)]
struct Builder {
    /// Start, end, scope, file, line.
    segments: Vec<(u64, u64, u32, u32, u32)>,
    /// Name, parent, call file, call line.
    scopes: Vec<[u32; 4]>,
    strings: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Builder {
    fn string(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(text.to_owned());
        self.ids.insert(text.to_owned(), id);
        id
    }

    fn add(&mut self, code: super::dwarf::UnitCode) {
        let files: Vec<u32> = code.files.iter().map(|file| self.string(file)).collect();
        let file = |index: Option<u32>| {
            index
                .and_then(|index| files.get(index as usize).copied())
                .unwrap_or(NONE)
        };
        let base = self.scopes.len() as u32;
        for scope in &code.scopes {
            let name = self.string(&scope.name);
            self.scopes.push([
                name,
                scope.parent.map_or(NONE, |parent| base + parent),
                file(scope.call_file),
                scope.call_line,
            ]);
        }
        self.segments.extend(code.segments.iter().map(|segment| {
            (
                segment.start,
                segment.end,
                base + segment.scope,
                file(segment.file),
                segment.line,
            )
        }));
    }

    /// Code no unit describes (built without debug info), by its `.symtab` name alone.
    fn add_symbols(&mut self, symbols: &[super::dwarf::TextSymbol]) {
        self.segments.sort_unstable_by_key(|&(start, ..)| start);
        let mut uncovered = Vec::new();
        for (start, end, name) in symbols {
            let first = self.segments.partition_point(|&(_, to, ..)| to <= *start);
            let mut at = *start;
            for &(from, to, ..) in self.segments[first..].iter().take_while(|s| s.0 < *end) {
                if from > at {
                    uncovered.push((at, from, name));
                }
                at = at.max(to);
            }
            if at < *end {
                uncovered.push((at, *end, name));
            }
        }
        for (start, end, name) in uncovered {
            let name = self.string(name);
            self.scopes.push([name, NONE, NONE, 0]);
            let scope = (self.scopes.len() - 1) as u32;
            self.segments.push((start, end, scope, NONE, 0));
        }
    }

    /// The file's bytes. Segments are sorted; where one ends before the next starts (or two
    /// overlap: the earlier wins), a NONE segment marks the gap.
    fn encode(&mut self, build_id: &[u8]) -> Result<Vec<u8>, TableError> {
        self.segments.sort_unstable_by_key(|&(start, ..)| start);
        let base = self.segments.first().map_or(0, |&(start, ..)| start);
        let mut runs: Vec<[u32; 4]> = Vec::with_capacity(self.segments.len() + 1);
        let mut covered = base;
        for &(start, end, scope, file, line) in &self.segments {
            let start = start.max(covered);
            if start >= end {
                continue;
            }
            let offset = |address: u64| {
                u32::try_from(address - base).map_err(|_| TableError::TooLarge("the code"))
            };
            if start > covered {
                runs.push([offset(covered)?, NONE, NONE, 0]);
            }
            runs.push([offset(start)?, scope, file, line]);
            covered = end;
        }
        runs.push([
            u32::try_from(covered - base).map_err(|_| TableError::TooLarge("the code"))?,
            NONE,
            NONE,
            0,
        ]);
        let count = |n: usize, what| u32::try_from(n).map_err(|_| TableError::TooLarge(what));
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        for n in [
            count(runs.len(), "segments")?,
            count(self.scopes.len(), "scopes")?,
            count(self.strings.len(), "strings")?,
            count(build_id.len(), "the build ID")?,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&base.to_le_bytes());
        out.extend_from_slice(build_id);
        out.resize(out.len().next_multiple_of(8), 0);
        for field in runs.iter().flatten() {
            out.extend_from_slice(&field.to_le_bytes());
        }
        for block in runs.chunks(BLOCK) {
            out.extend_from_slice(&block[0][0].to_le_bytes());
        }
        for field in self.scopes.iter().flatten() {
            out.extend_from_slice(&field.to_le_bytes());
        }
        let mut offset = 0u32;
        for text in std::iter::once("").chain(self.strings.iter().map(String::as_str)) {
            offset = offset
                .checked_add(text.len() as u32)
                .ok_or(TableError::TooLarge("the strings"))?;
            out.extend_from_slice(&offset.to_le_bytes());
        }
        for text in &self.strings {
            out.extend_from_slice(text.as_bytes());
        }
        Ok(out)
    }
}

/// A table mapped read-only; lookups read only the pages they need.
pub struct Table {
    data: Mmap,
    base: u64,
    /// Every [`BLOCK`]th segment's start, copied out of the file (11 KiB for this binary).
    directory: Box<[u32]>,
    segments: Range<usize>,
    scopes: Range<usize>,
    offsets: Range<usize>,
    strings: usize,
}

impl Table {
    /// Maps the table at `path` if it was built for the executable whose build ID is `build_id`.
    pub fn open(path: &Path, build_id: &[u8]) -> Result<Self, TableError> {
        let file = std::fs::File::open(path).map_err(|source| TableError::Io {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: a read-only mapping of a file written once, by `write`, through a rename; every
        // read through it is bounds-checked, so a file changed underneath gives wrong names or
        // misses, never undefined reads.
        #[allow(unsafe_code)]
        let data = unsafe { Mmap::map(&file) }.map_err(|source| TableError::Io {
            path: path.to_owned(),
            source,
        })?;
        let format = || TableError::Format {
            path: path.to_owned(),
        };
        if data.len() < HEADER || &data[..8] != MAGIC {
            return Err(format());
        }
        let field = |at: usize| read_u32(&data, at).map(|n| n as usize).ok_or_else(format);
        let (segments, scopes, strings, id_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let base = u64::from_le_bytes(data[24..32].try_into().map_err(|_| format())?);
        let id = data.get(HEADER..HEADER + id_len).ok_or_else(format)?;
        if id != build_id {
            return Err(TableError::Stale {
                path: path.to_owned(),
            });
        }
        let segments_at = (HEADER + id_len).next_multiple_of(8);
        let directory_at = segments_at + segments * 16;
        let scopes_at = directory_at + segments.div_ceil(BLOCK) * 4;
        let offsets_at = scopes_at + scopes * 16;
        let strings_at = offsets_at + (strings + 1) * 4;
        let string_bytes = read_u32(&data, strings_at - 4).ok_or_else(format)? as usize;
        if data.len() != strings_at + string_bytes || segments == 0 {
            return Err(format());
        }
        let directory = (directory_at..scopes_at)
            .step_by(4)
            .map(|at| read_u32(&data, at).ok_or_else(format))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            base,
            directory,
            segments: segments_at..directory_at,
            scopes: scopes_at..offsets_at,
            offsets: offsets_at..strings_at,
            strings: strings_at,
            data,
        })
    }

    /// The executable's own table, beside it, if there is one built for this very build.
    pub fn for_this_executable() -> Result<Self, TableError> {
        let executable = std::env::current_exe().map_err(|source| TableError::Io {
            path: "/proc/self/exe".into(),
            source,
        })?;
        let id = build_id(Path::new("/proc/self/exe"))?;
        Self::open(&path_beside(&executable), &id)
    }

    /// Drops the pages lookups read from this process (they stay in the page cache).
    pub fn forget_pages(&self) {
        super::forget_pages(&self.data);
    }

    /// Bytes of the mapped file.
    pub fn file_bytes(&self) -> usize {
        self.data.len()
    }

    fn record(&self, table: &Range<usize>, index: u32) -> Option<[u32; 4]> {
        let at = table.start + (index as usize).checked_mul(16)?;
        if at + 16 > table.end {
            return None;
        }
        let field = |k: usize| read_u32(&self.data, at + 4 * k);
        Some([field(0)?, field(1)?, field(2)?, field(3)?])
    }

    fn string(&self, id: u32) -> String {
        if id == NONE {
            return String::new();
        }
        let offset = |k: usize| read_u32(&self.data, self.offsets.start + 4 * k);
        let bytes = offset(id as usize)
            .zip(offset(id as usize + 1))
            .filter(|_| self.offsets.start + 4 * (id as usize + 1) < self.offsets.end)
            .and_then(|(from, to)| {
                self.data
                    .get(self.strings + from as usize..self.strings + to as usize)
            })
            .unwrap_or_default();
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// The frames of a file address, innermost first, and the addresses around it with the same
    /// frames; `None` where the table holds no code.
    pub fn lookup(&self, address: u64) -> Option<(Vec<RawFrame>, Range<u64>)> {
        let offset = u32::try_from(address.checked_sub(self.base)?).ok()?;
        let count = self.segments.len() / 16;
        // The last segment starting at or before the address: its block from the directory, then
        // within the block.
        let block = self
            .directory
            .partition_point(|&start| start <= offset)
            .checked_sub(1)?;
        let (mut low, mut high) = (
            (block * BLOCK) as u32,
            ((block + 1) * BLOCK).min(count) as u32,
        );
        while low < high {
            let middle = low + (high - low) / 2;
            if self.record(&self.segments, middle)?[0] <= offset {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let [start, scope, file, line] = self.record(&self.segments, low.checked_sub(1)?)?;
        let end = self
            .record(&self.segments, low)
            .map_or(start + 1, |next| next[0]);
        if scope == NONE {
            return None;
        }
        let mut frames = Vec::new();
        let (mut scope, mut file, mut line) = (scope, file, line);
        while frames.len() < MAX_DEPTH {
            let [name, parent, call_file, call_line] = self.record(&self.scopes, scope)?;
            frames.push(RawFrame {
                function: self.string(name),
                file: self.string(file),
                line,
            });
            if parent == NONE {
                break;
            }
            (scope, file, line) = (parent, call_file, call_line);
        }
        let span = self.base + u64::from(start)..self.base + u64::from(end);
        Some((frames, span))
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_the_frames_the_debug_info_gives_for_addresses_all_over_the_binary() {
        let executable = std::env::current_exe().unwrap();
        let directory = tempfile::tempdir().unwrap();
        let output = directory.path().join("test.symbols");
        let written = write(&executable, &output).expect("the table is written");
        assert!(written.segments > 10_000, "{written:?}");
        let id = build_id(&executable).unwrap();
        let table = Table::open(&output, &id).expect("the table opens for its own build");
        let info = DebugInfo::executable().expect("this test binary has debug info");
        // Addresses inside functions all over the binary: a few per text symbol.
        let object_data = std::fs::read(&executable).unwrap();
        let object = object::File::parse(&*object_data).unwrap();
        use object::{Object, ObjectSymbol};
        let mut probes: Vec<u64> = object
            .symbols()
            .filter(|symbol| symbol.kind() == object::SymbolKind::Text && symbol.size() > 4)
            .step_by(7)
            .flat_map(|symbol| {
                let (start, size) = (symbol.address(), symbol.size());
                [start, start + size / 3, start + size / 2, start + size - 1]
            })
            .collect();
        probes.sort_unstable();
        probes.dedup();
        let resolved = info.resolve(&probes);
        let (mut found, mut agree) = (0, 0);
        for probe in &probes {
            let Some((frames, span)) = table.lookup(*probe) else {
                eprintln!("{probe:#x}: not in the table");
                continue;
            };
            found += 1;
            assert!(span.contains(probe), "{probe:#x} outside {span:x?}");
            if frames == resolved[probe].frames {
                agree += 1;
            } else if found - agree < 20 {
                eprintln!(
                    "{probe:#x}: table {frames:?}\n  debug info {:?}",
                    resolved[probe].frames
                );
            }
        }
        // Where the two differ (about 0.5%), the table agrees with binutils' addr2line: two
        // functions folded into one address, or a C function's `.cold` part.
        assert_eq!(found, probes.len(), "every address is in the table");
        assert!(
            agree * 100 >= found * 99,
            "{agree} of {found} addresses give the debug info's frames"
        );
        // Every address of a span gives the same frames.
        for probe in probes.iter().step_by(50) {
            if let Some((frames, span)) = table.lookup(*probe) {
                for other in [span.start, span.end - 1] {
                    assert_eq!(table.lookup(other).unwrap().0, frames);
                }
            }
        }
    }

    #[test]
    fn a_table_of_another_build_or_another_format_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("x.symbols");
        let mut builder = Builder::default();
        builder.segments.push((0x1000, 0x1010, 0, NONE, 7));
        let name = builder.string("f");
        builder.scopes.push([name, NONE, NONE, 0]);
        std::fs::write(&path, builder.encode(b"build-a").unwrap()).unwrap();
        let table = Table::open(&path, b"build-a").unwrap();
        let (frames, span) = table.lookup(0x1004).unwrap();
        assert_eq!(frames[0].function, "f");
        assert_eq!(frames[0].line, 7);
        assert_eq!(span, 0x1000..0x1010);
        assert!(table.lookup(0x1010).is_none());
        assert!(table.lookup(0xfff).is_none());
        assert!(matches!(
            Table::open(&path, b"build-b"),
            Err(TableError::Stale { .. })
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Table::open(&path, b"build-a"),
            Err(TableError::Format { .. })
        ));
        std::fs::write(&path, b"not a table").unwrap();
        assert!(matches!(
            Table::open(&path, b"build-a"),
            Err(TableError::Format { .. })
        ));
    }
}
