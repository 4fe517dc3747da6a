//! Address math of the striped personalities (`shared/specs/md-personalities.md` §2, §3, §7):
//! linear concatenation, raid0 zones with both layouts, raid10 near/far/offset copies. Pure
//! functions over sectors (512 bytes), so they can be property-tested against reference models
//! and used on the data path without allocation.

use crate::MdError;

/// A member's position in the array (its role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberIdx(pub u16);

/// Where one array sector lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub member: MemberIdx,
    /// Sector on the member, relative to its data_offset.
    pub sector: u64,
}

/// Concatenation of members in role order.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Cumulative end sector of each member.
    ends: Vec<u64>,
}

impl Linear {
    /// Members of these sizes (sectors, already rounded as wanted).
    pub fn new(member_sectors: &[u64]) -> Result<Linear, MdError> {
        if member_sectors.is_empty() || member_sectors.contains(&0) {
            return Err(MdError::bad("members", "linear needs members of non-zero size"));
        }
        let mut end = 0;
        Ok(Linear {
            ends: member_sectors
                .iter()
                .map(|s| {
                    end += s;
                    end
                })
                .collect(),
        })
    }

    /// Array size in sectors.
    pub fn size_sectors(&self) -> u64 {
        *self.ends.last().expect("non-empty")
    }

    /// The place of `array_sector` and how many sectors stay on that member from there.
    pub fn map(&self, array_sector: u64) -> (Place, u64) {
        let i = self.ends.partition_point(|&e| e <= array_sector);
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (
            Place {
                member: MemberIdx(i as u16),
                sector: array_sector - start,
            },
            self.ends[i] - array_sector,
        )
    }
}

/// raid0 layout for multi-zone arrays (superblock `layout` with feature 0x1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raid0Layout {
    /// 1: member = (array chunk) mod zone members.
    Original,
    /// 2: member = (zone chunk) mod zone members.
    Alternate,
}

#[derive(Debug, Clone)]
struct Zone {
    /// Array sector where the zone starts / ends.
    start: u64,
    end: u64,
    /// Member sector where the zone starts on each of its members.
    dev_start: u64,
    members: Vec<MemberIdx>,
}

/// raid0 over members of possibly different sizes.
#[derive(Debug, Clone)]
pub struct Raid0 {
    chunk_sectors: u64,
    layout: Raid0Layout,
    zones: Vec<Zone>,
}

impl Raid0 {
    /// Builds the zones. `chunk_sectors` must be a power of two ≥ 8 (4 KiB).
    pub fn new(member_sectors: &[u64], chunk_sectors: u64, layout: Raid0Layout) -> Result<Raid0, MdError> {
        if chunk_sectors < 8 || !chunk_sectors.is_power_of_two() {
            return Err(MdError::bad(
                "chunk",
                format!("{chunk_sectors} sectors is not a power of two ≥ 8"),
            ));
        }
        if member_sectors.is_empty() {
            return Err(MdError::bad("members", "raid0 needs at least one member"));
        }
        let rounded: Vec<u64> = member_sectors
            .iter()
            .map(|s| s / chunk_sectors * chunk_sectors)
            .collect();
        if rounded.contains(&0) {
            return Err(MdError::bad("members", "a member is smaller than one chunk"));
        }
        let mut sizes: Vec<u64> = rounded.clone();
        sizes.sort_unstable();
        sizes.dedup();
        let mut zones = Vec::new();
        let (mut array_start, mut dev_start) = (0u64, 0u64);
        for &size in &sizes {
            let members: Vec<MemberIdx> = (0..rounded.len())
                .filter(|&i| rounded[i] > dev_start)
                .map(|i| MemberIdx(i as u16))
                .collect();
            let len = (size - dev_start) * members.len() as u64;
            zones.push(Zone {
                start: array_start,
                end: array_start + len,
                dev_start,
                members,
            });
            array_start += len;
            dev_start = size;
        }
        Ok(Raid0 {
            chunk_sectors,
            layout,
            zones,
        })
    }

    /// Array size in sectors.
    pub fn size_sectors(&self) -> u64 {
        self.zones.last().map(|z| z.end).unwrap_or(0)
    }

    /// For one zone over every member in role order: (log2 chunk sectors, members) — chunk `c`
    /// is chunk `c / members` of member `c % members` (both layouts agree on one zone).
    pub fn single_zone(&self) -> Option<(u32, usize)> {
        match self.zones.as_slice() {
            [z] if z.start == 0 && z.dev_start == 0 => {
                let in_order = z.members.iter().enumerate().all(|(i, m)| m.0 as usize == i);
                in_order.then(|| (self.chunk_sectors.trailing_zeros(), z.members.len()))
            }
            _ => None,
        }
    }

    /// [`Raid0::single_zone`] over a power-of-two number of members: (log2 chunk sectors, log2
    /// members), the shape a data path can map with shifts alone.
    pub fn pow2_single_zone(&self) -> Option<(u32, u32)> {
        self.single_zone()
            .filter(|(_, n)| n.is_power_of_two())
            .map(|(chunk_shift, n)| (chunk_shift, n.trailing_zeros()))
    }

    /// Number of zones.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// The place of `array_sector` and the sectors left in its chunk. On the I/O path: the
    /// chunk is a power of two (shifts and masks), and so is the member count of most zones.
    #[inline]
    pub fn map(&self, array_sector: u64) -> (Place, u64) {
        let z = if self.zones.len() == 1 {
            &self.zones[0]
        } else {
            &self.zones[self.zones.partition_point(|z| z.end <= array_sector)]
        };
        let chunk = self.chunk_sectors;
        let shift = chunk.trailing_zeros();
        let zsect = array_sector - z.start;
        let chunk_off = array_sector & (chunk - 1);
        let zchunk = zsect >> shift;
        let nb = z.members.len() as u64;
        let pick = match self.layout {
            Raid0Layout::Original => array_sector >> shift,
            Raid0Layout::Alternate => zchunk,
        };
        let (idx, row) = if nb.is_power_of_two() {
            let s = nb.trailing_zeros();
            (pick & (nb - 1), zchunk >> s)
        } else {
            (pick % nb, zchunk / nb)
        };
        let sector = z.dev_start + (row << shift) + chunk_off;
        (
            Place {
                member: z.members[idx as usize],
                sector,
            },
            chunk - chunk_off,
        )
    }
}

/// Most copies a raid10 chunk can have here (nc × fc ≤ 16 covers every practical layout).
pub const MAX_COPIES: usize = 16;

/// raid10 near/far/offset layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raid10 {
    pub near: u32,
    pub far: u32,
    pub offset: bool,
    pub raid_disks: u32,
    pub chunk_sectors: u64,
    /// Usable sectors of each member, a multiple of the chunk.
    pub component_sectors: u64,
}

impl Raid10 {
    /// Decodes the superblock `layout` word and checks it against the disk count.
    pub fn new(layout: u32, raid_disks: u32, chunk_sectors: u64, component_sectors: u64) -> Result<Raid10, MdError> {
        let near = layout & 0xFF;
        let far = (layout >> 8) & 0xFF;
        let offset = layout & 0x1_0000 != 0;
        let far_set_mode = (layout >> 17) & 0x3;
        if layout >> 19 != 0 || far_set_mode != 0 {
            return Err(MdError::bad(
                "layout",
                format!("{layout:#x}: unsupported raid10 layout bits"),
            ));
        }
        let copies = near * far;
        if near == 0 || far == 0 || copies < 2 || copies > raid_disks || copies as usize > MAX_COPIES {
            return Err(MdError::bad(
                "layout",
                format!("{near} near x {far} far copies do not fit {raid_disks} disks (need 2 ≤ copies ≤ disks)"),
            ));
        }
        if chunk_sectors < 8 || !chunk_sectors.is_power_of_two() {
            return Err(MdError::bad(
                "chunk",
                format!("{chunk_sectors} sectors is not a power of two ≥ 8"),
            ));
        }
        let component_sectors = component_sectors / chunk_sectors * chunk_sectors;
        if component_sectors / chunk_sectors < far as u64 {
            return Err(MdError::bad("members", "members too small for the far copies"));
        }
        Ok(Raid10 {
            near,
            far,
            offset,
            raid_disks,
            chunk_sectors,
            component_sectors,
        })
    }

    /// mdadm's layout word for `nK` / `fK` / `oK`.
    pub fn layout_word(near: u32, far: u32, offset: bool) -> u32 {
        near | (far << 8) | if offset { 0x1_0000 } else { 0 }
    }

    fn component_chunks(&self) -> u64 {
        self.component_sectors / self.chunk_sectors
    }

    /// Array size in sectors.
    pub fn size_sectors(&self) -> u64 {
        (self.component_chunks() / self.far as u64) * self.raid_disks as u64 / self.near as u64 * self.chunk_sectors
    }

    /// Every copy of `array_sector` (first copy first) into `out`; returns how many and the
    /// sectors left in the chunk.
    pub fn map(&self, array_sector: u64, out: &mut [Place; MAX_COPIES]) -> (usize, u64) {
        let chunk = self.chunk_sectors;
        let n = self.raid_disks as u64;
        let (nc, fc) = (self.near as u64, self.far as u64);
        let vchunk = array_sector / chunk;
        let off = array_sector % chunk;
        let c = vchunk * nc;
        let mut dev = c % n;
        let mut row = c / n;
        if self.offset {
            row *= fc;
        }
        let stride = if self.offset {
            chunk
        } else {
            (self.component_chunks() / fc) * chunk
        };
        let mut k = 0;
        for _ in 0..nc {
            let sector = row * chunk + off;
            for f in 0..fc {
                out[k] = Place {
                    member: MemberIdx(((dev + f * nc) % n) as u16),
                    sector: sector + f * stride,
                };
                k += 1;
            }
            dev += 1;
            if dev == n {
                dev = 0;
                row += if self.offset { fc } else { 1 };
            }
        }
        (k, chunk - off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const CHUNK: u64 = 8; // 4 KiB

    #[test]
    fn raid0_verified_example() {
        // 1793, 3840, 5888 chunks of 4 KiB (spec §3.3).
        let sizes = [1793 * CHUNK, 3840 * CHUNK, 5888 * CHUNK];
        let at = |r: &Raid0, chunk: u64| {
            let (p, _) = r.map(chunk * CHUNK);
            (p.member.0, p.sector / CHUNK)
        };
        let orig = Raid0::new(&sizes, CHUNK, Raid0Layout::Original).unwrap();
        let alt = Raid0::new(&sizes, CHUNK, Raid0Layout::Alternate).unwrap();
        assert_eq!(orig.zone_count(), 3);
        // 46084 KiB as /proc/mdstat shows (5379 + 4094 + 2048 = 11521 chunks).
        assert_eq!(orig.size_sectors(), 46084 * 2);
        for (chunk, o, a) in [
            (0, (0, 0), (0, 0)),
            (1, (1, 0), (1, 0)),
            (2, (2, 0), (2, 0)),
            (5378, (2, 1792), (2, 1792)),
            (5379, (2, 1793), (1, 1793)),
            (5380, (1, 1793), (2, 1793)),
            (9469, (2, 3838), (1, 3838)),
            (9473, (2, 3840), (2, 3840)),
        ] {
            assert_eq!(at(&orig, chunk), o, "original chunk {chunk}");
            assert_eq!(at(&alt, chunk), a, "alternate chunk {chunk}");
        }
    }

    /// `k@r` cells of the spec's verified raid10 tables: (array chunk, disk, row).
    fn check_raid10(layout: u32, disks: u32, cells: &[(u64, u16, u64)]) {
        let r = Raid10::new(layout, disks, CHUNK, 3840 * CHUNK).unwrap();
        let mut out = [Place {
            member: MemberIdx(0),
            sector: 0,
        }; MAX_COPIES];
        for &(chunk, disk, row) in cells {
            let (n, _) = r.map(chunk * CHUNK, &mut out);
            assert!(
                out[..n].iter().any(|p| p.member.0 == disk && p.sector == row * CHUNK),
                "layout {layout:#x} on {disks}: chunk {chunk} not at disk {disk} row {row}: {:?}",
                &out[..n]
            );
        }
    }

    #[test]
    fn raid10_verified_tables() {
        let n2 = Raid10::layout_word(2, 1, false);
        let f2 = Raid10::layout_word(1, 2, false);
        let o2 = Raid10::layout_word(1, 2, true);
        let n3 = Raid10::layout_word(3, 1, false);
        assert_eq!((n2, f2, o2), (0x102, 513, 66049));
        check_raid10(
            n2,
            4,
            &[
                (0, 0, 0),
                (2, 0, 1),
                (4, 0, 2),
                (0, 1, 0),
                (1, 2, 0),
                (3, 3, 1),
                (5, 3, 2),
            ],
        );
        check_raid10(
            n2,
            3,
            &[
                (0, 0, 0),
                (1, 0, 1),
                (3, 0, 2),
                (4, 0, 3),
                (2, 1, 1),
                (5, 1, 3),
                (1, 2, 0),
                (2, 2, 1),
            ],
        );
        check_raid10(
            f2,
            4,
            &[
                (0, 0, 0),
                (4, 0, 1),
                (8, 0, 2),
                (3, 0, 1920),
                (7, 0, 1921),
                (0, 1, 1920),
                (2, 3, 1920),
            ],
        );
        check_raid10(
            o2,
            4,
            &[
                (0, 0, 0),
                (3, 0, 1),
                (4, 0, 2),
                (7, 0, 3),
                (0, 1, 1),
                (5, 1, 2),
                (1, 2, 1),
                (6, 3, 3),
            ],
        );
        check_raid10(
            n3,
            4,
            &[
                (0, 0, 0),
                (1, 0, 1),
                (2, 0, 2),
                (4, 0, 3),
                (1, 3, 0),
                (3, 2, 2),
                (5, 3, 3),
            ],
        );
        assert_eq!(
            Raid10::new(n2, 4, CHUNK, 3840 * CHUNK).unwrap().size_sectors(),
            30720 * 2
        );
        assert_eq!(
            Raid10::new(n2, 3, CHUNK, 3840 * CHUNK).unwrap().size_sectors(),
            23040 * 2
        );
        assert_eq!(
            Raid10::new(n3, 4, CHUNK, 3840 * CHUNK).unwrap().size_sectors(),
            20480 * 2
        );
        assert_eq!(
            Raid10::new(f2, 4, CHUNK, 3840 * CHUNK).unwrap().size_sectors(),
            30720 * 2
        );
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(Raid10::new(Raid10::layout_word(1, 1, false), 4, CHUNK, 1 << 20).is_err());
        assert!(Raid10::new(Raid10::layout_word(3, 2, false), 4, CHUNK, 1 << 20).is_err());
        assert!(Raid10::new(0x2_0102, 4, CHUNK, 1 << 20).is_err());
        assert!(Raid10::new(0x102, 4, 12, 1 << 20).is_err());
        assert!(Raid0::new(&[100, 200], 12, Raid0Layout::Original).is_err());
        assert!(Raid0::new(&[4, 200], 8, Raid0Layout::Original).is_err());
        assert!(Linear::new(&[]).is_err());
    }

    #[test]
    fn linear_maps_across_members() {
        let l = Linear::new(&[10, 20, 5]).unwrap();
        assert_eq!(l.size_sectors(), 35);
        assert_eq!(
            l.map(0),
            (
                Place {
                    member: MemberIdx(0),
                    sector: 0
                },
                10
            )
        );
        assert_eq!(
            l.map(9),
            (
                Place {
                    member: MemberIdx(0),
                    sector: 9
                },
                1
            )
        );
        assert_eq!(
            l.map(10),
            (
                Place {
                    member: MemberIdx(1),
                    sector: 0
                },
                20
            )
        );
        assert_eq!(
            l.map(34),
            (
                Place {
                    member: MemberIdx(2),
                    sector: 4
                },
                1
            )
        );
    }

    /// Reference raid0 model: walk the array chunk by chunk and hand each chunk to the next
    /// member of its zone that still has room, zone by zone (the definition of striping).
    fn raid0_reference(sizes: &[u64], layout: Raid0Layout) -> Vec<(u16, u64)> {
        let chunks: Vec<u64> = sizes.iter().map(|s| s / CHUNK).collect();
        let mut distinct: Vec<u64> = chunks.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut out = Vec::new();
        let mut prev = 0;
        for &sz in &distinct {
            let members: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i] > prev).collect();
            let nb = members.len() as u64;
            let zone_start = out.len() as u64;
            for zchunk in 0..(sz - prev) * nb {
                let array_chunk = zone_start + zchunk;
                let idx = match layout {
                    Raid0Layout::Original => array_chunk % nb,
                    Raid0Layout::Alternate => zchunk % nb,
                };
                out.push((members[idx as usize] as u16, prev + zchunk / nb));
            }
            prev = sz;
        }
        out
    }

    proptest! {
        #[test]
        fn raid0_matches_reference_and_is_a_bijection(
            sizes in prop::collection::vec(1u64..64, 1..6),
            alternate: bool,
            probes in prop::collection::vec((any::<prop::sample::Index>(), 0u64..CHUNK), 1..40),
        ) {
            let sizes: Vec<u64> = sizes.iter().map(|c| c * CHUNK + 3).collect(); // ragged ends get rounded off
            let layout = if alternate { Raid0Layout::Alternate } else { Raid0Layout::Original };
            let r = Raid0::new(&sizes, CHUNK, layout).unwrap();
            let reference = raid0_reference(&sizes, layout);
            prop_assert_eq!(r.size_sectors(), reference.len() as u64 * CHUNK);
            let mut seen = HashSet::new();
            for (i, &(m, c)) in reference.iter().enumerate() {
                let (p, left) = r.map(i as u64 * CHUNK);
                prop_assert_eq!((p.member.0, p.sector), (m, c * CHUNK));
                prop_assert_eq!(left, CHUNK);
                prop_assert!(p.sector + CHUNK <= sizes[m as usize] / CHUNK * CHUNK);
                prop_assert!(seen.insert((m, c)));
            }
            for (idx, off) in probes {
                let chunk = idx.index(reference.len()) as u64;
                let (p, left) = r.map(chunk * CHUNK + off);
                let (m, c) = reference[chunk as usize];
                prop_assert_eq!((p.member.0, p.sector), (m, c * CHUNK + off));
                prop_assert_eq!(left, CHUNK - off);
            }
        }

        #[test]
        fn raid10_copies_are_distinct_in_bounds_and_never_shared(
            disks in 2u32..9, near in 1u32..4, far in 1u32..4, offset: bool, comp_chunks in 8u64..64,
        ) {
            prop_assume!(near * far >= 2 && near * far <= disks);
            let far = if offset && far == 1 { 2 } else { far };
            prop_assume!(near * far <= disks);
            let r = Raid10::new(Raid10::layout_word(near, far, offset), disks, CHUNK, comp_chunks * CHUNK).unwrap();
            let mut used = HashSet::new();
            let mut out = [Place { member: MemberIdx(0), sector: 0 }; MAX_COPIES];
            for chunk in 0..r.size_sectors() / CHUNK {
                let (n, left) = r.map(chunk * CHUNK + 3, &mut out);
                prop_assert_eq!(n as u32, near * far);
                prop_assert_eq!(left, CHUNK - 3);
                let devs: HashSet<u16> = out[..n].iter().map(|p| p.member.0).collect();
                prop_assert_eq!(devs.len(), n, "copies share a disk: {:?}", &out[..n]);
                for p in &out[..n] {
                    prop_assert!((p.member.0 as u32) < disks);
                    prop_assert!(p.sector < r.component_sectors, "beyond the member: {:?}", p);
                    prop_assert!(used.insert((p.member.0, p.sector - 3)), "slot used twice: {:?}", p);
                }
            }
        }
    }
}
