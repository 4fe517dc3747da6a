//! Assembly: starting an array from the superblocks already on its members (`md_assemble`,
//! `mdadm --assemble`), and examine-on-appear (`mdadm --incremental` done by udev on Linux).
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
//! 2. **Decide** ([`classify`](classify::classify), a pure function; its module says the
//!    rules). The freshest member's superblock is the template; every member gets a role and a
//!    state (in sync, rebuilding, spare) or is refused with the reason; roles nobody fills are
//!    missing (degraded). The array must be able to run (the layout's [`Health`] over the
//!    `InSync` roles is not `Failed`), else the error names the missing roles.
//! 3. **Start.** The name (`name`, else the set_name without a "host:" prefix) is reserved, the
//!    used members are opened writable and claimed ([`MemberRec::open`]; dropping them on any
//!    failure releases the claims), the level's personality starts the array from the freshest
//!    superblock and each role's `data_size` exactly as create starts it
//!    ([`crate::personality::Personality::start`]), and with feature BITMAP_OFFSET the bitmap header and bits are read from the
//!    freshest member at `super_offset + bitmap_offset` and checked (magic, version, chunk,
//!    uuid). A bitmap whose events are behind the superblock is marked STALE (every chunk
//!    dirty, full resync), as the kernel does. Rebuilding members recover only the bitmap's
//!    dirty chunks (`readd_bitmap`) when there is a usable bitmap and every one of them
//!    qualifies: a stale member with events ≥ the bitmap's `events_cleared` (bits are never
//!    cleared while degraded, so they cover every write it missed), a partly recovered one whose
//!    recovery was bitmap-guided (RECOVERY_BITMAP); otherwise full recovery. `resync_offset ≠
//!    MaxSector` on the freshest member means an unclean stop: `dirty`, and the resync restarts
//!    at `resync_offset` (0: everything; with a bitmap only the dirty chunks). A dirty array
//!    that is also degraded does not start for a level whose personality says so
//!    (`starts_dirty_degraded`: the parity levels' write hole, the kernel's "cannot start dirty
//!    degraded array") unless `force` is given; the copy levels start (every in-sync copy holds
//!    the data, the resync makes the copies agree).
//!    [`MdRegistry::start_array`] registers the bdev; if the picture changed (a role missing or
//!    rebuilding) the daemon writes the superblocks at once (events + 1).
//!
//! `events` 0 is valid: the kernel never rewrites raid0/linear superblocks, so mdadm's 0 stays.
//! Only v1.2 superblocks (4 KiB into the member) are read.
//!
//! The module is split by concern: this file orchestrates the steps, [`classify`](mod@classify) decides roles
//! and states, [`appear`] (examine-on-appear) assembles arrays by itself as their members show
//! up.

mod appear;
mod classify;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use keel_bdev::{BdevRegistry, IoCaps, IoOp};

use crate::array::{parse_uuid, MdRegistry, MemberRec, StartPlan, MODULE};
use crate::bitmap::{BitmapHeader, HEADER_BYTES, STATE_STALE};
use crate::geometry::StartRequest;
use crate::personality::{Health, Layout};
use crate::shared::SlotState;
use crate::superblock::{feature, Role, Superblock, BLOCK_BYTES, MAX_SECTOR};
use crate::MdError;
pub(crate) use appear::AutoState;
use appear::{examined_members, forget_examined};
pub(crate) use classify::Probe;
use classify::{classify, name_from_set_name, refuse, with_refusals, Choice, Rebuild};

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
    /// Start an array of a level that refuses to start dirty and degraded
    /// ([`Personality::starts_dirty_degraded`](crate::personality::Personality::starts_dirty_degraded):
    /// the parity levels' write hole) anyway, as `mdadm --assemble --force` / the kernel's
    /// `start_dirty_degraded`.
    pub force: bool,
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

/// Assembly's decision and the level's start over `probes`, without bdevs (the fuzz target's
/// view of `md_assemble`, `crate::fuzz`): the layout and, per role, whether it is in sync.
/// Pure.
pub(crate) fn dry_run(probes: &[Probe]) -> Result<(Arc<dyn Layout>, Vec<bool>), MdError> {
    let c = classify(probes, Vec::new())?;
    let built = build_layout(probes, &c)?;
    let live = c
        .slots
        .iter()
        .map(|s| matches!(s, Some((_, SlotState::InSync, _))))
        .collect();
    Ok((built.layout, live))
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
    force: bool,
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
                    force: opts.force,
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
        match self.prepare(&probes, choice, req.name, req.force) {
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
        force: bool,
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
        if dirty && !force && !level.starts_dirty_degraded() && states.iter().any(|s| *s != SlotState::InSync) {
            return Err(fail(MdError::Busy(format!(
                "{} {} stopped unclean and is degraded (roles {} not in sync): data written in flight may be lost without notice (the write hole); pass force to start it anyway",
                level.name(),
                Superblock::uuid_text(&t.set_uuid),
                missing_text(&states)
            ))));
        }
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

#[cfg(test)]
mod tests {
    use super::classify::fixtures::{probe, sb};
    use super::*;

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
}
