//! `md_examine`: what `mdadm --examine` shows for one member, read through the bdev layer.

use std::rc::Rc;
use std::sync::Arc;

use keel_bdev::BdevRegistry;

use crate::superblock::{feature, Role, Superblock, BLOCK_BYTES, V1_2_SUPER_OFFSET_SECTORS};
use crate::{meta_io, MdError};

/// mdadm's name of a superblock level.
pub fn level_name(level: i32) -> String {
    match level {
        -1 => "linear".into(),
        0 | 1 | 4 | 5 | 6 | 10 => format!("raid{level}"),
        other => format!("level {other}"),
    }
}

/// The facts of `mdadm --examine`, decoded from one member.
#[derive(Debug, Clone, PartialEq)]
pub struct Examine {
    pub sb: Superblock,
    /// Member size in sectors.
    pub device_sectors: u64,
}

impl Examine {
    /// "Active device N", "spare", "faulty", "Journal".
    pub fn role_text(&self) -> String {
        match self.sb.own_role() {
            Role::Active(r) if self.sb.feature_map & feature::REPLACEMENT != 0 => format!("Replacement device {r}"),
            Role::Active(r) => format!("Active device {r}"),
            Role::Spare => "spare".into(),
            Role::Faulty => "faulty".into(),
            Role::Journal => "Journal".into(),
        }
    }

    /// mdadm's "Array State": per slot 'A' (one holder), '.' (none), 'R' (two: replacing).
    pub fn array_state(&self) -> String {
        (0..self.sb.raid_disks)
            .map(|slot| {
                let n = self
                    .sb
                    .dev_roles
                    .iter()
                    .filter(|&&r| Role::from_raw(r) == Role::Active(slot as u16))
                    .count();
                match n {
                    0 => '.',
                    1 => 'A',
                    _ => 'R',
                }
            })
            .collect()
    }

    /// "Array Size" in KiB.
    pub fn array_size_kib(&self) -> u64 {
        let sb = &self.sb;
        let n = sb.raid_disks as u64;
        let sectors = match sb.level {
            1 => sb.size_sectors,
            4 | 5 => sb.size_sectors * n.saturating_sub(1),
            6 => sb.size_sectors * n.saturating_sub(2),
            10 => {
                let copies = ((sb.layout & 0xFF) * ((sb.layout >> 8) & 0xFF)).max(1) as u64;
                sb.size_sectors * n / copies
            }
            _ => sb.data_size_sectors * n,
        };
        sectors / 2
    }

    /// "Layout" as mdadm prints it for raid10 (near=2 …) and raid0 (original/alternate).
    pub fn layout_text(&self) -> Option<String> {
        let sb = &self.sb;
        match sb.level {
            10 => {
                let (near, far) = (sb.layout & 0xFF, (sb.layout >> 8) & 0xFF);
                Some(if sb.layout & 0x1_0000 != 0 {
                    format!("offset={far}")
                } else if far > 1 && near == 1 {
                    format!("far={far}")
                } else if far > 1 {
                    format!("near={near}, far={far}")
                } else {
                    format!("near={near}")
                })
            }
            0 if sb.feature_map & feature::RAID0_LAYOUT != 0 => Some(match sb.layout {
                1 => "original".into(),
                2 => "alternate".into(),
                _ => "-unknown-".into(),
            }),
            _ => None,
        }
    }
}

/// Reads and decodes the v1.2 superblock of bdev `name`. Opens it read-only (no claim), so it
/// works on members of running arrays too. Called on a reactor; `done` runs there.
pub fn examine(reg: &Arc<BdevRegistry>, name: &str, done: impl FnOnce(Result<Examine, MdError>) + 'static) {
    let desc = match reg.open(name, false, |_| {}) {
        Ok(d) => d,
        Err(e) => return done(Err(MdError::Bdev(e.to_string()))),
    };
    let info = desc.info().clone();
    let device_sectors = info.size_bytes() / 512;
    if info.size_bytes() < (V1_2_SUPER_OFFSET_SECTORS * 512) + BLOCK_BYTES as u64 {
        return done(Err(MdError::bad(
            "device",
            format!("'{name}' is too small to hold an md superblock"),
        )));
    }
    let channel = Rc::new(desc.channel());
    let keep = channel.clone();
    // The channel (and descriptor) must outlive the read: dropping the last channel of a
    // bdev tears it down and aborts what is in flight.
    meta_io::read(&channel, V1_2_SUPER_OFFSET_SECTORS * 512, BLOCK_BYTES, move |r| {
        drop(keep);
        drop(desc);
        let result = match r {
            Err(status) => Err(MdError::Io(format!(
                "reading the superblock of '{}' failed: {}",
                info.name,
                status.name()
            ))),
            Ok(bytes) => Superblock::decode(&bytes, V1_2_SUPER_OFFSET_SECTORS)
                .and_then(|sb| sb.check_fits(device_sectors).map(|()| sb))
                .map(|sb| Examine { sb, device_sectors }),
        };
        done(result)
    });
}
