//! Striping: chunks of a fixed size dealt round robin over legs — the arithmetic that routes,
//! dm-striped and md raid0 share.
//!
//! Chunk `c` of the striped space is chunk `c / legs` of leg `c % legs`; a block at `within`
//! blocks into its chunk keeps that place on the leg. The chunk is a power of two (shifts and
//! masks). A power of two of legs is shifts and masks too; any other count divides by a
//! multiply with a 64-bit reciprocal, `m = floor(2^64 / legs) + 1`: `floor(c * m / 2^64)` is
//! `floor(c / legs)` for every `c < 2^64 / legs`. (Write `m * legs = 2^64 + e` with
//! `1 <= e <= legs - 1`; then `c * m / 2^64 = c / legs + c * e / (legs * 2^64)`, and the error term
//! stays below `1 / legs` — less than the distance from `c / legs` to the next integer — as long
//! as `c * e < 2^64`.) Chunk numbers from there on, far past any real device, divide for real
//! ([`Striping::locate`]) or go to the caller's slow path ([`Striping::place_by_reciprocal`]).
//!
//! "Blocks" are the caller's unit: a layer's blocks for a route, 512-byte sectors for dm's and
//! md's tables. A `Striping` is plain data (`Copy`, `Send`), built on the control path and read on
//! any core.

/// Round-robin striping of `chunk_blocks` (a power of two) over `legs` legs (see the module
/// docs). The shifts, masks and reciprocal are kept ready for the arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Striping {
    chunk_shift: u32,
    /// log2(legs) for a power of two of legs (then `reciprocal` is 0).
    legs_shift: u32,
    chunk_blocks: u64,
    /// `chunk_blocks - 1`: a block's place in its chunk.
    within_mask: u64,
    legs: u64,
    /// `floor(2^64 / legs) + 1` for a leg count that is not a power of two (0 otherwise).
    reciprocal: u64,
    /// First chunk number the reciprocal does not divide exactly, `floor((2^64 - 1) / legs)`
    /// (0 for a power of two of legs).
    reciprocal_limit: u64,
}

/// Where a block of a striped space lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripePlace {
    /// The leg (below [`Striping::legs`]).
    pub leg: usize,
    /// The block on the leg, from the leg's start.
    pub offset_blocks: u64,
    /// Blocks from this one to the end of its chunk (at least 1).
    pub left_blocks: u64,
}

impl Striping {
    /// Striping of `chunk_blocks` over `legs`; `None` unless the chunk is a power of two and there
    /// is at least one leg. Control path.
    pub fn new(chunk_blocks: u64, legs: u64) -> Option<Striping> {
        if !chunk_blocks.is_power_of_two() || legs == 0 {
            return None;
        }
        let pow2 = legs.is_power_of_two();
        Some(Striping {
            chunk_shift: chunk_blocks.trailing_zeros(),
            legs_shift: legs.trailing_zeros(),
            chunk_blocks,
            within_mask: chunk_blocks - 1,
            legs,
            // `legs` does not divide 2^64, so floor((2^64 - 1) / legs) = floor(2^64 / legs).
            reciprocal: if pow2 { 0 } else { u64::MAX / legs + 1 },
            reciprocal_limit: if pow2 { 0 } else { u64::MAX / legs },
        })
    }

    /// Blocks per chunk.
    #[inline]
    pub fn chunk_blocks(&self) -> u64 {
        self.chunk_blocks
    }

    /// log2 of [`Striping::chunk_blocks`].
    #[inline]
    pub fn chunk_shift(&self) -> u32 {
        self.chunk_shift
    }

    /// Number of legs.
    #[inline]
    pub fn legs(&self) -> u64 {
        self.legs
    }

    /// Whether the leg count is a power of two (placement is shifts and masks only).
    #[inline]
    pub fn pow2_legs(&self) -> bool {
        self.reciprocal == 0
    }

    /// Chunk number `chunk` → `(chunk / legs, chunk % legs)`: its row (its chunk number on the
    /// leg) and its leg. For callers that number chunks their own way (md raid0's zones).
    #[inline]
    pub fn divide(&self, chunk: u64) -> (u64, u64) {
        if self.reciprocal == 0 {
            (chunk >> self.legs_shift, chunk & (self.legs - 1))
        } else if chunk < self.reciprocal_limit {
            let row = ((chunk as u128 * self.reciprocal as u128) >> 64) as u64;
            (row, chunk - row * self.legs)
        } else {
            Self::divide_slowly(chunk, self.legs)
        }
    }

    #[cold]
    fn divide_slowly(chunk: u64, legs: u64) -> (u64, u64) {
        (chunk / legs, chunk % legs)
    }

    /// Where block `offset_blocks` lies: its leg, its block on the leg, and the blocks left in
    /// its chunk. Any offset, any leg count.
    #[inline]
    pub fn locate(&self, offset_blocks: u64) -> StripePlace {
        let within = offset_blocks & self.within_mask;
        let (row, leg) = self.divide(offset_blocks >> self.chunk_shift);
        StripePlace {
            leg: leg as usize,
            offset_blocks: (row << self.chunk_shift) | within,
            left_blocks: self.chunk_blocks - within,
        }
    }

    /// Route placement for a power of two of legs: where `num_blocks` (> 0) at `offset_blocks`
    /// lie — the chunk number (the leg is it modulo the leg count; the route's leg table reduces
    /// it) and the block on the leg — or `None` when they cross a chunk.
    #[inline(always)]
    pub(crate) fn place_pow2(&self, offset_blocks: u64, num_blocks: u64) -> Option<(usize, u64)> {
        debug_assert!(self.pow2_legs());
        let within = offset_blocks & self.within_mask;
        if within + num_blocks > self.chunk_blocks {
            return None;
        }
        // The leg's block: the offset without its leg bits. Shifting right by log2(legs) brings
        // the row to the chunk-number bits; the bits below them are the leg's number and are
        // replaced by `within`.
        let on_leg = ((offset_blocks >> self.legs_shift) & !self.within_mask) | within;
        Some(((offset_blocks >> self.chunk_shift) as usize, on_leg))
    }

    /// Route placement for a leg count that is not a power of two: as
    /// [`Striping::place_pow2`], but the leg itself (below `legs`) instead of the chunk number,
    /// and `None` also for a chunk past the reciprocal's exact range (the module divides).
    #[inline(always)]
    pub(crate) fn place_by_reciprocal(&self, offset_blocks: u64, num_blocks: u64) -> Option<(usize, u64)> {
        debug_assert!(!self.pow2_legs());
        let within = offset_blocks & self.within_mask;
        if within + num_blocks > self.chunk_blocks {
            return None;
        }
        let chunk = offset_blocks >> self.chunk_shift;
        if chunk >= self.reciprocal_limit {
            return None;
        }
        let row = ((chunk as u128 * self.reciprocal as u128) >> 64) as u64;
        let leg = chunk - row * self.legs;
        Some((leg as usize, (row << self.chunk_shift) | within))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ROUTE_LEGS;
    use proptest::prelude::*;

    /// dm-striped's definition, division by division.
    fn model(chunk: u64, legs: u64, offset_blocks: u64) -> StripePlace {
        let c = offset_blocks / chunk;
        let within = offset_blocks % chunk;
        StripePlace {
            leg: (c % legs) as usize,
            offset_blocks: (c / legs) * chunk + within,
            left_blocks: chunk - within,
        }
    }

    proptest! {
        /// The power-of-two placement agrees with dm-striped's definition, division by division.
        #[test]
        fn stripes_place_as_dm_striped_defines(
            legs_log2 in 0u32..=4,
            chunk_log2 in 0u32..=12,
            offset_blocks in 0u64..(1 << 40),
            num_blocks in 1u64..=4096,
        ) {
            let (legs, chunk) = (1u64 << legs_log2, 1u64 << chunk_log2);
            let got = Striping::new(chunk, legs)
                .unwrap()
                .place_pow2(offset_blocks, num_blocks)
                .map(|(c, on_leg)| (c as u64 % legs, on_leg));
            let c = offset_blocks / chunk;
            let within = offset_blocks % chunk;
            let want = (within + num_blocks <= chunk)
                .then(|| (c % legs, (c / legs) * chunk + within));
            prop_assert_eq!(got, want);
            // The fixed leg array: entry `c % ROUTE_LEGS` holds leg `(c % ROUTE_LEGS) % legs`.
            prop_assert_eq!((c % ROUTE_LEGS as u64) % legs, c % legs);
        }

        /// The reciprocal placement agrees with division for every leg count that is not a
        /// power of two, over the whole range it maps, and hands the rest to the module.
        #[test]
        fn reciprocal_stripes_place_as_dm_striped_defines(
            legs in (3u64..=ROUTE_LEGS as u64).prop_filter("not a power of two", |n| !n.is_power_of_two()),
            chunk_log2 in 0u32..=12,
            offset_blocks in prop_oneof![0u64..(1 << 40), any::<u64>(), (1u64 << 60) - 4096..(1u64 << 60) + 4096],
            num_blocks in 1u64..=4096,
            near_limit in proptest::option::of(-4096i64..4096),
        ) {
            let chunk = 1u64 << chunk_log2;
            let s = Striping::new(chunk, legs).unwrap();
            // Around the first chunk the reciprocal leaves to the module (reachable with small
            // chunks only).
            let offset_blocks = match near_limit {
                Some(d) => (((u64::MAX / legs) as i128 + d as i128) as u64)
                    .saturating_mul(chunk)
                    .saturating_add(offset_blocks & (chunk - 1)),
                None => offset_blocks,
            };
            let got = s.place_by_reciprocal(offset_blocks, num_blocks);
            let c = offset_blocks / chunk;
            let within = offset_blocks % chunk;
            let want = (within + num_blocks <= chunk && c < u64::MAX / legs)
                .then(|| ((c % legs) as usize, (c / legs) * chunk + within));
            prop_assert_eq!(got, want);
        }

        /// `locate` agrees with division for any leg count (up to dm's 2^32 - 1) and any offset
        /// of the u64 range, past the reciprocal's exact range too.
        #[test]
        fn locate_as_dm_striped_defines(
            legs in prop_oneof![1u64..=64, 1u64..=u32::MAX as u64],
            chunk_log2 in 0u32..=20,
            offset_blocks in prop_oneof![0u64..(1 << 40), any::<u64>(), u64::MAX - (1 << 30)..=u64::MAX],
        ) {
            let chunk = 1u64 << chunk_log2;
            let s = Striping::new(chunk, legs).unwrap();
            prop_assert_eq!(s.locate(offset_blocks), model(chunk, legs, offset_blocks));
            let c = offset_blocks >> chunk_log2;
            prop_assert_eq!(s.divide(c), (c / legs, c % legs));
        }
    }

    /// The reciprocal is exact up to its limit: the worst chunk numbers for each leg count, and
    /// division beyond it.
    #[test]
    fn reciprocal_is_exact_at_the_limit() {
        for legs in (3..=64u64).chain([1000, 65_537, u32::MAX as u64]) {
            if legs.is_power_of_two() {
                continue;
            }
            let s = Striping::new(1, legs).unwrap();
            let top = u64::MAX / legs - 1;
            let span = 3 * legs.min(1000);
            for c in (top.saturating_sub(span)..=top).chain(0..span) {
                let want = Some(((c % legs) as usize, c / legs));
                assert_eq!(s.place_by_reciprocal(c, 1), want, "legs {legs} chunk {c}");
                assert_eq!(s.divide(c), (c / legs, c % legs), "legs {legs} chunk {c}");
            }
            assert_eq!(s.place_by_reciprocal(top + 1, 1), None);
            for c in [top + 1, top + 2, u64::MAX - 1, u64::MAX] {
                assert_eq!(s.divide(c), (c / legs, c % legs), "legs {legs} chunk {c}");
            }
        }
    }

    /// Shapes that are not a striping are refused.
    #[test]
    fn refuses_what_is_not_a_striping() {
        assert_eq!(Striping::new(0, 2), None);
        assert_eq!(Striping::new(3, 2), None);
        assert_eq!(Striping::new(8, 0), None);
        let s = Striping::new(8, 1).unwrap();
        assert_eq!(
            s.locate(21),
            StripePlace {
                leg: 0,
                offset_blocks: 21,
                left_blocks: 3
            }
        );
    }
}
