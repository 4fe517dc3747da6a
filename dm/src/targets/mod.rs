//! The target types Keel ships: `linear`, `striped`, `error`, `zero`, `delay`, `flakey`, with
//! Linux's argument syntax, TABLE/INFO formats and versions (`shared/specs/dm-targets.md` §3).
//!
//! Each file holds one type: its constructor (argument parsing with Linux's error strings), its
//! `map` (a few arithmetic operations on the hot path), its status forms and a reference model
//! in the property tests (`dm/tests/mapping_props.rs`).

pub mod delay;
pub mod error;
pub mod flakey;
pub mod linear;
pub mod striped;
pub mod zero;

use crate::target::{TargetType, TypeFlags};

/// Registration order: `dm_list_targets` prints the most recently registered first, which gives
/// the order `dmsetup targets` printed on the capture machine (zero, flakey, delay, striped,
/// linear, error).
pub(crate) static TYPES: &[TargetType] = &[
    TargetType {
        name: "error",
        version: (1, 7, 0),
        flags: TypeFlags::NONE,
        ctor: error::ctor,
    },
    TargetType {
        name: "linear",
        version: (1, 4, 0),
        flags: TypeFlags::NONE,
        ctor: linear::ctor,
    },
    TargetType {
        name: "striped",
        version: (1, 6, 0),
        flags: TypeFlags::NONE,
        ctor: striped::ctor,
    },
    TargetType {
        name: "delay",
        version: (1, 4, 0),
        flags: TypeFlags::NONE,
        ctor: delay::ctor,
    },
    TargetType {
        name: "flakey",
        version: (1, 5, 0),
        flags: TypeFlags::NONE,
        ctor: flakey::ctor,
    },
    TargetType {
        name: "zero",
        version: (1, 2, 0),
        flags: TypeFlags::NONE,
        ctor: zero::ctor,
    },
];
