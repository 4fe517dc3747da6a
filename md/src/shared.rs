//! The state an array's cores share with its control path: member slot states, the resync
//! checkpoint, the write gate (dirty marking, the sync window barrier, the write-intent bitmap).
//!
//! # Ownership
//!
//! One [`Shared`] per running array, in an `Arc`. Every field is an atomic: the data path on any
//! core reads it without locks, and exactly one writer changes each field — the array's control
//! path on the main reactor (member states, the checkpoint, dirty marking, the bitmap) or the sync
//! engine (the barrier window), which also runs on the main reactor. The data path itself only
//! writes: its own core's row of write counters, and a slot's state from `InSync`/`Rebuilding` to
//! `Faulty` when a member fails an I/O (with [`Shared::kick`] so the control path notices).
//!
//! # The write gate
//!
//! Levels with resync (`Caps::resync`: raid1, raid10) pass every write through
//! [`WriteGate::admit`] before it reaches a member — the per-core core does it before the level's
//! lane sees the write — and [`WriteGate::end`] after the last member acknowledged. Admission first
//! counts the write in its core's row (one counter per hashed 1 MiB bucket of array sectors,
//! `SeqCst`), then checks, in order: the superblocks are marked dirty ("active"); the sync window
//! does not cover the write's buckets; the write-intent bitmap bits of its chunks are on disk. If
//! any check fails the count is taken back and the caller holds the write (a value, not an
//! error) and tries again from its poller; the failed check has already asked the control path
//! for what is missing (`want_dirty`, a bitmap bit).
//!
//! The control path does the mirror image: it publishes first and then reads the counters
//! (`SeqCst` both sides, Dekker style), so either the writer sees the new window / clean state and
//! holds, or the control path sees the writer's count and waits (or, marking clean, backs off).
//! Hashing buckets onto [`BUCKETS`] counters per core means a window also holds the few writes
//! that land in other buckets with the same hash: that is what keeps the sync engine from
//! starving under a write load (as Linux raid1's barrier buckets do).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::intent::Intent;

/// log2 of the sectors one write-counter bucket covers (1 MiB).
pub(crate) const BUCKET_SHIFT: u32 = 11;
/// Write counters per core row (buckets hash onto them).
pub(crate) const BUCKETS: usize = 1024;
/// Most buckets one sync window may lock.
pub(crate) const MAX_WINDOW_BUCKETS: u64 = 16;
/// Rows of write counters: one per core id below this.
pub(crate) const MAX_CORES: usize = 256;
/// Index of the per-row "writes started" counter (after the buckets).
const ACTIVITY: usize = BUCKETS;

/// State of a member slot (a role of the array).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SlotState {
    /// No member in this role (degraded).
    Missing = 0,
    /// Holds valid data everywhere.
    InSync = 1,
    /// Being rebuilt: valid below [`Slot::recovered_sectors`]; written everywhere.
    Rebuilding = 2,
    /// Failed an I/O; neither read nor written; the control path removes it.
    Faulty = 3,
}

impl SlotState {
    fn from_u8(v: u8) -> SlotState {
        match v {
            1 => SlotState::InSync,
            2 => SlotState::Rebuilding,
            3 => SlotState::Faulty,
            _ => SlotState::Missing,
        }
    }

    /// The word `md_get_arrays` shows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SlotState::Missing => "missing",
            SlotState::InSync => "in_sync",
            SlotState::Rebuilding => "rebuilding",
            SlotState::Faulty => "faulty",
        }
    }
}

/// One role of the array.
#[derive(Debug)]
pub(crate) struct Slot {
    state: AtomicU8,
    /// `Rebuilding`: member sectors (from data_offset) below this hold valid data.
    recovered_sectors: AtomicU64,
}

impl Slot {
    pub(crate) fn new(state: SlotState) -> Slot {
        Slot {
            state: AtomicU8::new(state as u8),
            recovered_sectors: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn state(&self) -> SlotState {
        SlotState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Control path: sets the state.
    pub(crate) fn set_state(&self, s: SlotState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Data path: `InSync`/`Rebuilding` → `Faulty`. Returns whether this call made it faulty.
    pub(crate) fn fail(&self) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if !matches!(SlotState::from_u8(cur), SlotState::InSync | SlotState::Rebuilding) {
                return false;
            }
            match self
                .state
                .compare_exchange(cur, SlotState::Faulty as u8, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    #[inline]
    pub(crate) fn recovered_sectors(&self) -> u64 {
        self.recovered_sectors.load(Ordering::Acquire)
    }

    /// Sync engine: publishes recovery progress.
    pub(crate) fn set_recovered_sectors(&self, s: u64) {
        self.recovered_sectors.store(s, Ordering::Release);
    }

    /// Whether member sectors `[sector, sector + len)` may be read from this slot.
    #[inline]
    pub(crate) fn readable(&self, member_sector: u64, len_sectors: u64) -> bool {
        match self.state() {
            SlotState::InSync => true,
            SlotState::Rebuilding => member_sector + len_sectors <= self.recovered_sectors(),
            _ => false,
        }
    }

    /// Whether writes go to this slot.
    #[inline]
    pub(crate) fn writable(&self) -> bool {
        matches!(self.state(), SlotState::InSync | SlotState::Rebuilding)
    }
}

/// Outcome of [`WriteGate::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Counted: issue the write, call [`WriteGate::end`] when every member answered.
    Go,
    /// Not counted: hold the write and try again later.
    Hold,
}

/// Write accounting shared by the data path and the control path (see the module docs).
#[derive(Debug)]
pub(crate) struct WriteGate {
    rows: Box<[OnceLock<Box<[AtomicU32]>>]>,
    /// Sync window: `lo_bucket << 32 | hi_bucket`, empty when `lo == hi`.
    barrier: AtomicU64,
    /// The superblocks say "active": writes may go.
    dirty: AtomicBool,
    /// A writer found the array clean and asks the control path to mark it dirty.
    want_dirty: AtomicBool,
}

impl WriteGate {
    fn new(dirty: bool) -> WriteGate {
        WriteGate {
            rows: (0..MAX_CORES).map(|_| OnceLock::new()).collect(),
            barrier: AtomicU64::new(0),
            dirty: AtomicBool::new(dirty),
            want_dirty: AtomicBool::new(false),
        }
    }

    /// The row of `core` (created on first use). Called when a channel is built on that core.
    pub(crate) fn row(&self, core: u32) -> &[AtomicU32] {
        let i = (core as usize).min(MAX_CORES - 1);
        self.rows[i].get_or_init(|| (0..=BUCKETS).map(|_| AtomicU32::new(0)).collect())
    }

    #[inline]
    fn buckets(start_sector: u64, end_sector: u64) -> (u64, u64) {
        let b0 = start_sector >> BUCKET_SHIFT;
        let b1 = (end_sector.max(start_sector + 1) - 1) >> BUCKET_SHIFT;
        // More than BUCKETS buckets hash onto every counter: count each counter once.
        (b0, b1.min(b0 + BUCKETS as u64 - 1))
    }

    #[inline]
    fn count(row: &[AtomicU32], b0: u64, b1: u64, up: bool) {
        for b in b0..=b1 {
            let c = &row[(b % BUCKETS as u64) as usize];
            if up {
                c.fetch_add(1, Ordering::SeqCst);
            } else {
                c.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    #[inline]
    fn window_blocks(&self, b0: u64, b1: u64) -> bool {
        let w = self.barrier.load(Ordering::SeqCst);
        let (lo, hi) = (w >> 32, w & 0xFFFF_FFFF);
        if lo == hi {
            return false;
        }
        for b in b0..=b1 {
            let h = b % BUCKETS as u64;
            for wb in lo..hi {
                if wb % BUCKETS as u64 == h {
                    return true;
                }
            }
        }
        false
    }

    /// Data path (the channel's core, its own `row`): admits a write of array sectors
    /// `[start, end)` or says to hold it. On `Go` the caller must call [`WriteGate::end`] once.
    #[inline]
    pub(crate) fn admit(
        &self,
        row: &[AtomicU32],
        intent: Option<&Intent>,
        start_sector: u64,
        end_sector: u64,
    ) -> Admit {
        let (b0, b1) = Self::buckets(start_sector, end_sector);
        Self::count(row, b0, b1, true);
        row[ACTIVITY].fetch_add(1, Ordering::Relaxed);
        let ok = if !self.dirty.load(Ordering::SeqCst) {
            self.want_dirty.store(true, Ordering::SeqCst);
            false
        } else if self.window_blocks(b0, b1) {
            false
        } else if let Some(i) = intent {
            i.admit(start_sector, end_sector)
        } else {
            true
        };
        if ok {
            Admit::Go
        } else {
            Self::count(row, b0, b1, false);
            Admit::Hold
        }
    }

    /// Data path: a write admitted with `Go` finished on every member; `all_ok` says whether
    /// every member write succeeded (a bitmap chunk written while a member failed stays dirty).
    #[inline]
    pub(crate) fn end(
        &self,
        row: &[AtomicU32],
        intent: Option<&Intent>,
        start_sector: u64,
        end_sector: u64,
        all_ok: bool,
    ) {
        if let Some(i) = intent {
            i.end(start_sector, end_sector, all_ok);
        }
        let (b0, b1) = Self::buckets(start_sector, end_sector);
        Self::count(row, b0, b1, false);
    }

    fn rows(&self) -> impl Iterator<Item = &[AtomicU32]> {
        self.rows.iter().filter_map(|r| r.get().map(|b| &b[..]))
    }

    /// Control path: writes in flight on every core.
    pub(crate) fn writes_in_flight(&self) -> u64 {
        self.rows()
            .map(|r| {
                r[..BUCKETS]
                    .iter()
                    .map(|c| c.load(Ordering::SeqCst) as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Control path: writes started so far on every core (wrapping; compare for change).
    pub(crate) fn activity(&self) -> u64 {
        self.rows().map(|r| r[ACTIVITY].load(Ordering::Relaxed) as u64).sum()
    }

    /// Whether the superblocks are marked dirty.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Control path: a writer asked for the dirty mark (clears the request).
    pub(crate) fn take_want_dirty(&self) -> bool {
        self.want_dirty.swap(false, Ordering::SeqCst)
    }

    /// Control path: the superblocks now say "active"; held writes may go.
    pub(crate) fn set_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Control path: tries to close the gate for a clean mark: succeeds (and from now on writers
    /// hold and ask for `want_dirty`) only if no write is in flight anywhere.
    pub(crate) fn try_close_for_clean(&self) -> bool {
        self.dirty.store(false, Ordering::SeqCst);
        if self.writes_in_flight() != 0 {
            self.dirty.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Sync engine: locks array sectors `[start, end)` against writes (rounded out to buckets,
    /// at most [`MAX_WINDOW_BUCKETS`]); returns the sector where the window really ends.
    pub(crate) fn raise_barrier(&self, start_sector: u64, end_sector: u64) -> u64 {
        let lo = start_sector >> BUCKET_SHIFT;
        let hi = (end_sector.div_ceil(1 << BUCKET_SHIFT)).clamp(lo + 1, lo + MAX_WINDOW_BUCKETS);
        self.barrier.store((lo << 32) | hi, Ordering::SeqCst);
        end_sector.min(hi << BUCKET_SHIFT)
    }

    /// Sync engine: whether no admitted write overlaps the raised window (on any core).
    pub(crate) fn barrier_drained(&self) -> bool {
        let w = self.barrier.load(Ordering::SeqCst);
        let (lo, hi) = (w >> 32, w & 0xFFFF_FFFF);
        if (hi - lo) as usize >= BUCKETS {
            return self.writes_in_flight() == 0;
        }
        self.rows()
            .all(|r| (lo..hi).all(|b| r[(b % BUCKETS as u64) as usize].load(Ordering::SeqCst) == 0))
    }

    /// Sync engine: unlocks the window.
    pub(crate) fn lower_barrier(&self) {
        self.barrier.store(0, Ordering::SeqCst);
    }
}

/// Everything an array's cores share with its control path (see the module docs).
#[derive(Debug)]
pub(crate) struct Shared {
    /// One per role, role order.
    pub slots: Box<[Slot]>,
    /// Array sectors below this are in sync on every in-sync member (`u64::MAX`: all).
    resync_cp: AtomicU64,
    pub gate: WriteGate,
    /// The write-intent bitmap, when the array has one.
    pub intent: Option<Intent>,
    /// Something for the control path to look at (a member failed).
    kick: AtomicBool,
}

impl Shared {
    /// Built by the control path when an array starts. `dirty`: whether the superblocks
    /// already say "active" (false for a clean array: the first write marks it).
    pub(crate) fn new(states: &[SlotState], resync_cp: u64, dirty: bool, intent: Option<Intent>) -> Shared {
        Shared {
            slots: states.iter().map(|&s| Slot::new(s)).collect(),
            resync_cp: AtomicU64::new(resync_cp),
            gate: WriteGate::new(dirty),
            intent,
            kick: AtomicBool::new(false),
        }
    }

    /// Array sectors below this hold the same data on every in-sync member.
    #[inline]
    pub(crate) fn resync_cp(&self) -> u64 {
        self.resync_cp.load(Ordering::Acquire)
    }

    /// Sync engine / control path: publishes resync progress (`u64::MAX` when done).
    pub(crate) fn set_resync_cp(&self, s: u64) {
        self.resync_cp.store(s, Ordering::Release);
    }

    /// Data path: member `m` failed an I/O. Marks it faulty and wakes the control path.
    pub(crate) fn fail_member(&self, m: usize) {
        if self.slots[m].fail() {
            self.kick.store(true, Ordering::SeqCst);
        }
    }

    /// Control path: whether something was kicked since the last call.
    pub(crate) fn take_kick(&self) -> bool {
        self.kick.swap(false, Ordering::SeqCst)
    }

    /// Current slot states.
    pub(crate) fn states(&self) -> Vec<SlotState> {
        self.slots.iter().map(|s| s.state()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_holds_until_dirty_then_counts() {
        let g = WriteGate::new(false);
        let row = g.row(0);
        assert_eq!(g.admit(row, None, 0, 8), Admit::Hold);
        assert!(g.take_want_dirty());
        assert_eq!(g.writes_in_flight(), 0);
        g.set_dirty();
        assert_eq!(g.admit(row, None, 0, 8), Admit::Go);
        assert_eq!(g.writes_in_flight(), 1);
        assert!(!g.try_close_for_clean(), "a write is in flight");
        assert!(g.is_dirty());
        g.end(row, None, 0, 8, true);
        assert!(g.try_close_for_clean());
        assert_eq!(g.admit(row, None, 0, 8), Admit::Hold);
    }

    #[test]
    fn barrier_holds_overlapping_and_same_hash_writes_only() {
        let g = WriteGate::new(true);
        let row = g.row(3);
        let mib = 1u64 << BUCKET_SHIFT;
        assert_eq!(g.admit(row, None, 0, 8), Admit::Go);
        let end = g.raise_barrier(0, 4 * mib);
        assert_eq!(end, 4 * mib);
        assert!(!g.barrier_drained(), "the write in bucket 0 is in flight");
        assert_eq!(g.admit(row, None, mib, mib + 8), Admit::Hold);
        assert_eq!(g.admit(row, None, 10 * mib, 10 * mib + 8), Admit::Go);
        // Same hash as bucket 1: held too.
        assert_eq!(
            g.admit(row, None, (BUCKETS as u64 + 1) * mib, (BUCKETS as u64 + 1) * mib + 8),
            Admit::Hold
        );
        g.end(row, None, 0, 8, true);
        assert!(g.barrier_drained());
        g.lower_barrier();
        assert_eq!(g.admit(row, None, mib, mib + 8), Admit::Go);
    }

    #[test]
    fn window_is_capped() {
        let g = WriteGate::new(true);
        let end = g.raise_barrier(0, 1 << 40);
        assert_eq!(end, MAX_WINDOW_BUCKETS << BUCKET_SHIFT);
    }

    #[test]
    fn slots() {
        let s = Slot::new(SlotState::Rebuilding);
        s.set_recovered_sectors(100);
        assert!(s.readable(0, 100));
        assert!(!s.readable(50, 51));
        assert!(s.writable());
        assert!(s.fail());
        assert!(!s.fail());
        assert!(!s.writable());
    }
}
