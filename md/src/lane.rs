//! What a lane works with on its core, and how its pieces drive keel-bdev's splitter.
//!
//! # The vocabulary
//!
//! A lane ([`crate::personality::Lane`]) thinks in array sectors and member roles: the next
//! piece of a request it split is a [`Piece`] (a child to a member at a member sector, or the
//! cursor moved without one, or nothing can serve the rest), the split's position is a
//! [`Cursor`], a failed child is a [`FailedChild`] and the lane's answer to it a [`Verdict`]. A
//! write the core's gate admitted carries its [`WriteTicket`]. [`LaneCx`] is what the core lends
//! the lane for a request: this core's members, the splitter and the completion queue.
//!
//! # The engine
//!
//! The split engine is keel-bdev's [`Splitter`] (its `split.rs` has the essay: pools, queues,
//! the policy contract, requeue), one per array per core, owned by the core's state next to the
//! lane. md's policy is [`Policy`]: the lane and this core's members, borrowed apart from the
//! splitter for one call (the splitter and the policy are disjoint fields of the core's state).
//! It translates:
//!
//! * **Split** (reads and writes the lane splits): the cursor is array sectors. Each step asks
//!   the lane's [`Lane::next_piece`](crate::personality::Lane::next_piece) on a copy of the
//!   cursor: a child takes one from the pool (member offset and block count from the geometry,
//!   its scatter list a window on the parent's buffers, [`slice_iovs`]) and is sent to the
//!   member ([`BaseId`] = role); a piece for a member without a channel here, or the lane's
//!   `Fail`, is answered `Failed` without a child; `Again` is answered with what the cursor
//!   moved (0 for a mirror's next copy, whose counter is the cursor's `sub`). Only a piece that
//!   needs a child waits for an empty pool (`Stalled`; the cursor copy is dropped, so the piece
//!   is asked for again).
//! * **Fan-out** (flush, reset): the cursor is roles, one unit each; a role the lane does not
//!   name ([`Lane::fanout_to`](crate::personality::Lane::fanout_to)) is answered at once.
//! * **A child back**: `Unsupported` from a flush or reset leg is a success (no cache to flush);
//!   another failure (not `Aborted`) goes to the lane's
//!   [`Lane::child_failed`](crate::personality::Lane::child_failed): fail the parent (`Removed`
//!   goes up as `Failed`), absorb it (the parent is marked degraded), or retry on another member
//!   (the child is re-prepared there and sent again, `ChildDone::Resend`). A child whose member
//!   left this core meanwhile comes back `Removed` through the splitter (`Sent::Gone`), like any
//!   failure.
//! * **A parent done**: its ticket ends ("every copy written" unless degraded), the lane's
//!   [`Lane::parent_done`](crate::personality::Lane::parent_done) settles a split's status (a
//!   fan-out keeps the first failure), the in-flight count drops and the parent completes
//!   upward.
//!
//! A parent is counted in the forwarding context's in-flight count from acceptance to
//! completion, so replaced member channels stay open under its children. The core checks
//! [`Splitter::can_accept`] before admitting (or splitting) anything, so an admitted write is
//! never handed back with its ticket.
//!
//! After the core's state exists nothing here allocates or locks.

use keel_bdev::{
    slice_iovs, BaseId, ChildDone, Children, CompletionQueue, IoBox, IoOp, IoRequest, IoStatus, Parent, Sent,
    SplitPolicy, Splitter, Step, Submit,
};

use crate::channel::{upward, Members};
use crate::layout::MemberIdx;
use crate::personality::Lane;

/// Child requests per core.
pub(crate) const CHILDREN: usize = 256;
/// Split or fanned-out parents in flight per core (beyond that: `Submit::Requeue`).
pub(crate) const PARENTS: usize = 128;
/// Initial capacity of the splitter's retry queue.
pub(crate) const RETRY_CAPACITY: usize = 256;

/// A write the core's write gate admitted over sync-space sectors `[start, end)` (array sectors
/// for the copy levels; see `SyncShape`): it must be ended exactly once ([`Members::end_write`]),
/// which the split policy does for the parent that carries it.
#[must_use = "a write ticket must be ended, or the sync window never drains"]
#[derive(Debug)]
pub(crate) struct WriteTicket {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Where a split parent stands; the lane moves it in [`Lane::next_piece`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cursor {
    /// The next array sector to map.
    pub next: u64,
    /// The parent's end (array sector).
    pub end: u64,
    /// The lane's position inside the piece at `next` (e.g. the next copy).
    pub sub: u32,
    /// Some piece was not written everywhere (the lane marks it).
    pub degraded: bool,
}

/// The next piece of a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A child of `sectors` at `array_sector` of the parent, to `member` at `member_sector`
    /// (relative to the data offset). A member without a channel fails the parent.
    Child {
        member: MemberIdx,
        member_sector: u64,
        array_sector: u64,
        sectors: u64,
    },
    /// The cursor moved without a child: ask again.
    Again,
    /// Nothing can serve the rest: the parent fails.
    Fail,
}

/// A child that failed (status neither success nor `Aborted`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailedChild {
    pub op: IoOp,
    pub member: MemberIdx,
    /// Array sector of the piece (0 for fan-out children).
    pub array_sector: u64,
    /// Length of the piece in sectors.
    pub sectors: u64,
}

/// What a failed child means for its parent ([`Lane::child_failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The parent fails with the child's status.
    Fail,
    /// The child counts as done; the parent is marked degraded.
    Absorb,
    /// Send the same piece to `member` at `member_sector` instead.
    Retry { member: MemberIdx, member_sector: u64 },
}

/// md's side data of a parent (the splitter keeps it in the parent's slot).
#[derive(Debug, Default)]
pub(crate) struct MdParent {
    /// One child per role (flush, reset) instead of pieces.
    fanout: bool,
    /// The lane's [`Cursor::sub`].
    sub: u32,
    /// The lane's [`Cursor::degraded`], or a child absorbed.
    degraded: bool,
    /// Ended when the parent completes.
    ticket: Option<WriteTicket>,
}

/// md's side data of a child: where it went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MdChild {
    member: MemberIdx,
    /// Array sector of the piece (0 for fan-out children).
    array_sector: u64,
}

impl Default for MdChild {
    fn default() -> MdChild {
        MdChild {
            member: MemberIdx(0),
            array_sector: 0,
        }
    }
}

/// An array's splitter on one core.
pub(crate) type MdSplitter = Splitter<MdChild, MdParent>;

/// A new splitter with md's pool sizes (allocated now, on the core).
pub(crate) fn splitter() -> MdSplitter {
    Splitter::new(CHILDREN, PARENTS, RETRY_CAPACITY)
}

/// The tag bit of requests a lane owns (its own pool, e.g. a stripe cache's member reads and
/// writes): their completions go to [`Lane::own_done`]. The splitter's children never carry it
/// (their tags are pool indices).
pub(crate) const LANE_TAG: u64 = 1 << 63;

/// The role a child goes to, as the splitter carries it.
#[inline(always)]
fn base(member: MemberIdx) -> BaseId {
    BaseId(member.0 as u32)
}

/// md's [`SplitPolicy`]: the lane and this core's members, lent for one splitter call (module
/// docs).
pub(crate) struct Policy<'a, L> {
    pub lane: &'a mut L,
    pub m: &'a Members,
}

impl<L: Lane> Policy<'_, L> {
    /// Prepares `child` for `sectors` at `member`'s `member_sector`, windowing `parent`'s data
    /// from array sector `at`.
    #[inline(always)]
    fn prepare(
        &self,
        child: &mut IoRequest,
        parent: &IoRequest,
        member: MemberIdx,
        member_sector: u64,
        at: u64,
        sectors: u64,
    ) {
        let g = self.m.geo();
        let shift = g.member_shift(member);
        let op = parent.op;
        child.prepare(op, (g.data_offset_sectors + member_sector) >> shift, sectors >> shift);
        child.iovs.clear();
        if op.has_data() {
            let start = parent.offset_blocks << g.block_shift;
            slice_iovs(&parent.iovs, (at - start) << 9, sectors << 9, &mut child.iovs);
        }
    }
}

impl<L: Lane> SplitPolicy for Policy<'_, L> {
    type Child = MdChild;
    type Parent = MdParent;

    #[inline]
    fn next_piece(&mut self, p: Parent<'_, MdParent>, children: &mut Children<'_, MdChild>) -> Step {
        let op = p.io.op;
        if p.data.fanout {
            let member = MemberIdx(p.next as u16);
            if !self.lane.fanout_to(self.m, member) {
                return Step::Answered {
                    units: 1,
                    status: IoStatus::Success,
                };
            }
            let Some((mut child, side)) = children.take() else {
                return Step::Stalled;
            };
            child.iovs.clear();
            child.prepare(op, 0, 0);
            *side = MdChild {
                member,
                array_sector: 0,
            };
            return Step::Send {
                child,
                base: base(member),
                units: 1,
            };
        }
        let mut cur = Cursor {
            next: p.next,
            end: p.end,
            sub: p.data.sub,
            degraded: p.data.degraded,
        };
        let piece = self.lane.next_piece(self.m, op, &mut cur);
        let status = match piece {
            Piece::Child {
                member,
                member_sector,
                array_sector,
                sectors,
            } if self.m.present(member) => {
                let Some((mut child, side)) = children.take() else {
                    // The cursor copy is dropped: the same piece is asked for again.
                    return Step::Stalled;
                };
                self.prepare(&mut child, p.io, member, member_sector, array_sector, sectors);
                *side = MdChild { member, array_sector };
                p.data.sub = cur.sub;
                p.data.degraded = cur.degraded;
                return Step::Send {
                    child,
                    base: base(member),
                    units: cur.next - p.next,
                };
            }
            // A member without a channel here fails the piece.
            Piece::Child { .. } => IoStatus::Failed,
            Piece::Again => IoStatus::Success,
            Piece::Fail => {
                return Step::Answered {
                    units: p.end - p.next,
                    status: IoStatus::Failed,
                }
            }
        };
        p.data.sub = cur.sub;
        p.data.degraded = cur.degraded;
        Step::Answered {
            units: cur.next - p.next,
            status,
        }
    }

    #[inline]
    fn send(&mut self, base: BaseId, io: IoBox, cq: &CompletionQueue) -> Sent {
        match self.m.channel(MemberIdx(base.0 as u16)) {
            Some(ch) => ch.submit(io, cq).into(),
            None => Sent::Gone(io),
        }
    }

    #[inline]
    fn child_done(&mut self, child: &mut IoRequest, side: &mut MdChild, p: Parent<'_, MdParent>) -> ChildDone {
        let mut status = child.status();
        let op = child.op;
        if status == IoStatus::Unsupported && matches!(op, IoOp::Flush | IoOp::Reset) {
            // A member without a volatile cache has nothing to flush.
            status = IoStatus::Success;
        }
        if status == IoStatus::Success || status == IoStatus::Aborted {
            return ChildDone::Finished(status);
        }
        let g = self.m.geo();
        let sectors = child.num_blocks << g.member_shift(side.member);
        let failed = FailedChild {
            op,
            member: side.member,
            array_sector: side.array_sector,
            sectors,
        };
        match self.lane.child_failed(self.m, &failed) {
            Verdict::Fail => ChildDone::Finished(upward(status)),
            Verdict::Absorb => {
                p.data.degraded = true;
                ChildDone::Finished(IoStatus::Success)
            }
            Verdict::Retry { member, member_sector } => {
                let shift = g.member_shift(member);
                child.prepare(op, (g.data_offset_sectors + member_sector) >> shift, sectors >> shift);
                side.member = member;
                ChildDone::Resend { base: base(member) }
            }
        }
    }

    /// Ends the parent's ticket, settles its status with the lane and completes it upward.
    #[inline]
    fn finish(&mut self, io: IoBox, status: IoStatus, data: MdParent) {
        let degraded = data.degraded;
        if let Some(t) = data.ticket {
            self.m.end_write(t, !degraded);
        }
        let status = if data.fanout {
            status
        } else {
            self.lane.parent_done(self.m, io.op, status, degraded)
        };
        self.m.fwd().end();
        io.complete(status);
    }
}

/// What a lane is handed for a request: this core's members, its splitter and completion queue.
/// Built by the core around each lane call.
pub(crate) struct LaneCx<'a> {
    pub m: &'a Members,
    pub(crate) split: &'a mut MdSplitter,
    pub(crate) cq: &'a CompletionQueue,
}

impl LaneCx<'_> {
    /// Splits `io` over array sectors `[start, end)` with `lane`'s pieces; `ticket` ends with
    /// the parent. Without a free parent slot or child the request goes back (`Requeue`, its
    /// ticket ended first).
    #[inline]
    pub(crate) fn split<L: Lane>(
        &mut self,
        lane: &mut L,
        io: IoBox,
        start: u64,
        end: u64,
        ticket: Option<WriteTicket>,
    ) -> Submit {
        let data = MdParent {
            fanout: false,
            sub: 0,
            degraded: false,
            ticket,
        };
        accept(self.split, Policy { lane, m: self.m }, io, start, end, data, self.cq)
    }

    /// Sends a request the lane owns (its tag has [`LANE_TAG`] set, its offset is the member's)
    /// to `member`, which must be present ([`Members::present`]). Its completion comes back to
    /// [`Lane::own_done`] on this core; `Requeue` hands it back untouched, for the lane to retry
    /// from its poll step. While it is in flight, channels of replaced members stay open.
    #[inline]
    #[cfg_attr(not(test), allow(dead_code))] // for lanes that own their I/O; tested in `channel`
    pub(crate) fn submit_own(&mut self, member: MemberIdx, io: IoBox) -> Submit {
        debug_assert!(io.tag & LANE_TAG != 0, "a lane's own request carries LANE_TAG");
        let ch = self.m.channel(member).expect("the lane checked the member is present");
        let r = ch.submit(io, self.cq);
        if matches!(r, Submit::Accepted) {
            self.m.fwd().begin();
        }
        r
    }

    /// Sends the whole request to `member` at `member_sector` (relative to the data offset): in
    /// place when the member has the array's block size, as a one-piece split (through
    /// `lane`'s pieces from `array_sector`) otherwise; a member without a channel fails it.
    #[inline]
    pub(crate) fn forward<L: Lane>(
        &mut self,
        lane: &mut L,
        io: IoBox,
        member: MemberIdx,
        member_sector: u64,
        array_sector: u64,
    ) -> Submit {
        let g = self.m.geo();
        let shift = g.member_shift(member);
        if !self.m.present(member) {
            io.complete(IoStatus::Failed);
            return Submit::Accepted;
        }
        match self.m.path(member) {
            Some(path) if shift == g.block_shift => {
                crate::channel::forward_in_place(path, io, member, (g.data_offset_sectors + member_sector) >> shift)
            }
            _ => {
                let len = io.num_blocks << g.block_shift;
                self.split(lane, io, array_sector, array_sector + len, None)
            }
        }
    }
}

/// Flush and reset: one child per role of `roles` that the lane names.
#[inline]
pub(crate) fn fan_out<L: Lane>(
    split: &mut MdSplitter,
    policy: Policy<'_, L>,
    io: IoBox,
    roles: u64,
    cq: &CompletionQueue,
) -> Submit {
    let data = MdParent {
        fanout: true,
        ..MdParent::default()
    };
    accept(split, policy, io, 0, roles, data, cq)
}

/// Hands `io` to the splitter as a parent over `next..end` with `data`, counted in flight until
/// it completes; without room it goes back (`Requeue`), its ticket ended first.
#[inline]
fn accept<L: Lane>(
    split: &mut MdSplitter,
    mut policy: Policy<'_, L>,
    io: IoBox,
    next: u64,
    end: u64,
    data: MdParent,
    cq: &CompletionQueue,
) -> Submit {
    if !split.can_accept() {
        if let Some(t) = data.ticket {
            policy.m.end_write(t, true);
        }
        return Submit::Requeue(io);
    }
    policy.m.fwd().begin();
    let r = split.accept(io, next, end, data, &mut policy, cq);
    debug_assert!(matches!(r, Submit::Accepted), "can_accept said there was room");
    r
}
