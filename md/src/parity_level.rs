//! The descriptor shared by the parity levels (raid4, raid5, raid6): one [`ParityLevel`] value
//! per level (in `raid4.rs`, `raid5.rs`, `raid6.rs`) differing only in data — level number,
//! names, members holding parity. Planning and starting are the same rule for all three
//! (`shared/specs/md-personalities.md` §5–6): the component is the smallest member rounded down
//! to the chunk, the array holds `component × data members`, and the layout is
//! [`crate::stripe`]'s over a [`ParityMap`].

use std::sync::Arc;

use crate::geometry::StartRequest;
use crate::layout::check_chunk;
use crate::parity_map::{self, ParityMap};
use crate::personality::{Caps, Layout, Personality, PlanRequest, SbShape};
use crate::stripe::StripeLayout;
use crate::superblock::Superblock;
use crate::MdError;

/// A parity level's descriptor (module docs).
pub(crate) struct ParityLevel {
    pub level: i32,
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub caps: &'static Caps,
}

impl ParityLevel {
    /// Members holding parity in each stripe (1, raid6 2).
    fn parity_members(&self) -> u64 {
        if self.level == 6 {
            2
        } else {
            1
        }
    }
}

impl Personality for ParityLevel {
    fn level(&self) -> i32 {
        self.level
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }

    fn caps(&self) -> &'static Caps {
        self.caps
    }

    /// raid5/raid6: mdadm's layout names (default left-symmetric); raid4 takes no layout (its
    /// word is 0, as mdadm writes it; the parity is on the last member).
    fn parse_layout(&self, text: Option<&str>) -> Result<Option<u32>, MdError> {
        match (self.level, text) {
            (4, None) => Ok(Some(0)),
            (4, Some(l)) => Err(MdError::invalid(
                "layout",
                format!("'{l}' is not a layout of raid4 (its parity is on the last member)"),
            )),
            (_, None) => Ok(Some(parity_map::DEFAULT_LAYOUT)),
            (level, Some(t)) => parity_map::parse_layout(level, t).map(Some),
        }
    }

    /// The smallest member rounded down to the chunk is the component.
    fn plan(&self, req: &PlanRequest<'_>) -> Result<SbShape, MdError> {
        let chunk = req.chunk_sectors;
        check_chunk(chunk).map_err(|e| MdError::invalid("chunk_kb", e.to_string()))?;
        let layout = req
            .layout
            .unwrap_or(if self.level == 4 { 0 } else { parity_map::DEFAULT_LAYOUT });
        ParityMap::new(self.level, layout, req.data_sectors.len() as u16, chunk)
            .map_err(|e| MdError::invalid("layout", e))?;
        let min = req.data_sectors.iter().copied().min().unwrap_or(0);
        let size = min / chunk * chunk;
        if size == 0 {
            return Err(MdError::invalid("members", "a member is smaller than one chunk"));
        }
        Ok(SbShape {
            size_sectors: size,
            layout,
            feature_map: 0,
        })
    }

    /// The layout word, the chunk and the component `size` of the superblock.
    fn start(&self, sb: &Superblock, req: &StartRequest) -> Result<Arc<dyn Layout>, MdError> {
        let chunk = sb.chunk_sectors as u64;
        check_chunk(chunk)?;
        let block = req.block_sectors();
        if chunk < block {
            return Err(MdError::bad(
                "chunksize",
                format!("{chunk} sectors is below the block size {}", block * 512),
            ));
        }
        let disks = req.data_sectors.len();
        if disks != sb.raid_disks as usize {
            return Err(MdError::bad(
                "raid_disks",
                format!("{} roles for {disks} members", sb.raid_disks),
            ));
        }
        let map = ParityMap::new(self.level, sb.layout, disks as u16, chunk).map_err(|e| MdError::bad("layout", e))?;
        let component = sb.size_sectors / chunk * chunk;
        if component == 0 {
            return Err(MdError::bad(
                "size",
                format!("component size {} sectors", sb.size_sectors),
            ));
        }
        if let Some((r, s)) = req
            .data_sectors
            .iter()
            .enumerate()
            .find_map(|(r, s)| s.filter(|&s| s < component).map(|s| (r, s)))
        {
            return Err(MdError::bad(
                "data_size",
                format!("role {r} has {s} sectors, below the component size {component}"),
            ));
        }
        let size = component * map.data_disks as u64;
        Ok(StripeLayout::new(map, component, req.geometry(size)))
    }

    fn examine_array_sectors(&self, sb: &Superblock) -> u64 {
        sb.size_sectors * (sb.raid_disks as u64).saturating_sub(self.parity_members())
    }

    /// mdadm prints raid5/raid6 layouts by name (raid4 has no Layout line).
    fn examine_layout_text(&self, sb: &Superblock) -> Option<String> {
        (self.level != 4).then(|| {
            parity_map::layout_name(self.level, sb.layout)
                .unwrap_or("-unknown-")
                .to_string()
        })
    }

    fn detail_layout_text(&self, sb: &Superblock) -> Option<String> {
        self.examine_layout_text(sb)
    }

    /// raid4 and raid5 build by recovery onto the last member (mdadm's rule); raid6 resyncs.
    fn create_by_recovery(&self) -> bool {
        self.level != 6
    }

    fn write_hole(&self) -> bool {
        true
    }
}
