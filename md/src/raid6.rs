//! raid6 (`shared/specs/md-personalities.md` §6): P and Q (GF(2^8)) in md's native layouts 0–5 and 16–20 (the DDF layouts are refused). Survives
//! 2 failed members; has resync, recovery onto spares, check/repair and the write-intent bitmap (by
//! default). Planning and starting are [`crate::parity_level`]'s, the data path and sync step
//! [`crate::stripe`]'s.

use crate::parity_level::ParityLevel;
use crate::personality::{Caps, MAX_MEMBERS};

/// The raid6 personality (listed in [`crate::personality`]'s registry).
pub(crate) static RAID6: ParityLevel = ParityLevel {
    level: 6,
    name: "raid6",
    aliases: &["6"],
    caps: &CAPS,
};

static CAPS: Caps = Caps {
    min_members: 4,
    max_members: MAX_MEMBERS,
    failures: 2,
    resync: true,
    spares: true,
    bitmap: true,
    default_bitmap: true,
    chunked: true,
};
