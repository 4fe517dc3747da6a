//! Resync, recovery, check and repair as a poller task on the main reactor: the core's engine
//! ([`engine`]) walks the array in windows locked against writes and paced by [`pacer`]; what a
//! piece of a window reads, writes and compares is the layout's sync step
//! ([`crate::personality::SyncStep`], e.g. the copy levels' in `mirror.rs`).
//!
//! [`start`] registers a poller `md_sync_<array>` that walks the array in windows: it locks a
//! window against writes ([`crate::shared::WriteGate::raise_barrier`]), waits until the writes
//! already admitted there drained, cuts the window into the step's pieces and runs them,
//! unlocks, publishes progress (`Shared::set_resync_cp`, `Slot::set_recovered_sectors`,
//! [`SyncProgress`]) and hands checkpoints to the control path, which persists them in the
//! superblocks. Foreground I/O outside the window keeps flowing.
//!
//! # Windows and pieces
//!
//! The run walks the layout's **sync space** ([`crate::personality::SyncShape::sync_sectors`]:
//! array sectors for the copy levels), which is also what the resync checkpoint, the bitmap and
//! the write gate count in. A window is 1–4 MiB of it (a quarter second's worth at the max
//! speed, clamped; smaller when the step needs many buffers, so that they stay under
//! [`engine::BUFFER_BUDGET_BYTES`], or when a window cap is set: SPDK's
//! `process_window_size_kb`, in whole buckets and at least one). Windows after the first start on write-gate bucket
//! boundaries (1 MiB), so the barrier covers exactly the window, and never cross the end. The
//! step cuts a window into **pieces** ([`crate::personality::SyncStep::piece_sectors`]); up to
//! [`QUEUE_DEPTH`] member I/Os of all pieces are in flight at once (Linux's `sync_io_depth`).
//! The engine owns the requests, the window buffers (as many as the
//! [`crate::personality::SyncShape`] asks for), the completion queue and the per-piece
//! bookkeeping; the step owns what each piece does.
//!
//! # Errors
//!
//! A member I/O that fails marks the member faulty ([`crate::shared::Shared::fail_member`]);
//! the step decides what else it means (a mirror reads the piece again from another copy). A
//! step that cannot go on fails the run: it stops issuing, waits for its I/O in flight (the
//! buffers and requests are its own), lowers the barrier and reports the window start as
//! `at_sector`.
//!
//! # Speed
//!
//! See [`pacer`]. While it waits (pacing, throttling, a draining barrier) the poller reports
//! `Idle`; it reports `Busy` when it completed or issued I/O or moved the run (raised the
//! barrier, skipped clean bitmap chunks, ended).
//!
//! # Bitmap
//!
//! With `bitmap_only` (resync/recover) and an [`Intent`](crate::intent::Intent), chunks that
//! are clean in memory are skipped without I/O (progress and checkpoints still advance over
//! them) and windows end at the first clean chunk. Whenever a resync/recover run has an `Intent`
//! — bitmap-guided or not — every bitmap chunk it processed whole is reported with
//! `Intent::chunk_synced` (a chunk only partly covered, e.g. the one a checkpoint resumed
//! inside, is not). Check and repair ignore the bitmap.
//!
//! # Progress
//!
//! After each window (and each skip) the engine publishes the sector reached: `done_sectors`,
//! the rate; resync: [`crate::shared::Shared::set_resync_cp`]; recover: each target's
//! `recovered_sectors` as the shape maps the sector reached
//! ([`crate::personality::SyncShape::recovered_member_sectors`]; raid1: the same sector,
//! raid10: nothing until the end, its targets stay unreadable meanwhile — a documented
//! limitation). `Done` sets resync_cp / the targets' `recovered_sectors` to `u64::MAX`; the
//! control path then marks the targets in sync. `Stopped`/`Failed` leave the last published
//! values, which equal their `at_sector`.
//!
//! # Allocation
//!
//! Buffers, requests, the piece tables (engine and step) and the queues are allocated once in
//! [`start`]; a window reuses them (vectors keep their capacity). Only the end of a run
//! allocates (its outcome).

pub(crate) mod engine;
pub(crate) mod pacer;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;

use keel_bdev::Channel;
use keel_reactor::{current, PollStatus, PollerHandle};

use crate::layout::MemberIdx;
use crate::personality::Layout;
use crate::shared::Shared;

pub(crate) use engine::{SyncIo, QUEUE_DEPTH};

/// What a sync run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncAction {
    /// Make the redundancy consistent (mirrors: every in-sync copy equal) after an unclean stop
    /// or a create without assume_clean.
    Resync,
    /// Rebuild the `targets` roles from the in-sync members.
    Recover,
    /// Read everything and count mismatching sectors; write nothing.
    Check,
    /// Like check, and rewrite what mismatches (mirrors: from the first good copy).
    Repair,
}

impl SyncAction {
    /// The word `/proc/mdstat` and `sync_action` use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SyncAction::Resync => "resync",
            SyncAction::Recover => "recover",
            SyncAction::Check => "check",
            SyncAction::Repair => "repair",
        }
    }
}

/// Linux's speed limits (KiB/s), changed by `md_set_sync_speed` at any time. `max_kbs == 0`
/// means no upper limit (`md_set_sync_speed` refuses 0, as Linux does; SPDK's raid options ask
/// for it). `window_kb` caps the window (0: the engine's own choice, see the module docs).
#[derive(Debug)]
pub(crate) struct SyncSpeed {
    pub min_kbs: AtomicU64,
    pub max_kbs: AtomicU64,
    pub window_kb: AtomicU64,
}

/// What `md_get_arrays` shows of a run; written by the engine, read anywhere.
#[derive(Debug, Default)]
pub(crate) struct SyncProgress {
    /// 0 idle, else `SyncAction as u8 + 1`. Set by the engine when a run starts; cleared by
    /// the run's owner (the daemon) when it collected the outcome, not by the engine.
    pub action: AtomicU8,
    /// Array sectors done (from 0, including a checkpoint resumed from).
    pub done_sectors: AtomicU64,
    /// Array sectors to do in total.
    pub total_sectors: AtomicU64,
    /// Mismatching sectors found (check, repair). Reset when a resync, check or repair starts.
    pub mismatch_sectors: AtomicU64,
    /// Current rate (KiB/s, over the last second or so).
    pub rate_kbs: AtomicU64,
}

/// One run's inputs.
pub(crate) struct SyncJob {
    pub action: SyncAction,
    /// The array's name (poller `md_sync_<name>`, log lines).
    pub name: String,
    pub shared: Arc<Shared>,
    /// The array's layout: geometry and sync shape.
    pub layout: Arc<dyn Layout>,
    /// Main-core channels per role (None: no member in that role).
    pub members: Vec<Option<Rc<Channel>>>,
    /// Sync sector to start at (a checkpoint; 0 for a fresh run).
    pub start_sector: u64,
    /// Recover: the roles being rebuilt.
    pub targets: Vec<MemberIdx>,
    /// Only windows whose bitmap chunks are dirty (resync after an unclean stop, re-add).
    pub bitmap_only: bool,
    pub speed: Arc<SyncSpeed>,
    pub progress: Arc<SyncProgress>,
    /// Called on the main core with the sync sector reached, at least every
    /// `checkpoint_interval_ms` while progressing, and once at the end with the final sector
    /// (the array size when done, the stop / failure sector otherwise).
    pub on_checkpoint: Box<dyn FnMut(u64)>,
    pub checkpoint_interval_ms: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncOutcome {
    Done {
        mismatch_sectors: u64,
    },
    /// Interrupted by [`SyncHandle::stop`] (or dropping the handle) at this sync sector.
    Stopped {
        at_sector: u64,
    },
    /// No readable source or a target failed; the control path decides what next.
    Failed {
        at_sector: u64,
        reason: String,
    },
}

/// State shared by a run and its handle (main core only).
#[derive(Debug, Default)]
pub(crate) struct SyncCtl {
    pub(crate) stop: Cell<bool>,
}

/// Controls a running sync. Dropping it stops the run at the next window boundary.
pub(crate) struct SyncHandle {
    ctl: Rc<SyncCtl>,
}

impl SyncHandle {
    /// Asks the run to stop after the current window; `done` gets `Stopped`. Main core.
    pub(crate) fn stop(&self) {
        self.ctl.stop.set(true);
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.ctl.stop.set(true);
    }
}

/// Starts a run on the current (main) reactor; `done` runs there once, from the run's poller
/// (never on this call's stack), after which the poller unregisters itself. Bad inputs (a level
/// without sync, misaligned start, unusable targets) end the run `Failed` the same way.
/// Allocates the run's buffers and requests now.
pub(crate) fn start(job: SyncJob, done: impl FnOnce(SyncOutcome) + 'static) -> SyncHandle {
    let ctl = Rc::new(SyncCtl::default());
    let poller_name = format!("md_sync_{}", job.name);
    let mut engine = engine::Engine::new(job, ctl.clone(), engine::now_us());
    let slot: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
    let slot2 = slot.clone();
    let mut done = Some(done);
    let handle = current().register_poller(poller_name, move || {
        let (busy, outcome) = engine.poll(engine::now_us());
        if let Some(outcome) = outcome {
            if let Some(d) = done.take() {
                d(outcome);
            }
            // Unregisters; the reactor drops this closure (and the engine) afterwards.
            slot2.borrow_mut().take();
        }
        PollStatus::from_work(busy)
    });
    *slot.borrow_mut() = Some(handle);
    SyncHandle { ctl }
}
