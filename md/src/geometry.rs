//! An array's immutable geometry: how array sectors map to members. Built by the control path
//! when the array starts, shared by every core and by the sync engine through an `Arc`; never
//! changes while the array runs (member *states* live in [`crate::shared`]).

use crate::layout::{Linear, MemberIdx, Place, Raid0, Raid10, MAX_COPIES};

/// How array sectors map to members.
#[derive(Debug)]
pub(crate) enum Mapping {
    Linear(Linear),
    Raid0(Raid0),
    /// Every member holds every sector at the same member sector.
    Raid1 {
        members: u16,
    },
    Raid10(Raid10),
}

/// What every core needs to map I/O.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub mapping: Mapping,
    /// Array size in 512-byte sectors.
    pub size_sectors: u64,
    /// Where data starts on every member, in 512-byte sectors.
    pub data_offset_sectors: u64,
    /// log2(array block size / 512).
    pub block_shift: u32,
    /// log2(member block size / 512), per role.
    pub member_shifts: Vec<u32>,
}

impl Geometry {
    /// Whether the level keeps copies (raid1, raid10): writes are gated, members may fail.
    #[inline]
    pub(crate) fn redundant(&self) -> bool {
        matches!(self.mapping, Mapping::Raid1 { .. } | Mapping::Raid10(_))
    }

    /// Striped levels (linear, raid0): the one place of `array_sector` and the sectors left
    /// before the next member/chunk boundary.
    #[inline]
    pub(crate) fn map(&self, array_sector: u64) -> (Place, u64) {
        match &self.mapping {
            Mapping::Linear(l) => l.map(array_sector),
            Mapping::Raid0(r) => r.map(array_sector),
            _ => unreachable!("copy levels are mapped with copies()"),
        }
    }

    /// Copy levels (raid1, raid10): every copy of `array_sector` (first copy first) into `out`;
    /// returns how many and the sectors left before the next chunk boundary (raid1: to the end
    /// of the array).
    #[inline]
    pub(crate) fn copies(&self, array_sector: u64, out: &mut [Place; MAX_COPIES]) -> (usize, u64) {
        match &self.mapping {
            Mapping::Raid1 { members } => {
                let n = (*members as usize).min(MAX_COPIES);
                for (i, p) in out.iter_mut().enumerate().take(n) {
                    *p = Place {
                        member: MemberIdx(i as u16),
                        sector: array_sector,
                    };
                }
                (n, self.size_sectors - array_sector)
            }
            Mapping::Raid10(r) => r.map(array_sector, out),
            _ => unreachable!("striped levels are mapped with map()"),
        }
    }

    /// Whether an array whose members in `alive` (per role) still work holds every sector:
    /// striped levels need every member, raid1 one, raid10 one of each copy set.
    pub(crate) fn operational(&self, alive: impl Fn(usize) -> bool) -> bool {
        match &self.mapping {
            Mapping::Linear(_) | Mapping::Raid0(_) => (0..self.member_shifts.len()).all(alive),
            Mapping::Raid1 { members } => (0..*members as usize).any(alive),
            Mapping::Raid10(r) => {
                // Copy sets repeat with period lcm(n, near) chunks of array space; walking
                // `raid_disks` consecutive chunks visits every set of the near layout, and the far
                // copies only add members.
                let mut out = [Place {
                    member: MemberIdx(0),
                    sector: 0,
                }; MAX_COPIES];
                let chunks = (r.raid_disks as u64).min(self.size_sectors / r.chunk_sectors);
                (0..chunks).all(|c| {
                    let (k, _) = r.map(c * r.chunk_sectors, &mut out);
                    out[..k].iter().any(|p| alive(p.member.0 as usize))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(mapping: Mapping, size: u64, members: usize) -> Geometry {
        Geometry {
            mapping,
            size_sectors: size,
            data_offset_sectors: 2048,
            block_shift: 0,
            member_shifts: vec![0; members],
        }
    }

    #[test]
    fn raid1_copies_and_survival() {
        let g = geo(Mapping::Raid1 { members: 3 }, 1000, 3);
        let mut out = [Place {
            member: MemberIdx(0),
            sector: 0,
        }; MAX_COPIES];
        let (k, left) = g.copies(10, &mut out);
        assert_eq!((k, left), (3, 990));
        assert!(out[..3].iter().all(|p| p.sector == 10));
        assert!(g.operational(|m| m == 2));
        assert!(!g.operational(|_| false));
    }

    #[test]
    fn raid10_survival_by_copy_set() {
        // 4 disks, near 2: sets {0,1} and {2,3}.
        let r = Raid10::new(Raid10::layout_word(2, 1, false), 4, 128, 128 * 100).unwrap();
        let size = r.size_sectors();
        let g = geo(Mapping::Raid10(r), size, 4);
        assert!(g.operational(|m| m != 0 && m != 2));
        assert!(!g.operational(|m| m != 0 && m != 1));
        // 3 disks, near 2: every pair of adjacent members shares a chunk.
        let r = Raid10::new(Raid10::layout_word(2, 1, false), 3, 128, 128 * 100).unwrap();
        let size = r.size_sectors();
        let g = geo(Mapping::Raid10(r), size, 3);
        assert!(g.operational(|m| m != 1));
        assert!(!g.operational(|m| m == 0));
    }
}
