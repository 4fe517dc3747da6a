//! raid5 (`shared/specs/md-personalities.md` §5): rotating P (XOR) in mdadm's six layouts (default left-symmetric). Survives
//! 1 failed member; has resync, recovery onto spares, check/repair and the write-intent bitmap (by
//! default). Planning and starting are [`crate::parity_level`]'s, the data path and sync step
//! [`crate::stripe`]'s.

use crate::parity_level::ParityLevel;
use crate::personality::{Caps, MAX_MEMBERS};

/// The raid5 personality (listed in [`crate::personality`]'s registry).
pub(crate) static RAID5: ParityLevel = ParityLevel {
    level: 5,
    name: "raid5",
    aliases: &["5"],
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
