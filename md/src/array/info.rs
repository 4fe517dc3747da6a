//! What `md_get_arrays` shows of an array (mdadm --detail's facts).

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::{Array, SyncRequest};
use crate::personality::Health;
use crate::shared::SlotState;
use crate::superblock::{Superblock, MAX_SECTOR};

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
    /// Sync window cap (KiB; 0: md's own choice).
    pub window_kb: u64,
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
    /// raid4/5/6: the stripe cache in Linux entries (`stripe_cache_size`).
    pub stripe_cache_size: Option<u32>,
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
            "sync_window_kb": self.sync.window_kb,
            "mismatch_cnt": self.sync.mismatch_sectors,
            "last_sync_action": self.sync.last_action,
            "stripe_cache_size": self.stripe_cache_size,
            "bitmap": self.bitmap.map(|(chunk_kb, dirty)| json!({"type": "internal", "chunk_kb": chunk_kb, "dirty_bits": dirty})),
            "members": self.members.iter().map(|m| json!({
                "bdev": m.bdev,
                "role": m.role,
                "state": m.state,
            })).collect::<Vec<_>>(),
        })
    }
}

impl Array {
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
                window_kb: self.speed.window_kb.load(Ordering::Relaxed),
                last_action: ctl.last_action.map(|a| a.name()),
            },
            bitmap: self
                .shared
                .intent
                .as_ref()
                .map(|i| (i.chunk_sectors() / 2, i.dirty_count())),
            stripe_cache_size: self.layout.stripe_cache(),
        }
    }
}
