//! An array's control poller on the main reactor: the single writer of its superblocks and
//! bitmap, and the owner of its sync runs.
//!
//! Every millisecond (a timed poller, `md_daemon_<array>`) it looks at what changed and acts,
//! one step at a time, never waiting:
//!
//! 1. results that arrived (a superblock write, a sync run ending, a checkpoint);
//! 2. stop, as a small state machine: stop the sync at its window → unregister the bdev → wait
//!    for writes in flight → final superblocks ("clean" when nothing is in flight) → release the
//!    members and answer;
//! 3. member failures (a core marked a slot faulty, or the member bdev is going away): the member
//!    moves to the faulty list, every core drops its channel, the superblocks record it
//!    (role 0xfffe), a running sync stops (it resumes over the new member set); a spare, if
//!    any, takes the role as `Rebuilding` once no sync runs — a re-added member
//!    ([`crate::array::ReAdd`]) its own role, and it too only then;
//! 4. dirty marking: a writer found the superblocks clean → write them "active" (resync_offset
//!    0), then open the write gate; after [`SAFE_MODE_MS`] without writes, close the gate and
//!    write them clean again (resync_offset = the resync checkpoint), as Linux's safe mode;
//! 5. the bitmap's disk side ([`IntentDisk::poll`]);
//! 6. sync scheduling: recovery onto rebuilding roles, else resync from the checkpoint, else a
//!    requested check/repair — unless frozen, stopping, or a channel refresh is in progress;
//! 7. one coalesced superblock write (events + 1) when anything above asked for it.
//!
//! Superblock writes go to every working member (in-sync, rebuilding, spares); a write that fails
//! marks that member faulty.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use keel_bdev::{Channel, IoStatus};
use keel_reactor::{current, PollStatus, PollerHandle};

use crate::array::{Array, MdRegistry, MemberRec, SyncRequest};
use crate::intent::IntentDisk;
use crate::layout::MemberIdx;
use crate::meta_io;
use crate::personality::Health;
use crate::shared::SlotState;
use crate::superblock::{MAX_SECTOR, V1_2_SUPER_OFFSET_SECTORS};
use crate::sync::{self, SyncAction, SyncHandle, SyncJob, SyncOutcome};
use crate::MdError;

/// How long writes must be idle before the superblocks are marked clean (Linux: 200 ms).
pub(crate) const SAFE_MODE_MS: u64 = 200;
/// Daemon period.
const PERIOD_US: u64 = 1_000;
/// Checkpoint interval handed to sync runs.
const CHECKPOINT_MS: u64 = 1_000;
/// Pause before restarting a sync run that failed.
const SYNC_RETRY_MS: u64 = 1_000;

/// One member's metadata writes: its channel, name, and (byte offset, bytes) blocks.
pub(crate) type MetaTarget = (Rc<Channel>, String, Vec<(u64, Vec<u8>)>);

/// The answer of [`write_meta`]: per target, the first failure.
type MetaDone = Box<dyn FnOnce(Vec<Option<String>>)>;
/// A finished superblock write: per member its failure, and whether it opens the write gate.
type SbDone = (Vec<(Who, Option<String>)>, bool);

/// Writes every target's blocks at once; `done` gets, per target, the first failure (None: all
/// written). Called on a reactor; `done` runs there, from a poller.
pub(crate) fn write_meta(targets: Vec<MetaTarget>, done: impl FnOnce(Vec<Option<String>>) + 'static) {
    struct Pending {
        left: usize,
        errs: Vec<Option<String>>,
        done: Option<MetaDone>,
    }
    let total: usize = targets.iter().map(|t| t.2.len()).sum();
    let st = Rc::new(RefCell::new(Pending {
        left: total,
        errs: vec![None; targets.len()],
        done: Some(Box::new(done)),
    }));
    if total == 0 {
        // Still answer from a poller, never on the caller's stack.
        meta_io::defer(move || {
            if let Some(d) = st.borrow_mut().done.take() {
                d(Vec::new());
            }
        });
        return;
    }
    for (i, (ch, name, blocks)) in targets.into_iter().enumerate() {
        for (at, data) in blocks {
            let st = st.clone();
            let name = name.clone();
            let ch2 = ch.clone();
            meta_io::write(&ch, at, &data, move |status: IoStatus| {
                let _keep = ch2;
                let mut s = st.borrow_mut();
                if !status.is_success() && s.errs[i].is_none() {
                    s.errs[i] = Some(format!(
                        "writing metadata at byte {at} of '{name}' failed: {}",
                        status.name()
                    ));
                }
                s.left -= 1;
                if s.left == 0 {
                    let errs = std::mem::take(&mut s.errs);
                    let d = s.done.take();
                    drop(s);
                    if let Some(d) = d {
                        d(errs)
                    }
                }
            });
        }
    }
}

/// Results that arrive from completions, picked up by the next poll.
#[derive(Default)]
struct Inbox {
    /// A superblock write finished: per target (role or spare index) the failure.
    sb_done: Option<SbDone>,
    sync_done: Option<SyncOutcome>,
    checkpoint: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Role(usize),
    Spare(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopPhase {
    Running,
    WaitSync,
    WaitUnregister,
    WaitIdle,
    FinalSb,
}

struct Daemon {
    reg: std::sync::Weak<MdRegistry>,
    array: Arc<Array>,
    t0: Instant,
    disk: Option<IntentDisk>,
    /// Main-core channels per role, with the member identity they belong to.
    chans: Vec<(u64, Option<Rc<Channel>>)>,
    /// Main-core channels of the written members (for the bitmap), and their fingerprint.
    writable: Vec<Rc<Channel>>,
    writable_key: u64,
    sync: Option<(SyncAction, Vec<MemberIdx>, SyncHandle)>,
    sync_retry_at_ms: u64,
    sb_inflight: bool,
    /// What the superblocks say (or will, after the write in flight): "active".
    sb_active: bool,
    /// The next superblock write opens the write gate when done.
    open_gate_after: bool,
    last_activity: u64,
    last_activity_ms: u64,
    stop: StopPhase,
    unregistered: Arc<AtomicBool>,
    refreshing: Arc<AtomicBool>,
    inbox: Rc<RefCell<Inbox>>,
}

/// Starts the daemon of `array` on the current (main) reactor.
pub(crate) fn start(reg: Arc<MdRegistry>, array: Arc<Array>) {
    let disk = array.bitmap_offset_bytes.map(IntentDisk::new);
    let sb_active = array.shared.gate.is_dirty();
    let d = Daemon {
        reg: Arc::downgrade(&reg),
        array: array.clone(),
        t0: Instant::now(),
        disk,
        chans: Vec::new(),
        writable: Vec::new(),
        writable_key: 0,
        sync: None,
        sync_retry_at_ms: 0,
        sb_inflight: false,
        sb_active,
        open_gate_after: false,
        last_activity: 0,
        last_activity_ms: 0,
        stop: StopPhase::Running,
        unregistered: Arc::new(AtomicBool::new(false)),
        refreshing: Arc::new(AtomicBool::new(false)),
        inbox: Rc::default(),
    };
    let handle: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
    let h2 = handle.clone();
    let mut d = Some(d);
    let h = current().register_timed_poller(format!("md_daemon_{}", array.name), PERIOD_US, move || {
        let Some(dm) = d.as_mut() else {
            return PollStatus::Idle;
        };
        let (busy, finished) = dm.poll();
        if finished {
            d = None;
            h2.borrow_mut().take();
        }
        PollStatus::from_work(busy)
    });
    *handle.borrow_mut() = Some(h);
    // The reactors are asked to stop: stop the array first (final superblocks, members let go).
    let a2 = array.clone();
    current().on_shutdown(move || {
        let _ = a2.request_stop(None);
    });
}

impl Daemon {
    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// One step. Returns (did work, finished).
    fn poll(&mut self) -> (bool, bool) {
        let mut busy = self.array.wake.swap(false, Ordering::SeqCst);
        let now = self.now_ms();
        busy |= self.collect(now);
        if self.array.ctl().stopping || self.stop != StopPhase::Running {
            return self.step_stop(busy);
        }
        if std::mem::take(&mut self.array.ctl().interrupt) {
            if let Some((_, _, h)) = &self.sync {
                h.stop();
                busy = true;
            }
        }
        busy |= self.handle_failures();
        busy |= self.dirty_marking(now);
        busy |= self.bitmap(now);
        busy |= self.schedule_sync(now);
        busy |= self.write_sbs();
        (busy, false)
    }

    /// Picks up completions.
    fn collect(&mut self, now: u64) -> bool {
        let (sb, sync_out, cp) = {
            let mut ib = self.inbox.borrow_mut();
            (
                ib.sb_done.take(),
                ib.sync_done.take(),
                std::mem::take(&mut ib.checkpoint),
            )
        };
        let mut busy = false;
        if let Some((results, opens)) = sb {
            busy = true;
            self.sb_inflight = false;
            let mut ctl = self.array.ctl();
            for (who, err) in results {
                let Some(e) = err else { continue };
                tracing::warn!(array = %self.array.name, error = %e, "md: superblock write failed; member marked faulty");
                match who {
                    Who::Role(r) => self.array.shared.fail_member(r),
                    Who::Spare(id) => {
                        if let Some(i) = ctl.spares.iter().position(|m| m.id == id) {
                            let m = ctl.spares.remove(i);
                            ctl.faulty.push(m);
                            ctl.sb_needed = true;
                        }
                    }
                }
            }
            drop(ctl);
            if opens {
                self.array.shared.gate.set_dirty();
            }
        }
        if cp {
            busy = true;
            self.array.ctl().sb_needed = true;
        }
        if let Some(out) = sync_out {
            busy = true;
            let (action, targets, _h) = self.sync.take().expect("a sync was running");
            let mut ctl = self.array.ctl();
            // The run is over for md_get_arrays only now, with its outcome taken in below
            // (under the same lock `info` reads the rest with).
            self.array.progress.action.store(0, Ordering::SeqCst);
            match out {
                SyncOutcome::Done { mismatch_sectors } => {
                    tracing::info!(array = %self.array.name, ?action, mismatch_sectors, "md: sync finished");
                    ctl.last_action = Some(action);
                    match action {
                        SyncAction::Resync => self.array.shared.set_resync_cp(MAX_SECTOR),
                        SyncAction::Recover => {
                            for t in targets {
                                let slot = &self.array.shared.slots[t.idx()];
                                if slot.state() == SlotState::Rebuilding {
                                    slot.set_state(SlotState::InSync);
                                    slot.set_recovered_sectors(MAX_SECTOR);
                                }
                            }
                            ctl.readd_bitmap = false;
                        }
                        SyncAction::Check | SyncAction::Repair => ctl.mismatch_sectors = mismatch_sectors,
                    }
                    if matches!(ctl.request, SyncRequest::Run(a) if a == action) {
                        ctl.request = SyncRequest::Auto;
                    }
                }
                SyncOutcome::Stopped { at_sector } => {
                    tracing::info!(array = %self.array.name, ?action, at_sector, "md: sync interrupted");
                    if matches!(ctl.request, SyncRequest::Run(a) if a == action) {
                        ctl.request = SyncRequest::Auto;
                    }
                }
                SyncOutcome::Failed { at_sector, reason } => {
                    tracing::warn!(array = %self.array.name, ?action, at_sector, %reason, "md: sync failed");
                    self.sync_retry_at_ms = now + SYNC_RETRY_MS;
                    if matches!(ctl.request, SyncRequest::Run(a) if a == action) {
                        ctl.request = SyncRequest::Auto;
                    }
                }
            }
            ctl.sb_needed = true;
        }
        busy
    }

    /// Faulty or vanished members out, spares in.
    fn handle_failures(&mut self) -> bool {
        let shared = &self.array.shared;
        let kicked = shared.take_kick();
        let mut ctl = self.array.ctl();
        // Vanishing members fail.
        for (r, s) in ctl.slots.iter().enumerate() {
            if s.as_ref().is_some_and(|m| m.removed.load(Ordering::SeqCst)) && shared.slots[r].fail() {
                tracing::warn!(array = %self.array.name, role = r, "md: member bdev removed");
            }
        }
        let gone_spares = ctl.spares.iter().any(|m| m.removed.load(Ordering::SeqCst))
            || ctl.faulty.iter().any(|m| m.removed.load(Ordering::SeqCst));
        if gone_spares {
            ctl.spares.retain(|m| !m.removed.load(Ordering::SeqCst));
            ctl.faulty.retain(|m| !m.removed.load(Ordering::SeqCst));
            ctl.sb_needed = true;
        }
        let faulty: Vec<usize> = (0..ctl.slots.len())
            .filter(|&r| ctl.slots[r].is_some() && shared.slots[r].state() == SlotState::Faulty)
            .collect();
        if faulty.is_empty() && !kicked && !gone_spares {
            drop(ctl);
            return self.activate_spares();
        }
        for &r in &faulty {
            let m = ctl.slots[r].take().expect("checked");
            tracing::warn!(array = %self.array.name, role = r, member = %m.name, "md: member faulty, array degraded");
            shared.slots[r].set_state(SlotState::Missing);
            shared.slots[r].set_recovered_sectors(0);
            if m.removed.load(Ordering::SeqCst) {
                drop(m);
            } else {
                ctl.faulty.push(m);
            }
        }
        // A run over a member that left ends: its channels are the old members', and a late
        // failure of one would be charged to the role — to whoever holds it next. It resumes
        // (resync from its checkpoint, recovery onto what rebuilds) once it has ended.
        if !faulty.is_empty() {
            if let Some((_, _, h)) = &self.sync {
                h.stop();
            }
        }
        let states = shared.states();
        let health = self.array.layout.health(&|m| states[m.idx()] == SlotState::InSync);
        if health == Health::Failed && !ctl.failed {
            tracing::error!(array = %self.array.name, "md: not enough working members: array failed");
            ctl.failed = true;
        }
        ctl.sb_needed = true;
        drop(ctl);
        self.refresh();
        true
    }

    /// Moves spares into missing roles (as Rebuilding). Not while a sync run is under way: its
    /// member set is fixed, and what it still has in flight to a role's old member must not be
    /// charged to the spare.
    fn activate_spares(&mut self) -> bool {
        let array = self.array.clone();
        let mut ctl = array.ctl();
        if self.sync.is_some()
            || ctl.failed
            || ctl.spares.is_empty()
            || !self.array.personality.caps().spares
            || ctl.request == SyncRequest::Frozen
        {
            return false;
        }
        let shared = &self.array.shared;
        // Rebuilding roles left by an interrupted run keep its bitmap rule; new ones may use the
        // bitmap only if every one of them is a re-add whose bitmap covers what it missed.
        let mut bitmap = ctl.readd_bitmap || !shared.slots.iter().any(|s| s.state() == SlotState::Rebuilding);
        let mut changed = false;
        for r in 0..ctl.slots.len() {
            if ctl.slots[r].is_some() || shared.slots[r].state() != SlotState::Missing {
                continue;
            }
            // The member that held the role first; else a spare that is not waiting for
            // another role.
            let pick = ctl
                .spares
                .iter()
                .position(|m| m.readd.as_ref().is_some_and(|a| a.role == r))
                .or_else(|| ctl.spares.iter().position(|m| m.readd.is_none()));
            let Some(i) = pick else { continue };
            let mut m = ctl.spares.remove(i);
            match m.readd.take() {
                Some(a) if !ctl.slots.iter().flatten().any(|s| s.sb.dev_number == a.sb.dev_number) => {
                    tracing::info!(array = %self.array.name, role = r, member = %m.name, bitmap = a.bitmap_ok,
                        "md: member re-added, recovery follows");
                    bitmap &= a.bitmap_ok;
                    m.sb = a.sb;
                }
                _ => {
                    tracing::info!(array = %self.array.name, role = r, member = %m.name, "md: spare activated, recovery follows");
                    bitmap = false;
                }
            }
            shared.slots[r].set_recovered_sectors(0);
            shared.slots[r].set_state(SlotState::Rebuilding);
            ctl.slots[r] = Some(m);
            changed = true;
        }
        if changed {
            ctl.readd_bitmap = bitmap && shared.intent.is_some();
            ctl.sb_needed = true;
            drop(ctl);
            self.refresh();
        }
        changed
    }

    /// Every core installs the current members; sync waits until they have.
    fn refresh(&mut self) {
        self.refreshing.store(true, Ordering::SeqCst);
        let f = self.refreshing.clone();
        self.array.refresh_channels(move || f.store(false, Ordering::SeqCst));
    }

    fn dirty_marking(&mut self, now: u64) -> bool {
        if !self.array.personality.caps().resync {
            return false;
        }
        let gate = &self.array.shared.gate;
        if gate.take_want_dirty() && !gate.is_dirty() && !self.open_gate_after {
            self.sb_active = true;
            self.open_gate_after = true;
            self.array.ctl().sb_needed = true;
            return true;
        }
        if !gate.is_dirty() || self.open_gate_after || self.sb_inflight {
            return false;
        }
        let act = gate.activity();
        if act != self.last_activity {
            self.last_activity = act;
            self.last_activity_ms = now;
            return false;
        }
        if now.saturating_sub(self.last_activity_ms) >= SAFE_MODE_MS && gate.try_close_for_clean() {
            self.sb_active = false;
            self.array.ctl().sb_needed = true;
            return true;
        }
        false
    }

    /// The main core's channels of the current members (opened on first use).
    fn member_chans(&mut self) -> Vec<Option<Rc<Channel>>> {
        let ctl = self.array.ctl();
        if self.chans.len() != ctl.slots.len() {
            self.chans = vec![(0, None); ctl.slots.len()];
        }
        for (r, s) in ctl.slots.iter().enumerate() {
            let id = s.as_ref().map_or(0, |m| m.id);
            if self.chans[r].0 != id {
                self.chans[r] = (id, s.as_ref().map(|m| Rc::new(m.desc.channel())));
            }
        }
        self.chans.iter().map(|c| c.1.clone()).collect()
    }

    /// A fingerprint of (member identity, state) per role; changes when the set of written
    /// members does. Computed without allocating (the daemon runs every millisecond).
    fn members_key(&self) -> u64 {
        let ctl = self.array.ctl();
        let mut key: u64 = 0xcbf2_9ce4_8422_2325;
        for (r, s) in ctl.slots.iter().enumerate() {
            let id = s.as_ref().map_or(0, |m| m.id);
            let st = self.array.shared.slots[r].state() as u64;
            key = (key ^ (id << 2 | st)).wrapping_mul(0x100_0000_01b3);
        }
        key
    }

    fn bitmap(&mut self, now: u64) -> bool {
        if self.disk.is_none() {
            return false;
        }
        let key = self.members_key();
        if key != self.writable_key {
            self.writable_key = key;
            let chans = self.member_chans();
            let shared = &self.array.shared;
            self.writable = chans
                .iter()
                .enumerate()
                .filter(|(r, _)| shared.slots[*r].writable())
                .filter_map(|(_, c)| c.clone())
                .collect();
        }
        let shared = &self.array.shared;
        let degraded = shared.slots.iter().any(|s| s.state() != SlotState::InSync);
        // The header carries the events of the superblock write about to happen: it lands first
        // (the kernel's order), so a bitmap is never older than the superblocks beside it.
        let events = {
            let ctl = self.array.ctl();
            if !self.sb_inflight && (ctl.sb_needed || self.open_gate_after) {
                ctl.events.saturating_add(1)
            } else {
                ctl.events
            }
        };
        let (Some(disk), Some(intent)) = (self.disk.as_mut(), shared.intent.as_ref()) else {
            return false;
        };
        let busy = disk.poll(intent, &self.writable, events, now, degraded);
        let failed = disk.take_failed();
        for ch in failed {
            if let Some(r) = self
                .chans
                .iter()
                .position(|c| c.1.as_ref().is_some_and(|c| Rc::ptr_eq(c, &ch)))
            {
                tracing::warn!(array = %self.array.name, role = r, "md: bitmap write failed; member marked faulty");
                shared.fail_member(r);
            }
        }
        busy
    }

    fn schedule_sync(&mut self, now: u64) -> bool {
        if self.sync.is_some() || self.refreshing.load(Ordering::SeqCst) || now < self.sync_retry_at_ms {
            return false;
        }
        if self.array.layout.sync().is_none() {
            return false;
        }
        let shared = self.array.shared.clone();
        let (request, failed, readd_bitmap) = {
            let ctl = self.array.ctl();
            (ctl.request, ctl.failed, ctl.readd_bitmap)
        };
        if failed || request == SyncRequest::Frozen {
            return false;
        }
        let rebuilding: Vec<MemberIdx> = if shared.slots.iter().any(|s| s.state() == SlotState::Rebuilding) {
            (0..shared.slots.len())
                .filter(|&r| shared.slots[r].state() == SlotState::Rebuilding)
                .map(|r| MemberIdx(r as u16))
                .collect()
        } else {
            Vec::new()
        };
        let (action, start_sector, targets, bitmap_only) = if !rebuilding.is_empty() {
            let recovered = rebuilding
                .iter()
                .map(|r| shared.slots[r.idx()].recovered_sectors())
                .min()
                .unwrap_or(0);
            let start = self.array.layout.sync().map_or(0, |s| s.recovery_start(recovered));
            (
                SyncAction::Recover,
                start,
                rebuilding,
                readd_bitmap && shared.intent.is_some(),
            )
        } else if shared.resync_cp() != MAX_SECTOR {
            (
                SyncAction::Resync,
                shared.resync_cp(),
                Vec::new(),
                shared.intent.is_some(),
            )
        } else if let SyncRequest::Run(a) = request {
            if a == SyncAction::Resync {
                shared.set_resync_cp(0);
            }
            (a, 0, Vec::new(), false)
        } else {
            return false;
        };
        let members = self.member_chans();
        let inbox = self.inbox.clone();
        let inbox2 = self.inbox.clone();
        let job = SyncJob {
            action,
            name: self.array.name.clone(),
            shared,
            layout: self.array.layout.clone(),
            members,
            start_sector,
            targets: targets.clone(),
            bitmap_only,
            speed: self.array.speed.clone(),
            progress: self.array.progress.clone(),
            on_checkpoint: Box::new(move |_| inbox2.borrow_mut().checkpoint = true),
            checkpoint_interval_ms: CHECKPOINT_MS,
        };
        tracing::info!(array = %self.array.name, ?action, start_sector, bitmap_only, "md: sync starting");
        let h = sync::start(job, move |out| inbox.borrow_mut().sync_done = Some(out));
        self.sync = Some((action, targets, h));
        true
    }

    /// Launches one superblock write if one is needed and none is in flight.
    fn write_sbs(&mut self) -> bool {
        if self.sb_inflight {
            return false;
        }
        let mut ctl = self.array.ctl();
        if !ctl.sb_needed && !self.open_gate_after {
            return false;
        }
        if let Some(disk) = &self.disk {
            if disk.events_on_disk() < ctl.events.saturating_add(1) {
                // The bitmap header with the new count goes first (see `bitmap`).
                return false;
            }
        }
        ctl.sb_needed = false;
        // Never wraps: decoding refuses events above `MAX_EVENTS` (2^32 updates below
        // u64::MAX), so this saturates only in theory.
        ctl.events = ctl.events.saturating_add(1);
        let mut targets: Vec<MetaTarget> = Vec::new();
        let mut whos = Vec::new();
        let active = self.sb_active;
        let mut sbs: Vec<(Who, crate::superblock::Superblock)> = Vec::new();
        for (r, s) in ctl.slots.iter().enumerate() {
            let Some(m) = s else { continue };
            if !self.array.shared.slots[r].writable() {
                continue;
            }
            sbs.push((Who::Role(r), self.array.member_sb(&ctl, m, Some(r), active)));
        }
        for m in &ctl.spares {
            sbs.push((Who::Spare(m.id), self.array.member_sb(&ctl, m, None, active)));
        }
        for (who, sb) in sbs {
            let m: &mut MemberRec = match who {
                Who::Role(r) => ctl.slots[r].as_mut().expect("listed"),
                Who::Spare(id) => ctl.spares.iter_mut().find(|m| m.id == id).expect("listed"),
            };
            targets.push((
                Rc::new(m.desc.channel()),
                m.name.clone(),
                vec![(V1_2_SUPER_OFFSET_SECTORS * 512, sb.encode().to_vec())],
            ));
            // Remember what was written.
            m.sb = sb;
            whos.push(who);
        }
        drop(ctl);
        let opens = std::mem::take(&mut self.open_gate_after);
        self.sb_inflight = true;
        let inbox = self.inbox.clone();
        write_meta(targets, move |errs| {
            let results = whos.into_iter().zip(errs).collect();
            inbox.borrow_mut().sb_done = Some((results, opens));
        });
        true
    }

    /// The stop state machine (see the module docs). Returns (busy, finished).
    fn step_stop(&mut self, mut busy: bool) -> (bool, bool) {
        loop {
            match self.stop {
                StopPhase::Running => {
                    busy = true;
                    if let Some((_, _, h)) = &self.sync {
                        h.stop();
                        self.stop = StopPhase::WaitSync;
                    } else {
                        self.unregister();
                    }
                }
                StopPhase::WaitSync => {
                    if self.sync.is_some() {
                        return (busy, false);
                    }
                    self.unregister();
                }
                StopPhase::WaitUnregister => {
                    if !self.unregistered.load(Ordering::SeqCst) {
                        return (busy, false);
                    }
                    self.stop = StopPhase::WaitIdle;
                }
                StopPhase::WaitIdle => {
                    if self.sb_inflight || self.array.shared.gate.writes_in_flight() != 0 {
                        return (busy, false);
                    }
                    self.sb_active = false;
                    self.open_gate_after = false;
                    self.array.ctl().sb_needed = true;
                    self.stop = StopPhase::FinalSb;
                }
                StopPhase::FinalSb => {
                    let now = self.now_ms();
                    busy |= self.bitmap(now);
                    busy |= self.write_sbs();
                    if self.sb_inflight || self.array.ctl().sb_needed {
                        return (busy, false);
                    }
                    let (done, recs) = {
                        let mut ctl = self.array.ctl();
                        let mut recs: Vec<MemberRec> = ctl.slots.iter_mut().filter_map(|s| s.take()).collect();
                        recs.append(&mut ctl.spares);
                        recs.append(&mut ctl.faulty);
                        (ctl.stop.take(), recs)
                    };
                    self.chans.clear();
                    self.writable.clear();
                    drop(recs);
                    tracing::info!(array = %self.array.name, "md: array stopped");
                    if let Some(d) = done {
                        d(Ok(()));
                    }
                    return (true, true);
                }
            }
        }
    }

    fn unregister(&mut self) {
        self.stop = StopPhase::WaitUnregister;
        if let Some(reg) = self.reg.upgrade() {
            reg.arrays
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|a| !Arc::ptr_eq(a, &self.array));
            let flag = self.unregistered.clone();
            let r = reg.bdevs().and_then(|b| {
                b.unregister(&self.array.name, move || flag.store(true, Ordering::SeqCst))
                    .map_err(MdError::Bdev)
            });
            if let Err(e) = r {
                tracing::warn!(array = %self.array.name, error = %e, "md stop: array bdev was already gone");
                self.unregistered.store(true, Ordering::SeqCst);
            }
        } else {
            self.unregistered.store(true, Ordering::SeqCst);
        }
    }
}
