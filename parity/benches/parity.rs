//! Parity throughput, GB/s of data per core: Keel's portable, SSSE3 and AVX2 kernels and (with
//! the `isal` feature) ISA-L's `xor_gen` / `pq_gen` on the same buffers in the same run.
//!
//! ```sh
//! cargo bench -p keel-parity --features isal --bench parity -- [--runs 5] [--secs 1] [--chunk-kib 64] [--case P+Q]
//! ```
//! Cases: P of 4 and 8 data chunks (raid5 4+1, 8+1), P+Q of 4 and 8 (raid6 4+2, 8+2); then, Keel
//! only, a raid6 read-modify-write of one chunk (`pq_update`) and the rebuild of two lost data
//! chunks of a 4+2 stripe (`rebuild_two`). GB/s = data bytes covered per second (n × chunk for
//! generation and rebuild, one chunk for the update), 1 GB = 10^9 bytes. Each round measures
//! every contender of a case once, alternating; the table shows the median round and the
//! range. Time is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so time the shared
//! machine gave to other processes does not count against either side. Before timing, every contender's output is compared with the portable kernel's, so
//! the run also proves Keel's P and Q byte-equal to ISA-L's (same field, generator, slot order).
#![allow(unsafe_code)] // the ISA-L FFI calls only

use keel_parity::{Impl, Parity};

#[cfg(feature = "isal")]
mod isal {
    use std::ffi::c_void;

    #[link(name = "isal")]
    extern "C" {
        pub fn xor_gen(vects: i32, len: i32, array: *mut *mut c_void) -> i32;
        pub fn pq_gen(vects: i32, len: i32, array: *mut *mut c_void) -> i32;
        pub fn xor_gen_sse(vects: i32, len: i32, array: *mut *mut c_void) -> i32;
        pub fn xor_gen_avx(vects: i32, len: i32, array: *mut *mut c_void) -> i32;
        pub fn xor_gen_avx512(vects: i32, len: i32, array: *mut *mut c_void) -> i32;
        pub fn pq_gen_sse(vects: i32, len: i32, array: *mut *mut c_void) -> i32;
        pub fn pq_gen_avx2(vects: i32, len: i32, array: *mut *mut c_void) -> i32;
        pub fn pq_gen_avx512(vects: i32, len: i32, array: *mut *mut c_void) -> i32;
    }
}

const MAX_DATA: usize = 8;

/// A page-aligned buffer carved out of a `Vec` (no unsafe: over-allocate, skip to alignment).
struct Buf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize, seed: u64) -> Buf {
        let mut raw = vec![0u8; len + 4096];
        let off = raw.as_ptr().align_offset(4096);
        let mut x = seed | 1;
        for b in &mut raw[off..off + len] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        Buf { raw, off, len }
    }
    fn get(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

struct Stripe {
    data: Vec<Buf>,
    p: Buf,
    q: Buf,
    /// Second pair of outputs (rebuild targets), and the "new" chunk of the update.
    x: Buf,
    y: Buf,
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    P,
    Pq,
    Update,
    RebuildTwo,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Who {
    Keel(Impl),
    #[cfg(feature = "isal")]
    Isal(&'static str),
}

impl Who {
    fn name(self) -> String {
        match self {
            Who::Keel(i) => format!("keel {}", i.name()),
            #[cfg(feature = "isal")]
            Who::Isal(v) => format!("isa-l {v}"),
        }
    }
}

fn run_once(op: Op, who: Who, s: &mut Stripe, n: usize) {
    let Stripe { data, p, q, x, y } = s;
    let mut d: [&[u8]; MAX_DATA] = [&[]; MAX_DATA];
    for (d, b) in d.iter_mut().zip(data.iter()) {
        *d = b.get();
    }
    let d = &d[..n];
    match who {
        Who::Keel(imp) => {
            let par = Parity::new(imp).expect("supported");
            match op {
                Op::P => par.xor_gen(d, p.get_mut()),
                Op::Pq => par.pq_gen(d, p.get_mut(), q.get_mut()),
                Op::Update => par.pq_update(1, d[1], x.get(), p.get_mut(), q.get_mut()),
                Op::RebuildTwo => {
                    let mut lost: [Option<&[u8]>; MAX_DATA] = [None; MAX_DATA];
                    for (l, b) in lost.iter_mut().zip(d).skip(2) {
                        *l = Some(*b);
                    }
                    par.rebuild_two(&lost[..n], p.get(), q.get(), x.get_mut(), y.get_mut())
                }
            }
            .expect("valid arguments");
        }
        #[cfg(feature = "isal")]
        Who::Isal(variant) => {
            use std::ffi::c_void;
            let mut ptrs: [*mut c_void; MAX_DATA + 2] = [std::ptr::null_mut(); MAX_DATA + 2];
            for (ptr, b) in ptrs.iter_mut().zip(d) {
                *ptr = b.as_ptr() as *mut c_void;
            }
            ptrs[n] = p.get_mut().as_mut_ptr().cast();
            ptrs[n + 1] = q.get_mut().as_mut_ptr().cast();
            let len = p.len as i32;
            // SAFETY: `ptrs` holds n sources and 1 (P) or 2 (P, Q) destinations of `len` bytes,
            // page-aligned (ISA-L wants 32-byte alignment and a length multiple of 32); ISA-L only
            // reads the sources. The AVX-512 variants are only listed on CPUs that report
            // AVX512F+BW+VL (see `contenders`).
            let rc = unsafe {
                match (op, variant) {
                    (Op::P, "dispatch") => isal::xor_gen(n as i32 + 1, len, ptrs.as_mut_ptr()),
                    (Op::P, "sse") => isal::xor_gen_sse(n as i32 + 1, len, ptrs.as_mut_ptr()),
                    (Op::P, "avx") => isal::xor_gen_avx(n as i32 + 1, len, ptrs.as_mut_ptr()),
                    (Op::P, "avx512") => isal::xor_gen_avx512(n as i32 + 1, len, ptrs.as_mut_ptr()),
                    (Op::Pq, "dispatch") => isal::pq_gen(n as i32 + 2, len, ptrs.as_mut_ptr()),
                    (Op::Pq, "sse") => isal::pq_gen_sse(n as i32 + 2, len, ptrs.as_mut_ptr()),
                    (Op::Pq, "avx2") => isal::pq_gen_avx2(n as i32 + 2, len, ptrs.as_mut_ptr()),
                    (Op::Pq, "avx512") => isal::pq_gen_avx512(n as i32 + 2, len, ptrs.as_mut_ptr()),
                    _ => unreachable!("no such ISA-L variant"),
                }
            };
            assert_eq!(rc, 0, "ISA-L {variant} refused the buffers");
        }
    }
}

fn contenders(op: Op) -> Vec<Who> {
    let keel = Parity::all_supported().map(|p| Who::Keel(p.implementation()));
    keel.chain(isal_contenders(op)).collect()
}

#[cfg(feature = "isal")]
fn isal_contenders(op: Op) -> Vec<Who> {
    if !matches!(op, Op::P | Op::Pq) {
        return Vec::new();
    }
    let avx512 = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl");
    let mut v = vec![Who::Isal("dispatch")];
    if avx512 {
        v.push(Who::Isal("avx512"));
    }
    v.push(Who::Isal(if op == Op::P { "avx" } else { "avx2" }));
    v.push(Who::Isal("sse"));
    v
}

#[cfg(not(feature = "isal"))]
fn isal_contenders(_op: Op) -> Vec<Who> {
    Vec::new()
}

/// CPU time this thread has run, in seconds. The machines are shared: wall-clock time would
/// count the time other processes held the core, CPU time does not.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always available
    // on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// GB/s per core: bytes covered per second of this thread's CPU time, over `secs` of it.
fn measure(op: Op, who: Who, s: &mut Stripe, n: usize, secs: f64, bytes_per_op: usize) -> f64 {
    // The thread CPU clock is a system call: read it once per ~4 MB of work.
    let batch = ((4 << 20) / bytes_per_op).max(1) as u64;
    let start = thread_cpu_secs();
    let mut iters = 0u64;
    loop {
        for _ in 0..batch {
            run_once(op, who, s, n);
        }
        iters += batch;
        let el = thread_cpu_secs() - start;
        if el >= secs {
            return iters as f64 * bytes_per_op as f64 / el / 1e9;
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut runs = 5usize;
    let mut secs = 1.0f64;
    let mut chunk_kib = 64usize;
    let mut only = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).expect("--secs S"),
            "--chunk-kib" => chunk_kib = args.next().and_then(|v| v.parse().ok()).expect("--chunk-kib K"),
            "--case" => only = args.next().expect("--case SUBSTRING"),
            _ => {} // cargo bench passes --bench
        }
    }
    let len = chunk_kib * 1024;
    println!(
        "keel-parity bench: chunk {chunk_kib} KiB, {runs} rounds of {secs} s per contender; run-time choice on this CPU: {}",
        Impl::best().name()
    );
    #[cfg(not(feature = "isal"))]
    println!("(ISA-L not linked: add --features isal, needs libisal-dev)");
    println!();
    println!("| case | contender | GB/s (median) | range | vs ISA-L dispatch |");
    println!("|---|---|---|---|---|");

    let cases = [
        ("P 4+1", Op::P, 4usize),
        ("P 8+1", Op::P, 8),
        ("P+Q 4+2", Op::Pq, 4),
        ("P+Q 8+2", Op::Pq, 8),
        ("RMW pq_update, 1 chunk", Op::Update, 4),
        ("rebuild 2 data, 4+2", Op::RebuildTwo, 4),
    ];
    for (name, op, n) in cases {
        if !name.contains(only.as_str()) {
            continue;
        }
        let mut s = Stripe {
            data: (0..n).map(|i| Buf::new(len, 0x1234 + i as u64)).collect(),
            p: Buf::new(len, 7),
            q: Buf::new(len, 8),
            x: Buf::new(len, 9),
            y: Buf::new(len, 10),
        };
        let who = contenders(op);
        // Correctness first: every contender's output equals the portable kernel's.
        if matches!(op, Op::RebuildTwo) {
            run_once(Op::Pq, Who::Keel(Impl::Portable), &mut s, n);
        }
        run_once(op, Who::Keel(Impl::Portable), &mut s, n);
        let want = (
            s.p.get().to_vec(),
            s.q.get().to_vec(),
            s.x.get().to_vec(),
            s.y.get().to_vec(),
        );
        for &w in &who {
            if matches!(op, Op::Update) {
                // The update is not idempotent: restore P and Q, apply once.
                run_once(Op::Update, Who::Keel(Impl::Portable), &mut s, n);
            }
            run_once(op, w, &mut s, n);
            let got = (
                s.p.get().to_vec(),
                s.q.get().to_vec(),
                s.x.get().to_vec(),
                s.y.get().to_vec(),
            );
            let same = match op {
                Op::P => got.0 == want.0,
                Op::Pq | Op::Update => got.0 == want.0 && got.1 == want.1,
                Op::RebuildTwo => got.2 == want.2 && got.3 == want.3 && got.2 == s.data[0].get(),
            };
            assert!(same, "{name}: {} differs from the portable kernel", w.name());
        }
        let bytes = if op == Op::Update { len } else { n * len };
        for &w in &who {
            measure(op, w, &mut s, n, secs.min(0.2), bytes); // warm-up
        }
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); who.len()];
        for _ in 0..runs {
            for (i, &w) in who.iter().enumerate() {
                results[i].push(measure(op, w, &mut s, n, secs, bytes));
            }
        }
        let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
        #[cfg(feature = "isal")]
        let isal = who.iter().position(|w| *w == Who::Isal("dispatch")).map(|i| medians[i]);
        #[cfg(not(feature = "isal"))]
        let isal: Option<f64> = None;
        for (i, w) in who.iter().enumerate() {
            let (lo, hi) = results[i]
                .iter()
                .fold((f64::MAX, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
            let ratio = isal.map_or("–".to_string(), |r| format!("{:.2}×", medians[i] / r));
            println!(
                "| {name} | {} | {:.2} | {:.2}–{:.2} | {ratio} |",
                w.name(),
                medians[i],
                lo,
                hi
            );
        }
    }
}
