//! raid10: near, far and offset copies over any number of members
//! (`shared/specs/md-personalities.md` §7). Survives while every copy set keeps an in-sync
//! member; has resync, recovery onto spares, check/repair and the write-intent bitmap (by
//! default). The data path and sync step are `mirror`'s.

use std::sync::Arc;

use crate::geometry::StartRequest;
use crate::layout::{check_chunk, MemberIdx, Place, MAX_COPIES};
use crate::mirror::{Copies, MirrorLayout};
use crate::personality::{Caps, Layout, Personality, PlanRequest, SbShape, MAX_MEMBERS};
use crate::superblock::Superblock;
use crate::MdError;

/// The raid10 personality.
pub(crate) struct Raid10Personality;

/// Its descriptor (listed in [`crate::personality`]'s registry).
pub(crate) static RAID10: Raid10Personality = Raid10Personality;

static CAPS: Caps = Caps {
    min_members: 2,
    max_members: MAX_MEMBERS,
    failures: 1,
    resync: true,
    spares: true,
    bitmap: true,
    default_bitmap: true,
    chunked: true,
};

impl Personality for Raid10Personality {
    fn level(&self) -> i32 {
        10
    }

    fn name(&self) -> &'static str {
        "raid10"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["10"]
    }

    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    /// "n2", "f2", "o2", "n3"... (default n2).
    fn parse_layout(&self, text: Option<&str>) -> Result<Option<u32>, MdError> {
        match text {
            None => Ok(Some(Raid10::layout_word(2, 1, false))),
            Some(s) => parse_layout(s).map(Some),
        }
    }

    /// The smallest member, rounded to the chunk, is the component; the layout must fit the
    /// members (an `InvalidParam` on `layout` otherwise).
    fn plan(&self, req: &PlanRequest<'_>) -> Result<SbShape, MdError> {
        let word = req.layout.unwrap_or(Raid10::layout_word(2, 1, false));
        let min = req.data_sectors.iter().copied().min().unwrap_or(0);
        let r = Raid10::new(word, req.data_sectors.len() as u32, req.chunk_sectors, min)
            .map_err(|e| MdError::invalid("layout", e.to_string()))?;
        Ok(SbShape {
            size_sectors: r.component_sectors,
            layout: word,
            feature_map: 0,
        })
    }

    /// The layout word, the chunk and the component `size` of the superblock.
    fn start(&self, sb: &Superblock, req: &StartRequest) -> Result<Arc<dyn Layout>, MdError> {
        let chunk = sb.chunk_sectors as u64;
        let block = req.block_sectors();
        if chunk < block {
            return Err(MdError::bad(
                "chunksize",
                format!("{chunk} sectors is below the block size {}", block * 512),
            ));
        }
        let r = Raid10::new(sb.layout, sb.raid_disks, chunk, sb.size_sectors)?;
        let size = r.size_sectors() / block * block;
        Ok(MirrorLayout::new(r, req.geometry(size)))
    }

    fn examine_array_sectors(&self, sb: &Superblock) -> u64 {
        let copies = ((sb.layout & 0xFF) * ((sb.layout >> 8) & 0xFF)).max(1) as u64;
        sb.size_sectors * sb.raid_disks as u64 / copies
    }

    fn examine_layout_text(&self, sb: &Superblock) -> Option<String> {
        let (near, far) = (sb.layout & 0xFF, (sb.layout >> 8) & 0xFF);
        Some(if sb.layout & 0x1_0000 != 0 {
            format!("offset={far}")
        } else if far > 1 && near == 1 {
            format!("far={far}")
        } else if far > 1 {
            format!("near={near}, far={far}")
        } else {
            format!("near={near}")
        })
    }

    fn detail_layout_text(&self, sb: &Superblock) -> Option<String> {
        Some(layout_text(sb.layout))
    }
}

/// Parses a raid10 layout ("n2", "f2", "o3").
fn parse_layout(s: &str) -> Result<u32, MdError> {
    let bad = || MdError::invalid("layout", format!("'{s}' is not a raid10 layout (n2, f2, o2, n3...)"));
    let (kind, n) = s.split_at(1.min(s.len()));
    let copies: u32 = n.parse().map_err(|_| bad())?;
    if !(2..=16).contains(&copies) {
        return Err(bad());
    }
    match kind {
        "n" => Ok(Raid10::layout_word(copies, 1, false)),
        "f" => Ok(Raid10::layout_word(1, copies, false)),
        "o" => Ok(Raid10::layout_word(1, copies, true)),
        _ => Err(bad()),
    }
}

/// mdadm --detail's text for a raid10 layout word.
fn layout_text(word: u32) -> String {
    let near = word & 0xFF;
    let far = (word >> 8) & 0xFF;
    let offset = word & 0x1_0000 != 0;
    let mut parts = Vec::new();
    if near > 1 {
        parts.push(format!("near={near}"));
    }
    if far > 1 {
        parts.push(format!("{}={far}", if offset { "offset" } else { "far" }));
    }
    parts.join(", ")
}

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
        check_chunk(chunk_sectors)?;
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

impl Copies for Raid10 {
    #[inline]
    fn copies(&self, array_sector: u64, out: &mut [Place; MAX_COPIES]) -> (usize, u64) {
        self.map(array_sector, out)
    }

    fn copy_count(&self) -> usize {
        (self.near * self.far) as usize
    }

    fn roles(&self) -> usize {
        self.raid_disks as usize
    }

    /// Copy sets repeat with period lcm(n, near) chunks of array space; walking `raid_disks`
    /// consecutive chunks visits every set of the near layout, and the far copies only add
    /// members.
    fn survives(&self, live: &dyn Fn(MemberIdx) -> bool) -> bool {
        let mut out = [Place::ZERO; MAX_COPIES];
        let chunks = (self.raid_disks as u64).min(self.size_sectors() / self.chunk_sectors);
        (0..chunks).all(|c| {
            let (k, _) = self.map(c * self.chunk_sectors, &mut out);
            out[..k].iter().any(|p| live(p.member))
        })
    }

    fn chunk_sectors(&self) -> u64 {
        self.chunk_sectors
    }

    fn member_is_array_sector(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const CHUNK: u64 = 8; // 4 KiB

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
    }

    #[test]
    fn layout_texts() {
        assert_eq!(parse_layout("n2").unwrap(), 0x102);
        assert_eq!(parse_layout("f2").unwrap(), 0x201);
        assert_eq!(parse_layout("o2").unwrap(), 0x10201);
        assert!(parse_layout("x2").is_err());
        assert!(parse_layout("n1").is_err());
        assert!(parse_layout("").is_err());
        assert_eq!(layout_text(0x102), "near=2");
        assert_eq!(layout_text(0x10201), "offset=2");
        assert_eq!(RAID10.parse_layout(None).unwrap(), Some(0x102));
    }

    #[test]
    fn survival_by_copy_set() {
        // 4 disks, near 2: sets {0,1} and {2,3}.
        let r = Raid10::new(Raid10::layout_word(2, 1, false), 4, 128, 128 * 100).unwrap();
        assert!(r.survives(&|m| m.0 != 0 && m.0 != 2));
        assert!(!r.survives(&|m| m.0 != 0 && m.0 != 1));
        // 3 disks, near 2: every pair of adjacent members shares a chunk.
        let r = Raid10::new(Raid10::layout_word(2, 1, false), 3, 128, 128 * 100).unwrap();
        assert!(r.survives(&|m| m.0 != 1));
        assert!(!r.survives(&|m| m.0 == 0));
    }

    proptest! {
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
