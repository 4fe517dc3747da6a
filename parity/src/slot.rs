//! md's Q slot order: which data block of a raid6 stripe is multiplied by which power of `g`.
//!
//! The slot of a data block is *not* its logical index in the stripe (`k` in the layout
//! tables) but its position in a walk over the member disks: start at the disk right after Q
//! (wrapping, so disk 0 when Q is the last disk), go up in disk index, skip P and Q; the `j`-th
//! data disk met has slot `j` (Linux: `raid6_d0` / `raid6_next_disk` / `raid6_idx_to_slot`).
//! Q sits just before the walk's start, so it is always met last; only P can fall inside the
//! walk. For the symmetric layouts (2, 3) the walk meets the data in logical order, so slot = k;
//! for the asymmetric ones (0, 1) and the `-6` layouts it does not.
//!
//! These two functions hold for md's native layouts 0–5 and 16–20. The DDF layouts (8–10) use
//! the physical disk index as the slot, with P's and Q's disks counting as zero blocks: pass the
//! data by disk index to [`crate::Parity::pq_gen_sparse`] with `None` at P and Q.
//!
//! Pure functions; any core may call them.

use crate::{ParityError, MAX_Q_SLOTS};

fn check(disks: usize, p_disk: usize, q_disk: usize) -> Result<(), ParityError> {
    if disks < 3 {
        return Err(ParityError::Layout("a P+Q stripe needs at least 3 members"));
    }
    if disks - 2 > MAX_Q_SLOTS {
        return Err(ParityError::TooManySlots {
            count: disks - 2,
            max: MAX_Q_SLOTS,
        });
    }
    if p_disk >= disks || q_disk >= disks {
        return Err(ParityError::Layout("P or Q disk index past the member count"));
    }
    if p_disk == q_disk {
        return Err(ParityError::Layout("P and Q on the same member"));
    }
    Ok(())
}

/// The Q slot of member `disk` in a stripe of `disks` members whose P is on `p_disk` and Q on
/// `q_disk` (md native layouts): `Some(slot)` for a data disk, `None` for P's and Q's disks.
/// The caller passes data block `slot` at index `slot` of the data slice of
/// [`crate::Parity::pq_gen`] and friends. Pure; any core.
pub fn md_q_slot(disks: usize, p_disk: usize, q_disk: usize, disk: usize) -> Result<Option<usize>, ParityError> {
    check(disks, p_disk, q_disk)?;
    if disk >= disks {
        return Err(ParityError::Layout("disk index past the member count"));
    }
    if disk == p_disk || disk == q_disk {
        return Ok(None);
    }
    let start = (q_disk + 1) % disks;
    let pos = (disk + disks - start) % disks;
    let p_pos = (p_disk + disks - start) % disks;
    Ok(Some(pos - usize::from(p_pos < pos)))
}

/// The inverse of [`md_q_slot`]: the member disk that holds data slot `slot`. Pure; any core.
pub fn md_slot_disk(disks: usize, p_disk: usize, q_disk: usize, slot: usize) -> Result<usize, ParityError> {
    check(disks, p_disk, q_disk)?;
    if slot >= disks - 2 {
        return Err(ParityError::SlotOutOfRange { slot, max: disks - 2 });
    }
    let start = (q_disk + 1) % disks;
    let p_pos = (p_disk + disks - start) % disks;
    let pos = slot + usize::from(slot >= p_pos);
    Ok((start + pos) % disks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One stripe row of a verified 5-disk table of md-personalities.md §6.1: per disk, `P`,
    /// `Q` or the logical data index `k` within the stripe (Dn with n = 3·stripe + k).
    fn row(cells: [&str; 5], stripe: usize) -> (usize, usize, [Option<usize>; 5]) {
        let mut p = usize::MAX;
        let mut q = usize::MAX;
        let mut k = [None; 5];
        for (disk, c) in cells.iter().enumerate() {
            match *c {
                "P" => p = disk,
                "Q" => q = disk,
                d => k[disk] = Some(d.trim_start_matches('D').parse::<usize>().unwrap() - 3 * stripe),
            }
        }
        (p, q, k)
    }

    /// Checks a layout's verified rows: the walk's slots form 0..3, and `expect_slot(k, stripe)`
    /// predicts each.
    fn check_table(rows: &[[&str; 5]], expect: impl Fn(usize, usize, usize) -> usize) {
        for (stripe, cells) in rows.iter().enumerate() {
            let (p, q, ks) = row(*cells, stripe);
            for (disk, k) in ks.iter().enumerate() {
                let slot = md_q_slot(5, p, q, disk).unwrap();
                match *k {
                    None => assert_eq!(slot, None),
                    Some(k) => {
                        let slot = slot.unwrap();
                        assert_eq!(slot, expect(k, disk, stripe), "stripe {stripe} disk {disk} (D k={k})");
                        assert_eq!(md_slot_disk(5, p, q, slot).unwrap(), disk);
                    }
                }
            }
        }
    }

    #[test]
    fn symmetric_layouts_slot_is_logical_index() {
        // raid6 left-symmetric (layout 2), 5 disks.
        check_table(
            &[
                ["Q", "D0", "D1", "D2", "P"],
                ["D3", "D4", "D5", "P", "Q"],
                ["D7", "D8", "P", "Q", "D6"],
                ["D11", "P", "Q", "D9", "D10"],
                ["P", "Q", "D12", "D13", "D14"],
            ],
            |k, _, _| k,
        );
        // right-symmetric (layout 3).
        check_table(
            &[
                ["P", "Q", "D0", "D1", "D2"],
                ["D5", "P", "Q", "D3", "D4"],
                ["D7", "D8", "P", "Q", "D6"],
                ["D9", "D10", "D11", "P", "Q"],
                ["Q", "D12", "D13", "D14", "P"],
            ],
            |k, _, _| k,
        );
    }

    #[test]
    fn asymmetric_layouts_slot_follows_the_disk_walk() {
        // raid6 left-asymmetric (layout 0), 5 disks: stripe 2 is D6 D7 P Q D8, so the walk
        // from disk 4 gives D8 slot 0, D6 slot 1, D7 slot 2.
        let rows = [
            ["Q", "D0", "D1", "D2", "P"],
            ["D3", "D4", "D5", "P", "Q"],
            ["D6", "D7", "P", "Q", "D8"],
            ["D9", "P", "Q", "D10", "D11"],
            ["P", "Q", "D12", "D13", "D14"],
        ];
        let expected: [[usize; 3]; 5] = [[0, 1, 2], [0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]];
        check_table(&rows, |k, _, stripe| expected[stripe][k]);
        // left-asymmetric-6 (layout 16): Q always last, so the walk starts at disk 0 and slot
        // is the logical index again.
        check_table(
            &[
                ["D0", "D1", "D2", "P", "Q"],
                ["D3", "D4", "P", "D5", "Q"],
                ["D6", "P", "D7", "D8", "Q"],
                ["P", "D9", "D10", "D11", "Q"],
                ["D12", "D13", "D14", "P", "Q"],
            ],
            |k, _, _| k,
        );
        // parity-first (layout 4): P Q D D D.
        check_table(&[["P", "Q", "D0", "D1", "D2"]], |k, _, _| k);
    }

    #[test]
    fn rejects_impossible_geometry() {
        assert!(md_q_slot(2, 0, 1, 0).is_err());
        assert!(md_q_slot(5, 2, 2, 0).is_err());
        assert!(md_q_slot(5, 5, 1, 0).is_err());
        assert!(md_q_slot(5, 0, 1, 5).is_err());
        assert!(md_slot_disk(5, 0, 1, 3).is_err());
        assert!(md_q_slot(258, 0, 1, 2).is_err());
        assert_eq!(md_q_slot(257, 0, 1, 256).unwrap(), Some(254));
    }
}
