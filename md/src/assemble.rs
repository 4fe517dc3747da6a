//! Assembly: starting an array from the superblocks already on its members (`md_assemble`,
//! `mdadm --assemble`), and examine-on-appear (`mdadm --incremental` done by udev on Linux).
//!
//! # Assembly
//!
//! [`MdRegistry::assemble`] runs on the main reactor in three asynchronous steps:
//!
//! 1. **Read.** Every candidate's v1.2 superblock is read through a read-only descriptor
//!    ([`crate::examine::examine`]: no claim, so nothing is held while we look) and checked with
//!    the kernel's load checks ([`Superblock::decode`], [`Superblock::check_fits`]). Candidates
//!    are the bdevs named in `members`, or — without `members` — every registered bdev that
//!    nobody claims and that is not an md array itself (plus what examine-on-appear recorded),
//!    filtered by `uuid` or by `name` (the superblock's set_name, with or without its "host:"
//!    prefix). A *named* member whose superblock fails a check is **refused**: the refusal names
//!    the bdev and the field (`member 'M1' refused: invalid md superblock: sb_csum: …`), is logged
//!    (warn), assembly goes on without it, and if assembly then fails the refusals are part of
//!    the error. Named members of two different arrays are an error.
//! 2. **Decide** ([`classify`], a pure function, unit-tested below). The member with an active
//!    role and the highest `events` is the *freshest*; its superblock is the template and its
//!    role table (`dev_roles`) says who holds which role. Every other member must agree with it
//!    on level, layout, chunk, raid_disks, ctime, size and data_offset, and must not share its
//!    dev_number with another member; else it is refused. Then, per member, by the freshest
//!    table's entry for its dev_number:
//!    * **active role r**, and *fresh* (events ≥ freshest − 1, the kernel's and mdadm's rule:
//!      the clean/dirty roll-back lets members differ by one): `InSync` in r — or `Rebuilding`
//!      from its own `recovery_offset` when it has feature RECOVERY_OFFSET (redundant levels);
//!    * **active role r, stale** (events further behind): redundant levels take it back as
//!      `Rebuilding` in r (recovery; with a bitmap only the dirty chunks, see below). linear and
//!      raid0 cannot recover a member, so a stale member is an **error** naming it (mdadm needs
//!      `--force` there). raid0/linear superblocks are always clean, so "within one event" is
//!      the only allowance, exactly the kernel's;
//!    * **spare** (0xffff, also what a removed member becomes): a redundant array keeps it as a
//!      spare — except a *stale* member whose own superblock still names an active role r that
//!      nobody else fills: it was failed and removed while the array ran on (the kernel's
//!      "re-add"), so it comes back `Rebuilding` in r. linear/raid0 refuse spares;
//!    * **faulty**, **journal**, a role ≥ raid_disks, a role already taken, or a stale member
//!      whose table slot names a different role (its dev_number was reused): refused, with the
//!      reason;
//!    * a fresh member whose own table marks the freshest member faulty is refused (mdadm:
//!      "ignoring X as it reports Y as failed").
//!
//!    Roles nobody fills are `Missing` (degraded). The array must be able to run
//!    ([`Geometry::operational`] over the `InSync` roles: linear/raid0 need every member, raid1
//!    one, raid10 one per copy set), else the error names the missing roles.
//! 3. **Start.** The name (`name`, else the set_name without a "host:" prefix) is reserved, the
//!    used members are opened writable and claimed ([`MemberRec::open`]; dropping them on any
//!    failure releases the claims), the geometry is built as create builds it (raid1: component
//!    `size`; raid10: `size` and the layout word; raid0 and linear: each member's `data_size`, as
//!    the kernel), and with feature BITMAP_OFFSET the bitmap header and bits are read from the
//!    freshest member at `super_offset + bitmap_offset` and checked (magic, version, chunk,
//!    uuid). A bitmap whose events are behind the superblock is marked STALE (every chunk
//!    dirty, full resync), as the kernel does. Rebuilding members recover only the bitmap's
//!    dirty chunks (`readd_bitmap`) when there is a usable bitmap and every one of them
//!    qualifies: a stale member with events ≥ the bitmap's `events_cleared` (bits are never
//!    cleared while degraded, so they cover every write it missed), a partly recovered one whose
//!    recovery was bitmap-guided (RECOVERY_BITMAP); otherwise full recovery. `resync_offset ≠
//!    MaxSector` on the freshest member means an unclean stop: `dirty`, and the resync restarts
//!    at `resync_offset` (0: everything; with a bitmap only the dirty chunks).
//!    [`MdRegistry::start_array`] registers the bdev; if the picture changed (a role missing or
//!    rebuilding) the daemon writes the superblocks at once (events + 1).
//!
//! `events` 0 is valid: the kernel never rewrites raid0/linear superblocks, so mdadm's 0 stays.
//! Only v1.2 superblocks (4 KiB into the member) are read.
//!
//! # Examine on appear
//!
//! [`MdRegistry::enable_auto_assembly`] registers an examiner with the bdev registry
//! ([`BdevRegistry::add_examiner`]). For every bdev that registers later (not claimed, not an
//! md array) it reads the superblock on the main reactor, holding the registry's
//! examine-in-flight count ([`BdevRegistry::examine_begin`]) until everything it started is
//! done. A member of a running array that misses a role is re-added to it
//! ([`MdRegistry::add`]). Otherwise the member is remembered in a per-registry table (array
//! uuid → members and their superblocks); as soon as every role that the freshest recorded
//! superblock lists as active has a fresh holder in the table, the array is assembled with
//! those members (name from set_name). A failed automatic assembly is logged and keeps the
//! table, so a later bdev can complete it. Nothing is claimed until assembly.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};

use keel_bdev::{BdevInfo, BdevRegistry, IoCaps, IoOp};

use crate::array::{parse_uuid, MdRegistry, MemberRec, StartPlan, MODULE};
use crate::bitmap::{BitmapHeader, HEADER_BYTES, STATE_STALE};
use crate::geometry::StartRequest;
use crate::personality::{self, Health, Layout, Personality};
use crate::shared::SlotState;
use crate::superblock::{feature, Role, Superblock, BLOCK_BYTES, MAX_SECTOR, ROLE_SPARE};
use crate::MdError;

/// What `md_assemble` asks for. At least one field must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssembleOpts {
    /// The array (bdev) name; default: the superblock's set_name without a "host:" prefix.
    /// Without `uuid` and `members` it also selects the array by set_name.
    pub name: Option<String>,
    /// The array UUID (mdadm's `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx` or the hyphenated form).
    pub uuid: Option<String>,
    /// Member bdevs (any order). Without it every unclaimed bdev is a candidate.
    pub members: Option<Vec<String>>,
}

/// One candidate whose superblock passed the load checks.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub name: String,
    pub info: BdevInfo,
    pub sb: Superblock,
}

/// What a rebuilding member needs to be recovered from the bitmap alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rebuild {
    /// Stale member taken back: its events (bitmap recovery iff ≥ events_cleared).
    Stale { events: u64 },
    /// Partly recovered member (RECOVERY_OFFSET): whether that recovery was bitmap-guided.
    Partial { bitmap_guided: bool },
}

/// The decision of [`classify`].
#[derive(Debug)]
pub(crate) struct Choice {
    /// Index (into the probes) of the freshest member: the template.
    pub fresh: usize,
    pub personality: &'static dyn Personality,
    /// Per role: (probe index, state, recovered sectors); None = missing.
    pub slots: Vec<Option<(usize, SlotState, u64)>>,
    /// Per rebuilding member, what bitmap recovery needs.
    pub rebuild: Vec<Rebuild>,
    /// Probe indices kept as spares.
    pub spares: Vec<usize>,
    /// Members refused, each message naming the bdev and the reason.
    pub refusals: Vec<String>,
}

/// The array name mdadm derives from a set_name: the part after "host:" (mdadm drops the
/// homehost prefix of a foreign host; a local one is dropped too, since Keel has no homehost).
pub(crate) fn name_from_set_name(set_name: &[u8]) -> String {
    let s = String::from_utf8_lossy(set_name);
    match s.split_once(':') {
        Some((_, n)) => n.to_string(),
        None => s.into_owned(),
    }
}

fn check_name(name: &str) -> Result<(), MdError> {
    if name.is_empty() || name.len() > 32 {
        return Err(MdError::invalid("name", format!("'{name}' must be 1 to 32 bytes")));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(MdError::invalid(
            "name",
            format!("'{name}' contains whitespace or control characters"),
        ));
    }
    Ok(())
}

/// `err` with the refusals appended to its message (same variant).
fn with_refusals(err: MdError, refusals: &[String]) -> MdError {
    if refusals.is_empty() {
        return err;
    }
    let tail = format!(" (refused: {})", refusals.join("; "));
    match err {
        MdError::BadSuperblock { field, reason } => MdError::BadSuperblock {
            field,
            reason: reason + &tail,
        },
        MdError::InvalidParam { param, reason } => MdError::InvalidParam {
            param,
            reason: reason + &tail,
        },
        MdError::Bdev(m) => MdError::Bdev(m + &tail),
        MdError::Io(m) => MdError::Io(m + &tail),
        MdError::Unsupported(m) => MdError::Unsupported(m + &tail),
        MdError::NotFound(m) => MdError::NotFound(m + &tail),
        MdError::Exists(m) => MdError::Exists(m + &tail),
        MdError::Busy(m) => MdError::Busy(m + &tail),
        e @ MdError::ShortBuffer { .. } => MdError::Io(format!("{e}{tail}")),
    }
}

fn refuse(refusals: &mut Vec<String>, bdev: &str, why: impl std::fmt::Display) {
    let msg = format!("member '{bdev}' refused: {why}");
    tracing::warn!(member = bdev, "md assemble: {msg}");
    refusals.push(msg);
}

/// The role the table `roles` gives device `dev_number` (past the table: spare).
fn table_role(roles: &[u16], dev_number: u32) -> Role {
    Role::from_raw(roles.get(dev_number as usize).copied().unwrap_or(ROLE_SPARE))
}

/// Whether a member `events` is recent enough next to the freshest `fresh_events` (kernel:
/// `events + 1 >= freshest`).
fn is_fresh(events: u64, fresh_events: u64) -> bool {
    events.saturating_add(1) >= fresh_events
}

/// Decides roles and states from the members' superblocks (module docs, step 2). `probes` all
/// carry the same set_uuid; `refusals` collects what was refused so far. Pure.
pub(crate) fn classify(probes: &[Probe], mut refusals: Vec<String>) -> Result<Choice, MdError> {
    let fresh = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.sb.own_role(), Role::Active(_)))
        .fold(None::<usize>, |best, (i, p)| match best {
            Some(b) if probes[b].sb.events >= p.sb.events => Some(b),
            _ => Some(i),
        })
        .ok_or_else(|| {
            with_refusals(
                MdError::invalid(
                    "members",
                    "no member holds an active role (only spares or faulty members found)",
                ),
                &refusals,
            )
        })?;
    let t = &probes[fresh].sb;
    let fname = &probes[fresh].name;
    let level = personality::by_level(t.level)?;
    let caps = level.caps();
    for (bit, what) in [
        (feature::RESHAPE_ACTIVE, "a reshape is in progress"),
        (feature::CLUSTERED, "clustered md"),
        (feature::JOURNAL, "a write journal"),
        (feature::PPL, "a partial parity log"),
    ] {
        if t.feature_map & bit != 0 {
            return Err(MdError::Unsupported(format!(
                "array of '{fname}' has {what} (feature_map {:#x}): not supported",
                t.feature_map
            )));
        }
    }
    if t.raid_disks == 0 || t.raid_disks > crate::superblock::MAX_DEV_LIMIT {
        return Err(MdError::bad(
            "raid_disks",
            format!("{} in the superblock of '{fname}'", t.raid_disks),
        ));
    }
    // Levels with resync keep a component of `size` sectors on every member.
    if caps.resync && probes[fresh].sb.data_size_sectors < t.size_sectors {
        return Err(MdError::bad(
            "data_size",
            format!(
                "'{fname}' has {} data sectors, below the component size {}",
                probes[fresh].sb.data_size_sectors, t.size_sectors
            ),
        ));
    }

    // Members that agree with the template.
    let mut usable: Vec<usize> = vec![fresh];
    for (i, p) in probes.iter().enumerate() {
        if i == fresh {
            continue;
        }
        let s = &p.sb;
        let differs = [
            (
                "level",
                s.level as i64 != t.level as i64,
                s.level as i64,
                t.level as i64,
            ),
            ("layout", s.layout != t.layout, s.layout as i64, t.layout as i64),
            (
                "chunksize",
                s.chunk_sectors != t.chunk_sectors,
                s.chunk_sectors as i64,
                t.chunk_sectors as i64,
            ),
            (
                "raid_disks",
                s.raid_disks != t.raid_disks,
                s.raid_disks as i64,
                t.raid_disks as i64,
            ),
            ("ctime", s.ctime != t.ctime, s.ctime as i64, t.ctime as i64),
            (
                "size",
                s.size_sectors != t.size_sectors,
                s.size_sectors as i64,
                t.size_sectors as i64,
            ),
            (
                "data_offset",
                s.data_offset_sectors != t.data_offset_sectors,
                s.data_offset_sectors as i64,
                t.data_offset_sectors as i64,
            ),
        ]
        .into_iter()
        .find(|d| d.1);
        if let Some((field, _, mine, theirs)) = differs {
            refuse(
                &mut refusals,
                &p.name,
                format!("its {field} ({mine}) differs from the freshest member '{fname}' ({theirs})"),
            );
            continue;
        }
        if let Some(&o) = usable.iter().find(|&&o| probes[o].sb.dev_number == s.dev_number) {
            refuse(
                &mut refusals,
                &p.name,
                format!(
                    "it has the same dev_number {} as '{}' (a copy of the same member?)",
                    s.dev_number, probes[o].name
                ),
            );
            continue;
        }
        if caps.resync && s.data_size_sectors < t.size_sectors {
            refuse(
                &mut refusals,
                &p.name,
                format!(
                    "data_size {} is below the component size {}",
                    s.data_size_sectors, t.size_sectors
                ),
            );
            continue;
        }
        usable.push(i);
    }
    // Fresher members first (the freshest leads): they win a contested role.
    usable.sort_by(|&a, &b| probes[b].sb.events.cmp(&probes[a].sb.events).then(a.cmp(&b)));
    if let Some(pos) = usable.iter().position(|&i| i == fresh) {
        usable.remove(pos);
        usable.insert(0, fresh);
    }

    let n = t.raid_disks as usize;
    let mut slots: Vec<Option<(usize, SlotState, u64)>> = vec![None; n];
    let mut rebuild = Vec::new();
    let mut spares = Vec::new();
    let mut readd: Vec<(usize, usize)> = Vec::new();
    let fresh_dev = t.dev_number;
    for &i in &usable {
        let p = &probes[i];
        let s = &p.sb;
        let fresh_enough = is_fresh(s.events, t.events);
        match table_role(&t.dev_roles, s.dev_number) {
            Role::Active(r) if (r as usize) < n => {
                let r = r as usize;
                if !fresh_enough && s.own_role() != Role::Active(r as u16) {
                    refuse(
                        &mut refusals,
                        &p.name,
                        format!(
                            "it is out of date (events {}, array {}) and its slot {} now holds role {r}; add it back with md_add",
                            s.events, t.events, s.dev_number
                        ),
                    );
                    continue;
                }
                if i != fresh && fresh_enough && table_role(&s.dev_roles, fresh_dev) == Role::Faulty {
                    refuse(
                        &mut refusals,
                        &p.name,
                        format!("it reports the freshest member '{fname}' as failed"),
                    );
                    continue;
                }
                if let Some((o, _, _)) = slots[r] {
                    refuse(
                        &mut refusals,
                        &p.name,
                        format!("role {r} is already held by '{}'", probes[o].name),
                    );
                    continue;
                }
                if fresh_enough {
                    if s.feature_map & feature::RECOVERY_OFFSET != 0 {
                        if !caps.spares {
                            return Err(with_refusals(
                                MdError::invalid(
                                    "members",
                                    format!(
                                        "'{}' (role {r}) is only partly recovered; {} cannot recover a member",
                                        p.name,
                                        level.name()
                                    ),
                                ),
                                &refusals,
                            ));
                        }
                        slots[r] = Some((i, SlotState::Rebuilding, s.recovery_offset_sectors));
                        rebuild.push(Rebuild::Partial {
                            bitmap_guided: s.feature_map & feature::RECOVERY_BITMAP != 0,
                        });
                    } else {
                        slots[r] = Some((i, SlotState::InSync, 0));
                    }
                } else if caps.spares {
                    tracing::warn!(
                        member = %p.name, role = r, events = s.events, array_events = t.events,
                        "md assemble: member is out of date; it comes back rebuilding"
                    );
                    slots[r] = Some((i, SlotState::Rebuilding, 0));
                    rebuild.push(Rebuild::Stale { events: s.events });
                } else {
                    return Err(with_refusals(
                        MdError::invalid(
                            "members",
                            format!(
                                "'{}' (role {r}) is out of date: events {}, the array's {} (from '{fname}'); {} cannot recover a member",
                                p.name,
                                s.events,
                                t.events,
                                level.name()
                            ),
                        ),
                        &refusals,
                    ));
                }
            }
            Role::Active(r) => refuse(&mut refusals, &p.name, format!("its role {r} is beyond raid_disks {n}")),
            Role::Spare if !caps.spares => refuse(
                &mut refusals,
                &p.name,
                format!("it is not an active member ({} has no spares)", level.name()),
            ),
            Role::Spare => match s.own_role() {
                Role::Active(r) if !fresh_enough && (r as usize) < n => readd.push((i, r as usize)),
                _ => spares.push(i),
            },
            Role::Faulty => refuse(
                &mut refusals,
                &p.name,
                format!("the freshest member '{fname}' records it as faulty"),
            ),
            Role::Journal => refuse(&mut refusals, &p.name, "journal devices are not supported"),
        }
    }
    // Removed while the array ran on: back into its old role if that is free.
    for (i, r) in readd {
        if slots[r].is_none() {
            tracing::warn!(
                member = %probes[i].name, role = r, events = probes[i].sb.events, array_events = t.events,
                "md assemble: removed member comes back rebuilding"
            );
            slots[r] = Some((i, SlotState::Rebuilding, 0));
            rebuild.push(Rebuild::Stale {
                events: probes[i].sb.events,
            });
        } else {
            spares.push(i);
        }
    }
    Ok(Choice {
        fresh,
        personality: level,
        slots,
        rebuild,
        spares,
        refusals,
    })
}

/// The immutable part of a plan, computed from the choice (module docs, step 3).
struct Built {
    layout: Arc<dyn Layout>,
    block_size: u32,
    num_blocks: u64,
    caps: IoCaps,
    chunk_kb: u32,
}

/// Checks the used members' block sizes and operations and starts the personality from the
/// freshest superblock over the chosen roles.
fn build_layout(probes: &[Probe], c: &Choice) -> Result<Built, MdError> {
    let t = &probes[c.fresh].sb;
    let used: Vec<&Probe> = c
        .slots
        .iter()
        .flatten()
        .map(|s| s.0)
        .chain(c.spares.iter().copied())
        .map(|i| &probes[i])
        .collect();
    for p in &used {
        let bs = p.info.block_size;
        if !bs.is_power_of_two() || !(512..=BLOCK_BYTES as u32).contains(&bs) {
            return Err(MdError::invalid(
                "members",
                format!("'{}' has block size {bs}: md needs 512 to 4096 bytes", p.name),
            ));
        }
        for op in [IoOp::Read, IoOp::Write] {
            if !p.info.caps.supports(op) {
                return Err(MdError::invalid(
                    "members",
                    format!("'{}' does not support {}", p.name, op.name()),
                ));
            }
        }
    }
    let block_size = used.iter().map(|p| p.info.block_size).max().unwrap_or(512);
    let block_sectors = block_size as u64 / 512;
    if !t.data_offset_sectors.is_multiple_of(block_sectors) {
        return Err(MdError::bad(
            "data_offset",
            format!(
                "{} sectors is not a multiple of the members' block size {block_size}",
                t.data_offset_sectors
            ),
        ));
    }
    let block_shift = block_sectors.trailing_zeros();
    let req = StartRequest {
        data_offset_sectors: t.data_offset_sectors,
        block_shift,
        member_shifts: c
            .slots
            .iter()
            .map(|s| match s {
                Some((i, _, _)) => (probes[*i].info.block_size / 512).trailing_zeros(),
                None => block_shift,
            })
            .collect(),
        data_sectors: c
            .slots
            .iter()
            .map(|s| s.map(|(i, _, _)| probes[i].sb.data_size_sectors))
            .collect(),
    };
    let layout = c.personality.start(t, &req)?;
    let size = layout.geometry().size_sectors;
    if size == 0 || !size.is_multiple_of(block_sectors) {
        return Err(MdError::bad(
            "size",
            format!("an array of {size} sectors over blocks of {block_size} bytes"),
        ));
    }
    let mut ops = vec![IoOp::Read, IoOp::Write, IoOp::Flush, IoOp::Reset];
    for op in [IoOp::Unmap, IoOp::WriteZeroes] {
        if used.iter().all(|p| p.info.caps.supports(op)) {
            ops.push(op);
        }
    }
    Ok(Built {
        layout,
        block_size,
        num_blocks: size / block_sectors,
        caps: IoCaps::of(&ops),
        chunk_kb: if c.personality.caps().chunked {
            t.chunk_sectors / 2
        } else {
            0
        },
    })
}

/// The roles nobody can read ("0, 2").
fn missing_text(states: &[SlotState]) -> String {
    let v: Vec<String> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| **s != SlotState::InSync)
        .map(|(r, s)| match s {
            SlotState::Rebuilding => format!("{r} (out of date)"),
            _ => r.to_string(),
        })
        .collect();
    v.join(", ")
}

/// A reserved array name, released when dropped.
struct Reservation {
    md: Arc<MdRegistry>,
    name: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.md.unreserve(&self.name);
    }
}

/// A request after its parameters were checked.
struct Request {
    name: Option<String>,
    uuid: Option<[u8; 16]>,
    /// Members were named (a bad superblock is a refusal, not "not a member").
    named: bool,
}

/// A candidate's name and what reading its superblock gave.
type ProbeResult = (String, Result<Probe, MdError>);

/// Reads the superblocks of `names` (read-only descriptors); `done` gets, per name in order,
/// the decoded superblock and the bdev's facts, or why not. Main reactor.
fn read_superblocks(reg: &Arc<BdevRegistry>, names: Vec<String>, done: impl FnOnce(Vec<ProbeResult>) + 'static) {
    struct St {
        left: usize,
        results: Vec<Option<Result<Probe, MdError>>>,
        names: Vec<String>,
        done: Option<Box<dyn FnOnce(Vec<ProbeResult>)>>,
    }
    if names.is_empty() {
        return done(Vec::new());
    }
    let st = Rc::new(RefCell::new(St {
        left: names.len(),
        results: (0..names.len()).map(|_| None).collect(),
        names: names.clone(),
        done: Some(Box::new(done)),
    }));
    for (i, name) in names.into_iter().enumerate() {
        let st = st.clone();
        let r2 = reg.clone();
        let n2 = name.clone();
        crate::examine::examine(reg, &n2, move |r| {
            let r = r.and_then(|ex| {
                let info = r2
                    .get(&name)
                    .map(|b| b.info().clone())
                    .ok_or_else(|| MdError::NotFound(format!("bdev '{name}' went away")))?;
                Ok(Probe {
                    name: name.clone(),
                    info,
                    sb: ex.sb,
                })
            });
            let mut s = st.borrow_mut();
            s.results[i] = Some(r);
            s.left -= 1;
            if s.left == 0 {
                let names = std::mem::take(&mut s.names);
                let results = std::mem::take(&mut s.results);
                let d = s.done.take();
                drop(s);
                if let Some(d) = d {
                    d(names
                        .into_iter()
                        .zip(results)
                        .map(|(n, r)| (n, r.expect("every read answered")))
                        .collect());
                }
            }
        });
    }
}

impl MdRegistry {
    /// `md_assemble`: starts an existing array from its members' superblocks (see the module
    /// docs for the rules). Called on the main reactor; `done` runs there with the array's name
    /// once its bdev is registered, or with the first problem (nothing claimed or registered
    /// then; refused members are listed in the message).
    pub fn assemble(self: &Arc<Self>, opts: AssembleOpts, done: impl FnOnce(Result<String, MdError>) + 'static) {
        let prep = (|| {
            let reg = self.bdevs()?;
            if let Some(n) = &opts.name {
                check_name(n)?;
            }
            let uuid = opts.uuid.as_deref().map(parse_uuid).transpose()?;
            if let Some(u) = uuid {
                if let Some(name) = self.already_running(&u, &opts)? {
                    return Ok(Err(name));
                }
            }
            let names = match &opts.members {
                Some(m) => {
                    if m.is_empty() {
                        return Err(MdError::invalid("members", "must not be empty"));
                    }
                    for (i, x) in m.iter().enumerate() {
                        if m[..i].contains(x) {
                            return Err(MdError::Busy(format!("member '{x}' is listed twice")));
                        }
                        match reg.get(x) {
                            None => return Err(MdError::NotFound(format!("member bdev '{x}' not found"))),
                            Some(b) => {
                                if let Some(by) = b.claimed_by() {
                                    return Err(MdError::Busy(format!("member '{x}' is claimed by module '{by}'")));
                                }
                            }
                        }
                    }
                    m.clone()
                }
                None => {
                    if uuid.is_none() && opts.name.is_none() {
                        return Err(MdError::invalid(
                            "uuid",
                            "give the array's uuid, its name or its members",
                        ));
                    }
                    let mut names: Vec<String> = reg
                        .list()
                        .iter()
                        .filter(|b| b.claimed_by().is_none() && b.info().module != MODULE && !b.is_removed())
                        .map(|b| b.name().to_string())
                        .collect();
                    if let Some(u) = uuid {
                        for n in examined_members(self, &u) {
                            if !names.contains(&n) && reg.get(&n).is_some_and(|b| b.claimed_by().is_none()) {
                                names.push(n);
                            }
                        }
                    }
                    names
                }
            };
            Ok(Ok((
                reg,
                Request {
                    name: opts.name.clone(),
                    uuid,
                    named: opts.members.is_some(),
                },
                names,
            )))
        })();
        let (reg, req, names) = match prep {
            Ok(Ok(x)) => x,
            Ok(Err(running)) => return done(Ok(running)),
            Err(e) => return done(Err(e)),
        };
        let me = self.clone();
        read_superblocks(&reg, names, move |results| {
            me.assemble_read(req, results, Box::new(done))
        });
    }

    /// Array `uuid` is running already: `Some(its name)` when that is what `opts` asks for (the
    /// same name, if one is given, and members that are all in it, if given) — assembling is
    /// idempotent, so a configuration replayed after examine-on-appear assembled the array
    /// does not fail; an error when `opts` asks for something else.
    fn already_running(&self, uuid: &[u8; 16], opts: &AssembleOpts) -> Result<Option<String>, MdError> {
        let running = self
            .arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|a| &a.set_uuid == uuid)
            .cloned();
        let Some(a) = running else {
            return Ok(None);
        };
        let ctl = a.ctl();
        let same_members = opts.members.as_ref().is_none_or(|want| {
            want.iter().all(|w| {
                ctl.slots
                    .iter()
                    .flatten()
                    .chain(ctl.spares.iter())
                    .any(|m| &m.name == w)
            })
        });
        let same_name = opts.name.as_deref().is_none_or(|n| n == a.name);
        if same_name && same_members && ctl.stop.is_none() {
            Ok(Some(a.name.clone()))
        } else {
            Err(MdError::Exists(format!(
                "array {} is already running as '{}'",
                Superblock::uuid_text(uuid),
                a.name
            )))
        }
    }

    /// Step 2 and 3 once every superblock is read.
    fn assemble_read(
        self: &Arc<Self>,
        req: Request,
        results: Vec<ProbeResult>,
        done: Box<dyn FnOnce(Result<String, MdError>)>,
    ) {
        let mut refusals = Vec::new();
        let mut probes = Vec::new();
        for (name, r) in results {
            match r {
                Ok(p) => probes.push(p),
                Err(e) if req.named => refuse(&mut refusals, &name, e),
                Err(e) => tracing::debug!(bdev = %name, error = %e, "md assemble: not a member"),
            }
        }
        if !req.named {
            probes.retain(|p| match (&req.uuid, &req.name) {
                (Some(u), _) => &p.sb.set_uuid == u,
                (None, Some(n)) => p.sb.set_name == n.as_bytes() || name_from_set_name(&p.sb.set_name) == *n,
                (None, None) => false,
            });
        }
        // One array per request.
        let mut uuids: Vec<[u8; 16]> = Vec::new();
        for p in &probes {
            if !uuids.contains(&p.sb.set_uuid) {
                uuids.push(p.sb.set_uuid);
            }
        }
        if let Some(u) = req.uuid.filter(|u| req.named && uuids.iter().any(|x| x != u)) {
            let others: Vec<String> = probes
                .iter()
                .filter(|p| p.sb.set_uuid != u)
                .map(|p| format!("'{}' belongs to {}", p.name, Superblock::uuid_text(&p.sb.set_uuid)))
                .collect();
            return done(Err(with_refusals(
                MdError::invalid(
                    "members",
                    format!(
                        "not members of array {}: {}",
                        Superblock::uuid_text(&u),
                        others.join(", ")
                    ),
                ),
                &refusals,
            )));
        }
        if uuids.len() > 1 {
            let groups: Vec<String> = uuids
                .iter()
                .map(|u| {
                    let names: Vec<&str> = probes
                        .iter()
                        .filter(|p| &p.sb.set_uuid == u)
                        .map(|p| p.name.as_str())
                        .collect();
                    format!("{} of array {}", names.join(", "), Superblock::uuid_text(u))
                })
                .collect();
            return done(Err(with_refusals(
                MdError::invalid("members", format!("members of different arrays: {}", groups.join("; "))),
                &refusals,
            )));
        }
        let Some(set_uuid) = uuids.first().copied() else {
            let what = match (&req.uuid, &req.name) {
                (Some(u), _) => format!("array {}", Superblock::uuid_text(u)),
                (None, Some(n)) => format!("array '{n}'"),
                (None, None) => "the array".into(),
            };
            let running = req.uuid.and_then(|u| {
                self.arrays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .find(|a| a.set_uuid == u)
                    .map(|a| a.name.clone())
            });
            let e = if let Some(n) = running {
                MdError::Exists(format!("{what} is already running as '{n}'"))
            } else if req.named {
                MdError::invalid("members", format!("no usable member of {what}"))
            } else {
                MdError::NotFound(format!("no unclaimed bdev holds a member of {what}"))
            };
            return done(Err(with_refusals(e, &refusals)));
        };
        let running = self
            .arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|a| a.set_uuid == set_uuid)
            .map(|a| a.name.clone());
        if let Some(n) = running {
            return done(Err(MdError::Exists(format!(
                "array {} is already running as '{n}'",
                Superblock::uuid_text(&set_uuid)
            ))));
        }
        let choice = match classify(&probes, refusals) {
            Ok(c) => c,
            Err(e) => return done(Err(e)),
        };
        match self.prepare(&probes, choice, req.name) {
            Ok((pending, None)) => self.finish_start(pending, None, done),
            Ok((pending, Some(bm))) => {
                let me = self.clone();
                read_bitmap(bm, move |r| me.finish_start(pending, Some(r), done));
            }
            Err(e) => done(Err(e)),
        }
    }

    /// Name, claims, geometry: everything but the bitmap.
    fn prepare(
        self: &Arc<Self>,
        probes: &[Probe],
        c: Choice,
        req_name: Option<String>,
    ) -> Result<(Pending, Option<BitmapRead>), MdError> {
        let fail = |e: MdError| with_refusals(e, &c.refusals);
        let t = &probes[c.fresh].sb;
        let states: Vec<SlotState> = c.slots.iter().map(|s| s.map_or(SlotState::Missing, |x| x.1)).collect();
        let level = c.personality;
        if level.caps().failures == 0 && states.iter().any(|s| *s != SlotState::InSync) {
            return Err(fail(MdError::invalid(
                "members",
                format!(
                    "{} {} cannot start without role {}: every member is needed",
                    level.name(),
                    Superblock::uuid_text(&t.set_uuid),
                    missing_text(&states)
                ),
            )));
        }
        let built = build_layout(probes, &c).map_err(fail)?;
        if built.layout.health(&|r| states[r.idx()] == SlotState::InSync) == Health::Failed {
            return Err(fail(MdError::invalid(
                "members",
                format!(
                    "{} {} cannot start: no in-sync copy of some data (roles {} not available)",
                    level.name(),
                    Superblock::uuid_text(&t.set_uuid),
                    missing_text(&states)
                ),
            )));
        }
        let reg = self.bdevs().map_err(fail)?;
        let name = match req_name {
            Some(n) => n,
            None => {
                let n = name_from_set_name(&t.set_name);
                check_name(&n).map_err(|_| {
                    fail(MdError::invalid(
                        "name",
                        format!(
                            "the superblock's set_name '{}' is not usable as an array name: give one",
                            String::from_utf8_lossy(&t.set_name)
                        ),
                    ))
                })?;
                n
            }
        };
        if !self.reserve(&reg, &name) {
            return Err(fail(MdError::Exists(format!("name '{name}' is already in use"))));
        }
        let res = Reservation {
            md: self.clone(),
            name: name.clone(),
        };
        // Open and claim; dropping the records on an error releases them.
        let open = |i: usize| MemberRec::open(&reg, &probes[i].name, probes[i].sb.clone()).map_err(fail);
        let mut slots = Vec::with_capacity(c.slots.len());
        for s in &c.slots {
            slots.push(match s {
                Some((i, _, _)) => Some(open(*i)?),
                None => None,
            });
        }
        let mut spares = Vec::with_capacity(c.spares.len());
        for &i in &c.spares {
            spares.push(open(i)?);
        }
        let recovered_sectors: Vec<u64> = c
            .slots
            .iter()
            .map(|s| match s {
                Some((_, SlotState::Rebuilding, rec)) => *rec,
                _ => 0,
            })
            .collect();
        let (resync_cp, dirty) = if level.caps().resync && !t.is_clean() {
            (t.resync_offset, true)
        } else {
            (MAX_SECTOR, false)
        };
        let n = c.slots.len();
        let active_in_table = (0..n)
            .filter(|&r| t.dev_roles.iter().any(|&v| Role::from_raw(v) == Role::Active(r as u16)))
            .count();
        let changed = states.iter().any(|s| *s != SlotState::InSync) || active_in_table != n;
        let bitmap = if t.feature_map & feature::BITMAP_OFFSET != 0 {
            if !level.caps().bitmap {
                return Err(fail(MdError::bad(
                    "feature_map",
                    format!("{} cannot have a write-intent bitmap", level.name()),
                )));
            }
            let at = t.super_offset_sectors as i64 + t.bitmap_offset_sectors as i64;
            if at <= 0 {
                return Err(fail(MdError::bad(
                    "bitmap_offset",
                    format!("{} puts the bitmap before the member's start", t.bitmap_offset_sectors),
                )));
            }
            // The freshest member if it holds a role, else the first in-sync one.
            let role = (0..n)
                .find(|&r| c.slots[r].is_some_and(|s| s.0 == c.fresh))
                .or_else(|| (0..n).find(|&r| states[r] == SlotState::InSync))
                .expect("an operational array has an in-sync member");
            let m = slots[role].as_ref().expect("in a slot");
            Some(BitmapRead {
                channel: Rc::new(m.desc.channel()),
                offset_bytes: at as u64 * 512,
                set_uuid: t.set_uuid,
                member: m.name.clone(),
            })
        } else {
            None
        };
        let plan = StartPlan {
            name,
            personality: level,
            set_uuid: t.set_uuid,
            chunk_kb: built.chunk_kb,
            block_size: built.block_size,
            num_blocks: built.num_blocks,
            caps: built.caps,
            layout: built.layout,
            slots,
            states,
            recovered_sectors,
            spares,
            resync_cp,
            dirty,
            bitmap: None,
            template: t.clone(),
            readd_bitmap: false,
        };
        Ok((
            Pending {
                plan,
                _res: res,
                changed,
                rebuild: c.rebuild,
                refusals: c.refusals,
            },
            bitmap,
        ))
    }

    /// Step 3's end: the bitmap (if any) is read; start the array and answer.
    fn finish_start(
        self: &Arc<Self>,
        mut p: Pending,
        bitmap: Option<Result<(BitmapHeader, Vec<u8>), MdError>>,
        done: Box<dyn FnOnce(Result<String, MdError>)>,
    ) {
        match bitmap {
            None => {}
            Some(Err(e)) => return done(Err(with_refusals(e, &p.refusals))),
            Some(Ok((mut h, bits))) => {
                let events = p.plan.template.events;
                let mut usable = h.state & STATE_STALE == 0;
                if h.events < events {
                    tracing::warn!(
                        array = %p.plan.name, bitmap_events = h.events, events,
                        "md assemble: the bitmap is out of date: every chunk will be resynced"
                    );
                    h.state |= STATE_STALE;
                    usable = false;
                }
                if !usable {
                    // Every bit counts as dirty: resync them all.
                    p.plan.resync_cp = 0;
                }
                p.plan.readd_bitmap = usable
                    && !p.rebuild.is_empty()
                    && p.rebuild.iter().all(|r| match *r {
                        Rebuild::Stale { events } => events >= h.events_cleared,
                        Rebuild::Partial { bitmap_guided } => bitmap_guided,
                    });
                p.plan.bitmap = Some((h, bits));
            }
        }
        let name = p.plan.name.clone();
        let set_uuid = p.plan.set_uuid;
        let summary = format!(
            "{} {}: {}",
            p.plan.personality.name(),
            Superblock::uuid_text(&set_uuid),
            p.plan
                .states
                .iter()
                .enumerate()
                .map(|(r, s)| format!("{r}={}", s.name()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let readd = p.plan.readd_bitmap;
        if let Err(e) = self.start_array(p.plan) {
            return done(Err(with_refusals(e, &p.refusals)));
        }
        drop(p._res);
        if p.changed {
            if let Ok(a) = self.find(&name) {
                a.ctl().sb_needed = true;
                a.wake();
            }
        }
        forget_examined(self, &set_uuid);
        tracing::info!(array = %name, readd_bitmap = readd, "md: assembled {summary}");
        done(Ok(name))
    }
}

/// An assembly whose members are claimed and whose plan is ready but for the bitmap.
struct Pending {
    plan: StartPlan,
    /// Dropped once the bdev holds the name (or on failure).
    _res: Reservation,
    /// The roles differ from the freshest superblock's: write the superblocks at once.
    changed: bool,
    rebuild: Vec<Rebuild>,
    refusals: Vec<String>,
}

/// A bitmap to read from a claimed member.
struct BitmapRead {
    channel: Rc<keel_bdev::Channel>,
    offset_bytes: u64,
    set_uuid: [u8; 16],
    member: String,
}

/// `e` with "(bitmap of 'member')" added.
fn in_bitmap_of(e: MdError, member: &str) -> MdError {
    match e {
        MdError::BadSuperblock { field, reason } => MdError::BadSuperblock {
            field,
            reason: format!("{reason} (bitmap of '{member}')"),
        },
        other => MdError::Io(format!("bitmap of '{member}': {other}")),
    }
}

/// Reads and checks the bitmap header and bit bytes. Main reactor; `done` runs there.
fn read_bitmap(bm: BitmapRead, done: impl FnOnce(Result<(BitmapHeader, Vec<u8>), MdError>) + 'static) {
    let ch = bm.channel.clone();
    crate::meta_io::read(&ch, bm.offset_bytes, BLOCK_BYTES, move |r| {
        let fail = |status: keel_bdev::IoStatus| {
            MdError::Io(format!(
                "reading the bitmap of '{}' at byte {} failed: {}",
                bm.member,
                bm.offset_bytes,
                status.name()
            ))
        };
        let buf = match r {
            Ok(b) => b,
            Err(st) => return done(Err(fail(st))),
        };
        let h = match BitmapHeader::decode(&buf, &bm.set_uuid) {
            Ok(h) => h,
            Err(e) => return done(Err(in_bitmap_of(e, &bm.member))),
        };
        if h.sync_size_sectors == 0 || h.bits() > MAX_BITMAP_BITS {
            return done(Err(in_bitmap_of(
                MdError::bad(
                    "bitmap sync_size",
                    format!(
                        "{} sectors in {}-byte chunks is not a usable bitmap",
                        h.sync_size_sectors, h.chunk_bytes
                    ),
                ),
                &bm.member,
            )));
        }
        let need = HEADER_BYTES + h.bits().div_ceil(8) as usize;
        if need <= buf.len() {
            let bits = buf[HEADER_BYTES..need].to_vec();
            return done(Ok((h, bits)));
        }
        let space = h.space_bytes() as usize;
        let ch2 = bm.channel.clone();
        crate::meta_io::read(&bm.channel, bm.offset_bytes, space, move |r| {
            let _keep = ch2;
            match r {
                Ok(b) => done(Ok((h, b[HEADER_BYTES..need].to_vec()))),
                Err(st) => done(Err(MdError::Io(format!(
                    "reading the bitmap of '{}' failed: {}",
                    bm.member,
                    st.name()
                )))),
            }
        });
    });
}

/// Most bitmap chunks accepted (the in-memory limit of [`crate::intent`]: a 2 MiB bit area).
const MAX_BITMAP_BITS: u64 = 1 << 24;

// ---------------------------------------------------------------------------------------------
// Examine on appear
// ---------------------------------------------------------------------------------------------

/// A member seen by the examiner, waiting for the rest of its array.
#[derive(Debug, Clone)]
struct Examined {
    bdev: String,
    sb: Superblock,
}

/// Per md registry: whether the examiner is installed, and what it saw.
#[derive(Default)]
struct AutoState {
    enabled: bool,
    /// Array uuid → members seen (one entry per bdev name).
    table: Vec<([u8; 16], Vec<Examined>)>,
    /// Arrays being assembled automatically right now.
    assembling: Vec<[u8; 16]>,
}

type AutoStates = Mutex<Vec<(Weak<MdRegistry>, Arc<Mutex<AutoState>>)>>;
static AUTO: AutoStates = Mutex::new(Vec::new());

fn auto_state(md: &Arc<MdRegistry>) -> Arc<Mutex<AutoState>> {
    let mut all = AUTO.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|(w, _)| w.strong_count() > 0);
    if let Some((_, s)) = all
        .iter()
        .find(|(w, _)| w.upgrade().is_some_and(|m| Arc::ptr_eq(&m, md)))
    {
        return s.clone();
    }
    let s = Arc::new(Mutex::new(AutoState::default()));
    all.push((Arc::downgrade(md), s.clone()));
    s
}

/// The auto state of `md` if it has one (never creates it).
fn existing_auto_state(md: &MdRegistry) -> Option<Arc<Mutex<AutoState>>> {
    let all = AUTO.lock().unwrap_or_else(|e| e.into_inner());
    all.iter()
        .find(|(w, _)| std::ptr::eq(w.as_ptr(), md))
        .map(|(_, s)| s.clone())
}

fn lock(s: &Mutex<AutoState>) -> std::sync::MutexGuard<'_, AutoState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bdev names examine-on-appear recorded for array `uuid`.
fn examined_members(md: &MdRegistry, uuid: &[u8; 16]) -> Vec<String> {
    let Some(st) = existing_auto_state(md) else {
        return Vec::new();
    };
    let st = lock(&st);
    st.table
        .iter()
        .find(|(u, _)| u == uuid)
        .map(|(_, v)| v.iter().map(|e| e.bdev.clone()).collect())
        .unwrap_or_default()
}

/// Drops what examine-on-appear recorded for array `uuid` (it is running now).
fn forget_examined(md: &MdRegistry, uuid: &[u8; 16]) {
    if let Some(st) = existing_auto_state(md) {
        lock(&st).table.retain(|(u, _)| u != uuid);
    }
}

/// Whether the recorded members complete their array: every role that the freshest recorded
/// superblock lists as active has a fresh holder among them.
fn complete(entries: &[Examined]) -> bool {
    let Some(fresh) = entries
        .iter()
        .filter(|e| matches!(e.sb.own_role(), Role::Active(_)))
        .max_by_key(|e| e.sb.events)
    else {
        return false;
    };
    let t = &fresh.sb;
    let needed: Vec<u16> = (0..t.raid_disks.min(u16::MAX as u32) as u16)
        .filter(|&r| t.dev_roles.iter().any(|&v| Role::from_raw(v) == Role::Active(r)))
        .collect();
    !needed.is_empty()
        && needed.iter().all(|&r| {
            entries.iter().any(|e| {
                e.sb.ctime == t.ctime
                    && is_fresh(e.sb.events, t.events)
                    && table_role(&t.dev_roles, e.sb.dev_number) == Role::Active(r)
            })
        })
}

/// Holds one examine-in-flight count of the bdev registry until dropped.
struct ExamineToken(Arc<BdevRegistry>);

impl Drop for ExamineToken {
    fn drop(&mut self) {
        self.0.examine_end();
    }
}

impl MdRegistry {
    /// Examine-on-appear (module docs): from now on every bdev that registers in `reg` is
    /// examined for an md superblock, and arrays assemble (or members re-add) by themselves.
    /// Idempotent; bdevs registered before the first call are not examined (assemble them with
    /// `md_assemble`). Any thread; the examination itself runs on the main reactor.
    pub fn enable_auto_assembly(reg: &Arc<BdevRegistry>) {
        let md = MdRegistry::of(reg);
        let st = auto_state(&md);
        {
            let mut s = lock(&st);
            if s.enabled {
                return;
            }
            s.enabled = true;
        }
        let (wreg, wmd) = (Arc::downgrade(reg), Arc::downgrade(&md));
        reg.add_examiner(Arc::new(move |name: &str| {
            let (Some(reg), Some(md)) = (wreg.upgrade(), wmd.upgrade()) else {
                return;
            };
            reg.examine_begin();
            let token = ExamineToken(reg.clone());
            let name = name.to_string();
            let main = reg.cores().main_core();
            // Always by message, even on the main core: the registering module is still on its
            // stack and may not expect a reader of its new bdev yet.
            if let Err(e) = reg.cores().run_on(main, move || md.examine_appeared(token, name)) {
                tracing::warn!(error = %e, "md: cannot examine a new bdev");
            }
        }));
    }

    /// Main reactor: examines the new bdev `name`.
    fn examine_appeared(self: Arc<Self>, token: ExamineToken, name: String) {
        let reg = token.0.clone();
        match reg.get(&name) {
            Some(b) if b.claimed_by().is_none() && b.info().module != MODULE && !b.is_removed() => {}
            _ => return,
        }
        let me = self.clone();
        let n2 = name.clone();
        crate::examine::examine(&reg, &n2, move |r| match r {
            Ok(ex) => me.examined(token, name, ex.sb),
            Err(e) => tracing::debug!(bdev = %name, error = %e, "md examine: no md member"),
        });
    }

    /// Main reactor: bdev `name` holds `sb`.
    fn examined(self: Arc<Self>, token: ExamineToken, name: String, sb: Superblock) {
        let uuid = sb.set_uuid;
        let running = self
            .arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|a| a.set_uuid == uuid)
            .cloned();
        if let Some(a) = running {
            let missing = a.personality.caps().spares
                && a.shared.slots.iter().any(|s| s.state() == SlotState::Missing)
                && a.ctl().stop.is_none();
            if !missing {
                tracing::info!(bdev = %name, array = %a.name, "md examine: member of a running array that misses nothing; left alone");
                return;
            }
            tracing::info!(bdev = %name, array = %a.name, "md examine: re-adding a member of a degraded array");
            let an = a.name.clone();
            self.add(&a.name, &name.clone(), move |r| {
                match r {
                    Ok(()) => tracing::info!(bdev = %name, array = %an, "md examine: member re-added"),
                    Err(e) => tracing::warn!(bdev = %name, array = %an, error = %e, "md examine: re-add failed"),
                }
                drop(token);
            });
            return;
        }
        let st = auto_state(&self);
        let members = {
            let mut s = lock(&st);
            let pos = match s.table.iter().position(|(u, _)| *u == uuid) {
                Some(p) => p,
                None => {
                    s.table.push((uuid, Vec::new()));
                    s.table.len() - 1
                }
            };
            let entries = &mut s.table[pos].1;
            entries.retain(|e| e.bdev != name);
            entries.push(Examined { bdev: name.clone(), sb });
            // Forget members whose bdev went away or was taken meanwhile.
            let reg = token.0.clone();
            entries.retain(|e| reg.get(&e.bdev).is_some_and(|b| b.claimed_by().is_none()));
            if s.assembling.contains(&uuid) || !complete(&s.table[pos].1) {
                None
            } else {
                s.assembling.push(uuid);
                Some(s.table[pos].1.iter().map(|e| e.bdev.clone()).collect::<Vec<_>>())
            }
        };
        let Some(members) = members else {
            tracing::debug!(bdev = %name, uuid = %Superblock::uuid_text(&uuid), "md examine: member recorded; array incomplete");
            return;
        };
        tracing::info!(uuid = %Superblock::uuid_text(&uuid), ?members, "md examine: every member present; assembling");
        let opts = AssembleOpts {
            name: None,
            uuid: Some(Superblock::uuid_text(&uuid)),
            members: Some(members),
        };
        self.assemble(opts, move |r| {
            lock(&st).assembling.retain(|u| *u != uuid);
            match r {
                Ok(n) => tracing::info!(array = %n, "md examine: array assembled automatically"),
                Err(e) => tracing::warn!(uuid = %Superblock::uuid_text(&uuid), error = %e, "md examine: automatic assembly failed"),
            }
            drop(token);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superblock::ROLE_FAULTY;

    fn sb(level: i32, raid_disks: u32, dev_number: u32, events: u64, roles: &[u16]) -> Superblock {
        let mut dev_roles = vec![ROLE_SPARE; 128];
        dev_roles[..roles.len()].copy_from_slice(roles);
        Superblock {
            set_uuid: [7; 16],
            set_name: b"host:arr".to_vec(),
            ctime: 1_700_000_000,
            level,
            chunk_sectors: if matches!(level, 0 | 10) { 128 } else { 0 },
            layout: if level == 10 { 0x102 } else { 0 },
            size_sectors: if level == 0 || level == -1 { 0 } else { 8192 },
            raid_disks,
            data_offset_sectors: 2048,
            data_size_sectors: 8192,
            super_offset_sectors: 8,
            dev_number,
            events,
            resync_offset: MAX_SECTOR,
            dev_roles,
            ..Default::default()
        }
    }

    fn probe(name: &str, sb: Superblock) -> Probe {
        Probe {
            name: name.into(),
            info: BdevInfo {
                name: name.into(),
                uuid: uuid::Uuid::nil(),
                product_name: "test",
                module: "malloc",
                block_size: 512,
                num_blocks: 10240,
                caps: IoCaps::ALL,
                optimal_io_boundary_blocks: 0,
            },
            sb,
        }
    }

    fn states(c: &Choice) -> Vec<Option<(usize, SlotState, u64)>> {
        c.slots.clone()
    }

    #[test]
    fn freshest_wins_and_one_event_behind_is_in_sync() {
        let p = vec![
            probe("a", sb(1, 2, 0, 18, &[0, 1])),
            probe("b", sb(1, 2, 1, 19, &[0, 1])),
        ];
        let c = classify(&p, Vec::new()).unwrap();
        assert_eq!(c.fresh, 1);
        assert_eq!(
            states(&c),
            [Some((0, SlotState::InSync, 0)), Some((1, SlotState::InSync, 0))]
        );
        assert!(c.rebuild.is_empty() && c.refusals.is_empty());
    }

    #[test]
    fn stale_raid1_member_rebuilds_and_removed_one_comes_back() {
        // Still listed in the freshest table, two events behind.
        let p = vec![
            probe("a", sb(1, 2, 0, 20, &[0, 1])),
            probe("b", sb(1, 2, 1, 18, &[0, 1])),
        ];
        let c = classify(&p, Vec::new()).unwrap();
        assert_eq!(c.slots[1], Some((1, SlotState::Rebuilding, 0)));
        assert_eq!(c.rebuild, [Rebuild::Stale { events: 18 }]);
        // Removed (0xffff in the freshest table; the fixture raid1-degraded).
        let p = vec![
            probe("b", sb(1, 2, 1, 17, &[0, 1])),
            probe("a", sb(1, 2, 0, 22, &[0, ROLE_SPARE])),
        ];
        let c = classify(&p, Vec::new()).unwrap();
        assert_eq!(c.fresh, 1);
        assert_eq!(
            states(&c),
            [Some((1, SlotState::InSync, 0)), Some((0, SlotState::Rebuilding, 0))]
        );
        // A fresh spare stays a spare.
        let p = vec![
            probe("a", sb(1, 2, 0, 22, &[0, 1, ROLE_SPARE])),
            probe("b", sb(1, 2, 1, 22, &[0, 1, ROLE_SPARE])),
            probe("s", sb(1, 2, 2, 22, &[0, 1, ROLE_SPARE])),
        ];
        let c = classify(&p, Vec::new()).unwrap();
        assert_eq!(c.spares, [2]);
    }

    #[test]
    fn stale_raid0_member_is_an_error_naming_it() {
        let p = vec![probe("a", sb(0, 2, 0, 5, &[0, 1])), probe("b", sb(0, 2, 1, 3, &[0, 1]))];
        let e = classify(&p, Vec::new()).unwrap_err().to_string();
        assert!(e.contains("'b'") && e.contains("out of date"), "{e}");
        // One behind is accepted (the kernel's rule), events 0 too.
        let p = vec![probe("a", sb(0, 2, 0, 1, &[0, 1])), probe("b", sb(0, 2, 1, 0, &[0, 1]))];
        assert!(classify(&p, Vec::new()).is_ok());
        let p = vec![
            probe("a", sb(-1, 2, 0, 0, &[0, 1])),
            probe("b", sb(-1, 2, 1, 0, &[0, 1])),
        ];
        assert!(classify(&p, Vec::new()).is_ok());
    }

    #[test]
    fn refusals_name_member_and_reason() {
        let mut other = sb(1, 2, 1, 20, &[0, 1]);
        other.ctime += 1;
        let mut faulty_reporter = sb(1, 3, 2, 20, &[0, 1, 2]);
        faulty_reporter.dev_roles[0] = ROLE_FAULTY;
        let p = vec![
            probe("a", sb(1, 3, 0, 20, &[0, 1, 2])),
            probe("b", other),
            probe("c", faulty_reporter),
            probe("d", sb(1, 3, 0, 20, &[0, 1, 2])),
        ];
        let mut p = p;
        p[1].sb.raid_disks = 3;
        p[1].sb.dev_roles[2] = 2;
        let c = classify(&p, Vec::new()).unwrap();
        let r = c.refusals.join("\n");
        assert!(r.contains("member 'b' refused: its ctime"), "{r}");
        assert!(
            r.contains("member 'c' refused: it reports the freshest member 'a' as failed"),
            "{r}"
        );
        assert!(
            r.contains("member 'd' refused: it has the same dev_number 0 as 'a'"),
            "{r}"
        );
        assert_eq!(c.slots, [Some((0, SlotState::InSync, 0)), None, None]);
        // Faulty in the freshest table.
        let p = vec![
            probe("a", sb(1, 2, 0, 20, &[0, ROLE_FAULTY])),
            probe("b", sb(1, 2, 1, 20, &[0, ROLE_FAULTY])),
        ];
        let c = classify(&p, Vec::new()).unwrap();
        assert!(c.refusals[0].contains("'b'") && c.refusals[0].contains("faulty"));
    }

    #[test]
    fn recovery_offset_and_only_spares() {
        let mut b = sb(1, 2, 1, 20, &[0, 1]);
        b.feature_map |= feature::RECOVERY_OFFSET;
        b.recovery_offset_sectors = 4096;
        let p = vec![probe("a", sb(1, 2, 0, 20, &[0, 1])), probe("b", b)];
        let c = classify(&p, Vec::new()).unwrap();
        assert_eq!(c.slots[1], Some((1, SlotState::Rebuilding, 4096)));
        assert_eq!(c.rebuild, [Rebuild::Partial { bitmap_guided: false }]);
        let p = vec![probe("s", sb(1, 2, 3, 20, &[0, 1]))];
        let e = classify(&p, vec!["member 'x' refused: y".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("only spares") && e.contains("member 'x' refused"), "{e}");
    }

    #[test]
    fn layouts_and_missing_roles() {
        // raid0 over 2 × 8192 sectors with 64 KiB chunks.
        let p = vec![probe("a", sb(0, 2, 0, 0, &[0, 1])), probe("b", sb(0, 2, 1, 0, &[0, 1]))];
        let c = classify(&p, Vec::new()).unwrap();
        let l = build_layout(&p, &c).unwrap();
        assert_eq!((l.num_blocks, l.chunk_kb), (16384, 64));
        // raid10 n2 over 4: sets {0,1}, {2,3}.
        let p: Vec<Probe> = (0..4)
            .map(|i| probe(&format!("m{i}"), sb(10, 4, i, 9, &[0, 1, 2, 3])))
            .collect();
        let q = [p[0].clone(), p[2].clone()];
        let c = classify(&q, Vec::new()).unwrap();
        let l = build_layout(&q, &c).unwrap();
        assert_eq!(l.num_blocks, 8192 * 2);
        let alive: Vec<bool> = c.slots.iter().map(|s| s.is_some()).collect();
        assert_ne!(l.layout.health(&|r| alive[r.idx()]), Health::Failed);
        let q = [p[0].clone(), p[1].clone()];
        let c = classify(&q, Vec::new()).unwrap();
        let alive: Vec<bool> = c.slots.iter().map(|s| s.is_some()).collect();
        assert_eq!(
            build_layout(&q, &c).unwrap().layout.health(&|r| alive[r.idx()]),
            Health::Failed
        );
        assert_eq!(
            missing_text(&[SlotState::InSync, SlotState::Missing, SlotState::Rebuilding]),
            "1, 2 (out of date)"
        );
    }

    #[test]
    fn names_and_completeness() {
        assert_eq!(name_from_set_name(b"host:arr"), "arr");
        assert_eq!(name_from_set_name(b"fxr1"), "fxr1");
        let e = |bdev: &str, s: Superblock| Examined {
            bdev: bdev.into(),
            sb: s,
        };
        let a = e("a", sb(1, 2, 0, 22, &[0, ROLE_SPARE]));
        let b = e("b", sb(1, 2, 1, 17, &[0, 1]));
        assert!(!complete(std::slice::from_ref(&b)), "b alone believes in two roles");
        assert!(complete(&[b.clone(), a.clone()]), "a's table only needs role 0");
        assert!(complete(&[a]));
        let c0 = e("c0", sb(0, 2, 0, 0, &[0, 1]));
        let c1 = e("c1", sb(0, 2, 1, 0, &[0, 1]));
        assert!(!complete(std::slice::from_ref(&c0)));
        assert!(complete(&[c0, c1]));
    }
}
