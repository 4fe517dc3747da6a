//! The portable kernels: safe Rust, 64-byte columns of eight u64 words, any CPU.
//!
//! Multiplying eight bytes of a word by `g` at once (SWAR): keep the low seven bits of each
//! byte and shift them up, then add `0x1D` into every byte whose top bit fell out
//! (`(top >> 7) · 0x1D` puts `0x1D` exactly there, no carry crosses a byte). Multiplying by any
//! other constant goes byte by byte through a 256-entry table built per call from the constant's
//! nibble tables. The SIMD kernels hand their tails (`len % step` bytes) to these functions.

use super::{Start, GROUP};
use crate::gf;

const WORDS: usize = 8;
const COLUMN: usize = WORDS * 8;

#[inline(always)]
fn mul2_word(x: u64) -> u64 {
    let top = x & 0x8080_8080_8080_8080;
    ((x & 0x7f7f_7f7f_7f7f_7f7f) << 1) ^ ((top >> 7) * 0x1d)
}

#[inline(always)]
fn load(s: &[u8]) -> [u64; WORDS] {
    let mut w = [0u64; WORDS];
    for (w, b) in w.iter_mut().zip(s.chunks_exact(8)) {
        *w = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }
    w
}

#[inline(always)]
fn store(d: &mut [u8], w: &[u64; WORDS]) {
    for (w, b) in w.iter().zip(d.chunks_exact_mut(8)) {
        b.copy_from_slice(&w.to_ne_bytes());
    }
}

/// The 256-entry multiplication table of `c`.
fn full_table(c: u8) -> [u8; 256] {
    let t = gf::nibble_table(c);
    let mut full = [0u8; 256];
    for (x, f) in full.iter_mut().enumerate() {
        *f = gf::mul_nibble(t, x as u8);
    }
    full
}

fn mul_word(full: &[u8; 256], w: u64) -> u64 {
    u64::from_ne_bytes(w.to_ne_bytes().map(|b| full[b as usize]))
}

fn assert_contract(srcs: usize, lens: impl IntoIterator<Item = usize>, len: usize) {
    assert!(srcs <= GROUP, "kernel given {srcs} sources");
    for l in lens {
        assert_eq!(l, len, "kernel given unequal lengths");
    }
}

/// P (if `WP`) and Q (if `WQ`) of `srcs`, ascending slots, Horner from the last; the absent
/// output is an empty slice. See [`Start`].
pub(crate) fn gen<const WP: bool, const WQ: bool>(srcs: &[&[u8]], p: &mut [u8], q: &mut [u8], start: Start) {
    let len = if WP { p.len() } else { q.len() };
    assert_contract(
        srcs.len(),
        srcs.iter()
            .map(|s| s.len())
            .chain(WP.then_some(p.len()))
            .chain(WQ.then_some(q.len())),
        len,
    );
    let cont = match start {
        Start::Continue(c) if c != 1 => Some(full_table(c)),
        _ => None,
    };
    let main = len - len % COLUMN;
    let mut off = 0;
    while off < main {
        let col = off..off + COLUMN;
        let mut pw = [0u64; WORDS];
        let mut qw = [0u64; WORDS];
        let mut z = srcs.len();
        match start {
            Start::Fresh => {
                if z > 0 {
                    z -= 1;
                    pw = load(&srcs[z][col.clone()]);
                    qw = pw;
                }
            }
            Start::Continue(_) => {
                if WP {
                    pw = load(&p[col.clone()]);
                }
                if WQ {
                    qw = load(&q[col.clone()]);
                    if let Some(t) = &cont {
                        qw = qw.map(|w| mul_word(t, w));
                    }
                }
            }
        }
        while z > 0 {
            z -= 1;
            let d = load(&srcs[z][col.clone()]);
            for i in 0..WORDS {
                if WP {
                    pw[i] ^= d[i];
                }
                if WQ {
                    qw[i] = mul2_word(qw[i]) ^ d[i];
                }
            }
        }
        if WP {
            store(&mut p[col.clone()], &pw);
        }
        if WQ {
            store(&mut q[col], &qw);
        }
        off += COLUMN;
    }
    for i in main..len {
        let (mut pb, mut qb) = (0u8, 0u8);
        let mut z = srcs.len();
        match start {
            Start::Fresh => {
                if z > 0 {
                    z -= 1;
                    pb = srcs[z][i];
                    qb = pb;
                }
            }
            Start::Continue(_) => {
                if WP {
                    pb = p[i];
                }
                if WQ {
                    qb = cont.as_ref().map_or(q[i], |t| t[q[i] as usize]);
                }
            }
        }
        while z > 0 {
            z -= 1;
            let d = srcs[z][i];
            pb ^= d;
            qb = gf::mul2(qb) ^ d;
        }
        if WP {
            p[i] = pb;
        }
        if WQ {
            q[i] = qb;
        }
    }
}

/// `buf = c·(buf ⊕ other)`.
pub(crate) fn mul_xor(c: u8, buf: &mut [u8], other: &[u8]) {
    assert_contract(0, [other.len()], buf.len());
    let t = full_table(c);
    for (b, o) in buf.iter_mut().zip(other) {
        *b = t[(*b ^ *o) as usize];
    }
}

/// `d = old ⊕ new; p ^= d` (if `WP`); `q ^= c·d` (if `WQ`).
pub(crate) fn update<const WP: bool, const WQ: bool>(c: u8, old: &[u8], new: &[u8], p: &mut [u8], q: &mut [u8]) {
    let len = old.len();
    assert_contract(
        0,
        [new.len()]
            .into_iter()
            .chain(WP.then_some(p.len()))
            .chain(WQ.then_some(q.len())),
        len,
    );
    let t = if WQ { full_table(c) } else { [0u8; 256] };
    let main = len - len % COLUMN;
    let mut off = 0;
    while off < main {
        let col = off..off + COLUMN;
        let o = load(&old[col.clone()]);
        let n = load(&new[col.clone()]);
        let d: [u64; WORDS] = std::array::from_fn(|i| o[i] ^ n[i]);
        if WP {
            let mut pw = load(&p[col.clone()]);
            for i in 0..WORDS {
                pw[i] ^= d[i];
            }
            store(&mut p[col.clone()], &pw);
        }
        if WQ {
            let mut qw = load(&q[col.clone()]);
            for i in 0..WORDS {
                qw[i] ^= mul_word(&t, d[i]);
            }
            store(&mut q[col], &qw);
        }
        off += COLUMN;
    }
    for i in main..len {
        let d = old[i] ^ new[i];
        if WP {
            p[i] ^= d;
        }
        if WQ {
            q[i] ^= t[d as usize];
        }
    }
}

/// See [`super::two_data`].
pub(crate) fn two_data(a: u8, b: u8, px_out: &mut [u8], qx_out: &mut [u8], p: &[u8], q: &[u8]) {
    assert_contract(0, [qx_out.len(), p.len(), q.len()], px_out.len());
    let ta = full_table(a);
    let tb = full_table(b);
    for (((x, y), p), q) in px_out.iter_mut().zip(qx_out.iter_mut()).zip(p).zip(q) {
        let px = *x ^ p;
        let qx = *y ^ q;
        let dy = ta[px as usize] ^ tb[qx as usize];
        *x = px ^ dy;
        *y = dy;
    }
}
