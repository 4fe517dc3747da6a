//! The md write-intent bitmap's on-disk format (`shared/specs/md-bitmap.md`): a 256-byte
//! little-endian header followed by one bit per chunk of sync space, LSB-first. This module is
//! the format and the bit↔chunk math; the in-memory counters and the clearing daemon live with
//! the array core.

use crate::MdError;

/// `"bitm"` read as a little-endian u32.
pub const MAGIC: u32 = 0x6D74_6962;
/// Header bytes; the bit area follows directly.
pub const HEADER_BYTES: usize = 256;
/// The bit order Keel writes (4 = little-endian bits; 3 and 5 are accepted on read).
pub const VERSION: u32 = 4;
/// `state` bit: the bitmap is out of date, everything needs a resync.
pub const STATE_STALE: u32 = 0x2;
/// The kernel's limit on `write_behind`.
pub const MAX_WRITE_BEHIND: u32 = 16383;

/// A decoded bitmap header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapHeader {
    pub version: u32,
    pub uuid: [u8; 16],
    pub events: u64,
    pub events_cleared: u64,
    /// Sectors of sync space covered.
    pub sync_size_sectors: u64,
    pub state: u32,
    /// Bytes of sync space per bit.
    pub chunk_bytes: u32,
    pub daemon_sleep_s: u32,
    pub write_behind: u32,
    pub sectors_reserved: u32,
    pub nodes: u32,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl BitmapHeader {
    /// Number of bits (chunks): `ceil(sync_size * 512 / chunk)`. Saturates (a decoded header
    /// never needs it: [`BitmapHeader::decode`] bounds `sync_size`).
    pub fn bits(&self) -> u64 {
        (self.sync_size_sectors.saturating_mul(512)).div_ceil(self.chunk_bytes.max(1) as u64)
    }

    /// Sectors of sync space per bit.
    pub fn chunk_sectors(&self) -> u64 {
        self.chunk_bytes as u64 / 512
    }

    /// The bit covering sync-space sector `sector`.
    pub fn bit_of(&self, sector: u64) -> u64 {
        sector / self.chunk_sectors()
    }

    /// Header + bit area bytes, rounded up to 4 KiB (the space mdadm reserves).
    pub fn space_bytes(&self) -> u64 {
        (HEADER_BYTES as u64 + self.bits().div_ceil(8)).next_multiple_of(4096)
    }

    /// Encodes the 256-byte header.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..24].copy_from_slice(&self.uuid);
        b[24..32].copy_from_slice(&self.events.to_le_bytes());
        b[32..40].copy_from_slice(&self.events_cleared.to_le_bytes());
        b[40..48].copy_from_slice(&self.sync_size_sectors.to_le_bytes());
        b[48..52].copy_from_slice(&self.state.to_le_bytes());
        b[52..56].copy_from_slice(&self.chunk_bytes.to_le_bytes());
        b[56..60].copy_from_slice(&self.daemon_sleep_s.to_le_bytes());
        b[60..64].copy_from_slice(&self.write_behind.to_le_bytes());
        b[64..68].copy_from_slice(&self.sectors_reserved.to_le_bytes());
        b[68..72].copy_from_slice(&self.nodes.to_le_bytes());
        b
    }

    /// Decodes and validates a header against the array's UUID (the kernel's load checks).
    pub fn decode(buf: &[u8], array_uuid: &[u8; 16]) -> Result<BitmapHeader, MdError> {
        if buf.len() < HEADER_BYTES {
            return Err(MdError::ShortBuffer {
                need: HEADER_BYTES,
                got: buf.len(),
            });
        }
        let magic = u32_at(buf, 0);
        if magic != MAGIC {
            return Err(MdError::bad("bitmap magic", format!("{magic:#010x}")));
        }
        let h = BitmapHeader {
            version: u32_at(buf, 4),
            uuid: buf[8..24].try_into().expect("16"),
            events: u64_at(buf, 24),
            events_cleared: u64_at(buf, 32),
            sync_size_sectors: u64_at(buf, 40),
            state: u32_at(buf, 48),
            chunk_bytes: u32_at(buf, 52),
            daemon_sleep_s: u32_at(buf, 56),
            write_behind: u32_at(buf, 60),
            sectors_reserved: u32_at(buf, 64),
            nodes: u32_at(buf, 68),
        };
        if !(3..=5).contains(&h.version) {
            return Err(MdError::bad(
                "bitmap version",
                format!("{} (3..5 supported)", h.version),
            ));
        }
        if h.chunk_bytes < 512 || !h.chunk_bytes.is_power_of_two() {
            return Err(MdError::bad(
                "bitmap chunksize",
                format!("{} is not a power of two ≥ 512", h.chunk_bytes),
            ));
        }
        if h.sync_size_sectors > crate::superblock::MAX_FIELD_SECTORS {
            return Err(MdError::bad(
                "bitmap sync_size",
                format!(
                    "{} sectors exceeds {}",
                    h.sync_size_sectors,
                    crate::superblock::MAX_FIELD_SECTORS
                ),
            ));
        }
        if h.daemon_sleep_s == 0 {
            return Err(MdError::bad("bitmap daemon_sleep", "must be at least 1 s"));
        }
        if h.write_behind > MAX_WRITE_BEHIND {
            return Err(MdError::bad(
                "bitmap write_behind",
                format!("{} > {MAX_WRITE_BEHIND}", h.write_behind),
            ));
        }
        if &h.uuid != array_uuid {
            return Err(MdError::bad("bitmap uuid", "does not match the array"));
        }
        Ok(h)
    }
}

/// Whether bit `i` is set in a bit area (LSB-first within each byte).
pub fn test_bit(area: &[u8], i: u64) -> bool {
    area[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// Sets or clears bit `i`.
pub fn set_bit(area: &mut [u8], i: u64, on: bool) {
    let byte = &mut area[(i / 8) as usize];
    if on {
        *byte |= 1 << (i % 8)
    } else {
        *byte &= !(1 << (i % 8))
    }
}

/// Set bits among the first `bits`.
pub fn dirty_count(area: &[u8], bits: u64) -> u64 {
    (0..bits).filter(|&i| test_bit(area, i)).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UUID: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
    ];

    fn example() -> BitmapHeader {
        BitmapHeader {
            version: 4,
            uuid: UUID,
            events: 18,
            events_cleared: 18,
            sync_size_sectors: 202_752,
            state: 0,
            chunk_bytes: 64 << 20,
            daemon_sleep_s: 5,
            write_behind: 0,
            sectors_reserved: 0,
            nodes: 0,
        }
    }

    #[test]
    fn worked_example() {
        let b = example().encode();
        assert_eq!(&b[0..8], &[0x62, 0x69, 0x74, 0x6d, 0x04, 0, 0, 0]);
        assert_eq!(&b[0x18..0x20], &[0x12, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[0x28..0x30], &[0x00, 0x18, 0x03, 0, 0, 0, 0, 0]);
        assert_eq!(&b[0x30..0x3c], &[0, 0, 0, 0, 0, 0, 0, 0x04, 0x05, 0, 0, 0]);
        let h = BitmapHeader::decode(&b, &UUID).unwrap();
        assert_eq!(h, example());
        assert_eq!(h.bits(), 2);
        let area = [0x02u8];
        assert!(test_bit(&area, 1) && !test_bit(&area, 0));
        assert_eq!(dirty_count(&area, h.bits()), 1);
        // The 255 MiB raid1 of the spec: 4 bits at 64 MiB chunks.
        let mut h2 = example();
        h2.sync_size_sectors = 522_240;
        assert_eq!(h2.bits(), 4);
        assert_eq!(h2.space_bytes(), 4096);
    }

    #[test]
    fn validation() {
        let good = example().encode();
        let mut other = UUID;
        other[0] ^= 1;
        assert!(BitmapHeader::decode(&good, &other).is_err());
        for (o, v) in [(0usize, 0u8), (4, 6), (52, 0), (56, 0)] {
            let mut b = good;
            b[o..o + 4].copy_from_slice(&(v as u32).to_le_bytes());
            assert!(BitmapHeader::decode(&b, &UUID).is_err(), "offset {o}");
        }
        let mut b = good;
        b[52..56].copy_from_slice(&3000u32.to_le_bytes());
        assert!(BitmapHeader::decode(&b, &UUID).is_err(), "chunk not a power of two");
        // A sync_size whose byte count overflows u64 is refused, not wrapped into a small bitmap.
        let mut b = good;
        b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            BitmapHeader::decode(&b, &UUID),
            Err(MdError::BadSuperblock {
                field: "bitmap sync_size",
                ..
            })
        ));
        let h = BitmapHeader {
            sync_size_sectors: u64::MAX,
            chunk_bytes: 512,
            ..example()
        };
        assert_eq!(h.bits(), u64::MAX.div_ceil(512), "saturates");
    }

    proptest! {
        #[test]
        fn bits_cover_the_sync_space(sync in 1u64..1 << 40, shift in 9u32..31, sector_frac in 0.0f64..1.0) {
            let mut h = example();
            h.sync_size_sectors = sync;
            h.chunk_bytes = 1 << shift;
            let sector = ((sync - 1) as f64 * sector_frac) as u64;
            prop_assert!(h.bit_of(sector) < h.bits());
            prop_assert!(h.bits() * h.chunk_sectors() >= sync);
            prop_assert!((h.bits() - 1) * h.chunk_sectors() < sync);
            let back = BitmapHeader::decode(&h.encode(), &UUID).unwrap();
            prop_assert_eq!(back, h);
        }

        #[test]
        fn set_and_clear_bits(ops in prop::collection::vec((0u64..200, any::<bool>()), 0..100)) {
            let mut area = [0u8; 25];
            let mut model = [false; 200];
            for (i, on) in ops {
                set_bit(&mut area, i, on);
                model[i as usize] = on;
            }
            for i in 0..200 {
                prop_assert_eq!(test_bit(&area, i), model[i as usize]);
            }
            prop_assert_eq!(dirty_count(&area, 200), model.iter().filter(|&&b| b).count() as u64);
        }
    }
}
