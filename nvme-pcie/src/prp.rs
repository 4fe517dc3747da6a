//! Physical Region Page entries: how one contiguous data buffer (by IOVA) is described to the
//! controller (nvme-pcie.md §6).
//!
//! With page size P and `off = iova mod P`: a transfer within the first page needs PRP1 only;
//! one that reaches exactly into a second page puts that page in PRP2; a longer one makes PRP2
//! the IOVA of a PRP list holding the page-aligned address of every page after the first.
//! Every queue-pair tracker owns one list page of `P / 8` entries, so a transfer of up to
//! `P / 8` pages after the first needs no chaining; [`max_transfer_bytes`] is the largest such
//! transfer from any offset, and the queue pair refuses longer ones (the bdev splitter keeps
//! I/O below it).

#![forbid(unsafe_code)]

use crate::error::PcieError;

/// What goes into the SQE's data pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prps {
    /// PRP entry 1: the buffer's IOVA (may carry a dword-aligned page offset).
    pub prp1: u64,
    /// PRP entry 2: 0, the second page, or the list's IOVA.
    pub prp2: u64,
    /// List entries written (0 unless PRP2 is a list).
    pub list_entries: usize,
}

/// Largest transfer whose PRPs fit PRP1 plus one list page of `page_bytes / 8` entries, whatever
/// the buffer's offset: `page_bytes / 8` pages.
pub const fn max_transfer_bytes(page_bytes: u64) -> u64 {
    page_bytes / 8 * page_bytes
}

/// Number of memory pages the transfer `[iova, iova + len_bytes)` touches.
pub const fn pages_spanned(iova: u64, len_bytes: u64, page_bytes: u64) -> u64 {
    ((iova % page_bytes) + len_bytes).div_ceil(page_bytes)
}

/// Builds the PRPs of `len_bytes` at `iova`: list entries go to `write_entry(index, address)`
/// (the caller writes them into its list page at `list_iova`, which must be 8-byte aligned with
/// room for `page_bytes / 8` entries). No allocation. Errors: empty or unaligned buffers, and
/// transfers longer than one list page can describe.
#[inline]
pub fn build(
    iova: u64,
    len_bytes: u64,
    page_bytes: u64,
    list_iova: u64,
    mut write_entry: impl FnMut(usize, u64),
) -> Result<Prps, PcieError> {
    if len_bytes == 0 {
        return Err(PcieError::Invalid("a data transfer of 0 bytes".into()));
    }
    if !iova.is_multiple_of(4) {
        return Err(PcieError::Invalid(format!(
            "data buffer IOVA {iova:#x} is not dword aligned (PRP bits 1:0 must be 0)"
        )));
    }
    let pages = pages_spanned(iova, len_bytes, page_bytes);
    let first_page = iova - iova % page_bytes;
    match pages {
        1 => Ok(Prps {
            prp1: iova,
            prp2: 0,
            list_entries: 0,
        }),
        2 => Ok(Prps {
            prp1: iova,
            prp2: first_page + page_bytes,
            list_entries: 0,
        }),
        n if n - 1 <= page_bytes / 8 => {
            for i in 1..n {
                write_entry((i - 1) as usize, first_page + i * page_bytes);
            }
            Ok(Prps {
                prp1: iova,
                prp2: list_iova,
                list_entries: (n - 1) as usize,
            })
        }
        n => Err(PcieError::Invalid(format!(
            "a {len_bytes}-byte transfer at {iova:#x} spans {n} pages; one PRP list describes at most {} (split the I/O)",
            page_bytes / 8 + 1
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The device's side, written from the spec independently of `build`: walk PRP1, PRP2 and
    /// the list and return the byte ranges transferred.
    fn device_walk(p: &Prps, len: u64, page: u64, list: &[u64]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let first = (page - p.prp1 % page).min(len);
        out.push((p.prp1, first));
        let mut left = len - first;
        if left == 0 {
            return out;
        }
        if left <= page {
            assert_eq!(p.prp2 % page, 0, "PRP2 as a page must be aligned");
            out.push((p.prp2, left));
            return out;
        }
        for &e in list {
            assert_eq!(e % page, 0, "list entries must be page aligned");
            let n = left.min(page);
            out.push((e, n));
            left -= n;
            if left == 0 {
                break;
            }
        }
        assert_eq!(left, 0, "list too short");
        out
    }

    fn check(iova: u64, len: u64, page: u64) {
        let mut list = vec![0u64; (page / 8) as usize];
        let p = build(iova, len, page, 0xABC000, |i, a| list[i] = a).unwrap();
        list.truncate(p.list_entries);
        let ranges = device_walk(&p, len, page, &list);
        // The ranges must be exactly the contiguous buffer.
        let mut at = iova;
        for (a, n) in ranges {
            assert_eq!(a, at, "discontiguous at {at:#x}");
            at += n;
        }
        assert_eq!(at, iova + len);
    }

    #[test]
    fn the_three_shapes() {
        let p = build(0x10_0000, 4096, 4096, 0x9000, |_, _| panic!()).unwrap();
        assert_eq!((p.prp1, p.prp2), (0x10_0000, 0));
        let p = build(0x10_0200, 4096, 4096, 0x9000, |_, _| panic!()).unwrap();
        assert_eq!((p.prp1, p.prp2), (0x10_0200, 0x10_1000));
        let mut e = Vec::new();
        let p = build(0x10_0000, 3 * 4096, 4096, 0x9000, |i, a| e.push((i, a))).unwrap();
        assert_eq!((p.prp1, p.prp2, p.list_entries), (0x10_0000, 0x9000, 2));
        assert_eq!(e, vec![(0, 0x10_1000), (1, 0x10_2000)]);
        check(0x10_0000, 128 * 1024, 4096);
        check(0x10_0ffc, max_transfer_bytes(4096), 4096);
        assert!(build(0x10_0004, max_transfer_bytes(4096) + 4096, 4096, 0, |_, _| {}).is_err());
        assert!(build(0x10_0002, 512, 4096, 0, |_, _| {}).is_err());
        assert!(build(0x10_0000, 0, 4096, 0, |_, _| {}).is_err());
    }

    proptest! {
        #[test]
        fn prps_describe_exactly_the_buffer(page_shift in 12u32..=16, dword in 0u64..(1 << 20), len in 1u64..(1 << 21)) {
            let page = 1u64 << page_shift;
            let iova = 0x1000_0000 + dword * 4;
            if pages_spanned(iova, len, page) - 1 <= page / 8 {
                check(iova, len, page);
            } else {
                let refused = build(iova, len, page, 0, |_, _| {}).is_err();
                prop_assert!(refused);
            }
        }
    }
}
