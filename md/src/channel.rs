//! The per-core data path of an md array: the level-independent core around a personality's
//! lane.
//!
//! # Shape
//!
//! Each array has an [`IoDevice`](keel_reactor::IoDevice)`<MdCore>`: its value on a core
//! ([`MdCore`]) is built by the layout's factory ([`Layout::core`]), which makes the level's
//! lane and calls
//! [`MdCore::new`]`::<L>` — everything below is monomorphised over the lane type `L`. The core's
//! state lives in keel-bdev's layer scaffold ([`LayerCore`]: behind one `RefCell` only that core
//! touches, with the completion queue and the poller draining it; the state is its
//! [`LayerState`]) and holds:
//!
//! * [`Members`]: the members' [`Channel`]s on this core (one per role, `None` while the role has
//!   no member) and a [`ForwardPath`] to each (built once the array bdev's channel on this core
//!   binds it, [`MdCore::bind`]), a [`ForwardCtx`] counting what is below, the geometry and the
//!   state shared with the control path ([`Shared`]: slot states, resync checkpoint, the write
//!   gate);
//! * the array's splitter on this core (keel-bdev's `Splitter`, driven with md's policy from
//!   [`crate::lane`]: the lane's pieces, the members as bases) with its preallocated pools;
//! * the queue of writes the write gate held;
//! * the lane.
//!
//! The scaffold's completion queue, drained by its poller (`md_<name>`), gets every member
//! completion; the poller then runs the splitter's queues (refused children, parents waiting
//! for children), the held writes, and the lane's own step. The control path reaches a core's
//! state only through `for_each_channel` visits ([`MdCore::refresh_members`],
//! [`MdCore::kill`]).
//!
//! # A request
//!
//! The bdev layer calls the array bdev's backend channel ([`MdCore::backend`] made it: it holds
//! the core's state directly), one dynamic call; from there every call is static. In order:
//! the lane's [`Lane::fast`] (raid0's shift-only in-place forward; a no-op elsewhere); a dead
//! array fails the request `Aborted`; flush and reset fan out to the members through the
//! splitter; on levels with a write gate ([`crate::personality::Caps::resync`]) writes, unmaps and
//! write-zeroes pass it ([`crate::shared::WriteGate::admit`]: dirty mark, sync window, bitmap) —
//! a held write waits in the held queue, in order, and is admitted again from the poller — and
//! reach the lane with their [`WriteTicket`]; everything else reaches [`Lane::submit`] directly.
//!
//! A lane forwards a request **in place** along a member's path ([`forward_in_place`]): the
//! original offset and the role go into the layer word, `offset_blocks` becomes the member's,
//! and a success goes straight up without visiting this layer's poller (the bdev layer restores
//! the offset); a failure comes back here, gets its offset back, and goes to
//! [`Lane::forward_failed`]. Anything else the lane splits ([`LaneCx::split`]). A lane may also
//! publish a [`Route`] ([`Layout::route`]), so the bdev layer forwards such requests without
//! calling the array at all; the core republishes (or clears) it whenever the members, the
//! binding or the array's life change, on the same core.
//!
//! # Budget
//!
//! After the core's state exists nothing here allocates or locks.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use keel_bdev::{
    BackendChannel, Channel, ChannelCx, ChannelStats, CompletionQueue, ForwardCtx, ForwardPath, IoBox, IoOp, IoStatus,
    LayerCore, LayerHandle, LayerState, Route, RouteHandle, Submit,
};
use keel_reactor::IoChannel;

use crate::geometry::Geometry;
use crate::lane::{fan_out, splitter, LaneCx, MdSplitter, Policy, WriteTicket, LANE_TAG};
use crate::layout::MemberIdx;
use crate::personality::{Lane, Layout};
use crate::shared::{Admit, Shared, SlotState};

/// Initial capacity of the held queue.
const QUEUE_CAPACITY: usize = 256;
/// Completion queue capacity before it first grows.
const CQ_CAPACITY: usize = 512;
/// Layer word: the original offset below this bit, the member above.
const MEMBER_SHIFT: u32 = 48;
const OFFSET_MASK: u64 = (1 << MEMBER_SHIFT) - 1;

/// Hands `io` to role `member`'s member along `path` at `member_offset_blocks` with
/// [`ForwardPath::forward`]: the original offset and the role go into the layer word (a failure
/// comes back knowing both), and a request handed back gets its offset restored.
#[inline]
pub(crate) fn forward_in_place(
    path: &ForwardPath,
    mut io: IoBox,
    member: MemberIdx,
    member_offset_blocks: u64,
) -> Submit {
    let orig = io.offset_blocks;
    *io.layer_word() = orig | ((member.0 as u64) << MEMBER_SHIFT);
    io.offset_blocks = member_offset_blocks;
    match path.forward(io, orig) {
        Submit::Accepted => Submit::Accepted,
        Submit::Requeue(mut io) => {
            io.offset_blocks = orig;
            Submit::Requeue(io)
        }
    }
}

/// The status a member's answer becomes upward (a removed member is a failure of the array).
#[inline]
pub(crate) fn upward(status: IoStatus) -> IoStatus {
    if status == IoStatus::Removed {
        IoStatus::Failed
    } else {
        status
    }
}

/// This core's view of the array's members (module docs), lent to the lane for every call.
pub(crate) struct Members {
    geo: Arc<Geometry>,
    shared: Arc<Shared>,
    /// This core's row of the write gate.
    core: u32,
    /// This core's channel of each role's member.
    chans: Vec<Option<Channel>>,
    /// The forward path to each present member, once bound to the array bdev's channel here.
    paths: Vec<Option<ForwardPath>>,
    /// What the array bdev's channel on this core gave ([`MdCore::bind`]).
    bound: Option<(Rc<ChannelStats>, RouteHandle)>,
    /// Identity of the member each channel belongs to (see [`MdCore::refresh_members`]).
    ids: Vec<u64>,
    /// Channels of replaced members, dropped once nothing is in flight here.
    retired: Vec<Channel>,
    fwd: Rc<ForwardCtx>,
    /// Set when the array bdev goes away: new I/O fails.
    dead: bool,
}

impl Members {
    #[inline]
    pub(crate) fn geo(&self) -> &Geometry {
        &self.geo
    }

    #[inline]
    pub(crate) fn fwd(&self) -> &ForwardCtx {
        &self.fwd
    }

    /// Whether the array went away on this core (new I/O fails).
    #[inline]
    pub(crate) fn dead(&self) -> bool {
        self.dead
    }

    /// Whether role `m` has a member on this core.
    #[inline]
    pub(crate) fn present(&self, m: MemberIdx) -> bool {
        self.chans[m.idx()].is_some()
    }

    #[inline]
    pub(crate) fn channel(&self, m: MemberIdx) -> Option<&Channel> {
        self.chans[m.idx()].as_ref()
    }

    /// The forward path to role `m`'s member (None before binding or without a member).
    #[inline]
    pub(crate) fn path(&self, m: MemberIdx) -> Option<&ForwardPath> {
        self.paths[m.idx()].as_ref()
    }

    /// Whether member sectors `[member_sector, + len_sectors)` of role `m` may be read here.
    #[inline]
    pub(crate) fn readable(&self, m: MemberIdx, member_sector: u64, len_sectors: u64) -> bool {
        self.present(m) && self.shared.slots[m.idx()].readable(member_sector, len_sectors)
    }

    /// Whether writes go to role `m` here.
    #[inline]
    pub(crate) fn writable(&self, m: MemberIdx) -> bool {
        self.present(m) && self.shared.slots[m.idx()].writable()
    }

    /// Whether role `m` holds valid data everywhere.
    #[inline]
    pub(crate) fn in_sync(&self, m: MemberIdx) -> bool {
        self.shared.slots[m.idx()].state() == SlotState::InSync
    }

    /// Marks role `m` faulty (a member I/O failed) and wakes the control path.
    #[inline]
    pub(crate) fn fail_member(&self, m: MemberIdx) {
        self.shared.fail_member(m.idx());
    }

    /// Array sectors below this are in sync on every in-sync member.
    #[inline]
    pub(crate) fn resync_cp(&self) -> u64 {
        self.shared.resync_cp()
    }

    /// Ends a write the gate admitted; `all_ok`: every member write succeeded (a bitmap chunk
    /// written while a member failed stays dirty).
    #[inline]
    pub(crate) fn end_write(&self, t: WriteTicket, all_ok: bool) {
        let row = self.shared.gate.row(self.core);
        self.shared
            .gate
            .end(row, self.shared.intent.as_ref(), t.start, t.end, all_ok);
    }
}

/// What the array's `IoDevice` factory hands the layout for one core's state.
pub(crate) struct CoreSetup {
    /// The array's name (the poller is `md_<name>`).
    pub name: String,
    pub core: u32,
    pub layout: Arc<dyn Layout>,
    pub shared: Arc<Shared>,
    /// Per role: the member's identity and this core's channel of it.
    pub members: Vec<(u64, Option<Channel>)>,
    /// Writes pass the write gate ([`crate::personality::Caps::resync`]).
    pub gated: bool,
}

struct CoreState<L> {
    lane: L,
    m: Members,
    split: MdSplitter,
    held: VecDeque<IoBox>,
    gated: bool,
    layout: Arc<dyn Layout>,
}

impl<L: Lane> CoreState<L> {
    /// A write on a gated level: through the gate (or behind the writes it holds).
    #[inline]
    fn write(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
        if !self.split.can_accept() {
            return Submit::Requeue(io);
        }
        if !self.held.is_empty() {
            // Keep order behind writes already held.
            self.held.push_back(io);
            return Submit::Accepted;
        }
        let bs = self.m.geo.block_shift;
        let array_start = io.offset_blocks << bs;
        let (start, end) = self.lane.gate_range(array_start, array_start + (io.num_blocks << bs));
        let sh = &*self.m.shared;
        match sh.gate.admit(sh.gate.row(self.m.core), sh.intent.as_ref(), start, end) {
            Admit::Go => self.admitted(io, WriteTicket { start, end }, cq),
            Admit::Hold => {
                self.held.push_back(io);
                Submit::Accepted
            }
        }
    }

    #[inline]
    fn admitted(&mut self, io: IoBox, ticket: WriteTicket, cq: &CompletionQueue) -> Submit {
        let mut cx = LaneCx {
            m: &self.m,
            split: &mut self.split,
            cq,
        };
        self.lane.submit(&mut cx, io, Some(ticket))
    }

    /// Admits held writes in order while the gate lets them through.
    fn run_held(&mut self, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        while let Some(io) = self.held.front() {
            if self.m.dead {
                let io = self.held.pop_front().expect("front");
                io.complete(IoStatus::Aborted);
                n += 1;
                continue;
            }
            if !self.split.can_accept() {
                break;
            }
            let bs = self.m.geo.block_shift;
            let array_start = io.offset_blocks << bs;
            let (start, end) = self.lane.gate_range(array_start, array_start + (io.num_blocks << bs));
            let sh = &*self.m.shared;
            if sh.gate.admit(sh.gate.row(self.m.core), sh.intent.as_ref(), start, end) == Admit::Hold {
                break;
            }
            let io = self.held.pop_front().expect("front");
            if let Submit::Requeue(io) = self.admitted(io, WriteTicket { start, end }, cq) {
                self.held.push_front(io);
                break;
            }
            n += 1;
        }
        n
    }

    /// Rebuilds the forward paths for the present members (and the route over them).
    fn rebuild_paths(&mut self) {
        let m = &mut self.m;
        let Some((stats, _)) = &m.bound else { return };
        for (path, member) in m.paths.iter_mut().zip(&m.chans) {
            let same = matches!((&*path, member), (Some(p), Some(c)) if p.base().same_channel(c));
            if !same {
                *path = member.as_ref().map(|c| ForwardPath::new(&m.fwd, stats, c.clone()));
            }
        }
        self.publish_route();
    }

    /// Publishes the layout's route over this core's paths while the array lives; clears it
    /// otherwise.
    fn publish_route(&self) {
        let Some((_, slot)) = &self.m.bound else { return };
        let route = if self.m.dead {
            None
        } else {
            self.layout.route(&self.m.paths)
        };
        slot.set(route.unwrap_or_else(Route::off));
    }
}

/// md's per-core state in keel-bdev's layer scaffold: the requests from above, the member
/// completions, and the poller's step.
impl<L: Lane> LayerState for CoreState<L> {
    /// Entry of every request (range and op already validated by the bdev layer).
    #[inline]
    fn submit(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
        let io = match self.lane.fast(&self.m, io) {
            Ok(s) => return s,
            Err(io) => io,
        };
        if self.m.dead {
            io.complete(IoStatus::Aborted);
            return Submit::Accepted;
        }
        match io.op {
            IoOp::Flush | IoOp::Reset => {
                let roles = self.m.chans.len() as u64;
                let policy = Policy {
                    lane: &mut self.lane,
                    m: &self.m,
                };
                fan_out(&mut self.split, policy, io, roles, cq)
            }
            IoOp::Write | IoOp::Unmap | IoOp::WriteZeroes if self.gated => self.write(io, cq),
            _ => {
                let mut cx = LaneCx {
                    m: &self.m,
                    split: &mut self.split,
                    cq,
                };
                self.lane.submit(&mut cx, io, None)
            }
        }
    }

    /// One completion from a member.
    #[inline]
    fn complete(&mut self, mut io: IoBox, cq: &CompletionQueue) {
        if io.depth() == 0 {
            if io.tag & LANE_TAG != 0 {
                self.m.fwd.end();
                let mut cx = LaneCx {
                    m: &self.m,
                    split: &mut self.split,
                    cq,
                };
                return self.lane.own_done(&mut cx, io);
            }
            let mut policy = Policy {
                lane: &mut self.lane,
                m: &self.m,
            };
            return self.split.child_done(io, &mut policy, cq);
        }
        // A forwarded request that failed (forwarded successes never come here).
        let word = *io.layer_word();
        let member = MemberIdx((word >> MEMBER_SHIFT) as u16);
        self.m.fwd.end();
        io.offset_blocks = word & OFFSET_MASK;
        let mut cx = LaneCx {
            m: &self.m,
            split: &mut self.split,
            cq,
        };
        self.lane.forward_failed(&mut cx, io, member);
    }

    /// The splitter's queues, the held writes, the lane's own step, and replaced member
    /// channels once nothing is in flight.
    fn poll(&mut self, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        if !self.split.is_idle() {
            let mut policy = Policy {
                lane: &mut self.lane,
                m: &self.m,
            };
            n += self.split.poll(&mut policy, cq);
        }
        if !self.held.is_empty() {
            n += self.run_held(cq);
        }
        let mut cx = LaneCx {
            m: &self.m,
            split: &mut self.split,
            cq,
        };
        n += self.lane.poll(&mut cx);
        if !self.m.retired.is_empty() && self.m.fwd.inflight() == 0 {
            self.m.retired.clear();
            n += 1;
        }
        n
    }
}

/// The control-path side of a core's state, whatever its lane.
trait CoreOps {
    fn refresh_members(&self, ids: &[u64], open: &dyn Fn(usize) -> Option<Channel>);
    fn kill(&self);
    fn bind(&self, cx: &ChannelCx);
    fn backend(&self, core: IoChannel<MdCore>) -> Box<dyn BackendChannel>;
}

struct Handle<L: Lane>(LayerCore<CoreState<L>>);

impl<L: Lane> CoreOps for Handle<L> {
    fn refresh_members(&self, ids: &[u64], open: &dyn Fn(usize) -> Option<Channel>) {
        let mut st = self.0.state();
        for (r, &id) in ids.iter().enumerate() {
            if st.m.ids[r] == id {
                continue;
            }
            st.m.ids[r] = id;
            let new = if id == 0 { None } else { open(r) };
            if let Some(old) = std::mem::replace(&mut st.m.chans[r], new) {
                st.m.retired.push(old);
            }
            st.lane.member_changed(MemberIdx(r as u16));
        }
        st.rebuild_paths();
    }

    fn kill(&self) {
        let mut st = self.0.state();
        st.m.dead = true;
        st.lane.quiesce();
        st.publish_route();
    }

    fn bind(&self, cx: &ChannelCx) {
        let mut st = self.0.state();
        if let Some((_, old)) = st.m.bound.take() {
            old.set(Route::off());
        }
        st.m.bound = Some((cx.stats().clone(), cx.route_handle()));
        st.rebuild_paths();
    }

    fn backend(&self, core: IoChannel<MdCore>) -> Box<dyn BackendChannel> {
        Box::new(MdChannel {
            core,
            layer: self.0.handle(),
        })
    }
}

/// An array's state on one core: the value of its [`IoDevice`](keel_reactor::IoDevice)
/// channel. Built by the array's `IoDevice` factory on the core that first does I/O to it.
pub(crate) struct MdCore {
    ops: Box<dyn CoreOps>,
}

impl MdCore {
    /// Builds the core's state around `lane` (called by [`Layout::core`] on the core itself):
    /// members, split engine and queues are allocated now, and the poller `md_<name>` is
    /// registered.
    pub(crate) fn new<L: Lane>(setup: CoreSetup, lane: L) -> MdCore {
        let CoreSetup {
            name,
            core,
            layout,
            shared,
            members,
            gated,
        } = setup;
        shared.gate.row(core);
        let roles = members.len();
        let (ids, chans) = members.into_iter().unzip();
        let layer = LayerCore::new(format!("md_{name}"), CQ_CAPACITY, |cq| CoreState {
            lane,
            m: Members {
                geo: layout.geometry().clone(),
                shared,
                core,
                chans,
                paths: (0..roles).map(|_| None).collect(),
                bound: None,
                ids,
                retired: Vec::new(),
                fwd: ForwardCtx::new(cq.clone()),
                dead: false,
            },
            split: splitter(),
            held: VecDeque::with_capacity(QUEUE_CAPACITY),
            gated,
            layout,
        });
        MdCore {
            ops: Box::new(Handle(layer)),
        }
    }

    /// Control-path visit: installs the members of `ids` (per role; 0 = none) whose identity
    /// changed, opening this core's channel with `open(role)`. Replaced channels are dropped
    /// once nothing is in flight on this core.
    pub(crate) fn refresh_members(&self, ids: &[u64], open: impl Fn(usize) -> Option<Channel>) {
        self.ops.refresh_members(ids, &open)
    }

    /// Control-path visit: the array is going away; new and held I/O fail.
    pub(crate) fn kill(&self) {
        self.ops.kill()
    }

    /// Binds this core's state to the array bdev's channel being built here (see
    /// [`ChannelCx`]): member paths link to its statistics, and a layout with a route publishes
    /// it in its slot. Called on the core, from the bdev channel's construction.
    pub(crate) fn bind(&self, cx: &ChannelCx) {
        self.ops.bind(cx)
    }

    /// The array bdev's backend channel on this core over `core` (this state's own `IoChannel`),
    /// bound to `cx`.
    pub(crate) fn backend(core: IoChannel<MdCore>, cx: &ChannelCx) -> Box<dyn BackendChannel> {
        core.bind(cx);
        core.ops.backend(core.clone())
    }
}

/// The array bdev's backend channel on one core.
struct MdChannel<L> {
    core: IoChannel<MdCore>,
    /// The core's state, held directly (one pointer hop less per I/O).
    layer: LayerHandle<CoreState<L>>,
}

impl<L: Lane> BackendChannel for MdChannel<L> {
    #[inline]
    fn submit(&self, io: IoBox) -> Submit {
        self.layer.submit(io)
    }

    fn abort_all(&self) {
        self.core.kill();
    }
}

#[cfg(test)]
mod tests {
    //! The core around a lane that owns its member I/O (the shape a stripe cache takes): reads
    //! become the lane's own requests from a pool of two, parents beyond that wait in the lane's
    //! queue and go out from its poll step, and a kill aborts what still waits. Writes use the
    //! splitter, so both kinds share the core's completion queue. And the splitter's pieces over
    //! members that are absent or go away while a child waits to be sent again.

    use std::collections::VecDeque;

    use keel_bdev::modules::malloc;
    use keel_bdev::{BdevBackend, BdevInfo, BdevParams, BdevRegistry, ConfigCall, DmaBuf, IoCaps, IoRequest, IoVec};
    use keel_reactor::{CoreId, IoDevice, TestDriver};

    use super::*;
    use crate::personality::{Cursor, Health, Piece, LANE_TAG};
    use crate::shared::SlotState;

    const MAIN: CoreId = CoreId(0);
    const BLOCKS: u64 = 256;
    const POOL: usize = 2;

    #[derive(Debug)]
    struct OwnLayout {
        geo: Arc<Geometry>,
    }

    impl Layout for OwnLayout {
        fn geometry(&self) -> &Arc<Geometry> {
            &self.geo
        }

        fn health(&self, live: &dyn Fn(MemberIdx) -> bool) -> Health {
            if live(MemberIdx(0)) {
                Health::Optimal
            } else {
                Health::Failed
            }
        }

        fn core(self: Arc<Self>, setup: CoreSetup) -> MdCore {
            let pool = (0..POOL)
                .map(|i| {
                    let mut io = IoRequest::new_boxed();
                    io.tag = LANE_TAG | i as u64;
                    io
                })
                .collect();
            MdCore::new(
                setup,
                OwnLane {
                    pool,
                    parents: (0..POOL).map(|_| None).collect(),
                    waiting: VecDeque::new(),
                },
            )
        }
    }

    struct OwnLane {
        pool: Vec<IoBox>,
        /// Per own request (tag index): the parent it serves.
        parents: Vec<Option<IoBox>>,
        waiting: VecDeque<IoBox>,
    }

    impl OwnLane {
        fn pump(&mut self, cx: &mut LaneCx<'_>) -> usize {
            let mut n = 0;
            while !self.pool.is_empty() {
                let Some(parent) = self.waiting.pop_front() else { break };
                let mut own = self.pool.pop().expect("checked");
                own.iovs.clear();
                for v in &parent.iovs {
                    own.iovs.push(v.clone());
                }
                own.prepare(IoOp::Read, parent.offset_blocks, parent.num_blocks);
                let i = (own.tag & !LANE_TAG) as usize;
                match cx.submit_own(MemberIdx(0), own) {
                    Submit::Accepted => {
                        self.parents[i] = Some(parent);
                        n += 1;
                    }
                    Submit::Requeue(own) => {
                        self.pool.push(own);
                        self.waiting.push_front(parent);
                        break;
                    }
                }
            }
            n
        }
    }

    impl Lane for OwnLane {
        fn submit(&mut self, cx: &mut LaneCx<'_>, io: IoBox, ticket: Option<WriteTicket>) -> Submit {
            if io.op != IoOp::Read {
                let bs = cx.m.geo().block_shift;
                let start = io.offset_blocks << bs;
                let end = start + (io.num_blocks << bs);
                return cx.split(self, io, start, end, ticket);
            }
            self.waiting.push_back(io);
            self.pump(cx);
            Submit::Accepted
        }

        fn next_piece(&mut self, _m: &Members, _op: IoOp, cur: &mut Cursor) -> Piece {
            let array_sector = cur.next;
            let sectors = cur.end - cur.next;
            cur.next = cur.end;
            Piece::Child {
                member: MemberIdx(0),
                member_sector: array_sector,
                array_sector,
                sectors,
            }
        }

        fn own_done(&mut self, _cx: &mut LaneCx<'_>, mut io: IoBox) {
            let i = (io.tag & !LANE_TAG) as usize;
            let parent = self.parents[i].take().expect("an own request serves a parent");
            io.iovs.clear();
            let status = io.status();
            self.pool.push(io);
            parent.complete(status);
        }

        fn poll(&mut self, cx: &mut LaneCx<'_>) -> usize {
            self.pump(cx)
        }

        fn quiesce(&mut self) {
            while let Some(io) = self.waiting.pop_front() {
                io.complete(IoStatus::Aborted);
            }
        }
    }

    struct OwnBackend {
        dev: Arc<IoDevice<MdCore>>,
    }

    impl BdevBackend for OwnBackend {
        fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
            MdCore::backend(self.dev.get_channel(), cx)
        }

        fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
            None
        }
    }

    fn io(op: IoOp, block: u64, buf: &DmaBuf) -> IoBox {
        let mut io = IoRequest::new_boxed();
        io.iovs.push(IoVec::whole(buf.clone()));
        io.prepare(op, block, 1);
        io
    }

    #[test]
    fn a_lane_owning_its_requests_gets_their_completions_its_poll_and_its_quiesce() {
        let d = TestDriver::new(1);
        let reg = BdevRegistry::new(d.cores());
        malloc::create(&reg, &malloc::MallocOpts::new("M0", BLOCKS, 512)).unwrap();
        let shared = Arc::new(Shared::new(&[SlotState::InSync], u64::MAX, true, None));
        let layout: Arc<dyn Layout> = Arc::new(OwnLayout {
            geo: Arc::new(Geometry {
                size_sectors: BLOCKS,
                data_offset_sectors: 0,
                block_shift: 0,
                member_shifts: vec![0],
            }),
        });
        let member = Arc::new(reg.open("M0", true, |_| {}).unwrap());
        let (l2, s2, m2) = (layout.clone(), shared.clone(), member.clone());
        let dev = Arc::new(IoDevice::new("md_own".to_string(), move |core: CoreId| {
            l2.clone().core(CoreSetup {
                name: "own".into(),
                core: core.0,
                layout: l2.clone(),
                shared: s2.clone(),
                members: vec![(1, Some(m2.channel()))],
                gated: false,
            })
        }));
        let params = BdevParams {
            name: "own".into(),
            uuid: None,
            product_name: "test",
            module: "test",
            block_size: 512,
            num_blocks: BLOCKS,
            caps: IoCaps::of(&[IoOp::Read, IoOp::Write]),
            optimal_io_boundary_blocks: 0,
        };
        reg.register(params, Arc::new(OwnBackend { dev: dev.clone() })).unwrap();
        let cq = CompletionQueue::with_capacity(64);
        let (desc, ch) = d.enter(MAIN, || {
            let desc = reg.open("own", true, |_| {}).unwrap();
            let ch = desc.channel();
            (desc, ch)
        });
        // Eight blocks written through the split engine, then read back through the lane's own
        // requests, all at once: two go out at submit, the rest from the lane's poll step.
        let bufs: Vec<DmaBuf> = (0..8)
            .map(|i| {
                let b = DmaBuf::new(512);
                b.bytes_mut().fill(0x10 + i as u8);
                b
            })
            .collect();
        d.enter(MAIN, || {
            for (i, b) in bufs.iter().enumerate() {
                assert!(matches!(
                    ch.submit(io(IoOp::Write, i as u64 * 3, b), &cq),
                    Submit::Accepted
                ));
            }
        });
        let mut done = 0;
        assert!(d.run_until(100_000, || {
            while let Some(io) = cq.pop() {
                assert_eq!(io.status(), IoStatus::Success);
                done += 1;
            }
            done == 8
        }));
        let reads: Vec<DmaBuf> = (0..8).map(|_| DmaBuf::new(512)).collect();
        d.enter(MAIN, || {
            for (i, b) in reads.iter().enumerate() {
                assert!(matches!(
                    ch.submit(io(IoOp::Read, i as u64 * 3, b), &cq),
                    Submit::Accepted
                ));
            }
        });
        let mut done = 0;
        assert!(d.run_until(100_000, || {
            while let Some(io) = cq.pop() {
                assert_eq!(io.status(), IoStatus::Success);
                done += 1;
            }
            done == 8
        }));
        for (i, b) in reads.iter().enumerate() {
            assert!(b.bytes().iter().all(|&x| x == 0x10 + i as u8), "block {i}");
        }
        // Killed with reads waiting: those fail Aborted, the ones out still complete.
        d.enter(MAIN, || {
            for b in &reads {
                assert!(matches!(ch.submit(io(IoOp::Read, 0, b), &cq), Submit::Accepted));
            }
            // The visit runs before the core's poller would send more of them.
            dev.for_each_channel(|c: &MdCore| c.kill(), || {});
        });
        let (mut ok, mut aborted) = (0, 0);
        assert!(d.run_until(100_000, || {
            while let Some(io) = cq.pop() {
                match io.status() {
                    IoStatus::Success => ok += 1,
                    IoStatus::Aborted => aborted += 1,
                    s => panic!("{s:?}"),
                }
            }
            ok + aborted == 8
        }));
        assert_eq!((ok, aborted), (POOL, 8 - POOL));
        d.enter(MAIN, move || {
            drop(ch);
            drop(desc);
            drop(member);
        });
    }

    /// Two roles, pieces of 8 sectors alternating between them.
    #[derive(Debug)]
    struct PairLayout {
        geo: Arc<Geometry>,
    }

    impl Layout for PairLayout {
        fn geometry(&self) -> &Arc<Geometry> {
            &self.geo
        }

        fn health(&self, _live: &dyn Fn(MemberIdx) -> bool) -> Health {
            Health::Optimal
        }

        fn core(self: Arc<Self>, setup: CoreSetup) -> MdCore {
            MdCore::new(setup, PairLane)
        }
    }

    struct PairLane;

    impl Lane for PairLane {
        fn submit(&mut self, cx: &mut LaneCx<'_>, io: IoBox, ticket: Option<WriteTicket>) -> Submit {
            let start = io.offset_blocks;
            let end = start + io.num_blocks;
            cx.split(self, io, start, end, ticket)
        }

        fn next_piece(&mut self, _m: &Members, _op: IoOp, cur: &mut Cursor) -> Piece {
            let array_sector = cur.next;
            let sectors = (8 - array_sector % 8).min(cur.end - cur.next);
            cur.next += sectors;
            Piece::Child {
                member: MemberIdx((array_sector / 8 % 2) as u16),
                member_sector: array_sector,
                array_sector,
                sectors,
            }
        }
    }

    /// A member that refuses every request (its queue is always full).
    struct Refusing;

    impl BackendChannel for Refusing {
        fn submit(&self, io: IoBox) -> Submit {
            Submit::Requeue(io)
        }

        fn abort_all(&self) {}
    }

    impl BdevBackend for Refusing {
        fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
            Box::new(Refusing)
        }

        fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
            None
        }
    }

    fn params(name: &str) -> BdevParams {
        BdevParams {
            name: name.into(),
            uuid: None,
            product_name: "test",
            module: "test",
            block_size: 512,
            num_blocks: BLOCKS,
            caps: IoCaps::of(&[IoOp::Read, IoOp::Write, IoOp::Flush]),
            optimal_io_boundary_blocks: 0,
        }
    }

    #[test]
    fn pieces_on_absent_or_departed_members_fail_their_parent_through_the_queue() {
        let d = TestDriver::new(1);
        let reg = BdevRegistry::new(d.cores());
        reg.register(params("R0"), Arc::new(Refusing)).unwrap();
        malloc::create(&reg, &malloc::MallocOpts::new("M1", BLOCKS, 512)).unwrap();
        let shared = Arc::new(Shared::new(&[SlotState::InSync; 2], u64::MAX, true, None));
        let layout: Arc<dyn Layout> = Arc::new(PairLayout {
            geo: Arc::new(Geometry {
                size_sectors: BLOCKS,
                data_offset_sectors: 0,
                block_shift: 0,
                member_shifts: vec![0, 0],
            }),
        });
        let r0 = Arc::new(reg.open("R0", true, |_| {}).unwrap());
        let m1 = Arc::new(reg.open("M1", true, |_| {}).unwrap());
        let (l2, s2, a, b) = (layout.clone(), shared.clone(), r0.clone(), m1.clone());
        let dev = Arc::new(IoDevice::new("md_pair".to_string(), move |core: CoreId| {
            l2.clone().core(CoreSetup {
                name: "pair".into(),
                core: core.0,
                layout: l2.clone(),
                shared: s2.clone(),
                members: vec![(1, Some(a.channel())), (2, Some(b.channel()))],
                gated: false,
            })
        }));
        reg.register(params("pair"), Arc::new(OwnBackend { dev: dev.clone() }))
            .unwrap();
        let cq = CompletionQueue::with_capacity(64);
        let (desc, ch) = d.enter(MAIN, || {
            let desc = reg.open("pair", true, |_| {}).unwrap();
            let ch = desc.channel();
            (desc, ch)
        });
        let buf = DmaBuf::new(16 * 512);
        let write = |block: u64, blocks: u64| {
            let mut io = IoRequest::new_boxed();
            io.iovs.push(IoVec::whole(buf.clone()));
            io.prepare(IoOp::Write, block, blocks);
            io
        };
        let wait_one = |d: &TestDriver| {
            let mut got = None;
            assert!(d.run_until(100_000, || {
                got = cq.pop().map(|io| io.status());
                got.is_some()
            }));
            got.unwrap()
        };
        // A piece on role 1 alone: it goes to M1 and succeeds.
        d.enter(MAIN, || {
            assert!(matches!(ch.submit(write(8, 8), &cq), Submit::Accepted))
        });
        assert_eq!(wait_one(&d), IoStatus::Success);
        // A write over both roles while R0 refuses: its first piece waits to be sent again, the
        // second is written; nothing completes while R0 keeps refusing.
        d.enter(MAIN, || {
            assert!(matches!(ch.submit(write(0, 16), &cq), Submit::Accepted))
        });
        d.run_until_idle(50);
        assert!(cq.pop().is_none(), "the parent waits for its refused piece");
        // Role 0 loses its member on this core with the child still waiting: the child cannot go
        // anywhere, comes back `Removed` through the core's queue, and fails its parent.
        d.enter(MAIN, || {
            dev.for_each_channel(|c: &MdCore| c.refresh_members(&[0, 2], |_| None), || {})
        });
        assert_eq!(wait_one(&d), IoStatus::Failed);
        // Role 0 absent: its pieces are answered without a child and fail the parent; the flush
        // goes to role 1 only.
        d.enter(MAIN, || {
            assert!(matches!(ch.submit(write(4, 8), &cq), Submit::Accepted))
        });
        assert_eq!(wait_one(&d), IoStatus::Failed);
        d.enter(MAIN, || {
            let mut io = IoRequest::new_boxed();
            io.prepare(IoOp::Flush, 0, 0);
            assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
        });
        assert_eq!(wait_one(&d), IoStatus::Success);
        d.enter(MAIN, move || {
            drop(ch);
            drop(desc);
            drop((r0, m1));
        });
    }
}
