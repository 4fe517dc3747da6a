//! raid4 (`shared/specs/md-personalities.md` §5): a dedicated parity member (the last), P = XOR of the data chunks of a stripe. Survives
//! 1 failed member; has resync, recovery onto spares, check/repair and the write-intent bitmap (by
//! default). Planning and starting are [`crate::parity_level`]'s, the data path and sync step
//! [`crate::stripe`]'s.

use crate::parity_level::ParityLevel;
use crate::personality::{Caps, MAX_MEMBERS};

/// The raid4 personality (listed in [`crate::personality`]'s registry).
pub(crate) static RAID4: ParityLevel = ParityLevel {
    level: 4,
    name: "raid4",
    aliases: &["4"],
    caps: &CAPS,
};

static CAPS: Caps = Caps {
    min_members: 3,
    max_members: MAX_MEMBERS,
    failures: 1,
    resync: true,
    spares: true,
    bitmap: true,
    default_bitmap: true,
    chunked: true,
};
