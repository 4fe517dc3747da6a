//! The delay bdev, as SPDK's `bdev_delay`: a layer that makes reads and writes take at least a
//! configured latency, for testing timeouts and latency-sensitive code above it.
//!
//! # When the delay applies
//!
//! As SPDK, the request first goes to the base; the hold happens **after the base completed
//! it**. Unlike SPDK (which adds the latency to the base's time), the deadline is measured
//! **from submission** to this layer: `deadline = submit_ticks + latency_ticks`, using the tick
//! the layer's frame recorded. A read or write therefore completes upward at
//! `max(base completion, submission + latency)`: the configured value is the latency the layer
//! above sees, whatever the base's own speed. Flush, unmap, write_zeroes and reset are not
//! delayed (as SPDK).
//!
//! # avg and p99
//!
//! Every 100th read-or-write a channel sees come back from the base (the 100th, 200th, ...)
//! waits the p99 latency of its kind; the others wait the average. SPDK draws this at random
//! (1 in 100 on average); a counter gives the same rate deterministically, which is what tests
//! and reproducible benchmarks want. `p99 ≥ avg` is required at creation (as SPDK);
//! [`update_latency`] changes one value at a time without that check (as SPDK's
//! `bdev_delay_update_latency`).
//!
//! # Data path
//!
//! Per channel, four FIFOs (avg read, p99 read, avg write, p99 write — as SPDK) of
//! `(deadline_ticks, io)`, each a `VecDeque` allocated with capacity at channel creation. Within
//! one FIFO the latency is the same for every entry, so deadlines are in submission order as
//! long as the base completes in order; when it does not (or after [`update_latency`] lowered a
//! latency) a later deadline at the head holds back earlier ones behind it — SPDK's documented
//! "dam" behaviour. The channel's poller reads `ticks()` only when a FIFO is non-empty and
//! completes the heads whose deadline passed. Latencies are shared by all cores as atomics
//! (microseconds for reports, ticks for the data path), so updates need no message.
//!
//! # Aborts
//!
//! On hot removal (or channel teardown) held requests complete `Aborted`, and so do reads and
//! writes that come back from the base afterwards. A reset through the layer aborts every held
//! request, as SPDK: at once on its own channel, on the others when their poller sees the
//! shared reset generation change (one relaxed load per poll); then it goes to the base.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keel_reactor::{ticks, ticks_per_sec, CoreId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::stack::{create_layer, layer_of, Hooks, Layer, LayerSpec, LinkInfo, Route};
use super::{obj, parse_uuid};
use crate::{Bdev, BdevError, BdevInfo, BdevRegistry, ConfigCall, IoBox, IoOp, IoStatus};

/// Module name.
pub const MODULE: &str = "delay";

/// `product_name` of delay bdevs (SPDK's).
pub const PRODUCT_NAME: &str = "delay";

/// One in this many reads/writes waits the p99 latency.
pub const P99_EVERY: u64 = 100;

/// `bdev_delay_create` parameters (latencies in µs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DelayOpts {
    pub base_bdev_name: String,
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub avg_read_latency: u64,
    pub p99_read_latency: u64,
    pub avg_write_latency: u64,
    pub p99_write_latency: u64,
}

impl DelayOpts {
    /// Options with every latency set, no UUID.
    pub fn new(
        name: &str,
        base_bdev_name: &str,
        avg_read_latency_us: u64,
        p99_read_latency_us: u64,
        avg_write_latency_us: u64,
        p99_write_latency_us: u64,
    ) -> DelayOpts {
        DelayOpts {
            base_bdev_name: base_bdev_name.to_string(),
            name: name.to_string(),
            uuid: None,
            avg_read_latency: avg_read_latency_us,
            p99_read_latency: p99_read_latency_us,
            avg_write_latency: avg_write_latency_us,
            p99_write_latency: p99_write_latency_us,
        }
    }
}

/// Index of a latency (and of a channel FIFO).
const AVG_READ: usize = 0;
const P99_READ: usize = 1;
const AVG_WRITE: usize = 2;
const P99_WRITE: usize = 3;
/// SPDK's parameter / `latency_type` names, by index.
const LATENCY_NAMES: [&str; 4] = ["avg_read", "p99_read", "avg_write", "p99_write"];

/// The four latencies and the reset generation, shared by every core.
struct Latencies {
    us: [AtomicU64; 4],
    ticks: [AtomicU64; 4],
    /// Bumped by every reset through the layer: channels abort what they hold when they see it.
    reset_gen: AtomicU64,
}

fn us_to_ticks(latency_us: u64) -> u64 {
    let t = latency_us as u128 * ticks_per_sec() as u128 / 1_000_000;
    u64::try_from(t).unwrap_or(u64::MAX)
}

impl Latencies {
    fn new(values_us: [u64; 4]) -> Latencies {
        Latencies {
            us: values_us.map(AtomicU64::new),
            ticks: values_us.map(|v| AtomicU64::new(us_to_ticks(v))),
            reset_gen: AtomicU64::new(0),
        }
    }

    fn set(&self, idx: usize, latency_us: u64) {
        self.ticks[idx].store(us_to_ticks(latency_us), Ordering::Relaxed);
        self.us[idx].store(latency_us, Ordering::Relaxed);
    }

    fn us(&self, idx: usize) -> u64 {
        self.us[idx].load(Ordering::Relaxed)
    }
}

/// Requests one FIFO holds before it first grows (it keeps its high-water mark after).
const FIFO_CAPACITY: usize = 256;

struct DelayLayer {
    lat: Arc<Latencies>,
}

struct DelayHooks {
    lat: Arc<Latencies>,
    fifos: [RefCell<VecDeque<(u64, IoBox)>>; 4],
    /// Reads and writes this channel still gets back from the base before the next one waits
    /// the p99 latency (1..=P99_EVERY).
    until_p99: Cell<u64>,
    /// Set on hot removal / teardown: nothing is held any more.
    aborted: Cell<bool>,
    /// The last reset generation this channel acted on.
    seen_reset_gen: Cell<u64>,
}

impl DelayHooks {
    /// Completes every held request with `Aborted`; returns how many.
    fn abort_held(&self) -> usize {
        let mut n = 0;
        for fifo in &self.fifos {
            let mut fifo = fifo.borrow_mut();
            while let Some((_, io)) = fifo.pop_front() {
                io.complete(IoStatus::Aborted);
                n += 1;
            }
        }
        n
    }
}

impl Hooks for DelayHooks {
    #[inline]
    fn on_submit(&self, io: IoBox) -> Route {
        if io.op == IoOp::Reset {
            // As SPDK: a reset aborts every delayed request — here at once, on the other cores
            // at their next poll — and then goes to the base.
            let gen = self.lat.reset_gen.fetch_add(1, Ordering::AcqRel) + 1;
            self.seen_reset_gen.set(gen);
            self.abort_held();
        }
        Route::Forward(io)
    }

    #[inline]
    fn on_base_done(&self, mut io: IoBox) -> Option<IoBox> {
        let avg = match io.op {
            IoOp::Read => AVG_READ,
            IoOp::Write => AVG_WRITE,
            _ => return Some(io),
        };
        if self.aborted.get() {
            io.set_status(IoStatus::Aborted);
            return Some(io);
        }
        // Count down to the next p99 request; P99_* directly follows its AVG_* index.
        let left = self.until_p99.get() - 1;
        let idx = if left == 0 {
            self.until_p99.set(P99_EVERY);
            avg + 1
        } else {
            self.until_p99.set(left);
            avg
        };
        let deadline = io
            .submit_ticks()
            .saturating_add(self.lat.ticks[idx].load(Ordering::Relaxed));
        self.fifos[idx].borrow_mut().push_back((deadline, io));
        None
    }

    #[inline]
    fn poll(&self) -> usize {
        let gen = self.lat.reset_gen.load(Ordering::Relaxed);
        if gen != self.seen_reset_gen.get() {
            self.seen_reset_gen.set(gen);
            return self.abort_held();
        }
        if self.fifos.iter().all(|f| f.borrow().is_empty()) {
            return 0;
        }
        let now = ticks();
        let mut n = 0;
        for fifo in &self.fifos {
            let mut fifo = fifo.borrow_mut();
            while fifo.front().is_some_and(|(deadline, _)| *deadline <= now) {
                if let Some((_, io)) = fifo.pop_front() {
                    let status = io.status();
                    io.complete(status);
                    n += 1;
                }
            }
        }
        n
    }

    fn abort_all(&self) {
        self.aborted.set(true);
        self.abort_held();
    }
}

impl Layer for DelayLayer {
    type Hooks = DelayHooks;

    fn hooks(&self, _core: CoreId) -> DelayHooks {
        DelayHooks {
            lat: self.lat.clone(),
            fifos: std::array::from_fn(|_| RefCell::new(VecDeque::with_capacity(FIFO_CAPACITY))),
            until_p99: Cell::new(P99_EVERY),
            aborted: Cell::new(false),
            seen_reset_gen: Cell::new(self.lat.reset_gen.load(Ordering::Acquire)),
        }
    }

    fn driver_specific(&self, link: &LinkInfo) -> Value {
        json!({"delay": self.params(link)})
    }

    fn config(&self, _info: &BdevInfo, link: &LinkInfo) -> Option<ConfigCall> {
        Some(ConfigCall {
            method: "bdev_delay_create",
            params: self.params(link),
        })
    }
}

impl DelayLayer {
    /// The `bdev_delay_create` parameters that recreate the layer as it is now.
    fn params(&self, link: &LinkInfo) -> Value {
        obj([
            ("name", json!(link.name)),
            ("base_bdev_name", json!(link.base_name)),
            ("uuid", json!(link.uuid.to_string())),
            ("avg_read_latency", json!(self.lat.us(AVG_READ))),
            ("p99_read_latency", json!(self.lat.us(P99_READ))),
            ("avg_write_latency", json!(self.lat.us(AVG_WRITE))),
            ("p99_write_latency", json!(self.lat.us(P99_WRITE))),
        ])
    }
}

/// Creates a delay bdev `name` over `base_bdev_name`, claiming the base. Fails with
/// `InvalidParam` when a p99 latency is below its average (or for a bad name/UUID), `NotFound`
/// (no such base), `Claimed`/`HasWriters` (base taken) or `Exists` (name taken), leaving nothing
/// registered or claimed. Called on the main core; the base's hot removal removes the delay bdev
/// too. Takes the registry's `Arc` for that cascade.
pub fn create(reg: &Arc<BdevRegistry>, opts: &DelayOpts) -> Result<Arc<Bdev>, BdevError> {
    if opts.p99_read_latency < opts.avg_read_latency {
        return Err(BdevError::invalid(
            "p99_read_latency",
            format!(
                "{} us is less than avg_read_latency {} us",
                opts.p99_read_latency, opts.avg_read_latency
            ),
        ));
    }
    if opts.p99_write_latency < opts.avg_write_latency {
        return Err(BdevError::invalid(
            "p99_write_latency",
            format!(
                "{} us is less than avg_write_latency {} us",
                opts.p99_write_latency, opts.avg_write_latency
            ),
        ));
    }
    let uuid = parse_uuid("uuid", opts.uuid.as_deref())?;
    let lat = Arc::new(Latencies::new([
        opts.avg_read_latency,
        opts.p99_read_latency,
        opts.avg_write_latency,
        opts.p99_write_latency,
    ]));
    create_layer(
        reg,
        LayerSpec {
            module: MODULE,
            product_name: PRODUCT_NAME,
            name: opts.name.clone(),
            base_name: &opts.base_bdev_name,
            uuid,
        },
        DelayLayer { lat },
    )
}

/// SPDK's `bdev_delay_update_latency`: sets one latency (`latency_type` ∈ avg_read, avg_write,
/// p99_read, p99_write) of the delay bdev `name` to `latency_us`. Applies to requests that come
/// back from the base from now on, on every core. `NotFound` for an unknown bdev,
/// `InvalidParam` for a bdev of another module or an unknown type. Callable on any thread
/// (control path).
pub fn update_latency(reg: &BdevRegistry, name: &str, latency_type: &str, latency_us: u64) -> Result<(), BdevError> {
    let idx = LATENCY_NAMES.iter().position(|n| *n == latency_type).ok_or_else(|| {
        BdevError::invalid(
            "latency_type",
            format!("'{latency_type}' is not one of avg_read, avg_write, p99_read, p99_write"),
        )
    })?;
    layer_of(reg, MODULE, name, |l: &DelayLayer| l.lat.set(idx, latency_us))?;
    tracing::debug!(name, latency_type, latency_us, "delay latency updated");
    Ok(())
}

/// Deletes a delay bdev; its held requests complete `Aborted` and its base is released
/// (claimable again) when `done` runs. Called on the main core.
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    super::delete_of_module(reg, MODULE, name, done)
}
