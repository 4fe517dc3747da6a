//! The layout, per-core lane and sync step of copy levels (raid1, raid10): every array sector
//! has copies on several members. A level supplies where the copies are as [`Copies`].
//!
//! # Data path
//!
//! Reads go to one readable copy: in the part of the array not yet resynced (the resync
//! checkpoint counts in array sectors here: a mirror's sync space is the array), the first
//! readable copy (as Linux does); elsewhere the copy whose member last read the preceding sector
//! (sequential streams stay on one member) and otherwise the next in a per-core rotation
//! (in-place forwarded successes are not observed, so load is balanced by rotation). A
//! single-chunk read is forwarded in place; a failure marks that member faulty and the read is
//! sent to another copy ([`Lane::forward_failed`]). Crossing reads are split, each child on its
//! own copy, retried the same way ([`Lane::child_failed`]).
//!
//! Writes, unmaps and write-zeroes arrive through the core's write gate with their ticket and
//! fan out to every writable copy of every piece (the cursor's `sub` walks the copies). A copy
//! that is not writable, or a member write that fails (the member is marked faulty), marks the
//! parent degraded; the write still succeeds when the array, without the faulty members, still
//! holds every sector (Linux raid1/raid10 semantics, [`Lane::parent_done`]); the ticket ends
//! with "not every copy written", so the bitmap chunk stays dirty. A failing flush or reset
//! marks its member faulty and counts as done.
//!
//! # Sync step
//!
//! A window is cut into pieces at chunk boundaries and at [`PIECE_MAX_SECTORS`] (64 KiB,
//! Linux's resync block); every copy of a piece sits at one member range. Each piece runs a
//! small state machine — read stage, then (if anything must be written) write stage. A piece's
//! data lands in the window buffer at the piece's offset: one buffer for resync/recover (the
//! source copy), one per copy index for check/repair.
//!
//! * Resync: read the first readable copy (InSync, or Rebuilding below its recovered mark) and
//!   write it to every other writable copy.
//! * Recover: read a readable copy that is not on a target role and write it to the copies on
//!   the target roles.
//! * Check: read every readable copy and compare each with the first copy that read fine, per
//!   512-byte sector; a sector counts once in the mismatches when any copy differs there.
//!   (Linux counts whole 64 KiB resync blocks; Keel's count is exact.)
//! * Repair: as check, then rewrite each differing copy's whole piece from the reference copy.
//!
//! A failed source read is read again from another copy (the engine marked the member faulty);
//! no copy left fails the run. A failed write to a recovery target fails the run.
//!
//! raid1's member sector is the array sector, so a recovery target is readable below the
//! sector the run reached and a run resumes there; raid10's rebuilt part is not a prefix of
//! member sectors, so its targets stay unreadable until the end and a run starts over.

use std::fmt::Debug;
use std::sync::Arc;

use keel_bdev::{IoBox, IoOp, IoStatus, Submit};

use crate::channel::{upward, Members};
use crate::geometry::Geometry;
use crate::layout::{MemberIdx, Place, MAX_COPIES};
use crate::personality::{
    Completion, CoreSetup, Cursor, FailedChild, Health, Lane, LaneCx, Layout, MdCore, Next, Piece, PieceRange, Step,
    SyncShape, SyncStep, Verdict, WriteTicket,
};
use crate::sync::{SyncAction, SyncIo, QUEUE_DEPTH};

/// Largest sync piece: Linux raid1/raid10's resync block (64 KiB). Also what the per-sector
/// mismatch mask (`u128`) can hold.
pub(crate) const PIECE_MAX_SECTORS: u64 = 128;
const SECTOR: usize = 512;

// One piece's stage (every copy) must fit the engine's requests, and the copy masks a `u32`.
const _: () = assert!(QUEUE_DEPTH >= MAX_COPIES && MAX_COPIES <= 32);
const _: () = assert!(PIECE_MAX_SECTORS <= 128);

/// Where a copy level keeps the copies of a sector.
pub(crate) trait Copies: Send + Sync + Debug + 'static {
    /// Every copy of `array_sector` (first copy first) into `out`; returns how many and the
    /// sectors left before the next chunk boundary (raid1: to the end of the array).
    fn copies(&self, array_sector: u64, out: &mut [Place; MAX_COPIES]) -> (usize, u64);
    /// Copies of every sector.
    fn copy_count(&self) -> usize;
    /// Roles the map places copies on.
    fn roles(&self) -> usize;
    /// Whether every sector keeps a copy on a member `live` says works.
    fn survives(&self, live: &dyn Fn(MemberIdx) -> bool) -> bool;
    /// The chunk (0: none): sync pieces never cross it.
    fn chunk_sectors(&self) -> u64;
    /// Whether a copy's member sector is its array sector (a recovery target is then valid
    /// below the array sector a run reached).
    fn member_is_array_sector(&self) -> bool;
}

/// The layout of a copy level.
#[derive(Debug)]
pub(crate) struct MirrorLayout<C> {
    map: Arc<C>,
    geo: Arc<Geometry>,
}

impl<C: Copies> MirrorLayout<C> {
    pub(crate) fn new(map: C, geo: Geometry) -> Arc<MirrorLayout<C>> {
        Arc::new(MirrorLayout {
            map: Arc::new(map),
            geo: Arc::new(geo),
        })
    }
}

impl<C: Copies> Layout for MirrorLayout<C> {
    fn geometry(&self) -> &Arc<Geometry> {
        &self.geo
    }

    fn health(&self, live: &dyn Fn(MemberIdx) -> bool) -> Health {
        if !self.map.survives(live) {
            Health::Failed
        } else if (0..self.geo.roles()).all(|r| live(MemberIdx(r as u16))) {
            Health::Optimal
        } else {
            Health::Degraded
        }
    }

    fn core(self: Arc<Self>, setup: CoreSetup) -> MdCore {
        let roles = self.geo.roles();
        MdCore::new(
            setup,
            MirrorLane {
                map: self.map.clone(),
                block_shift: self.geo.block_shift,
                layout: self,
                copies: [Place::ZERO; MAX_COPIES],
                rr: 0,
                next_read: vec![u64::MAX; roles],
            },
        )
    }

    fn sync(&self) -> Option<&dyn SyncShape> {
        Some(self)
    }
}

impl<C: Copies> SyncShape for MirrorLayout<C> {
    /// Mirrors sync in array sectors (as Linux raid1/raid10).
    fn sync_sectors(&self) -> u64 {
        self.geo.size_sectors
    }

    fn buffers(&self, action: SyncAction) -> usize {
        match action {
            SyncAction::Resync | SyncAction::Recover => 1,
            SyncAction::Check | SyncAction::Repair => self.map.copy_count().clamp(1, MAX_COPIES),
        }
    }

    fn min_piece_sectors(&self) -> u64 {
        match self.map.chunk_sectors() {
            0 => PIECE_MAX_SECTORS,
            c => c.clamp(1, PIECE_MAX_SECTORS),
        }
    }

    fn check(&self, roles: usize, block_sectors: u64) -> Result<(), String> {
        let mapped = self.map.roles();
        if mapped != roles {
            return Err(format!(
                "the layout maps {mapped} members but the array has {roles} roles"
            ));
        }
        let chunk = self.map.chunk_sectors();
        if chunk & (block_sectors - 1) != 0 {
            return Err(format!("chunk of {chunk} sectors is smaller than a member block"));
        }
        Ok(())
    }

    fn recovered_member_sectors(&self, reached: u64) -> Option<u64> {
        self.map.member_is_array_sector().then_some(reached)
    }

    fn recovery_start(&self, recovered: u64) -> u64 {
        if self.map.member_is_array_sector() {
            recovered
        } else {
            0
        }
    }

    fn step(&self, action: SyncAction, max_pieces: usize) -> Box<dyn SyncStep> {
        Box::new(MirrorStep {
            map: self.map.clone(),
            action,
            pieces: Vec::with_capacity(max_pieces),
        })
    }
}

/// A copy layout's lane on one core.
pub(crate) struct MirrorLane<C> {
    /// The layout's map and block shift, held here too: one pointer hop per request.
    map: Arc<C>,
    block_shift: u32,
    layout: Arc<MirrorLayout<C>>,
    /// Scratch for the copies of the sector being mapped.
    copies: [Place; MAX_COPIES],
    /// Read rotation.
    rr: usize,
    /// Per role: the sector after the last read sent there (sequential detection).
    next_read: Vec<u64>,
}

impl<C: Copies> MirrorLane<C> {
    /// Picks the copy (of `self.copies[..k]`) to read `[array_sector, + len)` from, skipping
    /// `avoid`. Returns the role and the member sector.
    #[inline]
    fn pick_copy(
        &mut self,
        m: &Members,
        k: usize,
        array_sector: u64,
        len: u64,
        avoid: Option<MemberIdx>,
    ) -> Option<(MemberIdx, u64)> {
        let unsynced = array_sector + len > m.resync_cp();
        let usable = |p: &Place| Some(p.member) != avoid && m.readable(p.member, p.sector, len);
        let mut first = None;
        let mut seq = None;
        let mut count = 0usize;
        for p in &self.copies[..k] {
            if !usable(p) {
                continue;
            }
            if first.is_none() {
                first = Some((p.member, p.sector));
                if unsynced {
                    break;
                }
            }
            if seq.is_none() && self.next_read[p.member.idx()] == p.sector {
                seq = Some((p.member, p.sector));
            }
            count += 1;
        }
        let pick = if unsynced || count <= 1 {
            first
        } else if seq.is_some() {
            seq
        } else {
            self.rr = self.rr.wrapping_add(1);
            let want = self.rr % count;
            self.copies[..k]
                .iter()
                .filter(|p| usable(p))
                .nth(want)
                .map(|p| (p.member, p.sector))
                .or(first)
        };
        if let Some((member, s)) = pick {
            self.next_read[member.idx()] = s + len;
        }
        pick
    }
}

impl<C: Copies> Lane for MirrorLane<C> {
    #[inline(always)]
    fn submit(&mut self, cx: &mut LaneCx<'_>, io: IoBox, ticket: Option<WriteTicket>) -> Submit {
        let bs = self.block_shift;
        let start = io.offset_blocks << bs;
        let len = io.num_blocks << bs;
        if io.op != IoOp::Read {
            return cx.split(self, io, start, start + len, ticket);
        }
        let (k, left) = self.map.copies(start, &mut self.copies);
        if len > left {
            return cx.split(self, io, start, start + len, ticket);
        }
        match self.pick_copy(cx.m, k, start, len, None) {
            Some((member, sector)) => cx.forward(self, io, member, sector, start),
            None => {
                io.complete(IoStatus::Failed);
                Submit::Accepted
            }
        }
    }

    #[inline]
    fn next_piece(&mut self, m: &Members, op: IoOp, cur: &mut Cursor) -> Piece {
        let (k, left) = self.map.copies(cur.next, &mut self.copies);
        let sectors = left.min(cur.end - cur.next);
        let array_sector = cur.next;
        if op == IoOp::Read {
            return match self.pick_copy(m, k, array_sector, sectors, None) {
                Some((member, member_sector)) => {
                    cur.next += sectors;
                    Piece::Child {
                        member,
                        member_sector,
                        array_sector,
                        sectors,
                    }
                }
                // No readable copy: the rest of the parent fails.
                None => Piece::Fail,
            };
        }
        // Every writable copy of the piece, then the next piece.
        let copy = cur.sub as usize;
        if copy >= k {
            cur.next += sectors;
            cur.sub = 0;
            return Piece::Again;
        }
        cur.sub += 1;
        let place = self.copies[copy];
        if !m.writable(place.member) {
            cur.degraded = true;
            return Piece::Again;
        }
        Piece::Child {
            member: place.member,
            member_sector: place.sector,
            array_sector,
            sectors,
        }
    }

    fn child_failed(&mut self, m: &Members, child: &FailedChild) -> Verdict {
        m.fail_member(child.member);
        if child.op != IoOp::Read {
            // Writes, flushes and resets: the member is out, the others carry on.
            return Verdict::Absorb;
        }
        let (k, _) = self.map.copies(child.array_sector, &mut self.copies);
        match self.pick_copy(m, k, child.array_sector, child.sectors, Some(child.member)) {
            Some((member, member_sector)) => Verdict::Retry { member, member_sector },
            None => Verdict::Fail,
        }
    }

    /// A degraded write succeeds when every sector still has an in-sync copy that took it.
    fn parent_done(&mut self, m: &Members, _op: IoOp, status: IoStatus, degraded: bool) -> IoStatus {
        if !degraded {
            return status;
        }
        let ok = self.layout.health(&|r| m.in_sync(r)) != Health::Failed;
        if ok && status != IoStatus::Failed {
            IoStatus::Success
        } else {
            IoStatus::Failed
        }
    }

    fn forward_failed(&mut self, cx: &mut LaneCx<'_>, io: IoBox, member: MemberIdx) {
        let status = io.status();
        if io.op != IoOp::Read || status == IoStatus::Aborted {
            return io.complete(upward(status));
        }
        cx.m.fail_member(member);
        let bs = self.block_shift;
        let start = io.offset_blocks << bs;
        let len = io.num_blocks << bs;
        let (k, _) = self.map.copies(start, &mut self.copies);
        match self.pick_copy(cx.m, k, start, len, Some(member)) {
            Some((m2, sector)) => {
                if let Submit::Requeue(io) = cx.forward(self, io, m2, sector, start) {
                    // No room below right now: fail rather than spin (the bdev layer may retry).
                    io.complete(IoStatus::Failed);
                }
            }
            None => io.complete(IoStatus::Failed),
        }
    }

    fn fanout_to(&self, m: &Members, member: MemberIdx) -> bool {
        m.writable(member)
    }

    fn member_changed(&mut self, member: MemberIdx) {
        self.next_read[member.idx()] = u64::MAX;
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

/// One piece's progress.
#[derive(Debug, Clone, Copy, Default)]
struct MirrorPiece {
    stage: Stage,
    /// Resync/recover: copy index read from. Check/repair: the reference copy.
    src: u8,
    /// Resync/recover: copies that failed as a source. Check/repair: copies read fine.
    mask: u32,
    /// Repair: copies to rewrite.
    write_mask: u32,
}

/// A copy level's sync step (module docs).
struct MirrorStep<C> {
    map: Arc<C>,
    action: SyncAction,
    pieces: Vec<MirrorPiece>,
}

impl<C: Copies> MirrorStep<C> {
    fn no_copy(p: PieceRange) -> String {
        format!(
            "no readable copy of array sectors {}..{}",
            p.sector,
            p.sector + p.len_sectors
        )
    }

    /// Check/repair: every copy of piece `i` was read; counts and plans rewrites.
    fn compare(&mut self, i: usize, p: PieceRange, io: &mut SyncIo) -> Next {
        let st = self.pieces[i];
        if st.mask == 0 {
            return Next::Failed(Self::no_copy(p));
        }
        let r = st.mask.trailing_zeros() as usize;
        let off = (p.sector - io.win_start()) as usize * SECTOR;
        let len = p.len_sectors as usize * SECTOR;
        let mut diff_sectors = 0u128;
        let mut write_mask = 0u32;
        {
            let rb = io.buf(r).bytes();
            let a = &rb[off..off + len];
            for c in (r + 1)..MAX_COPIES {
                if st.mask & (1 << c) == 0 {
                    continue;
                }
                let cb = io.buf(c).bytes();
                let b = &cb[off..off + len];
                for (s, (x, y)) in a.chunks_exact(SECTOR).zip(b.chunks_exact(SECTOR)).enumerate() {
                    if x != y {
                        diff_sectors |= 1 << s;
                        write_mask |= 1 << c;
                    }
                }
            }
        }
        io.add_mismatches(diff_sectors.count_ones() as u64);
        let piece = &mut self.pieces[i];
        piece.src = r as u8;
        if self.action == SyncAction::Repair && write_mask != 0 {
            piece.write_mask = write_mask;
            piece.stage = Stage::Write;
            Next::Again
        } else {
            piece.stage = Stage::Done;
            Next::Done
        }
    }
}

impl<C: Copies> SyncStep for MirrorStep<C> {
    fn piece_sectors(&self, sector: u64, left: u64) -> u64 {
        let mut places = [Place::ZERO; MAX_COPIES];
        let (_, chunk_left) = self.map.copies(sector, &mut places);
        chunk_left.min(left).min(PIECE_MAX_SECTORS)
    }

    fn begin_window(&mut self, pieces: usize) {
        self.pieces.clear();
        self.pieces.resize(pieces, MirrorPiece::default());
    }

    fn issue(&mut self, i: usize, p: PieceRange, io: &mut SyncIo) -> Step {
        let st = self.pieces[i];
        let mut places = [Place::ZERO; MAX_COPIES];
        let (k, _) = self.map.copies(p.sector, &mut places);
        let len = p.len_sectors;
        let readable = |c: usize| io.readable(places[c].member, places[c].sector, len);
        let writable = |c: usize| io.writable(places[c].member);
        let reading = st.stage == Stage::Read;
        let mut src = st.src as usize;
        let mut mask = 0u32;
        match (st.stage, self.action) {
            (Stage::Read, SyncAction::Resync | SyncAction::Recover) => {
                let recover = self.action == SyncAction::Recover;
                let found = (0..k)
                    .find(|&c| st.mask & (1 << c) == 0 && readable(c) && !(recover && io.is_target(places[c].member)));
                match found {
                    Some(c) => {
                        src = c;
                        mask = 1 << c;
                    }
                    None => return Step::Failed(Self::no_copy(p)),
                }
            }
            (Stage::Read, SyncAction::Check | SyncAction::Repair) => {
                for c in 0..k {
                    if readable(c) {
                        mask |= 1 << c;
                    }
                }
                if mask == 0 {
                    return Step::Failed(Self::no_copy(p));
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
                    if io.is_target(place.member) {
                        if !writable(c) {
                            return Step::Failed(format!("recovery target role {} failed", place.member.0));
                        }
                        mask |= 1 << c;
                    }
                }
            }
            (Stage::Write, SyncAction::Check) => {}
            (Stage::Write, SyncAction::Repair) => {
                for c in 0..k {
                    if st.write_mask & (1 << c) != 0 && writable(c) {
                        mask |= 1 << c;
                    }
                }
            }
            _ => return Step::Issued,
        }
        let n = mask.count_ones() as usize;
        if n > io.free() {
            return Step::Busy;
        }
        let piece = &mut self.pieces[i];
        piece.src = src as u8;
        if n == 0 {
            // Nothing to write (every other copy is gone): the piece is done.
            piece.stage = Stage::Done;
            return Step::Skipped;
        }
        piece.stage = if reading { Stage::Reading } else { Stage::Writing };
        let at = p.sector - io.win_start();
        for (c, place) in places.iter().enumerate().take(k) {
            if mask & (1 << c) == 0 {
                continue;
            }
            let buf = match self.action {
                SyncAction::Resync | SyncAction::Recover => 0,
                SyncAction::Check | SyncAction::Repair if reading => c,
                SyncAction::Check | SyncAction::Repair => src,
            };
            io.submit(i, c as u8, place.member, place.sector, len, !reading, buf, at);
        }
        Step::Issued
    }

    fn completed(&mut self, i: usize, p: PieceRange, c: Completion, io: &mut SyncIo) -> Next {
        if c.write {
            if !c.ok && self.action == SyncAction::Recover && io.is_target(c.member) {
                return Next::Failed(format!("write to recovery target role {} failed", c.member.0));
            }
            if c.left > 0 {
                return Next::Wait;
            }
            self.pieces[i].stage = Stage::Done;
            return Next::Done;
        }
        let piece = &mut self.pieces[i];
        match self.action {
            SyncAction::Resync | SyncAction::Recover => {
                if c.ok {
                    piece.stage = Stage::Write;
                } else {
                    piece.mask |= 1 << c.tag;
                    piece.stage = Stage::Read;
                }
                Next::Again
            }
            SyncAction::Check | SyncAction::Repair => {
                if c.ok {
                    piece.mask |= 1 << c.tag;
                }
                if c.left > 0 {
                    return Next::Wait;
                }
                self.compare(i, p, io)
            }
        }
    }
}
