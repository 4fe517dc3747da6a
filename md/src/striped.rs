//! The layout and per-core lane of one-copy levels (linear, raid0): every array sector lives
//! on exactly one member, so the array needs every member ([`Health::Failed`] otherwise), has no
//! write gate and no sync. A level supplies its address math as a [`StripeMap`].
//!
//! A request that stays on one member (inside one chunk for raid0) is forwarded **in place**
//! when that member has the array's block size ([`LaneCx::forward`]); anything else is split
//! at member/chunk boundaries. A map that is one striping over every member ([`OneZone`]: raid0
//! of one zone, members of the array's block size) is mapped in [`Lane::fast`] before anything
//! else, and a map may publish a [`Route`] so the bdev layer forwards without calling the array
//! at all.

use std::fmt::Debug;
use std::sync::Arc;

use keel_bdev::{ForwardPath, IoBox, IoOp, Route, Striping, Submit};

use crate::channel::{forward_in_place, Members};
use crate::geometry::Geometry;
use crate::layout::{MemberIdx, Place};
use crate::personality::{CoreSetup, Cursor, Health, Lane, LaneCx, Layout, MdCore, Piece, WriteTicket};

/// A one-copy level's address math.
pub(crate) trait StripeMap: Send + Sync + Debug + 'static {
    /// The place of `array_sector` and the sectors left on that member (or in that chunk) from
    /// there.
    fn map(&self, array_sector: u64) -> (Place, u64);
    /// The map as one striping over every member in role order, over `geo`, if it is one.
    fn one_zone(&self, _geo: &Geometry) -> Option<OneZone> {
        None
    }
    /// The route over `paths` (see [`Layout::route`]).
    fn route(&self, _geo: &Geometry, _paths: &[Option<ForwardPath>]) -> Option<Route> {
        None
    }
    /// See [`Layout::optimal_io_boundary_sectors`].
    fn optimal_io_boundary_sectors(&self) -> u64 {
        0
    }
}

/// The array is one [`Striping`] (in sectors) over every member in role order, every member
/// with the array's block size: chunk `c` is chunk `c / members` of member `c % members`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OneZone {
    pub striping: Striping,
    pub block_shift: u32,
    pub data_offset_sectors: u64,
}

/// The layout of a one-copy level.
#[derive(Debug)]
pub(crate) struct StripedLayout<M> {
    map: M,
    geo: Arc<Geometry>,
}

impl<M: StripeMap> StripedLayout<M> {
    pub(crate) fn new(map: M, geo: Geometry) -> Arc<StripedLayout<M>> {
        Arc::new(StripedLayout {
            map,
            geo: Arc::new(geo),
        })
    }
}

impl<M: StripeMap> Layout for StripedLayout<M> {
    fn geometry(&self) -> &Arc<Geometry> {
        &self.geo
    }

    fn health(&self, live: &dyn Fn(MemberIdx) -> bool) -> Health {
        if (0..self.geo.roles()).all(|r| live(MemberIdx(r as u16))) {
            Health::Optimal
        } else {
            Health::Failed
        }
    }

    fn optimal_io_boundary_sectors(&self) -> u64 {
        self.map.optimal_io_boundary_sectors()
    }

    fn route(&self, paths: &[Option<ForwardPath>]) -> Option<Route> {
        self.map.route(&self.geo, paths)
    }

    fn core(self: Arc<Self>, setup: CoreSetup) -> MdCore {
        let fast = self.map.one_zone(&self.geo);
        MdCore::new(setup, StripedLane { layout: self, fast })
    }
}

/// A one-copy layout's lane on one core.
pub(crate) struct StripedLane<M> {
    layout: Arc<StripedLayout<M>>,
    fast: Option<OneZone>,
}

impl<M: StripeMap> Lane for StripedLane<M> {
    #[inline(always)]
    fn fast(&mut self, m: &Members, io: IoBox) -> Result<Submit, IoBox> {
        if let Some(f) = &self.fast {
            if !m.dead() && !matches!(io.op, IoOp::Flush | IoOp::Reset) {
                let start = io.offset_blocks << f.block_shift;
                let len = io.num_blocks << f.block_shift;
                let p = f.striping.locate(start);
                if len <= p.left_blocks {
                    let member = MemberIdx(p.leg as u16);
                    if let Some(path) = m.path(member) {
                        let at = (f.data_offset_sectors + p.offset_blocks) >> f.block_shift;
                        return Ok(forward_in_place(path, io, member, at));
                    }
                }
            }
        }
        Err(io)
    }

    #[inline]
    fn submit(&mut self, cx: &mut LaneCx<'_>, io: IoBox, ticket: Option<WriteTicket>) -> Submit {
        let bs = self.layout.geo.block_shift;
        let start = io.offset_blocks << bs;
        let len = io.num_blocks << bs;
        let (place, left) = self.layout.map.map(start);
        if len <= left && ticket.is_none() {
            cx.forward(self, io, place.member, place.sector, start)
        } else {
            cx.split(self, io, start, start + len, ticket)
        }
    }

    #[inline]
    fn next_piece(&mut self, _m: &Members, _op: IoOp, cur: &mut Cursor) -> Piece {
        let (place, left) = self.layout.map.map(cur.next);
        let sectors = left.min(cur.end - cur.next);
        let array_sector = cur.next;
        cur.next += sectors;
        Piece::Child {
            member: place.member,
            member_sector: place.sector,
            array_sector,
            sectors,
        }
    }
}
