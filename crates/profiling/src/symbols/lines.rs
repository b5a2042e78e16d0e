//! A DWARF line-number program run by hand, so a run can start at any sequence.
//!
//! gimli's row iterators always start at the program's beginning, so finding the line of one
//! address in a large unit costs the whole unit's program. Here the first read of a unit records
//! where each sequence starts ([`sequences`]); every later lookup runs only the sequence that
//! holds its address ([`rows_from`]). The state machine is DWARF's (versions 2 to 5, one
//! operation per instruction, as every x86-64 and AArch64 producer emits); it is checked against
//! gimli's own rows in the tests.

use gimli::{EndianSlice, LineProgramHeader, Reader as _, RunTimeEndian};

type Reader = EndianSlice<'static, RunTimeEndian>;

/// A row of the line table: the registers the lookups need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub address: u64,
    pub file: u64,
    pub line: u64,
    /// The first address after the sequence; this row covers no code.
    pub end_sequence: bool,
}

/// A sequence of the program: its first address, its length, and the offset of its first
/// instruction in the program.
pub type Sequence = (u64, u32, u32);

/// Whether a run goes on after a row.
#[derive(PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Reads a unit's line program from the instruction at `from` (a sequence's start), appending
/// each sequence with code to `sequences` (unsorted), until the one holding `wanted` has been
/// read or the program ends. Returns where to go on, or `None` once the whole program is read.
pub fn scan_sequences(
    header: &LineProgramHeader<Reader>,
    from: usize,
    wanted: u64,
    sequences: &mut Vec<Sequence>,
) -> gimli::Result<Option<usize>> {
    let program = header.raw_program_buf();
    if from >= program.len() {
        return Ok(None);
    }
    let mut start: Option<(u64, usize)> = None;
    let mut at = 0usize;
    run(
        header,
        program.range_from(from..),
        &mut at,
        |row, offset| {
            match (start, row.end_sequence) {
                (None, false) => start = Some((row.address, from + offset)),
                (Some((first, offset)), true) => {
                    start = None;
                    // A sequence at address 0 is code the linker discarded.
                    if let (Ok(length), Ok(offset)) = (
                        u32::try_from(row.address.saturating_sub(first)),
                        u32::try_from(offset),
                    ) && length > 0
                        && first > 0
                    {
                        sequences.push((first, length, offset));
                        if (first..row.address).contains(&wanted) {
                            return Flow::Stop;
                        }
                    }
                }
                _ => {}
            }
            Flow::Continue
        },
    )?;
    let next = from + at;
    Ok((next < program.len()).then_some(next))
}

/// Every sequence of a unit's line program, sorted by address (empty ones left out).
#[cfg(test)]
fn sequences(header: &LineProgramHeader<Reader>) -> gimli::Result<Vec<Sequence>> {
    let mut sequences = Vec::new();
    scan_sequences(header, 0, 0, &mut sequences)?;
    sequences.sort_unstable();
    Ok(sequences)
}

/// Runs one sequence, from the instruction at `offset` of the program, to its end or until
/// `on_row` stops it.
pub fn rows_from(
    header: &LineProgramHeader<Reader>,
    offset: u32,
    mut on_row: impl FnMut(Row) -> Flow,
) -> gimli::Result<()> {
    let program = header.raw_program_buf();
    let Some(rest) =
        (offset as usize <= program.len()).then(|| program.range_from(offset as usize..))
    else {
        return Err(gimli::Error::UnexpectedEof(gimli::ReaderOffsetId(0)));
    };
    let mut at = 0;
    run(header, rest, &mut at, |row, _| {
        let flow = on_row(row);
        if row.end_sequence { Flow::Stop } else { flow }
    })
}

/// The state machine. `on_row` gets each row and the offset (from `program`'s start) of the
/// first instruction of the row's sequence; `at` is where the run stopped.
fn run(
    header: &LineProgramHeader<Reader>,
    program: Reader,
    at: &mut usize,
    mut on_row: impl FnMut(Row, usize) -> Flow,
) -> gimli::Result<()> {
    let min_length = u64::from(header.minimum_instruction_length());
    let line_base = i64::from(header.line_base());
    let line_range = u64::from(header.line_range());
    let opcode_base = header.opcode_base();
    let address_size = header.address_size();
    let lengths = header.standard_opcode_lengths().slice();
    if line_range == 0 {
        return Err(gimli::Error::LineRangeZero);
    }
    // What a special opcode (or DW_LNS_const_add_pc, as special opcode 255) adds.
    let special = |opcode: u8| {
        let adjusted = u64::from(opcode - opcode_base);
        (
            adjusted / line_range * min_length,
            line_base + (adjusted % line_range) as i64,
        )
    };
    let mut input = program;
    let reset = Row {
        address: 0,
        file: 1,
        line: 1,
        end_sequence: false,
    };
    let mut row = reset;
    let mut sequence_start = 0usize;
    while !input.is_empty() {
        let opcode = input.read_u8()?;
        let mut emit = false;
        if opcode >= opcode_base {
            let (address, line) = special(opcode);
            row.address = row.address.wrapping_add(address);
            row.line = row.line.wrapping_add_signed(line);
            emit = true;
        } else {
            match opcode {
                0 => {
                    let length = input.read_uleb128()?;
                    let length =
                        usize::try_from(length).map_err(|_| gimli::Error::UnsupportedOffset)?;
                    let (mut extended, rest) = input.split_at(length.min(input.len()));
                    input = rest;
                    if !extended.is_empty() {
                        match gimli::DwLne(extended.read_u8()?) {
                            gimli::DW_LNE_end_sequence => {
                                row.end_sequence = true;
                                emit = true;
                            }
                            gimli::DW_LNE_set_address => {
                                row.address = extended.read_address(address_size)?;
                            }
                            _ => {}
                        }
                    }
                }
                1 => emit = true,
                2 => {
                    let advance = input.read_uleb128()?;
                    row.address = row.address.wrapping_add(advance.wrapping_mul(min_length));
                }
                3 => row.line = row.line.wrapping_add_signed(input.read_sleb128()?),
                4 => row.file = input.read_uleb128()?,
                8 => row.address = row.address.wrapping_add(special(255).0),
                9 => row.address = row.address.wrapping_add(u64::from(input.read_u16()?)),
                // Column, statement, block, prologue, epilogue, ISA and unknown opcodes: their
                // operands, as the header counts them, are skipped.
                _ => {
                    let operands = lengths.get(usize::from(opcode) - 1).copied().unwrap_or(0);
                    for _ in 0..operands {
                        input.read_uleb128()?;
                    }
                }
            }
        }
        if emit {
            let flow = on_row(row, sequence_start);
            if row.end_sequence {
                row = reset;
                sequence_start = input.offset_from(program);
            }
            if flow == Flow::Stop {
                break;
            }
        }
    }
    *at = input.offset_from(program);
    Ok(())
}

/// The row covering `address` in one sequence: its file and line, and the addresses it covers.
pub fn find(
    header: &LineProgramHeader<Reader>,
    sequence: Sequence,
    address: u64,
) -> gimli::Result<Option<(u64, u32, std::ops::Range<u64>)>> {
    let mut previous: Option<Row> = None;
    let mut found = None;
    rows_from(header, sequence.2, |row| {
        if let Some(before) = previous
            && (before.address..row.address).contains(&address)
        {
            found = Some((
                before.file,
                u32::try_from(before.line).unwrap_or(0),
                before.address..row.address,
            ));
            return Flow::Stop;
        }
        previous = (!row.end_sequence).then_some(row);
        Flow::Continue
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::dwarf::DebugInfo;

    /// gimli's rows for a whole program, as `Row`s.
    fn gimli_rows(program: gimli::IncompleteLineProgram<Reader>) -> Vec<Row> {
        let mut rows = program.rows();
        let mut all = Vec::new();
        while let Some((_, row)) = rows.next_row().unwrap() {
            all.push(Row {
                address: row.address(),
                file: row.file_index(),
                line: row.line().map_or(0, |line| line.get()),
                end_sequence: row.end_sequence(),
            });
        }
        all
    }

    /// A unit's rows as gimli gives them and as the hand run gives them, each with the offset of
    /// its sequence's first instruction.
    fn both_runs(program: &gimli::IncompleteLineProgram<Reader>) -> (Vec<Row>, Vec<(Row, usize)>) {
        let header = program.header();
        let mut ours = Vec::new();
        let mut at = 0;
        run(header, header.raw_program_buf(), &mut at, |row, offset| {
            ours.push((row, offset));
            Flow::Continue
        })
        .unwrap();
        assert_eq!(at, header.raw_program_buf().len(), "the whole program ran");
        (gimli_rows(program.clone()), ours)
    }

    #[test]
    fn the_hand_run_program_matches_gimlis_rows_and_each_sequence_runs_alone() {
        let info = DebugInfo::executable().expect("this test binary has debug info");
        let (mut checked_units, mut checked_sequences) = (0, 0);
        // About 80 units spread over the binary, whatever its size (and however its code is
        // split into units: 40 of them once held fewer than 400 sequences).
        let step = (info.line_programs().count() / 80).max(1);
        for program in info.line_programs().step_by(step).take(120) {
            let (expected, ours) = both_runs(&program);
            let rows: Vec<Row> = ours.iter().map(|&(row, _)| row).collect();
            assert_eq!(rows, expected, "every row of the unit's program");
            // Each sequence, run alone from where the whole run says it starts, gives its rows.
            let header = program.header();
            let mut sequence_starts: Vec<usize> = ours.iter().map(|&(_, offset)| offset).collect();
            sequence_starts.dedup();
            for offset in sequence_starts {
                let group: Vec<Row> = ours
                    .iter()
                    .filter(|&&(_, start)| start == offset)
                    .map(|&(row, _)| row)
                    .collect();
                let mut alone = Vec::new();
                rows_from(header, offset as u32, |row| {
                    alone.push(row);
                    Flow::Continue
                })
                .unwrap();
                assert_eq!(alone, group);
                checked_sequences += 1;
            }
            // The recorded sequences are those with code, sorted, and start where they say.
            let recorded = sequences(header).unwrap();
            assert!(recorded.is_sorted());
            for &(start, length, offset) in &recorded {
                let group: Vec<&Row> = ours
                    .iter()
                    .filter(|&&(_, first)| first == offset as usize)
                    .map(|(row, _)| row)
                    .collect();
                assert_eq!(group[0].address, start);
                assert_eq!(group.last().unwrap().address, start + u64::from(length));
            }
            checked_units += 1;
        }
        assert!(checked_units >= 20, "{checked_units} units checked");
        assert!(
            checked_sequences > 400,
            "{checked_sequences} sequences checked"
        );
    }

    #[test]
    fn a_scan_stopped_at_each_wanted_address_and_resumed_reads_every_sequence_once() {
        let info = DebugInfo::executable().expect("this test binary has debug info");
        for program in info.line_programs().step_by(157).take(15) {
            let header = program.header();
            let all = sequences(header).unwrap();
            // Stop at every third sequence, in program order, and go on from there.
            let mut in_order = all.clone();
            in_order.sort_by_key(|&(_, _, offset)| offset);
            let mut scanned = Vec::new();
            let mut next = Some(0);
            for wanted in in_order.iter().step_by(3) {
                let Some(from) = next else { break };
                next = scan_sequences(header, from, wanted.0, &mut scanned).unwrap();
                assert_eq!(
                    scanned.last(),
                    Some(wanted),
                    "stopped at the wanted sequence"
                );
            }
            if let Some(from) = next {
                assert_eq!(scan_sequences(header, from, 0, &mut scanned).unwrap(), None);
            }
            scanned.sort_unstable();
            assert_eq!(scanned, all);
        }
    }

    #[test]
    fn a_lookup_finds_the_row_covering_an_address_and_nothing_past_the_end() {
        let info = DebugInfo::executable().expect("this test binary has debug info");
        let mut checked = 0;
        for program in info.line_programs().step_by(211).take(10) {
            let (_, ours) = both_runs(&program);
            let header = program.header();
            for sequence in sequences(header).unwrap() {
                let rows: Vec<Row> = ours
                    .iter()
                    .filter(|&&(_, first)| first == sequence.2 as usize)
                    .map(|&(row, _)| row)
                    .collect();
                for pair in rows.windows(2) {
                    let (row, next) = (pair[0], pair[1]);
                    if next.address > row.address {
                        let expected = Some((row.file, row.line as u32, row.address..next.address));
                        assert_eq!(find(header, sequence, row.address).unwrap(), expected);
                        assert_eq!(find(header, sequence, next.address - 1).unwrap(), expected);
                        checked += 1;
                    }
                }
                let end = sequence.0 + u64::from(sequence.1);
                assert_eq!(find(header, sequence, end).unwrap(), None);
            }
        }
        assert!(checked > 1_000, "{checked} rows looked up");
    }
}
