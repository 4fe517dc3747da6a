//! The error-injection bdev, as SPDK's `bdev_error`: `EE_<base>` over a base bdev, forwarding
//! I/O unchanged until an injection is armed with [`inject`].
//!
//! # Injection state
//!
//! One `InjectState` per error bdev, shared by every core: for each injectable op (read,
//! write, unmap, flush — as SPDK, other ops are never affected) a slot of atomics: `remaining`
//! (how many more I/Os to affect), `kind`, `queue_depth`, `corrupt_offset`, `corrupt_value`.
//! [`inject`] disarms the slot (`remaining = 0`), writes the parameters, then stores `remaining`
//! with `Release`. The data path does **one relaxed load of `remaining` per I/O**; only when it
//! is non-zero does it check the channel's in-flight count against `queue_depth` (as SPDK: affect
//! an I/O only when at least that many are in flight on the channel) and take one unit with an
//! `Acquire` compare-exchange, after which the parameters it reads are the armed ones. No lock,
//! no allocation. (An inject racing with I/O may mix old and new parameters for that one I/O,
//! as in SPDK.)
//!
//! # What each kind does to an affected I/O
//!
//! * `failure`, `nvme_failure`: completed `Failed` without reaching the base (Keel's status has
//!   no NVMe status codes; `nvme_sct`/`nvme_sc` are validated as SPDK does and then unused).
//! * `nomem`: handed back with `Submit::Requeue` (backpressure), counted like any injection.
//! * `pending`: held on the channel and never completed until `io_type: clear` (then `Failed`),
//!   a reset through the bdev (then `Failed`, on every core), or hot removal / channel teardown
//!   (then `Aborted`). Clear and reset bump a generation counter that each channel's poller
//!   compares with the generation its held requests were taken in: the only cross-core signal,
//!   one relaxed load per poll while something is held.
//! * `corrupt_data`: forwarded; a write has the byte at `corrupt_offset` of its data XORed with
//!   `corrupt_value` before it goes down (SPDK's XOR — hence 0 is refused) and restored in the
//!   caller's buffer when it comes back; a successful read has that byte XORed on the way up.
//!   An offset past the request's buffers changes nothing. The mark, value and offset travel in
//!   the request's layer word, so re-arming meanwhile cannot confuse an I/O in flight.
//!
//! # Finding the state by name
//!
//! [`inject`] looks the bdev up in the registry and takes the `InjectState` from its backend,
//! downcast to the error layer's own type (`modules/stack.rs`, "Module state lookup"); a bdev of
//! another module is refused by name. The state lives in the layer and goes with it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use keel_reactor::CoreId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::stack::{create_layer, layer_of, Hooks, Layer, LayerSpec, LinkInfo, Route};
use super::{obj, parse_uuid};
use crate::{Bdev, BdevError, BdevInfo, BdevRegistry, ConfigCall, IoBox, IoOp, IoRequest, IoStatus, IoVec};

/// Module name.
pub const MODULE: &str = "error";

/// `product_name` of error bdevs (SPDK's).
pub const PRODUCT_NAME: &str = "Error Injection Disk";

/// Prefix of an error bdev's name: `EE_<base_name>`.
pub const NAME_PREFIX: &str = "EE_";

/// `bdev_error_create` parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorOpts {
    pub base_name: String,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// `bdev_error_inject_error` parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InjectOpts {
    pub name: String,
    pub io_type: String,
    pub error_type: String,
    #[serde(default)]
    pub num: Option<u32>,
    #[serde(default)]
    pub queue_depth: Option<u64>,
    #[serde(default)]
    pub corrupt_offset: Option<u64>,
    #[serde(default)]
    pub corrupt_value: Option<u8>,
    #[serde(default)]
    pub nvme_sct: Option<u32>,
    #[serde(default)]
    pub nvme_sc: Option<u32>,
}

impl InjectOpts {
    /// Options with only the required fields (`num` defaults to 1).
    pub fn new(name: &str, io_type: &str, error_type: &str) -> InjectOpts {
        InjectOpts {
            name: name.to_string(),
            io_type: io_type.to_string(),
            error_type: error_type.to_string(),
            num: None,
            queue_depth: None,
            corrupt_offset: None,
            corrupt_value: None,
            nvme_sct: None,
            nvme_sc: None,
        }
    }
}

/// Injection kinds, as stored in a slot's `kind`.
const KIND_FAILURE: u8 = 1;
const KIND_NVME_FAILURE: u8 = 2;
const KIND_PENDING: u8 = 3;
const KIND_CORRUPT: u8 = 4;
const KIND_NOMEM: u8 = 5;

fn parse_kind(error_type: &str) -> Result<u8, BdevError> {
    Ok(match error_type {
        "failure" => KIND_FAILURE,
        "nvme_failure" => KIND_NVME_FAILURE,
        "pending" => KIND_PENDING,
        "corrupt_data" => KIND_CORRUPT,
        "nomem" => KIND_NOMEM,
        other => {
            return Err(BdevError::invalid(
                "error_type",
                format!("'{other}' is not one of failure, nvme_failure, pending, corrupt_data, nomem"),
            ))
        }
    })
}

/// Slots, one per injectable op.
const SLOTS: usize = 4;

#[inline]
fn slot_of(op: IoOp) -> Option<usize> {
    match op {
        IoOp::Read => Some(0),
        IoOp::Write => Some(1),
        IoOp::Unmap => Some(2),
        IoOp::Flush => Some(3),
        IoOp::WriteZeroes | IoOp::Reset => None,
    }
}

/// Which slots an `io_type` addresses; `None` for `clear`.
fn parse_io_type(io_type: &str) -> Result<Option<&'static [usize]>, BdevError> {
    Ok(Some(match io_type {
        "clear" => return Ok(None),
        "read" => &[0],
        "write" => &[1],
        "unmap" => &[2],
        "flush" => &[3],
        "all" => &[0, 1, 2, 3],
        other => {
            return Err(BdevError::invalid(
                "io_type",
                format!("'{other}' is not one of clear, read, write, unmap, flush, all"),
            ))
        }
    }))
}

#[derive(Default)]
struct Slot {
    remaining: AtomicU32,
    kind: AtomicU8,
    queue_depth: AtomicU64,
    corrupt_offset: AtomicU64,
    corrupt_value: AtomicU8,
}

impl Slot {
    /// Takes one unit of the armed injection if the channel has at least `queue_depth`
    /// requests in flight; returns (kind, corrupt_offset, corrupt_value).
    #[inline]
    fn take(&self, inflight: u64) -> Option<(u8, u64, u8)> {
        if inflight < self.queue_depth.load(Ordering::Relaxed) {
            return None;
        }
        let mut n = self.remaining.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            match self
                .remaining
                .compare_exchange_weak(n, n - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(cur) => n = cur,
            }
        }
        Some((
            self.kind.load(Ordering::Relaxed),
            self.corrupt_offset.load(Ordering::Relaxed),
            self.corrupt_value.load(Ordering::Relaxed),
        ))
    }
}

/// One error bdev's injection state, shared by all cores (see the module docs).
#[derive(Default)]
struct InjectState {
    slots: [Slot; SLOTS],
    /// Bumped by `clear` and by resets: held (`pending`) requests of older generations fail.
    release_gen: AtomicU64,
}

/// The layer's word for a request it affects: bits 0..2 mark, 2..10 XOR value, 10.. offset.
const MARK_MASK: u64 = 0b11;
const MARK_CORRUPT_READ: u64 = 1;
const MARK_CORRUPT_WRITE: u64 = 2;
const WORD_OFFSET_SHIFT: u32 = 10;
/// Largest corrupt offset the layer word carries; larger ones are clamped (and then lie past
/// any request's buffers, so they change nothing either way).
const WORD_MAX_OFFSET: u64 = u64::MAX >> WORD_OFFSET_SHIFT;

#[inline]
fn pack_word(mark: u64, offset: u64, value: u8) -> u64 {
    mark | (value as u64) << 2 | offset.min(WORD_MAX_OFFSET) << WORD_OFFSET_SHIFT
}

/// XORs the byte at `offset` of the request's data (walking its iov windows) with `value`.
#[inline]
fn xor_byte(iovs: &[IoVec], mut offset: u64, value: u8) {
    for v in iovs {
        if offset < v.len_bytes as u64 {
            v.buf.bytes_mut()[v.offset_bytes as usize + offset as usize] ^= value;
            return;
        }
        offset -= v.len_bytes as u64;
    }
}

/// Applies (or undoes: XOR is its own inverse) the corruption recorded in the layer word.
#[inline]
fn apply_word(io: &mut IoRequest) {
    let word = *io.layer_word();
    let value = (word >> 2) as u8;
    xor_byte(&io.iovs, word >> WORD_OFFSET_SHIFT, value);
}

/// Held `pending` requests a channel has room for before its queue first grows.
const PENDING_CAPACITY: usize = 64;

struct ErrorLayer {
    state: Arc<InjectState>,
}

struct ErrorHooks {
    state: Arc<InjectState>,
    /// Requests forwarded to the base and not back yet (for `queue_depth`).
    inflight: Cell<u64>,
    /// Held `pending` requests with the release generation they were taken in.
    pending: RefCell<VecDeque<(u64, IoBox)>>,
}

impl Hooks for ErrorHooks {
    #[inline]
    fn on_submit(&self, mut io: IoBox) -> Route {
        if io.op == IoOp::Reset {
            // As SPDK: a reset returns the held requests (on every core, through the generation).
            self.state.release_gen.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(i) = slot_of(io.op) {
            let slot = &self.state.slots[i];
            // The one load per I/O while nothing is armed.
            if slot.remaining.load(Ordering::Relaxed) != 0 {
                if let Some((kind, offset, value)) = slot.take(self.inflight.get()) {
                    match kind {
                        KIND_FAILURE | KIND_NVME_FAILURE => {
                            io.complete(IoStatus::Failed);
                            return Route::Taken;
                        }
                        KIND_NOMEM => return Route::Requeue(io),
                        KIND_PENDING => {
                            let gen = self.state.release_gen.load(Ordering::Acquire);
                            self.pending.borrow_mut().push_back((gen, io));
                            return Route::Taken;
                        }
                        KIND_CORRUPT => match io.op {
                            IoOp::Write => {
                                *io.layer_word() = pack_word(MARK_CORRUPT_WRITE, offset, value);
                                apply_word(&mut io);
                            }
                            IoOp::Read => *io.layer_word() = pack_word(MARK_CORRUPT_READ, offset, value),
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
        }
        self.inflight.set(self.inflight.get() + 1);
        Route::Forward(io)
    }

    fn on_requeue(&self, io: &mut IoRequest) {
        self.inflight.set(self.inflight.get() - 1);
        if *io.layer_word() & MARK_MASK == MARK_CORRUPT_WRITE {
            // Give the caller its buffer back as sent, and the injection its unit back: the
            // retried write will be corrupted instead.
            apply_word(io);
            *io.layer_word() = 0;
            if let Some(i) = slot_of(io.op) {
                self.state.slots[i].remaining.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[inline]
    fn on_base_done(&self, mut io: IoBox) -> Option<IoBox> {
        self.inflight.set(self.inflight.get() - 1);
        match *io.layer_word() & MARK_MASK {
            MARK_CORRUPT_READ if io.status().is_success() => apply_word(&mut io),
            MARK_CORRUPT_WRITE => apply_word(&mut io), // restore the caller's buffer
            _ => {}
        }
        Some(io)
    }

    #[inline]
    fn poll(&self) -> usize {
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            return 0;
        }
        let gen = self.state.release_gen.load(Ordering::Acquire);
        let mut n = 0;
        while pending.front().is_some_and(|(g, _)| *g != gen) {
            if let Some((_, io)) = pending.pop_front() {
                io.complete(IoStatus::Failed);
                n += 1;
            }
        }
        n
    }

    fn abort_all(&self) {
        let mut pending = self.pending.borrow_mut();
        while let Some((_, io)) = pending.pop_front() {
            io.complete(IoStatus::Aborted);
        }
    }
}

impl Layer for ErrorLayer {
    type Hooks = ErrorHooks;

    fn hooks(&self, _core: CoreId) -> ErrorHooks {
        ErrorHooks {
            state: self.state.clone(),
            inflight: Cell::new(0),
            pending: RefCell::new(VecDeque::with_capacity(PENDING_CAPACITY)),
        }
    }

    fn driver_specific(&self, link: &LinkInfo) -> Value {
        json!({"error_disk": {"base_bdev": link.base_name}})
    }

    fn config(&self, info: &BdevInfo, link: &LinkInfo) -> Option<ConfigCall> {
        Some(ConfigCall {
            method: "bdev_error_create",
            params: obj([
                ("base_name", json!(link.base_name)),
                ("uuid", json!(info.uuid.to_string())),
            ]),
        })
    }
}

/// Creates `EE_<base_name>` over `base_name`, claiming the base. Fails with `NotFound` (no such
/// base), `Claimed`/`HasWriters` (base taken), `Exists` (`EE_` name taken) or `InvalidParam`
/// (bad UUID), leaving nothing registered or claimed. Called on the main core; the base's hot
/// removal removes the error bdev too. Takes the registry's `Arc` for that cascade.
pub fn create(reg: &Arc<BdevRegistry>, opts: &ErrorOpts) -> Result<Arc<Bdev>, BdevError> {
    let uuid = parse_uuid("uuid", opts.uuid.as_deref())?;
    create_layer(
        reg,
        LayerSpec {
            module: MODULE,
            product_name: PRODUCT_NAME,
            name: format!("{NAME_PREFIX}{}", opts.base_name),
            base_name: &opts.base_name,
            uuid,
        },
        ErrorLayer {
            state: Arc::new(InjectState::default()),
        },
    )
}

/// Arms an injection on the error bdev `name` (its `EE_` name, an alias or its UUID), or with
/// `io_type: "clear"` disarms every op and fails the held `pending` requests. Validation as
/// SPDK (`InvalidParam` naming the parameter): `io_type` and `error_type` from their sets;
/// `nvme_failure` needs a non-zero `nvme_sct` or `nvme_sc`, and other types must not give them;
/// `corrupt_data` needs `corrupt_value` in 1..=255. `NotFound` for an unknown bdev. Callable on
/// any thread (control path); takes effect for the next I/O on every core.
pub fn inject(reg: &BdevRegistry, opts: &InjectOpts) -> Result<(), BdevError> {
    let slots = parse_io_type(&opts.io_type)?;
    let kind = parse_kind(&opts.error_type)?;
    let nvme_given = opts.nvme_sct.unwrap_or(0) != 0 || opts.nvme_sc.unwrap_or(0) != 0;
    if (kind == KIND_NVME_FAILURE) != nvme_given {
        return Err(BdevError::invalid(
            if opts.nvme_sct.unwrap_or(0) != 0 || kind == KIND_NVME_FAILURE {
                "nvme_sct"
            } else {
                "nvme_sc"
            },
            "nvme_sct or nvme_sc should be specified for NVMe error injection",
        ));
    }
    let corrupt_value = opts.corrupt_value.unwrap_or(0);
    if kind == KIND_CORRUPT && corrupt_value == 0 {
        return Err(BdevError::invalid(
            "corrupt_value",
            "must be 1..=255 for corrupt_data (the byte is XORed with it)",
        ));
    }
    let state = layer_of(reg, MODULE, &opts.name, |l: &ErrorLayer| l.state.clone())?;
    let Some(slots) = slots else {
        for s in &state.slots {
            s.remaining.store(0, Ordering::Relaxed);
        }
        state.release_gen.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(name = %opts.name, "error injection cleared");
        return Ok(());
    };
    let num = opts.num.unwrap_or(1);
    for &i in slots {
        let s = &state.slots[i];
        s.remaining.store(0, Ordering::Relaxed);
        s.kind.store(kind, Ordering::Relaxed);
        s.queue_depth.store(opts.queue_depth.unwrap_or(0), Ordering::Relaxed);
        s.corrupt_offset
            .store(opts.corrupt_offset.unwrap_or(0), Ordering::Relaxed);
        s.corrupt_value.store(corrupt_value, Ordering::Relaxed);
        s.remaining.store(num, Ordering::Release);
    }
    tracing::debug!(name = %opts.name, io_type = %opts.io_type, error_type = %opts.error_type, num, "error injection armed");
    Ok(())
}

/// Deletes an error bdev; its base is released (claimable again) when `done` runs and its held
/// requests complete as aborted. Called on the main core.
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    super::delete_of_module(reg, MODULE, name, done)
}
