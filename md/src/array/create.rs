//! `md_create`: a new array over members nobody claims.
//!
//! [`MdRegistry::create`] checks the request (name, level, members, chunk, layout, bitmap, uuid)
//! against the level's capabilities, opens every member writable and claims it for module
//! `"md"` (dropping the descriptors on any failure releases the claims), and computes the
//! superblocks as mdadm does (`specs/md-superblock-1x.md` §9): `data_offset` from the first
//! member's size and the chunk, `data_size = member − data_offset`, and the level's part — the
//! component size, layout word and feature bits — from its personality's plan
//! ([`crate::personality::Personality::plan`]: the component rounded to the chunk, or to 64 KiB
//! for raid1). The array's layout comes from those superblocks through the personality's `start`,
//! exactly as assembly builds it. Then it writes a v1.2 superblock (events 1, dev_number = role),
//! an empty bad-block log and, for levels with a bitmap and `bitmap: "internal"` (raid1/raid10's
//! default), the write-intent bitmap to every member, and only when every write succeeded
//! starts the array (`MdRegistry::start_array`, also the end of assembly): registers the bdev
//! named after the array and the daemon.
//!
//! Before anything is written, the members are read where v1.x superblocks live (v1.2 4 KiB
//! in, v1.1 at 0, v1.0 near the end): a member holding one that passes the load checks
//! belongs to an array, perhaps with data, and the create is refused naming it unless
//! `force` is given — mdadm asks "Continue creating array?" there.
//!
//! An array of a level with resync created without `assume_clean` starts with
//! `resync_offset = 0` (and every bitmap bit set): the daemon resyncs it at once, reads of the
//! part not yet resynced go to the first in-sync copy.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use keel_bdev::{BdevInfo, Channel, IoCaps, IoOp};

use super::{now_secs, MdRegistry, MemberRec, StartPlan, ROLE_TABLE_LEN};
use crate::bitmap::BitmapHeader;
use crate::geometry::StartRequest;
use crate::personality::{self, PlanRequest};
use crate::shared::SlotState;
use crate::superblock::{feature, Superblock, BLOCK_BYTES, MAX_SECTOR, ROLE_SPARE, V1_2_SUPER_OFFSET_SECTORS};
use crate::MdError;

/// Default chunk (mdadm's): 512 KiB.
pub const DEFAULT_CHUNK_KB: u32 = 512;

/// What `md_create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub name: String,
    /// mdadm's spelling ("linear", "raid0", "raid1", "raid10").
    pub level: String,
    /// Member bdev names in role order.
    pub members: Vec<String>,
    /// raid0/raid10 chunk in KiB (power of two ≥ 4; default 512). Ignored by raid1/linear.
    pub chunk_kb: Option<u32>,
    /// raid0: "original" or "alternate"; raid10: "n2", "f2", "o2", "n3"... (default n2).
    pub layout: Option<String>,
    /// "internal" (default for raid1/raid10) or "none" (the only choice for linear/raid0).
    pub bitmap: Option<String>,
    pub assume_clean: bool,
    /// Array UUID (`xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx` as mdadm prints it, or the usual
    /// hyphenated form); random when absent.
    pub uuid: Option<String>,
    /// Create even over members that already carry an md superblock (mdadm asks "Continue
    /// creating array?" first; without `force` the create is refused, naming them).
    pub force: bool,
}

/// mdadm's default data_offset (`md-superblock-1x.md` §9.1) for a first member of
/// `device_sectors` and a chunk of `chunk_sectors` (0 for raid1/linear). The chunk clause keeps
/// at least 4 × chunk of headroom; this matches the spec's table of verified results.
pub fn default_data_offset_sectors(device_sectors: u64, chunk_sectors: u64) -> u64 {
    let s = device_sectors;
    let bm_space = bm_space_sectors(s);
    let mut headroom: u64 = 262_144;
    while headroom * 1024 > s && (chunk_sectors == 0 || headroom / 2 >= 2 * chunk_sectors) {
        headroom /= 2;
    }
    (24 + bm_space + headroom).div_ceil(2048) * 2048
}

/// Space mdadm keeps for a bitmap after the superblock (§9.1 step 1).
pub(crate) fn bm_space_sectors(s: u64) -> u64 {
    if s < 128 {
        0
    } else if s - 128 >= 419_430_400 {
        256
    } else if s - 8 > 16_777_216 {
        128
    } else {
        8
    }
}

/// A member that already carries a superblock: its name, the superblock, and the version ("1.2").
type Found = (String, Superblock, &'static str);

/// Reads where v1.0 (end of the member), v1.1 (start) and v1.2 (4 KiB in) superblocks live on
/// each of `members` (channel, name, sectors) and gives `done`, in member order, those holding
/// one that passes the load checks (mdadm's test before it asks "Continue creating array?").
/// A read that fails finds nothing there. Main reactor; `done` runs there from a poller.
fn existing_superblocks(members: Vec<(Rc<Channel>, String, u64)>, done: impl FnOnce(Vec<Found>) + 'static) {
    struct St {
        left: usize,
        found: Vec<Option<Found>>,
        done: Option<Box<dyn FnOnce(Vec<Found>)>>,
    }
    let places = |sectors: u64| -> Vec<(u64, &'static str)> {
        let mut v = vec![(V1_2_SUPER_OFFSET_SECTORS, "1.2"), (0, "1.1")];
        // v1.0: 8 KiB from the end, on a 4 KiB boundary (mdadm's super1 rule).
        if let Some(at) = sectors.checked_sub(16).map(|s| s & !7) {
            if at > V1_2_SUPER_OFFSET_SECTORS {
                v.push((at, "1.0"));
            }
        }
        v
    };
    let reads: Vec<(usize, u64, &'static str)> = members
        .iter()
        .enumerate()
        .flat_map(|(i, m)| places(m.2).into_iter().map(move |(at, v)| (i, at, v)))
        .collect();
    let st = Rc::new(RefCell::new(St {
        left: reads.len(),
        found: (0..members.len()).map(|_| None).collect(),
        done: Some(Box::new(done)),
    }));
    for (i, at, version) in reads {
        let (ch, name, _) = &members[i];
        let (st, keep, name) = (st.clone(), ch.clone(), name.clone());
        crate::meta_io::read(ch, at * 512, BLOCK_BYTES, move |r| {
            let _keep = keep;
            let mut s = st.borrow_mut();
            if let Some(sb) = r.ok().and_then(|b| Superblock::decode(&b, at).ok()) {
                if s.found[i].is_none() {
                    s.found[i] = Some((name, sb, version));
                }
            }
            s.left -= 1;
            if s.left == 0 {
                let found = s.found.drain(..).flatten().collect();
                let d = s.done.take();
                drop(s);
                if let Some(d) = d {
                    d(found)
                }
            }
        });
    }
}

/// Parses an array UUID in mdadm's or the hyphenated form.
pub(crate) fn parse_uuid(s: &str) -> Result<[u8; 16], MdError> {
    let hex: String = s.chars().filter(|c| !matches!(c, ':' | '-' | '.' | ' ')).collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(MdError::invalid("uuid", format!("'{s}' is not 32 hex digits")));
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}

impl MdRegistry {
    /// Creates an array (see the module docs). Called on the main reactor; `done` runs there
    /// after the metadata is on every member and the bdev is registered, or with the first
    /// problem (nothing claimed or registered then).
    pub fn create(self: &Arc<Self>, opts: CreateOpts, done: impl FnOnce(Result<(), MdError>) + 'static) {
        let reg = match self.bdevs() {
            Ok(r) => r,
            Err(e) => return done(Err(e)),
        };
        if !opts.name.is_empty() && !self.reserve(&reg, &opts.name) {
            return done(Err(MdError::Exists(format!("name '{}' is already in use", opts.name))));
        }
        let plan = match self.plan(&opts) {
            Ok(p) => p,
            Err(e) => {
                self.unreserve(&opts.name);
                return done(Err(e));
            }
        };
        if opts.force {
            return self.write_new(plan, done);
        }
        let me = self.clone();
        let members: Vec<(Rc<Channel>, String, u64)> = plan
            .slots
            .iter()
            .flatten()
            .map(|m| {
                let info = m.desc.info();
                (Rc::new(m.desc.channel()), m.name.clone(), info.size_bytes() / 512)
            })
            .collect();
        existing_superblocks(members, move |found| {
            if found.is_empty() {
                return me.write_new(plan, done);
            }
            let name = plan.name.clone();
            drop(plan); // releases the claims
            me.unreserve(&name);
            let list: Vec<String> = found
                .iter()
                .map(|(m, sb, version)| {
                    format!(
                        "'{m}' holds a v{version} superblock of {} array {} ('{}', events {})",
                        crate::personality::level_name(sb.level),
                        Superblock::uuid_text(&sb.set_uuid),
                        String::from_utf8_lossy(&sb.set_name),
                        sb.events
                    )
                })
                .collect();
            done(Err(MdError::Busy(format!(
                "members appear to be part of an md array: {}; creating would overwrite it (pass force to create anyway)",
                list.join("; ")
            ))))
        });
    }

    /// Writes the new array's metadata to its members and starts it (module docs).
    fn write_new(self: &Arc<Self>, plan: StartPlan, done: impl FnOnce(Result<(), MdError>) + 'static) {
        let me = self.clone();
        let name = plan.name.clone();
        let mut targets = Vec::new();
        for m in plan.slots.iter().flatten() {
            let mut blocks = vec![
                (V1_2_SUPER_OFFSET_SECTORS * 512, m.sb.encode().to_vec()),
                (
                    (V1_2_SUPER_OFFSET_SECTORS as i64 + m.sb.bblog_offset as i64) as u64 * 512,
                    vec![0xFF; BLOCK_BYTES],
                ),
            ];
            if let Some((h, bits)) = &plan.bitmap {
                let at = (V1_2_SUPER_OFFSET_SECTORS as i64 + m.sb.bitmap_offset_sectors as i64) as u64 * 512;
                let _ = bits;
                blocks.push((at, crate::intent::initial_image(h, plan.resync_cp != MAX_SECTOR)));
            }
            targets.push((Rc::new(m.desc.channel()), m.name.clone(), blocks));
        }
        crate::daemon::write_meta(targets, move |errs| {
            let r = match errs.into_iter().flatten().next() {
                Some(e) => Err(MdError::Io(e)),
                None => me.start_array(plan),
            };
            me.unreserve(&name);
            done(r)
        });
    }

    /// Checks the request, opens and claims the members and computes the superblocks.
    fn plan(&self, o: &CreateOpts) -> Result<StartPlan, MdError> {
        let reg = self.bdevs()?;
        if o.name.is_empty() || o.name.len() > 32 {
            return Err(MdError::invalid(
                "name",
                "must be 1 to 32 bytes (it is the superblock's set_name)",
            ));
        }
        if o.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(MdError::invalid("name", "contains whitespace or control characters"));
        }
        let pers = personality::by_name(&o.level)?;
        let caps = pers.caps();
        let want_bitmap = match (o.bitmap.as_deref(), caps.bitmap) {
            (None, _) => caps.default_bitmap,
            (Some("none"), _) => false,
            (Some("internal"), true) => true,
            (Some("internal"), false) => {
                return Err(MdError::invalid(
                    "bitmap",
                    format!("'internal' is not meaningful for {} (no redundancy)", pers.name()),
                ))
            }
            (Some(b), _) => return Err(MdError::invalid("bitmap", format!("'{b}' (use 'internal' or 'none')"))),
        };
        if o.members.len() < caps.min_members {
            return Err(MdError::invalid(
                "members",
                format!(
                    "{} needs at least {} members, got {}",
                    pers.name(),
                    caps.min_members,
                    o.members.len()
                ),
            ));
        }
        if o.members.len() > caps.max_members {
            return Err(MdError::invalid(
                "members",
                format!("at most {} members", caps.max_members),
            ));
        }
        for (i, m) in o.members.iter().enumerate() {
            if o.members[..i].contains(m) {
                return Err(MdError::Busy(format!("member '{m}' is listed twice")));
            }
        }
        let chunk_kb = if caps.chunked {
            let c = o.chunk_kb.unwrap_or(DEFAULT_CHUNK_KB);
            if c < 4 || !c.is_power_of_two() {
                return Err(MdError::invalid("chunk_kb", format!("{c} is not a power of two ≥ 4")));
            }
            c
        } else {
            0
        };
        let layout_word = pers.parse_layout(o.layout.as_deref())?;
        let set_uuid = match &o.uuid {
            Some(u) => parse_uuid(u)?,
            None => *uuid::Uuid::new_v4().as_bytes(),
        };

        // Open and claim every member; dropping them on an error releases them.
        let mut recs = Vec::with_capacity(o.members.len());
        for m in &o.members {
            recs.push(MemberRec::open(&reg, m, Superblock::default())?);
        }
        let infos: Vec<BdevInfo> = recs.iter().map(|d| d.desc.info().clone()).collect();
        for i in &infos {
            let bs = i.block_size;
            if !bs.is_power_of_two() || !(512..=BLOCK_BYTES as u32).contains(&bs) {
                return Err(MdError::invalid(
                    "members",
                    format!("'{}' has block size {bs}: md needs 512 to 4096 bytes", i.name),
                ));
            }
            for op in [IoOp::Read, IoOp::Write] {
                if !i.caps.supports(op) {
                    return Err(MdError::invalid(
                        "members",
                        format!("'{}' does not support {}", i.name, op.name()),
                    ));
                }
            }
        }
        let block_size = infos.iter().map(|i| i.block_size).max().expect("members");
        let block_sectors = block_size as u64 / 512;
        let chunk_sectors = chunk_kb as u64 * 2;
        if chunk_sectors != 0 && chunk_sectors < block_sectors {
            return Err(MdError::invalid(
                "chunk_kb",
                format!("{chunk_kb} KiB is smaller than the members' block size {block_size}"),
            ));
        }
        let dev_sectors: Vec<u64> = infos.iter().map(|i| i.size_bytes() / 512).collect();
        let data_offset = default_data_offset_sectors(dev_sectors[0], chunk_sectors);
        let mut data_sizes = Vec::with_capacity(infos.len());
        for (i, &s) in dev_sectors.iter().enumerate() {
            let min = data_offset + chunk_sectors.max(128);
            if s < min {
                return Err(MdError::invalid(
                    "members",
                    format!(
                        "'{}' has {s} sectors; with data at sector {data_offset} it needs at least {min}",
                        infos[i].name
                    ),
                ));
            }
            data_sizes.push(s - data_offset);
        }
        let n = infos.len();
        let shape = pers.plan(&PlanRequest {
            data_sectors: &data_sizes,
            block_sectors,
            chunk_sectors,
            layout: layout_word,
        })?;
        let clean = !caps.resync || o.assume_clean;
        let bm_space = bm_space_sectors(dev_sectors[0]);
        let bblog_offset = if caps.bitmap { 8 + bm_space as i32 } else { 8 };
        let now = now_secs();
        let mut roles = vec![ROLE_SPARE; ROLE_TABLE_LEN];
        for (i, r) in roles.iter_mut().enumerate().take(n) {
            *r = i as u16;
        }
        let mut template = Superblock {
            feature_map: shape.feature_map,
            set_uuid,
            set_name: o.name.as_bytes().to_vec(),
            ctime: now,
            level: pers.level(),
            layout: shape.layout,
            size_sectors: shape.size_sectors,
            chunk_sectors: chunk_sectors as u32,
            raid_disks: n as u32,
            bitmap_offset_sectors: 0,
            new_level: 0,
            reshape_position: 0,
            delta_disks: 0,
            new_layout: 0,
            new_chunk: 0,
            new_offset: 0,
            data_offset_sectors: data_offset,
            data_size_sectors: 0,
            super_offset_sectors: V1_2_SUPER_OFFSET_SECTORS,
            recovery_offset_sectors: 0,
            dev_number: 0,
            cnt_corrected_read: 0,
            device_uuid: [0; 16],
            devflags: 0,
            bblog_shift: 0,
            bblog_size: 8,
            bblog_offset,
            utime: now,
            events: 1,
            resync_offset: if clean { MAX_SECTOR } else { 0 },
            dev_roles: roles,
        };
        // The array starts from these superblocks as an assembly would.
        let layout = pers.start(
            &template,
            &StartRequest {
                data_offset_sectors: data_offset,
                block_shift: block_sectors.trailing_zeros(),
                member_shifts: infos.iter().map(|i| (i.block_size / 512).trailing_zeros()).collect(),
                data_sectors: data_sizes.iter().map(|&s| Some(s)).collect(),
            },
        )?;
        let array_sectors = layout.geometry().size_sectors;
        let bitmap = if want_bitmap {
            if bm_space < 8 {
                return Err(MdError::invalid(
                    "bitmap",
                    "members are too small for an internal bitmap",
                ));
            }
            template.feature_map |= feature::BITMAP_OFFSET;
            template.bitmap_offset_sectors = 8;
            let space_bytes = bm_space * 512;
            // The bitmap covers the sync space (the array's sectors for the copy levels).
            let sync_sectors = layout.sync().map_or(array_sectors, |s| s.sync_sectors());
            let chunk_bytes = crate::intent::default_chunk_bytes(sync_sectors, space_bytes);
            let header = BitmapHeader {
                version: crate::bitmap::VERSION,
                uuid: set_uuid,
                events: 1,
                events_cleared: 1,
                sync_size_sectors: sync_sectors,
                state: 0,
                chunk_bytes,
                daemon_sleep_s: 5,
                write_behind: 0,
                sectors_reserved: 0,
                nodes: 0,
            };
            let nbytes = header.bits().div_ceil(8) as usize;
            let bits = vec![if clean { 0u8 } else { 0xFF }; nbytes];
            Some((header, bits))
        } else {
            None
        };
        for (i, m) in recs.iter_mut().enumerate() {
            let mut sb = template.clone();
            sb.dev_number = i as u32;
            sb.device_uuid = *uuid::Uuid::new_v4().as_bytes();
            sb.data_size_sectors = data_sizes[i];
            m.sb = sb;
        }
        let mut ops = vec![IoOp::Read, IoOp::Write, IoOp::Flush, IoOp::Reset];
        for op in [IoOp::Unmap, IoOp::WriteZeroes] {
            if infos.iter().all(|i| i.caps.supports(op)) {
                ops.push(op);
            }
        }
        Ok(StartPlan {
            name: o.name.clone(),
            personality: pers,
            set_uuid,
            chunk_kb,
            block_size,
            num_blocks: array_sectors / block_sectors,
            caps: IoCaps::of(&ops),
            layout,
            states: vec![SlotState::InSync; n],
            recovered_sectors: vec![0; n],
            slots: recs.into_iter().map(Some).collect(),
            spares: Vec::new(),
            resync_cp: if clean { MAX_SECTOR } else { 0 },
            dirty: !clean,
            bitmap,
            template,
            readd_bitmap: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_offset_matches_mdadm_table() {
        const MIB: u64 = 2048;
        for (size, raid1, chunked) in [
            (16 * MIB, 2048, 2048),
            (100 * MIB, 2048, 4096),
            (256 * MIB, 2048, 4096),
            (1024 * MIB, 4096, 4096),
            (10 * 1024 * MIB, 18432, 18432),
            (100 * 1024 * MIB, 133_120, 133_120),
            (1024 * 1024 * MIB, 264_192, 264_192),
        ] {
            assert_eq!(default_data_offset_sectors(size, 0), raid1, "raid1 {size}");
            let chunk = if size == 16 * MIB { 8 } else { 1024 };
            assert_eq!(default_data_offset_sectors(size, chunk), chunked, "chunked {size}");
        }
    }

    #[test]
    fn uuid_forms() {
        let a = parse_uuid("01234567:89abcdef:01234567:89abcdef").unwrap();
        let b = parse_uuid("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        assert_eq!(a, b);
        assert!(parse_uuid("xyz").is_err());
    }
}
