//! Managing a running array's members and sync (`md_add`, `md_fail`, `md_remove`,
//! `md_set_sync_speed`, `md_set_sync_action`). Each checks the request against the level's
//! capabilities, changes the array's control state and wakes its daemon, which does the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Array, MdRegistry, MemberRec, ReAdd, SyncRequest, ROLE_TABLE_LEN};
use crate::layout::MemberIdx;
use crate::shared::SlotState;
use crate::superblock::{Superblock, BLOCK_BYTES, V1_2_SUPER_OFFSET_SECTORS};
use crate::sync::SyncAction;
use crate::MdError;

impl MdRegistry {
    /// `md_add`: adds `bdev` to array `name` (as `mdadm --add`). A bdev whose superblock says
    /// it held a role of this array that is now empty comes back into that role ("re-add"):
    /// with a bitmap only the chunks written meanwhile are recovered. Anything else becomes a
    /// spare with a fresh superblock; the daemon moves it into an empty role and rebuilds it.
    /// Either way it waits among the spares until no sync run is under way (a re-add listed as
    /// "spare" until then), as Linux.
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
        // Re-add into the role it held, if that role is empty: the member waits among the
        // spares (with a spare's fresh superblock, so that a crash meanwhile leaves a plain
        // spare) until the daemon gives the role back, which it does only once no sync run is
        // under way (see `ReAdd`).
        let readd = old.and_then(|sb| {
            let role = match sb.own_role() {
                crate::superblock::Role::Active(r) => Some(r as usize),
                _ => None,
            };
            let r = role.filter(|&r| r < ctl.slots.len() && ctl.slots[r].is_none())?;
            let fits = array.shared.slots[r].state() == SlotState::Missing
                && sb.data_offset_sectors == ctl.template.data_offset_sectors
                && !ctl.slots.iter().flatten().any(|m| m.sb.dev_number == sb.dev_number)
                && !ctl.spares.iter().any(|m| m.readd.as_ref().is_some_and(|a| a.role == r));
            // Bits are never cleared while the array is degraded, so they cover every write
            // the member missed since it left.
            let bitmap_ok = array.shared.intent.is_some() && sb.events <= ctl.events;
            fits.then_some(ReAdd { role: r, sb, bitmap_ok })
        });
        let used: Vec<u32> = ctl
            .slots
            .iter()
            .flatten()
            .chain(ctl.spares.iter())
            .chain(ctl.faulty.iter())
            .map(|m| m.sb.dev_number)
            // A waiting re-add takes its old number back.
            .chain(
                ctl.spares
                    .iter()
                    .filter_map(|m| m.readd.as_ref().map(|a| a.sb.dev_number)),
            )
            .chain(readd.as_ref().map(|a| a.sb.dev_number))
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
        rec.readd = readd;
        ctl.faulty.retain(|m| m.name != rec.name);
        ctl.spares.push(rec);
        ctl.sb_needed = true;
        Ok(())
    }

    /// `md_fail`: marks member `bdev` of array `name` faulty (as `mdadm --fail`). The daemon
    /// writes the superblocks and, if a spare is present, starts recovery onto it. Refused with
    /// `Busy` (EBUSY, as Linux md) and nothing changed when the array could not lose the member:
    /// the last in-sync copy of some data of a raid1/raid10, any member of a raid0/linear — the
    /// level's [`Layout::can_lose`](crate::personality::Layout::can_lose) over the in-sync
    /// roles decides, so every level gets the rule from its health.
    pub fn fail(&self, name: &str, bdev: &str) -> Result<(), MdError> {
        let array = self.find(name)?;
        let ctl = array.ctl();
        let role = ctl
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|m| m.name == bdev))
            .ok_or_else(|| MdError::NotFound(format!("'{bdev}' is not an active member of '{name}'")))?;
        let states = array.shared.states();
        if !array
            .layout
            .can_lose(&|m| states[m.idx()] == SlotState::InSync, MemberIdx(role as u16))
        {
            let why = if array.personality.caps().failures == 0 {
                format!("{} has no redundancy", array.personality.name())
            } else {
                "it holds the last in-sync copy of some data".to_string()
            };
            return Err(MdError::Busy(format!(
                "cannot fail '{bdev}' of '{name}': {why}; the array would fail"
            )));
        }
        drop(ctl);
        array.shared.fail_member(role);
        array.wake();
        Ok(())
    }

    /// Refuses (`Busy`, EBUSY as Linux's STOP_ARRAY with openers) to stop array `name` while
    /// its bdev is open — a dm table, a layer (passthru...), an export or an I/O job over it —
    /// naming who holds it ([`keel_bdev::BdevRegistry::holders`]). Main reactor.
    pub(crate) fn check_stoppable(&self, name: &str) -> Result<(), MdError> {
        let reg = self.bdevs()?;
        let Some(bdev) = reg.get(name) else {
            return Ok(());
        };
        let opens = bdev.open_count();
        if opens == 0 {
            return Ok(());
        }
        let holders = reg.holders(&bdev);
        let by = if holders.is_empty() {
            format!("{opens} open descriptor{}", if opens == 1 { "" } else { "s" })
        } else {
            holders.join(", ")
        };
        Err(MdError::Busy(format!(
            "md array '{name}' is open (held by {by}): close it first"
        )))
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

    /// SPDK's raid process options on array `name` (`bdev_raid_set_options`): the sync window
    /// cap `window_kb` (0: md's own choice; windows stay whole 1 MiB write-gate buckets, at
    /// least one) and the max speed `max_kbs` (0: no limit, which Linux's speed_limit_max cannot
    /// say). A min speed above the new max comes down to it. Any thread; a running sync picks
    /// both up at its next window.
    pub fn set_sync_process(&self, name: &str, window_kb: u64, max_kbs: u64) -> Result<(), MdError> {
        let array = self.find(name)?;
        if max_kbs != 0 && array.speed.min_kbs.load(Ordering::Relaxed) > max_kbs {
            array.speed.min_kbs.store(max_kbs, Ordering::Relaxed);
        }
        array.speed.max_kbs.store(max_kbs, Ordering::Relaxed);
        array.speed.window_kb.store(window_kb, Ordering::Relaxed);
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
