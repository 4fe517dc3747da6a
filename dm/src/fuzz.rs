//! The dm table fuzz target's body: [`fuzz_one`] runs arbitrary bytes through everything dm does
//! with table text from a user — parse, build over devices (detached: no bdevs, geometry from
//! the name), render, map, status and messages — and panics if an invariant breaks. The
//! `dm_table` cargo-fuzz target (`fuzz/fuzz_targets/dm_table.rs`) and `tests/fuzz_corpus.rs`
//! (the committed corpus plus random and mutated inputs) call it. Control path; pure.
//!
//! Invariants checked for a table that builds:
//! * lines are contiguous from sector 0 and `size_sectors` is their sum; the logical block size
//!   is a power of two ≥ 512 dividing every start and length, and the block count times the
//!   block size is the size in bytes (no overflow);
//! * the TABLE text parses and builds again to the same text (a fixpoint), and with no removed
//!   bdev the save_config text is the same;
//! * `find` gives the line holding the first and last sector of each line and `None` past the
//!   end;
//! * mapping the first and last sector of each line (read and write) and every flush leg stays
//!   on a device of the table, inside it;
//! * status text and messages (the line's own words, as junk) answer without panicking.
//!
//! A table that does not parse or build must fail with a message naming a line.

use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp};

use crate::events::Events;
use crate::table::{build, parse, Table, TableDev};
use crate::target::{DevGeometry, Map, MapCx, SECTOR_BYTES};

/// Sectors of every fuzz device: 1 GiB, large enough for any table the corpus makes.
const DEV_SECTORS: u64 = 1 << 21;

/// The detached device a fuzz table names: `missing*` does not exist, names of odd length have
/// 4 KiB blocks, the others 512-byte blocks; every device is [`DEV_SECTORS`] long.
fn resolve(name: &str) -> Result<TableDev, (String, i32)> {
    if name.starts_with("missing") {
        return Err((format!("Device lookup failed: bdev '{name}' not found"), libc::EINVAL));
    }
    let block_size = if name.len() % 2 == 1 { 4096 } else { 512 };
    Ok(TableDev::detached(
        name,
        DevGeometry {
            block_size,
            num_sectors: DEV_SECTORS,
            caps: IoCaps::ALL,
        },
    ))
}

fn build_text(text: &str) -> Result<Table, crate::DmError> {
    let specs = parse(text)?;
    let mut r = resolve;
    build(&specs, &mut r, &Events::detached(), false)
}

/// Checks that `m`, a mapping of table `t`, stays on one of its devices.
fn check_map(t: &Table, m: Map, what: &str) {
    let on_dev = |dev: crate::target::DevIndex, sector: u64| {
        let d = t
            .devs
            .get(dev as usize)
            .unwrap_or_else(|| panic!("{what}: device index {dev} of {}", t.devs.len()));
        assert!(
            sector < d.geometry.num_sectors,
            "{what}: sector {sector} past the end of '{}' ({} sectors)",
            d.name,
            d.geometry.num_sectors
        );
    };
    match m {
        Map::Remap { dev, sector } | Map::Track { dev, sector, .. } | Map::Hold { dev, sector, .. } => {
            on_dev(dev, sector)
        }
        Map::Done(_) | Map::ZeroFill => {}
    }
}

/// Runs `data` through dm's table handling; panics if an invariant (module docs) breaks.
pub fn fuzz_one(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let table = match build_text(&text) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(
                msg.contains("line") || matches!(e, crate::DmError::EmptyTable),
                "error without a line: {msg}"
            );
            return;
        }
    };
    // Geometry.
    let spb = table.block_size as u64 / SECTOR_BYTES;
    assert!(table.block_size >= 512 && table.block_size.is_power_of_two());
    let mut next = 0u64;
    for l in &table.lines {
        assert_eq!(l.start_sectors, next, "lines are contiguous");
        assert!(l.len_sectors > 0);
        assert_eq!(l.start_sectors % spb, 0);
        assert_eq!(l.len_sectors % spb, 0);
        next = l.start_sectors + l.len_sectors;
    }
    assert_eq!(table.size_sectors, next);
    let bytes = table
        .num_blocks()
        .checked_mul(table.block_size as u64)
        .expect("size in bytes fits a u64");
    assert_eq!(bytes / SECTOR_BYTES, table.size_sectors);
    // Text round trip.
    let text1 = table.table_text();
    let again = build_text(&text1).unwrap_or_else(|e| panic!("TABLE text does not build again: {e}\n{text1}"));
    assert_eq!(again.table_text(), text1, "TABLE text is a fixpoint");
    assert_eq!(
        table.config_text(),
        text1,
        "nothing removed: save_config text is the TABLE text"
    );
    assert!(table.removed_deps().is_empty());
    assert_eq!(table.present_deps(), table.deps());
    let _ = table.status_text();
    let _ = table.read_ahead_sectors();
    // Lookup and mapping.
    assert_eq!(table.find(table.size_sectors), None);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for (i, l) in table.lines.iter().enumerate() {
        let last = l.start_sectors + l.len_sectors - 1;
        assert_eq!(table.find(l.start_sectors), Some(i));
        assert_eq!(table.find(last), Some(i));
        for rel in [0, l.len_sectors - 1] {
            for op in [IoOp::Read, IoOp::Write] {
                let mut cx = MapCx::new(&mut rng);
                let m = l.target.map(op, rel, &mut cx);
                check_map(&table, m, &format!("line {} {op:?} +{rel}", l.line));
            }
        }
        for leg in 0..l.target.flush_legs().min(64) {
            let mut cx = MapCx::new(&mut rng);
            check_map(&table, l.target.map_flush(leg, &mut cx), "flush");
        }
        if let Some((chunk, _)) = l.target.split_sectors() {
            assert!(chunk >= spb, "chunks are at least a block");
        }
        for x in l.target.extents() {
            let d = &table.devs[x.dev as usize];
            assert!(x.offset_sectors + x.len_sectors <= d.geometry.num_sectors);
        }
        let _ = l.target.caps(&|_| IoCaps::ALL);
    }
    // Messages: each line's own words as junk input.
    let words: Vec<String> = text1.split_whitespace().map(str::to_string).collect();
    for l in &table.lines {
        for n in 0..words.len().min(4) {
            let w: Vec<&str> = words.iter().skip(n).take(3).map(String::as_str).collect();
            let _ = l.target.message(&w);
        }
    }
    drop(Arc::new(table));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_of_every_target_type_pass() {
        for t in [
            "0 8 zero",
            "0 8 error\n8 8 zero\n",
            "0 2048 linear dev0 0",
            "0 2048 linear dev 8\n2048 16 zero",
            "0 4096 striped 2 16 da 0 db 8",
            "0 512 delay dx 0 10",
            "0 512 delay dx 0 10 dy 8 20",
            "0 512 flakey dz 0 1 1",
            "0 512 flakey dz 0 1 1 1 drop_writes",
            "# comment\n\n0 8 zero",
            "0 8 linear missing0 0",
            "0 8 nosuch",
            "",
            "0 18446744073709551615 zero",
            "0 18446744073709551615 zero\n18446744073709551615 1 zero",
        ] {
            fuzz_one(t.as_bytes());
        }
    }
}
