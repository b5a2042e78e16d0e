//! Function names for frames outside the executable: libc, libm, the loader.
//!
//! Such a frame is named from its object's own symbols, the fullest table first: the object's
//! `.symtab`, or the one in its detached debug file found by build ID
//! (`/usr/lib/debug/.build-id/ab/cdef….debug`, Debian's `libc6-dbg`), or else its dynamic symbols
//! (`.dynsym`, exported names only). Debian strips `.symtab` from libc, so without the debug file
//! the hottest libc code (`__memset_avx2_unaligned_erms` under a leak's `vec![0; n]`, an IFUNC
//! implementation nobody exports) would stay an offset. Each object's table is read once, on its
//! first frame, and kept compact: function ranges sorted by address and one string of names.

use std::collections::HashMap;
use std::ffi::CStr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use object::{Object, ObjectSymbol, SymbolKind};

/// Where Debian (and most distributions) install detached debug files, by build ID.
const DEBUG_ROOT: &str = "/usr/lib/debug/.build-id";

/// A frame in a shared object: the object's path, its name for the function (if it has one),
/// and the runtime addresses the function covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFrame {
    /// The object's path as the loader has it, `linux-vdso.so.1` for the vDSO.
    pub object: String,
    /// The function's name, demangled; `libc.so.6+0x16e0ba` when no table names the address.
    pub function: String,
    /// Runtime addresses with this same frame: the function, or the address alone.
    pub span: Range<u64>,
}

/// The function symbols of one object, by file address.
#[derive(Debug, Default)]
pub struct SymbolTable {
    /// `(start, end, name offset, name length)`, sorted by start.
    functions: Vec<(u64, u64, u32, u32)>,
    names: String,
    /// Which table the names came from, for logs and tests.
    pub source: TableSource,
}

/// Which of an object's tables named its functions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum TableSource {
    /// The object's own `.symtab`.
    Symtab,
    /// The `.symtab` of its detached debug file.
    DebugFile,
    /// Its exported symbols only.
    Dynsym,
    /// No symbols could be read.
    #[default]
    None,
}

impl SymbolTable {
    /// Reads the fullest function table there is for the object at `path`.
    pub fn read(path: &Path) -> Self {
        let Some(object) = Mapped::open(path) else {
            return Self::default();
        };
        let Ok(file) = object::File::parse(&*object.0) else {
            return Self::default();
        };
        if file.symbols().next().is_some() {
            return Self::from_symbols(file.symbols(), TableSource::Symtab);
        }
        if let Some(debug) = file
            .build_id()
            .ok()
            .flatten()
            .and_then(|id| Mapped::open(&debug_file_path(id)))
            && let Ok(debug_file) = object::File::parse(&*debug.0)
            && debug_file.symbols().next().is_some()
        {
            return Self::from_symbols(debug_file.symbols(), TableSource::DebugFile);
        }
        Self::from_symbols(file.dynamic_symbols(), TableSource::Dynsym)
    }

    fn from_symbols<'data>(
        symbols: impl Iterator<Item = impl ObjectSymbol<'data>>,
        source: TableSource,
    ) -> Self {
        let mut found: Vec<(u64, u64, bool, &str)> = symbols
            .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.size() > 0)
            .filter_map(|symbol| {
                // A symbol version (`clock_gettime@@GLIBC_2.17`) is not part of the name.
                let name = symbol.name().ok()?.split('@').next()?;
                if name.is_empty() {
                    return None;
                }
                let start = symbol.address();
                Some((start, start + symbol.size(), symbol.is_global(), name))
            })
            .collect();
        // Aliases share an address: the global name first, then the one with fewer leading
        // underscores (`memset` before `__memset`).
        found.sort_by_key(|&(start, _, global, name)| {
            let underscores = name.len() - name.trim_start_matches('_').len();
            (start, !global, underscores)
        });
        found.dedup_by_key(|&mut (start, ..)| start);
        let mut table = Self {
            functions: Vec::with_capacity(found.len()),
            names: String::new(),
            source,
        };
        for (start, end, _, name) in found {
            let name = super::dwarf::demangle(name);
            table
                .functions
                .push((start, end, table.names.len() as u32, name.len() as u32));
            table.names.push_str(&name);
        }
        table.functions.shrink_to_fit();
        table.names.shrink_to_fit();
        table
    }

    /// The function containing `file_address`, with its range.
    pub fn lookup(&self, file_address: u64) -> Option<(&str, Range<u64>)> {
        let after = self
            .functions
            .partition_point(|&(start, ..)| start <= file_address);
        let &(start, end, offset, len) = self.functions.get(after.checked_sub(1)?)?;
        (file_address < end).then(|| {
            let name = &self.names[offset as usize..(offset + len) as usize];
            (name, start..end)
        })
    }

    /// Bytes the table holds.
    pub fn bytes(&self) -> usize {
        self.functions.capacity() * size_of::<(u64, u64, u32, u32)>() + self.names.capacity()
    }
}

/// The detached debug file for a build ID, where `libc6-dbg` and its kind install it.
fn debug_file_path(build_id: &[u8]) -> PathBuf {
    let hex: String = build_id.iter().map(|byte| format!("{byte:02x}")).collect();
    let (first, rest) = hex.split_at(2.min(hex.len()));
    Path::new(DEBUG_ROOT)
        .join(first)
        .join(format!("{rest}.debug"))
}

/// An object file mapped for reading (the mapping goes when the table is built: it never
/// counts as resident memory for longer than that).
struct Mapped(memmap2::Mmap);

impl Mapped {
    #[allow(unsafe_code)]
    fn open(path: &Path) -> Option<Self> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: the file is only read through the mapping, which is dropped before this
        // function's caller returns; a library or debug file is not rewritten in place while
        // the process that loaded it runs (package managers replace files by renaming).
        unsafe { memmap2::Mmap::map(&file) }.ok().map(Self)
    }
}

/// The tables of the shared objects met so far, each read once.
#[derive(Default)]
pub struct SharedObjects {
    tables: Mutex<HashMap<String, Arc<SymbolTable>>>,
}

impl SharedObjects {
    /// The frame for a runtime address outside the executable, or `None` if no loaded object
    /// holds it.
    pub fn frame(&self, address: u64) -> Option<ObjectFrame> {
        let loaded = loaded_object(address)?;
        let file_address = address - loaded.base;
        let table = self.table(&loaded.path);
        let named = table
            .lookup(file_address)
            .map(|(name, range)| (name.to_owned(), range));
        let (function, span) = match (named, loaded.exported) {
            (Some((name, range)), _) => (name, range.start + loaded.base..range.end + loaded.base),
            (None, Some(exported)) => (super::dwarf::demangle(&exported), address..address + 1),
            (None, None) => (
                format!("{}+{file_address:#x}", short_object(&loaded.path)),
                address..address + 1,
            ),
        };
        Some(ObjectFrame {
            object: loaded.path,
            function,
            span,
        })
    }

    fn table(&self, path: &str) -> Arc<SymbolTable> {
        if let Some(table) = self
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
        {
            return Arc::clone(table);
        }
        // Read outside the lock; two readers racing both read, and one table is kept.
        let table = Arc::new(SymbolTable::read(Path::new(path)));
        tracing::debug!(path, source = ?table.source, functions = table.functions.len(), "shared object symbols read");
        Arc::clone(
            self.tables
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(path.to_owned())
                .or_insert(table),
        )
    }

    /// Bytes the tables hold.
    pub fn bytes(&self) -> usize {
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(path, table)| path.capacity() + table.bytes())
            .sum()
    }
}

/// What the loader knows of an address: its object, load base, and exported symbol if any.
struct LoadedObject {
    path: String,
    base: u64,
    exported: Option<String>,
}

#[allow(unsafe_code)]
fn loaded_object(address: u64) -> Option<LoadedObject> {
    // SAFETY: `Dl_info` is plain old data for which all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `dladdr` only reads its address argument (it is never dereferenced) and fills `info`.
    if unsafe { libc::dladdr(address as *const libc::c_void, &mut info) } == 0 {
        return None;
    }
    // SAFETY: on success, non-null `dli_sname`/`dli_fname` point to NUL-terminated strings owned
    // by the dynamic loader, valid while the object stays loaded; they are copied at once.
    let text = |ptr: *const libc::c_char| {
        (!ptr.is_null()).then(|| {
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        })
    };
    Some(LoadedObject {
        path: text(info.dli_fname).unwrap_or_default(),
        base: info.dli_fbase as u64,
        exported: text(info.dli_sname),
    })
}

fn short_object(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc_path() -> String {
        loaded_object(libc::getpid as *const () as u64)
            .expect("libc is loaded")
            .path
    }

    #[test]
    fn an_exported_libc_function_is_named() {
        let objects = SharedObjects::default();
        let frame = objects
            .frame(libc::getpid as *const () as u64)
            .expect("a frame");
        assert_eq!(frame.function, "getpid", "{frame:?}");
        assert!(frame.object.contains("libc"), "{frame:?}");
    }

    /// `memset` is an IFUNC: the address it resolves to is a CPU-specific implementation that
    /// libc does not export, the leaf of every CPU sample under a leak's zero-filled chunk.
    #[test]
    fn the_memset_implementation_libc_does_not_export_is_named() {
        let memset = libc::memset as *const () as u64;
        let objects = SharedObjects::default();
        let frame = objects.frame(memset + 4).expect("a frame");
        assert!(
            frame.function.contains("memset"),
            "{frame:?}: is the libc debug file installed (Debian's libc6-dbg)? table {:?}",
            objects.table(&libc_path()).source
        );
        assert!(frame.span.contains(&memset), "{frame:?}");
        assert!(!frame.function.contains("+0x"), "{frame:?}");
    }

    #[test]
    fn libc_is_named_from_its_debug_file_and_the_table_stays_small() {
        let table = SymbolTable::read(Path::new(&libc_path()));
        assert_eq!(
            table.source,
            TableSource::DebugFile,
            "Debian's libc has no .symtab: the names come from libc6-dbg's debug file"
        );
        assert!(table.functions.len() > 3000, "{}", table.functions.len());
        assert!(table.bytes() < 1 << 20, "{} bytes", table.bytes());
        // Sorted and disjoint starts: every lookup is one binary search.
        assert!(table.functions.windows(2).all(|pair| pair[0].0 < pair[1].0));
    }

    #[test]
    fn addresses_between_functions_are_not_named_by_the_one_before() {
        let table = SymbolTable {
            functions: vec![(0x100, 0x110, 0, 3), (0x200, 0x220, 3, 3)],
            names: "onetwo".into(),
            source: TableSource::Symtab,
        };
        assert_eq!(table.lookup(0x100), Some(("one", 0x100..0x110)));
        assert_eq!(table.lookup(0x10f), Some(("one", 0x100..0x110)));
        assert_eq!(table.lookup(0x110), None);
        assert_eq!(table.lookup(0xff), None);
        assert_eq!(table.lookup(0x21f), Some(("two", 0x200..0x220)));
        assert_eq!(table.lookup(0x220), None);
    }

    #[test]
    fn names_carry_no_symbol_version() {
        let table = SymbolTable::read(Path::new(&libc_path()));
        assert!(
            !table.names.contains('@'),
            "a versioned name in {:?}",
            table.source
        );
    }

    #[test]
    fn debug_files_are_found_by_build_id() {
        assert_eq!(
            debug_file_path(&[0x93, 0xac, 0x61, 0xec]),
            Path::new("/usr/lib/debug/.build-id/93/ac61ec.debug")
        );
    }
}
