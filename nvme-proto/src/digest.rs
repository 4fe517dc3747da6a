//! CRC32C, the NVMe/TCP header and data digest.
//!
//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF),
//! placed on the wire little-endian right after the bytes it covers. The computation comes from
//! the `crc32c` crate, which uses the SSE4.2 `crc32` instruction (or the ARMv8 CRC instructions)
//! when the CPU has them, detected at run time, and a table-driven software loop otherwise; the
//! one `unsafe` call into those instructions lives there, so this crate stays
//! `#![forbid(unsafe_code)]`. The unit tests pin it to the spec's vectors and to a bit-at-a-time
//! reference.
//!
//! A header digest covers exactly the HLEN header bytes; a data digest covers only the DATA bytes
//! (no header, no pad). Data often arrives or leaves in pieces (socket reads, a scatter list of
//! bdev buffers), so [`Crc32c`] accumulates piece by piece.

/// CRC32C of `bytes` in one go. Called by the PDU encoders/parser for header digests and by any
/// core that digests a contiguous buffer; pure function, no state.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// A running CRC32C over data that comes in pieces. Owned by whoever streams the data (the PDU
/// parser for received data, a qpair for data it sends from several buffers); `Copy`, no heap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crc32c {
    /// The finished CRC of everything so far (the `crc32c` crate resumes from a finished value).
    value: u32,
}

impl Crc32c {
    /// An empty digest (CRC32C of zero bytes).
    pub const fn new() -> Self {
        Crc32c { value: 0 }
    }

    /// Adds `bytes` to the digest.
    pub fn update(&mut self, bytes: &[u8]) {
        self.value = crc32c::crc32c_append(self.value, bytes);
    }

    /// The CRC32C of every byte passed to [`Crc32c::update`] so far; the digest stays usable.
    pub const fn value(&self) -> u32 {
        self.value
    }

    /// The digest as it goes on the wire (little-endian).
    pub const fn to_wire(&self) -> [u8; 4] {
        self.value.to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time CRC32C: slow, obviously right, the reference for the fast paths.
    fn reference(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn spec_vectors() {
        // nvme-tcp.md §5: "123456789" -> 0xE3069283, on the wire 83 92 06 e3.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let mut d = Crc32c::new();
        d.update(b"123456789");
        assert_eq!(d.to_wire(), [0x83, 0x92, 0x06, 0xe3]);
        // 32 zero bytes -> 0x8A9136AA (also an RFC 3720 B.4 vector).
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        // RFC 3720 B.4: 32 bytes of 0xFF, 32 ascending, 32 descending.
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113F_DB5C);
        assert_eq!(crc32c(&[]), 0);
    }

    #[test]
    fn captured_connect_response_header_digest() {
        // nvme-tcp.md §5: CapsuleResp with HDGST 0x32336242 over its 24 header bytes.
        let hdr = [
            0x05, 0x01, 0x18, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(crc32c(&hdr).to_le_bytes(), [0x42, 0x62, 0x33, 0x32]);
    }

    #[test]
    fn pieces_equal_whole_and_reference() {
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let whole = crc32c(&data);
        assert_eq!(whole, reference(&data));
        for split in [0, 1, 7, 8, 63, 4096, 9_999, 10_000] {
            let mut d = Crc32c::new();
            d.update(&data[..split]);
            d.update(&data[split..]);
            assert_eq!(d.value(), whole, "split {split}");
        }
        for len in 0..80 {
            assert_eq!(crc32c(&data[3..3 + len]), reference(&data[3..3 + len]), "len {len}");
        }
    }
}
