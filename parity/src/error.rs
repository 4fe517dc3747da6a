//! The crate's one error type.
//!
//! Every operation validates its arguments before touching a byte and returns a
//! [`ParityError`] for anything it cannot compute; no input makes it panic. The error is `Copy`
//! and holds only integers and static strings, so a reactor can return it from the data path
//! without allocating.

use crate::Impl;

/// Why a parity operation refused its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParityError {
    /// A buffer's length differs from the operation's length (the length of its output).
    #[error("{what} has {found_bytes} bytes, expected {expected_bytes} (all blocks of a stripe have one length)")]
    LengthMismatch {
        /// Which buffer: `"data block"`, `"P"`, `"Q"`, `"old data"`, …
        what: &'static str,
        /// Its slot (index in the data slice) for data blocks, else 0.
        index: usize,
        /// The operation's length.
        expected_bytes: usize,
        /// The buffer's length.
        found_bytes: usize,
    },
    /// A generation was given no data blocks.
    #[error("no data blocks given")]
    NoData,
    /// More data slots than Q can tell apart (`g^255 = 1`).
    #[error("{count} data slots, Q supports at most {max}")]
    TooManySlots {
        /// Slots given.
        count: usize,
        /// [`crate::MAX_Q_SLOTS`].
        max: usize,
    },
    /// A slot index at or past [`crate::MAX_Q_SLOTS`].
    #[error("slot {slot} out of range (Q slots are 0..{max})")]
    SlotOutOfRange {
        /// The slot given.
        slot: usize,
        /// [`crate::MAX_Q_SLOTS`].
        max: usize,
    },
    /// A recovery was given a different number of missing (`None`) data blocks than it rebuilds.
    #[error("{found} data blocks missing, this recovery rebuilds exactly {expected}")]
    MissingCount {
        /// Blocks this recovery rebuilds.
        expected: usize,
        /// `None` entries in the data slice.
        found: usize,
    },
    /// A stripe geometry md cannot have, given to the slot-order helper
    /// ([`crate::md_q_slot`]): P and Q on one member, a member index past the member count, …
    #[error("md slot order: {0}")]
    Layout(&'static str),
    /// The CPU lacks the instruction set of the requested implementation.
    #[error("{0:?} parity kernels are not supported by this CPU")]
    Unsupported(Impl),
}
