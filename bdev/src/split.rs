//! The splitter: one engine that cuts a layer's requests into child requests.
//!
//! # Why one engine
//!
//! A layer over other bdevs (dm, md; later the NBD and NVMe exports, and a userspace NVMe driver
//! that splits at its transfer-size and PRP limits) must sometimes turn one request — the
//! **parent** — into several requests of its own — the **children** — and complete the parent
//! once they are all back. The bookkeeping is the same every time: a pool of child requests with
//! side data per child, a slab of parent slots with a free list, a queue of parents that ran out
//! of children half-way, a queue of children a base handed back, and the accept / issue / finish
//! steps. What differs is small and is the layer's **policy** ([`SplitPolicy`]): what the next
//! piece of a parent is, what a child's completion means, and how a parent ends. [`Splitter`] is
//! the engine; a layer owns one per core and drives it with its policy.
//!
//! # Ownership
//!
//! The splitter owns, from its construction on, every child request (their `tag` is their index:
//! the splitter is their owner, so the owner's cookie is its own), the side data of each child
//! (the policy's [`SplitPolicy::Child`] plus the parent it belongs to), the parent slots (the
//! parent request while it is split, its cursor, its children out, its status so far and the
//! policy's [`SplitPolicy::Parent`]) and both queues. Everything is allocated in
//! [`Splitter::new`]; the pending queue has room for every parent and the retry queue for every
//! child (and what the layer says it parks of its own), so nothing allocates or locks per request
//! afterwards. A child's scatter list is a window on its parent's
//! buffers ([`slice_iovs`](crate::slice_iovs): reference-counted handles, not copies), which the
//! splitter clears when the child comes back; the parent's buffers stay the submitter's.
//!
//! The policy owns everything else: the layer's mapping and its bases. It is the layer's per-core
//! state, or the part of it beside the splitter (dm keeps the two as fields of one struct and
//! lends the policy field to each call), so the two are disjoint and the policy can never reach
//! back into the engine in the middle of a step. The engine is generic over the policy: its
//! methods inline into the engine's loops, no dynamic call per piece.
//!
//! # The policy contract
//!
//! A parent is accepted with a cursor `next..end` in a unit the policy chooses (device blocks for
//! a split, leg or member numbers for a fan-out) and its [`SplitPolicy::Parent`] data. While
//! `next < end`, the splitter asks [`SplitPolicy::next_piece`] for the piece at `next`; the
//! answer ([`Step`]) says how far the cursor moves (`units`, which may be 0 when the policy's
//! parent data carries the progress, as a mirror's copy counter does) and whether a child carries
//! the piece:
//!
//! * [`Step::Send`]: a child (taken from the [`Children`] handed in with its side-data slot, both
//!   filled in: op, range, scatter list; the policy's [`SplitPolicy::Child`]) goes to a base now,
//!   through [`SplitPolicy::send`].
//! * [`Step::Kept`]: a child the layer keeps for now (a delay FIFO) and sends later, with
//!   [`Splitter::send`] (or itself, handing a refusal to [`Splitter::park`]).
//! * [`Step::Answered`]: the piece needs no child (an error target, zero-fill, a dropped write, a
//!   copy skipped); its status folds into the parent at once.
//! * [`Step::Stalled`]: the policy needed a child and the pool was empty. The cursor stays; the
//!   parent waits in the pending queue and the same piece is asked for again later.
//!
//! When a child comes back (the layer sees it on its completion queue — children carry no frame,
//! so `depth() == 0` tells them from the layer's own requests — and calls
//! [`Splitter::child_done`]), [`SplitPolicy::child_done`] says what it means:
//! [`ChildDone::Finished`] with the status to fold into the parent, or [`ChildDone::Resend`]
//! after re-preparing the child (a read retried on another copy): the child goes out again and
//! the parent keeps waiting. A parent is done when its cursor reached `end` and no child is out;
//! [`SplitPolicy::finish`] then gets the parent request, its status and its data, and completes
//! it upward (or keeps it: dm's noflush requeue, md's write-gate end).
//!
//! # Shapes
//!
//! * **Split** (dm's data pieces, md's striped levels, an NVMe driver's transfer-size and PRP
//!   limits): the cursor is blocks; each piece ends at the next boundary and goes to the base
//!   that holds it.
//! * **Fan-out** (flush and reset to every device or member): the cursor is legs, one unit each;
//!   a leg without a base is answered (`Step::Answered`), `Unsupported` can be mapped to success
//!   in `child_done`.
//! * **Mirror** (md's writes to every copy): each copy of a piece is a step of 0 units, the copy
//!   counter in the policy's parent data, and a last step answered without a child moves the
//!   cursor past the piece; a copy that cannot be written is answered with 0 units and marks
//!   the parent degraded there; `finish` settles the status and ends the write gate. A layer with an admission gate checks [`Splitter::can_accept`] before
//!   admitting, so an admitted request is never handed back.
//! * **Retry elsewhere** (md's reads): `child_done` re-prepares a failed child for another copy
//!   and answers [`ChildDone::Resend`].
//!
//! Statuses fold **first failure wins**: the parent's status is the first non-success folded in,
//! in the order pieces were answered and children finished. A policy that wants another rule
//! (a write that survives a failed copy, a piece pushed back rather than failed) maps the status
//! before handing it over.
//!
//! # Which core calls what
//!
//! Everything runs on the layer's core, inside its own calls: [`Splitter::accept`] from the
//! layer's `submit`, [`Splitter::child_done`] from the poller that drains the layer's completion
//! queue, [`Splitter::poll`] (retry, then pending) from that same poller. Completions never run on
//! the submitter's stack: a child the policy cannot send at all ([`Sent::Gone`]) completes with
//! `Removed` through the layer's completion queue like any other.
//!
//! # Requeue
//!
//! [`Splitter::accept`] hands the request back (`Submit::Requeue`) only when nothing was started:
//! no free parent slot, or no child left in the pool. Once accepted, a parent always progresses:
//! children a base refuses wait in the retry queue ([`Splitter::poll_retry`] sends them again, in
//! order, stopping at the first refusal), and a parent whose pieces found the pool empty waits in
//! the pending queue and continues as children come back ([`Splitter::poll_pending`]). Children
//! always come back (from their base, from the retry queue, from the layer that kept them), so
//! an I/O of any size completes with any pool size.

use std::collections::VecDeque;

use crate::{CompletionQueue, IoBox, IoRequest, IoStatus, Submit};

/// The policy's number for a base a child goes to (dm: the table's device index; md: the
/// member's role). The splitter only carries it back to [`SplitPolicy::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseId(pub u32);

/// A parent slot's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ParentId(u32);

/// A parent as the policy sees it in a step: the request, its cursor, and the policy's data.
pub struct Parent<'a, P> {
    /// The parent request. Its buffers are its submitter's; children take windows of them.
    pub io: &'a IoRequest,
    /// Where the next piece starts, in the policy's unit (see [`Splitter::accept`]).
    pub next: u64,
    /// Where the parent ends, in the same unit.
    pub end: u64,
    /// The policy's per-parent data.
    pub data: &'a mut P,
}

/// What the policy made of the piece at the cursor (see the module docs).
pub enum Step {
    /// Send `child` (taken from [`Children`] in this step, prepared, its side data filled in) to
    /// `base` now; it covers `units` of the parent's cursor.
    Send { child: IoBox, base: BaseId, units: u64 },
    /// The child taken from [`Children`] in this step (its side data filled in) is kept by the
    /// layer, which sends it later itself; it counts as out. It covers `units`.
    Kept { units: u64 },
    /// `units` need no child; `status` folds into the parent now.
    Answered { units: u64, status: IoStatus },
    /// A child was needed and [`Children::take`] found none: stop; the same piece is asked for
    /// again once children come back. Only when the pool is empty.
    Stalled,
}

/// What a child's completion means for its parent (see [`SplitPolicy::child_done`]).
pub enum ChildDone {
    /// The child is done; `status` folds into the parent.
    Finished(IoStatus),
    /// The policy re-prepared the child (e.g. a read retried on another copy): send it to `base`.
    Resend { base: BaseId },
}

/// What became of a request the policy sends to a base ([`SplitPolicy::send`]).
pub enum Sent {
    /// The base took it; its completion comes to the completion queue it was sent with.
    Accepted,
    /// The base is out of resources: the splitter keeps it in the retry queue.
    Busy(IoBox),
    /// The base is gone (no channel any more): the splitter completes it with `Removed` through
    /// the completion queue, so the layer sees the failure like any other.
    Gone(IoBox),
}

impl From<Submit> for Sent {
    #[inline]
    fn from(s: Submit) -> Sent {
        match s {
            Submit::Accepted => Sent::Accepted,
            Submit::Requeue(io) => Sent::Busy(io),
        }
    }
}

/// The free children, as one step of [`SplitPolicy::next_piece`] sees them: take at most one,
/// when the piece needs it (after any mapping the piece needs, or before: the policy's choice).
pub struct Children<'a, C> {
    free: &'a mut Vec<IoBox>,
    entries: &'a mut [ChildEntry<C>],
    parent: ParentId,
    /// The child taken in this step (checks the contract in debug builds).
    #[cfg(debug_assertions)]
    taken: Option<u64>,
}

impl<C> Children<'_, C> {
    /// A free child request (its `tag` is the splitter's; keep it) and its side-data slot, which
    /// holds whatever the child's last use left there: fill it in. `None` when the pool is
    /// empty — answer [`Step::Stalled`] then. At most one per step; a child taken must leave in
    /// the step's [`Step::Send`] or [`Step::Kept`], or go back with [`Children::put_back`].
    #[inline]
    pub fn take(&mut self) -> Option<(IoBox, &mut C)> {
        let io = self.free.pop()?;
        #[cfg(debug_assertions)]
        {
            assert!(self.taken.is_none(), "one child per step");
            self.taken = Some(io.tag);
        }
        let entry = &mut self.entries[io.tag as usize];
        entry.parent = self.parent;
        Some((io, &mut entry.data))
    }

    /// Gives back a child taken in this step that the piece turned out not to need.
    #[inline]
    pub fn put_back(&mut self, io: IoBox) {
        #[cfg(debug_assertions)]
        {
            assert_eq!(self.taken, Some(io.tag), "the child taken in this step");
            self.taken = None;
        }
        self.free.push(io);
    }

    /// Whether the pool is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

/// A layer's side of the splitter (see the module docs for the contract). Called on the layer's
/// core, from inside [`Splitter`]'s methods only.
pub trait SplitPolicy {
    /// Side data of a child, kept by the splitter next to the child (the policy fills it in when
    /// it takes the child) until the child finishes.
    type Child: Default;
    /// Side data of a parent, given at [`Splitter::accept`] and handed back at
    /// [`SplitPolicy::finish`].
    type Parent: Default;

    /// The piece of `parent` at `parent.next` (which is below `parent.end`). Must make progress:
    /// move the cursor, or change `parent.data` so that a later step does.
    fn next_piece(&mut self, parent: Parent<'_, Self::Parent>, children: &mut Children<'_, Self::Child>) -> Step;

    /// Sends `io` (a child, or a request the layer parked with [`Splitter::park`]) to `base`,
    /// with completions to `cq`.
    fn send(&mut self, base: BaseId, io: IoBox, cq: &CompletionQueue) -> Sent;

    /// `child` came back (its status is its outcome; its scatter list is still the window). The
    /// policy may act on it (undo what it changed, mark a member failed) and says what it means.
    fn child_done(
        &mut self,
        child: &mut IoRequest,
        data: &mut Self::Child,
        parent: Parent<'_, Self::Parent>,
    ) -> ChildDone;

    /// The parent is done (cursor at the end, no child out) with `status` (first failure folded
    /// in): complete it upward, or keep it. Its slot is free again.
    fn finish(&mut self, io: IoBox, status: IoStatus, data: Self::Parent);
}

/// A parent being split.
struct Slot<P> {
    io: Option<IoBox>,
    next: u64,
    end: u64,
    /// Children out (sent, kept, or waiting in the retry queue).
    remaining: u32,
    status: IoStatus,
    data: P,
}

/// What the splitter keeps of a child out.
struct ChildEntry<C> {
    parent: ParentId,
    data: C,
}

/// The engine (see the module docs). One per layer per core, owned by the layer's per-core state;
/// `!Send` like the requests it holds.
pub struct Splitter<C, P> {
    /// Free children; a child's `tag` is its index in `children`.
    free: Vec<IoBox>,
    children: Box<[ChildEntry<C>]>,
    slots: Box<[Slot<P>]>,
    free_slots: Vec<ParentId>,
    /// Parents that ran out of children, in order.
    pending: VecDeque<ParentId>,
    /// Requests a base handed back, with the base to send them to again, in order.
    retry: VecDeque<(IoBox, BaseId)>,
}

/// Folds `status` into a parent's: the first failure wins.
#[inline]
fn fold(slot: &mut IoStatus, status: IoStatus) {
    if status != IoStatus::Success && *slot == IoStatus::Success {
        *slot = status;
    }
}

/// Sends `io` to `base` through the policy: refused ones wait in `retry`, ones that cannot go
/// anywhere complete with `Removed` on `cq`.
#[inline(always)]
fn send<Po: SplitPolicy>(
    policy: &mut Po,
    retry: &mut VecDeque<(IoBox, BaseId)>,
    base: BaseId,
    io: IoBox,
    cq: &CompletionQueue,
) {
    match policy.send(base, io, cq) {
        Sent::Accepted => {}
        Sent::Busy(io) => retry.push_back((io, base)),
        Sent::Gone(io) => io.complete_direct(cq, IoStatus::Removed),
    }
}

impl<C: Default, P: Default> Splitter<C, P> {
    /// A splitter with `children` child requests and `parents` parent slots (both at least 1),
    /// all allocated now; the retry queue has room for `retry_capacity` requests before it first
    /// grows (children, plus whatever the layer parks). Called on the layer's core when it builds
    /// its per-core state.
    pub fn new(children: usize, parents: usize, retry_capacity: usize) -> Splitter<C, P> {
        let (children, parents) = (children.max(1), parents.max(1));
        Splitter {
            free: (0..children)
                .rev()
                .map(|i| {
                    let mut io = IoRequest::new_boxed();
                    io.tag = i as u64;
                    io
                })
                .collect(),
            children: (0..children)
                .map(|_| ChildEntry {
                    parent: ParentId(0),
                    data: C::default(),
                })
                .collect(),
            slots: (0..parents)
                .map(|_| Slot {
                    io: None,
                    next: 0,
                    end: 0,
                    remaining: 0,
                    status: IoStatus::Success,
                    data: P::default(),
                })
                .collect(),
            free_slots: (0..parents as u32).rev().map(ParentId).collect(),
            pending: VecDeque::with_capacity(parents),
            retry: VecDeque::with_capacity(retry_capacity.max(children)),
        }
    }

    /// Whether [`Splitter::accept`] would take a request now (a free slot and a free child).
    #[inline]
    pub fn can_accept(&self) -> bool {
        !self.free.is_empty() && !self.free_slots.is_empty()
    }

    /// Parents taken and not finished yet. A layer that drains counts these with the rest of
    /// what it has below it.
    #[inline]
    pub fn parents_in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Children out of the pool (sent, kept by the layer, or waiting to be sent again).
    #[inline]
    pub fn children_out(&self) -> usize {
        self.children.len() - self.free.len()
    }

    /// Whether [`Splitter::poll`] has nothing to do (no request to send again, no parent
    /// waiting): a poller checks this before building its policy.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.retry.is_empty() && self.pending.is_empty()
    }

    /// Sends `io` (a child the layer kept, or a request of its own) to `base` through the
    /// policy, as the splitter sends its children: refused, it waits in the retry queue; gone, it
    /// completes with `Removed` on `cq`. Called from the layer's poller.
    #[inline]
    pub fn send<Po>(&mut self, io: IoBox, base: BaseId, policy: &mut Po, cq: &CompletionQueue)
    where
        Po: SplitPolicy<Child = C, Parent = P>,
    {
        send(policy, &mut self.retry, base, io, cq);
    }

    /// Keeps `io`, which a base refused when the layer sent it itself (a child it kept, or a
    /// request of its own it wants sent again the same way), for [`Splitter::poll_retry`] to
    /// send to `base` through the policy, in order with the children refused before it.
    #[inline]
    pub fn park(&mut self, io: IoBox, base: BaseId) {
        self.retry.push_back((io, base));
    }

    /// Takes `io` as a parent with cursor `next..end` (in the policy's unit) and `data`, and
    /// issues its pieces while children last. `Submit::Requeue` hands `io` back untouched when
    /// nothing could start (no free slot or child); otherwise the parent is the splitter's until
    /// [`SplitPolicy::finish`] gets it back (possibly within this call, when no piece needed a
    /// child out). Called from the layer's `submit`, or its poller, on its core; `cq` is the
    /// layer's completion queue, where the children come back.
    pub fn accept<Po>(
        &mut self,
        io: IoBox,
        next: u64,
        end: u64,
        data: P,
        policy: &mut Po,
        cq: &CompletionQueue,
    ) -> Submit
    where
        Po: SplitPolicy<Child = C, Parent = P>,
    {
        if self.free.is_empty() {
            return Submit::Requeue(io);
        }
        let Some(id) = self.free_slots.pop() else {
            return Submit::Requeue(io);
        };
        let slot = &mut self.slots[id.0 as usize];
        slot.io = Some(io);
        slot.next = next;
        slot.end = end;
        slot.remaining = 0;
        slot.status = IoStatus::Success;
        slot.data = data;
        if self.issue(id, policy, cq) {
            if self.slots[id.0 as usize].remaining == 0 {
                self.finish(id, policy);
            }
        } else {
            self.pending.push_back(id);
        }
        Submit::Accepted
    }

    /// Issues the parent's remaining pieces while children last. Returns whether all are issued.
    #[inline]
    fn issue<Po>(&mut self, id: ParentId, policy: &mut Po, cq: &CompletionQueue) -> bool
    where
        Po: SplitPolicy<Child = C, Parent = P>,
    {
        let slot = &mut self.slots[id.0 as usize];
        let io = slot.io.as_deref().expect("a parent in its slot");
        let mut spare = Children {
            free: &mut self.free,
            entries: &mut self.children,
            parent: id,
            #[cfg(debug_assertions)]
            taken: None,
        };
        while slot.next < slot.end {
            #[cfg(debug_assertions)]
            {
                spare.taken = None;
            }
            let parent = Parent {
                io,
                next: slot.next,
                end: slot.end,
                data: &mut slot.data,
            };
            let step = policy.next_piece(parent, &mut spare);
            #[cfg(debug_assertions)]
            let taken = spare.taken;
            match step {
                Step::Send { child, base, units } => {
                    #[cfg(debug_assertions)]
                    assert_eq!(taken, Some(child.tag), "a child taken in this step");
                    slot.remaining += 1;
                    slot.next += units;
                    send(policy, &mut self.retry, base, child, cq);
                }
                Step::Kept { units } => {
                    #[cfg(debug_assertions)]
                    assert!(taken.is_some(), "a kept child is taken in its step");
                    slot.remaining += 1;
                    slot.next += units;
                }
                Step::Answered { units, status } => {
                    #[cfg(debug_assertions)]
                    assert!(taken.is_none(), "a child taken for an answered piece");
                    fold(&mut slot.status, status);
                    slot.next += units;
                }
                Step::Stalled => {
                    #[cfg(debug_assertions)]
                    assert!(taken.is_none() && spare.is_empty(), "stalled with children free");
                    return false;
                }
            }
        }
        true
    }

    /// A parent's cursor is at its end and no child is out: hands it to the policy.
    #[inline]
    fn finish<Po>(&mut self, id: ParentId, policy: &mut Po)
    where
        Po: SplitPolicy<Child = C, Parent = P>,
    {
        let slot = &mut self.slots[id.0 as usize];
        let io = slot.io.take().expect("a parent in its slot");
        let status = slot.status;
        let data = std::mem::take(&mut slot.data);
        self.free_slots.push(id);
        policy.finish(io, status, data);
    }

    /// One of the splitter's children came back (the layer drained it from its completion
    /// queue: `depth() == 0`). Asks the policy what it means; a finished child returns to the
    /// pool (its scatter list cleared) and its parent finishes when it was the last. Called from
    /// the layer's poller on its core.
    pub fn child_done<Po>(&mut self, mut child: IoBox, policy: &mut Po, cq: &CompletionQueue)
    where
        Po: SplitPolicy<Child = C, Parent = P>,
    {
        let entry = &mut self.children[child.tag as usize];
        let id = entry.parent;
        let slot = &mut self.slots[id.0 as usize];
        let parent = Parent {
            io: slot.io.as_deref().expect("a child's parent in its slot"),
            next: slot.next,
            end: slot.end,
            data: &mut slot.data,
        };
        match policy.child_done(&mut child, &mut entry.data, parent) {
            ChildDone::Resend { base } => send(policy, &mut self.retry, base, child, cq),
            ChildDone::Finished(status) => {
                child.iovs.clear();
                self.free.push(child);
                slot.remaining -= 1;
                fold(&mut slot.status, status);
                if slot.remaining == 0 && slot.next >= slot.end {
                    self.finish(id, policy);
                }
            }
        }
    }

    /// Sends again, in order, what bases handed back, until one refuses again. Returns how many
    /// went (or completed as gone). Called from the layer's poller.
    pub fn poll_retry<Po>(&mut self, policy: &mut Po, cq: &CompletionQueue) -> usize
    where
        Po: SplitPolicy<Child = C, Parent = P>,
    {
        let mut n = 0;
        while let Some((io, base)) = self.retry.pop_front() {
            match policy.send(base, io, cq) {
                Sent::Accepted => n += 1,
                Sent::Busy(io) => {
                    self.retry.push_front((io, base));
                    break;
                }
                Sent::Gone(io) => {
                    io.complete_direct(cq, IoStatus::Removed);
                    n += 1;
                }
            }
        }
        n
    }

    /// Continues, in order, parents that ran out of children, while children last. Returns how
    /// many it continued. Called from the layer's poller.
    pub fn poll_pending<Po>(&mut self, policy: &mut Po, cq: &CompletionQueue) -> usize
    where
        Po: SplitPolicy<Child = C, Parent = P>,
    {
        let mut n = 0;
        while let Some(&id) = self.pending.front() {
            if self.free.is_empty() {
                break;
            }
            n += 1;
            if !self.issue(id, policy, cq) {
                break;
            }
            self.pending.pop_front();
            if self.slots[id.0 as usize].remaining == 0 {
                self.finish(id, policy);
            }
        }
        n
    }

    /// [`Splitter::poll_retry`], then [`Splitter::poll_pending`]: the splitter's part of the
    /// layer's poller. Returns the work done (0: none).
    #[inline]
    pub fn poll<Po>(&mut self, policy: &mut Po, cq: &CompletionQueue) -> usize
    where
        Po: SplitPolicy<Child = C, Parent = P>,
    {
        let mut n = 0;
        if !self.retry.is_empty() {
            n += self.poll_retry(policy, cq);
        }
        if !self.pending.is_empty() {
            n += self.poll_pending(policy, cq);
        }
        n
    }
}
