//! In-place forwarding: how a layer hands a request to the bdev below it without a request of
//! its own, and how the core does it for the layer when the layer only remaps offsets.
//!
//! # Paths
//!
//! A layer channel (dm, md, passthru) that passes requests to base bdevs holds one
//! [`ForwardCtx`] — its failure queue and its count of requests below it — and one
//! [`ForwardPath`] handle per base it forwards to on this core. [`ForwardPath::forward`] sends
//! the request itself down, its `offset_blocks` already remapped by the layer. A **success** never
//! comes back to the layer: [`crate::IoRequest::complete`] finishes the base's part and the
//! layer's in the same call (offset restored) and queues the request for whoever is above the
//! layer. A **failure** comes back to the context's queue with the layer's frame on top and its
//! offset restored, exactly as after a plain submit; the layer then handles it and calls
//! [`ForwardCtx::end`].
//!
//! What a forwarded request costs the base depends on the base:
//!
//! * A **leaf** base (null, malloc, uring: its module finishes every request itself and never
//!   touches the request's frames) gets no frame. Its part is recorded on the request (`via`:
//!   the path and the layer's offset), so forwarding is a few stores and completing walks one
//!   frame for both bdevs.
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
//! A request on its way along a path holds a reference to the path's shared part
//! (`PathInner`) until the base is done with it: that reference keeps the path alive after
//! the layer dropped it (a table swapped, a member replaced) and is also what counts it —
//! [`ForwardCtx::inflight`] adds up the references of every path built on the context, so
//! forwarding costs no counter of its own.
//!
//! # Routes
//!
//! A layer whose mapping is pure arithmetic — a linear range of one base, power-of-two chunks
//! striped over up to [`ROUTE_LEGS`] bases (the shared [`crate::Striping`] arithmetic: shifts and
//! masks for a power of two of them, a reciprocal multiply otherwise) — can publish it as a [`Route`] through its [`RouteHandle`]; the
//! route lives in the layer's bdev channel. The core's [`crate::Channel::submit`] then maps a
//! request that fits (one base, one chunk, an op the route carries) itself and forwards it along
//! the route's path, without calling the module at all; anything else goes to the module as
//! usual. The module owns the route: it publishes one only while every request may take it (its
//! device is live, not suspended, nothing held) and turns it off from the same visits that
//! change its own state, so the route and the module never disagree. Requests forwarded along a
//! route count in the module's [`ForwardCtx`] like its own, so draining works unchanged. A
//! routed request to a leaf checks the base's per-core removal flag (set when hot removal
//! reaches that core), which sits in the line the dispatch reads anyway.
//!
//! Everything here lives on one core; nothing allocates per request (paths and routes are built
//! by the control path; forwarding clones one `Rc`).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use crate::bdev::{BdevChannel, Channel, IoCaps};
use crate::stats::{ChannelStats, HoldsShared, SharedStats};
use crate::striping::Striping;
use crate::{CompletionQueue, IoBox, IoOp, IoStatus, Submit};

/// A layer channel's forwarding state: the queue where its failed forwards come back, and the
/// count of its requests below it. Owned by the layer's channel (shared by `Rc` with its paths),
/// on its core.
///
/// The count has two parts. A request travelling along a path is counted by the path itself —
/// it holds a reference to the path's `PathInner` until the base is done — so forwarding costs
/// no counter of its own. What the layer keeps or handles itself (split parents, held requests,
/// and failed forwards from the moment they come back) it counts with [`ForwardCtx::begin`] and
/// [`ForwardCtx::end`].
pub struct ForwardCtx {
    pub(crate) failure_cq: CompletionQueue,
    own: Cell<u64>,
    /// The paths built on this context, live or still holding requests.
    paths: RefCell<Vec<Weak<PathInner>>>,
}

impl ForwardCtx {
    /// A context whose failures arrive on `failure_cq` (the layer's own completion queue).
    pub fn new(failure_cq: CompletionQueue) -> Rc<ForwardCtx> {
        Rc::new(ForwardCtx {
            failure_cq,
            own: Cell::new(0),
            paths: RefCell::new(Vec::new()),
        })
    }

    /// Requests below the layer and not yet finished: those travelling along its paths (also
    /// paths it dropped since) plus those it counted with [`ForwardCtx::begin`]. Not for the
    /// I/O path (it walks the paths): for drains and clean-up checks.
    pub fn inflight(&self) -> u64 {
        let mut paths = self.paths.borrow_mut();
        paths.retain(|p| p.strong_count() > 0);
        // An upgraded reference is one more than the path's own and its requests'.
        let travelling = |p: Rc<PathInner>| p.travelling(Rc::strong_count(&p) - 1);
        self.own.get() + paths.iter().filter_map(Weak::upgrade).map(travelling).sum::<u64>()
    }

    /// Counts one more request the layer keeps or handles itself.
    #[inline]
    pub fn begin(&self) {
        self.own.set(self.own.get() + 1);
    }

    /// Counts one such request back (the layer calls this for failures it handles itself).
    #[inline]
    pub fn end(&self) {
        self.own.set(self.own.get() - 1);
    }

    /// The layer's queue.
    pub fn cq(&self) -> &CompletionQueue {
        &self.failure_cq
    }
}

/// A layer channel's way to one base bdev on one core: a handle, built by the layer on that core
/// (control path) and cloned freely into its tables and routes.
pub struct ForwardPath {
    inner: Rc<PathInner>,
}

/// What the handles share and a request travelling along the path refers to (one `Rc` clone
/// per request, dropped when the base is done with it): the strong count beyond the handles'
/// is the number of requests on the way.
///
/// `repr(C)`: what forwarding reads sits next to the reference count, in one cache line ahead of
/// the shared counters.
#[repr(C)]
pub(crate) struct PathInner {
    /// The base is a leaf (see the module docs): its part rides on the layer's frame.
    leaf: bool,
    base: Channel,
    ctx: Rc<ForwardCtx>,
    base_stats: Rc<ChannelStats>,
    /// [`ForwardPath`] handles (their references are not requests).
    handles: Cell<usize>,
    shared: SharedStats,
}

impl ForwardPath {
    /// A path from the layer channel whose statistics are `layer` (its
    /// [`crate::ChannelCx::stats`]) and whose forwarding state is `ctx`, to `base` (a channel of
    /// a bdev the layer opened). Called on the core where both channels live.
    pub fn new(ctx: &Rc<ForwardCtx>, layer: &Rc<ChannelStats>, base: Channel) -> ForwardPath {
        let base_stats = base.stats_rc().clone();
        let inner = Rc::new(PathInner {
            ctx: ctx.clone(),
            leaf: base.is_leaf(),
            shared: SharedStats::new(layer, &base_stats),
            base_stats,
            base,
            handles: Cell::new(1),
        });
        let mut paths = ctx.paths.borrow_mut();
        paths.retain(|p| p.strong_count() > 0);
        paths.push(Rc::downgrade(&inner));
        drop(paths);
        SharedStats::link(&inner);
        ForwardPath { inner }
    }

    /// The base's channel (for requests the layer submits itself, e.g. split children).
    #[inline]
    pub fn base(&self) -> &Channel {
        &self.inner.base
    }

    /// The layer's forwarding state.
    #[inline]
    pub fn ctx(&self) -> &Rc<ForwardCtx> {
        &self.inner.ctx
    }

    /// Forwards `io` in place to the base, for a layer inside its
    /// [`crate::BackendChannel::submit`]: the layer's frame is on top and `offset_blocks` is
    /// already mapped to the base; `restore_offset_blocks` is the layer's own offset, set back
    /// when the base is done. See the module docs for what comes back where. The request counts
    /// in the context's [`ForwardCtx::inflight`] from here until a success passes or the layer
    /// ends a failure. `Submit::Requeue` hands it back as it came (layer frame on top, offset as
    /// mapped, not counted). A request in no bdev at all is simply submitted to the base with the
    /// context's queue. Called on the path's core.
    #[inline(always)]
    pub fn forward(&self, io: IoBox, restore_offset_blocks: u64) -> Submit {
        self.inner.forward(io, restore_offset_blocks)
    }
}

impl Clone for ForwardPath {
    fn clone(&self) -> ForwardPath {
        self.inner.handles.set(self.inner.handles.get() + 1);
        ForwardPath {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for ForwardPath {
    fn drop(&mut self) {
        self.inner.handles.set(self.inner.handles.get() - 1);
    }
}

impl PathInner {
    /// Requests travelling along the path, given its strong count: every reference but the
    /// handles' is a request's.
    fn travelling(&self, strong_count: usize) -> u64 {
        // Only `ForwardCtx::inflight` asks, with an upgraded reference taken off.
        (strong_count - self.handles.get()) as u64
    }

    /// Hands a request that failed below (the layer's frame on top, offset restored) back to
    /// the layer's queue, where the layer counts it until it ends it. A frame pushed for a route
    /// charges nothing yet; from here on it is the layer's own request again, so it charges the
    /// layer's statistics when the layer completes it.
    #[cold]
    pub(crate) fn return_failure(&self, mut io: IoBox) {
        if let Some(layer) = self.shared.layer() {
            io.charge_top_to(&layer);
        }
        self.ctx.begin();
        self.ctx.failure_cq.push(io);
    }

    #[inline(always)]
    pub(crate) fn base_stats(&self) -> &ChannelStats {
        &self.base_stats
    }

    #[inline(always)]
    pub(crate) fn shared(&self) -> &SharedStats {
        &self.shared
    }

    #[inline(always)]
    fn forward(self: &Rc<Self>, mut io: IoBox, restore_offset_blocks: u64) -> Submit {
        if self.leaf {
            if let Err(_path) = io.set_via(self.clone(), restore_offset_blocks) {
                return self.base.submit(io, &self.ctx.failure_cq);
            }
            match self.base.check_forwarded(&io) {
                IoStatus::Pending => match self.base.dispatch_leaf(io) {
                    Submit::Accepted => Submit::Accepted,
                    Submit::Requeue(mut io) => {
                        io.clear_via();
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
                    io.offset_blocks = restore_offset_blocks;
                    io.set_status(IoStatus::StackOverflow);
                    self.return_failure(io);
                    return Submit::Accepted;
                }
            }
            match self.base.check_forwarded(&io) {
                IoStatus::Pending => self.base.dispatch(io),
                status => {
                    io.complete(status);
                    Submit::Accepted
                }
            }
        }
    }
}

impl HoldsShared for PathInner {
    fn shared(&self) -> &SharedStats {
        &self.shared
    }
}

impl Drop for PathInner {
    fn drop(&mut self) {
        // What the pair counted stays with both bdevs.
        self.shared.retire(self as *const PathInner as *const ());
    }
}

/// Most legs a striped [`Route`] has: enough for every common stripe set; wider ones go to the
/// module.
pub const ROUTE_LEGS: usize = 16;

/// One leg of a striped [`Route`]: the path to its base and where the leg starts there.
pub struct Leg {
    pub path: ForwardPath,
    pub offset_blocks: u64,
}

/// A layer's mapping as data, for the core to apply (see the module docs). Offsets and sizes
/// are in blocks of the layer, which are the bases' blocks too.
pub struct Route {
    /// The ops the route maps (none when it is off).
    ops: IoCaps,
    shape: Shape,
}

/// A leg as a striped route keeps it. Aligned to a power of two so that a leg's fields are one
/// scaled-index load each.
#[repr(align(32))]
struct RouteLeg {
    path: ForwardPath,
    base: Rc<BdevChannel>,
    offset_blocks: u64,
}

// One route per layer channel, read on every submit: the legs are kept inline (no pointer to
// follow), so the striped variant is the large one on purpose.
#[allow(clippy::large_enum_variant)]
enum Shape {
    /// Block `x` of the layer is block `offset_blocks + x` of `path`'s base (`base`: that
    /// base's channel, kept here so the dispatch need not go through the path).
    Linear {
        path: ForwardPath,
        base: Rc<BdevChannel>,
        offset_blocks: u64,
    },
    /// Chunks go round robin over the legs, a power of two of them ([`Striping::place_pow2`]).
    /// The legs fill a fixed array of
    /// [`ROUTE_LEGS`] entries, entry `i` holding leg `i % legs`, so a leg number taken modulo
    /// [`ROUTE_LEGS`] picks the entry with neither a bounds check nor the leg count.
    Striped {
        stripes: Striping,
        /// Each leg's path, base channel and start, together (the legs of a small stripe set
        /// share a cache line; the base channel is one load from the leg, not two).
        legs: [RouteLeg; ROUTE_LEGS],
    },
    Off,
    /// As `Striped`, over a leg count that is not a power of two
    /// ([`Striping::place_by_reciprocal`]); entry `i < legs` of the array holds leg `i`.
    StripedByReciprocal {
        stripes: Striping,
        legs: [RouteLeg; ROUTE_LEGS],
    },
}

impl Route {
    /// No route: every request goes to the module.
    pub fn off() -> Route {
        Route {
            ops: IoCaps::NONE,
            shape: Shape::Off,
        }
    }

    /// Whether this is no route.
    pub fn is_off(&self) -> bool {
        matches!(self.shape, Shape::Off)
    }

    /// A linear route: block `x` of the layer is block `offset_blocks + x` of `path`'s base.
    /// `ops` are the ops to map (ops outside the base's go to the module).
    pub fn linear(path: ForwardPath, offset_blocks: u64, ops: IoCaps) -> Route {
        Route {
            ops: ops.and(IoCaps::RANGED).and(path.inner.base.allowed()),
            shape: Shape::Linear {
                base: path.inner.base.bdev_channel().clone(),
                path,
                offset_blocks,
            },
        }
    }

    /// A striped route over `legs` (one to [`ROUTE_LEGS`] of them) in chunks of `chunk_blocks`
    /// (a power of two); `None` when the shape does not fit.
    pub fn striped(chunk_blocks: u64, legs: Vec<Leg>, ops: IoCaps) -> Option<Route> {
        let n = legs.len();
        if n == 0 || n > ROUTE_LEGS || !chunk_blocks.is_power_of_two() {
            return None;
        }
        let ops = legs
            .iter()
            .fold(ops.and(IoCaps::RANGED), |o, l| o.and(l.path.inner.base.allowed()));
        // Entry `i` holds leg `i % n`: for a power of two of legs, a chunk number modulo
        // ROUTE_LEGS picks its leg; otherwise only the first `n` entries are used.
        let array = || {
            std::array::from_fn(|i| {
                let leg = &legs[i % n];
                RouteLeg {
                    path: leg.path.clone(),
                    base: leg.path.inner.base.bdev_channel().clone(),
                    offset_blocks: leg.offset_blocks,
                }
            })
        };
        let stripes = Striping::new(chunk_blocks, n as u64)?;
        let shape = if stripes.pow2_legs() {
            Shape::Striped { stripes, legs: array() }
        } else {
            Shape::StripedByReciprocal { stripes, legs: array() }
        };
        Some(Route { ops, shape })
    }

    /// Where a request of `op` over `num_blocks` (> 0 for the ops a route maps) at
    /// `offset_blocks` goes: the path and the base's offset, or `None` for the module. Pure
    /// arithmetic; the request is inside the layer.
    #[inline(always)]
    pub(crate) fn map(
        &self,
        op: IoOp,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Option<(&Rc<PathInner>, &BdevChannel, u64)> {
        // Off maps no op: one test covers both.
        if !self.ops.supports(op) {
            return None;
        }
        match &self.shape {
            Shape::Linear {
                path,
                base,
                offset_blocks: start,
            } => Some((&path.inner, base, start + offset_blocks)),
            Shape::Striped { stripes, legs } => {
                let (leg, on_leg) = stripes.place_pow2(offset_blocks, num_blocks)?;
                let leg = &legs[leg % ROUTE_LEGS];
                Some((&leg.path.inner, &leg.base, leg.offset_blocks + on_leg))
            }
            Shape::Off => None,
            Shape::StripedByReciprocal { stripes, legs } => {
                let (leg, on_leg) = stripes.place_by_reciprocal(offset_blocks, num_blocks)?;
                let leg = &legs[leg % ROUTE_LEGS];
                Some((&leg.path.inner, &leg.base, leg.offset_blocks + on_leg))
            }
        }
    }
}

/// Where a layer's module publishes its [`Route`]: a handle on the layer's bdev channel on one
/// core (from [`crate::ChannelCx::route_handle`]). The core reads the route on every submit to the
/// layer; the module writes it only from its control-path visits on the same core, never from
/// inside a submit. Once the bdev channel is gone, setting does nothing.
pub struct RouteHandle {
    chan: Weak<BdevChannel>,
    /// Where a route set while the channel is still being built waits for it.
    staged: Weak<RefCell<Route>>,
}

impl RouteHandle {
    pub(crate) fn new(chan: Weak<BdevChannel>, staged: Weak<RefCell<Route>>) -> RouteHandle {
        RouteHandle { chan, staged }
    }

    /// Publishes `route` (or turns routing off with [`Route::off`]). Called on the channel's
    /// core by the module, never from inside a submit; also from the module's channel
    /// construction, before the bdev channel exists.
    pub fn set(&self, route: Route) {
        if let Some(c) = self.chan.upgrade() {
            *c.route.borrow_mut() = route;
        } else if let Some(staged) = self.staged.upgrade() {
            *staged.borrow_mut() = route;
        }
    }
}

/// The core's part of [`crate::Channel::submit`] for a layer that publishes routes: forwards `io`
/// (the layer's frame on top, validated against the layer) along `route` when it fits. `Err`
/// hands it back for the module; `Ok(Requeue)` is the base's backpressure, with `io` as it came.
#[inline(always)]
pub(crate) fn forward_routed(route: &RefCell<Route>, mut io: IoBox) -> Result<Submit, IoBox> {
    let (op, orig, num_blocks) = (io.op, io.offset_blocks, io.num_blocks);
    let route = route.borrow();
    let Some((path, base, base_offset)) = route.map(op, orig, num_blocks) else {
        return Err(io);
    };
    debug_assert!(
        base_offset + num_blocks <= path.base.info().num_blocks,
        "route maps outside {}",
        path.base.info().name
    );
    io.offset_blocks = base_offset;
    if path.leaf {
        // What `ForwardPath::forward` checks is settled here already: the route maps only ops
        // the base allows, inside the base (its module built it so); only removal remains.
        io.set_via_on_top(path.clone(), orig);
        if base.aborted.get() {
            io.complete(IoStatus::Removed);
            return Ok(Submit::Accepted);
        }
        match base.dispatch_leaf(io) {
            Submit::Accepted => Ok(Submit::Accepted),
            Submit::Requeue(mut io) => {
                io.clear_via();
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
