//! The array core, phase 1: md arrays as bdevs for linear, raid0 and raid1, created and stopped
//! on the main reactor, with v1.2 superblocks that mdadm reads.
//!
//! # Create
//!
//! [`MdRegistry::create`] checks the request (name, level, members, chunk, layout, bitmap, uuid),
//! opens every member writable and claims it for module `"md"` (dropping the descriptors on any
//! failure releases the claims: nothing is left behind), computes the layout as mdadm does
//! (`specs/md-superblock-1x.md` §9: `data_offset` from the first member's size and the chunk,
//! `data_size = member − data_offset`, component size rounded to the chunk or to 64 KiB for
//! raid1), writes a v1.2 superblock (events 1, dev_number = role, a fresh device UUID each) and
//! an empty bad-block log to every member through [`crate::meta_io`], and only when every write
//! succeeded registers the array bdev, named after the array.
//!
//! Not in this phase (refused or documented): an internal write-intent bitmap (`bitmap:
//! "internal"` is refused; "none" is the default for now), resync — a raid1 created without
//! `assume_clean` records `resync_offset = 0` ("active") and serves reads from role 0's member
//! only until the resync phase lands — marking the superblock dirty before the first write,
//! member failure handling, assembly, raid10 and the parity levels.
//!
//! # Stop
//!
//! [`MdRegistry::stop`] unregisters the array bdev (its channels fail new I/O), then writes every
//! member's superblock with events + 1 (and `resync_offset = MaxSector`, "clean", when the
//! array is in sync), then drops the member descriptors (releasing the claims).
//!
//! # Threading
//!
//! Control path only: `create`, `stop` run on the main reactor and answer there; `arrays` may
//! be called anywhere. The array's per-core data path is [`crate::channel`].

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_bdev::{
    BackendChannel, BdevBackend, BdevInfo, BdevParams, BdevRegistry, Channel, ConfigCall, Descriptor, IoCaps, IoOp,
    IoStatus,
};
use keel_reactor::CoreId;
use serde_json::{json, Value};

use crate::channel::{Geometry, Mapping, MdChannel};
use crate::examine::level_name;
use crate::layout::{Linear, Raid0, Raid0Layout};
use crate::meta_io;
use crate::superblock::{feature, Superblock, BLOCK_BYTES, MAX_SECTOR, ROLE_SPARE, V1_2_SUPER_OFFSET_SECTORS};
use crate::MdError;

/// Module name of array bdevs and of the claims md takes on members.
pub const MODULE: &str = "md";
/// Default chunk (mdadm's): 512 KiB.
pub const DEFAULT_CHUNK_KB: u32 = 512;
/// Entries of the role table written at create (mdadm's 1.x default room).
const ROLE_TABLE_LEN: usize = 128;

/// The personalities of this phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Linear,
    Raid0,
    Raid1,
}

impl Level {
    /// Parses mdadm's spelling ("linear", "raid0"/"0"/"stripe", "raid1"/"1"/"mirror").
    pub fn parse(s: &str) -> Result<Level, MdError> {
        match s.to_ascii_lowercase().as_str() {
            "linear" | "-1" => Ok(Level::Linear),
            "raid0" | "0" | "stripe" => Ok(Level::Raid0),
            "raid1" | "1" | "mirror" => Ok(Level::Raid1),
            "raid10" | "10" | "raid4" | "4" | "raid5" | "5" | "raid6" | "6" => Err(MdError::Unsupported(format!(
                "level '{s}' is not supported yet (this build has linear, raid0 and raid1)"
            ))),
            _ => Err(MdError::invalid(
                "level",
                format!("'{s}' is not an md level (linear, raid0, raid1)"),
            )),
        }
    }

    /// The superblock's level number.
    pub fn sb_level(self) -> i32 {
        match self {
            Level::Linear => -1,
            Level::Raid0 => 0,
            Level::Raid1 => 1,
        }
    }

    /// mdadm's name.
    pub fn name(self) -> String {
        level_name(self.sb_level())
    }

    fn min_members(self) -> usize {
        match self {
            Level::Linear => 1,
            Level::Raid0 | Level::Raid1 => 2,
        }
    }
}

/// What `md_create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub name: String,
    /// mdadm's spelling ("linear", "raid0", "raid1").
    pub level: String,
    /// Member bdev names in role order.
    pub members: Vec<String>,
    /// raid0 chunk in KiB (power of two ≥ 4; default 512). Ignored by raid1/linear.
    pub chunk_kb: Option<u32>,
    /// raid0: "original" or "alternate" (multi-zone arrays; default original).
    pub layout: Option<String>,
    /// "none" (default in this phase) or "internal" (refused until the bitmap phase).
    pub bitmap: Option<String>,
    pub assume_clean: bool,
    /// Array UUID (`xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx` as mdadm prints it, or the usual
    /// hyphenated form); random when absent.
    pub uuid: Option<String>,
}

/// One member as `md_get_arrays` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub bdev: String,
    pub role: u32,
    /// "in_sync" (all members of this phase).
    pub state: &'static str,
}

/// One array as `md_get_arrays` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayInfo {
    pub name: String,
    /// mdadm's text form.
    pub uuid: String,
    pub level: String,
    pub raid_devices: u32,
    /// "clean" or "active" (needs resync).
    pub state: &'static str,
    pub events: u64,
    pub size_blocks: u64,
    pub block_size: u32,
    /// raid0 chunk; 0 for linear and raid1.
    pub chunk_kb: u32,
    pub data_offset_sectors: u64,
    pub members: Vec<MemberInfo>,
}

impl ArrayInfo {
    /// The JSON object of `md_get_arrays`.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "uuid": self.uuid,
            "level": self.level,
            "raid_devices": self.raid_devices,
            "state": self.state,
            "events": self.events,
            "size_blocks": self.size_blocks,
            "block_size": self.block_size,
            "chunk_kb": self.chunk_kb,
            "data_offset_sectors": self.data_offset_sectors,
            "sync_action": "idle",
            "members": self.members.iter().map(|m| json!({
                "bdev": m.bdev,
                "role": m.role,
                "state": m.state,
            })).collect::<Vec<_>>(),
        })
    }
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
fn bm_space_sectors(s: u64) -> u64 {
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

/// Parses an array UUID in mdadm's or the hyphenated form.
fn parse_uuid(s: &str) -> Result<[u8; 16], MdError> {
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A running array. Shared by the md registry and the array bdev's backend.
struct Array {
    name: String,
    level: Level,
    set_uuid: [u8; 16],
    chunk_kb: u32,
    block_size: u32,
    num_blocks: u64,
    geo: Arc<Geometry>,
    member_names: Vec<String>,
    /// Member descriptors (writable, claimed "md"), role order; taken at stop.
    members: Mutex<Option<Vec<Descriptor>>>,
    /// Each member's superblock as last written.
    sbs: Mutex<Vec<Superblock>>,
}

impl Array {
    fn info(&self) -> ArrayInfo {
        let sbs = self.sbs.lock().unwrap_or_else(|e| e.into_inner());
        let sb0 = &sbs[0];
        ArrayInfo {
            name: self.name.clone(),
            uuid: Superblock::uuid_text(&self.set_uuid),
            level: self.level.name(),
            raid_devices: sb0.raid_disks,
            state: if self.geo.in_sync.load(Ordering::Relaxed) {
                "clean"
            } else {
                "active"
            },
            events: sb0.events,
            size_blocks: self.num_blocks,
            block_size: self.block_size,
            chunk_kb: self.chunk_kb,
            data_offset_sectors: self.geo.data_offset_sectors,
            members: self
                .member_names
                .iter()
                .enumerate()
                .map(|(i, b)| MemberInfo {
                    bdev: b.clone(),
                    role: i as u32,
                    state: "in_sync",
                })
                .collect(),
        }
    }
}

/// The array bdev's backend.
struct MdBackend {
    array: Arc<Array>,
}

impl BdevBackend for MdBackend {
    fn create_channel(&self, _core: CoreId) -> Box<dyn BackendChannel> {
        let members = self.array.members.lock().unwrap_or_else(|e| e.into_inner());
        let chans: Vec<Channel> = members
            .as_ref()
            .map(|m| m.iter().map(|d| d.channel()).collect())
            .unwrap_or_default();
        Box::new(MdChannel::new(&self.array.name, self.array.geo.clone(), chans))
    }

    fn driver_specific(&self) -> Value {
        json!({ "md": self.array.info().to_json() })
    }

    /// Arrays are not in save_config yet: replaying `md_create` would write fresh superblocks
    /// over the data; they come back with `md_assemble` in the assembly phase.
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }
}

/// The md arrays of one bdev registry. `Send + Sync`; control path only.
pub struct MdRegistry {
    bdevs: Weak<BdevRegistry>,
    arrays: Mutex<Vec<Arc<Array>>>,
    /// Names being created (so two concurrent creates of one name cannot both pass).
    creating: Mutex<Vec<String>>,
}

type Registries = Mutex<Vec<(Weak<BdevRegistry>, Arc<MdRegistry>)>>;
static REGISTRIES: Registries = Mutex::new(Vec::new());

impl MdRegistry {
    /// The md registry of `bdevs`, created on first use. Any thread.
    pub fn of(bdevs: &Arc<BdevRegistry>) -> Arc<MdRegistry> {
        let mut map = REGISTRIES.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(w, _)| w.strong_count() > 0);
        if let Some((_, r)) = map
            .iter()
            .find(|(w, _)| w.upgrade().is_some_and(|b| Arc::ptr_eq(&b, bdevs)))
        {
            return r.clone();
        }
        let r = Arc::new(MdRegistry {
            bdevs: Arc::downgrade(bdevs),
            arrays: Mutex::new(Vec::new()),
            creating: Mutex::new(Vec::new()),
        });
        map.push((Arc::downgrade(bdevs), r.clone()));
        r
    }

    fn bdevs(&self) -> Result<Arc<BdevRegistry>, MdError> {
        self.bdevs
            .upgrade()
            .ok_or_else(|| MdError::Bdev("the bdev registry is gone".into()))
    }

    /// The arrays (all, or the one named), as `md_get_arrays` shows them. Any thread.
    pub fn arrays(&self, name: Option<&str>) -> Result<Vec<ArrayInfo>, MdError> {
        let arrays = self.arrays.lock().unwrap_or_else(|e| e.into_inner());
        let out: Vec<ArrayInfo> = arrays
            .iter()
            .filter(|a| name.is_none_or(|n| a.name == n))
            .map(|a| a.info())
            .collect();
        if let (Some(n), true) = (name, out.is_empty()) {
            return Err(MdError::NotFound(format!("md array '{n}' not found")));
        }
        Ok(out)
    }

    /// Creates an array (see the module docs). Called on the main reactor; `done` runs there
    /// after the superblocks are on every member and the bdev is registered, or with the first
    /// problem (nothing claimed or registered then).
    pub fn create(self: &Arc<Self>, opts: CreateOpts, done: impl FnOnce(Result<(), MdError>) + 'static) {
        let plan = match self.plan(&opts) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(opts.name.clone());
        let me = self.clone();
        let name = opts.name.clone();
        let targets = targets_of(&plan.descs, &plan.sbs);
        write_superblocks(targets, true, move |r| {
            let r = r.and_then(|()| me.register(opts, plan));
            me.creating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|n| *n != name);
            done(r)
        });
    }

    /// Checks the request, opens and claims the members and computes the superblocks.
    fn plan(&self, o: &CreateOpts) -> Result<Plan, MdError> {
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
        if reg.get(&o.name).is_some()
            || self
                .arrays
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|a| a.name == o.name)
            || self
                .creating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&o.name)
        {
            return Err(MdError::Exists(format!("name '{}' is already in use", o.name)));
        }
        let level = Level::parse(&o.level)?;
        match o.bitmap.as_deref() {
            None | Some("none") => {}
            Some("internal") => {
                return Err(MdError::Unsupported(
                    "bitmap 'internal' is not supported yet: create with bitmap 'none' (the write-intent bitmap arrives with resync)".into(),
                ))
            }
            Some(b) => return Err(MdError::invalid("bitmap", format!("'{b}' (use 'internal' or 'none')"))),
        }
        if o.members.len() < level.min_members() {
            return Err(MdError::invalid(
                "members",
                format!(
                    "{} needs at least {} members, got {}",
                    level.name(),
                    level.min_members(),
                    o.members.len()
                ),
            ));
        }
        if o.members.len() > ROLE_TABLE_LEN {
            return Err(MdError::invalid("members", format!("at most {ROLE_TABLE_LEN} members")));
        }
        for (i, m) in o.members.iter().enumerate() {
            if o.members[..i].contains(m) {
                return Err(MdError::Busy(format!("member '{m}' is listed twice")));
            }
        }
        let chunk_kb = match level {
            Level::Raid0 => {
                let c = o.chunk_kb.unwrap_or(DEFAULT_CHUNK_KB);
                if c < 4 || !c.is_power_of_two() {
                    return Err(MdError::invalid("chunk_kb", format!("{c} is not a power of two ≥ 4")));
                }
                c
            }
            _ => 0,
        };
        let layout = match (level, o.layout.as_deref()) {
            (_, None) => None,
            (Level::Raid0, Some("original")) | (Level::Raid0, Some("1")) => Some(Raid0Layout::Original),
            (Level::Raid0, Some("alternate")) | (Level::Raid0, Some("2")) => Some(Raid0Layout::Alternate),
            (_, Some(l)) => {
                return Err(MdError::invalid(
                    "layout",
                    format!("'{l}' is not a layout of {}", level.name()),
                ))
            }
        };
        let set_uuid = match &o.uuid {
            Some(u) => parse_uuid(u)?,
            None => *uuid::Uuid::new_v4().as_bytes(),
        };

        // Open and claim every member; dropping `descs` on an error releases them.
        let mut descs = Vec::with_capacity(o.members.len());
        for m in &o.members {
            let d = reg.open(m, true, |_| {}).map_err(|e| match e {
                keel_bdev::BdevError::NotFound(_) => MdError::NotFound(format!("member bdev '{m}' not found")),
                keel_bdev::BdevError::Claimed { .. } | keel_bdev::BdevError::HasWriters { .. } => {
                    MdError::Busy(format!("member '{m}': {e}"))
                }
                other => MdError::Bdev(format!("member '{m}': {other}")),
            })?;
            d.claim(MODULE)
                .map_err(|e| MdError::Busy(format!("member '{m}': {e}")))?;
            descs.push(d);
        }
        let infos: Vec<BdevInfo> = descs.iter().map(|d| d.info().clone()).collect();
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
        if level == Level::Raid0 && chunk_sectors < block_sectors {
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
        let min_data = *data_sizes.iter().min().expect("members");
        let (mapping, array_sectors, size_sectors) = match level {
            Level::Raid1 => {
                let comp = min_data / 128 * 128;
                (Mapping::Raid1, comp, comp)
            }
            Level::Linear => {
                let sizes: Vec<u64> = data_sizes.iter().map(|s| s / block_sectors * block_sectors).collect();
                let l = Linear::new(&sizes)?;
                let n = l.size_sectors();
                (Mapping::Linear(l), n, min_data / block_sectors * block_sectors)
            }
            Level::Raid0 => {
                let r = Raid0::new(&data_sizes, chunk_sectors, layout.unwrap_or(Raid0Layout::Original))?;
                let n = r.size_sectors();
                (Mapping::Raid0(r), n, min_data / chunk_sectors * chunk_sectors)
            }
        };
        let multi_zone = matches!(&mapping, Mapping::Raid0(r) if r.zone_count() > 1);
        let (feature_map, layout_word) = match (level, layout, multi_zone) {
            (Level::Raid0, Some(Raid0Layout::Alternate), _) => (feature::RAID0_LAYOUT, 2),
            (Level::Raid0, Some(Raid0Layout::Original), _) | (Level::Raid0, None, true) => (feature::RAID0_LAYOUT, 1),
            _ => (0, 0),
        };
        let clean = level != Level::Raid1 || o.assume_clean;
        let bblog_offset = match level {
            Level::Raid1 => 8 + bm_space_sectors(dev_sectors[0]) as i32,
            _ => 8,
        };
        let now = now_secs();
        let mut roles = vec![ROLE_SPARE; ROLE_TABLE_LEN];
        for (i, r) in roles.iter_mut().enumerate().take(infos.len()) {
            *r = i as u16;
        }
        let sbs: Vec<Superblock> = data_sizes
            .iter()
            .enumerate()
            .map(|(i, &ds)| Superblock {
                feature_map,
                set_uuid,
                set_name: o.name.as_bytes().to_vec(),
                ctime: now,
                level: level.sb_level(),
                layout: layout_word,
                size_sectors,
                chunk_sectors: chunk_sectors as u32,
                raid_disks: infos.len() as u32,
                bitmap_offset_sectors: 0,
                new_level: 0,
                reshape_position: 0,
                delta_disks: 0,
                new_layout: 0,
                new_chunk: 0,
                new_offset: 0,
                data_offset_sectors: data_offset,
                data_size_sectors: ds,
                super_offset_sectors: V1_2_SUPER_OFFSET_SECTORS,
                recovery_offset_sectors: 0,
                dev_number: i as u32,
                cnt_corrected_read: 0,
                device_uuid: *uuid::Uuid::new_v4().as_bytes(),
                devflags: 0,
                bblog_shift: 0,
                bblog_size: 8,
                bblog_offset,
                utime: now,
                events: 1,
                resync_offset: if clean { MAX_SECTOR } else { 0 },
                dev_roles: roles.clone(),
            })
            .collect();
        let mut ops = vec![IoOp::Read, IoOp::Write, IoOp::Flush, IoOp::Reset];
        for op in [IoOp::Unmap, IoOp::WriteZeroes] {
            if infos.iter().all(|i| i.caps.supports(op)) {
                ops.push(op);
            }
        }
        let caps = IoCaps::of(&ops);
        let geo = Geometry {
            mapping,
            data_offset_sectors: data_offset,
            block_shift: block_sectors.trailing_zeros(),
            member_shifts: infos.iter().map(|i| (i.block_size / 512).trailing_zeros()).collect(),
            in_sync: std::sync::atomic::AtomicBool::new(clean),
        };
        Ok(Plan {
            level,
            set_uuid,
            chunk_kb,
            block_size,
            num_blocks: array_sectors / block_sectors,
            caps,
            geo,
            descs,
            sbs,
        })
    }

    /// Registers the array bdev once the superblocks are written.
    fn register(&self, opts: CreateOpts, plan: Plan) -> Result<(), MdError> {
        let reg = self.bdevs()?;
        let array = Arc::new(Array {
            name: opts.name.clone(),
            level: plan.level,
            set_uuid: plan.set_uuid,
            chunk_kb: plan.chunk_kb,
            block_size: plan.block_size,
            num_blocks: plan.num_blocks,
            geo: Arc::new(plan.geo),
            member_names: opts.members.clone(),
            members: Mutex::new(Some(plan.descs)),
            sbs: Mutex::new(plan.sbs),
        });
        let params = BdevParams {
            name: array.name.clone(),
            uuid: Some(uuid::Uuid::from_bytes(array.set_uuid)),
            product_name: "md RAID",
            module: MODULE,
            block_size: array.block_size,
            num_blocks: array.num_blocks,
            caps: plan.caps,
            optimal_io_boundary_blocks: if plan.level == Level::Raid0 {
                (plan.chunk_kb as u64 * 1024 / array.block_size as u64) as u32
            } else {
                0
            },
        };
        reg.register(params, Arc::new(MdBackend { array: array.clone() }))
            .map_err(|e| match e {
                keel_bdev::BdevError::Exists(n) => MdError::Exists(format!("name '{n}' is already in use")),
                other => MdError::Bdev(other.to_string()),
            })?;
        self.arrays.lock().unwrap_or_else(|e| e.into_inner()).push(array);
        Ok(())
    }

    /// Stops array `name` (see the module docs). Called on the main reactor; `done` runs there
    /// once the superblocks are written and the members released.
    pub fn stop(self: &Arc<Self>, name: &str, done: impl FnOnce(Result<(), MdError>) + Send + 'static) {
        let array = {
            let mut arrays = self.arrays.lock().unwrap_or_else(|e| e.into_inner());
            match arrays.iter().position(|a| a.name == name) {
                Some(i) => arrays.remove(i),
                None => return done(Err(MdError::NotFound(format!("md array '{name}' not found")))),
            }
        };
        let reg = match self.bdevs() {
            Ok(r) => r,
            Err(e) => return done(Err(e)),
        };
        let a2 = array.clone();
        let r = reg.unregister(name, move || {
            let descs = a2.members.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(descs) = descs else {
                return done(Ok(()));
            };
            let clean = a2.geo.in_sync.load(Ordering::Relaxed);
            let now = now_secs();
            let sbs: Vec<Superblock> = {
                let mut sbs = a2.sbs.lock().unwrap_or_else(|e| e.into_inner());
                for sb in sbs.iter_mut() {
                    sb.events += 1;
                    sb.utime = now;
                    if clean {
                        sb.resync_offset = MAX_SECTOR;
                    }
                }
                sbs.clone()
            };
            let targets = targets_of(&descs, &sbs);
            write_superblocks(targets, false, move |r| {
                drop(descs);
                done(r)
            });
        });
        if let Err(e) = r {
            // The bdev vanished under us (removed by someone else): release the members.
            array.members.lock().unwrap_or_else(|e| e.into_inner()).take();
            tracing::warn!(name, error = %e, "md stop: array bdev was already gone");
        }
    }
}

/// What `plan` computed for a create.
struct Plan {
    level: Level,
    set_uuid: [u8; 16],
    chunk_kb: u32,
    block_size: u32,
    num_blocks: u64,
    caps: IoCaps,
    geo: Geometry,
    descs: Vec<Descriptor>,
    sbs: Vec<Superblock>,
}

/// The answer of a multi-member metadata write.
type Done = Box<dyn FnOnce(Result<(), MdError>)>;

/// This core's channel, name and superblock of each member, for [`write_superblocks`].
fn targets_of(descs: &[Descriptor], sbs: &[Superblock]) -> Vec<(Rc<Channel>, String, Superblock)> {
    descs
        .iter()
        .zip(sbs)
        .map(|(d, sb)| (Rc::new(d.channel()), d.info().name.clone(), sb.clone()))
        .collect()
}

/// Writes each target's superblock to its member (and, with `bblog`, an empty bad-block log
/// after it), all at once; `done` gets the first failure. Called on a reactor; `done` runs
/// there.
fn write_superblocks(
    targets: Vec<(Rc<Channel>, String, Superblock)>,
    bblog: bool,
    done: impl FnOnce(Result<(), MdError>) + 'static,
) {
    struct Pending {
        left: usize,
        err: Option<String>,
        done: Option<Done>,
        _chans: Vec<Rc<Channel>>,
    }
    let chans: Vec<Rc<Channel>> = targets.iter().map(|t| t.0.clone()).collect();
    let writes: usize = if bblog { 2 } else { 1 } * targets.len();
    let st = Rc::new(RefCell::new(Pending {
        left: writes,
        err: None,
        done: Some(Box::new(done)),
        _chans: chans.clone(),
    }));
    for (ch, name, sb) in &targets {
        let mut jobs: Vec<(u64, Vec<u8>, &'static str)> =
            vec![(V1_2_SUPER_OFFSET_SECTORS * 512, sb.encode().to_vec(), "superblock")];
        if bblog {
            let at = (V1_2_SUPER_OFFSET_SECTORS as i64 + sb.bblog_offset as i64) as u64 * 512;
            jobs.push((at, vec![0xFF; BLOCK_BYTES], "bad-block log"));
        }
        for (at, data, what) in jobs {
            let st = st.clone();
            let name = name.clone();
            meta_io::write(ch, at, &data, move |status: IoStatus| {
                let mut s = st.borrow_mut();
                if !status.is_success() && s.err.is_none() {
                    s.err = Some(format!("writing the {what} of '{name}' failed: {}", status.name()));
                }
                s.left -= 1;
                if s.left == 0 {
                    let r = match s.err.take() {
                        Some(e) => Err(MdError::Io(e)),
                        None => Ok(()),
                    };
                    let d = s.done.take();
                    drop(s);
                    if let Some(d) = d {
                        d(r)
                    }
                }
            });
        }
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

    #[test]
    fn levels() {
        assert_eq!(Level::parse("raid1").unwrap(), Level::Raid1);
        assert!(matches!(Level::parse("raid5"), Err(MdError::Unsupported(_))));
        assert!(matches!(Level::parse("raid7"), Err(MdError::InvalidParam { .. })));
    }
}
