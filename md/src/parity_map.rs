//! Address math of the parity levels (raid4, raid5, raid6; `shared/specs/md-personalities.md`
//! §5.1 and §6.1): which member holds a data chunk, P and Q of a stripe, and Q's slot order.
//!
//! A **stripe** here is Linux's row: chunk `c` of the array is data index `c mod d` of stripe
//! `c div d` (`d` data members), and every block of stripe `s` sits at member sectors
//! `[s·chunk, (s+1)·chunk)` of its member. The layout word picks where P (and Q) go in each
//! stripe and in what order the data blocks follow them: Linux's `raid5_compute_sector`, checked
//! here against the spec's tables, which were read back from arrays a Linux 6.12 kernel wrote.
//!
//! Pure functions of a few integers: the data path calls them per request without allocating.

use crate::layout::MemberIdx;
use crate::MdError;

/// A layout word's placement rule (the md `ALGORITHM_*` numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algo {
    LeftAsymmetric,
    RightAsymmetric,
    LeftSymmetric,
    RightSymmetric,
    ParityFirst,
    ParityLast,
    /// raid6 16–19: the raid5 rule (0–3) over the first n−1 members, Q on the last.
    Raid5Then6(u8),
    /// raid6 20: P on member 0, Q on the last, data in between.
    ParityFirst6,
}

/// mdadm's names of the raid5 layouts (and raid6's native 0–5), by word.
const NAMES: [&str; 6] = [
    "left-asymmetric",
    "right-asymmetric",
    "left-symmetric",
    "right-symmetric",
    "parity-first",
    "parity-last",
];
/// mdadm's names of raid6 layouts 16–20.
const NAMES_6: [&str; 5] = [
    "left-asymmetric-6",
    "right-asymmetric-6",
    "left-symmetric-6",
    "right-symmetric-6",
    "parity-first-6",
];

/// Linux's default raid5/raid6 layout (left-symmetric).
pub(crate) const DEFAULT_LAYOUT: u32 = 2;
/// raid6's DDF layouts, which this build refuses.
const DDF_LAYOUTS: [u32; 3] = [8, 9, 10];

/// mdadm's name of a raid5/raid6 layout word (None for words mdadm does not name).
pub(crate) fn layout_name(level: i32, word: u32) -> Option<&'static str> {
    match (level, word) {
        (5 | 6, 0..=5) => Some(NAMES[word as usize]),
        (6, 8) => Some("ddf-zero-restart"),
        (6, 9) => Some("ddf-N-restart"),
        (6, 10) => Some("ddf-N-continue"),
        (6, 16..=20) => Some(NAMES_6[word as usize - 16]),
        _ => None,
    }
}

/// `md_create`'s `layout` text for raid5 (`level` 5) or raid6 (6) as a layout word: mdadm's names
/// and short forms (`la`, `ra`, `ls`, `rs`, `default`), or the number. raid5 also takes mdadm's
/// DDF aliases (which are native raid5 layouts); raid6's DDF layouts are refused.
pub(crate) fn parse_layout(level: i32, text: &str) -> Result<u32, MdError> {
    let t = text.to_ascii_lowercase();
    let word = match t.as_str() {
        "default" | "ls" => Some(2),
        "la" => Some(0),
        "ra" => Some(1),
        "rs" => Some(3),
        "ddf-zero-restart" if level == 5 => Some(1),
        "ddf-n-restart" if level == 5 => Some(0),
        "ddf-n-continue" if level == 5 => Some(2),
        "ddf-zero-restart" => Some(8),
        "ddf-n-restart" => Some(9),
        "ddf-n-continue" => Some(10),
        _ => NAMES
            .iter()
            .position(|n| *n == t)
            .map(|i| i as u32)
            .or_else(|| (level == 6).then(|| NAMES_6.iter().position(|n| *n == t).map(|i| i as u32 + 16))?)
            .or_else(|| t.parse::<u32>().ok()),
    };
    let valid = |w: u32| w <= 5 || (level == 6 && (16..=20).contains(&w));
    match word {
        Some(w) if level == 6 && DDF_LAYOUTS.contains(&w) => Err(MdError::invalid(
            "layout",
            format!(
                "'{text}' is a DDF layout of raid6, which this build does not run (native layouts 0-5 and 16-20 only)"
            ),
        )),
        Some(w) if valid(w) => Ok(w),
        _ => {
            let mut names: Vec<&str> = NAMES.to_vec();
            if level == 6 {
                names.extend(NAMES_6);
            }
            Err(MdError::invalid(
                "layout",
                format!("'{text}' is not a layout of raid{level} ({})", names.join(", ")),
            ))
        }
    }
}

/// Where the blocks of one stripe go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StripeDisks {
    /// P's member.
    pub p: u16,
    /// Q's member (raid6), or `u16::MAX`.
    pub q: u16,
}

/// The placement of a parity array: level, layout, members, chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParityMap {
    /// 4, 5 or 6.
    pub level: i32,
    pub layout: u32,
    algo: Algo,
    /// Members (raid disks).
    pub disks: u16,
    /// Data blocks per stripe (`disks − 1`, raid6 `disks − 2`).
    pub data_disks: u16,
    pub chunk_sectors: u64,
    chunk_shift: u32,
}

impl ParityMap {
    /// The map of a `level` array (4, 5, 6) of `disks` members with `layout` and a chunk of
    /// `chunk_sectors` (a power of two). raid4 ignores the layout word (Linux puts its parity on
    /// the last member whatever the word says).
    pub(crate) fn new(level: i32, layout: u32, disks: u16, chunk_sectors: u64) -> Result<ParityMap, String> {
        let parity = match level {
            4 | 5 => 1,
            6 => 2,
            _ => return Err(format!("level {level} is not a parity level")),
        };
        if disks < parity + 2 {
            return Err(format!(
                "raid{level} needs at least {} members, not {disks}",
                parity + 2
            ));
        }
        if !chunk_sectors.is_power_of_two() {
            return Err(format!("chunk of {chunk_sectors} sectors is not a power of two"));
        }
        let algo = match (level, layout) {
            (4, _) => Algo::ParityLast,
            (_, 0) => Algo::LeftAsymmetric,
            (_, 1) => Algo::RightAsymmetric,
            (_, 2) => Algo::LeftSymmetric,
            (_, 3) => Algo::RightSymmetric,
            (_, 4) => Algo::ParityFirst,
            (_, 5) => Algo::ParityLast,
            (6, 16..=19) => Algo::Raid5Then6((layout - 16) as u8),
            (6, 20) => Algo::ParityFirst6,
            (6, 8..=10) => return Err(format!("DDF layout {layout} of raid6 is not supported")),
            _ => return Err(format!("layout {layout} is not a layout of raid{level}")),
        };
        Ok(ParityMap {
            level,
            layout,
            algo,
            disks,
            data_disks: disks - parity,
            chunk_sectors,
            chunk_shift: chunk_sectors.trailing_zeros(),
        })
    }

    /// Whether the level has Q.
    #[inline]
    pub(crate) fn has_q(&self) -> bool {
        self.level == 6
    }

    /// Array sectors per stripe.
    #[inline]
    pub(crate) fn stripe_sectors(&self) -> u64 {
        self.chunk_sectors * self.data_disks as u64
    }

    /// P's (and Q's) member in stripe `stripe`.
    #[inline]
    pub(crate) fn parity_disks(&self, stripe: u64) -> StripeDisks {
        let n = self.disks as u64;
        let none = u16::MAX;
        let rot = |n: u64| (stripe % n) as u16;
        match (self.algo, self.level) {
            (Algo::LeftAsymmetric | Algo::LeftSymmetric, 6) => {
                let p = (n - 1) as u16 - rot(n);
                StripeDisks {
                    p,
                    q: ((p as u64 + 1) % n) as u16,
                }
            }
            (Algo::RightAsymmetric | Algo::RightSymmetric, 6) => {
                let p = rot(n);
                StripeDisks {
                    p,
                    q: ((p as u64 + 1) % n) as u16,
                }
            }
            (Algo::LeftAsymmetric | Algo::LeftSymmetric, _) => StripeDisks {
                p: (n - 1) as u16 - rot(n),
                q: none,
            },
            (Algo::RightAsymmetric | Algo::RightSymmetric, _) => StripeDisks { p: rot(n), q: none },
            (Algo::ParityFirst, 6) => StripeDisks { p: 0, q: 1 },
            (Algo::ParityFirst, _) => StripeDisks { p: 0, q: none },
            (Algo::ParityLast, 6) => StripeDisks {
                p: (n - 2) as u16,
                q: (n - 1) as u16,
            },
            (Algo::ParityLast, _) => StripeDisks {
                p: (n - 1) as u16,
                q: none,
            },
            (Algo::Raid5Then6(a), _) => {
                let m = n - 1;
                let p = if a & 1 == 0 { (m - 1) as u16 - rot(m) } else { rot(m) };
                StripeDisks { p, q: m as u16 }
            }
            (Algo::ParityFirst6, _) => StripeDisks {
                p: 0,
                q: (n - 1) as u16,
            },
        }
    }

    /// The member of data index `k` (< data disks) in a stripe whose parity is at `pd`.
    #[inline]
    pub(crate) fn data_disk(&self, pd: StripeDisks, k: u16) -> u16 {
        let n = self.disks;
        let p = pd.p;
        match (self.algo, self.level) {
            (Algo::LeftAsymmetric | Algo::RightAsymmetric, 6) => {
                if p == n - 1 {
                    k + 1
                } else if k < p {
                    k
                } else {
                    k + 2
                }
            }
            (Algo::LeftSymmetric | Algo::RightSymmetric, 6) => ((p as u32 + 2 + k as u32) % n as u32) as u16,
            (Algo::LeftAsymmetric | Algo::RightAsymmetric, _) => {
                if k < p {
                    k
                } else {
                    k + 1
                }
            }
            (Algo::LeftSymmetric | Algo::RightSymmetric, _) => ((p as u32 + 1 + k as u32) % n as u32) as u16,
            (Algo::ParityFirst, 6) => k + 2,
            (Algo::ParityFirst, _) => k + 1,
            (Algo::ParityLast, _) => k,
            (Algo::Raid5Then6(a), _) => {
                let m = n - 1;
                if a < 2 {
                    if k < p {
                        k
                    } else {
                        k + 1
                    }
                } else {
                    ((p as u32 + 1 + k as u32) % m as u32) as u16
                }
            }
            (Algo::ParityFirst6, _) => k + 1,
        }
    }

    /// The data index of member `disk` in a stripe whose parity is at `pd` (None for P and Q).
    #[inline]
    pub(crate) fn data_index(&self, pd: StripeDisks, disk: u16) -> Option<u16> {
        if disk == pd.p || disk == pd.q {
            return None;
        }
        // Small: the inverse by search keeps one definition of the rule.
        (0..self.data_disks).find(|&k| self.data_disk(pd, k) == disk)
    }

    /// Q's slot (md's order: the members walked from the one after Q, skipping P and Q) of
    /// member `disk`, a data member of a stripe whose parity is at `pd`.
    #[inline]
    pub(crate) fn q_slot(&self, pd: StripeDisks, disk: u16) -> usize {
        let n = self.disks as usize;
        let start = (pd.q as usize + 1) % n;
        let pos = (disk as usize + n - start) % n;
        let p_pos = (pd.p as usize + n - start) % n;
        pos - usize::from(p_pos < pos)
    }

    /// Where array sector `sector` lives: the stripe, the member and the member sector.
    #[inline]
    pub(crate) fn locate(&self, sector: u64) -> Located {
        let chunk_no = sector >> self.chunk_shift;
        let off = sector & (self.chunk_sectors - 1);
        let d = self.data_disks as u64;
        let stripe = chunk_no / d;
        let k = (chunk_no % d) as u16;
        let pd = self.parity_disks(stripe);
        Located {
            stripe,
            index: k,
            member: MemberIdx(self.data_disk(pd, k)),
            member_sector: (stripe << self.chunk_shift) + off,
            left_in_chunk: self.chunk_sectors - off,
            parity: pd,
        }
    }
}

/// [`ParityMap::locate`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Located {
    pub stripe: u64,
    /// The data index in the stripe.
    pub index: u16,
    pub member: MemberIdx,
    pub member_sector: u64,
    /// Sectors from there to the end of the chunk.
    pub left_in_chunk: u64,
    pub parity: StripeDisks,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A spec table: per stripe, per disk: "P", "Q" or the array chunk number.
    fn table(map: &ParityMap, stripes: u64) -> Vec<Vec<String>> {
        let mut rows = vec![vec![String::new(); map.disks as usize]; stripes as usize];
        for (s, row) in rows.iter_mut().enumerate() {
            let pd = map.parity_disks(s as u64);
            row[pd.p as usize] = "P".into();
            if map.has_q() {
                row[pd.q as usize] = "Q".into();
            }
        }
        for c in 0..stripes * map.data_disks as u64 {
            let l = map.locate(c * map.chunk_sectors);
            assert_eq!(l.member_sector, l.stripe * map.chunk_sectors);
            let cell = &mut rows[l.stripe as usize][l.member.idx()];
            assert!(cell.is_empty(), "chunk {c} lands on a taken cell");
            *cell = c.to_string();
        }
        rows
    }

    fn parse(spec: &str) -> Vec<Vec<String>> {
        spec.lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|c| c.trim_start_matches('D').to_string())
                    .collect()
            })
            .collect()
    }

    /// The verified tables of md-personalities.md §5.1 (4 disks) and §6.1 (5 disks).
    #[test]
    fn placement_matches_the_verified_tables() {
        let raid5: [(u32, &str); 6] = [
            (0, "D0 D1 D2 P\nD3 D4 P D5\nD6 P D7 D8\nP D9 D10 D11"),
            (1, "P D0 D1 D2\nD3 P D4 D5\nD6 D7 P D8\nD9 D10 D11 P"),
            (2, "D0 D1 D2 P\nD4 D5 P D3\nD8 P D6 D7\nP D9 D10 D11"),
            (3, "P D0 D1 D2\nD5 P D3 D4\nD7 D8 P D6\nD9 D10 D11 P"),
            (4, "P D0 D1 D2\nP D3 D4 D5\nP D6 D7 D8\nP D9 D10 D11"),
            (5, "D0 D1 D2 P\nD3 D4 D5 P\nD6 D7 D8 P\nD9 D10 D11 P"),
        ];
        for (layout, spec) in raid5 {
            let m = ParityMap::new(5, layout, 4, 8).unwrap();
            assert_eq!(table(&m, 4), parse(spec), "raid5 layout {layout}");
        }
        // raid4 is parity-last whatever the word.
        for layout in [0, 2, 5] {
            let m = ParityMap::new(4, layout, 4, 8).unwrap();
            assert_eq!(table(&m, 4), parse(raid5[5].1), "raid4 layout {layout}");
        }
        let raid6: [(u32, &str); 11] = [
            (
                0,
                "Q D0 D1 D2 P\nD3 D4 D5 P Q\nD6 D7 P Q D8\nD9 P Q D10 D11\nP Q D12 D13 D14",
            ),
            (
                1,
                "P Q D0 D1 D2\nD3 P Q D4 D5\nD6 D7 P Q D8\nD9 D10 D11 P Q\nQ D12 D13 D14 P",
            ),
            (
                2,
                "Q D0 D1 D2 P\nD3 D4 D5 P Q\nD7 D8 P Q D6\nD11 P Q D9 D10\nP Q D12 D13 D14",
            ),
            (
                3,
                "P Q D0 D1 D2\nD5 P Q D3 D4\nD7 D8 P Q D6\nD9 D10 D11 P Q\nQ D12 D13 D14 P",
            ),
            (
                4,
                "P Q D0 D1 D2\nP Q D3 D4 D5\nP Q D6 D7 D8\nP Q D9 D10 D11\nP Q D12 D13 D14",
            ),
            (
                5,
                "D0 D1 D2 P Q\nD3 D4 D5 P Q\nD6 D7 D8 P Q\nD9 D10 D11 P Q\nD12 D13 D14 P Q",
            ),
            (
                16,
                "D0 D1 D2 P Q\nD3 D4 P D5 Q\nD6 P D7 D8 Q\nP D9 D10 D11 Q\nD12 D13 D14 P Q",
            ),
            (
                17,
                "P D0 D1 D2 Q\nD3 P D4 D5 Q\nD6 D7 P D8 Q\nD9 D10 D11 P Q\nP D12 D13 D14 Q",
            ),
            (
                18,
                "D0 D1 D2 P Q\nD4 D5 P D3 Q\nD8 P D6 D7 Q\nP D9 D10 D11 Q\nD12 D13 D14 P Q",
            ),
            (
                19,
                "P D0 D1 D2 Q\nD5 P D3 D4 Q\nD7 D8 P D6 Q\nD9 D10 D11 P Q\nP D12 D13 D14 Q",
            ),
            (
                20,
                "P D0 D1 D2 Q\nP D3 D4 D5 Q\nP D6 D7 D8 Q\nP D9 D10 D11 Q\nP D12 D13 D14 Q",
            ),
        ];
        for (layout, spec) in raid6 {
            let m = ParityMap::new(6, layout, 5, 8).unwrap();
            assert_eq!(table(&m, 5), parse(spec), "raid6 layout {layout}");
        }
    }

    /// §6.2's verified vector: 5 disks, layout 2, stripe 0 — data on disks 1..3 in slots 0..2.
    #[test]
    fn q_slots_of_the_verified_vector() {
        let m = ParityMap::new(6, 2, 5, 8).unwrap();
        let pd = m.parity_disks(0);
        assert_eq!((pd.p, pd.q), (4, 0));
        let slots: Vec<usize> = (1..4).map(|d| m.q_slot(pd, d)).collect();
        assert_eq!(slots, [0, 1, 2]);
    }

    #[test]
    fn names_parse_as_mdadm_and_ddf_is_refused() {
        assert_eq!(parse_layout(5, "left-symmetric").unwrap(), 2);
        assert_eq!(parse_layout(5, "RA").unwrap(), 1);
        assert_eq!(parse_layout(5, "parity-last").unwrap(), 5);
        assert_eq!(parse_layout(5, "ddf-N-restart").unwrap(), 0);
        assert_eq!(parse_layout(6, "left-symmetric-6").unwrap(), 18);
        assert_eq!(parse_layout(6, "parity-first-6").unwrap(), 20);
        assert_eq!(parse_layout(6, "3").unwrap(), 3);
        let e = parse_layout(6, "ddf-zero-restart").unwrap_err().to_string();
        assert!(e.contains("DDF"), "{e}");
        assert!(parse_layout(6, "9").is_err());
        assert!(parse_layout(5, "left-symmetric-6").is_err());
        assert!(parse_layout(5, "16").is_err());
        assert!(parse_layout(5, "near").is_err());
        for w in (0..=5).chain(16..=20) {
            let name = layout_name(6, w).unwrap();
            assert_eq!(parse_layout(6, name).unwrap(), w);
        }
        assert!(ParityMap::new(6, 9, 5, 8).is_err());
        assert!(ParityMap::new(6, 2, 3, 8).is_err());
        assert!(ParityMap::new(5, 2, 2, 8).is_err());
    }

    /// Reference model from the spec's formulas, written independently of the code above: the
    /// members of stripe `s` in the order P, Q, data 0..d.
    fn reference(level: i32, layout: u32, n: u64, s: u64) -> Vec<u64> {
        let d = if level == 6 { n - 2 } else { n - 1 };
        let r5 = |layout: u32, n: u64| -> (u64, Vec<u64>) {
            let pd = match layout {
                0 | 2 => n - 1 - s % n,
                1 | 3 => s % n,
                4 => 0,
                _ => n - 1,
            };
            let data = (0..n - 1)
                .map(|k| match layout {
                    0 | 1 => {
                        if k < pd {
                            k
                        } else {
                            k + 1
                        }
                    }
                    2 | 3 => (pd + 1 + k) % n,
                    4 => k + 1,
                    _ => k,
                })
                .collect();
            (pd, data)
        };
        if level != 6 {
            let (pd, data) = r5(if level == 4 { 5 } else { layout }, n);
            return [vec![pd], data].concat();
        }
        let (pd, qd, data): (u64, u64, Vec<u64>) = match layout {
            0..=3 => {
                let pd = if layout.is_multiple_of(2) { n - 1 - s % n } else { s % n };
                let data = (0..d)
                    .map(|k| {
                        if layout >= 2 {
                            (pd + 2 + k) % n
                        } else if pd == n - 1 {
                            k + 1
                        } else if k < pd {
                            k
                        } else {
                            k + 2
                        }
                    })
                    .collect();
                (pd, (pd + 1) % n, data)
            }
            4 => (0, 1, (0..d).map(|k| k + 2).collect()),
            5 => (n - 2, n - 1, (0..d).collect()),
            16..=19 => {
                let (pd, data) = r5(layout - 16, n - 1);
                (pd, n - 1, data)
            }
            _ => (0, n - 1, (0..d).map(|k| k + 1).collect()),
        };
        [vec![pd, qd], data].concat()
    }

    proptest! {
        #[test]
        fn every_layout_matches_the_reference_and_is_a_bijection(
            pick in 0usize..18,
            extra in 0u64..8,
            chunk_shift in 3u32..8,
            probes in prop::collection::vec((0u64..1000, 0u64..256), 1..30),
        ) {
            let (level, layout) = match pick {
                0 => (4, 0),
                1..=6 => (5, pick as u32 - 1),
                7..=12 => (6, pick as u32 - 7),
                _ => (6, pick as u32 + 3),
            };
            let n = if level == 6 { 4 + extra } else { 3 + extra };
            let chunk = 1u64 << chunk_shift;
            let m = ParityMap::new(level, layout, n as u16, chunk).unwrap();
            for (s, off) in probes {
                let off = off % chunk;
                let want = reference(level, layout, n, s);
                let pd = m.parity_disks(s);
                prop_assert_eq!(pd.p as u64, want[0]);
                let data_at = if level == 6 { prop_assert_eq!(pd.q as u64, want[1]); 2 } else { 1 };
                let mut seen = vec![false; n as usize];
                seen[pd.p as usize] = true;
                if level == 6 { seen[pd.q as usize] = true; }
                let mut slots = vec![false; m.data_disks as usize];
                for k in 0..m.data_disks as u64 {
                    let sector = (s * m.data_disks as u64 + k) * chunk + off;
                    let l = m.locate(sector);
                    prop_assert_eq!((l.stripe, l.index as u64), (s, k));
                    prop_assert_eq!(l.member.0 as u64, want[data_at + k as usize]);
                    prop_assert_eq!(l.member_sector, s * chunk + off);
                    prop_assert_eq!(l.left_in_chunk, chunk - off);
                    prop_assert!(!seen[l.member.idx()]);
                    seen[l.member.idx()] = true;
                    prop_assert_eq!(m.data_index(pd, l.member.0), Some(k as u16));
                    if level == 6 {
                        let slot = m.q_slot(pd, l.member.0);
                        let lib = keel_parity::md_q_slot(n as usize, pd.p as usize, pd.q as usize, l.member.idx()).unwrap();
                        prop_assert_eq!(Some(slot), lib);
                        prop_assert!(!slots[slot]);
                        slots[slot] = true;
                    }
                }
            }
        }
    }
}
