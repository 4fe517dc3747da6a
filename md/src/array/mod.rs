//! The array core: md arrays as bdevs, their members, states and superblocks.
//!
//! # Ownership
//!
//! [`MdRegistry`] (one per bdev registry, control path only) holds the running arrays. An
//! `Array` is shared by the registry, the array bdev's backend and the array's control poller
//! (the daemon, `crate::daemon`) through an `Arc`; everything mutable in it is either an atomic
//! in `Shared` (read by every core) or in `Ctl` behind a mutex that only the control path takes
//! (never the data path). The daemon on the main reactor is the single writer of the
//! superblocks, the bitmap and the sync runs; RPC entry points change `Ctl` and wake it. An
//! array's level is its personality (`crate::personality`): the core reads the level's
//! capabilities as data and asks its layout for sizes and health; it never matches on a level.
//!
//! # Files
//!
//! - this file: the array and its members, the superblock each member gets;
//! - `registry`: [`MdRegistry`], the bdev backend, starting (the end of create and of assembly)
//!   and stopping arrays;
//! - `create`: `md_create` ([`CreateOpts`]) and mdadm's size rules;
//! - `manage`: adding, failing and removing members, sync speed and action;
//! - `info`: what `md_get_arrays` shows ([`ArrayInfo`]).
//!
//! # Threading
//!
//! Every `MdRegistry` method is called on the main reactor and answers there (`arrays` may be
//! called anywhere). The per-core data path is `crate::channel`.

mod create;
mod info;
mod manage;
mod registry;
mod stripe_cache;

pub(crate) use create::parse_uuid;
pub use create::{default_data_offset_sectors, CreateOpts, DEFAULT_CHUNK_KB};
pub use info::{ArrayInfo, MemberInfo, SyncInfo};
pub use registry::MdRegistry;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_bdev::{BdevEvent, BdevRegistry, Descriptor, IoCaps};
use keel_reactor::IoDevice;

use crate::bitmap::BitmapHeader;
use crate::channel::MdCore;
use crate::personality::{Layout, Personality};
use crate::shared::{Shared, SlotState};
use crate::superblock::{feature, Superblock, MAX_SECTOR, ROLE_FAULTY, ROLE_SPARE};
use crate::sync::{SyncAction, SyncProgress, SyncSpeed};
use crate::MdError;

/// Module name of array bdevs and of the claims md takes on members.
pub const MODULE: &str = "md";
/// Entries of the role table written at create (mdadm's 1.x default room).
pub(crate) const ROLE_TABLE_LEN: usize = 128;
/// Linux's default sync speed limits (KiB/s).
pub const DEFAULT_SPEED_MIN_KBS: u64 = 1_000;
pub const DEFAULT_SPEED_MAX_KBS: u64 = 200_000;

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
    /// A spare that is a member coming back (`md_add` of a bdev carrying its own superblock of
    /// this array): the role it held, waiting for the daemon to give it back.
    pub readd: Option<ReAdd>,
}

/// A re-add waiting in the spares list (see [`MemberRec::readd`]). As Linux (whose
/// `remove_and_add_spares` runs only once no sync thread is running), the daemon moves it into
/// its role only when no sync run is under way: a run that was stopped may still have a window
/// in flight, and when that window ends it publishes its progress to the role's slot
/// (`recovered_sectors`, or in sync when it was the last window) — progress that would then be
/// taken for the re-added member's, which never got that window's data.
#[derive(Debug, Clone)]
pub(crate) struct ReAdd {
    /// The role its superblock says it held (empty and missing when `md_add` ran).
    pub role: usize,
    /// Its superblock as read by `md_add`: it takes it back with the role.
    pub sb: Superblock,
    /// The bitmap covers every write it missed: recovery may skip clean chunks.
    pub bitmap_ok: bool,
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
                other => MdError::Member {
                    bdev: bdev.to_string(),
                    source: other,
                },
            })?;
        desc.claim(MODULE)
            .map_err(|e| MdError::Busy(format!("member '{bdev}': {e}")))?;
        Ok(MemberRec {
            id: NEXT_MEMBER_ID.fetch_add(1, Ordering::Relaxed),
            desc,
            name: bdev.to_string(),
            sb,
            removed,
            readd: None,
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
}
