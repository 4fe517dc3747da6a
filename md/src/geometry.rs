//! The level-independent facts of a running array that its data path needs: size, where data
//! starts on the members, block sizes. Built by the personality's `start` from what the core
//! hands it ([`StartRequest`]), kept in an `Arc` by the array's layout
//! ([`crate::personality::Layout::geometry`]), read by every core and by the sync engine; it
//! never changes while the array runs (member *states* live in [`crate::shared`]).

use crate::layout::MemberIdx;

/// What every core needs to turn array sectors into member requests.
#[derive(Debug)]
pub(crate) struct Geometry {
    /// Array size in 512-byte sectors (a multiple of the array block).
    pub size_sectors: u64,
    /// Where data starts on every member, in 512-byte sectors.
    pub data_offset_sectors: u64,
    /// log2(array block size / 512).
    pub block_shift: u32,
    /// log2(member block size / 512), per role.
    pub member_shifts: Vec<u32>,
}

impl Geometry {
    /// Number of roles (raid disks).
    #[inline]
    pub(crate) fn roles(&self) -> usize {
        self.member_shifts.len()
    }

    /// log2(member block size / 512) of role `m`.
    #[inline]
    pub(crate) fn member_shift(&self, m: MemberIdx) -> u32 {
        self.member_shifts[m.idx()]
    }

    /// Whether every member has the array's block size (requests can be forwarded unchanged).
    pub(crate) fn uniform_blocks(&self) -> bool {
        self.member_shifts.iter().all(|&s| s == self.block_shift)
    }
}

/// What the core knows of an array's members when a personality starts it (at create and at
/// assembly): the superblock's `data_offset`, the block sizes, and each role's data size (its
/// superblock's `data_size`; `None` for a missing role). The personality reads the level's
/// fields from the superblock and builds its layout over these.
#[derive(Debug, Clone)]
pub(crate) struct StartRequest {
    pub data_offset_sectors: u64,
    /// log2(array block size / 512): the largest member block.
    pub block_shift: u32,
    /// Per role: log2(member block / 512) (a missing role counts with the array's block).
    pub member_shifts: Vec<u32>,
    /// Per role: the member's usable sectors after data_offset; `None`: no member.
    pub data_sectors: Vec<Option<u64>>,
}

impl StartRequest {
    /// The array block in sectors.
    pub(crate) fn block_sectors(&self) -> u64 {
        1 << self.block_shift
    }

    /// The geometry of an array of `size_sectors` over these members.
    pub(crate) fn geometry(&self, size_sectors: u64) -> Geometry {
        Geometry {
            size_sectors,
            data_offset_sectors: self.data_offset_sectors,
            block_shift: self.block_shift,
            member_shifts: self.member_shifts.clone(),
        }
    }
}
