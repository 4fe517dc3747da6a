//! `md_examine`: what `mdadm --examine` shows for one member, read through the bdev layer. The
//! level-specific lines (array size, layout) come from the member's personality.

use std::rc::Rc;
use std::sync::Arc;

use keel_bdev::BdevRegistry;

use crate::superblock::{feature, Role, Superblock, BLOCK_BYTES, V1_2_SUPER_OFFSET_SECTORS};
use crate::{meta_io, MdError};

pub use crate::personality::level_name;

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
    /// One pass over the role table; `raid_disks` is bounded by the decoder
    /// ([`crate::superblock::MAX_DEV_LIMIT`]), so the text is at most 1920 characters.
    pub fn array_state(&self) -> String {
        let slots = self.sb.raid_disks.min(crate::superblock::MAX_DEV_LIMIT) as usize;
        let mut holders = vec![0u8; slots];
        for &r in &self.sb.dev_roles {
            if let Role::Active(slot) = Role::from_raw(r) {
                if let Some(n) = holders.get_mut(slot as usize) {
                    *n = n.saturating_add(1);
                }
            }
        }
        holders
            .iter()
            .map(|n| match n {
                0 => '.',
                1 => 'A',
                _ => 'R',
            })
            .collect()
    }

    /// "Array Size" in KiB (as the member's level computes it).
    pub fn array_size_kib(&self) -> u64 {
        crate::personality::examine_array_sectors(&self.sb) / 2
    }

    /// "Layout" as mdadm prints it for raid10 (near=2 …) and raid0 (original/alternate).
    pub fn layout_text(&self) -> Option<String> {
        crate::personality::examine_layout_text(&self.sb)
    }
}

/// Reads and decodes the v1.2 superblock of bdev `name`. Opens it read-only (no claim), so it
/// works on members of running arrays too. Called on a reactor; `done` runs there.
pub fn examine(reg: &Arc<BdevRegistry>, name: &str, done: impl FnOnce(Result<Examine, MdError>) + 'static) {
    let desc = match reg.open(name, false, |_| {}) {
        Ok(d) => d,
        Err(e) => return done(Err(MdError::Bdev(e))),
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
