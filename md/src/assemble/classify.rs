//! Assembly's decision (step 2 of the parent module's docs): which member holds which role and
//! in which state, from the members' superblocks alone ([`classify`], a pure function,
//! unit-tested below). The level's answers come from its [`Caps`](crate::personality::Caps):
//! whether it can rebuild members (`spares`) and keeps a component of `size` sectors on every
//! member (`resync`).
//!
//! First the members must **agree** on what the array is, so that a corrupt superblock (with a
//! valid checksum) is never taken over an intact one: every member must carry the same
//! array-defining fields — ctime, level, layout, chunk, raid_disks, size (mdadm's
//! `compare_super`) and data_offset — and the freshest members (those with the highest
//! `events`, written by the same update) the same role table. A member that differs from a
//! larger group (or, on the fields, from an equal group holding a fresher member) is refused as
//! the odd one out, naming the field; when nothing breaks the tie (two members, equal events,
//! different raid_disks or role tables) the assembly is refused naming both sides, and the
//! user assembles the intact members by name. Two different devices (device uuids) claiming
//! one dev_number at equal events are refused the same way.
//!
//! Among those, the member with an active role and the highest `events` is the *freshest*; its
//! superblock is the template and its role table (`dev_roles`) says who holds which role. A
//! member must not share its dev_number with another member (a copy); else it is refused. Then,
//! per member, by the freshest table's entry for its dev_number:
//!
//! * **active role r**, and *fresh* (events ≥ freshest − 1, the kernel's and mdadm's rule: the
//!   clean/dirty roll-back lets members differ by one): `InSync` in r — or `Rebuilding` from its
//!   own `recovery_offset` when it has feature RECOVERY_OFFSET (levels that rebuild members;
//!   an error elsewhere);
//! * **active role r, stale** (events further behind): levels that rebuild members take it back
//!   as `Rebuilding` in r (recovery; with a bitmap only the dirty chunks). Levels that cannot
//!   (linear, raid0) make a stale member an **error** naming it (mdadm needs `--force` there);
//!   their superblocks are always clean, so "within one event" is the only allowance, exactly
//!   the kernel's;
//! * **spare** (0xffff, also what a removed member becomes): a level with spares keeps it as a
//!   spare — except a *stale* member whose own superblock still names an active role r that
//!   nobody else fills: it was failed and removed while the array ran on (the kernel's
//!   "re-add"), so it comes back `Rebuilding` in r. Levels without spares refuse it;
//! * **faulty**, **journal**, a role ≥ raid_disks, a role already taken, or a stale member whose
//!   table slot names a different role (its dev_number was reused): refused, with the reason;
//! * a fresh member whose own table marks the freshest member faulty is refused (mdadm:
//!   "ignoring X as it reports Y as failed").
//!
//! Roles nobody fills are `Missing` (degraded); whether the array can run with them is the
//! layout's [`Health`](crate::personality::Health), decided when it starts.

use keel_bdev::BdevInfo;

use crate::personality::{self, Personality};
use crate::shared::SlotState;
use crate::superblock::{feature, Role, Superblock, ROLE_SPARE};
use crate::MdError;

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

/// `err` with the refusals appended to its message (in the same variant where the variant has
/// a text of its own; wrapped in [`MdError::Refused`] otherwise).
pub(super) fn with_refusals(err: MdError, refusals: &[String]) -> MdError {
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
        MdError::Io(m) => MdError::Io(m + &tail),
        MdError::Unsupported(m) => MdError::Unsupported(m + &tail),
        MdError::NotFound(m) => MdError::NotFound(m + &tail),
        MdError::Exists(m) => MdError::Exists(m + &tail),
        MdError::Busy(m) => MdError::Busy(m + &tail),
        e @ MdError::ShortBuffer { .. } => MdError::Io(format!("{e}{tail}")),
        e @ (MdError::Bdev(_) | MdError::Member { .. } | MdError::RegistryGone | MdError::Refused { .. }) => {
            MdError::Refused {
                source: Box::new(e),
                refused: tail,
            }
        }
    }
}

pub(super) fn refuse(refusals: &mut Vec<String>, bdev: &str, why: impl std::fmt::Display) {
    let msg = format!("member '{bdev}' refused: {why}");
    tracing::warn!(member = bdev, "md assemble: {msg}");
    refusals.push(msg);
}

/// The role the table `roles` gives device `dev_number` (past the table: spare).
pub(super) fn table_role(roles: &[u16], dev_number: u32) -> Role {
    Role::from_raw(roles.get(dev_number as usize).copied().unwrap_or(ROLE_SPARE))
}

/// Whether a member `events` is recent enough next to the freshest `fresh_events` (kernel:
/// `events + 1 >= freshest`).
pub(super) fn is_fresh(events: u64, fresh_events: u64) -> bool {
    events.saturating_add(1) >= fresh_events
}

/// The array-defining fields of a superblock (mdadm's `compare_super` for v1.x, and the data
/// offset Keel's geometry needs on every member), named, as numbers for messages.
fn defining(sb: &Superblock) -> [(&'static str, i128); 7] {
    [
        ("ctime", sb.ctime as i128),
        ("level", sb.level as i128),
        ("layout", sb.layout as i128),
        ("chunksize", sb.chunk_sectors as i128),
        ("raid_disks", sb.raid_disks as i128),
        ("size", sb.size_sectors as i128),
        ("data_offset", sb.data_offset_sectors as i128),
    ]
}

/// Splits `items` (probe indices) into groups with equal `key`, in first-seen order, and picks
/// the group the members agree on: the only one, or the strictly largest, or — among groups
/// tied for largest — the one holding the strictly freshest member. `None`: a tie nothing
/// breaks.
fn majority<K: PartialEq>(
    probes: &[Probe],
    items: &[usize],
    key: impl Fn(&Superblock) -> K,
) -> (Vec<Vec<usize>>, Option<usize>) {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for &i in items {
        let k = key(&probes[i].sb);
        match groups.iter_mut().find(|g| g.0 == k) {
            Some(g) => g.1.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    let groups: Vec<Vec<usize>> = groups.into_iter().map(|g| g.1).collect();
    let largest = groups.iter().map(Vec::len).max().unwrap_or(0);
    let tied: Vec<usize> = (0..groups.len()).filter(|&g| groups[g].len() == largest).collect();
    let events = |g: usize| groups[g].iter().map(|&i| probes[i].sb.events).max().unwrap_or(0);
    let pick = match tied.as_slice() {
        [one] => Some(*one),
        many => {
            let best = many.iter().map(|&g| events(g)).max().unwrap_or(0);
            let top: Vec<usize> = many.iter().copied().filter(|&g| events(g) == best).collect();
            (top.len() == 1).then(|| top[0])
        }
    };
    (groups, pick)
}

/// The members whose superblocks agree on what the array is (module docs): members that
/// disagree with the others on an array-defining field, or — among the freshest members, which
/// were written in the same update — on the role table, are refused as the odd ones out, named
/// with the field. When no side has more members (or a fresher one, for the fields), nothing
/// says which superblock is intact and assembly is refused naming both sides (mdadm: "superblock
/// on X doesn't match others - assembly aborted").
fn agreeing_members(probes: &[Probe], refusals: &mut Vec<String>) -> Result<Vec<usize>, MdError> {
    let all: Vec<usize> = (0..probes.len()).collect();
    let sides = |groups: &[Vec<usize>]| -> String {
        groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&i| format!("'{}'", probes[i].name))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect::<Vec<_>>()
            .join(" vs ")
    };
    let (groups, pick) = majority(probes, &all, defining);
    let Some(pick) = pick else {
        let a = &probes[groups[0][0]].sb;
        let b = &probes[groups[1][0]].sb;
        let (field, x, y) = defining(a)
            .into_iter()
            .zip(defining(b))
            .find(|(x, y)| x.1 != y.1)
            .map(|(x, y)| (x.0, x.1, y.1))
            .expect("groups differ");
        return Err(with_refusals(
            MdError::invalid(
                "members",
                format!(
                    "members disagree on the array ({}: {field} {x} vs {y}) and neither side outnumbers the other: cannot tell which superblock is intact (assemble the intact members by name)",
                    sides(&groups)
                ),
            ),
            refusals,
        ));
    };
    let lead = &probes[groups[pick][0]].sb;
    for (g, members) in groups.iter().enumerate() {
        if g == pick {
            continue;
        }
        for &i in members {
            let (field, mine, theirs) = defining(&probes[i].sb)
                .into_iter()
                .zip(defining(lead))
                .find(|(x, y)| x.1 != y.1)
                .map(|(x, y)| (x.0, x.1, y.1))
                .expect("groups differ");
            refuse(
                refusals,
                &probes[i].name,
                format!(
                    "its {field} ({mine}) differs from the {} other member(s) that agree ({theirs}): the odd one out",
                    groups[pick].len()
                ),
            );
        }
    }
    let agree = groups[pick].clone();
    // The freshest update's role tables.
    let top = agree.iter().map(|&i| probes[i].sb.events).max().unwrap_or(0);
    let freshest: Vec<usize> = agree.iter().copied().filter(|&i| probes[i].sb.events == top).collect();
    let (tables, pick) = majority(probes, &freshest, |sb| sb.dev_roles.clone());
    if tables.len() == 1 {
        return Ok(agree);
    }
    let Some(pick) = pick else {
        return Err(with_refusals(
            MdError::invalid(
                "members",
                format!(
                    "the freshest members (events {top}) disagree on the role table ({}) and neither side outnumbers the other: cannot tell which superblock is intact (assemble the intact members by name)",
                    sides(&tables)
                ),
            ),
            refusals,
        ));
    };
    let mut out = Vec::new();
    for &i in &agree {
        let odd = tables.iter().enumerate().any(|(g, t)| g != pick && t.contains(&i));
        if odd {
            let lead = tables[pick][0];
            let why = if table_role(&probes[i].sb.dev_roles, probes[lead].sb.dev_number) == Role::Faulty {
                format!("it reports the freshest member '{}' as failed; its", probes[lead].name)
            } else {
                "its".to_string()
            };
            refuse(
                refusals,
                &probes[i].name,
                format!(
                    "{why} role table differs from the {} other member(s) written in the same update (events {top}): the odd one out",
                    tables[pick].len()
                ),
            );
        } else {
            out.push(i);
        }
    }
    Ok(out)
}

/// Decides roles and states from the members' superblocks (module docs, step 2). `probes` all
/// carry the same set_uuid; `refusals` collects what was refused so far. Pure.
pub(crate) fn classify(probes: &[Probe], mut refusals: Vec<String>) -> Result<Choice, MdError> {
    let agreeing = agreeing_members(probes, &mut refusals)?;
    let fresh = agreeing
        .iter()
        .copied()
        .filter(|&i| matches!(probes[i].sb.own_role(), Role::Active(_)))
        .fold(None::<usize>, |best, i| match best {
            Some(b) if probes[b].sb.events >= probes[i].sb.events => Some(b),
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

    // Members that agree with the template (on the array-defining fields they all do now).
    let mut usable: Vec<usize> = vec![fresh];
    for &i in &agreeing {
        if i == fresh {
            continue;
        }
        let p = &probes[i];
        let s = &p.sb;
        if let Some(&o) = usable.iter().find(|&&o| probes[o].sb.dev_number == s.dev_number) {
            let other = &probes[o].sb;
            if other.events == s.events && other.device_uuid != s.device_uuid {
                // Two different devices claim one slot in the same update: one of them is
                // corrupt, and nothing says which.
                return Err(with_refusals(
                    MdError::invalid(
                        "members",
                        format!(
                            "'{}' and '{}' both claim dev_number {} at events {} with different device uuids: cannot tell which superblock is intact (assemble the intact members by name)",
                            probes[o].name, p.name, s.dev_number, s.events
                        ),
                    ),
                    &refusals,
                ));
            }
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

#[cfg(test)]
pub(super) mod fixtures {
    //! Superblocks and probes for the assembly tests.

    use super::*;
    use keel_bdev::IoCaps;

    pub(crate) fn sb(level: i32, raid_disks: u32, dev_number: u32, events: u64, roles: &[u16]) -> Superblock {
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
            resync_offset: crate::superblock::MAX_SECTOR,
            dev_roles,
            ..Default::default()
        }
    }

    pub(crate) fn probe(name: &str, sb: Superblock) -> Probe {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::{probe, sb};
    use super::*;
    use crate::superblock::ROLE_FAULTY;

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

    /// Equal events, one superblock corrupted (valid checksum) on an array-defining field: the
    /// odd one out is refused when the others outnumber it; one against one is refused whole
    /// (before: the corrupt member could be taken as the freshest, the intact one dropped, and
    /// the array started degraded, even as a "clean" one-disk array).
    #[test]
    fn corrupt_member_is_never_taken_over_an_intact_one() {
        for corrupt in [0usize, 1] {
            let mut p = vec![
                probe("a", sb(1, 2, 0, 20, &[0, 1])),
                probe("b", sb(1, 2, 1, 20, &[0, 1])),
            ];
            p[corrupt].sb.raid_disks = 1;
            let e = classify(&p, Vec::new()).unwrap_err().to_string();
            assert!(
                e.contains("'a'") && e.contains("'b'") && e.contains("raid_disks") && e.contains("cannot tell"),
                "{e}"
            );
        }
        let mut p: Vec<Probe> = (0..3)
            .map(|d| probe(&format!("m{d}"), sb(1, 3, d, 20, &[0, 1, 2])))
            .collect();
        p[0].sb.level = 10;
        let c = classify(&p, Vec::new()).unwrap();
        assert_eq!(c.slots[0], None);
        assert!(c.slots[1].is_some() && c.slots[2].is_some());
        assert!(
            c.refusals[0].contains("member 'm0' refused: its level (10) differs from the 2 other member(s)"),
            "{:?}",
            c.refusals
        );
        // A fresher member breaks a tie on the fields (a stale one from an older array).
        let mut p = vec![
            probe("a", sb(1, 2, 0, 20, &[0, 1])),
            probe("b", sb(1, 2, 1, 10, &[0, 1])),
        ];
        p[1].sb.ctime -= 5;
        let c = classify(&p, Vec::new()).unwrap();
        assert!(
            c.refusals[0].contains("member 'b' refused: its ctime"),
            "{:?}",
            c.refusals
        );
    }

    #[test]
    fn role_tables_of_one_update_must_agree() {
        // One against one: which table is real?
        let p = vec![
            probe("a", sb(1, 2, 0, 20, &[0, 1])),
            probe("b", sb(1, 2, 1, 20, &[0, ROLE_SPARE])),
        ];
        let e = classify(&p, Vec::new()).unwrap_err().to_string();
        assert!(
            e.contains("role table") && e.contains("'a'") && e.contains("'b'"),
            "{e}"
        );
        // Outnumbered: refused as the odd one out.
        let p = vec![
            probe("a", sb(1, 3, 0, 20, &[0, 1, 2])),
            probe("b", sb(1, 3, 1, 20, &[0, 1, 2])),
            probe("c", sb(1, 3, 2, 20, &[ROLE_SPARE, 1, 2])),
        ];
        let c = classify(&p, Vec::new()).unwrap();
        assert_eq!(c.slots.iter().flatten().count(), 2);
        assert!(
            c.refusals[0].contains("member 'c' refused: its role table differs"),
            "{:?}",
            c.refusals
        );
        // Older members' tables may differ (they missed later updates).
        let p = vec![
            probe("a", sb(1, 2, 0, 22, &[0, ROLE_SPARE])),
            probe("b", sb(1, 2, 1, 17, &[0, 1])),
        ];
        assert!(classify(&p, Vec::new()).unwrap().refusals.is_empty());
        // Two devices claiming one dev_number in the same update.
        let mut p = vec![
            probe("a", sb(1, 2, 0, 20, &[0, 1])),
            probe("b", sb(1, 2, 0, 20, &[0, 1])),
        ];
        p[1].sb.device_uuid[0] = 9;
        let e = classify(&p, Vec::new()).unwrap_err().to_string();
        assert!(e.contains("both claim dev_number 0"), "{e}");
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
}
