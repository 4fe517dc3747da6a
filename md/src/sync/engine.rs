//! The sync engine: one run's window walk, barrier, requests, buffers, piece bookkeeping,
//! bitmap skipping, progress and checkpoints (the parent module's docs describe the run). The
//! layout's [`SyncStep`] decides what each piece does, through [`SyncIo`].

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use keel_bdev::{Channel, CompletionQueue, DmaBuf, IoBox, IoOp, IoRequest, IoVec, Submit};
use keel_reactor::{ticks, ticks_per_sec};

use super::pacer::{window_cap_sectors, window_sectors, Pacer, WINDOW_MAX_SECTORS, WINDOW_MIN_SECTORS};
use super::{SyncAction, SyncCtl, SyncJob, SyncOutcome, SyncProgress, SyncSpeed};
use crate::geometry::Geometry;
use crate::intent::Intent;
use crate::layout::MemberIdx;
use crate::personality::{Completion, Layout, Next, PieceRange, Step, SyncShape, SyncStep};
use crate::shared::{Shared, BUCKET_SHIFT};

/// Most buffer memory one run holds (a step with many buffers shrinks its windows to stay
/// under).
pub(crate) const BUFFER_BUDGET_BYTES: u64 = 16 << 20;
/// Member I/Os in flight (Linux's `sync_io_depth` default). A step's stage must fit in it.
pub(crate) const QUEUE_DEPTH: usize = 32;
/// Clean bitmap chunks skipped per poll (bounds one poll's time on huge clean arrays).
const SKIP_CHUNKS_PER_POLL: usize = 4096;
const SECTOR: u64 = 512;

/// The reactor clock in microseconds.
pub(crate) fn now_us() -> u64 {
    (ticks() as u128 * 1_000_000 / ticks_per_sec() as u128) as u64
}

/// I/O tag: piece (bits 32..), member (8..32), the step's tag (0..8).
fn tag(piece: usize, member: MemberIdx, step_tag: u8) -> u64 {
    ((piece as u64) << 32) | ((member.0 as u64) << 8) | step_tag as u64
}

fn untag(t: u64) -> (usize, MemberIdx, u8) {
    ((t >> 32) as usize, MemberIdx(((t >> 8) & 0xFF_FFFF) as u16), t as u8)
}

/// What the engine lends a step: the run's member channels, requests and buffers (main
/// reactor). Every request a step submits comes back to the step through
/// [`SyncStep::completed`] with its tag.
pub(crate) struct SyncIo {
    action: SyncAction,
    shared: Arc<Shared>,
    geo: Arc<Geometry>,
    members: Vec<Option<Rc<Channel>>>,
    is_target: Vec<bool>,
    bufs: Vec<DmaBuf>,
    free: Vec<IoBox>,
    requeued: VecDeque<IoBox>,
    cq: CompletionQueue,
    inflight: usize,
    /// Per piece of the window: its requests not yet completed.
    outstanding: Vec<u32>,
    win_start: u64,
    mismatch_sectors: u64,
    progress: Arc<SyncProgress>,
}

impl SyncIo {
    /// The window's first array sector: buffer offsets count from it.
    pub(crate) fn win_start(&self) -> u64 {
        self.win_start
    }

    /// Requests free right now (a stage needing more gets [`Step::Busy`]).
    pub(crate) fn free(&self) -> usize {
        self.free.len()
    }

    fn has_channel(&self, m: MemberIdx) -> bool {
        self.members.get(m.idx()).is_some_and(|c| c.is_some())
    }

    /// Whether member sectors `[member_sector, + len_sectors)` of role `m` may be read.
    pub(crate) fn readable(&self, m: MemberIdx, member_sector: u64, len_sectors: u64) -> bool {
        self.has_channel(m) && self.shared.slots[m.idx()].readable(member_sector, len_sectors)
    }

    /// Whether role `m` takes writes.
    pub(crate) fn writable(&self, m: MemberIdx) -> bool {
        self.has_channel(m) && self.shared.slots[m.idx()].writable()
    }

    /// Whether role `m` is being recovered by this run.
    pub(crate) fn is_target(&self, m: MemberIdx) -> bool {
        self.is_target.get(m.idx()).copied().unwrap_or(false)
    }

    /// Window buffer `i` (as many as the shape asked for, each a window long).
    pub(crate) fn buf(&self, i: usize) -> &DmaBuf {
        &self.bufs[i]
    }

    /// Counts mismatching sectors found (check, repair).
    pub(crate) fn add_mismatches(&mut self, sectors: u64) {
        if sectors > 0 {
            self.mismatch_sectors += sectors;
            self.progress.mismatch_sectors.fetch_add(sectors, Ordering::Relaxed);
        }
    }

    /// Sends one request of piece `piece`: `sectors` at role `m`'s `member_sector` (relative to
    /// the data offset), reading into or writing from buffer `buf` at `buf_sector` (sectors
    /// from its start). Needs a free request ([`SyncIo::free`]) and a member with a channel.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &mut self,
        piece: usize,
        step_tag: u8,
        m: MemberIdx,
        member_sector: u64,
        sectors: u64,
        write: bool,
        buf: usize,
        buf_sector: u64,
    ) {
        let shift = self.geo.member_shift(m);
        let abs_sector = self.geo.data_offset_sectors + member_sector;
        let mut io = self.free.pop().expect("the step checked free()");
        io.iovs.clear();
        io.iovs.push(IoVec {
            buf: self.bufs[buf].clone(),
            offset_bytes: (buf_sector * SECTOR) as u32,
            len_bytes: (sectors * SECTOR) as u32,
        });
        let op = if write { IoOp::Write } else { IoOp::Read };
        io.prepare(op, abs_sector >> shift, sectors >> shift);
        io.tag = tag(piece, m, step_tag);
        self.outstanding[piece] += 1;
        let ch = self.members[m.idx()]
            .as_ref()
            .expect("planned on a member with a channel");
        match ch.submit(io, &self.cq) {
            Submit::Accepted => self.inflight += 1,
            Submit::Requeue(io) => self.requeued.push_back(io),
        }
    }
}

/// One piece of the current window.
#[derive(Debug, Clone, Copy)]
struct Piece {
    range: PieceRange,
    done: bool,
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

/// One run (see the module docs). Lives in its poller's closure.
pub(crate) struct Engine {
    name: String,
    layout: Arc<dyn Layout>,
    start_sector: u64,
    targets: Vec<MemberIdx>,
    bitmap_only: bool,
    speed: Arc<SyncSpeed>,
    on_checkpoint: Box<dyn FnMut(u64)>,
    checkpoint_interval_us: u64,
    ctl: Rc<SyncCtl>,
    /// Why the job cannot run (reported from the first poll).
    invalid: Option<String>,

    io: SyncIo,
    step: Option<Box<dyn SyncStep>>,
    /// The sync space's size (the shape's `sync_sectors`): where the run ends.
    sync_sectors: u64,
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
    /// Sectors actually synced (windows done, not skipped): what the rate measures.
    synced_sectors: u64,
    pacer: Pacer,
    wait_until_us: u64,
    last_checkpoint_us: u64,
}

impl Engine {
    pub(crate) fn new(job: SyncJob, ctl: Rc<SyncCtl>, now_us: u64) -> Engine {
        let geo = job.layout.geometry().clone();
        let mut invalid = Self::validate(&job);
        let shape = job.layout.sync();
        let sync_sectors = shape.map_or(0, |s| s.sync_sectors());
        let nbufs = shape.map_or(1, |s| s.buffers(job.action)).max(1);
        let window_max_sectors = (BUFFER_BUDGET_BYTES / (nbufs as u64 * SECTOR))
            .clamp(WINDOW_MIN_SECTORS, WINDOW_MAX_SECTORS)
            >> BUCKET_SHIFT
            << BUCKET_SHIFT;
        let max_pieces = match (&invalid, shape) {
            (None, Some(s)) => (window_max_sectors / s.min_piece_sectors().max(1) + 2) as usize,
            _ => 0,
        };
        let step = match (&invalid, shape) {
            (None, Some(s)) => Some(s.step(job.action, max_pieces)),
            _ => None,
        };
        if step.is_none() && invalid.is_none() {
            invalid = Some("the array's level has no resync".into());
        }
        let bufs = if invalid.is_some() {
            Vec::new()
        } else {
            (0..nbufs)
                .map(|_| DmaBuf::new((window_max_sectors * SECTOR) as usize))
                .collect()
        };
        let mut is_target = vec![false; job.members.len()];
        for &t in &job.targets {
            if let Some(x) = is_target.get_mut(t.idx()) {
                *x = true;
            }
        }
        let p = &job.progress;
        p.action.store(job.action as u8 + 1, Ordering::Relaxed);
        p.total_sectors.store(sync_sectors, Ordering::Relaxed);
        p.done_sectors
            .store(job.start_sector.min(sync_sectors), Ordering::Relaxed);
        p.rate_kbs.store(0, Ordering::Relaxed);
        if job.action != SyncAction::Recover {
            p.mismatch_sectors.store(0, Ordering::Relaxed);
        }
        let activity = job.shared.gate.activity();
        let align_sectors = 1u64 << geo.member_shifts.iter().copied().max().unwrap_or(0).min(20);
        Engine {
            name: job.name,
            layout: job.layout,
            start_sector: job.start_sector,
            targets: job.targets,
            bitmap_only: job.bitmap_only,
            speed: job.speed,
            on_checkpoint: job.on_checkpoint,
            checkpoint_interval_us: job.checkpoint_interval_ms.saturating_mul(1000),
            ctl,
            invalid,
            io: SyncIo {
                action: job.action,
                shared: job.shared,
                geo,
                members: job.members,
                is_target,
                bufs,
                free: (0..QUEUE_DEPTH).map(|_| IoRequest::new_boxed()).collect(),
                requeued: VecDeque::with_capacity(QUEUE_DEPTH),
                cq: CompletionQueue::with_capacity(QUEUE_DEPTH),
                inflight: 0,
                outstanding: Vec::with_capacity(max_pieces),
                win_start: job.start_sector,
                mismatch_sectors: 0,
                progress: job.progress,
            },
            step,
            sync_sectors,
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
            synced_sectors: 0,
            pacer: Pacer::new(now_us, activity),
            wait_until_us: 0,
            last_checkpoint_us: now_us,
        }
    }

    /// The level-independent checks of a job, then the shape's.
    fn validate(job: &SyncJob) -> Option<String> {
        let geo = job.layout.geometry();
        let Some(shape) = job.layout.sync() else {
            return Some("the array's level has no resync".into());
        };
        let roles = job.shared.slots.len();
        if job.members.len() != roles || geo.roles() != roles {
            return Some(format!(
                "{} member channels and {} member block sizes for {roles} roles",
                job.members.len(),
                geo.roles()
            ));
        }
        let shift = geo.member_shifts.iter().copied().max().unwrap_or(0);
        if let Err(reason) = shape.check(roles, 1 << shift) {
            return Some(reason);
        }
        let size = shape.sync_sectors();
        if job.start_sector > size {
            return Some(format!(
                "start sector {} is past the array end {size}",
                job.start_sector
            ));
        }
        let mask = (1u64 << shift) - 1;
        if (job.start_sector | size | geo.data_offset_sectors) & mask != 0 {
            return Some(format!(
                "start sector {}, size {} or data offset {} is not a multiple of the member block ({} sectors)",
                job.start_sector,
                size,
                geo.data_offset_sectors,
                mask + 1
            ));
        }
        if job.action == SyncAction::Recover {
            if job.targets.is_empty() {
                return Some("recovery without target roles".into());
            }
            for &t in &job.targets {
                if t.idx() >= roles {
                    return Some(format!("target role {} does not exist ({roles} roles)", t.0));
                }
                if job.members[t.idx()].is_none() || !job.shared.slots[t.idx()].writable() {
                    return Some(format!(
                        "target role {} is {} without a usable member",
                        t.0,
                        job.shared.slots[t.idx()].state().name()
                    ));
                }
            }
        }
        None
    }

    fn shape(&self) -> &dyn SyncShape {
        self.layout.sync().expect("validated at start")
    }

    fn size_sectors(&self) -> u64 {
        self.sync_sectors
    }

    fn intent(&self) -> Option<&Intent> {
        match self.io.action {
            SyncAction::Resync | SyncAction::Recover => self.io.shared.intent.as_ref(),
            SyncAction::Check | SyncAction::Repair => None,
        }
    }

    /// One poller call: returns whether it did work, and the outcome once the run ended.
    pub(crate) fn poll(&mut self, now_us: u64) -> (bool, Option<SyncOutcome>) {
        let mut busy = self.reap();
        busy |= self.resubmit();
        match self.phase {
            Phase::Start => {
                if let Some(reason) = self.invalid.take() {
                    let at_sector = self.start_sector;
                    return (true, Some(self.finish(SyncOutcome::Failed { at_sector, reason })));
                }
                tracing::info!(array = %self.name, action = self.io.action.name(), from = self.start_sector,
                    "md sync started");
                self.phase = Phase::Between;
                (true, None)
            }
            Phase::Between => self.between(now_us, busy),
            Phase::Draining => {
                if self.ctl.stop.get() {
                    self.io.shared.gate.lower_barrier();
                    let at_sector = self.win_start;
                    return (true, Some(self.finish(SyncOutcome::Stopped { at_sector })));
                }
                if !self.io.shared.gate.barrier_drained() {
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
        let size = self.size_sectors();
        if self.cursor >= size {
            let mismatch_sectors = self.io.mismatch_sectors;
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
        let activity = self.io.shared.gate.activity();
        let wait = self
            .pacer
            .wait_us(now_us, self.synced_sectors, activity, min_kbs, max_kbs);
        if wait > 0 {
            self.wait_until_us = now_us + wait;
            // The shown rate decays while the run waits.
            let rate = self.pacer.rate_kbs(now_us, self.synced_sectors);
            self.io.progress.rate_kbs.store(rate, Ordering::Relaxed);
            return (busy, None);
        }
        // The window: whole buckets from the second window on, never past the array end.
        let cap = window_cap_sectors(self.speed.window_kb.load(Ordering::Relaxed), self.window_max_sectors);
        let want = window_sectors(max_kbs, cap);
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
        self.win_end = self.io.shared.gate.raise_barrier(self.cursor, end);
        self.pacer.charge(now_us, self.win_end - self.win_start, max_kbs);
        self.phase = Phase::Draining;
        (true, None)
    }

    /// Cuts the locked window into the step's pieces.
    fn build_pieces(&mut self) {
        self.pieces.clear();
        self.ready.clear();
        self.next_new = 0;
        self.pieces_done = 0;
        let step = self.step.as_mut().expect("validated at start");
        let mut s = self.win_start;
        while s < self.win_end {
            if self.pieces.len() == self.pieces.capacity() {
                // Cannot happen with the capacity from `new`; end the window early rather
                // than grow.
                self.win_end = s;
                break;
            }
            let len = step.piece_sectors(s, self.win_end - s).clamp(1, self.win_end - s);
            self.pieces.push(Piece {
                range: PieceRange {
                    sector: s,
                    len_sectors: len,
                },
                done: false,
            });
            s += len;
        }
        self.io.win_start = self.win_start;
        self.io.outstanding.clear();
        self.io.outstanding.resize(self.pieces.len(), 0);
        step.begin_window(self.pieces.len());
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

    /// Issues piece `i`'s pending stage through the step.
    fn issue(&mut self, i: usize) -> Issue {
        let range = self.pieces[i].range;
        let step = self.step.as_mut().expect("validated at start");
        match step.issue(i, range, &mut self.io) {
            Step::Issued => Issue::Issued,
            Step::Skipped => {
                self.piece_done(i);
                Issue::Issued
            }
            Step::Busy => Issue::Wait,
            Step::Failed(reason) => self.fail(reason),
        }
    }

    /// Retries requests the members handed back.
    fn resubmit(&mut self) -> bool {
        let mut busy = false;
        let io = &mut self.io;
        for _ in 0..io.requeued.len() {
            let Some(r) = io.requeued.pop_front() else { break };
            if self.failure.is_some() {
                io.free.push(r);
                continue;
            }
            let (_, member, _) = untag(r.tag);
            let ch = io.members[member.idx()].as_ref().expect("submitted before");
            match ch.submit(r, &io.cq) {
                Submit::Accepted => {
                    io.inflight += 1;
                    busy = true;
                }
                Submit::Requeue(r) => {
                    io.requeued.push_front(r);
                    break;
                }
            }
        }
        busy
    }

    /// Handles completions.
    fn reap(&mut self) -> bool {
        let mut n = 0;
        while let Some(r) = self.io.cq.pop() {
            n += 1;
            self.io.inflight -= 1;
            let ok = r.status().is_success();
            let write = r.op == IoOp::Write;
            let t = r.tag;
            self.io.free.push(r);
            self.completed(t, ok, write);
        }
        n > 0
    }

    fn completed(&mut self, t: u64, ok: bool, write: bool) {
        let (i, member, step_tag) = untag(t);
        if !ok {
            self.io.shared.fail_member(member.idx());
            tracing::warn!(array = %self.name, role = member.0, write, "md sync: member I/O failed, member marked faulty");
        }
        self.io.outstanding[i] -= 1;
        let c = Completion {
            tag: step_tag,
            member,
            write,
            ok,
            left: self.io.outstanding[i] as usize,
        };
        let range = self.pieces[i].range;
        let step = self.step.as_mut().expect("validated at start");
        match step.completed(i, range, c, &mut self.io) {
            Next::Wait => {}
            Next::Again => self.ready.push_back(i as u32),
            Next::Done => self.piece_done(i),
            Next::Failed(reason) => {
                self.fail(reason);
            }
        }
    }

    fn piece_done(&mut self, i: usize) {
        let p = &mut self.pieces[i];
        if !p.done {
            p.done = true;
            self.pieces_done += 1;
        }
    }

    /// Records the run's failure (first one wins); it ends once nothing is in flight.
    fn fail(&mut self, reason: String) -> Issue {
        if self.failure.is_none() {
            tracing::warn!(array = %self.name, action = self.io.action.name(), %reason, "md sync failed");
            self.failure = Some(reason);
        }
        Issue::Failed
    }

    /// Ends the window when its pieces are done (or the run when it failed and drained).
    fn check_window_end(&mut self, now_us: u64) -> Option<SyncOutcome> {
        if self.failure.is_some() {
            if self.io.inflight > 0 {
                return None;
            }
            while let Some(r) = self.io.requeued.pop_front() {
                self.io.free.push(r);
            }
            self.io.shared.gate.lower_barrier();
            let reason = self.failure.take().unwrap_or_default();
            let at_sector = self.win_start;
            return Some(self.finish(SyncOutcome::Failed { at_sector, reason }));
        }
        if self.pieces_done < self.pieces.len() || self.io.inflight > 0 || !self.io.requeued.is_empty() {
            return None;
        }
        self.io.shared.gate.lower_barrier();
        let (ws, we) = (self.win_start, self.win_end);
        self.synced_sectors += we - ws;
        let size = self.size_sectors();
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
        self.io.progress.done_sectors.store(reached, Ordering::Relaxed);
        let rate = self.pacer.rate_kbs(now_us, self.synced_sectors);
        self.io.progress.rate_kbs.store(rate, Ordering::Relaxed);
        match self.io.action {
            SyncAction::Resync => self.io.shared.set_resync_cp(reached),
            SyncAction::Recover => {
                if let Some(s) = self.shape().recovered_member_sectors(reached) {
                    for &t in &self.targets {
                        let slot = &self.io.shared.slots[t.idx()];
                        if slot.recovered_sectors() < s {
                            slot.set_recovered_sectors(s);
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
                let size = self.size_sectors();
                self.io.progress.done_sectors.store(size, Ordering::Relaxed);
                match self.io.action {
                    SyncAction::Resync => self.io.shared.set_resync_cp(u64::MAX),
                    SyncAction::Recover => {
                        for &t in &self.targets {
                            self.io.shared.slots[t.idx()].set_recovered_sectors(u64::MAX);
                        }
                    }
                    SyncAction::Check | SyncAction::Repair => {}
                }
                size
            }
            SyncOutcome::Stopped { at_sector } | SyncOutcome::Failed { at_sector, .. } => *at_sector,
        };
        (self.on_checkpoint)(final_sector);
        // `progress.action` stays: the run's owner clears it once it took the outcome in (the
        // daemon, with last_sync_action and the members' states), so md_get_arrays never shows
        // "idle" beside the state of before the run.
        self.io.progress.rate_kbs.store(0, Ordering::Relaxed);
        self.phase = Phase::Finished;
        tracing::info!(array = %self.name, action = self.io.action.name(), ?outcome, "md sync ended");
        outcome
    }
}

#[cfg(test)]
mod tests {
    //! Runs the engine with the copy levels' step on the deterministic driver over malloc members
    //! (and `error` bdevs for failures), with hand-built `Shared` and layouts.

    use super::*;
    use crate::bitmap::{self, BitmapHeader};
    use crate::layout::{Place, MAX_COPIES};
    use crate::mirror::MirrorLayout;
    use crate::raid1::Raid1Copies;
    use crate::raid10::Raid10;
    use crate::shared::{Admit, SlotState};
    use crate::sync::{start, SyncHandle};
    use keel_bdev::modules::{error, malloc};
    use keel_bdev::{BdevRegistry, Descriptor, IoStatus};
    use keel_reactor::current;
    use keel_reactor::{CoreId, TestDriver};
    use std::cell::RefCell;
    use std::sync::atomic::AtomicU64;

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
            geo: &Arc<dyn Layout>,
        ) -> (SyncJob, Rc<RefCell<Vec<u64>>>) {
            let cps: Rc<RefCell<Vec<u64>>> = Rc::default();
            let c2 = cps.clone();
            let job = SyncJob {
                action,
                name: "md_test".into(),
                shared: shared.clone(),
                layout: geo.clone(),
                members: self.members(),
                start_sector: 0,
                targets: Vec::new(),
                bitmap_only: false,
                speed: Arc::new(SyncSpeed {
                    min_kbs: AtomicU64::new(u64::MAX),
                    max_kbs: AtomicU64::new(0),
                    window_kb: AtomicU64::new(0),
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

    fn raid1_geo(n: u16, size: u64) -> Arc<dyn Layout> {
        MirrorLayout::new(
            Raid1Copies {
                members: n,
                size_sectors: size,
            },
            Geometry {
                size_sectors: size,
                data_offset_sectors: DATA_OFF,
                block_shift: 0,
                member_shifts: vec![0; n as usize],
            },
        )
    }

    /// raid10 near-2 over 4 members with 4 KiB member blocks.
    fn raid10_map() -> Raid10 {
        Raid10::new(Raid10::layout_word(2, 1, false), 4, R10_CHUNK, R10_COMPONENT).unwrap()
    }

    fn raid10_geo() -> Arc<dyn Layout> {
        let r = raid10_map();
        let size = r.size_sectors();
        MirrorLayout::new(
            r,
            Geometry {
                size_sectors: size,
                data_offset_sectors: DATA_OFF,
                block_shift: 3,
                member_shifts: vec![3; 4],
            },
        )
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
        assert_ne!(progress.action.load(Ordering::Relaxed), 0, "cleared by the run's owner");
        assert_eq!(progress.done_sectors.load(Ordering::Relaxed), R1_SIZE);
        let cps = cps.borrow();
        // Interval 0: one per window, then the final one.
        assert_eq!(*cps, vec![8192, 16384, R1_SIZE, R1_SIZE]);
    }

    #[test]
    fn resync_raid10_near2_makes_copy_pairs_equal() {
        let geo = raid10_geo();
        let size = geo.geometry().size_sectors;
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
        job.targets = vec![MemberIdx(2)];
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
        job.targets = vec![MemberIdx(1)];
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
        job.targets = vec![MemberIdx(1)];
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
        assert_ne!(progress.action.load(Ordering::Relaxed), 0, "cleared by the run's owner");
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
        job.targets = vec![MemberIdx(2)];
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
        job.targets = vec![MemberIdx(1)];
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
        assert_ne!(progress.action.load(Ordering::Relaxed), 0, "cleared by the run's owner");
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
        job.targets = vec![MemberIdx(1)];
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
        job.targets = vec![MemberIdx(1)];
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
        job.targets = vec![MemberIdx(1)];
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
        let size = geo.geometry().size_sectors;
        let rig = Rig::new(4, DATA_OFF + R10_COMPONENT, 4096, &[]);
        let v: Vec<Vec<u8>> = (0..4).map(|i| rig.fill(i, 30 + i as u64)).collect();
        // 512-byte bitmap chunks: sector 803 dirty, inside the 4 KiB block 800..808.
        let intent = intent_with(size, 1, &[803]);
        let sh = Arc::new(Shared::new(&[SlotState::InSync; 4], 0, true, Some(intent)));
        let (mut job, _) = rig.job(SyncAction::Resync, &sh, &geo);
        job.bitmap_only = true;
        assert_eq!(rig.run(job), SyncOutcome::Done { mismatch_sectors: 0 });
        let m: Vec<Vec<u8>> = (0..4).map(|i| rig.read(i)).collect();
        let mut places = [Place::ZERO; MAX_COPIES];
        let (k, _) = raid10_map().map(800, &mut places);
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
}
