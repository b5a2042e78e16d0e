//! A prebuilt symbol table for an executable, written next to it after the build
//! (`leakfinder symbols`), as Go's linker writes `pclntab` into every Go binary: every code
//! address of the executable's functions, in runs that share frames, each with its innermost
//! function or inlined call, file and line, and the chain of calls it was inlined into.
//!
//! Symbolising a new address through it is a binary search over a few positioned reads of the
//! file: no debug info is read, so the first profile of each line of code costs microseconds instead of a unit's DIEs
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
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use memmap2::Mmap;

use super::dwarf::{DebugInfo, RawFrame, Resolved};

const MAGIC: &[u8; 8] = b"LFSYMTB1";
const HEADER: usize = 32;
const NONE: u32 = u32::MAX;
/// Segments per block of the directory (one 4 KiB page of them).
const BLOCK: usize = 256;
/// The deepest chain of inlined calls followed (a corrupt file's cycle ends here).
const MAX_DEPTH: usize = 256;
/// The most bytes the memo of scopes and strings holds; past it, it starts over.
const MAX_MEMO_BYTES: usize = 1 << 20;

/// Why a table cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A file (the executable, or the table being read or written) could not be opened, read or
    /// written.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not a table of this format (wrong magic, truncated, inconsistent sizes).
    #[error("{path} is not a symbol table of this format")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The executable is not an ELF file.
    #[error("{path} is not an ELF executable")]
    NotElf {
        /// The file.
        path: PathBuf,
    },
    /// The executable's debug info describes no code (built without debug info, or stripped):
    /// a table of it would name nothing the service cannot name without it.
    #[error(
        "{path} has no debug info to build a table from: build it with `debug = \"limited\"` (or more) and without `strip`"
    )]
    NoDebugInfo {
        /// The executable.
        path: PathBuf,
    },
    /// The table carries another build ID than the executable's: it was written for an earlier
    /// build.
    #[error("{path} was built for another build of the executable")]
    Stale {
        /// The table.
        path: PathBuf,
    },
    /// The executable's debug info could not be mapped or read while writing a table.
    #[error("cannot read debug info of {path}: {message}")]
    DebugInfo {
        /// The executable.
        path: PathBuf,
        /// What the debug-info reader said.
        message: String,
    },
    /// The executable has no GNU build ID, so no table can be matched to it.
    #[error("{path} has no build ID to match a table with")]
    NoBuildId {
        /// The executable.
        path: PathBuf,
    },
    /// A count or an offset (what is named) exceeds the format's 32-bit fields.
    #[error("{0} does not fit this format's 32-bit fields")]
    TooLarge(&'static str),
}

/// Where the table of the executable at `executable` lives: beside it, `.symbols` appended.
pub fn path_beside(executable: &Path) -> PathBuf {
    let mut path = executable.as_os_str().to_owned();
    path.push(".symbols");
    PathBuf::from(path)
}

/// The GNU build ID of the executable at `path`: from its notes, found through the program
/// headers at the start of the file (reading the whole ELF would map tens of megabytes of a
/// binary with debug info), else through its sections.
pub fn build_id(path: &Path) -> Result<Vec<u8>, TableError> {
    let io = |source| TableError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = Vec::with_capacity(HEAD_BYTES);
    std::io::Read::by_ref(&mut file)
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    if let Some(id) = build_id_in_head(&head) {
        return Ok(id);
    }
    // SAFETY: a read-only mapping of an executable that is not modified while it is read; it is
    // unmapped when this function returns.
    #[allow(unsafe_code)]
    let data = unsafe { Mmap::map(&file) }.map_err(io)?;
    let object = object::File::parse(&*data).map_err(|_| TableError::NotElf {
        path: path.to_owned(),
    })?;
    match object::Object::build_id(&object) {
        Ok(Some(id)) => Ok(id.to_vec()),
        _ => Err(TableError::NoBuildId {
            path: path.to_owned(),
        }),
    }
}

/// How much of an executable's start [`build_id`] reads for its program headers and notes.
const HEAD_BYTES: usize = 64 << 10;

/// The build ID in the notes of a 64-bit ELF's start, if they lie within it.
fn build_id_in_head(head: &[u8]) -> Option<Vec<u8>> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(head).ok()?;
    let endian = header.endian().ok()?;
    for segment in header.program_headers(endian, head).ok()? {
        let Ok(Some(mut notes)) = segment.notes(endian, head) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"GNU" && note.n_type(endian) == object::elf::NT_GNU_BUILD_ID {
                return Some(note.desc().to_vec());
            }
        }
    }
    None
}

/// What [`write()`] wrote.
#[derive(Debug)]
pub struct Written {
    /// Runs of addresses sharing their frames, as gathered (before gaps are marked).
    pub segments: usize,
    /// Functions and inlined calls (each chain of inlining once).
    pub scopes: usize,
    /// Distinct strings: names and file paths.
    pub strings: usize,
    /// The size of the file written.
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
    if builder.segments.is_empty() {
        return Err(TableError::NoDebugInfo {
            path: executable.to_owned(),
        });
    }
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

/// An open table. Lookups read the few bytes they need with positioned reads: a mapping would
/// fault in 64 KiB around every byte read (the kernel's fault-around), and a first profile's
/// thousands of new addresses would map much of the file at once.
///
/// The scopes and strings read are kept (a memo, at most 1 MiB): the addresses a service's
/// profiles meet share a few hundred functions and files, so a new address costs one read (its
/// block of segments) once its functions have been seen, where each frame cost five.
pub struct Table {
    file: std::fs::File,
    memo: Mutex<Memo>,
    /// Positioned reads made, counted for the tests only.
    #[cfg(test)]
    reads: std::sync::atomic::AtomicU64,
    base: u64,
    /// Every [`BLOCK`]th segment's start, read once (11 KiB for this binary).
    directory: Box<[u32]>,
    /// Byte ranges in the file.
    segments: Range<u64>,
    scopes: Range<u64>,
    offsets: Range<u64>,
    strings: Range<u64>,
}

impl Table {
    /// Opens the table at `path` if it was built for the executable whose build ID is `build_id`.
    pub fn open(path: &Path, build_id: &[u8]) -> Result<Self, TableError> {
        let io = |source| TableError::Io {
            path: path.to_owned(),
            source,
        };
        let format = || TableError::Format {
            path: path.to_owned(),
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        let read = |at: u64, bytes: usize| -> Result<Vec<u8>, TableError> {
            let mut buffer = vec![0; bytes];
            match file.read_exact_at(&mut buffer, at) {
                Ok(()) => Ok(buffer),
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Err(format()),
                Err(error) => Err(io(error)),
            }
        };
        let header = read(0, HEADER)?;
        if &header[..8] != MAGIC {
            return Err(format());
        }
        let field = |at: usize| read_u32(&header, at).map(u64::from).ok_or_else(format);
        let (segments, scopes, strings, id_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let base = u64::from_le_bytes(header[24..32].try_into().map_err(|_| format())?);
        // Every size is checked against the file's before anything of that size is read: a
        // corrupt header's counts (up to 2^32 each) must not become allocations.
        let segments_at = (HEADER as u64 + id_len).next_multiple_of(8);
        let directory_at = segments_at + segments * 16;
        let blocks = segments.div_ceil(BLOCK as u64);
        let scopes_at = directory_at + blocks * 4;
        let offsets_at = scopes_at + scopes * 16;
        let strings_at = offsets_at + (strings + 1) * 4;
        if strings_at > length {
            return Err(format());
        }
        if read(HEADER as u64, id_len as usize)? != build_id {
            return Err(TableError::Stale {
                path: path.to_owned(),
            });
        }
        let string_bytes = read_u32(&read(strings_at - 4, 4)?, 0).ok_or_else(format)?;
        if length != strings_at + u64::from(string_bytes) || segments == 0 {
            return Err(format());
        }
        let directory = read(directory_at, blocks as usize * 4)?
            .chunks_exact(4)
            .map(|start| u32::from_le_bytes([start[0], start[1], start[2], start[3]]))
            .collect();
        Ok(Self {
            file,
            memo: Mutex::default(),
            #[cfg(test)]
            reads: Default::default(),
            base,
            directory,
            segments: segments_at..directory_at,
            scopes: scopes_at..offsets_at,
            offsets: offsets_at..strings_at,
            strings: strings_at..length,
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

    /// Bytes of the file.
    pub fn file_bytes(&self) -> u64 {
        self.strings.end
    }

    /// `bytes` bytes at `at`, if they lie within `within`.
    fn read(&self, within: &Range<u64>, at: u64, buffer: &mut [u8]) -> Option<()> {
        let end = at.checked_add(buffer.len() as u64)?;
        if at < within.start || end > within.end {
            return None;
        }
        #[cfg(test)]
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.file.read_exact_at(buffer, at).ok()
    }

    /// Bytes the memo of scopes and strings holds now (at most 1 MiB).
    pub fn memo_bytes(&self) -> usize {
        self.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }

    /// Scope `id`'s record, from the memo or read (and kept).
    fn scope(&self, memo: &mut Memo, id: u32) -> Option<[u32; 4]> {
        if let Some(record) = memo.scopes.get(&id) {
            return Some(*record);
        }
        let record = self.record(&self.scopes, u64::from(id))?;
        memo.make_room(Memo::SCOPE_BYTES);
        memo.scopes.insert(id, record);
        Some(record)
    }

    /// String `id`, from the memo or read (and kept).
    fn memo_string(&self, memo: &mut Memo, id: u32) -> String {
        if let Some(text) = memo.strings.get(&id) {
            return text.to_string();
        }
        let text = self.string(id);
        memo.make_room(text.len() + Memo::STRING_BYTES);
        memo.strings.insert(id, text.as_str().into());
        text
    }

    /// Record `index` of a table of 16-byte records.
    fn record(&self, table: &Range<u64>, index: u64) -> Option<[u32; 4]> {
        let mut bytes = [0u8; 16];
        self.read(table, table.start + index.checked_mul(16)?, &mut bytes)?;
        Some(std::array::from_fn(|k| {
            u32::from_le_bytes([
                bytes[4 * k],
                bytes[4 * k + 1],
                bytes[4 * k + 2],
                bytes[4 * k + 3],
            ])
        }))
    }

    fn string(&self, id: u32) -> String {
        if id == NONE {
            return String::new();
        }
        let mut bounds = [0u8; 8];
        let at = self.offsets.start + u64::from(id) * 4;
        let Some(()) = self.read(&self.offsets, at, &mut bounds) else {
            return String::new();
        };
        let from = u64::from(u32::from_le_bytes([
            bounds[0], bounds[1], bounds[2], bounds[3],
        ]));
        let to = u64::from(u32::from_le_bytes([
            bounds[4], bounds[5], bounds[6], bounds[7],
        ]));
        // Within the strings before anything is allocated: a corrupt offset claims up to 4 GiB.
        let at = self.strings.start + from;
        if to < from || at + (to - from) > self.strings.end {
            return String::new();
        }
        let mut text = vec![0; (to - from) as usize];
        match self.read(&self.strings, at, &mut text) {
            Some(()) => String::from_utf8(text)
                .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()),
            None => String::new(),
        }
    }

    /// [`Self::lookup`] for many addresses, in address order.
    pub fn lookup_all(&self, mut addresses: Vec<u64>) -> HashMap<u64, Resolved> {
        addresses.sort_unstable();
        addresses.dedup();
        addresses
            .into_iter()
            .filter_map(|address| {
                let (frames, span) = self.lookup(address)?;
                Some((address, Resolved { frames, span }))
            })
            .collect()
    }

    /// The frames of a file address, innermost first, and the addresses around it with the same
    /// frames; `None` where the table holds no code.
    pub fn lookup(&self, address: u64) -> Option<(Vec<RawFrame>, Range<u64>)> {
        let offset = u32::try_from(address.checked_sub(self.base)?).ok()?;
        let count = (self.segments.end - self.segments.start) / 16;
        // The last segment starting at or before the address: its block from the directory, then
        // within the block, read whole (4 KiB, and the next block's first segment for the end).
        let block = self
            .directory
            .partition_point(|&start| start <= offset)
            .checked_sub(1)? as u64;
        let first = block * BLOCK as u64;
        let records = (count - first).min(BLOCK as u64 + 1) as usize;
        let mut bytes = [0u8; (BLOCK + 1) * 16];
        let bytes = &mut bytes[..records * 16];
        self.read(&self.segments, self.segments.start + first * 16, bytes)?;
        let field = |index: usize, k: usize| read_u32(bytes, index * 16 + 4 * k);
        let (mut low, mut high) = (0, records.min(BLOCK));
        while low < high {
            let middle = low + (high - low) / 2;
            if field(middle, 0)? <= offset {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let index = low.checked_sub(1)?;
        let [start, scope, file, line] = [0, 1, 2, 3].map(|k| field(index, k).unwrap_or(NONE));
        let end = if index + 1 < records {
            field(index + 1, 0)?
        } else {
            start.checked_add(1)?
        };
        // A corrupt table's segments may be out of order, or its last one hold code: a span
        // that would not hold the address (or ends past the address space) is no answer.
        let span = self.base + u64::from(start)..self.base.checked_add(u64::from(end))?;
        if scope == NONE || !span.contains(&address) {
            return None;
        }
        let mut frames = Vec::new();
        let (mut scope, mut file, mut line) = (scope, file, line);
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        while frames.len() < MAX_DEPTH {
            let [name, parent, call_file, call_line] = self.scope(&mut memo, scope)?;
            frames.push(RawFrame {
                function: self.memo_string(&mut memo, name),
                file: self.memo_string(&mut memo, file),
                line,
            });
            if parent == NONE {
                break;
            }
            (scope, file, line) = (parent, call_file, call_line);
        }
        Some((frames, span))
    }
}

/// The scope records and strings a table has read, by id: what the frames of nearby addresses
/// share. Bounded by [`MAX_MEMO_BYTES`] (approximately: entries and their share of the maps).
#[derive(Default)]
struct Memo {
    scopes: HashMap<u32, [u32; 4]>,
    strings: HashMap<u32, Box<str>>,
    bytes: usize,
}

impl Memo {
    /// A scope entry: key, record and the map's overhead.
    const SCOPE_BYTES: usize = 4 + 16 + 8;
    /// A string entry, without its text: key, box and the map's overhead.
    const STRING_BYTES: usize = 4 + 16 + 8;

    /// Counts `bytes` more, first starting over if they would pass the bound.
    fn make_room(&mut self, bytes: usize) {
        if self.bytes + bytes > MAX_MEMO_BYTES {
            *self = Self::default();
        }
        self.bytes += bytes;
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
            .step_by(2)
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

    #[test]
    fn a_new_address_in_functions_already_seen_costs_one_read() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("x.symbols");
        let mut builder = Builder::default();
        let (outer, inner, file) = (
            builder.string("outer"),
            builder.string("inner"),
            builder.string("src/a.rs"),
        );
        builder.scopes.push([outer, NONE, NONE, 0]);
        builder.scopes.push([inner, 0, file, 3]);
        builder.segments.push((0x1000, 0x1010, 1, file, 7));
        builder.segments.push((0x1010, 0x1020, 1, file, 8));
        std::fs::write(&path, builder.encode(b"build").unwrap()).unwrap();
        let table = Table::open(&path, b"build").unwrap();
        let reads = || table.reads.load(std::sync::atomic::Ordering::Relaxed);

        let before = reads();
        let (first, _) = table.lookup(0x1004).unwrap();
        let first_reads = reads() - before;
        let before = reads();
        let (second, _) = table.lookup(0x1014).unwrap();
        assert_eq!(reads() - before, 1, "only the block of segments is read");
        assert!(
            first_reads > 5,
            "the first lookup reads its scopes and strings"
        );
        let names = |frames: &[RawFrame]| {
            frames
                .iter()
                .map(|frame| (frame.function.clone(), frame.file.clone(), frame.line))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&first),
            [
                ("inner".into(), "src/a.rs".into(), 7),
                ("outer".into(), "src/a.rs".into(), 3)
            ]
        );
        assert_eq!(names(&second)[0], ("inner".into(), "src/a.rs".into(), 8));
        assert!(table.memo_bytes() > 0);
    }

    #[test]
    fn the_memo_starts_over_at_its_bound() {
        let mut memo = Memo::default();
        memo.scopes.insert(1, [0; 4]);
        memo.make_room(MAX_MEMO_BYTES - 10);
        assert_eq!(memo.scopes.len(), 1);
        memo.make_room(20);
        assert!(
            memo.scopes.is_empty(),
            "past the bound, what was kept is dropped"
        );
        assert_eq!(memo.bytes, 20);
        for _ in 0..100_000 {
            memo.make_room(Memo::STRING_BYTES + 40);
            assert!(memo.bytes <= MAX_MEMO_BYTES);
        }
    }

    /// The largest single allocation made on this thread since [`largest::reset`]: what a
    /// corrupt table's header could make the reader allocate.
    mod largest {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static LARGEST: Cell<usize> = const { Cell::new(0) };
        }

        pub fn reset() {
            LARGEST.with(|largest| largest.set(0));
        }

        pub fn get() -> usize {
            LARGEST.with(Cell::get)
        }

        fn note(size: usize) {
            // `try_with`: a thread being torn down still allocates.
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }

        pub struct Tracking;

        // SAFETY: every call is forwarded unchanged to the system allocator; noting the size
        // touches a const-initialised thread-local only, which never allocates.
        #[allow(unsafe_code)]
        unsafe impl GlobalAlloc for Tracking {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
                unsafe { System.alloc(layout) }
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: as above.
                unsafe { System.alloc_zeroed(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` came from System with `layout`: every allocation goes through it.
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size);
                // SAFETY: as for dealloc; `new_size` is the caller's.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        /// The test binary's allocator (its tests only measure their own thread).
        #[global_allocator]
        static ALLOCATOR: Tracking = Tracking;
    }

    /// A small valid table: `f` at 0x1000..0x1010 and `g` at 0x1020..0x1030 (line 7), a gap
    /// between, built for `build-a`.
    fn small_table() -> Vec<u8> {
        let mut builder = Builder::default();
        let (f, g) = (builder.string("f"), builder.string("g"));
        builder.scopes.push([f, NONE, NONE, 0]);
        builder.scopes.push([g, NONE, NONE, 0]);
        builder.segments.push((0x1000, 0x1010, 0, NONE, 7));
        builder.segments.push((0x1020, 0x1030, 1, NONE, 7));
        builder.encode(b"build-a").unwrap()
    }

    /// Where the segment records of [`small_table`] start (after the build ID, padded to 8).
    const SMALL_SEGMENTS_AT: usize = 40;

    fn patch(bytes: &mut [u8], at: usize, value: &[u8]) {
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    #[test]
    fn a_corrupt_table_never_makes_the_reader_allocate_what_its_header_claims() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("x.symbols");
        // Found by the fuzzer (fuzz/, symbol_table): a build ID of 0x7e7e7e7e bytes.
        let mut crash = b"LFSYMTB1".to_vec();
        crash.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        crash.extend_from_slice(&[0x7e; 14]);
        crash.extend_from_slice(&[0xd3, 0x30, 0x0a]);
        std::fs::write(&path, &crash).unwrap();
        largest::reset();
        assert!(matches!(
            Table::open(&path, &[0x7e; 4]),
            Err(TableError::Format { .. })
        ));
        assert!(largest::get() < 1 << 20, "{} bytes", largest::get());

        // A valid table whose string `f` claims to end 3 GiB into the strings.
        let mut bytes = small_table();
        let offsets_at = bytes.len() - 4 * 3 - 2;
        patch(&mut bytes, offsets_at + 4, &(3u32 << 30).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let table = Table::open(&path, b"build-a").unwrap();
        largest::reset();
        let (frames, _) = table.lookup(0x1004).unwrap();
        assert_eq!(
            frames[0].function, "",
            "a string past the end reads as unknown"
        );
        assert!(largest::get() < 1 << 20, "{} bytes", largest::get());
    }

    #[test]
    fn a_lookup_in_a_corrupt_table_gives_its_address_in_the_span_or_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("x.symbols");
        let record = |index: usize| SMALL_SEGMENTS_AT + 16 * index;
        // The last segment (the end of the code) made code: nothing follows to end its span.
        let mut bytes = small_table();
        patch(&mut bytes, record(3) + 4, &1u32.to_le_bytes());
        // The gap after `f` moved past `g`: segments out of order.
        patch(&mut bytes, record(1), &0x40u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let table = Table::open(&path, b"build-a").unwrap();
        for address in (0x1000..0x1050).chain([0x1035, 0x1100]) {
            if let Some((_, span)) = table.lookup(address) {
                assert!(span.contains(&address), "{address:#x} outside {span:x?}");
            }
        }
        // The code at the top of the address space: a span's end past u64::MAX.
        let mut bytes = small_table();
        patch(&mut bytes, 24, &(u64::MAX - 0x20).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let table = Table::open(&path, b"build-a").unwrap();
        let top = u64::MAX - 0x20 + 0x20;
        if let Some((frames, span)) = table.lookup(top) {
            assert_eq!(frames[0].function, "g");
            assert!(span.contains(&top), "{top:#x} outside {span:x?}");
        }
        assert_eq!(table.lookup(u64::MAX - 0x20).unwrap().0[0].function, "f");
    }
}
