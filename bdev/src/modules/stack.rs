//! Forwarding machinery shared by the stacking modules (passthru, error, delay).
//!
//! A stacking bdev sits on exactly one **base** bdev and passes I/O down to it. Everything that
//! is the same for every such layer lives here, once:
//!
//! * **Creation** ([`create_layer`]): refuse a taken name, open the base writable and
//!   [`Descriptor::claim`] it with the module's name (nobody else writes under the layer), then
//!   register the layer with the base's geometry and caps. Any failure drops the descriptor, so
//!   nothing stays registered or claimed.
//! * **Hot-removal cascade**: the `on_event` callback given to [`BdevRegistry::open`] holds a
//!   `Weak` to the registry and a `Weak` to the layer's own [`Bdev`]; on
//!   [`BdevEvent::Remove`] of the base it unregisters the layer (only if the registry still maps
//!   the layer's name to *this* bdev). Weak references keep the registry → base → opener →
//!   closure chain free of cycles. [`StackBackend::on_unregister`] then drops the base
//!   descriptor, which releases the claim.
//! * **Data path** ([`StackChannel`]): per core, the layer's channel holds a [`ForwardPath`] to
//!   the base, its own [`CompletionQueue`] and a poller. `submit` asks the module's
//!   [`Hooks::on_submit`] what to do (forward, done/held, requeue), then passes the same
//!   [`IoBox`] on — in place along the path when the module has nothing to do on success
//!   ([`Hooks::FORWARD_IN_PLACE`]), else with `base.submit(io, &cq)`; a layer with no per-request
//!   work at all ([`Hooks::ROUTE`], passthru) publishes an identity route and is not even called.
//!   A base `Requeue` goes back up as `Requeue` (after
//!   [`Hooks::on_requeue`] undid any per-I/O work). The poller drains the queue with
//!   `drain_now`, gives each request to [`Hooks::on_base_done`] (which may keep it, e.g. the
//!   delay FIFOs) and completes the rest upward with `io.complete(io.status())`, which pops the
//!   frame the layer's `Channel::submit` pushed. [`Hooks::poll`] runs the module's own timers.
//!   The poller reports `Busy` only when it moved or completed a request.
//!
//! None of the three modules changes `offset_blocks` on the way down (a split part, which reuses
//! [`StackChannel`] with its start as the channel's offset, remaps in place and the forward
//! restores it), so nothing needs restoring on the way up; the per-frame [`crate::IoRequest::layer_word`] is free for module use (the
//! error module keeps its per-I/O corruption mark there).
//!
//! **No allocation or lock per I/O**: the completion queue and the modules' FIFOs are created
//! with capacity at channel creation and keep it; per-I/O state is in `Cell`s, atomics and the
//! layer word. The base descriptor sits behind a `Mutex` that only channel creation and
//! unregistration touch.
//!
//! **Module state lookup**: RPCs such as `bdev_error_inject_error` and
//! `bdev_delay_update_latency` find a bdev by name in the registry and then need the module's
//! shared state. [`layer_of`] checks the bdev's module name and takes the concrete
//! [`StackBackend`] of the module's [`Layer`] back from it with [`Bdev::backend_as`]; the layer
//! holds the state (an `Arc` shared with its channels' hooks). Nothing is kept beside the bdev,
//! so nothing has to be forgotten when it goes. Control path only.
//!
//! **save_config**: [`StackBackend`] names its base in [`BdevBackend::bases`], so a layer over
//! a bdev of a later subsystem (a dm device) is saved after it.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use keel_reactor::{current, CoreId, PollStatus, PollerHandle};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    BackendChannel, Bdev, BdevBackend, BdevError, BdevEvent, BdevInfo, BdevParams, BdevRegistry, Channel, ChannelCx,
    CompletionQueue, ConfigCall, Descriptor, ForwardCtx, ForwardPath, IoBox, IoCaps, IoRequest, IoStatus, Submit,
};

/// Completions a layer channel's queue holds before it first grows: a typical queue depth; the
/// queue then keeps whatever high-water mark it reached.
const CQ_CAPACITY: usize = 256;

/// What a module's [`Hooks::on_submit`] decided for a request entering the layer.
pub(crate) enum Route {
    /// Send it to the base bdev.
    Forward(IoBox),
    /// The module completed it (e.g. an injected failure) or keeps it (a held I/O).
    Taken,
    /// Hand it back to the submitter untouched: backpressure (`Submit::Requeue`).
    Requeue(IoBox),
}

/// A module's per-channel data-path behaviour. One value per layer channel, living on that
/// channel's core and shared (`Rc`) by the channel and its poller; interior mutability only.
pub(crate) trait Hooks: 'static {
    /// Whether the layer has nothing to do when a forwarded request succeeds. Then requests go
    /// down with [`ForwardPath::forward`]: a success skips this layer's queue and poller
    /// entirely, and only failures come back through [`Hooks::on_base_done`].
    const FORWARD_IN_PLACE: bool = false;

    /// Whether the layer does nothing at all per request (no hook of its own on the data
    /// path): the core then forwards its ranged requests along an identity route, without
    /// calling the layer (see `forward.rs`). Implies `FORWARD_IN_PLACE`.
    const ROUTE: bool = false;

    /// A request entered the layer (already validated by the generic bdev layer; the layer's
    /// frame is on top). Called on the channel's core from `submit`.
    #[inline]
    fn on_submit(&self, io: IoBox) -> Route {
        Route::Forward(io)
    }

    /// The base refused a forwarded request with `Requeue`; undo what `on_submit` did to it
    /// before it goes back up.
    #[inline]
    fn on_requeue(&self, _io: &mut IoRequest) {}

    /// A forwarded request came back from the base (its status set, the layer's frame on top).
    /// Return it to have it completed upward now with its status, or keep it (`None`) and
    /// complete it later. Called from the channel's poller.
    #[inline]
    fn on_base_done(&self, io: IoBox) -> Option<IoBox> {
        Some(io)
    }

    /// The module's own work each poller turn (timers, released held I/O). Returns how many
    /// requests it completed.
    #[inline]
    fn poll(&self) -> usize {
        0
    }

    /// Hot removal or channel teardown: complete everything the module holds (as `Aborted`) and
    /// stop holding new requests.
    fn abort_all(&self) {}
}

/// Names and identity of a layer, fixed at creation; used by `config()` and `driver_specific()`.
#[derive(Debug, Clone)]
pub(crate) struct LinkInfo {
    /// The layer's own bdev name.
    pub name: String,
    /// The base bdev's name at creation time.
    pub base_name: String,
    /// The layer's UUID (given or generated at creation).
    pub uuid: Uuid,
}

/// What a module contributes to its backend: per-channel hooks and its JSON views.
pub(crate) trait Layer: Send + Sync + 'static {
    type Hooks: Hooks;

    /// Builds one channel's hooks; called on `core` when the layer's channel is created there.
    fn hooks(&self, core: CoreId) -> Self::Hooks;

    /// `driver_specific` of bdev_get_bdevs.
    fn driver_specific(&self, link: &LinkInfo) -> Value;

    /// The RPC that recreates the layer.
    fn config(&self, info: &BdevInfo, link: &LinkInfo) -> Option<ConfigCall>;
}

/// The backend of every stacking bdev: the module's [`Layer`] plus the base descriptor.
pub(crate) struct StackBackend<L: Layer> {
    layer: L,
    link: LinkInfo,
    module: &'static str,
    /// The claimed base; `None` after unregistration (claim released).
    base: Mutex<Option<Descriptor>>,
}

impl<L: Layer> StackBackend<L> {
    /// Drops the base descriptor: closes it and releases the claim. Idempotent.
    fn release_base(&self) {
        let desc = self.base.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(desc);
    }
}

impl<L: Layer> BdevBackend for StackBackend<L> {
    fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
        // The base's channel on this core (created there if needed). After unregistration the
        // descriptor is gone; the channel then fails what reaches it with `Removed`.
        let base = self
            .base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|d| d.channel());
        let poller_name = format!("{}_{}", self.module, self.link.name);
        Box::new(StackChannel::new(cx, base, self.layer.hooks(cx.core()), poller_name, 0))
    }

    fn driver_specific(&self) -> Value {
        self.layer.driver_specific(&self.link)
    }

    fn config(&self, info: &BdevInfo) -> Option<ConfigCall> {
        self.layer.config(info, &self.link)
    }

    fn bases(&self) -> Vec<String> {
        vec![self.link.base_name.clone()]
    }

    /// A layer unregisters itself when its base goes (the hot-removal cascade above).
    fn removed_with_base(&self) -> bool {
        true
    }

    fn on_unregister(&self) {
        self.release_base();
    }
}

/// What [`create_layer`] needs besides the module's [`Layer`].
pub(crate) struct LayerSpec<'a> {
    pub module: &'static str,
    pub product_name: &'static str,
    /// The layer's bdev name.
    pub name: String,
    pub base_name: &'a str,
    pub uuid: Option<Uuid>,
}

/// Creates a stacking bdev: checks the name is free, opens and claims the base, registers the
/// layer with the base's block size, block count, caps and I/O boundary, and arms the
/// hot-removal cascade. On any error nothing stays registered or claimed. Called on the main
/// core (or off-reactor in tests); the layer's remove events arrive on the calling core.
pub(crate) fn create_layer<L: Layer>(
    reg: &Arc<BdevRegistry>,
    spec: LayerSpec<'_>,
    layer: L,
) -> Result<Arc<Bdev>, BdevError> {
    if reg.get(&spec.name).is_some() {
        return Err(BdevError::Exists(spec.name));
    }
    // The cascade closure learns the layer's bdev once it is registered.
    let me: Arc<OnceLock<Weak<Bdev>>> = Arc::new(OnceLock::new());
    let me2 = me.clone();
    let weak_reg = Arc::downgrade(reg);
    let own_name = spec.name.clone();
    let desc = reg.open(spec.base_name, true, move |ev| match ev {
        BdevEvent::Remove => remove_layer(&weak_reg, &me2, &own_name),
    })?;
    desc.claim(spec.module)?; // on error `desc` drops: closed, nothing claimed
    let base_info = desc.info().clone();
    let uuid = spec.uuid.unwrap_or_else(Uuid::new_v4);
    let backend = Arc::new(StackBackend {
        layer,
        link: LinkInfo {
            name: spec.name.clone(),
            base_name: base_info.name.clone(),
            uuid,
        },
        module: spec.module,
        base: Mutex::new(Some(desc)),
    });
    let params = BdevParams {
        name: spec.name.clone(),
        uuid: Some(uuid),
        product_name: spec.product_name,
        module: spec.module,
        block_size: base_info.block_size,
        num_blocks: base_info.num_blocks,
        caps: base_info.caps,
        optimal_io_boundary_blocks: base_info.optimal_io_boundary_blocks,
    };
    let bdev = match reg.register(params, backend.clone()) {
        Ok(b) => b,
        Err(e) => {
            backend.release_base();
            return Err(e);
        }
    };
    let _ = me.set(Arc::downgrade(&bdev));
    // The base may have gone while we registered (its event found no layer yet): follow it.
    let base_gone = backend
        .base
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|d| d.bdev().is_removed());
    if base_gone {
        remove_layer(&Arc::downgrade(reg), &me, &spec.name);
    }
    tracing::debug!(name = %spec.name, base = %base_info.name, module = spec.module, "stacked bdev created");
    Ok(bdev)
}

/// The hot-removal cascade: unregisters the layer if the registry still maps `name` to it.
fn remove_layer(reg: &Weak<BdevRegistry>, me: &OnceLock<Weak<Bdev>>, name: &str) {
    let (Some(reg), Some(bdev)) = (reg.upgrade(), me.get().and_then(Weak::upgrade)) else {
        return;
    };
    if reg.get(name).is_some_and(|b| Arc::ptr_eq(&b, &bdev)) {
        tracing::debug!(name, "base removed: removing stacked bdev");
        if let Err(e) = reg.unregister(name, || {}) {
            tracing::warn!(name, error = %e, "cannot remove stacked bdev after its base");
        }
    }
}

/// State shared by a layer channel and its poller.
struct Shared<H> {
    cq: CompletionQueue,
    /// In-place forwarding context (its queue is `cq`), used when `H::FORWARD_IN_PLACE`.
    fwd: Rc<ForwardCtx>,
    hooks: H,
    /// Set by `abort_all`: the bdev is going away.
    aborted: Cell<bool>,
}

impl<H: Hooks> Shared<H> {
    /// Drains the base completions present now and runs the module's timers; returns how many
    /// requests were moved or completed.
    #[inline]
    fn poll(&self) -> usize {
        let moved = self.cq.drain_now(|io| {
            if H::FORWARD_IN_PLACE {
                // Every request of such a layer went down forwarded: this is one of its failures.
                self.fwd.end();
            }
            if let Some(io) = self.hooks.on_base_done(io) {
                let status = io.status();
                io.complete(status);
            }
        });
        moved + self.hooks.poll()
    }
}

/// The per-core channel of every stacking bdev. `!Send`; lives and dies on its core.
pub(crate) struct StackChannel<H: Hooks> {
    /// The way to the base on this core (`None` once the base descriptor is gone).
    base: Option<ForwardPath>,
    /// Where block 0 of the layer is on the base: 0 for a layer over the whole base, a part's
    /// start for a split part. Only layers that forward in place may have one.
    offset_blocks: u64,
    shared: Rc<Shared<H>>,
    _poller: PollerHandle,
}

impl<H: Hooks> StackChannel<H> {
    /// Builds the channel and registers its poller on the calling core. Block `x` of the layer
    /// is block `offset_blocks + x` of the base (`offset_blocks` must be 0 unless
    /// [`Hooks::FORWARD_IN_PLACE`]). A layer whose hooks only pass requests on
    /// ([`Hooks::ROUTE`]) publishes a linear route at that offset: the core then forwards its
    /// requests without calling the layer.
    pub(crate) fn new(
        cx: &ChannelCx,
        base: Option<Channel>,
        hooks: H,
        poller_name: String,
        offset_blocks: u64,
    ) -> StackChannel<H> {
        debug_assert!(H::FORWARD_IN_PLACE || offset_blocks == 0);
        let cq = CompletionQueue::with_capacity(CQ_CAPACITY);
        let fwd = ForwardCtx::new(cq.clone());
        let base = base.map(|b| ForwardPath::new(&fwd, cx.stats(), b));
        if let (true, Some(path)) = (H::ROUTE, &base) {
            cx.route_handle()
                .set(crate::Route::linear(path.clone(), offset_blocks, IoCaps::ALL));
        }
        let shared = Rc::new(Shared {
            fwd,
            cq,
            hooks,
            aborted: Cell::new(false),
        });
        let sh = shared.clone();
        let poller = current().register_poller(poller_name, move || PollStatus::from_work(sh.poll() > 0));
        StackChannel {
            base,
            offset_blocks,
            shared,
            _poller: poller,
        }
    }
}

impl<H: Hooks> BackendChannel for StackChannel<H> {
    #[inline]
    fn submit(&self, io: IoBox) -> Submit {
        let io = match self.shared.hooks.on_submit(io) {
            Route::Forward(io) => io,
            Route::Taken => return Submit::Accepted,
            Route::Requeue(io) => return Submit::Requeue(io),
        };
        let Some(base) = &self.base else {
            io.complete(IoStatus::Removed);
            return Submit::Accepted;
        };
        let r = if H::FORWARD_IN_PLACE {
            let offset = io.offset_blocks;
            let mut io = io;
            io.offset_blocks = offset + self.offset_blocks;
            base.forward(io, offset)
        } else {
            base.base().submit(io, &self.shared.cq)
        };
        match r {
            Submit::Accepted => Submit::Accepted,
            Submit::Requeue(mut io) => {
                // A refused forward comes back as mapped.
                io.offset_blocks -= self.offset_blocks;
                self.shared.hooks.on_requeue(&mut io);
                Submit::Requeue(io)
            }
        }
    }

    fn abort_all(&self) {
        self.shared.aborted.set(true);
        self.shared.hooks.abort_all();
    }
}

impl<H: Hooks> Drop for StackChannel<H> {
    fn drop(&mut self) {
        // Nothing held is lost when a channel closes: held requests complete as aborted and the
        // base completions already queued are delivered upward. (Requests still inside an
        // asynchronous base when its owner drops the channel are the owner's mistake.)
        if !self.shared.aborted.get() {
            self.shared.hooks.abort_all();
        }
        self.shared.poll();
    }
}

/// Runs `f` on the [`Layer`] of the bdev `name` (name, alias or UUID) of `module`: `NotFound`
/// when no such bdev exists, `InvalidParam("name")` when it belongs to another module. Control
/// path.
pub(crate) fn layer_of<L: Layer, R>(
    reg: &BdevRegistry,
    module: &'static str,
    name: &str,
    f: impl FnOnce(&L) -> R,
) -> Result<R, BdevError> {
    let bdev = reg.get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if bdev.info().module != module {
        return Err(BdevError::invalid(
            "name",
            format!("bdev '{name}' is not a {module} bdev (module '{}')", bdev.info().module),
        ));
    }
    bdev.backend_as::<StackBackend<L>>()
        .map(|b| f(&b.layer))
        .ok_or_else(|| BdevError::NotFound(name.to_string()))
}
