use crate::{CoreId, ReactorError};

/// A set of cores, parsed from SPDK's syntax: hex (`0x3`, `3`) or a bracketed list with ranges
/// (`[0,2-3]`). Called on any thread at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreMask {
    cores: Vec<CoreId>,
}

/// Highest core number accepted (SPDK's limit is 1024 as well).
const MAX_CORE: u32 = 1023;

impl CoreMask {
    /// Parses `0x..` / bare hex or `[a,b-c]`. An empty set is an error.
    pub fn parse(text: &str) -> Result<CoreMask, ReactorError> {
        let bad = |reason: &str| ReactorError::InvalidCoreMask {
            mask: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim();
        let mut cores = Vec::new();
        if let Some(list) = t.strip_prefix('[') {
            let list = list.strip_suffix(']').ok_or_else(|| bad("missing ']'"))?;
            for part in list.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    return Err(bad("empty list element"));
                }
                let (lo, hi) = match part.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (part, part),
                };
                let lo: u32 = lo.parse().map_err(|_| bad("not a core number"))?;
                let hi: u32 = hi.parse().map_err(|_| bad("not a core number"))?;
                if lo > hi {
                    return Err(bad("range runs backwards"));
                }
                if hi > MAX_CORE {
                    return Err(bad("core number above 1023"));
                }
                cores.extend((lo..=hi).map(CoreId));
            }
        } else {
            let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
            if hex.is_empty() {
                return Err(bad("empty"));
            }
            // Walk hex digits from the least significant end so masks wider than 128 bits work.
            for (pos, ch) in hex.chars().rev().enumerate() {
                let nib = ch.to_digit(16).ok_or_else(|| bad("not a hex digit"))?;
                for bit in 0..4 {
                    if nib & (1 << bit) != 0 {
                        let core = (pos * 4 + bit) as u32;
                        if core > MAX_CORE {
                            return Err(bad("core number above 1023"));
                        }
                        cores.push(CoreId(core));
                    }
                }
            }
        }
        cores.sort();
        cores.dedup();
        if cores.is_empty() {
            return Err(bad("selects no core"));
        }
        Ok(CoreMask { cores })
    }

    /// A mask of the given cores (deduplicated, sorted).
    pub fn from_cores(cores: impl IntoIterator<Item = CoreId>) -> CoreMask {
        let mut cores: Vec<CoreId> = cores.into_iter().collect();
        cores.sort();
        cores.dedup();
        CoreMask { cores }
    }

    /// The cores in ascending order.
    pub fn cores(&self) -> &[CoreId] {
        &self.cores
    }

    /// Lower-case hex without `0x` (as SPDK prints cpumasks).
    pub fn to_hex(&self) -> String {
        let max = self.cores.last().map(|c| c.0).unwrap_or(0);
        let mut nibbles = vec![0u8; (max / 4 + 1) as usize];
        for c in &self.cores {
            nibbles[(c.0 / 4) as usize] |= 1 << (c.0 % 4);
        }
        nibbles.iter().rev().map(|n| format!("{n:x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_spdk_forms() {
        assert_eq!(CoreMask::parse("0x3").unwrap().cores(), &[CoreId(0), CoreId(1)]);
        assert_eq!(CoreMask::parse("4").unwrap().cores(), &[CoreId(2)]);
        assert_eq!(
            CoreMask::parse("[0,2-3]").unwrap().cores(),
            &[CoreId(0), CoreId(2), CoreId(3)]
        );
        assert_eq!(CoreMask::parse("0x10").unwrap().to_hex(), "10");
    }

    #[test]
    fn rejects_bad_masks() {
        for bad in ["", "0x", "0x0", "zz", "[1-0]", "[", "[1,]", "[5000]"] {
            assert!(CoreMask::parse(bad).is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn hex_round_trips(bits in 1u64..) {
            let m = CoreMask::parse(&format!("0x{bits:x}")).unwrap();
            prop_assert_eq!(u64::from_str_radix(&m.to_hex(), 16).unwrap(), bits);
            prop_assert_eq!(m.cores().len() as u32, bits.count_ones());
        }
    }
}
