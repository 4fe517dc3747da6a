//! The sync step of the parity levels (see [`crate::stripe`]'s module docs, "Sync"): a piece is
//! a band of member sectors inside one stripe row (at most [`PIECE_MAX_SECTORS`]), every member
//! read into its own window buffer at the piece's offset.
//!
//! * Resync, repair: with every data block read, P (and Q) are recomputed into the step's
//!   scratch and compared sector by sector with what was read; differing sectors count in the
//!   mismatches and the differing parity member is rewritten. A piece with a data block lost
//!   (degraded) has nothing to make consistent and is skipped.
//! * Check: the same comparison, nothing written.
//! * Recover: every member but the targets is read, the targets' blocks are rebuilt (data from
//!   parity, parity from data) and written.
//!
//! A failed read (the engine marked the member faulty) re-plans the piece without it; more lost
//! than the parity covers fails the run. A failed write to a recovery target fails the run.

use arrayvec::ArrayVec;
use keel_bdev::DmaBuf;
use keel_parity::Parity;

use crate::layout::MemberIdx;
use crate::parity_map::ParityMap;
use crate::personality::{Completion, Next, PieceRange, Step, SyncShape, SyncStep};
use crate::stripe::{gen_parity, rebuild, StripeLayout};
use crate::sync::{SyncAction, SyncIo, QUEUE_DEPTH};

/// Largest sync piece (Linux's resync unit for raid5/6 is a page per member; 64 KiB keeps the
/// request count low).
pub(crate) const PIECE_MAX_SECTORS: u64 = 128;
// Check/repair count a piece's mismatching sectors in a u128 mask.
const _: () = assert!(PIECE_MAX_SECTORS <= 128);
const SECTOR: usize = 512;
/// Members a sync run handles (one request per member per piece, masks in a `u32`).
const MAX_SYNC_MEMBERS: usize = if QUEUE_DEPTH < 32 { QUEUE_DEPTH } else { 32 };

impl SyncShape for StripeLayout {
    /// A member's component (Linux counts raid5/6 sync in member sectors).
    fn sync_sectors(&self) -> u64 {
        self.component_sectors
    }

    fn buffers(&self, _action: SyncAction) -> usize {
        self.map.disks as usize
    }

    fn min_piece_sectors(&self) -> u64 {
        self.map.chunk_sectors.min(PIECE_MAX_SECTORS)
    }

    fn check(&self, roles: usize, block_sectors: u64) -> Result<(), String> {
        if roles != self.map.disks as usize {
            return Err(format!(
                "the layout maps {} members but the array has {roles} roles",
                self.map.disks
            ));
        }
        if roles > MAX_SYNC_MEMBERS {
            return Err(format!("sync of more than {MAX_SYNC_MEMBERS} members is not supported"));
        }
        if self.map.chunk_sectors & (block_sectors - 1) != 0 {
            return Err(format!(
                "chunk of {} sectors is smaller than a member block",
                self.map.chunk_sectors
            ));
        }
        Ok(())
    }

    /// The sync sector is the member sector: a target is valid below it.
    fn recovered_member_sectors(&self, reached: u64) -> Option<u64> {
        Some(reached)
    }

    fn recovery_start(&self, recovered: u64) -> u64 {
        recovered
    }

    fn step(&self, action: SyncAction, max_pieces: usize) -> Box<dyn SyncStep> {
        Box::new(ParityStep {
            map: self.map,
            action,
            parity: Parity::best(),
            pieces: Vec::with_capacity(max_pieces),
            scratch: None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    #[default]
    Read,
    Reading,
    /// Computed; its writes (`ParityPiece::writes`) wait for free requests.
    Write,
    Writing,
    Done,
}

#[derive(Debug, Clone, Copy, Default)]
struct ParityPiece {
    stage: Stage,
    /// Members read fine.
    got: u32,
    /// A read failed: plan again.
    retry: bool,
    /// Members to write (stage `Write`).
    writes: u32,
}

struct ParityStep {
    map: ParityMap,
    action: SyncAction,
    parity: Parity,
    pieces: Vec<ParityPiece>,
    /// Recomputed P and Q, window-sized (made at the first window).
    scratch: Option<(DmaBuf, DmaBuf)>,
}

impl ParityStep {
    fn bufs(&self, io: &SyncIo) -> ArrayVec<DmaBuf, MAX_SYNC_MEMBERS> {
        (0..self.map.disks as usize).map(|r| io.buf(r).clone()).collect()
    }

    /// All reads of piece `i` are in: compare or rebuild, then write what needs it.
    fn compute(&mut self, i: usize, p: PieceRange, io: &mut SyncIo) -> Next {
        let map = self.map;
        let st = self.pieces[i];
        let stripe = p.sector / map.chunk_sectors;
        let pd = map.parity_disks(stripe);
        let off = (p.sector - io.win_start()) as usize * SECTOR;
        let len = p.len_sectors as usize * SECTOR;
        let bufs = self.bufs(io);
        let got: ArrayVec<bool, MAX_SYNC_MEMBERS> = (0..map.disks as usize).map(|r| st.got & (1 << r) != 0).collect();
        let mut writes: u32 = 0;
        match self.action {
            SyncAction::Recover => {
                if !rebuild(&self.parity, &map, pd, &bufs, &got, off, len) {
                    return Next::Failed(format!("stripe {stripe}: too many members lost to rebuild"));
                }
                let parity_lost = !got[pd.p as usize] || (map.has_q() && !got[pd.q as usize]);
                if parity_lost {
                    gen_parity(&self.parity, &map, pd, &bufs, off, len, None);
                }
                for r in 0..map.disks {
                    if io.is_target(MemberIdx(r)) {
                        writes |= 1 << r;
                    }
                }
            }
            SyncAction::Resync | SyncAction::Check | SyncAction::Repair => {
                let data_ok = (0..map.data_disks).all(|k| got[map.data_disk(pd, k) as usize]);
                if !data_ok {
                    self.pieces[i].stage = Stage::Done;
                    return Next::Done;
                }
                let (sp, sq) = self.scratch.as_ref().expect("made before the first read");
                gen_parity(&self.parity, &map, pd, &bufs, off, len, Some((sp, sq)));
                // One bit per sector of the piece (at most `PIECE_MAX_SECTORS`, asserted above).
                let mut diff = 0u128;
                let mut differs = |mine: &DmaBuf, member: u16| {
                    if !got[member as usize] {
                        return false;
                    }
                    let a = mine.bytes();
                    let b = bufs[member as usize].bytes();
                    let mut any = false;
                    for (s, (x, y)) in a[off..off + len]
                        .chunks_exact(SECTOR)
                        .zip(b[off..off + len].chunks_exact(SECTOR))
                        .enumerate()
                    {
                        if x != y {
                            diff |= 1 << s;
                            any = true;
                        }
                    }
                    any
                };
                if differs(sp, pd.p) {
                    writes |= 1 << pd.p;
                }
                if map.has_q() && differs(sq, pd.q) {
                    writes |= 1 << pd.q;
                }
                io.add_mismatches(diff.count_ones() as u64);
                if self.action == SyncAction::Check {
                    writes = 0;
                }
                if writes != 0 {
                    bufs[pd.p as usize].bytes_mut()[off..off + len].copy_from_slice(&sp.bytes()[off..off + len]);
                    if map.has_q() {
                        bufs[pd.q as usize].bytes_mut()[off..off + len].copy_from_slice(&sq.bytes()[off..off + len]);
                    }
                }
            }
        }
        let mut n = 0;
        for r in 0..map.disks {
            if writes & (1 << r) != 0 && !io.writable(MemberIdx(r)) {
                if self.action == SyncAction::Recover {
                    return Next::Failed(format!("recovery target role {r} failed"));
                }
                writes &= !(1 << r);
            }
            if writes & (1 << r) != 0 {
                n += 1;
            }
        }
        if n == 0 {
            self.pieces[i].stage = Stage::Done;
            return Next::Done;
        }
        // The piece's writes go out together, through `issue` once enough of the engine's
        // requests are free: other pieces may have taken the ones its reads gave back (a
        // two-target raid6 recovery over four members writes as many as it read).
        self.pieces[i].writes = writes;
        self.pieces[i].stage = Stage::Write;
        Next::Again
    }

    /// Submits piece `i`'s writes (stage `Write`) if the engine has the requests for them.
    fn issue_writes(&mut self, i: usize, p: PieceRange, io: &mut SyncIo) -> Step {
        let writes = self.pieces[i].writes;
        // check() bounds the members by QUEUE_DEPTH, so this is satisfiable.
        if writes.count_ones() as usize > io.free() {
            return Step::Busy;
        }
        self.pieces[i].stage = Stage::Writing;
        let at = p.sector - io.win_start();
        for r in 0..self.map.disks {
            if writes & (1 << r) != 0 {
                io.submit(i, r as u8, MemberIdx(r), p.sector, p.len_sectors, true, r as usize, at);
            }
        }
        Step::Issued
    }
}

impl SyncStep for ParityStep {
    fn piece_sectors(&self, sector: u64, left: u64) -> u64 {
        let chunk = self.map.chunk_sectors;
        (chunk - sector % chunk).min(left).min(PIECE_MAX_SECTORS)
    }

    fn begin_window(&mut self, pieces: usize) {
        self.pieces.clear();
        self.pieces.resize(pieces, ParityPiece::default());
    }

    fn issue(&mut self, i: usize, p: PieceRange, io: &mut SyncIo) -> Step {
        let st = self.pieces[i];
        if st.stage == Stage::Write {
            return self.issue_writes(i, p, io);
        }
        if st.stage != Stage::Read {
            return Step::Issued;
        }
        if self.scratch.is_none() {
            let len = io.buf(0).len();
            self.scratch = Some((DmaBuf::new(len), DmaBuf::new(len)));
        }
        let map = self.map;
        let stripe = p.sector / map.chunk_sectors;
        let pd = map.parity_disks(stripe);
        let recover = self.action == SyncAction::Recover;
        let mut mask = 0u32;
        let mut lost = 0;
        for r in 0..map.disks {
            let m = MemberIdx(r);
            if recover && io.is_target(m) {
                continue;
            }
            if io.readable(m, p.sector, p.len_sectors) {
                mask |= 1 << r;
            } else {
                lost += 1;
            }
        }
        let tolerate = (map.disks - map.data_disks) as usize;
        let targets = if recover {
            (0..map.disks).filter(|&r| io.is_target(MemberIdx(r))).count()
        } else {
            0
        };
        if lost + targets > tolerate {
            return Step::Failed(format!("stripe {stripe}: {} members unreadable", lost + targets));
        }
        let _ = pd;
        let n = mask.count_ones() as usize;
        if n > io.free() {
            return Step::Busy;
        }
        let piece = &mut self.pieces[i];
        piece.got = 0;
        piece.retry = false;
        piece.stage = Stage::Reading;
        let at = p.sector - io.win_start();
        for r in 0..map.disks {
            if mask & (1 << r) != 0 {
                io.submit(i, r as u8, MemberIdx(r), p.sector, p.len_sectors, false, r as usize, at);
            }
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
        if c.ok {
            piece.got |= 1 << c.member.0;
        } else {
            piece.retry = true;
        }
        if c.left > 0 {
            return Next::Wait;
        }
        if piece.retry {
            piece.stage = Stage::Read;
            return Next::Again;
        }
        self.compute(i, p, io)
    }
}
