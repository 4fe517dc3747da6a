//! In-place forwarding: how a layer hands a request to the bdev below it without a request of
//! its own, and how the core does it for the layer when the layer only remaps offsets.
//!
//! # Paths
//!
//! A layer channel (dm, md, passthru) that passes requests to base bdevs holds one
//! [`ForwardCtx`] — its failure queue and its count of requests below it — and one
//! [`ForwardPath`] per base it forwards to on this core. [`ForwardPath::forward`] sends the
//! request itself down, its `offset_blocks` already remapped by the layer. A **success** never
//! comes back to the layer: [`crate::IoRequest::complete`] finishes the base's part and the
//! layer's in the same call (offset restored, the context's count dropped) and queues the
//! request for whoever is above the layer. A **failure** comes back to the context's queue with
//! the layer's frame on top and its offset restored, exactly as after a plain submit; the layer
//! then calls [`ForwardCtx::end`] and handles it.
//!
//! What a forwarded request costs the base depends on the base:
//!
//! * A **leaf** base (null, malloc, uring: its module finishes every request itself and never
//!   touches the request's frames) gets no frame. Its part is recorded in the layer's frame
//!   (`via`), so forwarding is a few stores and completing walks one frame for both bdevs.
//! * Any other base (a layer itself) gets a frame of its own, as a submit would push, that
//!   shares the layer's submit stamp.
//!
//! Either way the pair is charged **once** per success, to the path's shared statistics, which
//! the layer's and the base's channels both report (see `stats.rs`): `bdev_get_iostat` shows
//! every forwarded request in both bdevs, with the same latency, as if each had charged its own.
//! A base refuses a forwarded request only if it was removed, lacks the op, or the mapped range
//! ends outside it; the layer's own validation covers the rest, because a layer forwards in place
//! only requests of its own size and block size (debug builds assert it).
//!
//! # Routes
//!
//! A layer whose mapping is pure arithmetic — a linear range of one base, chunks striped over a
//! power-of-two number of bases — can publish it as a [`Route`] in its [`RouteSlot`]. The core's
//! [`crate::Channel::submit`] then maps a request that fits (one base, one chunk, an op the
//! route carries) itself and forwards it along the route's path, without calling the module at
//! all; anything else goes to the module as usual. The module owns the slot's contents: it
//! publishes a route only while every request may take it (its device is live, not suspended,
//! nothing held) and turns it off from the same visits that change its own state, so the route
//! and the module never disagree. Requests forwarded along a route count in the module's
//! [`ForwardCtx`] like its own, so draining works unchanged.
//!
//! Everything here lives on one core; nothing allocates per request (paths and routes are built
//! by the control path; forwarding clones one `Rc`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::bdev::{BdevCore, Channel, IoCaps};
use crate::stats::{ChannelStats, SharedStats};
use crate::{CompletionQueue, IoBox, IoOp, IoStatus, Submit};

/// A layer channel's forwarding state: the queue where its failed forwards come back, and the
/// count of its requests below it. Owned by the layer's channel (shared by `Rc` with its paths),
/// on its core.
pub struct ForwardCtx {
    pub(crate) failure_cq: CompletionQueue,
    inflight: Cell<u64>,
}

impl ForwardCtx {
    /// A context whose failures arrive on `failure_cq` (the layer's own completion queue).
    pub fn new(failure_cq: CompletionQueue) -> Rc<ForwardCtx> {
        Rc::new(ForwardCtx {
            failure_cq,
            inflight: Cell::new(0),
        })
    }

    /// Requests forwarded (or otherwise counted with [`ForwardCtx::begin`]) and not yet finished.
    #[inline]
    pub fn inflight(&self) -> u64 {
        self.inflight.get()
    }

    /// Counts one more request below the layer.
    #[inline]
    pub fn begin(&self) {
        self.inflight.set(self.inflight.get() + 1);
    }

    /// Counts one request back (the layer calls this for failures it handles itself).
    #[inline]
    pub fn end(&self) {
        self.inflight.set(self.inflight.get() - 1);
    }

    /// The layer's queue.
    pub fn cq(&self) -> &CompletionQueue {
        &self.failure_cq
    }
}

/// A layer channel's way to one base bdev on one core. Built by the layer on that core (control
/// path) and shared by `Rc` with the requests in flight along it.
pub struct ForwardPath {
    ctx: Rc<ForwardCtx>,
    base: Channel,
    /// The base's shared facts (its removal flag, one pointer away).
    base_core: Arc<BdevCore>,
    /// The base is a leaf (see the module docs): its part rides on the layer's frame.
    leaf: bool,
    base_stats: Rc<ChannelStats>,
    shared: Rc<SharedStats>,
}

impl ForwardPath {
    /// A path from the layer channel whose statistics are `layer` (its
    /// [`crate::ChannelCx::stats`]) and whose forwarding state is `ctx`, to `base` (a channel of
    /// a bdev the layer opened). Called on the core where both channels live.
    pub fn new(ctx: &Rc<ForwardCtx>, layer: &Rc<ChannelStats>, base: Channel) -> Rc<ForwardPath> {
        let base_stats = base.stats_rc().clone();
        Rc::new(ForwardPath {
            ctx: ctx.clone(),
            base_core: base.core().clone(),
            leaf: base.is_leaf(),
            shared: SharedStats::new(layer, &base_stats),
            base_stats,
            base,
        })
    }

    /// The base's channel (for requests the layer submits itself, e.g. split children).
    #[inline]
    pub fn base(&self) -> &Channel {
        &self.base
    }

    /// The layer's forwarding state.
    #[inline]
    pub fn ctx(&self) -> &Rc<ForwardCtx> {
        &self.ctx
    }

    #[inline(always)]
    pub(crate) fn base_stats(&self) -> &ChannelStats {
        &self.base_stats
    }

    #[inline(always)]
    pub(crate) fn shared(&self) -> &SharedStats {
        &self.shared
    }

    /// Forwards `io` in place to the base, for a layer inside its
    /// [`crate::BackendChannel::submit`]: the layer's frame is on top and `offset_blocks` is
    /// already mapped to the base; `restore_offset_blocks` is the layer's own offset, set back
    /// when the base is done. See the module docs for what comes back where; the context counts
    /// the request from here until a success passes or the layer ends a failure.
    /// `Submit::Requeue` hands it back as it came (layer frame on top, offset as mapped, not
    /// counted). A request in no bdev at all is simply submitted to the base with the context's
    /// queue. Called on the path's core.
    #[inline(always)]
    pub fn forward(self: &Rc<Self>, mut io: IoBox, restore_offset_blocks: u64) -> Submit {
        if self.leaf {
            if let Err(_path) = io.set_via(self.clone(), restore_offset_blocks) {
                return self.base.submit(io, &self.ctx.failure_cq);
            }
            self.ctx.begin();
            match self.base.check_forwarded(&io) {
                IoStatus::Pending => match self.base.dispatch_leaf(io) {
                    Submit::Accepted => Submit::Accepted,
                    Submit::Requeue(mut io) => {
                        io.clear_via();
                        self.ctx.end();
                        Submit::Requeue(io)
                    }
                },
                status => {
                    io.complete(status);
                    Submit::Accepted
                }
            }
        } else {
            match io.push_forwarded_frame(self, restore_offset_blocks) {
                Ok(()) => {}
                // Not inside a layer: nothing to skip.
                Err(false) => return self.base.submit(io, &self.ctx.failure_cq),
                Err(true) => {
                    // Refused like a failure from below: the layer's frame on top, on its queue.
                    self.ctx.begin();
                    io.offset_blocks = restore_offset_blocks;
                    io.complete_direct(&self.ctx.failure_cq, IoStatus::StackOverflow);
                    return Submit::Accepted;
                }
            }
            self.ctx.begin();
            match self.base.check_forwarded(&io) {
                IoStatus::Pending => match self.base.dispatch(io) {
                    Submit::Accepted => Submit::Accepted,
                    Submit::Requeue(io) => {
                        self.ctx.end();
                        Submit::Requeue(io)
                    }
                },
                status => {
                    io.complete(status);
                    Submit::Accepted
                }
            }
        }
    }
}

impl Drop for ForwardPath {
    fn drop(&mut self) {
        // What the pair counted stays with both bdevs.
        self.shared.retire();
    }
}

/// Most legs a [`Route::Striped`] has: enough for every common stripe set; wider ones go to the
/// module.
pub const ROUTE_LEGS: usize = 16;

/// One leg of a [`Route::Striped`]: the path to its base and where the leg starts there.
#[derive(Clone)]
pub struct Leg {
    pub path: Rc<ForwardPath>,
    pub offset_blocks: u64,
}

/// A layer's mapping as data, for the core to apply (see the module docs). Offsets and sizes
/// are in blocks of the layer, which are the bases' blocks too.
pub enum Route {
    /// Every request goes to the module.
    Off,
    /// Block `x` of the layer is block `offset_blocks + x` of `path`'s base.
    Linear {
        path: Rc<ForwardPath>,
        offset_blocks: u64,
        ops: IoCaps,
    },
    /// Chunks of `chunk_mask + 1` blocks go round robin over `legs_mask + 1` legs (both powers
    /// of two, at most [`ROUTE_LEGS`]): chunk `c` is chunk `c >> log2(legs)` of leg
    /// `c & legs_mask`. Requests crossing a chunk go to the module. The shifts and masks are kept
    /// ready for the arithmetic (`row_shift` = log2(chunk) + log2(legs)); the legs fill a
    /// fixed array (unused entries repeat the first), so a masked index needs no bounds check.
    Striped {
        chunk_shift: u32,
        row_shift: u32,
        chunk_mask: u64,
        legs_mask: u64,
        legs: Box<[Leg; ROUTE_LEGS]>,
        ops: IoCaps,
    },
}

impl Route {
    /// A linear route; `ops` are the ops to map (ops outside the base's go to the module).
    pub fn linear(path: Rc<ForwardPath>, offset_blocks: u64, ops: IoCaps) -> Route {
        let ops = ops.and(IoCaps::RANGED).and(path.base.allowed());
        Route::Linear {
            path,
            offset_blocks,
            ops,
        }
    }

    /// A striped route over `legs` (a power of two of them, one to [`ROUTE_LEGS`]) in chunks of
    /// `chunk_blocks` (a power of two); `None` when the shape does not fit.
    pub fn striped(chunk_blocks: u64, legs: Vec<Leg>, ops: IoCaps) -> Option<Route> {
        let n = legs.len();
        if n == 0 || n > ROUTE_LEGS || !n.is_power_of_two() || !chunk_blocks.is_power_of_two() {
            return None;
        }
        let ops = legs
            .iter()
            .fold(ops.and(IoCaps::RANGED), |o, l| o.and(l.path.base.allowed()));
        let chunk_shift = chunk_blocks.trailing_zeros();
        Some(Route::Striped {
            chunk_shift,
            row_shift: chunk_shift + n.trailing_zeros(),
            chunk_mask: chunk_blocks - 1,
            legs_mask: n as u64 - 1,
            legs: Box::new(std::array::from_fn(|i| legs.get(i).unwrap_or(&legs[0]).clone())),
            ops,
        })
    }

    /// Where a request of `op` over `num_blocks` (> 0) at `offset_blocks` goes: the path and the
    /// base's offset, or `None` for the module. Pure arithmetic; the request is inside the layer.
    #[inline(always)]
    pub fn map(&self, op: IoOp, offset_blocks: u64, num_blocks: u64) -> Option<(&Rc<ForwardPath>, u64)> {
        match self {
            Route::Off => None,
            Route::Linear {
                path,
                offset_blocks: base,
                ops,
            } => ops.supports(op).then_some((path, base + offset_blocks)),
            Route::Striped {
                chunk_shift,
                row_shift,
                chunk_mask,
                legs_mask,
                legs,
                ops,
            } => {
                if !ops.supports(op) {
                    return None;
                }
                // Inside one chunk: the first and last block differ only below the chunk size.
                if (offset_blocks ^ (offset_blocks + (num_blocks - 1))) > *chunk_mask {
                    return None;
                }
                let leg = &legs[((offset_blocks >> chunk_shift) & legs_mask) as usize % ROUTE_LEGS];
                let row_start = (offset_blocks >> row_shift) << chunk_shift;
                Some((&leg.path, leg.offset_blocks + row_start + (offset_blocks & chunk_mask)))
            }
        }
    }
}

/// Where a layer channel publishes its [`Route`]; read by the core on every submit to the layer,
/// written only by the layer's control-path visits on the same core. Shared by `Rc` between the
/// layer's bdev channel and the module (from [`crate::ChannelCx::route_slot`]).
pub struct RouteSlot {
    route: RefCell<Route>,
}

impl RouteSlot {
    pub(crate) fn new() -> Rc<RouteSlot> {
        Rc::new(RouteSlot {
            route: RefCell::new(Route::Off),
        })
    }

    /// Publishes `route` (or turns routing off with [`Route::Off`]). Called on the slot's core
    /// by the module, never from inside a submit.
    pub fn set(&self, route: Route) {
        *self.route.borrow_mut() = route;
    }

    /// Whether a route is published.
    pub fn is_on(&self) -> bool {
        !matches!(*self.route.borrow(), Route::Off)
    }

    /// The core's part of [`crate::Channel::submit`] for a layer with a slot: forwards `io` (the
    /// layer's frame on top, validated against the layer) along the route when it fits. `Err`
    /// hands it back for the module; `Ok(Requeue)` is the base's backpressure, with `io` as it
    /// came.
    #[inline(always)]
    pub(crate) fn forward(&self, mut io: IoBox) -> Result<Submit, IoBox> {
        let route = self.route.borrow();
        let Some((path, base_offset)) = route.map(io.op, io.offset_blocks, io.num_blocks) else {
            return Err(io);
        };
        let base = &path.base;
        debug_assert!(
            base_offset + io.num_blocks <= base.info().num_blocks,
            "route maps outside {}",
            base.info().name
        );
        let orig = io.offset_blocks;
        io.offset_blocks = base_offset;
        if path.leaf {
            path.ctx.begin();
            io.set_via_on_top(path.clone(), orig);
            if path.base_core.removed.load(Ordering::Relaxed) {
                io.complete(IoStatus::Removed);
                return Ok(Submit::Accepted);
            }
            match base.dispatch_leaf(io) {
                Submit::Accepted => Ok(Submit::Accepted),
                Submit::Requeue(mut io) => {
                    io.clear_via();
                    path.ctx.end();
                    io.offset_blocks = orig;
                    Ok(Submit::Requeue(io))
                }
            }
        } else {
            match path.forward(io, orig) {
                Submit::Accepted => Ok(Submit::Accepted),
                Submit::Requeue(mut io) => {
                    io.offset_blocks = orig;
                    Ok(Submit::Requeue(io))
                }
            }
        }
    }
}
