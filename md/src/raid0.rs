//! raid0: striping in zones over members of possibly different sizes
//! (`shared/specs/md-personalities.md` §3), both multi-zone layouts. No redundancy, every member
//! needed. Each zone is a [`Striping`] (keel-bdev's round-robin arithmetic, the one routes and
//! dm-striped use: shifts and masks for a power of two of members, a multiply by a reciprocal
//! otherwise) of the chunk over the zone's members; the "original" layout turns a zone's leg
//! by the zone's first chunk. The data path is `striped`'s; a one-zone raid0 over members of
//! the array's block size is mapped in the lane's fast step before anything else, and one of
//! up to [`keel_bdev::ROUTE_LEGS`] members publishes a striped [`Route`] while every member is
//! present.

use std::sync::Arc;

use keel_bdev::{ForwardPath, IoCaps, Leg, Route, Striping};

use crate::geometry::{Geometry, StartRequest};
use crate::layout::{check_chunk, MemberIdx, Place};
use crate::personality::{Caps, Layout, Personality, PlanRequest, SbShape, MAX_MEMBERS};
use crate::striped::{OneZone, StripeMap, StripedLayout};
use crate::superblock::{feature, Superblock};
use crate::MdError;

/// The raid0 personality.
pub(crate) struct Raid0Personality;

/// Its descriptor (listed in [`crate::personality`]'s registry).
pub(crate) static RAID0: Raid0Personality = Raid0Personality;

static CAPS: Caps = Caps {
    min_members: 2,
    max_members: MAX_MEMBERS,
    failures: 0,
    resync: false,
    spares: false,
    bitmap: false,
    default_bitmap: false,
    chunked: true,
};

impl Personality for Raid0Personality {
    fn level(&self) -> i32 {
        0
    }

    fn name(&self) -> &'static str {
        "raid0"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["0", "stripe"]
    }

    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    /// "original" (1) or "alternate" (2); None when not given.
    fn parse_layout(&self, text: Option<&str>) -> Result<Option<u32>, MdError> {
        match text {
            None => Ok(None),
            Some("original") | Some("1") => Ok(Some(1)),
            Some("alternate") | Some("2") => Ok(Some(2)),
            Some(l) => Err(MdError::invalid("layout", format!("'{l}' is not a layout of raid0"))),
        }
    }

    /// Every member's whole chunks; the superblock's `size` is the smallest member rounded to
    /// the chunk. The layout is recorded (feature RAID0_LAYOUT) when asked for, or when the
    /// members make more than one zone (then "original", mdadm's default).
    fn plan(&self, req: &PlanRequest<'_>) -> Result<SbShape, MdError> {
        let chunk = req.chunk_sectors;
        let layout = match req.layout {
            Some(2) => Raid0Layout::Alternate,
            _ => Raid0Layout::Original,
        };
        let r = Raid0::new(req.data_sectors, chunk, layout)?;
        let min = req.data_sectors.iter().copied().min().unwrap_or(0);
        let (feature_map, word) = match (req.layout, r.zone_count() > 1) {
            (Some(w), _) => (feature::RAID0_LAYOUT, w),
            (None, true) => (feature::RAID0_LAYOUT, 1),
            (None, false) => (0, 0),
        };
        Ok(SbShape {
            size_sectors: min / chunk * chunk,
            layout: word,
            feature_map,
        })
    }

    /// Zones over every role's `data_size`; the layout from the superblock when recorded. A
    /// multi-zone array without a recorded layout is refused (ambiguous, as for Linux's
    /// `default_layout=0`).
    fn start(&self, sb: &Superblock, req: &StartRequest) -> Result<Arc<dyn Layout>, MdError> {
        let chunk = sb.chunk_sectors as u64;
        let block = req.block_sectors();
        if chunk < block.max(8) {
            return Err(MdError::bad(
                "chunksize",
                format!("{chunk} sectors is below the block size {} (or 4 KiB)", block * 512),
            ));
        }
        let sizes: Vec<u64> = req
            .data_sectors
            .iter()
            .enumerate()
            .map(|(r, s)| s.ok_or_else(|| MdError::invalid("members", format!("role {r} is missing"))))
            .collect::<Result<_, _>>()?;
        let recorded = sb.feature_map & feature::RAID0_LAYOUT != 0;
        let layout = if recorded {
            match sb.layout {
                1 => Raid0Layout::Original,
                2 => Raid0Layout::Alternate,
                l => return Err(MdError::bad("layout", format!("raid0 layout {l} (1 or 2 expected)"))),
            }
        } else {
            Raid0Layout::Original
        };
        let r = Raid0::new(&sizes, chunk, layout)?;
        if r.zone_count() > 1 && !recorded {
            return Err(MdError::Unsupported(
                "a multi-zone raid0 without a recorded layout (made by an old mdadm): its zone layout is ambiguous, as for Linux's default_layout=0".into(),
            ));
        }
        let size = r.size_sectors();
        Ok(StripedLayout::new(r, req.geometry(size)))
    }

    fn examine_array_sectors(&self, sb: &Superblock) -> u64 {
        sb.data_size_sectors * sb.raid_disks as u64
    }

    fn examine_layout_text(&self, sb: &Superblock) -> Option<String> {
        (sb.feature_map & feature::RAID0_LAYOUT != 0).then(|| {
            match sb.layout {
                1 => "original",
                2 => "alternate",
                _ => "-unknown-",
            }
            .to_string()
        })
    }

    fn detail_layout_text(&self, sb: &Superblock) -> Option<String> {
        (sb.feature_map & feature::RAID0_LAYOUT != 0)
            .then(|| if sb.layout == 2 { "alternate" } else { "original" }.to_string())
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
    /// The chunk over the zone's members, zone sectors to (leg, sector from `dev_start`).
    striping: Striping,
    /// What the layout adds to a leg (modulo the members): "original" counts chunks from the
    /// array's start, so its legs turn by the zone's first chunk; "alternate" from the zone's.
    rotate: usize,
}

/// raid0 over members of possibly different sizes.
#[derive(Debug, Clone)]
pub struct Raid0 {
    chunk_sectors: u64,
    /// The zones in array order; the layout is in their rotations.
    zones: Vec<Zone>,
}

impl Raid0 {
    /// Builds the zones. `chunk_sectors` must be a power of two ≥ 8 (4 KiB).
    pub fn new(member_sectors: &[u64], chunk_sectors: u64, layout: Raid0Layout) -> Result<Raid0, MdError> {
        check_chunk(chunk_sectors)?;
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
            let legs = members.len() as u64;
            let len = (size - dev_start) * legs;
            let striping = Striping::new(chunk_sectors, legs).expect("a power-of-two chunk over members");
            let rotate = match layout {
                Raid0Layout::Original => ((array_start / chunk_sectors) % legs) as usize,
                Raid0Layout::Alternate => 0,
            };
            zones.push(Zone {
                start: array_start,
                end: array_start + len,
                dev_start,
                members,
                striping,
                rotate,
            });
            array_start += len;
            dev_start = size;
        }
        Ok(Raid0 { chunk_sectors, zones })
    }

    /// Array size in sectors.
    pub fn size_sectors(&self) -> u64 {
        self.zones.last().map(|z| z.end).unwrap_or(0)
    }

    /// For one zone over every member in role order: its striping, in sectors — chunk `c` is
    /// chunk `c / members` of member `c % members` (both layouts agree on one zone).
    pub fn single_zone(&self) -> Option<Striping> {
        match self.zones.as_slice() {
            [z] if z.start == 0 && z.dev_start == 0 => {
                let in_order = z.members.iter().enumerate().all(|(i, m)| m.0 as usize == i);
                in_order.then_some(z.striping)
            }
            _ => None,
        }
    }

    /// Number of zones.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// The place of `array_sector` and the sectors left in its chunk. On the I/O path: the
    /// zone's [`Striping`] places it (zones start at chunk boundaries, so a chunk of the zone is
    /// a chunk of the array), the layout's rotation picks the member.
    #[inline]
    pub fn map(&self, array_sector: u64) -> (Place, u64) {
        let z = if self.zones.len() == 1 {
            &self.zones[0]
        } else {
            &self.zones[self.zones.partition_point(|z| z.end <= array_sector)]
        };
        let p = z.striping.locate(array_sector - z.start);
        // Both below the zone's member count: one conditional subtraction is the modulo.
        let mut idx = p.leg + z.rotate;
        if idx >= z.members.len() {
            idx -= z.members.len();
        }
        (
            Place {
                member: z.members[idx],
                sector: z.dev_start + p.offset_blocks,
            },
            p.left_blocks,
        )
    }
}

impl StripeMap for Raid0 {
    #[inline]
    fn map(&self, array_sector: u64) -> (Place, u64) {
        Raid0::map(self, array_sector)
    }

    fn one_zone(&self, geo: &Geometry) -> Option<OneZone> {
        if !geo.uniform_blocks() {
            return None;
        }
        self.single_zone().map(|striping| OneZone {
            striping,
            block_shift: geo.block_shift,
            data_offset_sectors: geo.data_offset_sectors,
        })
    }

    /// A one-zone raid0 (of up to `ROUTE_LEGS` members, all of the array's block size) while
    /// every member has a path on this core.
    fn route(&self, geo: &Geometry, paths: &[Option<ForwardPath>]) -> Option<Route> {
        let chunk_shift = self.single_zone()?.chunk_shift();
        if !geo.uniform_blocks() || chunk_shift < geo.block_shift {
            return None;
        }
        let legs = paths
            .iter()
            .map(|p| {
                p.clone().map(|path| Leg {
                    path,
                    offset_blocks: geo.data_offset_sectors >> geo.block_shift,
                })
            })
            .collect::<Option<Vec<Leg>>>()?;
        Route::striped(1 << (chunk_shift - geo.block_shift), legs, IoCaps::RANGED)
    }

    fn optimal_io_boundary_sectors(&self) -> u64 {
        self.chunk_sectors
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

    #[test]
    fn bad_shapes_are_refused() {
        assert!(Raid0::new(&[100, 200], 12, Raid0Layout::Original).is_err());
        assert!(Raid0::new(&[4, 200], 8, Raid0Layout::Original).is_err());
        assert!(Raid0::new(&[], 8, Raid0Layout::Original).is_err());
    }

    #[test]
    fn plan_records_the_layout_when_asked_or_multi_zone() {
        let plan = |sizes: &[u64], layout| {
            RAID0
                .plan(&PlanRequest {
                    data_sectors: sizes,
                    block_sectors: 1,
                    chunk_sectors: CHUNK,
                    layout,
                })
                .unwrap()
        };
        let one_zone = plan(&[80, 83], None);
        assert_eq!(
            (one_zone.feature_map, one_zone.layout, one_zone.size_sectors),
            (0, 0, 80)
        );
        let two_zones = plan(&[80, 160], None);
        assert_eq!((two_zones.feature_map, two_zones.layout), (feature::RAID0_LAYOUT, 1));
        let asked = plan(&[80, 80], Some(2));
        assert_eq!((asked.feature_map, asked.layout), (feature::RAID0_LAYOUT, 2));
        assert!(RAID0.parse_layout(Some("near")).is_err());
        assert_eq!(RAID0.parse_layout(Some("alternate")).unwrap(), Some(2));
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

    }
}
