//! What every personality's address math shares: a member's index, a place on a member, and
//! the checks every chunked level makes. The math of each level lives in its own file
//! ([`crate::linear`], [`crate::raid0`], [`crate::raid10`]; raid1 needs none): pure functions
//! over 512-byte sectors, property-tested against reference models and used on the data path
//! without allocation.

use crate::MdError;

/// A member's position in the array (its role, the superblock's raid disk number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberIdx(pub u16);

impl MemberIdx {
    /// The index as a `usize`, for the per-role tables.
    #[inline]
    pub fn idx(self) -> usize {
        self.0 as usize
    }
}

/// Where one array sector lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub member: MemberIdx,
    /// Sector on the member, relative to its data_offset.
    pub sector: u64,
}

impl Place {
    /// Member 0, sector 0: the filler of a place table.
    pub const ZERO: Place = Place {
        member: MemberIdx(0),
        sector: 0,
    };
}

/// Most copies a chunk can have here (raid10 nc × fc ≤ 16 covers every practical layout; raid1
/// reads and writes the first 16 members).
pub const MAX_COPIES: usize = 16;

/// Refuses a chunk that is not a power of two of at least 4 KiB (every chunked level's rule).
pub(crate) fn check_chunk(chunk_sectors: u64) -> Result<(), MdError> {
    if chunk_sectors < 8 || !chunk_sectors.is_power_of_two() {
        return Err(MdError::bad(
            "chunk",
            format!("{chunk_sectors} sectors is not a power of two ≥ 8"),
        ));
    }
    Ok(())
}
