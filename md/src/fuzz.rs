//! The md superblock fuzz target's body: [`fuzz_one`] runs arbitrary bytes through everything md
//! does with a member's metadata before an array runs — the v1.x superblock decoder, what
//! `md_examine` prints from it, the size checks against a member, assembly's decision and the
//! level's start (the same pure functions `md_assemble` calls, over copies of the superblock as
//! every member), and the write-intent bitmap header and bit area — and panics if an invariant
//! breaks. The `md_superblock` cargo-fuzz target (`fuzz/fuzz_targets/md_superblock.rs`) and
//! `tests/fuzz_corpus.rs` (the committed corpus, then random and mutated inputs) call it.
//! Control path; pure (no bdevs, no reactors).
//!
//! Input: byte 0 holds flags, then up to 4 KiB of superblock block (padded with 0xFF, as
//! mdadm fills it), then the bitmap (header and bit area). Flag bit 0 recomputes the checksum
//! before decoding, so that mutated fields reach the checks behind it — a hostile superblock
//! has a valid checksum.
//!
//! Invariants checked for a superblock that decodes:
//! * every field that sizes a loop, string or allocation is inside its bound (`raid_disks`,
//!   the role table, the name, sizes and offsets, `events`);
//! * it encodes to bytes that decode to the same superblock;
//! * examine's texts are bounded (`array_state` has one character per raid disk) and its
//!   array size does not overflow;
//! * assembly over copies of it either refuses with an error or yields a layout whose size
//!   fits the members it was given, and whose health with every member live is not failed;
//! * a bitmap header that decodes has a byte count that does not overflow, and its bits load
//!   into the in-memory bitmap when the bit area is there.

use keel_bdev::{BdevInfo, IoCaps};

use crate::bitmap::{BitmapHeader, HEADER_BYTES};
use crate::examine::Examine;
use crate::superblock::{checksum, Superblock, BLOCK_BYTES, MAX_DEV_LIMIT, MAX_EVENTS, MAX_FIELD_SECTORS};

/// Flag bit of byte 0: recompute the superblock checksum before decoding.
pub const FIX_CHECKSUM: u8 = 1;
/// Byte offset of `sb_csum` in the superblock.
const SB_CSUM: usize = 216;
/// Most members assembly is tried over (copies of the one superblock).
const MAX_FUZZ_MEMBERS: u32 = 8;
/// Largest bitmap (bits) loaded into memory per input.
const MAX_FUZZ_BITS: u64 = 1 << 16;

/// Runs one input (module docs). Panics when an invariant breaks; returns otherwise.
pub fn fuzz_one(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let n = rest.len().min(BLOCK_BYTES);
    let mut block = [0xFFu8; BLOCK_BYTES];
    block[..n].copy_from_slice(&rest[..n]);
    let bitmap = &rest[n..];
    if flags & FIX_CHECKSUM != 0 {
        let c = checksum(&block);
        block[SB_CSUM..SB_CSUM + 4].copy_from_slice(&c.to_le_bytes());
    }
    // A short buffer is refused, not read past.
    assert!(Superblock::decode(&block[..n.min(BLOCK_BYTES - 1)], 8).is_err());
    match Superblock::decode(&block, 8) {
        Ok(sb) => superblock(sb, bitmap),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // The bitmap decoder on its own, against its own uuid.
    if bitmap.len() >= HEADER_BYTES {
        let uuid: [u8; 16] = bitmap[8..24].try_into().expect("16 bytes");
        if let Ok(h) = BitmapHeader::decode(bitmap, &uuid) {
            bitmap_header(&h, &bitmap[HEADER_BYTES..]);
        }
    }
}

fn superblock(sb: Superblock, bitmap: &[u8]) {
    assert!(
        (1..=MAX_DEV_LIMIT).contains(&sb.raid_disks),
        "raid_disks {}",
        sb.raid_disks
    );
    assert!(sb.dev_roles.len() <= MAX_DEV_LIMIT as usize);
    assert!(sb.set_name.len() <= 32);
    assert!(sb.events <= MAX_EVENTS);
    for v in [
        sb.size_sectors,
        sb.data_offset_sectors,
        sb.data_size_sectors,
        sb.super_offset_sectors,
    ] {
        assert!(v <= MAX_FIELD_SECTORS);
    }
    assert_eq!(
        Superblock::decode(&sb.encode(), 8).as_ref().ok(),
        Some(&sb),
        "round trip"
    );

    let device_sectors = sb.data_offset_sectors + sb.data_size_sectors;
    assert!(sb.check_fits(device_sectors).is_ok());
    let _ = sb.check_fits(device_sectors - 1);
    let _ = sb.check_fits(0);
    let ex = Examine {
        sb: sb.clone(),
        device_sectors,
    };
    assert_eq!(ex.array_state().chars().count(), sb.raid_disks as usize);
    let _ = (ex.role_text(), ex.array_size_kib(), ex.layout_text());
    let _ = crate::examine::level_name(sb.level);

    // Assembly over copies of this superblock, one per member (as many as it names, bounded).
    let members = sb.raid_disks.min(MAX_FUZZ_MEMBERS);
    let probes: Vec<crate::assemble::Probe> = (0..members)
        .map(|dev| {
            let mut s = sb.clone();
            s.dev_number = dev;
            crate::assemble::Probe {
                name: format!("m{dev}"),
                info: BdevInfo {
                    name: format!("m{dev}"),
                    uuid: uuid::Uuid::nil(),
                    product_name: "fuzz",
                    module: "fuzz",
                    block_size: 512,
                    num_blocks: device_sectors,
                    caps: IoCaps::ALL,
                    optimal_io_boundary_blocks: 0,
                },
                sb: s,
            }
        })
        .collect();
    if let Ok((layout, live)) = crate::assemble::dry_run(&probes) {
        let g = layout.geometry();
        assert!(g.size_sectors > 0);
        assert!(
            g.size_sectors <= device_sectors.saturating_mul(u64::from(sb.raid_disks)),
            "array of {} sectors over {} members of {device_sectors}",
            g.size_sectors,
            sb.raid_disks
        );
        let _ = layout.health(&|m| live[m.idx()]);
        if let Some(s) = layout.sync() {
            let _ = s.sync_sectors();
        }
    }
    if bitmap.len() >= HEADER_BYTES {
        if let Ok(h) = BitmapHeader::decode(bitmap, &sb.set_uuid) {
            bitmap_header(&h, &bitmap[HEADER_BYTES..]);
        }
    }
}

fn bitmap_header(h: &BitmapHeader, area: &[u8]) {
    assert!(h.sync_size_sectors <= MAX_FIELD_SECTORS);
    assert!(h.sync_size_sectors.checked_mul(512).is_some());
    let bits = h.bits();
    assert!(bits.checked_mul(u64::from(h.chunk_bytes)).is_some());
    let _ = h.space_bytes();
    assert_eq!(BitmapHeader::decode(&h.encode(), &h.uuid).as_ref().ok(), Some(h));
    if bits <= MAX_FUZZ_BITS && area.len() as u64 >= bits.div_ceil(8) {
        if let Ok(i) = crate::intent::Intent::with_resync_offset(h.clone(), area, 0) {
            assert_eq!(i.bits(), bits);
        }
    }
}
