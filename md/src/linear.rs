//! linear: the members concatenated in role order (`shared/specs/md-personalities.md` §2). No
//! redundancy, no chunk (a chunk in the superblock only rounds each member down), every member
//! needed. The data path is `striped`'s.

use std::sync::Arc;

use crate::geometry::StartRequest;
use crate::layout::{MemberIdx, Place};
use crate::personality::{Caps, Layout, Personality, PlanRequest, SbShape, MAX_MEMBERS};
use crate::striped::{StripeMap, StripedLayout};
use crate::superblock::Superblock;
use crate::MdError;

/// The linear personality.
pub(crate) struct LinearPersonality;

/// Its descriptor (listed in [`crate::personality`]'s registry).
pub(crate) static LINEAR: LinearPersonality = LinearPersonality;

static CAPS: Caps = Caps {
    min_members: 1,
    max_members: MAX_MEMBERS,
    failures: 0,
    resync: false,
    spares: false,
    bitmap: false,
    default_bitmap: false,
    chunked: false,
};

impl Personality for LinearPersonality {
    fn level(&self) -> i32 {
        -1
    }

    fn name(&self) -> &'static str {
        "linear"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["-1"]
    }

    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    fn parse_layout(&self, text: Option<&str>) -> Result<Option<u32>, MdError> {
        match text {
            None => Ok(None),
            Some(l) => Err(MdError::invalid("layout", format!("'{l}' is not a layout of linear"))),
        }
    }

    /// Every member whole (rounded to the array block); the superblock's `size` is the smallest
    /// member's, as Keel has always written it.
    fn plan(&self, req: &PlanRequest<'_>) -> Result<SbShape, MdError> {
        let bs = req.block_sectors;
        let min = req.data_sectors.iter().copied().min().unwrap_or(0);
        Ok(SbShape {
            size_sectors: min / bs * bs,
            layout: 0,
            feature_map: 0,
        })
    }

    /// Each member's `data_size`, rounded down to the superblock's chunk (if any) and to the
    /// array block, as the kernel does.
    fn start(&self, sb: &Superblock, req: &StartRequest) -> Result<Arc<dyn Layout>, MdError> {
        let chunk = sb.chunk_sectors as u64;
        let bs = req.block_sectors();
        let mut sizes = Vec::with_capacity(req.data_sectors.len());
        for (r, s) in req.data_sectors.iter().enumerate() {
            let mut s = s.ok_or_else(|| MdError::invalid("members", format!("role {r} is missing")))?;
            if let Some(chunks) = s.checked_div(chunk) {
                s = chunks * chunk;
            }
            sizes.push(s / bs * bs);
        }
        let l = Linear::new(&sizes)?;
        let size = l.size_sectors();
        Ok(StripedLayout::new(l, req.geometry(size)))
    }

    fn examine_array_sectors(&self, sb: &Superblock) -> u64 {
        sb.data_size_sectors * sb.raid_disks as u64
    }
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

impl StripeMap for Linear {
    #[inline]
    fn map(&self, array_sector: u64) -> (Place, u64) {
        Linear::map(self, array_sector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_maps_across_members() {
        let l = Linear::new(&[10, 20, 5]).unwrap();
        assert_eq!(l.size_sectors(), 35);
        let at = |s| {
            let (p, left) = l.map(s);
            (p.member.0, p.sector, left)
        };
        assert_eq!(at(0), (0, 0, 10));
        assert_eq!(at(9), (0, 9, 1));
        assert_eq!(at(10), (1, 0, 20));
        assert_eq!(at(34), (2, 4, 1));
        assert!(Linear::new(&[]).is_err());
        assert!(Linear::new(&[4, 0]).is_err());
    }

    #[test]
    fn start_rounds_members_and_needs_every_role() {
        let sb = Superblock {
            level: -1,
            raid_disks: 2,
            chunk_sectors: 8,
            ..Default::default()
        };
        let req = StartRequest {
            data_offset_sectors: 2048,
            block_shift: 1,
            member_shifts: vec![0, 1],
            data_sectors: vec![Some(21), Some(30)],
        };
        let l = LINEAR.start(&sb, &req).unwrap();
        assert_eq!(l.geometry().size_sectors, 16 + 24);
        assert_eq!(l.geometry().data_offset_sectors, 2048);
        let req = StartRequest {
            data_sectors: vec![Some(21), None],
            ..req
        };
        let e = LINEAR.start(&sb, &req).unwrap_err();
        assert!(e.to_string().contains("role 1 is missing"), "{e}");
    }
}
