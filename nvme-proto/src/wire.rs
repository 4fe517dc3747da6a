//! Little-endian field access on fixed-size byte arrays.
//!
//! Decoders first turn the caller's `&[u8]` into a `&[u8; LEN]` of the structure's exact length
//! ([`array`], which fails with [`ProtoError::Truncated`] instead of panicking), and then read
//! fields with `get_u32::<OFFSET, LEN>(bytes)`. The offset is a const generic and each accessor
//! asserts `OFFSET + size <= LEN` in a `const` block, so a field placed outside its structure is
//! a compile error, not a runtime panic — every index below is in bounds by construction.

use crate::ProtoError;

/// The first `N` bytes of `buf` as an array, or `Truncated` naming `what`.
pub(crate) fn array<'a, const N: usize>(buf: &'a [u8], what: &'static str) -> Result<&'a [u8; N], ProtoError> {
    match buf.first_chunk::<N>() {
        Some(a) => Ok(a),
        None => Err(ProtoError::Truncated {
            what,
            need: N,
            have: buf.len(),
        }),
    }
}

/// The first `N` bytes of `buf` as a mutable array, or `BufferTooSmall` naming `what`.
pub(crate) fn array_mut<'a, const N: usize>(
    buf: &'a mut [u8],
    what: &'static str,
) -> Result<&'a mut [u8; N], ProtoError> {
    let have = buf.len();
    match buf.first_chunk_mut::<N>() {
        Some(a) => Ok(a),
        None => Err(ProtoError::BufferTooSmall { what, need: N, have }),
    }
}

/// Fails with `BufferTooSmall` unless `buf` holds at least `need` bytes.
pub(crate) fn need_out(buf: &[u8], need: usize, what: &'static str) -> Result<(), ProtoError> {
    if buf.len() < need {
        return Err(ProtoError::BufferTooSmall {
            what,
            need,
            have: buf.len(),
        });
    }
    Ok(())
}

pub(crate) fn get_u8<const OFF: usize, const N: usize>(b: &[u8; N]) -> u8 {
    const { assert!(OFF < N) };
    b[OFF]
}

pub(crate) fn get_u16<const OFF: usize, const N: usize>(b: &[u8; N]) -> u16 {
    u16::from_le_bytes(get_bytes::<OFF, 2, N>(b))
}

pub(crate) fn get_u32<const OFF: usize, const N: usize>(b: &[u8; N]) -> u32 {
    u32::from_le_bytes(get_bytes::<OFF, 4, N>(b))
}

pub(crate) fn get_u64<const OFF: usize, const N: usize>(b: &[u8; N]) -> u64 {
    u64::from_le_bytes(get_bytes::<OFF, 8, N>(b))
}

pub(crate) fn get_u128<const OFF: usize, const N: usize>(b: &[u8; N]) -> u128 {
    u128::from_le_bytes(get_bytes::<OFF, 16, N>(b))
}

/// A copy of `LEN` bytes at `OFF`.
pub(crate) fn get_bytes<const OFF: usize, const LEN: usize, const N: usize>(b: &[u8; N]) -> [u8; LEN] {
    const { assert!(OFF + LEN <= N) };
    std::array::from_fn(|i| b[OFF + i])
}

/// `LEN` bytes at `OFF` as a slice (for ranges too large to copy onto the stack cheaply).
pub(crate) fn slice<const OFF: usize, const LEN: usize, const N: usize>(b: &[u8; N]) -> &[u8] {
    const { assert!(OFF + LEN <= N) };
    &b[OFF..OFF + LEN]
}

/// `LEN` bytes at `OFF` as a mutable slice.
pub(crate) fn slice_mut<const OFF: usize, const LEN: usize, const N: usize>(b: &mut [u8; N]) -> &mut [u8] {
    const { assert!(OFF + LEN <= N) };
    &mut b[OFF..OFF + LEN]
}

pub(crate) fn put_u8<const OFF: usize, const N: usize>(b: &mut [u8; N], v: u8) {
    const { assert!(OFF < N) };
    b[OFF] = v;
}

pub(crate) fn put_u16<const OFF: usize, const N: usize>(b: &mut [u8; N], v: u16) {
    put_bytes::<OFF, 2, N>(b, &v.to_le_bytes());
}

pub(crate) fn put_u32<const OFF: usize, const N: usize>(b: &mut [u8; N], v: u32) {
    put_bytes::<OFF, 4, N>(b, &v.to_le_bytes());
}

pub(crate) fn put_u64<const OFF: usize, const N: usize>(b: &mut [u8; N], v: u64) {
    put_bytes::<OFF, 8, N>(b, &v.to_le_bytes());
}

pub(crate) fn put_u128<const OFF: usize, const N: usize>(b: &mut [u8; N], v: u128) {
    put_bytes::<OFF, 16, N>(b, &v.to_le_bytes());
}

pub(crate) fn put_bytes<const OFF: usize, const LEN: usize, const N: usize>(b: &mut [u8; N], v: &[u8; LEN]) {
    slice_mut::<OFF, LEN, N>(b).copy_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_endian_both_ways() {
        let mut b = [0u8; 16];
        put_u16::<0, 16>(&mut b, 0x0201);
        put_u32::<2, 16>(&mut b, 0x0605_0403);
        put_u64::<6, 16>(&mut b, 0x0e0d_0c0b_0a09_0807);
        put_u8::<14, 16>(&mut b, 0x0f);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0]);
        assert_eq!(get_u16::<0, 16>(&b), 0x0201);
        assert_eq!(get_u32::<2, 16>(&b), 0x0605_0403);
        assert_eq!(get_u64::<6, 16>(&b), 0x0e0d_0c0b_0a09_0807);
        assert_eq!(get_u128::<0, 16>(&b), u128::from_le_bytes(b));
    }

    #[test]
    fn short_buffers_are_errors() {
        assert_eq!(
            array::<4>(&[1, 2, 3], "x"),
            Err(ProtoError::Truncated {
                what: "x",
                need: 4,
                have: 3
            })
        );
        let mut out = [0u8; 2];
        assert_eq!(
            array_mut::<3>(&mut out, "y").map(|_| ()),
            Err(ProtoError::BufferTooSmall {
                what: "y",
                need: 3,
                have: 2
            })
        );
    }
}
