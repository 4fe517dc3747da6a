//! The write-intent bitmap at run time (`shared/specs/md-bitmap.md` §5–§7).
//!
//! [`Intent`] is shared by every core (inside [`crate::shared::Shared`]): the data path calls
//! [`Intent::admit`] before a write reaches the members and [`Intent::end`] after every member
//! answered. [`IntentDisk`] is the control path's side on the main reactor: it persists wanted
//! bits before the writes that wanted them go, clears idle bits lazily, and rewrites the header
//! (events) when the superblocks change.
//!
//! # State per chunk
//!
//! One bit of the bitmap covers one chunk of sync space (`chunk_bytes`). [`Intent`] keeps, for
//! every chunk, a pending-write counter (`AtomicU32`, writes admitted and not yet ended) and four
//! bits in `AtomicU64` word sets:
//!
//! * `persisted` — the bit is set on disk on every written member: writes may go. Only the
//!   control path changes it (single writer); the data path only reads it.
//! * `want` — a writer found the chunk not persisted and asks the control path to set it. A
//!   global `wants_pending` flag says "some want bit is set" so an idle control poller never
//!   scans.
//! * `touched` — a write ended here since the last daemon pass (the lazy-clear aging).
//! * `needed` — the chunk must not be cleared until the sync engine says it is in sync
//!   ([`Intent::chunk_synced`]): a write to it failed or skipped a member, or the bit was set on
//!   disk when the array started at or beyond its resync checkpoint (the kernel's NEEDED).
//!
//! "Dirty" (set in memory, what `mdadm -X` would count) is `persisted | want`.
//!
//! # The admit / clear protocol (Dekker style, `SeqCst` on both sides)
//!
//! A writer first counts itself (`pending += 1`) and then reads `persisted`; the control path,
//! clearing a bit, first clears `persisted` and then reads `pending` (and `needed`). In the
//! single `SeqCst` order one of the two sees the other: either the writer sees the bit gone and
//! holds (taking its counts back and setting `want`), or the clearer sees the writer's count,
//! restores the bit and does not write the cleared state to disk. So a chunk with an admitted,
//! unfinished write is never cleared on disk. [`Intent::end`] sets `needed` (on failure) and
//! `touched` *before* it drops its count, so a clearer that sees the count gone also sees them.
//!
//! # The disk side
//!
//! [`IntentDisk`] keeps the bitmap's image (256-byte header + bit area, md v4 LSB-first, padded to
//! the 4 KiB-rounded space mdadm reserves) and, per 4 KiB page, whether it changed. Each
//! [`IntentDisk::poll`]: (1) if a write batch is in flight, waits for it; when it completed, marks
//! the chunks it carried as persisted (the held writes may go now) and records member failures;
//! (2) brings the header's `events`/`events_cleared` up to date; (3) moves wanted chunks into the
//! image; (4) every daemon period (`daemon_sleep` seconds, [`IntentDisk::set_daemon_ms`] for
//! tests), if the array is not degraded, clears chunks idle for two whole periods (the kernel
//! clears 2–3 periods after the last write); (5) writes every changed page to every member given,
//! as one batch. Never more than one batch is in flight: later wants and clears coalesce into the
//! next one, and a clear reaches the disk before a later set of the same bit.
//!
//! A failed bitmap write to one member is logged and counted ([`IntentDisk::write_errors`],
//! [`IntentDisk::take_failed`]); the bits still count as persisted once every member answered
//! (the array core fails that member, as Linux's md_error does), so a bad member never wedges
//! the array.
//!
//! # events / events_cleared
//!
//! The header's `events` follows the superblocks' count passed to `poll` (the header page is
//! rewritten when it changes; [`IntentDisk::events_on_disk`] says what reached the disk).
//! `events_cleared` is raised to `events` whenever the array is not degraded (bits are only
//! cleared then, so every member whose events are ≥ `events_cleared` missed only writes recorded
//! in the bitmap) and follows `events` down if the count ever goes backwards (spec §6).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};

use keel_bdev::{Channel, IoStatus};

use crate::bitmap::{self, BitmapHeader, HEADER_BYTES, STATE_STALE};
use crate::MdError;

/// Bytes per bitmap page written at once.
pub(crate) const PAGE_BYTES: usize = 4096;

/// Most chunks an in-memory bitmap may have (a 2 MiB bit area; mdadm's default is ≤ 128 KiB).
pub(crate) const MAX_BITS: u64 = 1 << 24;

/// mdadm's default bitmap chunk (bytes) for an internal bitmap of a sync space of
/// `sync_sectors` sectors in `space_bytes` of room (`bm_space`, md-superblock-1x.md §9.1).
///
/// Reproduces mdadm's `add_internal_bitmap1` with no `--bitmap-chunk`: the room is capped at
/// 128 KiB; `max_bits = (room - 256) * 8`; starting at a 4 KiB chunk with
/// `bits = sync_bytes / 4096 + 1`, the chunk doubles (and `bits = (bits + 1) / 2`) while
/// `bits > max_bits`; the result is raised to at least 64 MiB. Room below 1 KiB (mdadm refuses:
/// "no room") is treated as 1 KiB; the result is capped at 2 GiB (the largest power of two in
/// the header's u32). Called by the array core on the main reactor at create time.
pub(crate) fn default_chunk_bytes(sync_sectors: u64, space_bytes: u64) -> u32 {
    let room_bytes = space_bytes.clamp(1024, 128 * 1024);
    let max_bits = (room_bytes - HEADER_BYTES as u64) * 8;
    let mut min_chunk: u64 = 4096;
    let mut bits = sync_sectors.saturating_mul(512) / min_chunk + 1;
    while bits > max_bits {
        min_chunk *= 2;
        bits = bits.div_ceil(2);
    }
    min_chunk.clamp(64 << 20, 1 << 31) as u32
}

/// The bitmap as mdadm writes it at create time: the encoded header, then the bit area filled
/// with 1s (`all_dirty`, what mdadm always writes and what an array created without
/// `assume_clean` needs) or 0s, padded to `header.space_bytes()` (4 KiB-rounded). Control path;
/// the caller owns the buffer.
pub(crate) fn initial_image(header: &BitmapHeader, all_dirty: bool) -> Vec<u8> {
    let mut v = vec![if all_dirty { 0xFF } else { 0 }; header.space_bytes() as usize];
    v[..HEADER_BYTES].copy_from_slice(&header.encode());
    v
}

#[inline]
fn word_bit(c: u64) -> (usize, u64) {
    ((c / 64) as usize, 1u64 << (c % 64))
}

fn words(bits: u64) -> Box<[AtomicU64]> {
    (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
}

/// Shared by every core: in-memory bit state and per-chunk write counters.
#[derive(Debug)]
pub(crate) struct Intent {
    /// As loaded (immutable; the disk side keeps the live copy).
    header: BitmapHeader,
    /// log2 of sectors per chunk.
    chunk_shift: u32,
    bits: u64,
    pending: Box<[AtomicU32]>,
    persisted: Box<[AtomicU64]>,
    want: Box<[AtomicU64]>,
    touched: Box<[AtomicU64]>,
    needed: Box<[AtomicU64]>,
    wants_pending: AtomicBool,
    /// Loaded with STATE_STALE: everything is dirty and the disk side rewrites the whole bitmap.
    stale: bool,
}

impl Intent {
    /// Built by the control path from the on-disk header and bit area (`bits` = the bytes after
    /// the header, at least `ceil(header.bits() / 8)` long). Bits set on disk start set and
    /// persisted (they are what a resync after an unclean stop must cover) and *needed*: they
    /// stay until [`Intent::chunk_synced`]. For a clean array use
    /// [`Intent::with_resync_offset`], which lets set bits below the checkpoint clear lazily.
    #[cfg(test)]
    pub(crate) fn new(header: BitmapHeader, bits: &[u8]) -> Result<Intent, MdError> {
        Intent::with_resync_offset(header, bits, 0)
    }

    /// Like [`Intent::new`], as the kernel loads a bitmap: a set bit is *needed* only when its
    /// chunk reaches the array's resync checkpoint (`(i + 1) * chunk >= resync_offset`, sync-space
    /// sectors; `u64::MAX` = clean: no set bit is needed, they clear after two daemon periods
    /// unless the array is degraded). A header with STATE_STALE loads with every bit set and
    /// needed (full resync) and is rewritten as all-ones by the disk side. Control path.
    pub(crate) fn with_resync_offset(
        header: BitmapHeader,
        bits: &[u8],
        resync_offset_sectors: u64,
    ) -> Result<Intent, MdError> {
        if header.chunk_bytes < 512 || !header.chunk_bytes.is_power_of_two() {
            return Err(MdError::invalid(
                "bitmap chunksize",
                format!("{} is not a power of two ≥ 512", header.chunk_bytes),
            ));
        }
        if header.sync_size_sectors == 0 {
            return Err(MdError::invalid("bitmap sync_size", "must not be 0"));
        }
        let nbits = header.bits();
        if nbits > MAX_BITS {
            return Err(MdError::invalid(
                "bitmap chunksize",
                format!("{nbits} chunks (more than {MAX_BITS}): the chunk is too small for the array"),
            ));
        }
        let need_bytes = nbits.div_ceil(8) as usize;
        if bits.len() < need_bytes {
            return Err(MdError::ShortBuffer {
                need: need_bytes,
                got: bits.len(),
            });
        }
        let stale = header.state & STATE_STALE != 0;
        let chunk_sectors = header.chunk_sectors();
        let intent = Intent {
            chunk_shift: chunk_sectors.trailing_zeros(),
            bits: nbits,
            pending: (0..nbits).map(|_| AtomicU32::new(0)).collect(),
            persisted: words(nbits),
            want: words(nbits),
            touched: words(nbits),
            needed: words(nbits),
            wants_pending: AtomicBool::new(false),
            stale,
            header,
        };
        for c in 0..nbits {
            if stale || bitmap::test_bit(bits, c) {
                let (w, m) = word_bit(c);
                intent.persisted[w].fetch_or(m, SeqCst);
                if stale || (c + 1).saturating_mul(chunk_sectors) >= resync_offset_sectors {
                    intent.needed[w].fetch_or(m, SeqCst);
                }
            }
        }
        Ok(intent)
    }

    /// Sectors of array space per bit.
    pub(crate) fn chunk_sectors(&self) -> u64 {
        1 << self.chunk_shift
    }

    /// Inclusive chunk range of sectors `[start, end)`, clamped to the bitmap.
    #[inline]
    fn chunks(&self, start_sector: u64, end_sector: u64) -> (u64, u64) {
        let last = self.bits - 1;
        let c0 = (start_sector >> self.chunk_shift).min(last);
        let c1 = ((end_sector.max(start_sector + 1) - 1) >> self.chunk_shift).min(last);
        (c0, c1)
    }

    #[inline]
    fn test(set: &[AtomicU64], c: u64) -> bool {
        let (w, m) = word_bit(c);
        set[w].load(SeqCst) & m != 0
    }

    /// Data path, any core: counts a write of array sectors `[start, end)` against its chunks.
    /// Returns true when every chunk's bit is already on disk (the write may go; [`Intent::end`]
    /// must follow). Otherwise takes the counts back, asks the control path to persist the
    /// missing bits, and returns false (the caller holds the write and retries later).
    /// No allocation, no lock.
    pub(crate) fn admit(&self, start_sector: u64, end_sector: u64) -> bool {
        let (c0, c1) = self.chunks(start_sector, end_sector);
        for c in c0..=c1 {
            self.pending[c as usize].fetch_add(1, SeqCst);
        }
        let mut ok = true;
        for c in c0..=c1 {
            let (w, m) = word_bit(c);
            if self.persisted[w].load(SeqCst) & m == 0 {
                self.want[w].fetch_or(m, SeqCst);
                ok = false;
            }
        }
        if !ok {
            self.wants_pending.store(true, SeqCst);
            for c in c0..=c1 {
                self.pending[c as usize].fetch_sub(1, SeqCst);
            }
        }
        ok
    }

    /// Data path: an admitted write finished on every member. `all_ok` false (a member failed,
    /// or a copy was skipped because its member is faulty or missing — Linux's "degraded
    /// write") keeps the chunks' bits set until a resync/recovery clears them.
    pub(crate) fn end(&self, start_sector: u64, end_sector: u64, all_ok: bool) {
        let (c0, c1) = self.chunks(start_sector, end_sector);
        for c in c0..=c1 {
            let (w, m) = word_bit(c);
            if !all_ok {
                self.needed[w].fetch_or(m, SeqCst);
            }
            // Skip the shared write when the bit is already set (aging only; see the module doc).
            if self.touched[w].load(SeqCst) & m == 0 {
                self.touched[w].fetch_or(m, SeqCst);
            }
            let before = self.pending[c as usize].fetch_sub(1, SeqCst);
            debug_assert!(before > 0, "Intent::end without admit (chunk {c})");
        }
    }

    /// Control path / sync engine: whether the chunk holding array sector `sector` is dirty
    /// (set in memory).
    pub(crate) fn is_dirty(&self, sector: u64) -> bool {
        let (c, _) = self.chunks(sector, sector + 1);
        let (w, m) = word_bit(c);
        (self.persisted[w].load(SeqCst) | self.want[w].load(SeqCst)) & m != 0
    }

    /// Number of dirty bits.
    pub(crate) fn dirty_count(&self) -> u64 {
        self.persisted
            .iter()
            .zip(self.want.iter())
            .map(|(p, w)| (p.load(SeqCst) | w.load(SeqCst)).count_ones() as u64)
            .sum()
    }

    /// Sync engine: the chunk at `sector` was resynced/recovered on every member; its bit may
    /// be cleared (lazily) once no write is pending there.
    pub(crate) fn chunk_synced(&self, sector: u64) {
        let (c, _) = self.chunks(sector, sector + 1);
        let (w, m) = word_bit(c);
        self.needed[w].fetch_and(!m, SeqCst);
    }

    /// Control path: the chunk's bit reached the disk.
    fn mark_persisted(&self, c: u64) {
        let (w, m) = word_bit(c);
        self.persisted[w].fetch_or(m, SeqCst);
    }

    /// Control path, clear step 1: takes the bit away from writers.
    fn clear_begin(&self, c: u64) {
        let (w, m) = word_bit(c);
        self.persisted[w].fetch_and(!m, SeqCst);
    }

    /// Control path, clear step 2: true when no write got in (the bit stays clear and may be
    /// cleared on disk); otherwise restores it and returns false.
    fn clear_confirm(&self, c: u64) -> bool {
        let (w, m) = word_bit(c);
        if self.pending[c as usize].load(SeqCst) != 0 || self.needed[w].load(SeqCst) & m != 0 {
            self.persisted[w].fetch_or(m, SeqCst);
            return false;
        }
        true
    }
}

/// Status accessors (the array core, `md_get_arrays` and tests use what they need).
#[allow(dead_code)]
impl Intent {
    /// The header as loaded.
    pub(crate) fn header(&self) -> &BitmapHeader {
        &self.header
    }

    /// Number of chunks (bits).
    pub(crate) fn bits(&self) -> u64 {
        self.bits
    }

    /// Whether some writer waits for a bit (the control poller has work).
    pub(crate) fn wants_pending(&self) -> bool {
        self.wants_pending.load(SeqCst)
    }

    /// Whether chunk `c`'s bit is on disk (writes there may go).
    pub(crate) fn is_persisted(&self, chunk: u64) -> bool {
        Self::test(&self.persisted, chunk)
    }

    /// Writes admitted and not ended on chunk `c`.
    pub(crate) fn pending(&self, chunk: u64) -> u32 {
        self.pending[chunk as usize].load(SeqCst)
    }

    /// Whether chunk `c` must stay set until it is synced.
    pub(crate) fn is_needed(&self, chunk: u64) -> bool {
        Self::test(&self.needed, chunk)
    }
}

/// Completion state of one write batch (shared with the metadata I/O callbacks).
#[derive(Default)]
struct BatchIo {
    outstanding: Cell<usize>,
    failed: RefCell<Vec<Rc<Channel>>>,
    errors: Cell<u64>,
}

/// A batch of page writes in flight.
struct Batch {
    io: Rc<BatchIo>,
    /// Chunks that become persisted when the batch completes.
    persist: Vec<u64>,
    /// The header's events when the header page is in the batch.
    header_events: Option<u64>,
}

/// Control path (main reactor): the bitmap's disk side.
pub(crate) struct IntentDisk {
    offset_bytes: u64,
    daemon_ms: Option<u64>,
    /// Header as it is (or will be) on disk.
    header: Option<BitmapHeader>,
    /// Header + bit area, `header.space_bytes()` long; empty until the first poll.
    image: Vec<u8>,
    dirty_pages: Vec<bool>,
    /// Chunks set in the image since the last batch started: persisted when it completes.
    to_persist: Vec<u64>,
    /// Chunks found idle at the last daemon pass (second idle pass clears).
    quiet: Vec<u64>,
    next_tick_ms: u64,
    batch: Option<Batch>,
    /// The STALE header is still on disk: after the all-ones rewrite, clear it.
    clearing_stale: bool,
    write_errors: u64,
    failed: Vec<Rc<Channel>>,
    events_on_disk: u64,
    batches: u64,
}

impl IntentDisk {
    /// `offset_bytes`: where the bitmap starts on every member (superblock offset + bitmap
    /// offset, in bytes).
    pub(crate) fn new(offset_bytes: u64) -> IntentDisk {
        IntentDisk {
            offset_bytes,
            daemon_ms: None,
            header: None,
            image: Vec::new(),
            dirty_pages: Vec::new(),
            to_persist: Vec::new(),
            quiet: Vec::new(),
            next_tick_ms: 0,
            batch: None,
            clearing_stale: false,
            write_errors: 0,
            failed: Vec::new(),
            events_on_disk: 0,
            batches: 0,
        }
    }

    fn daemon_period_ms(&self, intent: &Intent) -> u64 {
        self.daemon_ms
            .unwrap_or(intent.header.daemon_sleep_s.max(1) as u64 * 1000)
    }

    fn init(&mut self, intent: &Intent, now_ms: u64) {
        let header = intent.header.clone();
        self.image = initial_image(&header, intent.stale);
        let area = &mut self.image[HEADER_BYTES..];
        for c in 0..intent.bits {
            if intent.is_persisted(c) {
                bitmap::set_bit(area, c, true);
            }
        }
        self.dirty_pages = vec![intent.stale; self.image.len() / PAGE_BYTES];
        self.quiet = vec![0; intent.bits.div_ceil(64) as usize];
        self.clearing_stale = intent.stale;
        self.events_on_disk = header.events;
        self.header = Some(header);
        self.next_tick_ms = now_ms + self.daemon_period_ms(intent);
    }

    #[inline]
    fn page_of(c: u64) -> usize {
        (HEADER_BYTES + (c / 8) as usize) / PAGE_BYTES
    }

    fn set_image_bit(&mut self, c: u64, on: bool) {
        bitmap::set_bit(&mut self.image[HEADER_BYTES..], c, on);
        self.dirty_pages[Self::page_of(c)] = true;
    }

    fn image_bit(&self, c: u64) -> bool {
        bitmap::test_bit(&self.image[HEADER_BYTES..], c)
    }

    /// A batch completed: held writes may go; member failures are recorded.
    fn finish(&mut self, intent: &Intent, batch: Batch) {
        for &c in &batch.persist {
            intent.mark_persisted(c);
            let (w, m) = word_bit(c);
            self.quiet[w] &= !m;
        }
        let errors = batch.io.errors.get();
        if errors > 0 {
            self.write_errors += errors;
            for ch in batch.io.failed.borrow_mut().drain(..) {
                if !self.failed.iter().any(|f| Rc::ptr_eq(f, &ch)) {
                    self.failed.push(ch);
                }
            }
        }
        if let Some(ev) = batch.header_events {
            self.events_on_disk = ev;
        }
        if self.clearing_stale {
            // The all-ones bit area is on disk: now the header may say it is up to date.
            self.clearing_stale = false;
            if let Some(h) = self.header.as_mut() {
                h.state &= !STATE_STALE;
            }
            self.dirty_pages[0] = true;
        }
    }

    /// Steps (2)–(4) of the module doc, without I/O: returns whether anything changed.
    /// `between(chunk, step)` runs before (step 0, after the idle checks) and between (step 1)
    /// the two steps of every clear attempt: tests interleave writers there.
    fn plan(
        &mut self,
        intent: &Intent,
        events: u64,
        now_ms: u64,
        degraded: bool,
        between: &mut dyn FnMut(u64, u8),
    ) -> bool {
        let mut did = false;
        let h = self.header.as_mut().expect("initialized");
        let mut header_changed = false;
        if h.events != events {
            h.events = events;
            header_changed = true;
        }
        if events < h.events_cleared || (!degraded && h.events_cleared < events) {
            h.events_cleared = events;
            header_changed = true;
        }
        if header_changed {
            self.dirty_pages[0] = true;
            did = true;
        }

        // Wanted chunks: into the image (or straight to persisted if already on disk).
        if intent.wants_pending.swap(false, SeqCst) {
            did = true;
            for w in 0..intent.want.len() {
                let mut bits = intent.want[w].swap(0, SeqCst);
                while bits != 0 {
                    let b = bits.trailing_zeros() as u64;
                    bits &= bits - 1;
                    let c = w as u64 * 64 + b;
                    if intent.is_persisted(c) {
                        continue;
                    }
                    if self.image_bit(c) {
                        // Already on disk (no batch is in flight): writes may go now.
                        intent.mark_persisted(c);
                    } else {
                        self.set_image_bit(c, true);
                        self.to_persist.push(c);
                    }
                }
            }
        }

        // Lazy clearing.
        if now_ms >= self.next_tick_ms {
            self.next_tick_ms = now_ms + self.daemon_period_ms(intent);
            if degraded {
                self.quiet.iter_mut().for_each(|q| *q = 0);
            } else {
                did |= self.clear_pass(intent, between);
            }
        }
        did
    }

    /// One daemon pass: chunks persisted, not wanted, not needed, with nothing pending and not
    /// touched during two passes in a row are cleared (race-free against admit).
    fn clear_pass(&mut self, intent: &Intent, between: &mut dyn FnMut(u64, u8)) -> bool {
        let mut cleared = false;
        for w in 0..intent.persisted.len() {
            let touched = intent.touched[w].swap(0, SeqCst);
            let cand = intent.persisted[w].load(SeqCst) & !intent.want[w].load(SeqCst) & !intent.needed[w].load(SeqCst);
            let idle = cand & !touched;
            self.quiet[w] &= idle;
            let mut bits = idle;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let m = 1u64 << b;
                let c = w as u64 * 64 + b;
                if intent.pending(c) != 0 {
                    self.quiet[w] &= !m;
                    continue;
                }
                if self.quiet[w] & m == 0 {
                    self.quiet[w] |= m;
                    continue;
                }
                self.quiet[w] &= !m;
                between(c, 0);
                intent.clear_begin(c);
                between(c, 1);
                if intent.clear_confirm(c) {
                    self.set_image_bit(c, false);
                    cleared = true;
                }
            }
        }
        cleared
    }

    /// The pages to write now (and forgets that they are dirty); encodes the header first.
    fn take_dirty_pages(&mut self) -> Vec<usize> {
        let pages: Vec<usize> = (0..self.dirty_pages.len()).filter(|&p| self.dirty_pages[p]).collect();
        if pages.first() == Some(&0) {
            let h = self.header.as_ref().expect("initialized").encode();
            self.image[..HEADER_BYTES].copy_from_slice(&h);
        }
        for &p in &pages {
            self.dirty_pages[p] = false;
        }
        pages
    }

    /// One step, called from the array's control poller on the main reactor. `members`: the
    /// control channels of the members that are written (in-sync or rebuilding), `events`: the
    /// superblocks' event count, `now_ms`: a monotonic clock, `degraded`: no lazy clearing
    /// while true. Persists wanted bits (then marks them persisted so held writes go), clears
    /// bits idle for two daemon periods. Returns whether it did anything.
    pub(crate) fn poll(
        &mut self,
        intent: &Intent,
        members: &[Rc<Channel>],
        events: u64,
        now_ms: u64,
        degraded: bool,
    ) -> bool {
        let mut did = false;
        if self.header.is_none() {
            self.init(intent, now_ms);
        }
        if let Some(b) = &self.batch {
            if b.io.outstanding.get() > 0 {
                return false;
            }
            let b = self.batch.take().expect("checked");
            self.finish(intent, b);
            did = true;
        }
        did |= self.plan(intent, events, now_ms, degraded, &mut |_, _| {});
        if !self.dirty_pages.iter().any(|&d| d) {
            // Wants whose bits were on disk already were marked persisted in plan().
            return did;
        }
        let pages = self.take_dirty_pages();
        let io = Rc::new(BatchIo::default());
        let batch = Batch {
            io: io.clone(),
            persist: std::mem::take(&mut self.to_persist),
            header_events: (pages[0] == 0).then_some(events),
        };
        self.batches += 1;
        for &p in &pages {
            let data = &self.image[p * PAGE_BYTES..(p + 1) * PAGE_BYTES];
            let at = self.offset_bytes + (p * PAGE_BYTES) as u64;
            for m in members {
                io.outstanding.set(io.outstanding.get() + 1);
                let (io2, m2) = (io.clone(), m.clone());
                crate::meta_io::write(m, at, data, move |status: IoStatus| {
                    if !status.is_success() {
                        tracing::warn!(
                            "md bitmap: page write at byte {at} to {} failed: {status:?}",
                            m2.info().name
                        );
                        io2.errors.set(io2.errors.get() + 1);
                        let mut f = io2.failed.borrow_mut();
                        if !f.iter().any(|c| Rc::ptr_eq(c, &m2)) {
                            f.push(m2.clone());
                        }
                    }
                    io2.outstanding.set(io2.outstanding.get() - 1);
                });
            }
        }
        if members.is_empty() {
            // Nothing to write to: the image is the only copy.
            self.finish(intent, batch);
        } else {
            self.batch = Some(batch);
        }
        true
    }
}

/// Status and tuning (the array core and tests use what they need).
#[allow(dead_code)]
impl IntentDisk {
    /// Overrides the lazy-clear period (default: the header's `daemon_sleep` seconds). Tests.
    pub(crate) fn set_daemon_ms(&mut self, ms: u64) {
        self.daemon_ms = Some(ms.max(1));
    }

    /// Bitmap page writes that failed so far (on any member).
    pub(crate) fn write_errors(&self) -> u64 {
        self.write_errors
    }

    /// Members whose bitmap write failed since the last call (the array core fails them).
    pub(crate) fn take_failed(&mut self) -> Vec<Rc<Channel>> {
        std::mem::take(&mut self.failed)
    }

    /// Whether a write batch is in flight.
    pub(crate) fn in_flight(&self) -> bool {
        self.batch.is_some()
    }

    /// The header `events` last written to the members (the loaded value before any write).
    pub(crate) fn events_on_disk(&self) -> u64 {
        self.events_on_disk
    }

    /// Write batches started so far.
    pub(crate) fn batches(&self) -> u64 {
        self.batches
    }

    /// The bitmap image (header + bits) as the next batch will write it (empty before the
    /// first poll).
    pub(crate) fn image(&self) -> &[u8] {
        &self.image
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UUID: [u8; 16] = [7; 16];

    fn header(sync_sectors: u64, chunk_bytes: u32) -> BitmapHeader {
        BitmapHeader {
            version: bitmap::VERSION,
            uuid: UUID,
            events: 3,
            events_cleared: 3,
            sync_size_sectors: sync_sectors,
            state: 0,
            chunk_bytes,
            daemon_sleep_s: 5,
            write_behind: 0,
            sectors_reserved: 0,
            nodes: 0,
        }
    }

    /// 100 chunks of 8 sectors, nothing set.
    fn clean(nbits: u64) -> Intent {
        let h = header(nbits * 8, 4096);
        Intent::new(h, &vec![0; nbits.div_ceil(8) as usize]).unwrap()
    }

    /// Pages of a batch in flight: (page index, contents).
    type FlyingPages = Vec<(usize, Vec<u8>)>;

    /// A disk model for IntentDisk without I/O: batches complete when the test says so.
    struct Sim {
        disk: IntentDisk,
        /// What the members hold (pages applied at completion).
        on_disk: Vec<u8>,
        /// Pages of the batch in flight (page index, contents).
        flying: Option<(FlyingPages, Batch)>,
        now_ms: u64,
    }

    impl Sim {
        fn new(intent: &Intent) -> Sim {
            let mut disk = IntentDisk::new(0);
            disk.set_daemon_ms(100);
            disk.init(intent, 0);
            let on_disk = disk.image.clone();
            Sim {
                disk,
                on_disk,
                flying: None,
                now_ms: 0,
            }
        }

        /// One poll without completing the batch it starts.
        fn poll_with(&mut self, intent: &Intent, degraded: bool, between: &mut dyn FnMut(u64, u8)) {
            if self.flying.is_some() {
                return;
            }
            let ev = self.disk.header.as_ref().unwrap().events;
            self.disk.plan(intent, ev, self.now_ms, degraded, between);
            let pages = self.disk.take_dirty_pages();
            if pages.is_empty() {
                return;
            }
            let data = pages
                .iter()
                .map(|&p| (p, self.disk.image[p * PAGE_BYTES..(p + 1) * PAGE_BYTES].to_vec()))
                .collect();
            let batch = Batch {
                io: Rc::new(BatchIo::default()),
                persist: std::mem::take(&mut self.disk.to_persist),
                header_events: None,
            };
            self.flying = Some((data, batch));
        }

        fn complete(&mut self, intent: &Intent) {
            if let Some((data, batch)) = self.flying.take() {
                for (p, d) in data {
                    self.on_disk[p * PAGE_BYTES..(p + 1) * PAGE_BYTES].copy_from_slice(&d);
                }
                self.disk.finish(intent, batch);
            }
        }

        /// Poll + complete.
        fn step(&mut self, intent: &Intent) {
            self.poll_with(intent, false, &mut |_, _| {});
            self.complete(intent);
        }

        fn disk_bit(&self, c: u64) -> bool {
            bitmap::test_bit(&self.on_disk[HEADER_BYTES..], c)
        }

        /// Whether the bit is set on disk and in the batch in flight (if it carries its page).
        fn safely_set(&self, c: u64) -> bool {
            let flying_ok = match &self.flying {
                Some((pages, _)) => pages
                    .iter()
                    .filter(|(p, _)| *p == IntentDisk::page_of(c))
                    .all(|(_, d)| {
                        let byte = HEADER_BYTES + (c / 8) as usize - IntentDisk::page_of(c) * PAGE_BYTES;
                        d[byte] & (1 << (c % 8)) != 0
                    }),
                None => true,
            };
            self.disk_bit(c) && flying_ok
        }
    }

    #[test]
    fn admit_holds_until_persisted_then_goes() {
        let i = clean(100);
        assert!(!i.admit(0, 16), "chunks 0 and 1 are not on disk");
        assert!(i.wants_pending());
        assert_eq!((i.pending(0), i.pending(1)), (0, 0), "counts taken back");
        assert!(i.is_dirty(0) && i.is_dirty(15) && !i.is_dirty(16));
        assert_eq!(i.dirty_count(), 2);
        let mut s = Sim::new(&i);
        s.poll_with(&i, false, &mut |_, _| {});
        assert!(!i.admit(0, 16), "batch still in flight");
        s.complete(&i);
        assert!(s.disk_bit(0) && s.disk_bit(1) && !s.disk_bit(2));
        assert!(i.admit(0, 16));
        assert_eq!(i.pending(0), 1);
        i.end(0, 16, true);
        assert_eq!(i.pending(0), 0);
        // Untouched for two periods → cleared on disk.
        for _ in 0..3 {
            s.now_ms += 100;
            s.step(&i);
        }
        assert!(!s.disk_bit(0) && !s.disk_bit(1));
        assert_eq!(i.dirty_count(), 0);
    }

    #[test]
    fn clearing_takes_two_quiet_periods() {
        let i = clean(10);
        let mut s = Sim::new(&i);
        assert!(!i.admit(0, 8));
        s.step(&i);
        assert!(i.admit(0, 8));
        i.end(0, 8, true);
        s.now_ms = 100;
        s.step(&i); // touched: reset
        s.now_ms = 200;
        s.step(&i); // quiet once
        assert!(s.disk_bit(0));
        // A write in the second period keeps it.
        assert!(i.admit(0, 8));
        i.end(0, 8, true);
        s.now_ms = 300;
        s.step(&i);
        s.now_ms = 400;
        s.step(&i);
        assert!(s.disk_bit(0));
        s.now_ms = 500;
        s.step(&i);
        assert!(!s.disk_bit(0));
        // Between ticks nothing happens.
        assert!(!i.admit(0, 8));
        s.now_ms = 550;
        s.step(&i);
        assert!(s.disk_bit(0) && i.is_persisted(0));
    }

    #[test]
    fn pending_write_blocks_clearing() {
        let i = clean(10);
        let mut s = Sim::new(&i);
        assert!(!i.admit(0, 8));
        s.step(&i);
        assert!(i.admit(0, 8)); // long-running write
        for t in 1..10 {
            s.now_ms = t * 100;
            s.step(&i);
            assert!(s.disk_bit(0) && i.is_persisted(0));
        }
        i.end(0, 8, true);
        for t in 10..13 {
            s.now_ms = t * 100;
            s.step(&i);
        }
        assert!(!s.disk_bit(0));
    }

    #[test]
    fn clear_vs_admit_interleavings() {
        // (a) a writer admitted between the two clear steps: it sees the bit gone and holds.
        let i = clean(4);
        i.mark_persisted(0);
        i.clear_begin(0);
        assert!(!i.admit(0, 8), "bit being cleared: hold");
        assert!(i.clear_confirm(0), "the writer took its count back");
        assert!(!i.is_persisted(0) && i.is_dirty(0), "wanted again");

        // (b) a writer counted before the clear: the clear backs off.
        let i = clean(4);
        i.mark_persisted(0);
        assert!(i.admit(0, 8));
        i.clear_begin(0);
        assert!(!i.clear_confirm(0));
        assert!(i.is_persisted(0));
        i.end(0, 8, true);

        // (c) a failed write ends between the steps: needed is seen, the clear backs off.
        let i = clean(4);
        i.mark_persisted(0);
        assert!(i.admit(0, 8));
        i.clear_begin(0);
        i.end(0, 8, false);
        assert!(!i.clear_confirm(0));
        assert!(i.is_persisted(0) && i.is_needed(0));
        i.chunk_synced(0);
        assert!(!i.is_needed(0));

        // (d) in a full pass: a writer admitted during the clear of chunk 1 ends up on disk.
        let i = clean(4);
        let mut s = Sim::new(&i);
        assert!(!i.admit(8, 16));
        s.step(&i);
        s.now_ms = 100;
        s.step(&i); // first quiet pass
        let mut held = false;
        s.now_ms = 200;
        s.poll_with(&i, false, &mut |c, step| {
            assert_eq!(c, 1);
            if step == 1 {
                held = !i.admit(8, 16);
            }
        });
        assert!(held, "admit during the clear holds");
        s.complete(&i);
        assert!(!s.disk_bit(1));
        s.step(&i);
        assert!(s.disk_bit(1) && i.admit(8, 16), "re-persisted after the clear landed");
        i.end(8, 16, true);
    }

    #[test]
    fn failed_write_keeps_bit_until_synced_and_degraded_keeps_all() {
        let i = clean(4);
        let mut s = Sim::new(&i);
        assert!(!i.admit(0, 32));
        s.step(&i);
        assert!(i.admit(0, 32));
        i.end(0, 8, false);
        i.end(8, 32, true);
        for t in 1..6 {
            s.now_ms = t * 100;
            s.step(&i);
        }
        assert!(s.disk_bit(0) && !s.disk_bit(1) && !s.disk_bit(3));
        i.chunk_synced(0);
        // Degraded: never cleared.
        for t in 6..12 {
            s.now_ms = t * 100;
            s.poll_with(&i, true, &mut |_, _| {});
            s.complete(&i);
        }
        assert!(s.disk_bit(0));
        for t in 12..15 {
            s.now_ms = t * 100;
            s.step(&i);
        }
        assert!(!s.disk_bit(0));
    }

    #[test]
    fn loaded_bits_needed_unless_below_checkpoint() {
        let h = header(8 * 16, 4096); // 16 chunks of 8 sectors
        let bits = [0xFF, 0x01];
        let i = Intent::new(h.clone(), &bits).unwrap();
        assert_eq!(i.dirty_count(), 9);
        assert!(i.is_persisted(8) && i.is_needed(8) && i.admit(64, 72));
        i.end(64, 72, true);
        // Clean array: set bits clear after two periods.
        let i = Intent::with_resync_offset(h.clone(), &bits, u64::MAX).unwrap();
        assert!(!i.is_needed(0));
        let mut s = Sim::new(&i);
        assert!(s.disk_bit(8));
        for t in 1..=3 {
            s.now_ms = t * 100;
            s.step(&i);
        }
        assert_eq!(i.dirty_count(), 0);
        assert_eq!(bitmap::dirty_count(&s.on_disk[HEADER_BYTES..], 16), 0);
        // Checkpoint at sector 32: chunks 0..=2 end at or before sector 24 (not needed); chunk 3
        // ends at 32 (needed, as the kernel's `end >= resync_offset`).
        let i = Intent::with_resync_offset(h, &bits, 32).unwrap();
        assert!(!i.is_needed(2) && i.is_needed(3) && i.is_needed(8));
    }

    #[test]
    fn stale_header_rewrites_everything_then_clears_stale() {
        let mut h = header(8 * 40_000, 4096); // 40000 bits: two pages
        h.state = STATE_STALE;
        let i = Intent::new(h, &[0; 5000]).unwrap();
        assert_eq!(i.dirty_count(), 40_000);
        let mut disk = IntentDisk::new(0);
        disk.init(&i, 0);
        assert!(disk.dirty_pages.iter().all(|&d| d));
        let pages = disk.take_dirty_pages();
        assert_eq!(pages, vec![0, 1]);
        let h0 = BitmapHeader::decode(&disk.image, &UUID).unwrap();
        assert_eq!(h0.state, STATE_STALE, "first batch keeps STALE");
        assert_eq!(bitmap::dirty_count(&disk.image[HEADER_BYTES..], 40_000), 40_000);
        disk.finish(
            &i,
            Batch {
                io: Rc::new(BatchIo::default()),
                persist: vec![],
                header_events: None,
            },
        );
        assert_eq!(disk.take_dirty_pages(), vec![0]);
        assert_eq!(BitmapHeader::decode(&disk.image, &UUID).unwrap().state, 0);
    }

    #[test]
    fn header_events_and_events_cleared() {
        let i = clean(8);
        let mut disk = IntentDisk::new(0);
        disk.init(&i, 0);
        disk.plan(&i, 3, 0, false, &mut |_, _| {});
        assert!(disk.take_dirty_pages().is_empty(), "nothing changed");
        // Degraded: events move, events_cleared stays.
        disk.plan(&i, 5, 0, true, &mut |_, _| {});
        assert_eq!(disk.take_dirty_pages(), vec![0]);
        let h = BitmapHeader::decode(&disk.image, &UUID).unwrap();
        assert_eq!((h.events, h.events_cleared), (5, 3));
        // Not degraded any more: events_cleared catches up.
        disk.plan(&i, 6, 0, false, &mut |_, _| {});
        disk.take_dirty_pages();
        let h = BitmapHeader::decode(&disk.image, &UUID).unwrap();
        assert_eq!((h.events, h.events_cleared), (6, 6));
        // Events going backwards pull events_cleared down.
        disk.plan(&i, 4, 0, true, &mut |_, _| {});
        disk.take_dirty_pages();
        let h = BitmapHeader::decode(&disk.image, &UUID).unwrap();
        assert_eq!((h.events, h.events_cleared), (4, 4));
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(Intent::new(header(0, 4096), &[]).is_err());
        assert!(Intent::new(header(64, 3000), &[0; 8]).is_err());
        assert!(Intent::new(header(64 * 8, 4096), &[0; 7]).is_err(), "short bit area");
        assert!(Intent::new(header(1 << 40, 512), &[]).is_err(), "too many chunks");
    }

    #[test]
    fn ranges_clamp_and_span_chunks() {
        let i = clean(4);
        assert!(!i.admit(7, 9), "two chunks");
        assert_eq!(i.dirty_count(), 2);
        assert!(!i.admit(1000, 1008), "past the end clamps to the last chunk");
        assert!(i.is_dirty(31) && i.is_dirty(10_000));
        assert_eq!(i.dirty_count(), 3);
    }

    #[test]
    fn default_chunk_follows_mdadm() {
        // Spec §4: raid1 of 255 MiB members (sync 522240), 4 KiB of bitmap space → 64 MiB, 4 bits.
        assert_eq!(default_chunk_bytes(522_240, 4096), 64 << 20);
        let mut h = header(522_240, default_chunk_bytes(522_240, 4096));
        assert_eq!(h.bits(), 4);
        // The worked example (§10): 202752 sectors → 2 bits.
        h.sync_size_sectors = 202_752;
        assert_eq!(default_chunk_bytes(202_752, 4096), 64 << 20);
        assert_eq!(h.bits(), 2);
        // Large arrays: 128 KiB room caps bits at (131072 - 256) * 8 = 1046528.
        let tib = 1u64 << 31; // sectors
        assert_eq!(default_chunk_bytes(16 * tib, 128 << 10), 64 << 20);
        assert_eq!(default_chunk_bytes(64 * tib, 128 << 10), 128 << 20);
        assert_eq!(
            default_chunk_bytes(64 * tib, 1 << 20),
            128 << 20,
            "room capped at 128 KiB"
        );
        // Small room: 4 KiB holds 30720 bits; 4 TiB from 2^30 + 1 bits needs 16 halvings.
        assert_eq!(default_chunk_bytes(4 * tib, 4096), 256 << 20);
        assert_eq!(default_chunk_bytes(1, 0), 64 << 20);
        assert_eq!(default_chunk_bytes(u64::MAX, 4096), 1 << 31);
    }

    #[test]
    fn initial_image_decodes_and_mdadm_reads_it() {
        let h = header(522_240, 64 << 20);
        for (all, dirty) in [(true, 4), (false, 0)] {
            let img = initial_image(&h, all);
            assert_eq!(img.len(), 4096);
            assert_eq!(BitmapHeader::decode(&img, &UUID).unwrap(), h);
            assert_eq!(bitmap::dirty_count(&img[HEADER_BYTES..], h.bits()), dirty);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bitmap");
            std::fs::write(&path, &img).unwrap();
            let out = keel_testkit::mdadm_run(&["-X"], &path);
            let pct = if all { "100.0%" } else { "0.0%" };
            assert_eq!(
                keel_testkit::mdadm_field(&out, "Bitmap"),
                format!("4 bits (chunks), {dirty} dirty ({pct})")
            );
            assert_eq!(keel_testkit::mdadm_field(&out, "Chunksize"), "64 MB");
            assert_eq!(keel_testkit::mdadm_field(&out, "Events"), "3");
        }
    }

    #[test]
    fn threads_never_see_a_cleared_bit_under_an_admitted_write() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        let i = Arc::new(clean(2));
        i.mark_persisted(0);
        // The "disk" bit of chunk 0, written only by the clearer (this thread).
        let disk = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let goes = Arc::new(AtomicU64::new(0));
        let writer = {
            let (i, disk, stop, goes) = (i.clone(), disk.clone(), stop.clone(), goes.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    if i.admit(0, 8) {
                        let before = disk.load(SeqCst);
                        for _ in 0..200 {
                            std::hint::spin_loop();
                        }
                        let after = disk.load(SeqCst);
                        i.end(0, 8, true);
                        assert!(before, "write admitted over a cleared bit");
                        assert!(after, "bit cleared under an admitted write");
                        goes.fetch_add(1, SeqCst);
                    }
                }
            })
        };
        let (mut clears, mut backoffs) = (0u64, 0u64);
        let until = Instant::now() + Duration::from_secs(2);
        while (goes.load(SeqCst) < 20_000 || clears < 1_000 || backoffs < 100) && Instant::now() < until {
            if writer.is_finished() {
                break;
            }
            if i.is_persisted(0) {
                i.clear_begin(0);
                if i.clear_confirm(0) {
                    disk.store(false, SeqCst);
                    clears += 1;
                } else {
                    backoffs += 1;
                }
            } else if i.wants_pending.swap(false, SeqCst) {
                i.want[0].swap(0, SeqCst);
                disk.store(true, SeqCst);
                i.mark_persisted(0);
            }
        }
        stop.store(true, SeqCst);
        writer.join().expect("writer saw a cleared bit");
        assert!(goes.load(SeqCst) > 0 && clears > 0, "no interleaving happened");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u64, u64),
        End(usize, bool),
        Poll(u64, bool),
        Complete,
        /// Poll with admits of these chunks injected between every clear's two steps.
        PollRacing(u64),
        Synced(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..12, 1u64..3).prop_map(|(c, n)| Op::Admit(c, n)),
            (0usize..8, prop::bool::weighted(0.9)).prop_map(|(k, ok)| Op::End(k, ok)),
            (0u64..150, prop::bool::weighted(0.2)).prop_map(|(dt, d)| Op::Poll(dt, d)),
            Just(Op::Complete),
            (0u64..12).prop_map(Op::PollRacing),
            (0u64..12).prop_map(Op::Synced),
        ]
    }

    proptest! {
        /// A chunk with pending > 0 is never cleared on disk (nor in a batch in flight), and a
        /// chunk with a failed write stays set until synced.
        #[test]
        fn pending_chunks_stay_set_on_disk(ops in prop::collection::vec(op(), 1..120)) {
            let i = clean(12);
            let mut s = Sim::new(&i);
            let mut inflight: Vec<(u64, u64)> = Vec::new();
            for o in ops {
                match o {
                    Op::Admit(c, n) => {
                        let (a, b) = (c * 8, ((c + n) * 8).min(96));
                        if i.admit(a, b) {
                            inflight.push((a, b));
                        }
                    }
                    Op::End(k, ok) => {
                        if !inflight.is_empty() {
                            let (a, b) = inflight.remove(k % inflight.len());
                            i.end(a, b, ok);
                        }
                    }
                    Op::Poll(dt, degraded) => {
                        s.now_ms += dt;
                        s.poll_with(&i, degraded, &mut |_, _| {});
                    }
                    Op::Complete => s.complete(&i),
                    Op::PollRacing(c) => {
                        s.now_ms += 100;
                        let mut got = Vec::new();
                        s.poll_with(&i, false, &mut |_, _| {
                            if i.admit(c * 8, c * 8 + 8) {
                                got.push((c * 8, c * 8 + 8));
                            }
                        });
                        inflight.extend(got);
                    }
                    Op::Synced(c) => i.chunk_synced(c * 8),
                }
                for &(a, b) in &inflight {
                    for c in a / 8..b.div_ceil(8) {
                        prop_assert!(i.pending(c) > 0);
                        prop_assert!(i.is_persisted(c), "chunk {} admitted but not persisted", c);
                        prop_assert!(s.safely_set(c), "chunk {} cleared on disk under a pending write", c);
                    }
                }
                for c in 0..12 {
                    if i.is_needed(c) {
                        prop_assert!(i.is_dirty(c * 8));
                    }
                    if i.is_persisted(c) {
                        prop_assert!(s.safely_set(c), "persisted {} not on disk", c);
                    }
                }
            }
        }
    }
}
