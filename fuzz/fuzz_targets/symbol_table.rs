//! The symbol table file beside a binary (`leakfinder_symbols::table`), as a service reads it at
//! start-up: `Table::open` (header, build ID, sizes, directory) with the build ID the file
//! claims (and a wrong one), then `lookup` and `lookup_all` of addresses at, just before and
//! just after the first segment starts the file lists, and around its base.
//!
//! Asserts: a table of another build is refused; a lookup's frames are at most the inline depth
//! followed and never empty, and its span holds the address; no allocation exceeds what the
//! file could describe (the cap: 1 MiB beyond the file's size).

#![no_main]

use std::io::Write;
use std::path::PathBuf;

use leakfinder_symbols::table::{Table, TableError};
use libfuzzer_sys::fuzz_target;

/// The header: magic, four counts, the base address.
const HEADER: usize = 32;

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(data))
        .expect("the scratch file is writable");
    leakfinder_fuzz::cap_allocations(data.len() + (1 << 20));
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let id_len = field(20).unwrap_or(0) as usize;
    let claimed = data
        .get(HEADER..HEADER.saturating_add(id_len))
        .unwrap_or(&[]);
    let mut other = claimed.to_vec();
    other.push(0);
    assert!(
        Table::open(&path, &other).is_err(),
        "a table opened for another build"
    );
    let opened = Table::open(&path, claimed);
    // An open table reads through its file handle: the name can go now.
    let _ = std::fs::remove_file(&path);
    let table = match opened {
        Ok(table) => table,
        Err(TableError::Format { .. } | TableError::Stale { .. }) => return,
        Err(error) => panic!("opening a readable file: {error}"),
    };
    let base = data
        .get(24..32)
        .map_or(0, |bytes| u64::from_le_bytes(bytes.try_into().unwrap()));
    // Segment starts as the file lists them (16-byte records after the padded build ID).
    let segments_at = (HEADER + id_len).next_multiple_of(8);
    let count = field(8).unwrap_or(0) as usize;
    let mut addresses = vec![0, base, base.wrapping_sub(1), u64::MAX];
    for index in 0..count.min(16) {
        let Some(start) = field(segments_at + 16 * index) else {
            break;
        };
        let at = base.wrapping_add(u64::from(start));
        addresses.extend([at, at.wrapping_sub(1), at.wrapping_add(1)]);
    }
    for &address in &addresses {
        if let Some((frames, span)) = table.lookup(address) {
            assert!(
                !frames.is_empty() && frames.len() <= 256,
                "{} frames",
                frames.len()
            );
            assert!(span.contains(&address), "{address:#x} outside {span:x?}");
        }
    }
    let all = table.lookup_all(addresses.clone());
    for (address, resolved) in all {
        assert_eq!(
            Some((resolved.frames, resolved.span)),
            table.lookup(address),
            "lookup_all and lookup agree"
        );
    }
});

/// A file per fuzzing process for each input (in memory where there is a tmpfs), removed once
/// opened.
fn scratch() -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let directory = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    directory.join(format!(
        "leakfinder-fuzz-symbol-table-{}.symbols",
        std::process::id()
    ))
}
