//! Resync, recovery, check and repair as a poller task on the main reactor.
//!
//! [`start`] registers a poller `md_sync_<array>` that walks the array in windows: it locks a
//! window against writes ([`crate::shared::WriteGate::raise_barrier`]), waits until the writes
//! already admitted there drained, reads a good copy and writes/compares the others, unlocks,
//! publishes progress (`Shared::set_resync_cp`, `Slot::set_recovered_sectors`, [`SyncProgress`])
//! and hands checkpoints to the control path, which persists them in the superblocks. Foreground
//! I/O outside the window keeps flowing. Speed follows Linux: up to `max` KiB/s; while
//! foreground writes are flowing and the rate is above `min`, it waits.
//!
//! # Windows and pieces
//!
//! A window is 1–4 MiB of array sectors (a quarter second's worth at the max speed, clamped;
//! smaller when check/repair of many copies would need more than [`BUFFER_BUDGET_BYTES`] of
//! buffers). Windows after the first start on write-gate bucket boundaries (1 MiB), so the
//! barrier covers exactly the window, and never cross the array end. A window is cut into
//! **pieces** at chunk boundaries ([`Geometry::copies`]) and at [`PIECE_MAX_SECTORS`] (64 KiB,
//! Linux's resync block); every copy of a piece sits at one member range. Each piece runs its
//! own little state machine — read stage, then (if anything must be written) write stage — and
//! up to [`QUEUE_DEPTH`] member I/Os of all pieces are in flight at once (Linux's
//! `sync_io_depth`). A piece's data lands in the window buffer at the piece's offset: one buffer
//! for resync/recover (the source copy), one per copy index for check/repair.
//!
//! * Resync: read the first readable copy (InSync, or Rebuilding below its recovered mark) and
//!   write it to every other writable copy.
//! * Recover: read a readable copy that is not on a target role and write it to the copies on
//!   the target roles.
//! * Check: read every readable copy and compare each with the first copy that read fine, per
//!   512-byte sector; a sector counts once in `mismatch_sectors` when any copy differs there.
//!   (Linux counts whole 64 KiB resync blocks; Keel's count is exact.)
//! * Repair: as check, then rewrite each differing copy's whole piece from the reference copy.
//!
//! # Errors
//!
//! A failed source read marks the member faulty ([`Shared::fail_member`]) and the piece is read
//! again from another copy; no copy left ends the run `Failed`. A failed write marks the member
//! faulty; on a recovery target it also ends the run `Failed`. A run that fails stops issuing,
//! waits for its I/O in flight (the buffers and requests are its own), lowers the barrier and
//! reports the window start as `at_sector`.
//!
//! # Speed ([`Pacer`])
//!
//! Before each window the engine asks the pacer how long to wait. Max speed is a GCRA ("virtual
//! scheduling"): each window books `window KiB / max` seconds on a virtual clock that never lags
//! the real one, so the rate over any interval stays under `max` plus one window. Min speed: if
//! the gate's foreground write counter moved since the previous decision and the rate over the
//! last 1–2 s is above `min`, wait [`THROTTLE_STEP_US`] and decide again (the rate decays while
//! the engine waits, as Linux's `sync_speed` does). The speed atomics are re-read every window.
//! While it waits (pacing, throttling, a draining barrier) the poller reports `Idle`; it reports
//! `Busy` when it completed or issued I/O or moved the run (raised the barrier, skipped clean
//! bitmap chunks, ended).
//!
//! # Bitmap
//!
//! With `bitmap_only` (resync/recover) and an [`Intent`], chunks that are clean in memory are
//! skipped without I/O (progress and checkpoints still advance over them) and windows end at
//! the first clean chunk. Whenever a resync/recover run has an `Intent` — bitmap-guided or
//! not — every bitmap chunk it processed whole is reported with [`Intent::chunk_synced`] (a
//! chunk only partly covered, e.g. the one a checkpoint resumed inside, is not). Check and
//! repair ignore the bitmap.
//!
//! # Progress
//!
//! After each window (and each skip) the engine publishes the sector reached: `done_sectors`,
//! the rate; resync: [`Shared::set_resync_cp`]; recover on raid1: each target's
//! `recovered_sectors` (member sector == array sector). raid10 targets stay at 0 until the end
//! (their rebuilt part is not a prefix of member sectors, so reads avoid them meanwhile — a
//! documented limitation). `Done` sets resync_cp / the targets' `recovered_sectors` to
//! `u64::MAX`; the control path then marks the targets in sync. `Stopped`/`Failed` leave the
//! last published values, which equal their `at_sector`.
//!
//! # Allocation
//!
//! Buffers, requests, the piece table and the queues are allocated once in [`start`]; a window
//! reuses them (vectors keep their capacity). Only the end of a run allocates (its outcome).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use keel_bdev::{Channel, CompletionQueue, DmaBuf, IoBox, IoOp, IoRequest, IoVec, Submit};
use keel_reactor::{current, ticks, ticks_per_sec, PollStatus, PollerHandle};

use crate::geometry::{Geometry, Mapping};
use crate::intent::Intent;
use crate::layout::{MemberIdx, Place, MAX_COPIES};
use crate::shared::{Shared, BUCKET_SHIFT};

/// What a sync run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncAction {
    /// Make every in-sync copy equal (after an unclean stop or a create without assume_clean).
    Resync,
    /// Rebuild the `targets` roles from the in-sync copies.
    Recover,
    /// Read every copy and count mismatching sectors.
    Check,
    /// Like check, and rewrite mismatching copies from the first good copy.
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
/// means no upper limit (the RPC layer refuses 0, as Linux does).
#[derive(Debug)]
pub(crate) struct SyncSpeed {
    pub min_kbs: AtomicU64,
    pub max_kbs: AtomicU64,
}

/// What `md_get_arrays` shows of a run; written by the engine, read anywhere.
#[derive(Debug, Default)]
pub(crate) struct SyncProgress {
    /// 0 idle, else `SyncAction as u8 + 1`.
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
    pub geo: Arc<Geometry>,
    /// Main-core channels per role (None: no member in that role).
    pub members: Vec<Option<Rc<Channel>>>,
    /// Array sector to start at (a checkpoint; 0 for a fresh run).
    pub start_sector: u64,
    /// Recover: the roles being rebuilt.
    pub targets: Vec<usize>,
    /// Only windows whose bitmap chunks are dirty (resync after an unclean stop, re-add).
    pub bitmap_only: bool,
    pub speed: Arc<SyncSpeed>,
    pub progress: Arc<SyncProgress>,
    /// Called on the main core with the array sector reached, at least every
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
    /// Interrupted by [`SyncHandle::stop`] (or dropping the handle) at this array sector.
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
struct SyncCtl {
    stop: Cell<bool>,
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
/// (never on this call's stack), after which the poller unregisters itself. Bad inputs (no
/// redundancy, misaligned start, unusable targets) end the run `Failed` the same way.
/// Allocates the run's buffers and requests now.
pub(crate) fn start(job: SyncJob, done: impl FnOnce(SyncOutcome) + 'static) -> SyncHandle {
    let ctl = Rc::new(SyncCtl::default());
    let poller_name = format!("md_sync_{}", job.name);
    let mut engine = Engine::new(job, ctl.clone(), now_us());
    let slot: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
    let slot2 = slot.clone();
    let mut done = Some(done);
    let handle = current().register_poller(poller_name, move || {
        let (busy, outcome) = engine.poll(now_us());
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

/// Smallest window (1 MiB): one write-gate bucket.
const WINDOW_MIN_SECTORS: u64 = 1 << BUCKET_SHIFT;
/// Largest window (4 MiB): big enough for sequential member I/O, small enough that a write
/// held by the barrier waits a few milliseconds at most.
const WINDOW_MAX_SECTORS: u64 = 4 << BUCKET_SHIFT;
/// Most buffer memory one run holds (check of many copies shrinks its windows to stay under).
const BUFFER_BUDGET_BYTES: u64 = 16 << 20;
/// Largest piece: Linux raid1/raid10's resync block (64 KiB). Also what the per-sector
/// mismatch mask (`u128`) can hold.
const PIECE_MAX_SECTORS: u64 = 128;
/// Member I/Os in flight (Linux's `sync_io_depth` default). At least [`MAX_COPIES`], so one
/// piece's stage can always be issued whole.
const QUEUE_DEPTH: usize = 32;
/// How long to wait before deciding again while foreground writes flow above the min speed.
pub(crate) const THROTTLE_STEP_US: u64 = 10_000;
/// Rate marks roll every second: the rate is averaged over the last 1–2 s.
const RATE_MARK_US: u64 = 1_000_000;
/// Clean bitmap chunks skipped per poll (bounds one poll's time on huge clean arrays).
const SKIP_CHUNKS_PER_POLL: usize = 4096;
const SECTOR: usize = 512;

const _: () = assert!(QUEUE_DEPTH >= MAX_COPIES && MAX_COPIES <= 32);
const _: () = assert!(PIECE_MAX_SECTORS <= 128);

/// The reactor clock in microseconds.
fn now_us() -> u64 {
    (ticks() as u128 * 1_000_000 / ticks_per_sec() as u128) as u64
}

/// Window size for a max speed: a quarter second's worth, whole 1 MiB buckets, within
/// `[WINDOW_MIN_SECTORS, window_max_sectors]`; `max_kbs == 0` (no limit) gives the largest.
pub(crate) fn window_sectors(max_kbs: u64, window_max_sectors: u64) -> u64 {
    let quarter = if max_kbs == 0 {
        u64::MAX
    } else {
        (max_kbs / 4).saturating_mul(2)
    };
    let w = quarter.clamp(WINDOW_MIN_SECTORS, window_max_sectors.max(WINDOW_MIN_SECTORS));
    (w >> BUCKET_SHIFT << BUCKET_SHIFT).max(WINDOW_MIN_SECTORS)
}

/// Speed control, pure over a microsecond clock so tests can drive it (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// GCRA virtual clock: earliest time the next window may start at the max speed.
    next_start_us: u64,
    /// Rate marks (time, sectors synced); `old` is 1–2 s behind once the run is that old.
    mark_old: (u64, u64),
    mark_new: (u64, u64),
    /// The gate's foreground write counter at the previous decision.
    last_activity: u64,
}

impl Pacer {
    pub(crate) fn new(now_us: u64, activity: u64) -> Pacer {
        Pacer {
            next_start_us: now_us,
            mark_old: (now_us, 0),
            mark_new: (now_us, 0),
            last_activity: activity,
        }
    }

    /// KiB/s synced over the last 1–2 s; `synced_sectors` counts from the run's start.
    pub(crate) fn rate_kbs(&mut self, now_us: u64, synced_sectors: u64) -> u64 {
        if now_us.saturating_sub(self.mark_new.0) >= RATE_MARK_US {
            self.mark_old = self.mark_new;
            self.mark_new = (now_us, synced_sectors);
        }
        let dt_us = now_us.saturating_sub(self.mark_old.0).max(1);
        let kib = synced_sectors.saturating_sub(self.mark_old.1) / 2;
        (kib as u128 * 1_000_000 / dt_us as u128).min(u64::MAX as u128) as u64
    }

    /// How long to wait before starting the next window (0: start now). `activity`: the gate's
    /// foreground write counter now.
    pub(crate) fn wait_us(
        &mut self,
        now_us: u64,
        synced_sectors: u64,
        activity: u64,
        min_kbs: u64,
        max_kbs: u64,
    ) -> u64 {
        if max_kbs != 0 && now_us < self.next_start_us {
            return self.next_start_us - now_us;
        }
        let writes_flowing = activity != self.last_activity;
        self.last_activity = activity;
        if writes_flowing && self.rate_kbs(now_us, synced_sectors) > min_kbs {
            return THROTTLE_STEP_US;
        }
        0
    }

    /// A window of `sectors` starts now: books its time at `max_kbs` (0: no limit).
    pub(crate) fn charge(&mut self, now_us: u64, sectors: u64, max_kbs: u64) {
        if max_kbs == 0 {
            return;
        }
        // sectors / 2 KiB at max_kbs KiB/s, in µs.
        let cost_us = (sectors as u128 * 500_000 / max_kbs as u128).min(u64::MAX as u128) as u64;
        self.next_start_us = self.next_start_us.max(now_us).saturating_add(cost_us);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    /// The read stage is to be issued.
    #[default]
    Read,
    Reading,
    /// The write stage is to be issued.
    Write,
    Writing,
    Done,
}

/// One piece of the current window: a range whose every copy is one member range.
#[derive(Debug, Clone, Copy, Default)]
struct Piece {
    sector: u64,
    len_sectors: u64,
    stage: Stage,
    /// I/Os of the current stage not yet completed.
    outstanding: u8,
    /// Resync/recover: copy index read from. Check/repair: the reference copy.
    src: u8,
    /// Resync/recover: copies that failed as a source. Check/repair: copies read fine.
    mask: u32,
    /// Repair: copies to rewrite.
    write_mask: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not validated yet (first poll).
    Start,
    /// Between windows: pacing, skipping, stopping.
    Between,
    /// Barrier raised, waiting for admitted writes to finish.
    Draining,
    /// Window I/O.
    Working,
    Finished,
}

enum Issue {
    Issued,
    /// Not enough free requests: try again after completions.
    Wait,
    Failed,
}

/// I/O tag: piece (bits 32..), member (8..32), copy index (1..8), write (0).
fn tag(piece: usize, member: usize, copy: usize, write: bool) -> u64 {
    ((piece as u64) << 32) | ((member as u64) << 8) | ((copy as u64) << 1) | write as u64
}

fn untag(t: u64) -> (usize, usize, usize, bool) {
    (
        (t >> 32) as usize,
        ((t >> 8) & 0xFF_FFFF) as usize,
        ((t >> 1) & 0x7F) as usize,
        t & 1 != 0,
    )
}

fn empty_places() -> [Place; MAX_COPIES] {
    [Place {
        member: MemberIdx(0),
        sector: 0,
    }; MAX_COPIES]
}

struct Engine {
    action: SyncAction,
    name: String,
    shared: Arc<Shared>,
    geo: Arc<Geometry>,
    members: Vec<Option<Rc<Channel>>>,
    start_sector: u64,
    targets: Vec<usize>,
    is_target: Vec<bool>,
    bitmap_only: bool,
    speed: Arc<SyncSpeed>,
    progress: Arc<SyncProgress>,
    on_checkpoint: Box<dyn FnMut(u64)>,
    checkpoint_interval_us: u64,
    ctl: Rc<SyncCtl>,
    /// Why the job cannot run (reported from the first poll).
    invalid: Option<String>,

    bufs: Vec<DmaBuf>,
    free: Vec<IoBox>,
    requeued: VecDeque<IoBox>,
    cq: CompletionQueue,
    inflight: usize,
    pieces: Vec<Piece>,
    ready: VecDeque<u32>,
    next_new: usize,
    pieces_done: usize,
    window_max_sectors: u64,
    /// The largest member block, in sectors: every member I/O is aligned to it.
    align_sectors: u64,

    phase: Phase,
    /// Next window's start (array sector).
    cursor: u64,
    win_start: u64,
    win_end: u64,
    /// Next bitmap chunk start that may be reported synced (the processed run is contiguous
    /// from here to the cursor).
    report_from: u64,
    failure: Option<String>,
    mismatch_sectors: u64,
    /// Sectors actually synced (windows done, not skipped): what the rate measures.
    synced_sectors: u64,
    pacer: Pacer,
    wait_until_us: u64,
    last_checkpoint_us: u64,
}

impl Engine {
    fn new(job: SyncJob, ctl: Rc<SyncCtl>, now_us: u64) -> Engine {
        let invalid = Self::validate(&job);
        let copies = match &job.geo.mapping {
            Mapping::Raid1 { members } => (*members as usize).min(MAX_COPIES),
            Mapping::Raid10(r) => (r.near * r.far) as usize,
            _ => 1,
        };
        let nbufs = match job.action {
            SyncAction::Resync | SyncAction::Recover => 1,
            SyncAction::Check | SyncAction::Repair => copies.max(1),
        };
        let window_max_sectors = (BUFFER_BUDGET_BYTES / (nbufs as u64 * SECTOR as u64))
            .clamp(WINDOW_MIN_SECTORS, WINDOW_MAX_SECTORS)
            >> BUCKET_SHIFT
            << BUCKET_SHIFT;
        let min_piece = match &job.geo.mapping {
            Mapping::Raid10(r) => r.chunk_sectors.clamp(1, PIECE_MAX_SECTORS),
            _ => PIECE_MAX_SECTORS,
        };
        let max_pieces = if invalid.is_some() {
            0
        } else {
            (window_max_sectors / min_piece + 2) as usize
        };
        let bufs = if invalid.is_some() {
            Vec::new()
        } else {
            (0..nbufs)
                .map(|_| DmaBuf::new((window_max_sectors as usize) * SECTOR))
                .collect()
        };
        let mut is_target = vec![false; job.members.len()];
        for &t in &job.targets {
            if t < is_target.len() {
                is_target[t] = true;
            }
        }
        let p = &job.progress;
        p.action.store(job.action as u8 + 1, Ordering::Relaxed);
        p.total_sectors.store(job.geo.size_sectors, Ordering::Relaxed);
        p.done_sectors
            .store(job.start_sector.min(job.geo.size_sectors), Ordering::Relaxed);
        p.rate_kbs.store(0, Ordering::Relaxed);
        if job.action != SyncAction::Recover {
            p.mismatch_sectors.store(0, Ordering::Relaxed);
        }
        let activity = job.shared.gate.activity();
        let align_sectors = 1u64 << job.geo.member_shifts.iter().copied().max().unwrap_or(0).min(20);
        Engine {
            action: job.action,
            name: job.name,
            shared: job.shared,
            geo: job.geo,
            members: job.members,
            start_sector: job.start_sector,
            targets: job.targets,
            is_target,
            bitmap_only: job.bitmap_only,
            speed: job.speed,
            progress: job.progress,
            on_checkpoint: job.on_checkpoint,
            checkpoint_interval_us: job.checkpoint_interval_ms.saturating_mul(1000),
            ctl,
            invalid,
            bufs,
            free: (0..QUEUE_DEPTH).map(|_| IoRequest::new_boxed()).collect(),
            requeued: VecDeque::with_capacity(QUEUE_DEPTH),
            cq: CompletionQueue::with_capacity(QUEUE_DEPTH),
            inflight: 0,
            pieces: Vec::with_capacity(max_pieces),
            ready: VecDeque::with_capacity(max_pieces),
            next_new: 0,
            pieces_done: 0,
            window_max_sectors,
            align_sectors,
            phase: Phase::Start,
            cursor: job.start_sector,
            win_start: job.start_sector,
            win_end: job.start_sector,
            report_from: job.start_sector,
            failure: None,
            mismatch_sectors: 0,
            synced_sectors: 0,
            pacer: Pacer::new(now_us, activity),
            wait_until_us: 0,
            last_checkpoint_us: now_us,
        }
    }

    fn validate(job: &SyncJob) -> Option<String> {
        let geo = &job.geo;
        if !geo.redundant() {
            return Some("sync needs a level with copies (raid1, raid10)".into());
        }
        let roles = job.shared.slots.len();
        if job.members.len() != roles || geo.member_shifts.len() != roles {
            return Some(format!(
                "{} member channels and {} member block sizes for {roles} roles",
                job.members.len(),
                geo.member_shifts.len()
            ));
        }
        let mapped = match &geo.mapping {
            Mapping::Raid1 { members } => *members as usize,
            Mapping::Raid10(r) => r.raid_disks as usize,
            _ => 0,
        };
        if mapped != roles {
            return Some(format!(
                "the layout maps {mapped} members but the array has {roles} roles"
            ));
        }
        if job.start_sector > geo.size_sectors {
            return Some(format!(
                "start sector {} is past the array end {}",
                job.start_sector, geo.size_sectors
            ));
        }
        let shift = geo.member_shifts.iter().copied().max().unwrap_or(0);
        let mask = (1u64 << shift) - 1;
        if (job.start_sector | geo.size_sectors | geo.data_offset_sectors) & mask != 0 {
            return Some(format!(
                "start sector {}, size {} or data offset {} is not a multiple of the member block ({} sectors)",
                job.start_sector,
                geo.size_sectors,
                geo.data_offset_sectors,
                mask + 1
            ));
        }
        if let Mapping::Raid10(r) = &geo.mapping {
            if r.chunk_sectors & mask != 0 {
                return Some(format!(
                    "chunk of {} sectors is smaller than a member block",
                    r.chunk_sectors
                ));
            }
        }
        if job.action == SyncAction::Recover {
            if job.targets.is_empty() {
                return Some("recovery without target roles".into());
            }
            for &t in &job.targets {
                if t >= roles {
                    return Some(format!("target role {t} does not exist ({roles} roles)"));
                }
                if job.members[t].is_none() || !job.shared.slots[t].writable() {
                    return Some(format!(
                        "target role {t} is {} without a usable member",
                        job.shared.slots[t].state().name()
                    ));
                }
            }
        }
        None
    }

    fn intent(&self) -> Option<&Intent> {
        match self.action {
            SyncAction::Resync | SyncAction::Recover => self.shared.intent.as_ref(),
            SyncAction::Check | SyncAction::Repair => None,
        }
    }

    /// One poller call: returns whether it did work, and the outcome once the run ended.
    fn poll(&mut self, now_us: u64) -> (bool, Option<SyncOutcome>) {
        let mut busy = self.reap();
        busy |= self.resubmit();
        match self.phase {
            Phase::Start => {
                if let Some(reason) = self.invalid.take() {
                    let at_sector = self.start_sector;
                    return (true, Some(self.finish(SyncOutcome::Failed { at_sector, reason })));
                }
                tracing::info!(array = %self.name, action = self.action.name(), from = self.start_sector,
                    "md sync started");
                self.phase = Phase::Between;
                (true, None)
            }
            Phase::Between => self.between(now_us, busy),
            Phase::Draining => {
                if self.ctl.stop.get() {
                    self.shared.gate.lower_barrier();
                    let at_sector = self.win_start;
                    return (true, Some(self.finish(SyncOutcome::Stopped { at_sector })));
                }
                if !self.shared.gate.barrier_drained() {
                    return (busy, None);
                }
                self.build_pieces();
                self.phase = Phase::Working;
                self.issue_all();
                (true, self.check_window_end(now_us))
            }
            Phase::Working => {
                busy |= self.issue_all();
                let outcome = self.check_window_end(now_us);
                (busy || outcome.is_some(), outcome)
            }
            Phase::Finished => (busy, None),
        }
    }

    fn between(&mut self, now_us: u64, busy: bool) -> (bool, Option<SyncOutcome>) {
        let size = self.geo.size_sectors;
        if self.cursor >= size {
            let mismatch_sectors = self.mismatch_sectors;
            return (true, Some(self.finish(SyncOutcome::Done { mismatch_sectors })));
        }
        if self.ctl.stop.get() {
            let at_sector = self.cursor;
            return (true, Some(self.finish(SyncOutcome::Stopped { at_sector })));
        }
        if now_us < self.wait_until_us {
            return (busy, None);
        }
        // Bitmap-guided runs skip clean chunks without I/O.
        if self.bitmap_only {
            if let Some(intent) = self.intent() {
                let cs = intent.chunk_sectors().max(1);
                let mut at = self.cursor;
                let mut n = 0;
                while at < size && n < SKIP_CHUNKS_PER_POLL && !intent.is_dirty(at) {
                    at = ((at / cs + 1) * cs).min(size);
                    n += 1;
                }
                // Member I/O stays block aligned even with bitmap chunks smaller than a block.
                let at = at / self.align_sectors * self.align_sectors;
                if at > self.cursor {
                    self.report_from = at;
                    self.advance(at, now_us);
                    return (true, None);
                }
            }
        }
        let min_kbs = self.speed.min_kbs.load(Ordering::Relaxed);
        let max_kbs = self.speed.max_kbs.load(Ordering::Relaxed);
        let activity = self.shared.gate.activity();
        let wait = self
            .pacer
            .wait_us(now_us, self.synced_sectors, activity, min_kbs, max_kbs);
        if wait > 0 {
            self.wait_until_us = now_us + wait;
            // The shown rate decays while the run waits.
            let rate = self.pacer.rate_kbs(now_us, self.synced_sectors);
            self.progress.rate_kbs.store(rate, Ordering::Relaxed);
            return (busy, None);
        }
        // The window: whole buckets from the second window on, never past the array end.
        let want = window_sectors(max_kbs, self.window_max_sectors);
        let mut end = ((self.cursor + want) >> BUCKET_SHIFT << BUCKET_SHIFT).max(self.cursor + 1);
        end = end.min(size);
        if self.bitmap_only {
            if let Some(intent) = self.intent() {
                // Stop at the first clean chunk: the next window skips it.
                let cs = intent.chunk_sectors().max(1);
                let mut c = (self.cursor / cs + 1) * cs;
                while c < end {
                    if !intent.is_dirty(c) {
                        end = c.next_multiple_of(self.align_sectors).min(end);
                        break;
                    }
                    c += cs;
                }
            }
        }
        self.win_start = self.cursor;
        self.win_end = self.shared.gate.raise_barrier(self.cursor, end);
        self.pacer.charge(now_us, self.win_end - self.win_start, max_kbs);
        self.phase = Phase::Draining;
        (true, None)
    }

    fn build_pieces(&mut self) {
        self.pieces.clear();
        self.ready.clear();
        self.next_new = 0;
        self.pieces_done = 0;
        let mut places = empty_places();
        let mut s = self.win_start;
        while s < self.win_end {
            if self.pieces.len() == self.pieces.capacity() {
                // Cannot happen with the capacity from `new`; end the window early rather
                // than grow.
                self.win_end = s;
                break;
            }
            let (_, left) = self.geo.copies(s, &mut places);
            let len = left.min(self.win_end - s).min(PIECE_MAX_SECTORS);
            self.pieces.push(Piece {
                sector: s,
                len_sectors: len,
                ..Piece::default()
            });
            s += len;
        }
    }

    /// Issues what can be issued: pieces that advanced first, then new ones.
    fn issue_all(&mut self) -> bool {
        let mut busy = false;
        while self.failure.is_none() {
            let Some(&i) = self.ready.front() else { break };
            match self.issue(i as usize) {
                Issue::Wait => return busy,
                Issue::Issued => {
                    self.ready.pop_front();
                    busy = true;
                }
                Issue::Failed => return true,
            }
        }
        while self.failure.is_none() && self.next_new < self.pieces.len() {
            match self.issue(self.next_new) {
                Issue::Wait => break,
                Issue::Issued => {
                    self.next_new += 1;
                    busy = true;
                }
                Issue::Failed => return true,
            }
        }
        busy
    }

    fn has_channel(&self, m: usize) -> bool {
        self.members.get(m).is_some_and(|c| c.is_some())
    }

    /// Issues piece `i`'s pending stage (or finishes it when the stage has nothing to do).
    fn issue(&mut self, i: usize) -> Issue {
        let p = self.pieces[i];
        let mut places = empty_places();
        let (k, _) = self.geo.copies(p.sector, &mut places);
        let len = p.len_sectors;
        let readable = |c: usize| {
            let m = places[c].member.0 as usize;
            self.has_channel(m) && self.shared.slots[m].readable(places[c].sector, len)
        };
        let writable = |c: usize| {
            let m = places[c].member.0 as usize;
            self.has_channel(m) && self.shared.slots[m].writable()
        };
        let reading = p.stage == Stage::Read;
        let mut src = p.src as usize;
        let mut mask = 0u32;
        match (p.stage, self.action) {
            (Stage::Read, SyncAction::Resync | SyncAction::Recover) => {
                let found = (0..k).find(|&c| {
                    p.mask & (1 << c) == 0
                        && readable(c)
                        && !(self.action == SyncAction::Recover && self.is_target[places[c].member.0 as usize])
                });
                match found {
                    Some(c) => {
                        src = c;
                        mask = 1 << c;
                    }
                    None => {
                        return self.fail(format!(
                            "no readable copy of array sectors {}..{}",
                            p.sector,
                            p.sector + len
                        ))
                    }
                }
            }
            (Stage::Read, SyncAction::Check | SyncAction::Repair) => {
                for c in 0..k {
                    if readable(c) {
                        mask |= 1 << c;
                    }
                }
                if mask == 0 {
                    return self.fail(format!(
                        "no readable copy of array sectors {}..{}",
                        p.sector,
                        p.sector + len
                    ));
                }
            }
            (Stage::Write, SyncAction::Resync) => {
                for c in 0..k {
                    if c != src && writable(c) {
                        mask |= 1 << c;
                    }
                }
            }
            (Stage::Write, SyncAction::Recover) => {
                for (c, place) in places.iter().enumerate().take(k) {
                    let m = place.member.0 as usize;
                    if self.is_target[m] {
                        if !writable(c) {
                            return self.fail(format!("recovery target role {m} failed"));
                        }
                        mask |= 1 << c;
                    }
                }
            }
            (Stage::Write, SyncAction::Check) => {}
            (Stage::Write, SyncAction::Repair) => {
                for c in 0..k {
                    if p.write_mask & (1 << c) != 0 && writable(c) {
                        mask |= 1 << c;
                    }
                }
            }
            _ => return Issue::Issued,
        }
        let n = mask.count_ones() as usize;
        if n > self.free.len() {
            return Issue::Wait;
        }
        {
            let piece = &mut self.pieces[i];
            piece.src = src as u8;
            piece.outstanding = n as u8;
            piece.stage = if reading { Stage::Reading } else { Stage::Writing };
        }
        if n == 0 {
            // Nothing to write (every other copy is gone): the piece is done.
            self.piece_done(i);
            return Issue::Issued;
        }
        let offset_bytes = ((p.sector - self.win_start) as usize * SECTOR) as u32;
        let len_bytes = (len as usize * SECTOR) as u32;
        for (c, place) in places.iter().enumerate().take(k) {
            if mask & (1 << c) == 0 {
                continue;
            }
            let buf = match self.action {
                SyncAction::Resync | SyncAction::Recover => 0,
                SyncAction::Check | SyncAction::Repair if reading => c,
                SyncAction::Check | SyncAction::Repair => src,
            };
            let m = place.member.0 as usize;
            let shift = self.geo.member_shifts[m];
            let abs_sector = self.geo.data_offset_sectors + place.sector;
            let mut io = self.free.pop().expect("counted above");
            io.iovs.clear();
            io.iovs.push(IoVec {
                buf: self.bufs[buf].clone(),
                offset_bytes,
                len_bytes,
            });
            let op = if reading { IoOp::Read } else { IoOp::Write };
            io.prepare(op, abs_sector >> shift, len >> shift);
            io.tag = tag(i, m, c, !reading);
            self.submit(m, io);
        }
        Issue::Issued
    }

    fn submit(&mut self, member: usize, io: IoBox) {
        let ch = self.members[member]
            .as_ref()
            .expect("planned on a member with a channel");
        match ch.submit(io, &self.cq) {
            Submit::Accepted => self.inflight += 1,
            Submit::Requeue(io) => self.requeued.push_back(io),
        }
    }

    /// Retries requests the members handed back.
    fn resubmit(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..self.requeued.len() {
            let Some(io) = self.requeued.pop_front() else { break };
            if self.failure.is_some() {
                self.free.push(io);
                continue;
            }
            let (_, member, _, _) = untag(io.tag);
            let ch = self.members[member].as_ref().expect("submitted before");
            match ch.submit(io, &self.cq) {
                Submit::Accepted => {
                    self.inflight += 1;
                    busy = true;
                }
                Submit::Requeue(io) => {
                    self.requeued.push_front(io);
                    break;
                }
            }
        }
        busy
    }

    /// Handles completions.
    fn reap(&mut self) -> bool {
        let mut n = 0;
        while let Some(io) = self.cq.pop() {
            n += 1;
            self.inflight -= 1;
            let ok = io.status().is_success();
            let t = io.tag;
            self.free.push(io);
            self.completed(t, ok);
        }
        n > 0
    }

    fn completed(&mut self, t: u64, ok: bool) {
        let (i, member, copy, write) = untag(t);
        if !ok {
            self.shared.fail_member(member);
            tracing::warn!(array = %self.name, role = member, write, "md sync: member I/O failed, member marked faulty");
        }
        let p = &mut self.pieces[i];
        p.outstanding -= 1;
        if write {
            if !ok && self.action == SyncAction::Recover && self.is_target[member] {
                self.fail(format!("write to recovery target role {member} failed"));
            }
            if self.pieces[i].outstanding == 0 {
                self.piece_done(i);
            }
            return;
        }
        match self.action {
            SyncAction::Resync | SyncAction::Recover => {
                if ok {
                    p.stage = Stage::Write;
                } else {
                    p.mask |= 1 << copy;
                    p.stage = Stage::Read;
                }
                self.ready.push_back(i as u32);
            }
            SyncAction::Check | SyncAction::Repair => {
                if ok {
                    p.mask |= 1 << copy;
                }
                if p.outstanding == 0 {
                    self.compare(i);
                }
            }
        }
    }

    /// Check/repair: every copy of piece `i` was read; counts and plans rewrites.
    fn compare(&mut self, i: usize) {
        let p = self.pieces[i];
        if p.mask == 0 {
            self.fail(format!(
                "no readable copy of array sectors {}..{}",
                p.sector,
                p.sector + p.len_sectors
            ));
            self.piece_done(i);
            return;
        }
        let r = p.mask.trailing_zeros() as usize;
        let off = (p.sector - self.win_start) as usize * SECTOR;
        let len = p.len_sectors as usize * SECTOR;
        let mut diff_sectors = 0u128;
        let mut write_mask = 0u32;
        {
            let rb = self.bufs[r].bytes();
            let a = &rb[off..off + len];
            for c in (r + 1)..MAX_COPIES {
                if p.mask & (1 << c) == 0 {
                    continue;
                }
                let cb = self.bufs[c].bytes();
                let b = &cb[off..off + len];
                for (s, (x, y)) in a.chunks_exact(SECTOR).zip(b.chunks_exact(SECTOR)).enumerate() {
                    if x != y {
                        diff_sectors |= 1 << s;
                        write_mask |= 1 << c;
                    }
                }
            }
        }
        let n = diff_sectors.count_ones() as u64;
        if n > 0 {
            self.mismatch_sectors += n;
            self.progress.mismatch_sectors.fetch_add(n, Ordering::Relaxed);
        }
        let piece = &mut self.pieces[i];
        piece.src = r as u8;
        if self.action == SyncAction::Repair && write_mask != 0 {
            piece.write_mask = write_mask;
            piece.stage = Stage::Write;
            self.ready.push_back(i as u32);
        } else {
            self.piece_done(i);
        }
    }

    fn piece_done(&mut self, i: usize) {
        let p = &mut self.pieces[i];
        if p.stage != Stage::Done {
            p.stage = Stage::Done;
            self.pieces_done += 1;
        }
    }

    /// Records the run's failure (first one wins); it ends once nothing is in flight.
    fn fail(&mut self, reason: String) -> Issue {
        if self.failure.is_none() {
            tracing::warn!(array = %self.name, action = self.action.name(), %reason, "md sync failed");
            self.failure = Some(reason);
        }
        Issue::Failed
    }

    /// Ends the window when its pieces are done (or the run when it failed and drained).
    fn check_window_end(&mut self, now_us: u64) -> Option<SyncOutcome> {
        if self.failure.is_some() {
            if self.inflight > 0 {
                return None;
            }
            while let Some(io) = self.requeued.pop_front() {
                self.free.push(io);
            }
            self.shared.gate.lower_barrier();
            let reason = self.failure.take().unwrap_or_default();
            let at_sector = self.win_start;
            return Some(self.finish(SyncOutcome::Failed { at_sector, reason }));
        }
        if self.pieces_done < self.pieces.len() || self.inflight > 0 || !self.requeued.is_empty() {
            return None;
        }
        self.shared.gate.lower_barrier();
        let (ws, we) = (self.win_start, self.win_end);
        self.synced_sectors += we - ws;
        let size = self.geo.size_sectors;
        if let Some(intent) = self.intent() {
            let cs = intent.chunk_sectors().max(1);
            let mut c = self.report_from.div_ceil(cs) * cs;
            while c < size && (c + cs).min(size) <= we {
                intent.chunk_synced(c);
                c += cs;
            }
            self.report_from = c;
        }
        self.advance(we, now_us);
        self.phase = Phase::Between;
        None
    }

    /// The run reached `reached` (a window end or a skip): publishes it.
    fn advance(&mut self, reached: u64, now_us: u64) {
        self.cursor = reached;
        self.progress.done_sectors.store(reached, Ordering::Relaxed);
        let rate = self.pacer.rate_kbs(now_us, self.synced_sectors);
        self.progress.rate_kbs.store(rate, Ordering::Relaxed);
        match self.action {
            SyncAction::Resync => self.shared.set_resync_cp(reached),
            SyncAction::Recover => {
                // raid1: member sector == array sector. raid10 members stay unreadable until
                // the end (their rebuilt part is not a prefix of member sectors).
                if matches!(self.geo.mapping, Mapping::Raid1 { .. }) {
                    for &t in &self.targets {
                        let slot = &self.shared.slots[t];
                        if slot.recovered_sectors() < reached {
                            slot.set_recovered_sectors(reached);
                        }
                    }
                }
            }
            SyncAction::Check | SyncAction::Repair => {}
        }
        if now_us.saturating_sub(self.last_checkpoint_us) >= self.checkpoint_interval_us {
            self.last_checkpoint_us = now_us;
            (self.on_checkpoint)(reached);
        }
    }

    fn finish(&mut self, outcome: SyncOutcome) -> SyncOutcome {
        let final_sector = match &outcome {
            SyncOutcome::Done { .. } => {
                let size = self.geo.size_sectors;
                self.progress.done_sectors.store(size, Ordering::Relaxed);
                match self.action {
                    SyncAction::Resync => self.shared.set_resync_cp(u64::MAX),
                    SyncAction::Recover => {
                        for &t in &self.targets {
                            self.shared.slots[t].set_recovered_sectors(u64::MAX);
                        }
                    }
                    SyncAction::Check | SyncAction::Repair => {}
                }
                size
            }
            SyncOutcome::Stopped { at_sector } | SyncOutcome::Failed { at_sector, .. } => *at_sector,
        };
        (self.on_checkpoint)(final_sector);
        self.progress.action.store(0, Ordering::Relaxed);
        self.progress.rate_kbs.store(0, Ordering::Relaxed);
        self.phase = Phase::Finished;
        tracing::info!(array = %self.name, action = self.action.name(), ?outcome, "md sync ended");
        outcome
    }
}

#[cfg(test)]
mod tests {
    //! Runs the engine on the deterministic driver over malloc members (and `error` bdevs for
    //! failures), with hand-built `Shared` and `Geometry`.

    use super::*;
    use crate::bitmap::{self, BitmapHeader};
    use crate::layout::Raid10;
    use crate::shared::{Admit, SlotState};
    use keel_bdev::modules::{error, malloc};
    use keel_bdev::{BdevRegistry, Descriptor, IoStatus};
    use keel_reactor::{CoreId, TestDriver};

    const MAIN: CoreId = CoreId(0);
    /// Data offset of every member in these tests (sectors).
    const DATA_OFF: u64 = 64;
    /// raid1 test array: 10 MiB + 64 KiB, so three windows with a short last one.
    const R1_SIZE: u64 = 20480 + 128;
    /// raid10 test members: 65 chunks of 64 KiB.
    const R10_CHUNK: u64 = 128;
    const R10_COMPONENT: u64 = 65 * R10_CHUNK;

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    struct Rig {
        d: TestDriver,
        reg: Arc<BdevRegistry>,
        descs: Vec<Descriptor>,
        chans: Vec<Rc<Channel>>,
        block_bytes: u64,
        member_bytes: usize,
    }

    impl Rig {
        /// `n` malloc members of `member_sectors` (data offset included) filled with
        /// `pattern(seed0 + i)`; the roles in `with_error` go through an `EE_` bdev.
        fn new(n: usize, member_sectors: u64, block_bytes: u32, with_error: &[usize]) -> Rig {
            let d = TestDriver::new(1);
            let reg = BdevRegistry::new(d.cores());
            let blocks = member_sectors * 512 / block_bytes as u64;
            let mut names = Vec::new();
            for i in 0..n {
                let name = format!("M{i}");
                malloc::create(&reg, &malloc::MallocOpts::new(&name, blocks, block_bytes)).unwrap();
                if with_error.contains(&i) {
                    error::create(
                        &reg,
                        &error::ErrorOpts {
                            base_name: name.clone(),
                            uuid: None,
                        },
                    )
                    .unwrap();
                    names.push(format!("EE_{name}"));
                } else {
                    names.push(name);
                }
            }
            let (descs, chans): (Vec<_>, Vec<_>) = d.enter(MAIN, || {
                names
                    .iter()
                    .map(|n| {
                        let desc = reg.open(n, true, |_| {}).unwrap();
                        let ch = Rc::new(desc.channel());
                        (desc, ch)
                    })
                    .unzip()
            });
            Rig {
                d,
                reg,
                descs,
                chans,
                block_bytes: block_bytes as u64,
                member_bytes: (member_sectors * 512) as usize,
            }
        }

        fn io(&self, i: usize, op: IoOp, offset_bytes: u64, buf: &DmaBuf) -> IoStatus {
            let cq = CompletionQueue::with_capacity(1);
            let mut io = IoRequest::new_boxed();
            io.iovs.push(IoVec::whole(buf.clone()));
            io.prepare(op, offset_bytes / self.block_bytes, buf.len() as u64 / self.block_bytes);
            let ch = self.chans[i].clone();
            self.d
                .enter(MAIN, || assert!(matches!(ch.submit(io, &cq), Submit::Accepted)));
            for _ in 0..10_000 {
                if let Some(io) = cq.pop() {
                    return io.status();
                }
                self.d.turn();
            }
            panic!("member I/O did not complete");
        }

        fn write(&self, i: usize, offset_bytes: u64, data: &[u8]) {
            let buf = DmaBuf::new(data.len());
            buf.bytes_mut().copy_from_slice(data);
            assert_eq!(self.io(i, IoOp::Write, offset_bytes, &buf), IoStatus::Success);
        }

        fn read(&self, i: usize) -> Vec<u8> {
            let buf = DmaBuf::new(self.member_bytes);
            assert_eq!(self.io(i, IoOp::Read, 0, &buf), IoStatus::Success);
            let v = buf.bytes().to_vec();
            v
        }

        /// Fills member `i` with `pattern(seed)`; returns what was written.
        fn fill(&self, i: usize, seed: u64) -> Vec<u8> {
            let data = pattern(seed, self.member_bytes);
            self.write(i, 0, &data);
            data
        }

        fn members(&self) -> Vec<Option<Rc<Channel>>> {
            self.chans.iter().map(|c| Some(c.clone())).collect()
        }

        fn job(
            &self,
            action: SyncAction,
            shared: &Arc<Shared>,
            geo: &Arc<Geometry>,
        ) -> (SyncJob, Rc<RefCell<Vec<u64>>>) {
            let cps: Rc<RefCell<Vec<u64>>> = Rc::default();
            let c2 = cps.clone();
            let job = SyncJob {
                action,
                name: "md_test".into(),
                shared: shared.clone(),
                geo: geo.clone(),
                members: self.members(),
                start_sector: 0,
                targets: Vec::new(),
                bitmap_only: false,
                speed: Arc::new(SyncSpeed {
                    min_kbs: AtomicU64::new(u64::MAX),
                    max_kbs: AtomicU64::new(0),
                }),
                progress: Arc::new(SyncProgress::default()),
                on_checkpoint: Box::new(move |s| c2.borrow_mut().push(s)),
                checkpoint_interval_ms: 0,
            };
            (job, cps)
        }

        /// Starts `job` and returns the handle and where the outcome will land.
        fn start(&self, job: SyncJob) -> (SyncHandle, Rc<RefCell<Option<SyncOutcome>>>) {
            let out: Rc<RefCell<Option<SyncOutcome>>> = Rc::default();
            let o2 = out.clone();
            let h = self.d.enter(MAIN, || start(job, move |o| *o2.borrow_mut() = Some(o)));
            assert!(out.borrow().is_none(), "done must not run on start's stack");
            (h, out)
        }

        fn wait(&self, out: &Rc<RefCell<Option<SyncOutcome>>>) -> SyncOutcome {
            assert!(self.d.run_until(200_000, || out.borrow().is_some()), "sync did not end");
            // The poller unregistered itself.
            self.d.turn();
            let names: Vec<String> = self
                .d
                .enter(MAIN, || current().poller_stats().into_iter().map(|p| p.name).collect());
            assert!(!names.iter().any(|n| n.starts_with("md_sync_")), "{names:?}");
            let o = out.borrow().clone().unwrap();
            o
        }

        fn run(&self, job: SyncJob) -> SyncOutcome {
            let (_h, out) = self.start(job);
            self.wait(&out)
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let chans = std::mem::take(&mut self.chans);
            let descs = std::mem::take(&mut self.descs);
            self.d.enter(MAIN, move || {
                drop(chans);
                drop(descs);
            });
        }
    }

    fn raid1_geo(n: u16, size: u64) -> Arc<Geometry> {
        Arc::new(Geometry {
            mapping: Mapping::Raid1 { members: n },
            size_sectors: size,
            data_offset_sectors: DATA_OFF,
            block_shift: 0,
            member_shifts: vec![0; n as usize],
        })
    }

    /// raid10 near-2 over 4 members with 4 KiB member blocks.
    fn raid10_geo() -> Arc<Geometry> {
        let r = Raid10::new(Raid10::layout_word(2, 1, false), 4, R10_CHUNK, R10_COMPONENT).unwrap();
        let size = r.size_sectors();
        Arc::new(Geometry {
            mapping: Mapping::Raid10(r),
            size_sectors: size,
            data_offset_sectors: DATA_OFF,
            block_shift: 3,
            member_shifts: vec![3; 4],
        })
    }

    fn shared(states: &[SlotState]) -> Arc<Shared> {
        Arc::new(Shared::new(states, 0, true, None))
    }

    /// Byte range of member data sectors `[a, b)` (relative to the data offset).
    fn data(v: &[u8], a: u64, b: u64) -> &[u8] {
        &v[((DATA_OFF + a) * 512) as usize..((DATA_OFF + b) * 512) as usize]
    }

    fn head(v: &[u8]) -> &[u8] {
        &v[..(DATA_OFF * 512) as usize]
    }

    const IN2: [SlotState; 2] = [SlotState::InSync; 2];

    #[test]
    fn resync_raid1_makes_copies_equal() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let a = rig.fill(0, 1);
        let b = rig.fill(1, 2);
        let sh = shared(&IN2);
        let geo = raid1_geo(2, R1_SIZE);
        let (job, cps) = rig.job(SyncAction::Resync, &sh, &geo);
        let progress = job.progress.clone();
        let (_h, out) = rig.start(job);
        assert_eq!(progress.action.load(Ordering::Relaxed), SyncAction::Resync as u8 + 1);
        assert_eq!(progress.total_sectors.load(Ordering::Relaxed), R1_SIZE);
        assert_eq!(rig.wait(&out), SyncOutcome::Done { mismatch_sectors: 0 });
        let m0 = rig.read(0);
        let m1 = rig.read(1);
        assert_eq!(m0, a, "the source is only read");
        assert!(data(&m1, 0, R1_SIZE) == data(&a, 0, R1_SIZE), "copy 1 equals copy 0");
        assert_eq!(head(&m1), head(&b), "nothing before data_offset is touched");
        assert_eq!(
            m1[((DATA_OFF + R1_SIZE) * 512) as usize..],
            b[((DATA_OFF + R1_SIZE) * 512) as usize..]
        );
        assert_eq!(sh.resync_cp(), u64::MAX);
        assert_eq!(progress.action.load(Ordering::Relaxed), 0);
        assert_eq!(progress.done_sectors.load(Ordering::Relaxed), R1_SIZE);
        let cps = cps.borrow();
        // Interval 0: one per window, then the final one.
        assert_eq!(*cps, vec![8192, 16384, R1_SIZE, R1_SIZE]);
    }

    #[test]
    fn resync_raid10_near2_makes_copy_pairs_equal() {
        let geo = raid10_geo();
        let size = geo.size_sectors;
        assert_eq!(size, 65 * 2 * R10_CHUNK);
        let rig = Rig::new(4, DATA_OFF + R10_COMPONENT, 4096, &[]);
        let v: Vec<Vec<u8>> = (0..4).map(|i| rig.fill(i, 10 + i as u64)).collect();
        let sh = shared(&[SlotState::InSync; 4]);
        let (job, _) = rig.job(SyncAction::Resync, &sh, &geo);
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
        let m: Vec<Vec<u8>> = (0..4).map(|i| rig.read(i)).collect();
        // near-2 on 4 disks: chunk pairs live on {0,1} and {2,3}, copy 0 first.
        assert_eq!(m[0], v[0]);
        assert_eq!(m[2], v[2]);
        assert!(data(&m[1], 0, R10_COMPONENT) == data(&v[0], 0, R10_COMPONENT));
        assert!(data(&m[3], 0, R10_COMPONENT) == data(&v[2], 0, R10_COMPONENT));
        assert_eq!(head(&m[1]), head(&v[1]));
    }

    #[test]
    fn recover_raid1_writes_the_target_role_only() {
        let rig = Rig::new(3, DATA_OFF + R1_SIZE, 512, &[]);
        let a = rig.fill(0, 1);
        let b = rig.fill(1, 2);
        let c = rig.fill(2, 3);
        let sh = shared(&[SlotState::InSync, SlotState::InSync, SlotState::Rebuilding]);
        let geo = raid1_geo(3, R1_SIZE);
        let (mut job, cps) = rig.job(SyncAction::Recover, &sh, &geo);
        job.targets = vec![2];
        job.checkpoint_interval_ms = 3_600_000;
        let progress = job.progress.clone();
        progress.mismatch_sectors.store(7, Ordering::Relaxed);
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
        let m = [rig.read(0), rig.read(1), rig.read(2)];
        assert_eq!(m[0], a);
        assert_eq!(m[1], b, "an in-sync copy that is not a target is not written");
        assert!(data(&m[2], 0, R1_SIZE) == data(&a, 0, R1_SIZE));
        assert_eq!(head(&m[2]), head(&c));
        assert_eq!(sh.slots[2].recovered_sectors(), u64::MAX);
        assert_eq!(sh.resync_cp(), 0, "recovery does not touch the resync checkpoint");
        assert_eq!(
            progress.mismatch_sectors.load(Ordering::Relaxed),
            7,
            "recovery keeps the last check's count"
        );
        // A long interval: only the final checkpoint.
        assert_eq!(*cps.borrow(), vec![R1_SIZE]);
    }

    #[test]
    fn recover_raid1_publishes_recovered_sectors_per_window() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        rig.fill(0, 1);
        rig.fill(1, 2);
        let sh = shared(&[SlotState::InSync, SlotState::Rebuilding]);
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, _) = rig.job(SyncAction::Recover, &sh, &geo);
        job.targets = vec![1];
        let (_h, out) = rig.start(job);
        let mut seen = Vec::new();
        assert!(rig.d.run_until(200_000, || {
            let r = sh.slots[1].recovered_sectors();
            if seen.last() != Some(&r) {
                seen.push(r);
            }
            out.borrow().is_some()
        }));
        assert_eq!(seen, vec![0, 8192, 16384, R1_SIZE, u64::MAX]);
    }

    #[test]
    fn recover_raid10_writes_the_target_role_only() {
        let geo = raid10_geo();
        let rig = Rig::new(4, DATA_OFF + R10_COMPONENT, 4096, &[]);
        let v: Vec<Vec<u8>> = (0..4).map(|i| rig.fill(i, 20 + i as u64)).collect();
        let sh = shared(&[
            SlotState::InSync,
            SlotState::Rebuilding,
            SlotState::InSync,
            SlotState::InSync,
        ]);
        let (mut job, _) = rig.job(SyncAction::Recover, &sh, &geo);
        job.targets = vec![1];
        let (_h, out) = rig.start(job);
        // raid10: the target stays unreadable until the end.
        assert!(rig.d.run_until(200_000, || {
            assert!(out.borrow().is_some() || sh.slots[1].recovered_sectors() == 0);
            out.borrow().is_some()
        }));
        assert_eq!(out.borrow().clone().unwrap(), SyncOutcome::Done { mismatch_sectors: 0 });
        let m: Vec<Vec<u8>> = (0..4).map(|i| rig.read(i)).collect();
        assert_eq!(m[0], v[0]);
        assert_eq!(m[2], v[2]);
        assert_eq!(m[3], v[3], "the other pair is not written");
        assert!(data(&m[1], 0, R10_COMPONENT) == data(&v[0], 0, R10_COMPONENT));
        assert_eq!(sh.slots[1].recovered_sectors(), u64::MAX);
    }

    #[test]
    fn check_counts_injected_mismatches_and_repair_fixes_them() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let a = rig.fill(0, 1);
        rig.write(1, 0, &a);
        // 3 + 8 + 1 differing sectors, the last one at the array's last sector.
        for (at, n) in [(1000u64, 3u64), (9000, 8), (R1_SIZE - 1, 1)] {
            rig.write(1, (DATA_OFF + at) * 512, &pattern(at, (n * 512) as usize));
        }
        let corrupt = rig.read(1);
        let sh = shared(&IN2);
        let geo = raid1_geo(2, R1_SIZE);
        let (job, _) = rig.job(SyncAction::Check, &sh, &geo);
        let progress = job.progress.clone();
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 12 });
        assert_eq!(progress.mismatch_sectors.load(Ordering::Relaxed), 12);
        assert_eq!(rig.read(1), corrupt, "check writes nothing");
        assert_eq!(sh.resync_cp(), 0, "check does not move the resync checkpoint");

        let (job, _) = rig.job(SyncAction::Repair, &sh, &geo);
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 12 });
        assert_eq!(rig.read(1), a);
        assert_eq!(rig.read(0), a);

        let (job, _) = rig.job(SyncAction::Check, &sh, &geo);
        let progress = job.progress.clone();
        progress.mismatch_sectors.store(99, Ordering::Relaxed);
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
        assert_eq!(
            progress.mismatch_sectors.load(Ordering::Relaxed),
            0,
            "reset when check starts"
        );
    }

    #[test]
    fn check_and_repair_raid10() {
        let geo = raid10_geo();
        let rig = Rig::new(4, DATA_OFF + R10_COMPONENT, 4096, &[]);
        let x = rig.fill(0, 5);
        rig.write(1, 0, &x);
        let y = rig.fill(2, 6);
        rig.write(3, 0, &y);
        // Two 4 KiB blocks of member 3 (16 sectors) and one of member 0 (8 sectors).
        rig.write(3, (DATA_OFF + 8) * 512, &pattern(77, 4096));
        rig.write(3, (DATA_OFF + R10_COMPONENT - 8) * 512, &pattern(78, 4096));
        rig.write(0, (DATA_OFF + 4096) * 512, &pattern(79, 4096));
        let sh = shared(&[SlotState::InSync; 4]);
        let (job, _) = rig.job(SyncAction::Check, &sh, &geo);
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 24 });
        let (job, _) = rig.job(SyncAction::Repair, &sh, &geo);
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 24 });
        let m: Vec<Vec<u8>> = (0..4).map(|i| rig.read(i)).collect();
        assert_eq!(m[3], y, "member 3 rewritten from member 2 (the first copy)");
        assert_eq!(m[0], m[1], "the first copy wins: member 1 takes member 0's corruption");
        let (job, _) = rig.job(SyncAction::Check, &sh, &geo);
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
    }

    #[test]
    fn resync_resumes_from_a_checkpoint() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let a = rig.fill(0, 1);
        let b = rig.fill(1, 2);
        let sh = shared(&IN2);
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, cps) = rig.job(SyncAction::Resync, &sh, &geo);
        job.start_sector = 8192;
        let progress = job.progress.clone();
        let (_h, out) = rig.start(job);
        assert_eq!(progress.done_sectors.load(Ordering::Relaxed), 8192);
        assert_eq!(rig.wait(&out), SyncOutcome::Done { mismatch_sectors: 0 });
        let m1 = rig.read(1);
        assert!(
            data(&m1, 0, 8192) == data(&b, 0, 8192),
            "below the checkpoint untouched"
        );
        assert!(data(&m1, 8192, R1_SIZE) == data(&a, 8192, R1_SIZE));
        assert!(cps.borrow().iter().all(|&s| s > 8192));
    }

    #[test]
    fn stop_ends_after_the_window_and_lowers_the_barrier() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let a = rig.fill(0, 1);
        let b = rig.fill(1, 2);
        let sh = shared(&IN2);
        let geo = raid1_geo(2, R1_SIZE);
        let (job, cps) = rig.job(SyncAction::Resync, &sh, &geo);
        let progress = job.progress.clone();
        let (h, out) = rig.start(job);
        assert!(rig
            .d
            .run_until(200_000, || progress.done_sectors.load(Ordering::Relaxed) >= 8192));
        h.stop();
        let SyncOutcome::Stopped { at_sector } = rig.wait(&out) else {
            panic!("expected Stopped, got {:?}", out.borrow())
        };
        assert!(
            (8192..R1_SIZE).contains(&at_sector) && at_sector % 2048 == 0,
            "{at_sector}"
        );
        assert_eq!(sh.resync_cp(), at_sector);
        assert_eq!(cps.borrow().last(), Some(&at_sector));
        assert_eq!(progress.action.load(Ordering::Relaxed), 0);
        let m1 = rig.read(1);
        assert!(data(&m1, 0, at_sector) == data(&a, 0, at_sector));
        assert!(data(&m1, R1_SIZE - 128, R1_SIZE) == data(&b, R1_SIZE - 128, R1_SIZE));
        // Barrier lowered: writes anywhere go.
        let row = sh.gate.row(0);
        for s in [0, at_sector, R1_SIZE - 8] {
            assert_eq!(sh.gate.admit(row, None, s, s + 8), Admit::Go);
            sh.gate.end(row, None, s, s + 8, true);
        }
    }

    #[test]
    fn dropping_the_handle_stops_the_run() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let sh = shared(&IN2);
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, _) = rig.job(SyncAction::Resync, &sh, &geo);
        job.start_sector = 2048;
        let (h, out) = rig.start(job);
        drop(h);
        assert_eq!(rig.wait(&out), SyncOutcome::Stopped { at_sector: 2048 });
    }

    #[test]
    fn failing_source_falls_back_to_another_copy() {
        let rig = Rig::new(3, DATA_OFF + R1_SIZE, 512, &[0]);
        // Both sources hold the same data: every piece of the target must end up with it,
        // including the one whose read from member 0 failed.
        let b = rig.fill(0, 1);
        rig.write(1, 0, &b);
        rig.fill(2, 3);
        let sh = shared(&[SlotState::InSync, SlotState::InSync, SlotState::Rebuilding]);
        let geo = raid1_geo(3, R1_SIZE);
        let (mut job, _) = rig.job(SyncAction::Recover, &sh, &geo);
        job.targets = vec![2];
        error::inject(&rig.reg, &error::InjectOpts::new("EE_M0", "read", "failure")).unwrap();
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
        assert_eq!(sh.slots[0].state(), SlotState::Faulty);
        assert!(sh.take_kick(), "the control path was woken");
        let m2 = rig.read(2);
        assert!(data(&m2, 0, R1_SIZE) == data(&b, 0, R1_SIZE), "every piece rebuilt");
    }

    #[test]
    fn no_source_left_fails_the_run() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[0]);
        let sh = shared(&[SlotState::InSync, SlotState::Rebuilding]);
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, cps) = rig.job(SyncAction::Recover, &sh, &geo);
        job.targets = vec![1];
        job.start_sector = 4096;
        let progress = job.progress.clone();
        error::inject(&rig.reg, &error::InjectOpts::new("EE_M0", "read", "failure")).unwrap();
        let SyncOutcome::Failed { at_sector, reason } = rig.run(job) else {
            panic!("expected Failed")
        };
        assert_eq!(at_sector, 4096);
        assert!(reason.contains("no readable copy"), "{reason}");
        assert_eq!(sh.slots[0].state(), SlotState::Faulty);
        assert_eq!(cps.borrow().last(), Some(&4096));
        assert_eq!(progress.action.load(Ordering::Relaxed), 0);
        let row = sh.gate.row(0);
        assert_eq!(sh.gate.admit(row, None, 4096, 4104), Admit::Go, "barrier lowered");
        sh.gate.end(row, None, 4096, 4104, true);
    }

    #[test]
    fn failing_recovery_target_fails_the_run() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[1]);
        let sh = shared(&[SlotState::InSync, SlotState::Rebuilding]);
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, _) = rig.job(SyncAction::Recover, &sh, &geo);
        job.targets = vec![1];
        error::inject(&rig.reg, &error::InjectOpts::new("EE_M1", "write", "failure")).unwrap();
        let SyncOutcome::Failed { at_sector, reason } = rig.run(job) else {
            panic!("expected Failed")
        };
        assert_eq!(at_sector, 0);
        assert!(reason.contains("target role 1"), "{reason}");
        assert_eq!(sh.slots[1].state(), SlotState::Faulty);
        assert_eq!(sh.slots[0].state(), SlotState::InSync);
    }

    #[test]
    fn bad_jobs_fail_from_the_poller() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let sh = shared(&[SlotState::InSync, SlotState::Missing]);
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, _) = rig.job(SyncAction::Recover, &sh, &geo);
        job.targets = vec![1];
        assert!(
            matches!(rig.run(job), SyncOutcome::Failed { at_sector: 0, reason } if reason.contains("target role 1"))
        );
        let (mut job, _) = rig.job(SyncAction::Resync, &sh, &geo);
        job.start_sector = R1_SIZE + 1;
        assert!(matches!(rig.run(job), SyncOutcome::Failed { .. }));
        // Nothing to do from the end: done at once.
        let (mut job, _) = rig.job(SyncAction::Check, &sh, &geo);
        job.start_sector = R1_SIZE;
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
    }

    #[test]
    fn an_admitted_write_holds_the_window_until_it_ends() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let a = rig.fill(0, 1);
        let b = rig.fill(1, 2);
        let sh = shared(&IN2);
        let row = sh.gate.row(0);
        assert_eq!(sh.gate.admit(row, None, 100, 108), Admit::Go);
        let geo = raid1_geo(2, R1_SIZE);
        let (job, _) = rig.job(SyncAction::Resync, &sh, &geo);
        let progress = job.progress.clone();
        let (_h, out) = rig.start(job);
        for _ in 0..200 {
            rig.d.turn();
        }
        assert!(out.borrow().is_none());
        assert_eq!(progress.done_sectors.load(Ordering::Relaxed), 0);
        assert!(!sh.gate.barrier_drained());
        // New writes into the window are held meanwhile; writes elsewhere go.
        assert_eq!(sh.gate.admit(row, None, 4000, 4008), Admit::Hold);
        assert_eq!(sh.gate.admit(row, None, 16384, 16392), Admit::Go);
        sh.gate.end(row, None, 16384, 16392, true);
        assert_eq!(data(&rig.read(1), 0, 8), data(&b, 0, 8), "nothing copied yet");
        sh.gate.end(row, None, 100, 108, true);
        assert_eq!(rig.wait(&out), SyncOutcome::Done { mismatch_sectors: 0 });
        assert!(data(&rig.read(1), 0, R1_SIZE) == data(&a, 0, R1_SIZE));
    }

    fn intent_with(size: u64, chunk_sectors: u64, dirty: &[u64]) -> Intent {
        let header = BitmapHeader {
            version: bitmap::VERSION,
            uuid: [7; 16],
            events: 1,
            events_cleared: 1,
            sync_size_sectors: size,
            state: 0,
            chunk_bytes: (chunk_sectors * 512) as u32,
            daemon_sleep_s: 5,
            write_behind: 0,
            sectors_reserved: 0,
            nodes: 0,
        };
        let mut bits = vec![0u8; header.bits().div_ceil(8) as usize];
        for &c in dirty {
            bitmap::set_bit(&mut bits, c, true);
        }
        Intent::new(header, &bits).unwrap()
    }

    #[test]
    fn bitmap_only_resync_covers_dirty_chunks_only() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let a = rig.fill(0, 1);
        let b = rig.fill(1, 2);
        // 1 MiB chunks: 11 of them, the last one partial (128 sectors).
        let cs = 2048;
        let dirty = [1u64, 2, 7, 10];
        let intent = intent_with(R1_SIZE, cs, &dirty);
        let sh = Arc::new(Shared::new(&IN2, 0, true, Some(intent)));
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, _) = rig.job(SyncAction::Resync, &sh, &geo);
        job.bitmap_only = true;
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
        let m1 = rig.read(1);
        for c in 0..11u64 {
            let (s, e) = (c * cs, ((c + 1) * cs).min(R1_SIZE));
            let want = if dirty.contains(&c) { &a } else { &b };
            assert!(data(&m1, s, e) == data(want, s, e), "chunk {c}");
        }
        let intent = sh.intent.as_ref().unwrap();
        for c in 0..11u64 {
            assert!(!intent.is_needed(c), "chunk {c} reported synced");
        }
        assert_eq!(sh.resync_cp(), u64::MAX);
    }

    #[test]
    fn resumed_run_reports_only_whole_chunks() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        rig.fill(0, 1);
        rig.fill(1, 2);
        let intent = intent_with(R1_SIZE, 4096, &[0, 1, 2, 3, 4, 5]);
        let sh = Arc::new(Shared::new(&IN2, 0, true, Some(intent)));
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, _) = rig.job(SyncAction::Resync, &sh, &geo);
        job.start_sector = 2048; // inside chunk 0
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
        let intent = sh.intent.as_ref().unwrap();
        assert!(intent.is_needed(0), "chunk 0 was only partly processed");
        for c in 1..6 {
            assert!(!intent.is_needed(c), "chunk {c}");
        }
    }

    #[test]
    fn bitmap_guided_recovery_copies_dirty_chunks_and_publishes_skips() {
        let rig = Rig::new(2, DATA_OFF + R1_SIZE, 512, &[]);
        let a = rig.fill(0, 1);
        let b = rig.fill(1, 2);
        let intent = intent_with(R1_SIZE, 2048, &[3]);
        let sh = Arc::new(Shared::new(
            &[SlotState::InSync, SlotState::Rebuilding],
            u64::MAX,
            true,
            Some(intent),
        ));
        let geo = raid1_geo(2, R1_SIZE);
        let (mut job, _) = rig.job(SyncAction::Recover, &sh, &geo);
        job.targets = vec![1];
        job.bitmap_only = true;
        let (_h, out) = rig.start(job);
        let mut seen = Vec::new();
        assert!(rig.d.run_until(200_000, || {
            let r = sh.slots[1].recovered_sectors();
            if seen.last() != Some(&r) {
                seen.push(r);
            }
            out.borrow().is_some()
        }));
        assert_eq!(out.borrow().clone().unwrap(), SyncOutcome::Done { mismatch_sectors: 0 });
        // Clean chunks 0..3 skipped, chunk 3 copied, the rest skipped.
        assert_eq!(seen, vec![0, 3 * 2048, 4 * 2048, R1_SIZE, u64::MAX]);
        let m1 = rig.read(1);
        assert!(data(&m1, 0, 6144) == data(&b, 0, 6144));
        assert!(data(&m1, 6144, 8192) == data(&a, 6144, 8192));
        assert!(data(&m1, 8192, R1_SIZE) == data(&b, 8192, R1_SIZE));
        assert!(!sh.intent.as_ref().unwrap().is_needed(3));
    }

    #[test]
    fn sub_block_bitmap_chunks_keep_member_io_aligned() {
        let geo = raid10_geo();
        let size = geo.size_sectors;
        let rig = Rig::new(4, DATA_OFF + R10_COMPONENT, 4096, &[]);
        let v: Vec<Vec<u8>> = (0..4).map(|i| rig.fill(i, 30 + i as u64)).collect();
        // 512-byte bitmap chunks: sector 803 dirty, inside the 4 KiB block 800..808.
        let intent = intent_with(size, 1, &[803]);
        let sh = Arc::new(Shared::new(&[SlotState::InSync; 4], 0, true, Some(intent)));
        let (mut job, _) = rig.job(SyncAction::Resync, &sh, &geo);
        job.bitmap_only = true;
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
        let m: Vec<Vec<u8>> = (0..4).map(|i| rig.read(i)).collect();
        let mut places = empty_places();
        let (k, _) = geo.copies(800, &mut places);
        assert_eq!(k, 2);
        let (p0, p1) = (places[0], places[1]);
        let (m0, m1) = (p0.member.0 as usize, p1.member.0 as usize);
        let s0 = p0.sector;
        assert_eq!(s0, p1.sector);
        assert!(
            data(&m[m1], s0, s0 + 8) == data(&v[m0], s0, s0 + 8),
            "the block was resynced"
        );
        // Everything else on the second copy's member is as it was.
        assert!(data(&m[m1], 0, s0) == data(&v[m1], 0, s0));
        assert!(data(&m[m1], s0 + 8, R10_COMPONENT) == data(&v[m1], s0 + 8, R10_COMPONENT));
        assert_eq!(m[m0], v[m0]);
    }

    #[test]
    fn pacing_obeys_max_speed() {
        // Simulated clock, I/O takes no time: the worst case for the limiter.
        for max_kbs in [1_000u64, 10_000, 200_000] {
            let mut p = Pacer::new(0, 0);
            let w = window_sectors(max_kbs, WINDOW_MAX_SECTORS);
            let (mut now, mut synced) = (0u64, 0u64);
            while now < 10_000_000 {
                match p.wait_us(now, synced, 0, u64::MAX, max_kbs) {
                    0 => {
                        p.charge(now, w, max_kbs);
                        synced += w;
                    }
                    d => now += d,
                }
            }
            let kib = synced / 2;
            // Over 10 s: at most max plus one window's burst, and not much less.
            assert!(kib <= max_kbs * 10 + w / 2, "{max_kbs}: {kib}");
            assert!(kib * 100 >= max_kbs * 10 * 95, "{max_kbs}: {kib}");
        }
        // No limit: never waits.
        let mut p = Pacer::new(0, 0);
        p.charge(0, 1 << 30, 0);
        assert_eq!(p.wait_us(0, 1 << 30, 0, u64::MAX, 0), 0);
    }

    #[test]
    fn pacing_backs_off_to_min_speed_under_foreground_writes() {
        let mut p = Pacer::new(0, 0);
        // 4 MiB synced in the first 100 ms: 40 MiB/s.
        let synced = 8192;
        assert_eq!(p.wait_us(100_000, synced, 0, 1_000, 0), 0, "no writes: full speed");
        assert_eq!(
            p.wait_us(110_000, synced, 5, 1_000, 0),
            THROTTLE_STEP_US,
            "writes and above min"
        );
        assert_eq!(p.wait_us(120_000, synced, 5, 1_000, 0), 0, "no new writes since");
        assert_eq!(
            p.wait_us(130_000, synced, 9, 100_000, 0),
            0,
            "below min: writes do not matter"
        );
        // Writes keep flowing: wait until the rate over the last 1–2 s fell under min.
        let (mut now, mut act) = (140_000u64, 10u64);
        while p.wait_us(now, synced, act, 1_000, 0) != 0 {
            now += THROTTLE_STEP_US;
            act += 1;
        }
        assert!(p.rate_kbs(now, synced) <= 1_000);
        assert!(now <= 2_200_000, "the rate window is 1–2 s: {now}");
        assert!(now >= 1_000_000, "{now}");
    }

    #[test]
    fn window_size_follows_max_speed() {
        assert_eq!(window_sectors(0, WINDOW_MAX_SECTORS), WINDOW_MAX_SECTORS);
        assert_eq!(window_sectors(1_000, WINDOW_MAX_SECTORS), WINDOW_MIN_SECTORS);
        assert_eq!(window_sectors(200_000, WINDOW_MAX_SECTORS), WINDOW_MAX_SECTORS);
        assert_eq!(
            window_sectors(12_000, WINDOW_MAX_SECTORS),
            4096,
            "3 MiB/4 s rounds to whole MiB"
        );
        assert_eq!(window_sectors(200_000, 2048), 2048);
        assert_eq!(window_sectors(u64::MAX, WINDOW_MAX_SECTORS), WINDOW_MAX_SECTORS);
    }
}
