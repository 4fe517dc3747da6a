//! The verify data pattern.
//!
//! Every verify write fills its buffer with a pattern that encodes where it goes and which write
//! it is: word 0 is the byte offset on the bdev, word 1 the job-wide write sequence number, and
//! every following 64-bit word `i` is `(offset_bytes + 8·i) ^ mix(seq)` (little endian). So a read
//! that returns another offset's data, an older write of the same offset, zeros, or a single
//! flipped bit all compare unequal to the expected buffer, and the first two words of what was
//! read tell whose data it was. Filling and comparing are straight-line loops over the buffer (no
//! allocation); the comparison itself is a slice equality (memcmp), and only on a mismatch do we
//! look for the first differing byte.

/// Scrambles a sequence number so consecutive writes differ in every bit position.
#[inline]
fn mix(seq: u64) -> u64 {
    seq.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

/// Fills `buf` (a multiple of 8 bytes long; a shorter tail is filled with the low bytes of the
/// next word) with the pattern of write `seq` at byte `offset_bytes`.
#[inline]
pub fn fill(buf: &mut [u8], offset_bytes: u64, seq: u64) {
    let m = mix(seq);
    let mut chunks = buf.chunks_exact_mut(8);
    let mut i = 0u64;
    for c in &mut chunks {
        let w = match i {
            0 => offset_bytes,
            1 => seq,
            _ => offset_bytes.wrapping_add(8 * i) ^ m,
        };
        c.copy_from_slice(&w.to_le_bytes());
        i += 1;
    }
    let tail = chunks.into_remainder();
    let n = tail.len();
    if n > 0 {
        let w = offset_bytes.wrapping_add(8 * i) ^ m;
        tail.copy_from_slice(&w.to_le_bytes()[..n]);
    }
}

/// Byte index of the first difference between `expected` and `actual`, or `None` when equal.
#[inline]
pub fn first_mismatch(expected: &[u8], actual: &[u8]) -> Option<usize> {
    if expected == actual {
        return None;
    }
    Some(
        expected
            .iter()
            .zip(actual)
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(actual.len())),
    )
}

/// The (offset_bytes, seq) header of a pattern buffer, for miscompare diagnostics.
pub fn header(buf: &[u8]) -> Option<(u64, u64)> {
    if buf.len() < 16 {
        return None;
    }
    let w = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some((w(0), w(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_offset_and_sequence() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        fill(&mut a, 8192, 7);
        fill(&mut b, 8192, 7);
        assert_eq!(first_mismatch(&a, &b), None);
        assert_eq!(header(&a), Some((8192, 7)));
        fill(&mut b, 8192, 8);
        assert_eq!(first_mismatch(&a, &b), Some(8));
        // Every word past the header differs between two writes of one offset.
        for i in 2..512 {
            assert_ne!(a[i * 8..i * 8 + 8], b[i * 8..i * 8 + 8], "word {i}");
        }
        fill(&mut b, 4096, 7);
        // Offsets 0x2000 and 0x1000 differ in the second byte of the little-endian header.
        assert_eq!(first_mismatch(&a, &b), Some(1));
        let mut c = a.clone();
        c[4000] ^= 1;
        assert_eq!(first_mismatch(&a, &c), Some(4000));
        assert!(first_mismatch(&a, &vec![0u8; 4096]).is_some());
    }
}
