//! The Linux md v1.x superblock (`shared/specs/md-superblock-1x.md`).
//!
//! 256 bytes of fixed fields, then a `u16` role per device slot (`max_dev` of them), all
//! little-endian. Version 1.2 puts it 4 KiB into the member (sector 8); readers read 4 KiB and
//! writers fill the rest of that 4 KiB with 0xFF as mdadm does. The checksum covers
//! `256 + 2 * max_dev` bytes. Encoding and decoding are explicit field by field: no transmutes,
//! and the offsets are asserted against the spec's table in the tests.

use crate::MdError;

/// `0xA92B4EFC`.
pub const MAGIC: u32 = 0xA92B_4EFC;
/// Bytes of the fixed part.
pub const FIXED_BYTES: usize = 256;
/// What readers read and writers write: one 4 KiB block.
pub const BLOCK_BYTES: usize = 4096;
/// Where a v1.2 superblock lives, in 512-byte sectors from the start of the member.
pub const V1_2_SUPER_OFFSET_SECTORS: u64 = 8;
/// The kernel's limit on role-table entries: (4096 - 256) / 2.
pub const MAX_DEV_LIMIT: u32 = 1920;
/// `resync_offset` of a clean array.
pub const MAX_SECTOR: u64 = u64::MAX;
/// Most sectors any size or offset field may say (2^52 sectors, 2 EiB): far above any member,
/// and low enough that a size times [`MAX_DEV_LIMIT`] members, or times 512 bytes, stays in a
/// `u64`. Decoding refuses more, so no arithmetic on decoded fields can overflow.
pub const MAX_FIELD_SECTORS: u64 = 1 << 52;
/// Highest `events` a superblock may carry. Each superblock update adds one; beyond this the
/// counter could not advance for another 2^32 updates (27 years at one every 200 ms) and would
/// have to wrap, which would make every member look older than a stale one. Decoding refuses
/// more, and the array core never writes more.
pub const MAX_EVENTS: u64 = u64::MAX - (1 << 32);

/// feature_map bits (spec §3).
pub mod feature {
    pub const BITMAP_OFFSET: u32 = 0x0001;
    pub const RECOVERY_OFFSET: u32 = 0x0002;
    pub const RESHAPE_ACTIVE: u32 = 0x0004;
    pub const BAD_BLOCKS: u32 = 0x0008;
    pub const REPLACEMENT: u32 = 0x0010;
    pub const RESHAPE_BACKWARDS: u32 = 0x0020;
    pub const NEW_OFFSET: u32 = 0x0040;
    pub const RECOVERY_BITMAP: u32 = 0x0080;
    pub const CLUSTERED: u32 = 0x0100;
    pub const JOURNAL: u32 = 0x0200;
    pub const PPL: u32 = 0x0400;
    pub const MULTIPLE_PPLS: u32 = 0x0800;
    pub const RAID0_LAYOUT: u32 = 0x1000;
    /// Every bit the kernel knows.
    pub const ALL: u32 = 0x1FFF;
}

/// Role-table values (spec §4).
pub const ROLE_SPARE: u16 = 0xFFFF;
pub const ROLE_FAULTY: u16 = 0xFFFE;
pub const ROLE_JOURNAL: u16 = 0xFFFD;

/// What one role-table entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Fills this slot.
    Active(u16),
    Spare,
    Faulty,
    Journal,
}

impl Role {
    /// Interprets a raw entry. Values ≥ 0xFF00 other than the named ones mean "no role".
    pub fn from_raw(v: u16) -> Role {
        match v {
            ROLE_JOURNAL => Role::Journal,
            ROLE_FAULTY => Role::Faulty,
            v if v >= 0xFF00 => Role::Spare,
            v => Role::Active(v),
        }
    }

    /// The raw entry.
    pub fn to_raw(self) -> u16 {
        match self {
            Role::Active(r) => r,
            Role::Spare => ROLE_SPARE,
            Role::Faulty => ROLE_FAULTY,
            Role::Journal => ROLE_JOURNAL,
        }
    }
}

/// A decoded v1.x superblock. Field names and units follow the spec's table; sectors are 512
/// bytes whatever the device's block size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Superblock {
    pub feature_map: u32,
    pub set_uuid: [u8; 16],
    /// Up to 32 bytes, NUL padding stripped.
    pub set_name: Vec<u8>,
    pub ctime: u64,
    pub level: i32,
    pub layout: u32,
    pub size_sectors: u64,
    pub chunk_sectors: u32,
    pub raid_disks: u32,
    /// `bitmap_offset` (or the PPL union), signed sectors from the superblock.
    pub bitmap_offset_sectors: i32,
    pub new_level: u32,
    pub reshape_position: u64,
    pub delta_disks: i32,
    pub new_layout: u32,
    pub new_chunk: u32,
    pub new_offset: i32,
    pub data_offset_sectors: u64,
    pub data_size_sectors: u64,
    pub super_offset_sectors: u64,
    pub recovery_offset_sectors: u64,
    pub dev_number: u32,
    pub cnt_corrected_read: u32,
    pub device_uuid: [u8; 16],
    pub devflags: u8,
    pub bblog_shift: u8,
    pub bblog_size: u16,
    pub bblog_offset: i32,
    pub utime: u64,
    pub events: u64,
    pub resync_offset: u64,
    /// Raw role table, `max_dev` entries.
    pub dev_roles: Vec<u16>,
}

/// Field offsets, asserted by the tests against the spec's table.
mod off {
    pub const MAGIC: usize = 0;
    pub const MAJOR: usize = 4;
    pub const FEATURE_MAP: usize = 8;
    pub const PAD0: usize = 12;
    pub const SET_UUID: usize = 16;
    pub const SET_NAME: usize = 32;
    pub const CTIME: usize = 64;
    pub const LEVEL: usize = 72;
    pub const LAYOUT: usize = 76;
    pub const SIZE: usize = 80;
    pub const CHUNK: usize = 88;
    pub const RAID_DISKS: usize = 92;
    pub const BITMAP_OFFSET: usize = 96;
    pub const NEW_LEVEL: usize = 100;
    pub const RESHAPE_POSITION: usize = 104;
    pub const DELTA_DISKS: usize = 112;
    pub const NEW_LAYOUT: usize = 116;
    pub const NEW_CHUNK: usize = 120;
    pub const NEW_OFFSET: usize = 124;
    pub const DATA_OFFSET: usize = 128;
    pub const DATA_SIZE: usize = 136;
    pub const SUPER_OFFSET: usize = 144;
    pub const RECOVERY_OFFSET: usize = 152;
    pub const DEV_NUMBER: usize = 160;
    pub const CNT_CORRECTED: usize = 164;
    pub const DEVICE_UUID: usize = 168;
    pub const DEVFLAGS: usize = 184;
    pub const BBLOG_SHIFT: usize = 185;
    pub const BBLOG_SIZE: usize = 186;
    pub const BBLOG_OFFSET: usize = 188;
    pub const UTIME: usize = 192;
    pub const EVENTS: usize = 200;
    pub const RESYNC_OFFSET: usize = 208;
    pub const SB_CSUM: usize = 216;
    pub const MAX_DEV: usize = 220;
    pub const PAD3: usize = 224;
    pub const DEV_ROLES: usize = 256;
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn i32_at(b: &[u8], o: usize) -> i32 {
    u32_at(b, o) as i32
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// The checksum of a superblock buffer (spec §5): LE u32 words over `256 + 2*max_dev` bytes
/// with `sb_csum` taken as zero, plus a trailing u16 when the length is 2 mod 4, folded once.
/// `max_dev` is read from the buffer and capped so a corrupt value cannot index out of it.
pub fn checksum(buf: &[u8]) -> u32 {
    let max_dev = u32_at(buf, off::MAX_DEV).min(MAX_DEV_LIMIT) as usize;
    let len = (FIXED_BYTES + 2 * max_dev).min(buf.len());
    let mut sum: u64 = 0;
    for i in 0..len / 4 {
        let o = i * 4;
        if o != off::SB_CSUM {
            sum += u32_at(buf, o) as u64;
        }
    }
    if len % 4 == 2 {
        sum += u16_at(buf, len - 2) as u64;
    }
    ((sum & 0xFFFF_FFFF) + (sum >> 32)) as u32
}

impl Superblock {
    /// Bytes covered by the checksum and written as the superblock proper.
    pub fn len_bytes(&self) -> usize {
        FIXED_BYTES + 2 * self.dev_roles.len()
    }

    /// The role of this device (its own `dev_number` entry; past the table = spare).
    pub fn own_role(&self) -> Role {
        self.dev_roles
            .get(self.dev_number as usize)
            .map(|&r| Role::from_raw(r))
            .unwrap_or(Role::Spare)
    }

    /// Whether the array was clean when this was written.
    pub fn is_clean(&self) -> bool {
        self.resync_offset == MAX_SECTOR
    }

    /// Encodes into one 4 KiB block: fields, role table, checksum, 0xFF fill after the table.
    /// Panics only on a role table larger than [`MAX_DEV_LIMIT`] or a name over 32 bytes —
    /// programming errors, since decode and the builders never produce them.
    pub fn encode(&self) -> [u8; BLOCK_BYTES] {
        assert!(self.dev_roles.len() <= MAX_DEV_LIMIT as usize, "role table too large");
        assert!(self.set_name.len() <= 32, "set_name longer than 32 bytes");
        let mut b = [0xFFu8; BLOCK_BYTES];
        b[..FIXED_BYTES].fill(0);
        put32(&mut b, off::MAGIC, MAGIC);
        put32(&mut b, off::MAJOR, 1);
        put32(&mut b, off::FEATURE_MAP, self.feature_map);
        b[off::SET_UUID..off::SET_UUID + 16].copy_from_slice(&self.set_uuid);
        b[off::SET_NAME..off::SET_NAME + self.set_name.len()].copy_from_slice(&self.set_name);
        put64(&mut b, off::CTIME, self.ctime);
        put32(&mut b, off::LEVEL, self.level as u32);
        put32(&mut b, off::LAYOUT, self.layout);
        put64(&mut b, off::SIZE, self.size_sectors);
        put32(&mut b, off::CHUNK, self.chunk_sectors);
        put32(&mut b, off::RAID_DISKS, self.raid_disks);
        put32(&mut b, off::BITMAP_OFFSET, self.bitmap_offset_sectors as u32);
        put32(&mut b, off::NEW_LEVEL, self.new_level);
        put64(&mut b, off::RESHAPE_POSITION, self.reshape_position);
        put32(&mut b, off::DELTA_DISKS, self.delta_disks as u32);
        put32(&mut b, off::NEW_LAYOUT, self.new_layout);
        put32(&mut b, off::NEW_CHUNK, self.new_chunk);
        put32(&mut b, off::NEW_OFFSET, self.new_offset as u32);
        put64(&mut b, off::DATA_OFFSET, self.data_offset_sectors);
        put64(&mut b, off::DATA_SIZE, self.data_size_sectors);
        put64(&mut b, off::SUPER_OFFSET, self.super_offset_sectors);
        put64(&mut b, off::RECOVERY_OFFSET, self.recovery_offset_sectors);
        put32(&mut b, off::DEV_NUMBER, self.dev_number);
        put32(&mut b, off::CNT_CORRECTED, self.cnt_corrected_read);
        b[off::DEVICE_UUID..off::DEVICE_UUID + 16].copy_from_slice(&self.device_uuid);
        b[off::DEVFLAGS] = self.devflags;
        b[off::BBLOG_SHIFT] = self.bblog_shift;
        put16(&mut b, off::BBLOG_SIZE, self.bblog_size);
        put32(&mut b, off::BBLOG_OFFSET, self.bblog_offset as u32);
        put64(&mut b, off::UTIME, self.utime);
        put64(&mut b, off::EVENTS, self.events);
        put64(&mut b, off::RESYNC_OFFSET, self.resync_offset);
        put32(&mut b, off::MAX_DEV, self.dev_roles.len() as u32);
        for (i, r) in self.dev_roles.iter().enumerate() {
            put16(&mut b, off::DEV_ROLES + 2 * i, *r);
        }
        let csum = checksum(&b);
        put32(&mut b, off::SB_CSUM, csum);
        b
    }

    /// Decodes and validates a superblock read from sector `read_at_sectors` of a member
    /// (spec §6, except the checks that need the member's size: [`Superblock::check_fits`]).
    pub fn decode(buf: &[u8], read_at_sectors: u64) -> Result<Superblock, MdError> {
        if buf.len() < BLOCK_BYTES {
            return Err(MdError::ShortBuffer {
                need: BLOCK_BYTES,
                got: buf.len(),
            });
        }
        let magic = u32_at(buf, off::MAGIC);
        if magic != MAGIC {
            return Err(MdError::bad(
                "magic",
                format!("{magic:#010x}, not an md v1.x superblock"),
            ));
        }
        let major = u32_at(buf, off::MAJOR);
        if major != 1 {
            return Err(MdError::bad("major_version", format!("{major}, expected 1")));
        }
        let max_dev = u32_at(buf, off::MAX_DEV);
        if max_dev > MAX_DEV_LIMIT {
            return Err(MdError::bad("max_dev", format!("{max_dev} exceeds {MAX_DEV_LIMIT}")));
        }
        let stored = u32_at(buf, off::SB_CSUM);
        let computed = checksum(buf);
        if stored != computed {
            return Err(MdError::bad(
                "sb_csum",
                format!("{stored:08x}, expected {computed:08x}"),
            ));
        }
        let super_offset = u64_at(buf, off::SUPER_OFFSET);
        if super_offset != read_at_sectors {
            return Err(MdError::bad(
                "super_offset",
                format!("{super_offset} but read at sector {read_at_sectors}"),
            ));
        }
        let features = u32_at(buf, off::FEATURE_MAP);
        if features & !feature::ALL != 0 {
            return Err(MdError::bad(
                "feature_map",
                format!("unknown bits {:#x}", features & !feature::ALL),
            ));
        }
        if u32_at(buf, off::PAD0) != 0 {
            return Err(MdError::bad("pad0", "not zero"));
        }
        if buf[off::PAD3..off::PAD3 + 32].iter().any(|&b| b != 0) {
            return Err(MdError::bad("pad3", "not zero"));
        }
        let level = i32_at(buf, off::LEVEL);
        if features & feature::RAID0_LAYOUT != 0 && level != 0 {
            return Err(MdError::bad("feature_map", "RAID0_LAYOUT on a level other than 0"));
        }
        if features & feature::PPL != 0 && features & (feature::BITMAP_OFFSET | feature::JOURNAL) != 0 {
            return Err(MdError::bad("feature_map", "PPL together with a bitmap or journal"));
        }
        let data_size = u64_at(buf, off::DATA_SIZE);
        if data_size < 10 {
            return Err(MdError::bad("data_size", format!("{data_size} sectors, below 10")));
        }
        let bblog_size = u16_at(buf, off::BBLOG_SIZE);
        let bblog_offset = i32_at(buf, off::BBLOG_OFFSET);
        if features & feature::BAD_BLOCKS != 0 && (bblog_offset == 0 || bblog_size > 8) {
            return Err(MdError::bad(
                "bblog_size",
                "bad-block log flagged but absent or larger than 4 KiB",
            ));
        }
        // Every field that sizes a loop, an allocation or a product is bounded here, before
        // anything (examine's text, assembly, a personality) uses it.
        let raid_disks = u32_at(buf, off::RAID_DISKS);
        if raid_disks == 0 || raid_disks > MAX_DEV_LIMIT {
            return Err(MdError::bad(
                "raid_disks",
                format!("{raid_disks}, outside 1..={MAX_DEV_LIMIT}"),
            ));
        }
        for (field, o) in [
            ("size", off::SIZE),
            ("data_offset", off::DATA_OFFSET),
            ("data_size", off::DATA_SIZE),
            ("super_offset", off::SUPER_OFFSET),
        ] {
            let v = u64_at(buf, o);
            if v > MAX_FIELD_SECTORS {
                return Err(MdError::bad(field, format!("{v} sectors exceeds {MAX_FIELD_SECTORS}")));
            }
        }
        let events = u64_at(buf, off::EVENTS);
        if events > MAX_EVENTS {
            return Err(MdError::bad(
                "events",
                format!("{events} exceeds {MAX_EVENTS}: the counter could not advance without wrapping"),
            ));
        }
        let name_raw = &buf[off::SET_NAME..off::SET_NAME + 32];
        let name_len = name_raw.iter().position(|&b| b == 0).unwrap_or(32);
        let sb = Superblock {
            feature_map: features,
            set_uuid: buf[off::SET_UUID..off::SET_UUID + 16].try_into().expect("16"),
            set_name: name_raw[..name_len].to_vec(),
            ctime: u64_at(buf, off::CTIME),
            level,
            layout: u32_at(buf, off::LAYOUT),
            size_sectors: u64_at(buf, off::SIZE),
            chunk_sectors: u32_at(buf, off::CHUNK),
            raid_disks,
            bitmap_offset_sectors: i32_at(buf, off::BITMAP_OFFSET),
            new_level: u32_at(buf, off::NEW_LEVEL),
            reshape_position: u64_at(buf, off::RESHAPE_POSITION),
            delta_disks: i32_at(buf, off::DELTA_DISKS),
            new_layout: u32_at(buf, off::NEW_LAYOUT),
            new_chunk: u32_at(buf, off::NEW_CHUNK),
            new_offset: i32_at(buf, off::NEW_OFFSET),
            data_offset_sectors: u64_at(buf, off::DATA_OFFSET),
            data_size_sectors: data_size,
            super_offset_sectors: super_offset,
            recovery_offset_sectors: u64_at(buf, off::RECOVERY_OFFSET),
            dev_number: u32_at(buf, off::DEV_NUMBER),
            cnt_corrected_read: u32_at(buf, off::CNT_CORRECTED),
            device_uuid: buf[off::DEVICE_UUID..off::DEVICE_UUID + 16].try_into().expect("16"),
            devflags: buf[off::DEVFLAGS],
            bblog_shift: buf[off::BBLOG_SHIFT],
            bblog_size,
            bblog_offset,
            utime: u64_at(buf, off::UTIME),
            events,
            resync_offset: u64_at(buf, off::RESYNC_OFFSET),
            dev_roles: (0..max_dev as usize)
                .map(|i| u16_at(buf, off::DEV_ROLES + 2 * i))
                .collect(),
        };
        // Data must start after the superblock (1.1/1.2 layouts; 1.0 keeps data at 0).
        if sb.super_offset_sectors <= V1_2_SUPER_OFFSET_SECTORS {
            let sb_sectors = (sb.len_bytes() as u64).div_ceil(512);
            if sb.data_offset_sectors < sb.super_offset_sectors + sb_sectors {
                return Err(MdError::bad("data_offset", "data starts inside the superblock"));
            }
        }
        Ok(sb)
    }

    /// The size checks of spec §6 against a member of `device_sectors`.
    pub fn check_fits(&self, device_sectors: u64) -> Result<(), MdError> {
        let fits = if self.super_offset_sectors <= V1_2_SUPER_OFFSET_SECTORS {
            device_sectors
                .checked_sub(self.data_offset_sectors)
                .is_some_and(|avail| avail >= self.data_size_sectors)
        } else {
            self.super_offset_sectors >= self.data_size_sectors
        };
        if fits {
            Ok(())
        } else {
            Err(MdError::bad(
                "data_size",
                format!(
                    "{} sectors at offset {} do not fit a member of {device_sectors} sectors",
                    self.data_size_sectors, self.data_offset_sectors
                ),
            ))
        }
    }

    /// Array UUID as mdadm prints it: four groups of eight hex digits, on-disk byte order.
    pub fn uuid_text(uuid: &[u8; 16]) -> String {
        let hex: Vec<String> = uuid
            .chunks(4)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        hex.join(":")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The spec's worked example (§13): disk 0 of a 2-disk raid1.
    fn example(dev_number: u32) -> Superblock {
        let mut roles = vec![ROLE_SPARE; 128];
        roles[0] = 0;
        roles[1] = 1;
        let base = if dev_number == 0 { 0xa0u8 } else { 0xb0 };
        Superblock {
            feature_map: 0,
            set_uuid: [
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
            ],
            set_name: b"vec:r1".to_vec(),
            ctime: 1_700_000_000,
            level: 1,
            layout: 0,
            size_sectors: 202_752,
            chunk_sectors: 0,
            raid_disks: 2,
            bitmap_offset_sectors: 0,
            new_level: 0,
            reshape_position: 0,
            delta_disks: 0,
            new_layout: 0,
            new_chunk: 0,
            new_offset: 0,
            data_offset_sectors: 2048,
            data_size_sectors: 202_752,
            super_offset_sectors: 8,
            recovery_offset_sectors: 0,
            dev_number,
            cnt_corrected_read: 0,
            device_uuid: std::array::from_fn(|i| base + i as u8),
            devflags: 0,
            bblog_shift: 0,
            bblog_size: 8,
            bblog_offset: 16,
            utime: 1_700_000_000,
            events: 18,
            resync_offset: MAX_SECTOR,
            dev_roles: roles,
        }
    }

    #[test]
    fn worked_example_bytes_and_checksums() {
        let b = example(0).encode();
        let expect_head: [(usize, &[u8]); 8] = [
            (0x00, &[0xfc, 0x4e, 0x2b, 0xa9, 0x01, 0, 0, 0]),
            (0x20, b"vec:r1\0\0"),
            (0x40, &[0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0, 0x01, 0, 0, 0]),
            (0x50, &[0x00, 0x18, 0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0]),
            (0x80, &[0x00, 0x08, 0, 0, 0, 0, 0, 0, 0x00, 0x18, 0x03, 0, 0, 0, 0, 0]),
            (0xb8, &[0x00, 0x00, 0x08, 0x00, 0x10, 0x00, 0x00, 0x00]),
            (
                0xd0,
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x2e, 0x9f, 0xe8, 0x54, 0x80, 0, 0, 0,
                ],
            ),
            (0x100, &[0x00, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff]),
        ];
        for (o, bytes) in expect_head {
            assert_eq!(&b[o..o + bytes.len()], bytes, "at {o:#x}");
        }
        assert!(b[0x104..].iter().all(|&x| x == 0xff), "0xFF after the role table");
        assert!(b[0xe0..0x100].iter().all(|&x| x == 0), "pad3 zero");
        assert_eq!(checksum(&b), 0x54E8_9F2E);
        assert_eq!(checksum(&example(1).encode()), 0x9528_DF6F);
        let mut with_bitmap = example(0);
        with_bitmap.feature_map = feature::BITMAP_OFFSET;
        with_bitmap.bitmap_offset_sectors = 8;
        assert_eq!(checksum(&with_bitmap.encode()), 0x54E8_9F37);
        let back = Superblock::decode(&b, 8).unwrap();
        assert_eq!(back, example(0));
        assert_eq!(back.own_role(), Role::Active(0));
        assert!(back.is_clean());
        assert_eq!(
            Superblock::uuid_text(&back.set_uuid),
            "01234567:89abcdef:fedcba98:76543210"
        );
        back.check_fits(204_800).unwrap();
        assert!(back.check_fits(204_799).is_err());
    }

    #[test]
    fn rejections_name_the_field() {
        let good = example(0).encode();
        let cases: Vec<(usize, u8, &str)> = vec![(0x00, 0x00, "magic"), (0x0c, 0x01, "sb_csum")];
        for (o, v, field) in cases {
            let mut b = good;
            b[o] = v;
            match Superblock::decode(&b, 8) {
                Err(MdError::BadSuperblock { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
        // Re-checksummed corruptions reach the specific checks.
        let fix = |mut b: [u8; BLOCK_BYTES]| {
            let c = checksum(&b);
            put32(&mut b, off::SB_CSUM, c);
            b
        };
        let mut b = good;
        put32(&mut b, off::PAD0, 1);
        assert!(matches!(
            Superblock::decode(&fix(b), 8),
            Err(MdError::BadSuperblock { field: "pad0", .. })
        ));
        let mut b = good;
        b[off::PAD3 + 5] = 1;
        assert!(matches!(
            Superblock::decode(&fix(b), 8),
            Err(MdError::BadSuperblock { field: "pad3", .. })
        ));
        let mut b = good;
        put32(&mut b, off::FEATURE_MAP, 0x4000);
        assert!(matches!(
            Superblock::decode(&fix(b), 8),
            Err(MdError::BadSuperblock {
                field: "feature_map",
                ..
            })
        ));
        assert!(matches!(
            Superblock::decode(&good, 0),
            Err(MdError::BadSuperblock {
                field: "super_offset",
                ..
            })
        ));
        let mut b = good;
        put32(&mut b, off::MAX_DEV, 5000);
        assert!(matches!(
            Superblock::decode(&b, 8),
            Err(MdError::BadSuperblock { field: "max_dev", .. })
        ));
        assert!(matches!(
            Superblock::decode(&good[..100], 8),
            Err(MdError::ShortBuffer { .. })
        ));
    }

    /// Fields that size loops, strings, allocations or products are bounded at decode, with a
    /// valid checksum: raid_disks 0xFFFFFFFF once spun md_examine's array_state forever.
    #[test]
    fn sizing_fields_are_bounded_before_use() {
        let fix = |mut b: [u8; BLOCK_BYTES]| {
            let c = checksum(&b);
            put32(&mut b, off::SB_CSUM, c);
            b
        };
        let good = example(0).encode();
        let cases: [(usize, u64, bool, &str); 8] = [
            (off::RAID_DISKS, 0xFFFF_FFFF, false, "raid_disks"),
            (off::RAID_DISKS, 0, false, "raid_disks"),
            (off::RAID_DISKS, MAX_DEV_LIMIT as u64 + 1, false, "raid_disks"),
            (off::SIZE, u64::MAX, true, "size"),
            (off::DATA_SIZE, MAX_FIELD_SECTORS + 1, true, "data_size"),
            (off::DATA_OFFSET, u64::MAX - 7, true, "data_offset"),
            (off::EVENTS, u64::MAX, true, "events"),
            (off::EVENTS, MAX_EVENTS + 1, true, "events"),
        ];
        for (o, v, wide, field) in cases {
            let mut b = good;
            if wide {
                put64(&mut b, o, v);
            } else {
                put32(&mut b, o, v as u32);
            }
            match Superblock::decode(&fix(b), 8) {
                Err(MdError::BadSuperblock { field: f, reason }) => assert_eq!(f, field, "{reason}"),
                other => panic!("{field} = {v:#x}: {other:?}"),
            }
        }
        let mut b = good;
        put32(&mut b, off::RAID_DISKS, MAX_DEV_LIMIT);
        put64(&mut b, off::EVENTS, MAX_EVENTS);
        put64(&mut b, off::DATA_SIZE, MAX_FIELD_SECTORS);
        let sb = Superblock::decode(&fix(b), 8).unwrap();
        assert_eq!((sb.raid_disks, sb.events), (MAX_DEV_LIMIT, MAX_EVENTS));
    }

    #[test]
    fn every_covered_byte_is_protected() {
        let good = example(0).encode();
        for i in 0..512 {
            let mut b = good;
            b[i] ^= 0x5a;
            assert!(Superblock::decode(&b, 8).is_err(), "flip at {i} accepted");
        }
        // Bytes after the role table are not covered.
        let mut b = good;
        b[600] = 0;
        assert!(Superblock::decode(&b, 8).is_ok());
    }

    #[test]
    fn field_offsets_match_the_spec_table() {
        assert_eq!((off::DATA_OFFSET, off::UTIME, off::DEV_ROLES), (128, 192, 256));
        assert_eq!(off::SB_CSUM + 4, off::MAX_DEV);
        assert_eq!(off::PAD3 + 32, FIXED_BYTES);
    }

    proptest! {
        #[test]
        fn round_trips(events in 0..=MAX_EVENTS, level in prop::sample::select(vec![-1i32, 0, 1, 4, 5, 6, 10]), raid_disks in 1u32..64,
                       roles in prop::collection::vec(any::<u16>(), 1..200), name in "[a-z0-9:]{0,32}",
                       dev_number in 0u32..200, resync: u64) {
            let mut sb = example(0);
            sb.events = events;
            sb.level = level;
            sb.raid_disks = raid_disks;
            sb.dev_roles = roles;
            sb.set_name = name.into_bytes();
            sb.dev_number = dev_number;
            sb.resync_offset = resync;
            let b = sb.encode();
            let back = Superblock::decode(&b, 8).unwrap();
            prop_assert_eq!(back, sb);
        }
    }
}
