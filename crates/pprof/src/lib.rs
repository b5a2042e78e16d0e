//! The pprof wire format (`profile.proto`): its messages, a builder that interns strings,
//! functions and locations, gzip encoding, and a decoder that refuses oversized input.
//!
//! Pure data and encoding: nothing here samples, symbolises or does I/O. It needs prost and
//! flate2 only, and costs what encoding costs: the detector reads profiles with it without any
//! profiling runtime.
//!
//! # Layout
//! - this module: the messages ([`Profile`] and its parts), [`ProfileBuilder`], [`encode_gzip`],
//!   [`decode`];
//! - [`conventions`]: what writers and readers of leakfinder's profiles agree on (the `created
//!   by` frame, allocator frames, registry source paths).

#![warn(missing_docs)]

pub mod conventions;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;

/// A profile, as `go tool pprof` reads it.
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    /// What each value of a sample measures.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// The mapped binaries.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// The locations samples refer to.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// The functions locations refer to.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every string, by index; index 0 is the empty string.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Regex of frames to drop (string index).
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Regex of frames to keep (string index).
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// When the profile was taken, in nanoseconds since the epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// How long the profile covers.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// What the sampling period measures.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The sampling period.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indices).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// The sample type shown by default (string index).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// A type and unit, as string indices.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct ValueType {
    /// For example `inuse_space`.
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// For example `bytes`.
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// One stack and its values.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Location ids, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per sample type.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// A key and a string or numeric value.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Label {
    /// Key (string index).
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String value (string index).
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// Numeric value.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// Unit of the numeric value (string index).
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// A mapped binary.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Mapping {
    /// Unique, non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Start address.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// End address.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// Offset in the file.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// Path (string index).
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// Build id (string index).
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Locations carry function names.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// Locations carry file names.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Locations carry line numbers.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Locations carry inline frames.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// An address and the source lines it stands for, innermost (inlined) first.
#[derive(Clone, PartialEq, Message)]
pub struct Location {
    /// Unique, non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The mapping this address is in.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// The instruction address.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// The lines, innermost first.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    /// Whether several addresses were folded into this location.
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// A function and line.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Line {
    /// The function's id.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// The line number.
    #[prost(int64, tag = "2")]
    pub line: i64,
    /// The column.
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// A function.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Function {
    /// Unique, non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Readable name (string index).
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Mangled name (string index).
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Source file (string index).
    #[prost(int64, tag = "4")]
    pub filename: i64,
    /// First line of the function.
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// One source-level frame: a function, its file and line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name.
    pub function: Arc<str>,
    /// Source file: relative to the crate root for this crate's sources, else as built.
    pub file: Arc<str>,
    /// Line number, 0 when unknown.
    pub line: u32,
}

impl Frame {
    /// A frame of `function` at `file:line`.
    pub fn new(function: &str, file: &str, line: u32) -> Self {
        Self {
            function: function.into(),
            file: file.into(),
            line,
        }
    }
}

/// One return address of a stack and the frames it stands for, innermost (inlined) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackEntry {
    /// The instruction address (a return address minus one, where it was a return address).
    pub address: u64,
    /// The frames at that address, innermost first; never empty.
    pub frames: Arc<[Frame]>,
    /// How many innermost frames were trimmed off (so two trims of one address stay distinct).
    pub skip: usize,
}

impl StackEntry {
    /// The frames this entry still shows.
    pub fn shown(&self) -> &[Frame] {
        &self.frames[self.skip..]
    }
}

/// Builds a [`Profile`], interning strings, functions and locations.
pub struct ProfileBuilder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<(u64, usize), u64>,
}

impl ProfileBuilder {
    /// A builder for samples of the given `(type, unit)` pairs; the last one is the default.
    pub fn new(sample_types: &[(&str, &str)], period_type: (&str, &str), period: i64) -> Self {
        let mut builder = Self {
            profile: Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
        };
        builder.string("");
        for &(kind, unit) in sample_types {
            let value_type = builder.value_type(kind, unit);
            builder.profile.sample_type.push(value_type);
        }
        if let Some(&(kind, _)) = sample_types.last() {
            builder.profile.default_sample_type = builder.string(kind);
        }
        builder.profile.period_type = Some(builder.value_type(period_type.0, period_type.1));
        builder.profile.period = period;
        let filename = builder.string(&main_binary_name());
        builder.profile.mapping.push(Mapping {
            id: 1,
            filename,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
            ..Mapping::default()
        });
        builder
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    /// The index of `s` in the string table.
    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(&index) = self.strings.get(s) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), index);
        index
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = self.string(&frame.function);
        let filename = self.string(&frame.file);
        let next = self.profile.function.len() as u64 + 1;
        let id = *self.functions.entry((name, filename)).or_insert(next);
        if id == next {
            self.profile.function.push(Function {
                id,
                name,
                // Empty, not the name again: pprof treats a name equal to its system name as not
                // yet demangled and "simplifies" it, so `<Foo as Future>::poll` would read `::poll`
                // in a plain `go tool pprof URL` (its default demangling).
                system_name: 0,
                filename,
                start_line: 0,
            });
        }
        id
    }

    fn location(&mut self, entry: &StackEntry) -> u64 {
        // One address always symbolises to the same frames, so address and trim identify it.
        let key = (entry.address, entry.skip);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let line = entry
            .shown()
            .iter()
            .map(|frame| Line {
                function_id: self.function(frame),
                line: i64::from(frame.line),
                column: 0,
            })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id: 1,
            address: entry.address,
            line,
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    /// Adds a sample: `stack` leaf first, one value per sample type, and string labels.
    pub fn add_sample(&mut self, stack: &[StackEntry], value: Vec<i64>, labels: &[(&str, &str)]) {
        self.add_sample_with_numbers(stack, value, labels, &[]);
    }

    /// Adds a sample with string labels and numeric ones, each `(key, value, unit)`: pprof shows
    /// them with `-tags` and filters on them with `-tagfocus=key=RANGE` (`age=60s:`), reading
    /// the unit (`seconds`, `bytes`, `count`).
    pub fn add_sample_with_numbers(
        &mut self,
        stack: &[StackEntry],
        value: Vec<i64>,
        labels: &[(&str, &str)],
        numbers: &[(&str, i64, &str)],
    ) {
        let location_id = stack
            .iter()
            .filter(|entry| !entry.shown().is_empty())
            .map(|entry| self.location(entry))
            .collect();
        let mut label: Vec<Label> = labels
            .iter()
            .map(|&(key, value)| Label {
                key: self.string(key),
                str: self.string(value),
                ..Label::default()
            })
            .collect();
        label.extend(numbers.iter().map(|&(key, num, unit)| Label {
            key: self.string(key),
            num,
            num_unit: self.string(unit),
            ..Label::default()
        }));
        self.profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }

    /// Adds a comment, shown by `go tool pprof -comments`.
    pub fn comment(&mut self, text: &str) {
        let index = self.string(text);
        self.profile.comment.push(index);
    }

    /// Sets when the profile was taken and how long it covers.
    pub fn timing(&mut self, time_nanos: i64, duration_nanos: i64) {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
    }

    /// The finished profile.
    pub fn build(self) -> Profile {
        self.profile
    }
}

fn main_binary_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "leakfinder".to_owned())
}

/// The profile as gzipped protobuf, the form `/debug/pprof` serves.
pub fn encode_gzip(profile: &Profile) -> Vec<u8> {
    gzip(&profile.encode_to_vec())
}

/// Bytes gzipped (fast compression).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Why a profile could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The gzip stream is corrupt or truncated.
    #[error("not a valid gzip stream: {0}")]
    Gzip(#[source] std::io::Error),
    /// Decompressed, the profile is larger than allowed (a decompression bomb, or just too big).
    #[error("the profile decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// Decoded, the profile's messages would take more than [`DECODED_PER_BYTE`] times the
    /// size limit: on the wire an empty sample is 2 bytes, in memory 72, so a profile within
    /// the size limit can still be a bomb.
    #[error("the profile's messages would take more than {limit} bytes decoded")]
    TooManyMessages {
        /// The memory limit that was exceeded.
        limit: u64,
    },
    /// The bytes are not a pprof protobuf message.
    #[error("not a pprof protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// How much memory a profile's decoded messages may take per byte of the size limit. Real
/// profiles take 1.7 to 3 times their size (leakfinder's, Go's, Pyroscope's merges), and no
/// more than 8 (a profile of 1-byte ids alone, 8 bytes each decoded); a bomb of empty messages
/// takes up to 36.
pub const DECODED_PER_BYTE: u64 = 8;

/// Decodes a profile, gzipped or not, refusing anything that decompresses past `limit` bytes or
/// whose messages would take more than [`DECODED_PER_BYTE`] times `limit` once decoded.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Profile, DecodeError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        GzDecoder::new(bytes)
            .take(limit as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(DecodeError::Gzip)?;
        if raw.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        decode_bounded(&raw, limit)
    } else if bytes.len() > limit {
        Err(DecodeError::TooLarge { limit })
    } else {
        decode_bounded(bytes, limit)
    }
}

fn decode_bounded(raw: &[u8], limit: usize) -> Result<Profile, DecodeError> {
    // Malformed wire data is prost's to report, with its reason.
    let memory = DECODED_PER_BYTE.saturating_mul(limit as u64);
    if wire::decoded_bytes(raw).is_some_and(|bytes| bytes > memory) {
        return Err(DecodeError::TooManyMessages { limit: memory });
    }
    Ok(Profile::decode(raw)?)
}

/// What decoding a profile would allocate, read off the protobuf wire format without decoding
/// it: every message and every repeated number at its size in memory.
mod wire {
    use std::mem::size_of;

    use super::{Function, Label, Line, Location, Mapping, Sample, ValueType};

    /// A field's value, as the wire format carries it.
    enum Value<'a> {
        Varint,
        Bytes(&'a [u8]),
        Fixed,
    }

    /// Calls `each` with every field of the message `bytes`, and its tag; `None` if the wire
    /// format is broken (prost then refuses it too).
    fn fields<'a>(mut bytes: &'a [u8], mut each: impl FnMut(u64, Value<'a>)) -> Option<()> {
        while !bytes.is_empty() {
            let key = varint(&mut bytes)?;
            let value = match key & 7 {
                0 => {
                    varint(&mut bytes)?;
                    Value::Varint
                }
                1 => {
                    bytes = bytes.get(8..)?;
                    Value::Fixed
                }
                2 => {
                    let length = usize::try_from(varint(&mut bytes)?).ok()?;
                    let (value, rest) = bytes.split_at_checked(length)?;
                    bytes = rest;
                    Value::Bytes(value)
                }
                5 => {
                    bytes = bytes.get(4..)?;
                    Value::Fixed
                }
                // A group's start and end carry nothing: its fields are counted as the message's
                // own, which can only count more than prost (which skips them) will allocate.
                3 | 4 => Value::Fixed,
                _ => return None,
            };
            each(key >> 3, value);
        }
        Some(())
    }

    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for (index, &byte) in bytes.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                *bytes = &bytes[index + 1..];
                return Some(value);
            }
        }
        None
    }

    /// The memory of a repeated number field's value (packed or not): 8 bytes a number.
    fn numbers(value: &Value<'_>) -> usize {
        match value {
            Value::Bytes(packed) => 8 * packed.iter().filter(|&&byte| byte & 0x80 == 0).count(),
            Value::Varint | Value::Fixed => 8,
        }
    }

    /// The bytes the decoded profile's messages, strings and numbers would take.
    pub(super) fn decoded_bytes(profile: &[u8]) -> Option<u64> {
        let mut total = 0usize;
        let mut broken = false;
        fields(profile, |tag, value| {
            total += match (tag, value) {
                (1, Value::Bytes(_)) => size_of::<ValueType>(),
                (2, Value::Bytes(sample)) => {
                    let mut bytes = size_of::<Sample>();
                    broken |= fields(sample, |tag, value| {
                        bytes += match tag {
                            1 | 2 => numbers(&value),
                            3 => size_of::<Label>(),
                            _ => 0,
                        }
                    })
                    .is_none();
                    bytes
                }
                (3, Value::Bytes(_)) => size_of::<Mapping>(),
                (4, Value::Bytes(location)) => {
                    let mut bytes = size_of::<Location>();
                    broken |= fields(location, |tag, _| {
                        bytes += if tag == 4 { size_of::<Line>() } else { 0 }
                    })
                    .is_none();
                    bytes
                }
                (5, Value::Bytes(_)) => size_of::<Function>(),
                (6, Value::Bytes(string)) => size_of::<String>() + string.len(),
                (13, value) => numbers(&value),
                _ => 0,
            }
        })?;
        (!broken).then_some(total as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: u64, frames: Vec<Frame>) -> StackEntry {
        StackEntry {
            address,
            frames: frames.into(),
            skip: 0,
        }
    }

    #[test]
    fn a_built_profile_round_trips_through_gzip() {
        let mut builder =
            ProfileBuilder::new(&[("inuse_space", "bytes")], ("space", "bytes"), 524_288);
        let leaf = entry(
            0x10,
            vec![
                Frame::new("inlined", "src/a.rs", 3),
                Frame::new("outer", "src/a.rs", 9),
            ],
        );
        let root = entry(0x20, vec![Frame::new("main", "src/main.rs", 1)]);
        builder.add_sample(&[leaf.clone(), root.clone()], vec![100], &[("kind", "x")]);
        builder.add_sample(&[leaf, root], vec![50], &[]);
        builder.comment("hello");
        let profile = builder.build();

        let decoded = decode(&encode_gzip(&profile), 1 << 20).unwrap();
        assert_eq!(decoded, profile);
        assert_eq!(decoded.location.len(), 2, "locations are interned");
        assert_eq!(decoded.function.len(), 3, "functions are interned");
        assert_eq!(
            decoded.location[0].line.len(),
            2,
            "inline frames share a location"
        );
        let name = |index: i64| decoded.string_table[index as usize].as_str();
        assert_eq!(name(decoded.sample_type[0].r#type), "inuse_space");
        assert_eq!(name(decoded.default_sample_type), "inuse_space");
        assert_eq!(decoded.string_table[0], "");
    }

    #[test]
    fn numeric_labels_carry_their_unit() {
        let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
        let root = entry(0x20, vec![Frame::new("main", "src/main.rs", 1)]);
        builder.add_sample_with_numbers(
            &[root],
            vec![3],
            &[("wait", "chan send")],
            &[("age", 61, "seconds"), ("spawned", 7, "count")],
        );
        let profile = decode(&encode_gzip(&builder.build()), 1 << 20).unwrap();
        let name = |index: i64| profile.string_table[index as usize].as_str();
        let labels: Vec<(&str, &str, i64, &str)> = profile.sample[0]
            .label
            .iter()
            .map(|label| {
                (
                    name(label.key),
                    name(label.str),
                    label.num,
                    name(label.num_unit),
                )
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("wait", "chan send", 0, ""),
                ("age", "", 61, "seconds"),
                ("spawned", "", 7, "count")
            ]
        );
    }

    #[test]
    fn a_trimmed_entry_is_its_own_location() {
        let mut builder = ProfileBuilder::new(&[("count", "count")], ("count", "count"), 1);
        let full = entry(
            0x10,
            vec![
                Frame::new("alloc", "lib.rs", 1),
                Frame::new("user", "src/u.rs", 2),
            ],
        );
        let trimmed = StackEntry {
            skip: 1,
            ..full.clone()
        };
        builder.add_sample(&[full], vec![1], &[]);
        builder.add_sample(&[trimmed], vec![1], &[]);
        let profile = builder.build();
        assert_eq!(profile.location.len(), 2);
        assert_eq!(profile.location[1].line.len(), 1);
    }

    #[test]
    fn decompression_bombs_and_garbage_are_refused() {
        let zeros = vec![0u8; 10 << 20];
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&zeros).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        assert!(matches!(
            decode(&bomb, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(&[0x1f, 0x8b, 1, 2, 3], 1 << 20),
            Err(DecodeError::Gzip(_))
        ));
        assert!(matches!(
            decode(b"<html>not a profile</html>", 1 << 20),
            Err(DecodeError::Protobuf(_))
        ));
    }

    /// `count` empty samples: 2 bytes each on the wire, a 72-byte `Sample` each in memory.
    fn empty_samples(count: usize) -> Vec<u8> {
        [0x12, 0x00].repeat(count)
    }

    #[test]
    fn a_profile_whose_messages_would_not_fit_the_limit_decoded_is_refused() {
        // 400 000 empty samples: 800 KB, under the 1 MiB limit, 29 MB decoded.
        assert!(matches!(
            decode(&empty_samples(400_000), 1 << 20),
            Err(DecodeError::TooManyMessages { limit: 8_388_608 })
        ));
        // With a group field after them, which prost skips: counted all the same.
        let mut grouped = empty_samples(400_000);
        grouped.extend_from_slice(&[0x7b, 0x7c]);
        assert!(matches!(
            decode(&grouped, 1 << 20),
            Err(DecodeError::TooManyMessages { .. })
        ));
        // Gzipped (as scan reads profiles): 2 million in 18 KB, 144 MB decoded.
        let gzipped = gzip(&empty_samples(2_000_000));
        assert!(gzipped.len() < 32 << 10, "{}", gzipped.len());
        assert!(matches!(
            decode(&gzipped, 8 << 20),
            Err(DecodeError::TooManyMessages { .. })
        ));
        // A real profile decodes at the size limit itself: deep stacks of named frames.
        let mut builder =
            ProfileBuilder::new(&[("inuse_space", "bytes")], ("space", "bytes"), 524_288);
        let frames: Vec<StackEntry> = (1..200u64)
            .map(|address| {
                let function = format!("app::module_{}::function_{address}", address % 7);
                entry(
                    address,
                    vec![Frame::new(&function, "src/module/file.rs", 42)],
                )
            })
            .collect();
        for (sample, stack) in frames.windows(20).enumerate() {
            builder.add_sample(stack, vec![sample as i64 * 4096], &[("kind", "x")]);
        }
        let profile = builder.build();
        let encoded = profile.encode_to_vec();
        assert_eq!(decode(&encoded, encoded.len()).unwrap(), profile);
    }
}
