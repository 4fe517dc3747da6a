//! The array core: md arrays as bdevs, their members, states and superblocks.
//!
//! # Ownership
//!
//! [`MdRegistry`] (one per bdev registry, control path only) holds the running arrays. An
//! [`Array`] is shared by the registry, the array bdev's backend and the array's control poller
//! (the daemon, [`crate::daemon`]) through an `Arc`; everything mutable in it is either an atomic
//! in [`Shared`] (read by every core) or in [`Ctl`] behind a mutex that only the control path
//! takes (never the data path). The daemon on the main reactor is the single writer of the
//! superblocks, the bitmap and the sync runs; RPC entry points change [`Ctl`] and wake it.
//!
//! # Create
//!
//! [`MdRegistry::create`] checks the request (name, level, members, chunk, layout, bitmap, uuid),
//! opens every member writable and claims it for module `"md"` (dropping the descriptors on any
//! failure releases the claims), computes the layout as mdadm does (`specs/md-superblock-1x.md`
//! §9: `data_offset` from the first member's size and the chunk, `data_size = member −
//! data_offset`, component size rounded to the chunk or to 64 KiB for raid1), writes a v1.2
//! superblock (events 1, dev_number = role), an empty bad-block log and, for raid1/raid10 with
//! `bitmap: "internal"` (their default), the write-intent bitmap to every member, and only when
//! every write succeeded starts the array ([`MdRegistry::start_array`], also the end of
//! assembly): registers the bdev named after the array and the daemon.
//!
//! A raid1/raid10 created without `assume_clean` starts with `resync_offset = 0` (and every
//! bitmap bit set): the daemon resyncs it at once, reads of the part not yet resynced go to the
//! first in-sync copy.
//!
//! # Stop
//!
//! [`MdRegistry::stop`] hands the stop to the daemon: it stops a running sync at its next window
//! (keeping the checkpoint), unregisters the bdev (its channels fail new I/O), writes every
//! member's superblock with events + 1 ("clean" when nothing is in flight), and drops the member
//! descriptors (releasing the claims).
//!
//! # Threading
//!
//! Every `MdRegistry` method is called on the main reactor and answers there (`arrays` may be
//! called anywhere). The per-core data path is [`crate::channel`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_bdev::{
    BackendChannel, BdevBackend, BdevEvent, BdevInfo, BdevParams, BdevRegistry, ChannelCx, ConfigCall, Descriptor,
    IoCaps, IoOp,
};
use keel_reactor::{CoreId, IoDevice};
use serde_json::{json, Value};

use crate::bitmap::BitmapHeader;
use crate::channel::{CoreSetup, MdCore};
use crate::geometry::StartRequest;
use crate::intent::Intent;
use crate::personality::{self, Health, Layout, Personality, PlanRequest};
use crate::shared::{Shared, SlotState};
use crate::superblock::{
    feature, Superblock, BLOCK_BYTES, MAX_SECTOR, ROLE_FAULTY, ROLE_SPARE, V1_2_SUPER_OFFSET_SECTORS,
};
use crate::sync::{SyncAction, SyncProgress, SyncSpeed};
use crate::MdError;

/// Module name of array bdevs and of the claims md takes on members.
pub const MODULE: &str = "md";
/// Default chunk (mdadm's): 512 KiB.
pub const DEFAULT_CHUNK_KB: u32 = 512;
/// Entries of the role table written at create (mdadm's 1.x default room).
pub(crate) const ROLE_TABLE_LEN: usize = 128;
/// Linux's default sync speed limits (KiB/s).
pub const DEFAULT_SPEED_MIN_KBS: u64 = 1_000;
pub const DEFAULT_SPEED_MAX_KBS: u64 = 200_000;

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
}

/// One member as `md_get_arrays` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub bdev: String,
    /// The role (raid device number); None for spares and faulty members.
    pub role: Option<u32>,
    /// "in_sync", "rebuilding", "spare" or "faulty".
    pub state: &'static str,
}

/// A sync run as `md_get_arrays` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncInfo {
    /// "idle", "resync", "recover", "check", "repair" or "frozen".
    pub action: &'static str,
    pub done_sectors: u64,
    pub total_sectors: u64,
    pub speed_kbs: u64,
    /// Seconds left at the current speed (None when idle or not moving).
    pub eta_s: Option<u64>,
    /// Mismatching sectors found by the last check/repair.
    pub mismatch_sectors: u64,
    pub speed_min_kbs: u64,
    pub speed_max_kbs: u64,
    /// The last run that completed ("resync", "recover", "check", "repair"), if any.
    pub last_action: Option<&'static str>,
}

/// One array as `md_get_arrays` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayInfo {
    pub name: String,
    /// mdadm's text form.
    pub uuid: String,
    pub level: String,
    pub raid_devices: u32,
    /// mdadm --detail's "State": "clean" or "active", then ", degraded", ", resyncing",
    /// ", recovering", ", checking" as they apply; "failed" when data is lost.
    pub state: String,
    pub events: u64,
    pub size_blocks: u64,
    pub block_size: u32,
    /// raid0/raid10 chunk; 0 for linear and raid1.
    pub chunk_kb: u32,
    /// mdadm's layout text (raid0 "original"/"alternate", raid10 "near=2"...), if any.
    pub layout: Option<String>,
    pub data_offset_sectors: u64,
    pub members: Vec<MemberInfo>,
    pub sync: SyncInfo,
    /// (bitmap chunk KiB, dirty bits) when the array has an internal bitmap.
    pub bitmap: Option<(u64, u64)>,
}

impl ArrayInfo {
    /// The JSON object of `md_get_arrays`.
    pub fn to_json(&self) -> Value {
        let count = |s: &str| self.members.iter().filter(|m| m.state == s).count();
        let progress = if self.sync.total_sectors > 0 && self.sync.action != "idle" {
            json!((self.sync.done_sectors as f64 * 1000.0 / self.sync.total_sectors as f64).floor() / 10.0)
        } else {
            Value::Null
        };
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
            "layout": self.layout,
            "data_offset_sectors": self.data_offset_sectors,
            "active_devices": count("in_sync"),
            "working_devices": self.members.len() - count("faulty"),
            "failed_devices": count("faulty"),
            "spare_devices": count("spare") + count("rebuilding"),
            "sync_action": self.sync.action,
            "sync_progress": progress,
            "sync_done_sectors": self.sync.done_sectors,
            "sync_total_sectors": self.sync.total_sectors,
            "sync_speed_kbs": self.sync.speed_kbs,
            "sync_eta_s": self.sync.eta_s,
            "sync_speed_min_kbs": self.sync.speed_min_kbs,
            "sync_speed_max_kbs": self.sync.speed_max_kbs,
            "mismatch_cnt": self.sync.mismatch_sectors,
            "last_sync_action": self.sync.last_action,
            "bitmap": self.bitmap.map(|(chunk_kb, dirty)| json!({"type": "internal", "chunk_kb": chunk_kb, "dirty_bits": dirty})),
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

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static NEXT_MEMBER_ID: AtomicU64 = AtomicU64::new(1);

/// A member bdev the array holds open (writable, claimed "md").
pub(crate) struct MemberRec {
    /// Unique identity (never 0), for the cores' channel refresh.
    pub id: u64,
    pub desc: Descriptor,
    pub name: String,
    /// Its superblock as last written (or read at assembly).
    pub sb: Superblock,
    /// Set by the descriptor's event callback when the bdev is being removed.
    pub removed: Arc<AtomicBool>,
}

impl MemberRec {
    /// Opens `bdev` writable and claims it for md. The descriptor's remove event sets
    /// `removed` (the daemon fails the member).
    pub(crate) fn open(reg: &BdevRegistry, bdev: &str, sb: Superblock) -> Result<MemberRec, MdError> {
        let removed = Arc::new(AtomicBool::new(false));
        let r2 = removed.clone();
        let desc = reg
            .open(bdev, true, move |ev| {
                if matches!(ev, BdevEvent::Remove) {
                    r2.store(true, Ordering::SeqCst);
                }
            })
            .map_err(|e| match e {
                keel_bdev::BdevError::NotFound(_) => MdError::NotFound(format!("member bdev '{bdev}' not found")),
                keel_bdev::BdevError::Claimed { .. } | keel_bdev::BdevError::HasWriters { .. } => {
                    MdError::Busy(format!("member '{bdev}': {e}"))
                }
                other => MdError::Bdev(format!("member '{bdev}': {other}")),
            })?;
        desc.claim(MODULE)
            .map_err(|e| MdError::Busy(format!("member '{bdev}': {e}")))?;
        Ok(MemberRec {
            id: NEXT_MEMBER_ID.fetch_add(1, Ordering::Relaxed),
            desc,
            name: bdev.to_string(),
            sb,
            removed,
        })
    }
}

/// Everything needed to start an array (from create or from assembly).
pub(crate) struct StartPlan {
    pub name: String,
    pub personality: &'static dyn Personality,
    pub set_uuid: [u8; 16],
    pub chunk_kb: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub caps: IoCaps,
    pub layout: Arc<dyn Layout>,
    /// Per role: the member (None: missing).
    pub slots: Vec<Option<MemberRec>>,
    /// Per role: InSync, Rebuilding or Missing.
    pub states: Vec<SlotState>,
    /// Per role: member sectors already rebuilt (Rebuilding).
    pub recovered_sectors: Vec<u64>,
    pub spares: Vec<MemberRec>,
    /// Array sectors in sync (`MAX_SECTOR`: all).
    pub resync_cp: u64,
    /// The superblocks say "active" (unclean): writes need no dirty marking first.
    pub dirty: bool,
    /// The bitmap read from (or written to) the members: header and bit bytes.
    pub bitmap: Option<(BitmapHeader, Vec<u8>)>,
    /// Array-wide superblock fields (from the freshest member).
    pub template: Superblock,
    /// Rebuilding members came back by re-add with a bitmap: recover only dirty chunks.
    pub readd_bitmap: bool,
}

/// What the user asked of the sync machinery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncRequest {
    /// Automatic: resync/recovery when needed.
    Auto,
    /// `frozen`: nothing runs.
    Frozen,
    /// A check or repair (or a forced resync) to run once.
    Run(SyncAction),
}

/// The answer of a stop.
pub(crate) type StopDone = Box<dyn FnOnce(Result<(), MdError>) + Send>;

/// Control-path state of an array (behind [`Array::ctl`]).
pub(crate) struct Ctl {
    /// Per role.
    pub slots: Vec<Option<MemberRec>>,
    pub spares: Vec<MemberRec>,
    /// Members marked faulty, kept (not written) until md_remove.
    pub faulty: Vec<MemberRec>,
    pub template: Superblock,
    pub events: u64,
    pub request: SyncRequest,
    /// Something needs a superblock write (the daemon coalesces).
    pub sb_needed: bool,
    pub readd_bitmap: bool,
    /// The last check/repair's result.
    pub mismatch_sectors: u64,
    /// The last sync run that completed (Linux's `last_sync_action`).
    pub last_action: Option<SyncAction>,
    /// Set by stop: the daemon finishes the array and calls this.
    pub stop: Option<StopDone>,
    /// A stop was requested (stays set after the daemon took `stop`).
    pub stopping: bool,
    /// Array data was lost (not operational): state "failed".
    pub failed: bool,
    /// `idle`/`frozen` asked the running sync to stop.
    pub interrupt: bool,
}

/// A running array.
pub(crate) struct Array {
    pub name: String,
    pub personality: &'static dyn Personality,
    pub set_uuid: [u8; 16],
    pub chunk_kb: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub layout: Arc<dyn Layout>,
    pub shared: Arc<Shared>,
    pub io_device: IoDevice<MdCore>,
    pub speed: Arc<SyncSpeed>,
    pub progress: Arc<SyncProgress>,
    /// Where the bitmap lives on each member (bytes), when there is one.
    pub bitmap_offset_bytes: Option<u64>,
    pub ctl: Mutex<Ctl>,
    /// The daemon's wake-up flag (work queued by an RPC).
    pub wake: AtomicBool,
}

impl Array {
    pub(crate) fn ctl(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Per role, the identity of the member the cores should use (0: none). Faulty members
    /// stay installed until the daemon moves them out, so their in-flight I/O completes.
    pub(crate) fn member_ids(&self) -> Vec<u64> {
        self.ctl()
            .slots
            .iter()
            .map(|s| s.as_ref().map_or(0, |m| m.id))
            .collect()
    }

    /// Tells every core about the current members; `done` on the calling core afterwards.
    pub(crate) fn refresh_channels(self: &Arc<Self>, done: impl FnOnce() + Send + 'static) {
        let ids = self.member_ids();
        let me = self.clone();
        self.io_device.for_each_channel(
            move |c: &MdCore| {
                c.refresh_members(&ids, |r| {
                    me.ctl().slots[r]
                        .as_ref()
                        .filter(|m| ids[r] == m.id)
                        .map(|m| m.desc.channel())
                })
            },
            done,
        );
    }

    pub(crate) fn wake(&self) {
        self.wake.store(true, Ordering::SeqCst);
    }

    /// Asks the daemon to stop the array; `done` (if any) gets the outcome. When a stop is
    /// already under way, `done` comes back (`Err`) for the caller to answer.
    pub(crate) fn request_stop(&self, done: Option<StopDone>) -> Result<(), Option<StopDone>> {
        let mut ctl = self.ctl();
        if ctl.stopping {
            return Err(done);
        }
        ctl.stopping = true;
        ctl.stop = Some(done.unwrap_or_else(|| Box::new(|_| {})));
        drop(ctl);
        self.wake();
        Ok(())
    }

    /// The superblock for `m` (in role `role`, None for a spare) from the template and the
    /// current states. `active`: the array is being written (resync_offset 0).
    pub(crate) fn member_sb(&self, ctl: &Ctl, m: &MemberRec, role: Option<usize>, active: bool) -> Superblock {
        let mut sb = ctl.template.clone();
        sb.dev_number = m.sb.dev_number;
        sb.device_uuid = m.sb.device_uuid;
        sb.data_offset_sectors = m.sb.data_offset_sectors;
        sb.data_size_sectors = m.sb.data_size_sectors;
        sb.super_offset_sectors = m.sb.super_offset_sectors;
        sb.bblog_shift = m.sb.bblog_shift;
        sb.bblog_size = m.sb.bblog_size;
        sb.bblog_offset = m.sb.bblog_offset;
        sb.cnt_corrected_read = m.sb.cnt_corrected_read;
        sb.devflags = m.sb.devflags;
        sb.events = ctl.events;
        sb.utime = now_secs();
        sb.feature_map &= !feature::RECOVERY_OFFSET;
        sb.recovery_offset_sectors = 0;
        if let Some(r) = role {
            if self.shared.slots[r].state() == SlotState::Rebuilding {
                sb.feature_map |= feature::RECOVERY_OFFSET;
                sb.recovery_offset_sectors = self.shared.slots[r].recovered_sectors();
            }
        }
        let cp = self.shared.resync_cp();
        sb.resync_offset = if !self.personality.caps().resync {
            MAX_SECTOR
        } else if active {
            0
        } else {
            cp
        };
        let mut roles = vec![ROLE_SPARE; sb.dev_roles.len().max(ROLE_TABLE_LEN)];
        let mut set = |dev: u32, v: u16| {
            if let Some(x) = roles.get_mut(dev as usize) {
                *x = v;
            }
        };
        for f in &ctl.faulty {
            set(f.sb.dev_number, ROLE_FAULTY);
        }
        for (r, s) in ctl.slots.iter().enumerate() {
            if let Some(s) = s {
                set(
                    s.sb.dev_number,
                    if self.shared.slots[r].state() == SlotState::Faulty {
                        ROLE_FAULTY
                    } else {
                        r as u16
                    },
                );
            }
        }
        sb.dev_roles = roles;
        sb
    }

    /// What `md_get_arrays` shows.
    pub(crate) fn info(&self) -> ArrayInfo {
        let ctl = self.ctl();
        let mut members = Vec::new();
        for (r, s) in ctl.slots.iter().enumerate() {
            if let Some(m) = s {
                let st = self.shared.slots[r].state();
                members.push(MemberInfo {
                    bdev: m.name.clone(),
                    role: (st != SlotState::Faulty).then_some(r as u32),
                    state: st.name(),
                });
            }
        }
        for m in &ctl.spares {
            members.push(MemberInfo {
                bdev: m.name.clone(),
                role: None,
                state: "spare",
            });
        }
        for m in &ctl.faulty {
            members.push(MemberInfo {
                bdev: m.name.clone(),
                role: None,
                state: "faulty",
            });
        }
        let states = self.shared.states();
        let operational = self.layout.health(&|m| states[m.idx()] == SlotState::InSync) != Health::Failed;
        let degraded = states.iter().any(|s| *s != SlotState::InSync);
        let action_code = self.progress.action.load(Ordering::Relaxed);
        let action = match action_code {
            1 => "resync",
            2 => "recover",
            3 => "check",
            4 => "repair",
            _ if ctl.request == SyncRequest::Frozen => "frozen",
            _ => "idle",
        };
        let mut state = if ctl.failed || !operational {
            "failed".to_string()
        } else if self.shared.gate.is_dirty()
            || (self.personality.caps().resync && self.shared.resync_cp() != MAX_SECTOR)
        {
            "active".to_string()
        } else {
            "clean".to_string()
        };
        if degraded && state != "failed" {
            state.push_str(", degraded");
        }
        match action_code {
            1 => state.push_str(", resyncing"),
            2 => state.push_str(", recovering"),
            3 | 4 => state.push_str(", checking"),
            _ => {}
        }
        let done = self.progress.done_sectors.load(Ordering::Relaxed);
        let total = self.progress.total_sectors.load(Ordering::Relaxed);
        let rate = self.progress.rate_kbs.load(Ordering::Relaxed);
        let eta_s = (action_code != 0 && rate > 0).then(|| total.saturating_sub(done) / 2 / rate);
        let layout = self.personality.detail_layout_text(&ctl.template);
        ArrayInfo {
            name: self.name.clone(),
            uuid: Superblock::uuid_text(&self.set_uuid),
            level: self.personality.name().to_string(),
            raid_devices: ctl.template.raid_disks,
            state,
            events: ctl.events,
            size_blocks: self.num_blocks,
            block_size: self.block_size,
            chunk_kb: self.chunk_kb,
            layout,
            data_offset_sectors: self.layout.geometry().data_offset_sectors,
            members,
            sync: SyncInfo {
                action,
                done_sectors: if action_code != 0 { done } else { 0 },
                total_sectors: if action_code != 0 { total } else { 0 },
                speed_kbs: if action_code != 0 { rate } else { 0 },
                eta_s,
                mismatch_sectors: ctl.mismatch_sectors.max(if action_code >= 3 {
                    self.progress.mismatch_sectors.load(Ordering::Relaxed)
                } else {
                    0
                }),
                speed_min_kbs: self.speed.min_kbs.load(Ordering::Relaxed),
                speed_max_kbs: self.speed.max_kbs.load(Ordering::Relaxed),
                last_action: ctl.last_action.map(|a| a.name()),
            },
            bitmap: self
                .shared
                .intent
                .as_ref()
                .map(|i| (i.chunk_sectors() / 2, i.dirty_count())),
        }
    }
}

/// The array bdev's backend.
struct MdBackend {
    array: Arc<Array>,
}

impl BdevBackend for MdBackend {
    fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
        MdCore::backend(self.array.io_device.get_channel(), cx)
    }

    fn driver_specific(&self) -> Value {
        json!({ "md": self.array.info().to_json() })
    }

    /// The bdev went away without `md_stop` (a shutdown removing every bdev, a forced delete):
    /// stop the array the same way, so the members get their final superblocks and are released.
    fn on_unregister(&self) {
        let _ = self.array.request_stop(None);
    }

    /// Arrays come back through `md_assemble` by UUID (never `md_create`, which would write
    /// fresh superblocks over the data).
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        let ctl = self.array.ctl();
        let members: Vec<String> = ctl
            .slots
            .iter()
            .flatten()
            .chain(ctl.spares.iter())
            .map(|m| m.name.clone())
            .collect();
        Some(ConfigCall {
            method: "md_assemble",
            params: json!({
                "name": self.array.name,
                "uuid": Superblock::uuid_text(&self.array.set_uuid),
                "members": members,
            }),
        })
    }
}

/// The md arrays of one bdev registry. `Send + Sync`; control path only.
pub struct MdRegistry {
    pub(crate) bdevs: Weak<BdevRegistry>,
    pub(crate) arrays: Mutex<Vec<Arc<Array>>>,
    /// Names being created or assembled (so two concurrent starts of one name cannot both pass).
    pub(crate) creating: Mutex<Vec<String>>,
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

    pub(crate) fn bdevs(&self) -> Result<Arc<BdevRegistry>, MdError> {
        self.bdevs
            .upgrade()
            .ok_or_else(|| MdError::Bdev("the bdev registry is gone".into()))
    }

    /// The arrays (all, or the one named), as `md_get_arrays` shows them. Any thread.
    pub fn arrays(&self, name: Option<&str>) -> Result<Vec<ArrayInfo>, MdError> {
        let arrays: Vec<Arc<Array>> = self.arrays.lock().unwrap_or_else(|e| e.into_inner()).clone();
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

    pub(crate) fn find(&self, name: &str) -> Result<Arc<Array>, MdError> {
        self.arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| MdError::NotFound(format!("md array '{name}' not found")))
    }

    /// Whether `name` is taken by a bdev, an array or a start in progress.
    pub(crate) fn name_taken(&self, reg: &BdevRegistry, name: &str) -> bool {
        reg.get(name).is_some()
            || self
                .arrays
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|a| a.name == name)
            || self
                .creating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|n| n == name)
    }

    /// Reserves `name` for a start in progress; `false` if taken.
    pub(crate) fn reserve(&self, reg: &BdevRegistry, name: &str) -> bool {
        if self.name_taken(reg, name) {
            return false;
        }
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
        true
    }

    pub(crate) fn unreserve(&self, name: &str) {
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| n != name);
    }

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
        let me = self.clone();
        let name = opts.name.clone();
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
            targets.push((std::rc::Rc::new(m.desc.channel()), m.name.clone(), blocks));
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
            // The bitmap covers sync space: the array's sectors.
            let chunk_bytes = crate::intent::default_chunk_bytes(array_sectors, space_bytes);
            let header = BitmapHeader {
                version: crate::bitmap::VERSION,
                uuid: set_uuid,
                events: 1,
                events_cleared: 1,
                sync_size_sectors: array_sectors,
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

    /// Starts an array whose metadata is on its members: registers the bdev (named after the
    /// array) and the daemon. Called on the main reactor by create and assembly.
    pub(crate) fn start_array(self: &Arc<Self>, plan: StartPlan) -> Result<(), MdError> {
        let reg = self.bdevs()?;
        let intent = match &plan.bitmap {
            Some((h, bits)) => Some(Intent::with_resync_offset(h.clone(), bits, plan.resync_cp)?),
            None => None,
        };
        let bitmap_offset_bytes = plan
            .bitmap
            .as_ref()
            .map(|_| (V1_2_SUPER_OFFSET_SECTORS as i64 + plan.template.bitmap_offset_sectors as i64) as u64 * 512);
        let shared = Arc::new(Shared::new(&plan.states, plan.resync_cp, plan.dirty, intent));
        for (r, &s) in plan.recovered_sectors.iter().enumerate() {
            shared.slots[r].set_recovered_sectors(s);
        }
        let layout = plan.layout.clone();
        let gated = plan.personality.caps().resync;
        let name = plan.name.clone();
        let array = Arc::new_cyclic(|weak: &Weak<Array>| {
            let w = weak.clone();
            let (l2, s2, n2) = (layout.clone(), shared.clone(), name.clone());
            let io_device = IoDevice::new(format!("md_{name}"), move |core: CoreId| {
                let members = match w.upgrade() {
                    Some(a) => a
                        .ctl()
                        .slots
                        .iter()
                        .map(|s| s.as_ref().map_or((0, None), |m| (m.id, Some(m.desc.channel()))))
                        .collect(),
                    None => (0..l2.geometry().roles()).map(|_| (0, None)).collect(),
                };
                l2.clone().core(CoreSetup {
                    name: n2.clone(),
                    core: core.0,
                    layout: l2.clone(),
                    shared: s2.clone(),
                    members,
                    gated,
                })
            });
            let events = plan.template.events;
            Array {
                name: name.clone(),
                personality: plan.personality,
                set_uuid: plan.set_uuid,
                chunk_kb: plan.chunk_kb,
                block_size: plan.block_size,
                num_blocks: plan.num_blocks,
                layout: layout.clone(),
                shared: shared.clone(),
                io_device,
                speed: Arc::new(SyncSpeed {
                    min_kbs: AtomicU64::new(DEFAULT_SPEED_MIN_KBS),
                    max_kbs: AtomicU64::new(DEFAULT_SPEED_MAX_KBS),
                }),
                progress: Arc::new(SyncProgress::default()),
                bitmap_offset_bytes,
                ctl: Mutex::new(Ctl {
                    slots: plan.slots,
                    spares: plan.spares,
                    faulty: Vec::new(),
                    template: plan.template,
                    events,
                    request: SyncRequest::Auto,
                    sb_needed: false,
                    readd_bitmap: plan.readd_bitmap,
                    mismatch_sectors: 0,
                    last_action: None,
                    stop: None,
                    stopping: false,
                    failed: false,
                    interrupt: false,
                }),
                wake: AtomicBool::new(true),
            }
        });
        let params = BdevParams {
            name: name.clone(),
            uuid: Some(uuid::Uuid::from_bytes(array.set_uuid)),
            product_name: "md RAID",
            module: MODULE,
            block_size: array.block_size,
            num_blocks: array.num_blocks,
            caps: plan.caps,
            optimal_io_boundary_blocks: (layout.optimal_io_boundary_sectors() * 512 / array.block_size as u64) as u32,
        };
        reg.register(params, Arc::new(MdBackend { array: array.clone() }))
            .map_err(|e| match e {
                keel_bdev::BdevError::Exists(n) => MdError::Exists(format!("name '{n}' is already in use")),
                other => MdError::Bdev(other.to_string()),
            })?;
        self.arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(array.clone());
        crate::daemon::start(self.clone(), array);
        Ok(())
    }

    /// Stops array `name` (see the module docs). Called on the main reactor; `done` runs there
    /// once the superblocks are written and the members released.
    pub fn stop(self: &Arc<Self>, name: &str, done: impl FnOnce(Result<(), MdError>) + Send + 'static) {
        let array = match self.find(name) {
            Ok(a) => a,
            Err(e) => return done(Err(e)),
        };
        if let Err(Some(done)) = array.request_stop(Some(Box::new(done))) {
            done(Err(MdError::Busy(format!("md array '{name}' is already stopping"))));
        }
    }

    /// Stops every array (shutdown). Called on the main reactor; `done` runs there once every
    /// array's members have their final superblocks and are released.
    pub fn stop_all(self: &Arc<Self>, done: impl FnOnce() + Send + 'static) {
        let arrays: Vec<Arc<Array>> = self.arrays.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let left = Arc::new(std::sync::atomic::AtomicUsize::new(arrays.len() + 1));
        type Once = Mutex<Option<Box<dyn FnOnce() + Send>>>;
        let done: Arc<Once> = Arc::new(Mutex::new(Some(Box::new(done))));
        let finish = {
            let (left, done) = (left.clone(), done.clone());
            move || {
                if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                    if let Some(d) = done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        d();
                    }
                }
            }
        };
        for a in arrays {
            let f = finish.clone();
            if a.request_stop(Some(Box::new(move |_| f()))).is_err() {
                // Already stopping: its daemon ends soon; do not wait for it.
                finish();
            }
        }
        finish();
    }

    /// `md_add`: adds `bdev` to array `name` (as `mdadm --add`). A bdev whose superblock says
    /// it held a role of this array that is now empty comes back into that role ("re-add"):
    /// with a bitmap only the chunks written meanwhile are recovered. Anything else becomes a
    /// spare with a fresh superblock; the daemon moves it into an empty role and rebuilds it.
    /// Called on the main reactor; `done` runs there.
    pub fn add(self: &Arc<Self>, name: &str, bdev: &str, done: impl FnOnce(Result<(), MdError>) + 'static) {
        let r = (|| {
            let array = self.find(name)?;
            if !array.personality.caps().spares {
                return Err(MdError::Unsupported(format!(
                    "{} has no redundancy: members cannot be added",
                    array.personality.name()
                )));
            }
            if array.ctl().stopping {
                return Err(MdError::Busy(format!("md array '{name}' is stopping")));
            }
            let reg = self.bdevs()?;
            let rec = MemberRec::open(&reg, bdev, Superblock::default())?;
            let info = rec.desc.info().clone();
            if info.block_size > array.block_size || !info.block_size.is_power_of_two() || info.block_size < 512 {
                return Err(MdError::invalid(
                    "bdev",
                    format!(
                        "'{bdev}' has block size {}; the array uses {}",
                        info.block_size, array.block_size
                    ),
                ));
            }
            let (data_offset, comp) = {
                let ctl = array.ctl();
                (ctl.template.data_offset_sectors, ctl.template.size_sectors)
            };
            let dev_sectors = info.size_bytes() / 512;
            if dev_sectors < data_offset + comp {
                return Err(MdError::invalid(
                    "bdev",
                    format!(
                        "'{bdev}' has {dev_sectors} sectors; members need {}",
                        data_offset + comp
                    ),
                ));
            }
            Ok((array, rec, dev_sectors))
        })();
        let (array, rec, dev_sectors) = match r {
            Ok(x) => x,
            Err(e) => return done(Err(e)),
        };
        let ch = std::rc::Rc::new(rec.desc.channel());
        let me = self.clone();
        let ch2 = ch.clone();
        crate::meta_io::read(&ch, V1_2_SUPER_OFFSET_SECTORS * 512, BLOCK_BYTES, move |res| {
            let _keep = ch2;
            let old = res
                .ok()
                .and_then(|b| Superblock::decode(&b, V1_2_SUPER_OFFSET_SECTORS).ok())
                .filter(|sb| sb.set_uuid == array.set_uuid);
            let r = me.finish_add(&array, rec, old, dev_sectors);
            array.wake();
            done(r)
        });
    }

    fn finish_add(
        &self,
        array: &Arc<Array>,
        mut rec: MemberRec,
        old: Option<Superblock>,
        dev_sectors: u64,
    ) -> Result<(), MdError> {
        let mut ctl = array.ctl();
        if ctl.stopping {
            return Err(MdError::Busy(format!("md array '{}' is stopping", array.name)));
        }
        // Re-add into the role it held, if that role is empty.
        if let Some(sb) = old {
            let role = match sb.own_role() {
                crate::superblock::Role::Active(r) => Some(r as usize),
                _ => None,
            };
            if let Some(r) = role.filter(|&r| r < ctl.slots.len() && ctl.slots[r].is_none()) {
                if array.shared.slots[r].state() == SlotState::Missing
                    && sb.data_offset_sectors == ctl.template.data_offset_sectors
                    && !ctl.slots.iter().flatten().any(|m| m.sb.dev_number == sb.dev_number)
                {
                    // Bits are never cleared while the array is degraded, so they cover every
                    // write the member missed since it left.
                    let bitmap_ok = array.shared.intent.is_some() && sb.events <= ctl.events;
                    rec.sb = sb;
                    ctl.faulty.retain(|m| m.name != rec.name);
                    array.shared.slots[r].set_recovered_sectors(0);
                    array.shared.slots[r].set_state(SlotState::Rebuilding);
                    ctl.slots[r] = Some(rec);
                    ctl.readd_bitmap = bitmap_ok;
                    ctl.sb_needed = true;
                    drop(ctl);
                    array.refresh_channels(|| {});
                    return Ok(());
                }
            }
        }
        let used: Vec<u32> = ctl
            .slots
            .iter()
            .flatten()
            .chain(ctl.spares.iter())
            .chain(ctl.faulty.iter())
            .map(|m| m.sb.dev_number)
            .collect();
        let dev_number = (0..ROLE_TABLE_LEN as u32)
            .find(|d| !used.contains(d))
            .ok_or_else(|| MdError::invalid("bdev", "the role table is full"))?;
        let mut sb = ctl.template.clone();
        sb.dev_number = dev_number;
        sb.device_uuid = *uuid::Uuid::new_v4().as_bytes();
        sb.data_size_sectors = dev_sectors - sb.data_offset_sectors;
        sb.recovery_offset_sectors = 0;
        rec.sb = sb;
        ctl.faulty.retain(|m| m.name != rec.name);
        ctl.spares.push(rec);
        ctl.sb_needed = true;
        Ok(())
    }

    /// `md_fail`: marks member `bdev` of array `name` faulty (as `mdadm --fail`). The daemon
    /// writes the superblocks and, if a spare is present, starts recovery onto it.
    pub fn fail(&self, name: &str, bdev: &str) -> Result<(), MdError> {
        let array = self.find(name)?;
        let ctl = array.ctl();
        let role = ctl
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|m| m.name == bdev))
            .ok_or_else(|| MdError::NotFound(format!("'{bdev}' is not an active member of '{name}'")))?;
        if array.personality.caps().failures == 0 {
            return Err(MdError::Unsupported(format!(
                "{} has no redundancy: failing a member would lose data",
                array.personality.name()
            )));
        }
        drop(ctl);
        array.shared.fail_member(role);
        array.wake();
        Ok(())
    }

    /// `md_remove`: takes a spare or faulty member out of array `name` and releases it (as
    /// `mdadm --remove`; an active member must be failed first).
    pub fn remove(&self, name: &str, bdev: &str) -> Result<(), MdError> {
        let array = self.find(name)?;
        let mut ctl = array.ctl();
        if let Some(i) = ctl.spares.iter().position(|m| m.name == bdev) {
            ctl.spares.remove(i);
        } else if let Some(i) = ctl.faulty.iter().position(|m| m.name == bdev) {
            ctl.faulty.remove(i);
        } else if ctl.slots.iter().flatten().any(|m| m.name == bdev) {
            return Err(MdError::Busy(format!(
                "'{bdev}' is an active member of '{name}': fail it first"
            )));
        } else {
            return Err(MdError::NotFound(format!("'{bdev}' is not a member of '{name}'")));
        }
        ctl.sb_needed = true;
        drop(ctl);
        array.wake();
        Ok(())
    }

    /// `md_set_sync_speed`: Linux's speed_limit_min/max for array `name` (KiB/s; None keeps).
    pub fn set_sync_speed(&self, name: &str, min_kbs: Option<u64>, max_kbs: Option<u64>) -> Result<(), MdError> {
        let array = self.find(name)?;
        let min = min_kbs.unwrap_or(array.speed.min_kbs.load(Ordering::Relaxed));
        let max = max_kbs.unwrap_or(array.speed.max_kbs.load(Ordering::Relaxed));
        if min == 0 || max == 0 {
            return Err(MdError::invalid("speed", "limits must be at least 1 KiB/s"));
        }
        if min > max {
            return Err(MdError::invalid("min_kbs", format!("{min} is above max_kbs {max}")));
        }
        array.speed.min_kbs.store(min, Ordering::Relaxed);
        array.speed.max_kbs.store(max, Ordering::Relaxed);
        Ok(())
    }

    /// `md_set_sync_action`: "idle", "frozen", "resync", "recover", "check" or "repair" (as
    /// writing md/sync_action).
    pub fn set_sync_action(&self, name: &str, action: &str) -> Result<(), MdError> {
        let array = self.find(name)?;
        if !array.personality.caps().resync {
            return Err(MdError::Unsupported(format!(
                "{} has no redundancy: nothing to sync",
                array.personality.name()
            )));
        }
        let req = match action {
            "idle" => SyncRequest::Auto,
            "frozen" => SyncRequest::Frozen,
            "resync" => SyncRequest::Run(SyncAction::Resync),
            "recover" => SyncRequest::Auto,
            "check" => SyncRequest::Run(SyncAction::Check),
            "repair" => SyncRequest::Run(SyncAction::Repair),
            a => {
                return Err(MdError::invalid(
                    "action",
                    format!("'{a}' (use idle, frozen, resync, recover, check or repair)"),
                ))
            }
        };
        let mut ctl = array.ctl();
        if matches!(req, SyncRequest::Run(_)) && array.progress.action.load(Ordering::Relaxed) != 0 {
            return Err(MdError::Busy(format!(
                "'{name}' is already running a sync action: set 'idle' first"
            )));
        }
        ctl.request = req;
        ctl.interrupt |= action == "idle" || action == "frozen";
        drop(ctl);
        array.wake();
        Ok(())
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
