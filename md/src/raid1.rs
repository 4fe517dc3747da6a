//! raid1: every member holds every sector at the same member sector
//! (`shared/specs/md-personalities.md` §4). Survives while one member is in sync; has resync,
//! recovery onto spares, check/repair and the write-intent bitmap (by default). The data path
//! and sync step are [`crate::mirror`]'s.

use std::sync::Arc;

use crate::geometry::StartRequest;
use crate::layout::{MemberIdx, Place, MAX_COPIES};
use crate::mirror::{Copies, MirrorLayout};
use crate::personality::{Caps, Layout, Personality, PlanRequest, SbShape, MAX_MEMBERS};
use crate::superblock::Superblock;
use crate::MdError;

/// The raid1 personality.
pub(crate) struct Raid1Personality;

/// Its descriptor (listed in [`crate::personality`]'s registry).
pub(crate) static RAID1: Raid1Personality = Raid1Personality;

static CAPS: Caps = Caps {
    min_members: 2,
    max_members: MAX_MEMBERS,
    failures: 1,
    resync: true,
    spares: true,
    bitmap: true,
    default_bitmap: true,
    chunked: false,
};

/// The component size is rounded to 64 KiB at create (mdadm's rounding for raid1).
const COMPONENT_ROUND_SECTORS: u64 = 128;

impl Personality for Raid1Personality {
    fn level(&self) -> i32 {
        1
    }

    fn name(&self) -> &'static str {
        "raid1"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["1", "mirror"]
    }

    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    fn parse_layout(&self, text: Option<&str>) -> Result<Option<u32>, MdError> {
        match text {
            None => Ok(None),
            Some(l) => Err(MdError::invalid("layout", format!("'{l}' is not a layout of raid1"))),
        }
    }

    /// The smallest member rounded to 64 KiB is the component (and the array) size.
    fn plan(&self, req: &PlanRequest<'_>) -> Result<SbShape, MdError> {
        let min = req.data_sectors.iter().copied().min().unwrap_or(0);
        Ok(SbShape {
            size_sectors: min / COMPONENT_ROUND_SECTORS * COMPONENT_ROUND_SECTORS,
            layout: 0,
            feature_map: 0,
        })
    }

    /// The superblock's component `size`, rounded down to the array block.
    fn start(&self, sb: &Superblock, req: &StartRequest) -> Result<Arc<dyn Layout>, MdError> {
        let bs = req.block_sectors();
        let size = sb.size_sectors / bs * bs;
        if size == 0 {
            return Err(MdError::bad(
                "size",
                format!("component size {} sectors", sb.size_sectors),
            ));
        }
        let members = req.data_sectors.len() as u16;
        Ok(MirrorLayout::new(
            Raid1Copies {
                members,
                size_sectors: size,
            },
            req.geometry(size),
        ))
    }

    fn examine_array_sectors(&self, sb: &Superblock) -> u64 {
        sb.size_sectors
    }
}

/// raid1's copies: the same sector on every member (the first [`MAX_COPIES`] of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raid1Copies {
    pub members: u16,
    /// The array (and component) size.
    pub size_sectors: u64,
}

impl Copies for Raid1Copies {
    #[inline]
    fn copies(&self, array_sector: u64, out: &mut [Place; MAX_COPIES]) -> (usize, u64) {
        let n = self.copy_count();
        for (i, p) in out.iter_mut().enumerate().take(n) {
            *p = Place {
                member: MemberIdx(i as u16),
                sector: array_sector,
            };
        }
        (n, self.size_sectors - array_sector)
    }

    fn copy_count(&self) -> usize {
        (self.members as usize).min(MAX_COPIES)
    }

    fn roles(&self) -> usize {
        self.members as usize
    }

    fn survives(&self, live: &dyn Fn(MemberIdx) -> bool) -> bool {
        (0..self.members).any(|m| live(MemberIdx(m)))
    }

    fn chunk_sectors(&self) -> u64 {
        0
    }

    fn member_is_array_sector(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personality::Health;

    #[test]
    fn copies_and_survival() {
        let c = Raid1Copies {
            members: 3,
            size_sectors: 1000,
        };
        let mut out = [Place::ZERO; MAX_COPIES];
        let (k, left) = c.copies(10, &mut out);
        assert_eq!((k, left), (3, 990));
        assert!(out[..3].iter().all(|p| p.sector == 10));
        assert!(c.survives(&|m| m.0 == 2));
        assert!(!c.survives(&|_| false));
    }

    #[test]
    fn start_uses_the_component_size_and_health_follows_members() {
        let sb = Superblock {
            level: 1,
            raid_disks: 2,
            size_sectors: 1001,
            ..Default::default()
        };
        let req = StartRequest {
            data_offset_sectors: 2048,
            block_shift: 3,
            member_shifts: vec![3, 0],
            data_sectors: vec![Some(2000), None],
        };
        let l = RAID1.start(&sb, &req).unwrap();
        assert_eq!(l.geometry().size_sectors, 1000);
        assert_eq!(l.health(&|_| true), Health::Optimal);
        assert_eq!(l.health(&|m| m.0 == 1), Health::Degraded);
        assert_eq!(l.health(&|_| false), Health::Failed);
        assert!(l.sync().is_some());
        let sb = Superblock { size_sectors: 7, ..sb };
        assert!(matches!(
            RAID1.start(&sb, &req),
            Err(MdError::BadSuperblock { field: "size", .. })
        ));
        let p = RAID1
            .plan(&PlanRequest {
                data_sectors: &[1000, 300],
                block_sectors: 1,
                chunk_sectors: 0,
                layout: None,
            })
            .unwrap();
        assert_eq!(p.size_sectors, 256);
    }
}
