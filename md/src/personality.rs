//! The boundary between the array core and the RAID levels ("personalities", as Linux calls
//! them), and the registry that lists the levels.
//!
//! # Who is who
//!
//! The **array core** (`array`, `assemble`, `daemon`, `shared`, `intent`, `channel`, `lane`,
//! `sync`) owns everything an array has whatever its level: the members and their descriptors,
//! the slot states (in sync, rebuilding from a checkpoint, faulty, missing), spares, the
//! superblocks and their events, the write-intent bitmap, the write gate (dirty marking, the sync
//! window barrier, the bitmap bits), the sync windows, checkpoints and speed limits, the per-core
//! member channels and forward paths, the splitter (keel-bdev's, with md's policy). It never asks which level it runs: it
//! asks the level's three objects below, and reads the level's [`Caps`] as data.
//!
//! A **personality** is one file per level (`linear.rs`, `raid0.rs`, `raid1.rs`, `raid10.rs`;
//! raid1 and raid10 share the copy machinery of `mirror.rs`, linear and raid0 the one-copy data
//! path of `striped.rs`) and one line in [`PERSONALITIES`]. It provides:
//!
//! 1. a stateless **descriptor**, [`Personality`] (a `static`, reached as `&'static dyn
//!    Personality`): the superblock level number, mdadm's names, [`Caps`] (member limits,
//!    failure tolerance, which sync machinery applies, chunk and bitmap rules), the layout word's
//!    text forms, how an array is **planned** at create ([`Personality::plan`]: the component
//!    size, layout word and feature bits the superblocks get) and how it **starts** from a
//!    superblock ([`Personality::start`], at create and at assembly alike: the level's fields
//!    checked with errors naming the field, the per-array layout built over the members);
//! 2. a per-array **layout**, [`Layout`] (immutable, in an `Arc` shared by every core and the
//!    sync engine): the [`Geometry`] (size, data offset, block sizes), the array's [`Health`] for a
//!    set of live members, the route it can publish, the factory of its per-core state
//!    ([`Layout::core`]) and its sync shape ([`Layout::sync`]);
//! 3. a per-core **lane**, [`Lane`] (the layout's channel on one core, owned by that core's
//!    [`MdCore`]): where a request goes, what a member's failure means for it, its own poll step;
//! 4. a **sync step** ([`SyncStep`], made per run by the layout's [`SyncShape`]): what one piece
//!    of a locked sync window reads, writes and compares.
//!
//! # Calls, cores and guarantees
//!
//! * Control path, main reactor: the registry resolves names and level numbers
//!   ([`by_name`], [`by_level`]); `md_create` calls [`Personality::parse_layout`], then
//!   [`Personality::plan`] with the members' usable sizes (members already opened, claimed and
//!   checked for block size, size, duplicates and count within [`Caps`]), writes the superblocks
//!   it yields and starts the array from them with [`Personality::start`] — the same call
//!   assembly makes once it has picked the members (fresh or rebuilding roles decided by the
//!   core from events and role tables; the personality sees the template superblock and each
//!   role's data size). The core calls [`Layout::health`] whenever the live set changes (member
//!   failure, assembly, `md_get_arrays`).
//! * Any core, when the array bdev's channel first appears there: the array's `IoDevice` factory
//!   calls [`Layout::core`], which builds the level's lane and hands it to the generic
//!   [`MdCore::new`], monomorphised over the lane: one dynamic call per request (the bdev layer's
//!   `BackendChannel::submit`), as before, and none inside. The core's state serialises the lane's
//!   calls (one `RefCell` per core, never borrowed across a poll); everything a lane is handed —
//!   the member channels ([`Members`]), the splitter ([`LaneCx`]) — belongs to the core.
//! * Per request, on the submitting core: the core answers dead arrays, fans flush and reset
//!   out, and passes writes (write, unmap, write-zeroes) of levels with [`Caps::resync`] through
//!   the write gate **before** the lane sees them: a write reaches [`Lane::submit`] with a
//!   [`WriteTicket`] (dirty mark on disk, outside the sync window, bitmap bits set), which the
//!   lane hands to the splitter with the request (md's policy ends it when the parent
//!   completes, telling the gate whether every copy took the write). Only [`Lane::fast`] runs
//!   before all that (raid0's shift-only in-place forward); it must check `Members::dead`.
//! * Main reactor, per sync run: the daemon starts a run only for layouts with a [`SyncShape`];
//!   the engine (`sync::engine`) owns the window, the barrier, the requests, the buffers and
//!   the checkpoint, and calls the step for each piece of a window once the window is locked and
//!   drained.
//!
//! # Adding a level
//!
//! A new file implementing [`Personality`] (and its layout, lane and sync step, reusing
//! `mirror.rs`/`striped.rs` where they fit), and its `static` in [`PERSONALITIES`] (then taken
//! out of [`NAME_ONLY`]). How raid4/5/6 fit:
//!
//! * Descriptor: level 4/5/6, mdadm's layout names ([`Personality::parse_layout`]), `Caps`
//!   with `failures` 1 (raid6: 2), resync, spares and bitmap; `plan` rounds the component to the
//!   chunk; `start` checks layout, chunk and disk count and builds the layout.
//! * Layout: `health` is optimal / degraded with up to `failures` missing / failed beyond; no
//!   route; the stripe cache and whatever the cores share to serialise read-modify-write of a
//!   stripe live in the layout (it is `Send + Sync` and shared by every core), each core's lane
//!   reaching the others through it.
//! * Lane: reads of a healthy chunk are pieces ([`Lane::next_piece`]) or forwarded in place like
//!   raid0; degraded reads and writes run through the stripe cache with the lane's **own**
//!   requests ([`LaneCx::submit_own`] with [`LANE_TAG`], completions in [`Lane::own_done`]),
//!   queued work continued from [`Lane::poll`], dropped on [`Lane::quiesce`]. A write keeps its
//!   [`WriteTicket`] until its parity is written and ends it on its own core
//!   ([`Members::end_write`]: gate rows are per core). [`Lane::gate_range`] maps a write to the
//!   stripe rows it dirties: raid5's sync space is a member's component, as Linux's
//!   `resync_offset` and bitmap count it.
//! * Sync step: [`SyncShape::buffers`] asks for one window buffer per member, a piece is a
//!   stripe range; resync/repair read every member, recompute P (and Q) and write what differs,
//!   counting it ([`SyncIo::add_mismatches`]); check only counts; recover reads the others and
//!   writes the targets (one or two); [`SyncShape::recovered_member_sectors`] is the sync
//!   sector itself (a member's rows).
//!
//! The core refuses to start a dirty and degraded array without `force` when the level's
//! [`Personality::starts_dirty_degraded`] says false (the write hole), refuses `md_fail` of a
//! member the layout cannot lose ([`Layout::can_lose`], from its health), and both come free
//! with a level's descriptor and health. What the core does not offer yet and those levels
//! need, each a small core change: creating an array by recovery onto its last member (raid5's
//! creation rule; today a create without `assume_clean` resyncs) and the stripe-cache size
//! setting (`md_set_stripe_cache`).

use std::fmt::Debug;
use std::sync::Arc;

use keel_bdev::{ForwardPath, IoBox, IoOp, IoStatus, Route, Submit};

use crate::geometry::{Geometry, StartRequest};
use crate::layout::MemberIdx;
use crate::superblock::Superblock;
use crate::sync::{SyncAction, SyncIo};
use crate::{linear, raid0, raid1, raid10, MdError};

pub(crate) use crate::channel::{CoreSetup, MdCore, Members};
#[allow(unused_imports)] // LANE_TAG: for lanes that own their I/O
pub(crate) use crate::lane::{Cursor, FailedChild, LaneCx, Piece, Verdict, WriteTicket, LANE_TAG};

/// Most members of any array: the role table mdadm's 1.x superblocks make room for.
pub(crate) const MAX_MEMBERS: usize = crate::array::ROLE_TABLE_LEN;

/// The personalities of this build, in the order names are listed in messages. The only place
/// that lists the levels.
static PERSONALITIES: &[&dyn Personality] = &[&linear::LINEAR, &raid0::RAID0, &raid1::RAID1, &raid10::RAID10];

/// md levels this build knows only by name (`md_examine` shows their members; nothing runs
/// them): level number, mdadm's name, other spellings, members holding parity.
static NAME_ONLY: &[(i32, &str, &[&str], u64)] = &[
    (4, "raid4", &["4"], 1),
    (5, "raid5", &["5"], 1),
    (6, "raid6", &["6"], 2),
];

/// A level's capabilities, as data the core reads instead of asking which level it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Fewest members `md_create` accepts.
    pub min_members: usize,
    /// Most members.
    pub max_members: usize,
    /// Members every array of the level can lose and still hold every sector (0: none, so a
    /// member cannot be failed and assembly needs every role).
    pub failures: u32,
    /// The level has resync, recovery, check and repair: the superblocks carry a resync offset,
    /// writes pass the write gate (dirty marking, sync window, bitmap), the daemon runs sync
    /// (the layout then has a [`SyncShape`]), the sync actions are accepted.
    pub resync: bool,
    /// Members can be rebuilt: spares and `md_add`, re-add of a removed member, stale or partly
    /// recovered members coming back rebuilding at assembly.
    pub spares: bool,
    /// An internal write-intent bitmap is allowed (and room for it is kept after the
    /// superblock).
    pub bitmap: bool,
    /// `md_create` adds a bitmap unless told `bitmap: "none"`.
    pub default_bitmap: bool,
    /// `chunk_kb` applies (a power of two ≥ 4 KiB, default 512); otherwise the chunk is 0.
    pub chunked: bool,
}

/// How well an array holds its data with a given set of live members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// Every member is live.
    Optimal,
    /// Some member is not, but every sector can still be read (and written).
    Degraded,
    /// Some sectors have no live copy: the array is failed.
    Failed,
}

/// What `md_create` hands [`Personality::plan`]: members already checked by the core.
#[derive(Debug)]
pub(crate) struct PlanRequest<'a> {
    /// Per member in role order: sectors after the data offset.
    pub data_sectors: &'a [u64],
    /// The array block (the largest member block), in sectors.
    pub block_sectors: u64,
    /// The chunk in sectors (0 for levels without [`Caps::chunked`]).
    pub chunk_sectors: u64,
    /// The layout word from [`Personality::parse_layout`] (None: not given).
    pub layout: Option<u32>,
}

/// The level's part of the superblocks a create writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SbShape {
    /// The superblock's `size`: the component size (sectors of each member used).
    pub size_sectors: u64,
    /// The superblock's `layout` word.
    pub layout: u32,
    /// Feature bits the level adds (raid0's layout bit).
    pub feature_map: u32,
}

/// A RAID level: a stateless descriptor (module docs). Every method runs on the control path.
pub(crate) trait Personality: Sync + 'static {
    /// The superblock's level number (-1 linear, 0, 1, 10...).
    fn level(&self) -> i32;
    /// mdadm's name ("raid1").
    fn name(&self) -> &'static str;
    /// Other spellings `md_create` accepts (lower case: "1", "mirror").
    fn aliases(&self) -> &'static [&'static str];
    fn caps(&self) -> &'static Caps;
    /// `md_create`'s `layout` text as the superblock word (None when not given and the level
    /// has no default), or an `InvalidParam` on `layout` naming what the level takes.
    fn parse_layout(&self, text: Option<&str>) -> Result<Option<u32>, MdError>;
    /// Sizes a new array over members of `req.data_sectors`: what its superblocks say.
    fn plan(&self, req: &PlanRequest<'_>) -> Result<SbShape, MdError>;
    /// Builds the per-array layout from the (template) superblock `sb` and the members the
    /// core picked, checking the level's fields (errors name the field). At create and at
    /// assembly alike.
    fn start(&self, sb: &Superblock, req: &StartRequest) -> Result<Arc<dyn Layout>, MdError>;
    /// Whether an array that stopped unclean (dirty) may start degraded without `force`.
    /// True (the default) for the copy levels: every in-sync copy holds the data, the resync
    /// makes the copies agree. A parity level answers false — the write hole: a stripe written
    /// in flight may hold parity that matches neither its old nor its new data, so a missing
    /// member rebuilt from it would be silently wrong (the kernel's "cannot start dirty
    /// degraded array" unless `start_dirty_degraded`, mdadm's `--force`). Assembly asks.
    fn starts_dirty_degraded(&self) -> bool {
        true
    }
    /// mdadm --examine's "Array Size" in sectors, from one member's superblock.
    fn examine_array_sectors(&self, sb: &Superblock) -> u64;
    /// mdadm --examine's "Layout" line, if the level has one.
    fn examine_layout_text(&self, _sb: &Superblock) -> Option<String> {
        None
    }
    /// mdadm --detail's "Layout" (`md_get_arrays`), if the level has one.
    fn detail_layout_text(&self, _sb: &Superblock) -> Option<String> {
        None
    }
}

impl Debug for dyn Personality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A running array's layout (module docs): immutable, shared by every core and the sync engine.
pub(crate) trait Layout: Send + Sync + Debug {
    /// Size, data offset and block sizes.
    fn geometry(&self) -> &Arc<Geometry>;
    /// The array's health when the members `live` says (per role) work. Control path, and the
    /// data path after a degraded write.
    fn health(&self, live: &dyn Fn(MemberIdx) -> bool) -> Health;
    /// Whether the array still holds every sector once role `member` is lost as well, with the
    /// roles `live` says working: what `md_fail` asks before it fails a member (Linux md
    /// refuses with EBUSY to fail the last in-sync copy of any data, and any member of a level
    /// without redundancy). Control path. The default answers from [`Layout::health`] over the
    /// live set without `member`, so a level gets the rule from its health alone; a level
    /// overrides it only if it knows better.
    fn can_lose(&self, live: &dyn Fn(MemberIdx) -> bool, member: MemberIdx) -> bool {
        self.health(&|m| m != member && live(m)) != Health::Failed
    }
    /// The bdev's optimal I/O boundary in sectors (0: none).
    fn optimal_io_boundary_sectors(&self) -> u64 {
        0
    }
    /// The route the bdev layer may use instead of calling the array, over this core's paths to
    /// the members (None where a member has none). Called on a core when its members or its
    /// binding change; the core publishes no route while the array is dead.
    fn route(&self, _paths: &[Option<ForwardPath>]) -> Option<Route> {
        None
    }
    /// The array's state on the calling core: builds the level's [`Lane`] and hands it to
    /// [`MdCore::new`] with `setup`. Called by the array's `IoDevice` factory.
    fn core(self: Arc<Self>, setup: CoreSetup) -> MdCore;
    /// The sync shape: Some exactly for levels with [`Caps::resync`].
    fn sync(&self) -> Option<&dyn SyncShape> {
        None
    }
}

/// A layout's channel on one core (module docs). Every method runs on that core, inside the
/// core's state; the core owns the members, the splitter and the completion queue, the lane
/// only what it maps with.
pub(crate) trait Lane: Sized + 'static {
    /// The sync-space range (see [`SyncShape`]) a write of array sectors `[start, end)` touches:
    /// what the write gate holds it on and the bitmap marks. Identity for the copy levels.
    #[inline(always)]
    fn gate_range(&self, start: u64, end: u64) -> (u64, u64) {
        (start, end)
    }
    /// Called first for every request: may forward it (returning the outcome) or hands it back.
    /// Must leave dead arrays ([`Members::dead`]) and flush/reset to the core.
    #[inline(always)]
    fn fast(&mut self, _m: &Members, io: IoBox) -> Result<Submit, IoBox> {
        Err(io)
    }
    /// A read, or a write the gate admitted (`ticket`; None for levels without a gate or for
    /// reads). Forwards in place, splits, or completes the request; a ticket goes on with the
    /// request into [`LaneCx::split`].
    fn submit(&mut self, cx: &mut LaneCx<'_>, io: IoBox, ticket: Option<WriteTicket>) -> Submit;
    /// The splitter asks for the next piece of a parent of `op` at `cur` (a read or write the
    /// lane split; flush and reset fan out without the lane). The lane moves `cur` past
    /// what it returns. A piece that needs a child while the pool is empty is asked for again
    /// later (from the same cursor), so what the lane changes besides `cur` (a read rotation)
    /// must be harmless to repeat.
    fn next_piece(&mut self, m: &Members, op: IoOp, cur: &mut Cursor) -> Piece;
    /// A child failed (not `Aborted`): what it means for its parent.
    fn child_failed(&mut self, _m: &Members, _child: &FailedChild) -> Verdict {
        Verdict::Fail
    }
    /// A parent's last child is done: its final status. `degraded`: some piece was not written
    /// everywhere (a [`Verdict::Absorb`], or a [`Cursor::degraded`] mark).
    fn parent_done(&mut self, _m: &Members, _op: IoOp, status: IoStatus, _degraded: bool) -> IoStatus {
        status
    }
    /// A request forwarded in place to `member` failed; its offset is the caller's again.
    fn forward_failed(&mut self, _cx: &mut LaneCx<'_>, io: IoBox, _member: MemberIdx) {
        let status = crate::channel::upward(io.status());
        io.complete(status);
    }
    /// A request the lane sent with [`LaneCx::submit_own`] completed (any status); the box is
    /// the lane's again. Only lanes that send their own requests get here.
    fn own_done(&mut self, _cx: &mut LaneCx<'_>, _io: IoBox) {
        unreachable!("a lane that sends its own requests handles their completions")
    }
    /// Whether a flush or reset goes to `member`.
    fn fanout_to(&self, m: &Members, member: MemberIdx) -> bool {
        m.present(member)
    }
    /// Role `member` got another member (or none) on this core.
    fn member_changed(&mut self, _member: MemberIdx) {}
    /// The lane's own step in the core's poller (work it queued); returns the work done.
    fn poll(&mut self, _cx: &mut LaneCx<'_>) -> usize {
        0
    }
    /// The array is going away on this core: drop what is queued (complete it `Aborted`).
    fn quiesce(&mut self) {}
}

/// What the sync engine needs of a layout (module docs). Main reactor.
///
/// The **sync space** is what the resync checkpoint (`resync_offset`), the write-intent bitmap,
/// the write gate's buckets and the sync windows count in: array sectors for the copy levels
/// (as Linux raid1/raid10), a member's component for parity levels (Linux raid5/6). The lane maps
/// a write's array range into it ([`Lane::gate_range`]); the step maps pieces back to members.
pub(crate) trait SyncShape: Send + Sync {
    /// Size of the sync space in sectors.
    fn sync_sectors(&self) -> u64;
    /// Window-sized buffers a run of `action` uses (the engine allocates them at the start).
    fn buffers(&self, action: SyncAction) -> usize;
    /// The smallest piece the step cuts (sizes the engine's piece table).
    fn min_piece_sectors(&self) -> u64;
    /// Level-specific reasons a run cannot go over `roles` roles whose largest block is
    /// `block_sectors` (the engine checked members, targets and alignment).
    fn check(&self, roles: usize, block_sectors: u64) -> Result<(), String>;
    /// Recovery onto a target: member sectors it holds valid data below once the run reached
    /// sync sector `reached` (None: the rebuilt part is not a prefix; the target stays
    /// unreadable until the end).
    fn recovered_member_sectors(&self, _reached: u64) -> Option<u64> {
        None
    }
    /// Recovery: the sync sector to resume at when the targets are valid below member sector
    /// `recovered`.
    fn recovery_start(&self, _recovered: u64) -> u64 {
        0
    }
    /// The step of one run of `action`, its per-piece state sized for windows of up to
    /// `max_pieces` pieces (allocated now: a window reuses it).
    fn step(&self, action: SyncAction, max_pieces: usize) -> Box<dyn SyncStep>;
}

/// A piece of a sync window: sync-space sectors `[sector, sector + len_sectors)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PieceRange {
    pub sector: u64,
    pub len_sectors: u64,
}

/// What [`SyncStep::issue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Member I/O is in flight for the piece.
    Issued,
    /// The piece needs nothing (more): it is done.
    Skipped,
    /// Not enough free requests ([`SyncIo::free`]): call again after completions.
    Busy,
    /// The run cannot go on.
    Failed(String),
}

/// What a completion means for its piece ([`SyncStep::completed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// More of this stage's I/O is in flight.
    Wait,
    /// Issue the piece again (its next stage, or a retry).
    Again,
    /// The piece is done.
    Done,
    /// The run cannot go on.
    Failed(String),
}

/// One member request of a piece came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Completion {
    /// The tag the step gave it.
    pub tag: u8,
    pub member: MemberIdx,
    pub write: bool,
    pub ok: bool,
    /// The piece's requests still in flight.
    pub left: usize,
}

/// One sync run's per-piece logic (module docs). Main reactor, called by the engine only while
/// the window is locked against writes and drained.
pub(crate) trait SyncStep {
    /// Sectors of the piece starting at `sector`, at most `left` (the window's rest): pieces
    /// end where the level's member ranges do.
    fn piece_sectors(&self, sector: u64, left: u64) -> u64;
    /// A new window of `pieces` pieces (indices `0..pieces`) begins.
    fn begin_window(&mut self, pieces: usize);
    /// Issues piece `i`'s next stage through `io`.
    fn issue(&mut self, i: usize, p: PieceRange, io: &mut SyncIo) -> Step;
    /// A request of piece `i` completed (the engine already marked a failed member faulty).
    fn completed(&mut self, i: usize, p: PieceRange, c: Completion, io: &mut SyncIo) -> Next;
}

/// The personality of level `name` (mdadm's spellings, case-insensitive). Levels known only by
/// name are `Unsupported`; anything else is an `InvalidParam` on `level`.
pub(crate) fn by_name(name: &str) -> Result<&'static dyn Personality, MdError> {
    let s = name.to_ascii_lowercase();
    if let Some(p) = PERSONALITIES
        .iter()
        .find(|p| p.name() == s || p.aliases().contains(&s.as_str()))
    {
        return Ok(*p);
    }
    let names: Vec<&str> = PERSONALITIES.iter().map(|p| p.name()).collect();
    if NAME_ONLY.iter().any(|(_, n, a, _)| *n == s || a.contains(&s.as_str())) {
        let list = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.join(""),
        };
        return Err(MdError::Unsupported(format!(
            "level '{name}' is not supported yet (this build has {list})"
        )));
    }
    Err(MdError::invalid(
        "level",
        format!("'{name}' is not an md level ({})", names.join(", ")),
    ))
}

/// The personality of superblock level `level`, or `Unsupported`.
pub(crate) fn by_level(level: i32) -> Result<&'static dyn Personality, MdError> {
    PERSONALITIES
        .iter()
        .find(|p| p.level() == level)
        .copied()
        .ok_or_else(|| MdError::Unsupported(format!("{} arrays are not supported yet", level_name(level))))
}

/// mdadm's name of a superblock level ("raid5", "linear"; "level 7" for what md does not know).
pub fn level_name(level: i32) -> String {
    if let Some(p) = PERSONALITIES.iter().find(|p| p.level() == level) {
        return p.name().to_string();
    }
    match NAME_ONLY.iter().find(|(l, ..)| *l == level) {
        Some((_, n, ..)) => n.to_string(),
        None => format!("level {level}"),
    }
}

/// mdadm --examine's "Array Size" in sectors for any level's superblock.
pub(crate) fn examine_array_sectors(sb: &Superblock) -> u64 {
    if let Ok(p) = by_level(sb.level) {
        return p.examine_array_sectors(sb);
    }
    match NAME_ONLY.iter().find(|(l, ..)| *l == sb.level) {
        Some((.., parity)) => sb.size_sectors * (sb.raid_disks as u64).saturating_sub(*parity),
        None => sb.data_size_sectors * sb.raid_disks as u64,
    }
}

/// mdadm --examine's "Layout" for any level's superblock.
pub(crate) fn examine_layout_text(sb: &Superblock) -> Option<String> {
    by_level(sb.level).ok()?.examine_layout_text(sb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_through_the_registry() {
        assert_eq!(by_name("raid1").unwrap().level(), 1);
        assert_eq!(by_name("MIRROR").unwrap().level(), 1);
        assert_eq!(by_name("10").unwrap().level(), 10);
        assert_eq!(by_name("stripe").unwrap().level(), 0);
        assert_eq!(by_name("-1").unwrap().name(), "linear");
        let e = by_name("raid5").err().unwrap();
        assert!(matches!(e, MdError::Unsupported(_)), "{e:?}");
        assert!(
            e.to_string().contains("this build has linear, raid0, raid1 and raid10"),
            "{e}"
        );
        let e = by_name("raid7").err().unwrap();
        assert!(matches!(e, MdError::InvalidParam { .. }), "{e:?}");
        assert!(e.to_string().contains("(linear, raid0, raid1, raid10)"), "{e}");
        assert!(matches!(by_level(6), Err(MdError::Unsupported(m)) if m == "raid6 arrays are not supported yet"));
        assert_eq!(level_name(-1), "linear");
        assert_eq!(level_name(5), "raid5");
        assert_eq!(level_name(10), "raid10");
        assert_eq!(level_name(7), "level 7");
    }

    #[test]
    fn every_level_is_listed_once_and_caps_agree_with_the_layout() {
        for (i, p) in PERSONALITIES.iter().enumerate() {
            assert!(
                PERSONALITIES[..i].iter().all(|q| q.level() != p.level()),
                "{} twice",
                p.name()
            );
            assert!(NAME_ONLY.iter().all(|(l, ..)| *l != p.level()), "{} runs", p.name());
            let c = p.caps();
            assert!(c.min_members >= 1 && c.max_members == MAX_MEMBERS);
            assert!(!c.default_bitmap || c.bitmap);
            assert_eq!(c.spares, c.failures > 0, "{}", p.name());
        }
    }

    #[test]
    fn examine_sizes_of_levels_known_by_name_only() {
        let sb = Superblock {
            level: 6,
            raid_disks: 5,
            size_sectors: 100,
            ..Default::default()
        };
        assert_eq!(examine_array_sectors(&sb), 300);
        let sb = Superblock { level: 5, ..sb };
        assert_eq!(examine_array_sectors(&sb), 400);
        assert_eq!(examine_layout_text(&sb), None);
    }
}
