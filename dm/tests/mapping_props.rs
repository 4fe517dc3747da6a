//! Property tests: every target's mapping against an independent reference model.
//!
//! 1. `target_map_matches_model`: random tables of every target type built over detached
//!    devices (no bdevs), random sectors: each line's `Target::map` must send the sector where
//!    the model (written from spec §3 with plain division, no shifts) says.
//! 2. `data_path_matches_model`: random tables over three malloc bdevs (all 512-byte, all 4 KiB,
//!    or mixed block sizes), random reads, writes, unmaps, write_zeroes and flushes — many crossing
//!    target and chunk boundaries, with scatter lists cut at random byte positions — through the
//!    real dm data path on the deterministic driver. Every status and every byte read must be
//!    what the model predicts, and at the end every base bdev must hold exactly the model's
//!    bytes.

mod common;

use std::time::Duration;

use common::{Rig, MAIN};
use keel_bdev::{DmaBuf, IoCaps, IoOp, IoStatus, IoVec};
use keel_dm::table::{self, TableDev};
use keel_dm::target::DevGeometry;
use keel_dm::{Events, Map, MapCx};
use proptest::prelude::*;

const DEVS: usize = 3;
/// Size of each base device in sectors (1 MiB: room for the largest target the generator makes).
const DEV_SECTORS: u64 = 2048;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Flaky {
    Up,
    DownPlain,
    DownDropWrites,
    DownErrorWrites,
    DownErrorReads,
}

#[derive(Clone, Debug)]
enum T {
    Linear { dev: usize, off: u64 },
    Striped { chunk: u64, legs: Vec<(usize, u64)> },
    Zero,
    Error,
    Delay { classes: Vec<(usize, u64)> },
    Flakey { dev: usize, off: u64, mode: Flaky },
}

#[derive(Clone, Debug)]
struct Line {
    start: u64,
    len: u64,
    t: T,
}

/// Where the model sends one sector of one op.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Where {
    Dev(usize, u64),
    Zero,
    Error,
    Dropped,
}

fn is_write(op: IoOp) -> bool {
    matches!(op, IoOp::Write | IoOp::Unmap | IoOp::WriteZeroes)
}

/// The reference mapping of sector `rel` (relative to the line) for `op`.
fn model(l: &Line, op: IoOp, rel: u64) -> Where {
    match &l.t {
        T::Linear { dev, off } => Where::Dev(*dev, off + rel),
        T::Striped { chunk, legs } => {
            let n = legs.len() as u64;
            let c = rel / chunk;
            let stripe = (c % n) as usize;
            Where::Dev(legs[stripe].0, legs[stripe].1 + (c / n) * chunk + rel % chunk)
        }
        T::Zero => match op {
            IoOp::Read => Where::Zero,
            IoOp::Write | IoOp::Unmap => Where::Dropped,
            _ => Where::Error,
        },
        T::Error => Where::Error,
        T::Delay { classes } => {
            let c = if is_write(op) {
                classes[1.min(classes.len() - 1)]
            } else {
                classes[0]
            };
            Where::Dev(c.0, c.1 + rel)
        }
        T::Flakey { dev, off, mode } => {
            let plain = Where::Dev(*dev, off + rel);
            match (mode, is_write(op)) {
                (Flaky::Up, _) => plain,
                (Flaky::DownPlain, _) => Where::Error,
                (Flaky::DownDropWrites, true) => Where::Dropped,
                (Flaky::DownErrorWrites, true) => Where::Error,
                (Flaky::DownErrorReads, false) => Where::Error,
                _ => plain,
            }
        }
    }
}

fn text(lines: &[Line]) -> String {
    let mut s = String::new();
    for l in lines {
        let args = match &l.t {
            T::Linear { dev, off } => format!("linear D{dev} {off}"),
            T::Striped { chunk, legs } => {
                let mut a = format!("striped {} {chunk}", legs.len());
                for (d, o) in legs {
                    a.push_str(&format!(" D{d} {o}"));
                }
                a
            }
            T::Zero => "zero".into(),
            T::Error => "error".into(),
            T::Delay { classes } => {
                let mut a = "delay".to_string();
                for (d, o) in classes {
                    a.push_str(&format!(" D{d} {o} 0"));
                }
                a
            }
            T::Flakey { dev, off, mode } => match mode {
                Flaky::Up => format!("flakey D{dev} {off} 1000 0"),
                Flaky::DownPlain => format!("flakey D{dev} {off} 0 1000"),
                Flaky::DownDropWrites => format!("flakey D{dev} {off} 0 1000 1 drop_writes"),
                Flaky::DownErrorWrites => format!("flakey D{dev} {off} 0 1000 1 error_writes"),
                Flaky::DownErrorReads => format!("flakey D{dev} {off} 0 1000 1 error_reads"),
            },
        };
        s.push_str(&format!("{} {} {args}\n", l.start, l.len));
    }
    s
}

/// A random valid table: `spb` = sectors per device block; `dev_spb` per base device.
fn random_table(rng: &mut Rng, spb: u64, dev_spb: &[u64; DEVS]) -> Vec<Line> {
    let n = 1 + rng.below(6);
    let mut lines = Vec::new();
    let mut start = 0;
    // An offset on `dev` for `len` sectors, aligned to the device's block size.
    let place = |rng: &mut Rng, dev: usize, len: u64| -> u64 {
        let room = DEV_SECTORS - len;
        let a = dev_spb[dev];
        rng.below(room / a + 1) * a
    };
    for _ in 0..n {
        let kind = rng.below(100);
        let (len, t) = if kind < 30 {
            let len = spb * (1 + rng.below(64));
            let dev = rng.below(DEVS as u64) as usize;
            (
                len,
                T::Linear {
                    dev,
                    off: place(rng, dev, len),
                },
            )
        } else if kind < 60 {
            let stripes = 1 + rng.below(3);
            let chunk = spb << rng.below(4);
            let len = stripes * chunk * (1 + rng.below(6));
            let legs = (0..stripes)
                .map(|_| {
                    let dev = rng.below(DEVS as u64) as usize;
                    (dev, place(rng, dev, len / stripes))
                })
                .collect();
            (len, T::Striped { chunk, legs })
        } else if kind < 67 {
            (spb * (1 + rng.below(16)), T::Zero)
        } else if kind < 72 {
            (spb * (1 + rng.below(8)), T::Error)
        } else if kind < 86 {
            let len = spb * (1 + rng.below(48));
            let k = if rng.chance(50) { 1 } else { 2 };
            let classes = (0..k)
                .map(|_| {
                    let dev = rng.below(DEVS as u64) as usize;
                    (dev, place(rng, dev, len))
                })
                .collect();
            (len, T::Delay { classes })
        } else {
            let len = spb * (1 + rng.below(48));
            let dev = rng.below(DEVS as u64) as usize;
            let mode = [
                Flaky::Up,
                Flaky::DownPlain,
                Flaky::DownDropWrites,
                Flaky::DownErrorWrites,
                Flaky::DownErrorReads,
            ][rng.below(5) as usize];
            (
                len,
                T::Flakey {
                    dev,
                    off: place(rng, dev, len),
                    mode,
                },
            )
        };
        lines.push(Line { start, len, t });
        start += len;
    }
    lines
}

/// The table's logical block size in sectors: the largest of the devices it names (1 without).
fn table_spb(lines: &[Line], dev_spb: &[u64; DEVS]) -> u64 {
    let mut devs = Vec::new();
    for l in lines {
        match &l.t {
            T::Linear { dev, .. } | T::Flakey { dev, .. } => devs.push(*dev),
            T::Striped { legs, .. } => devs.extend(legs.iter().map(|x| x.0)),
            T::Delay { classes } => devs.extend(classes.iter().map(|x| x.0)),
            T::Zero | T::Error => {}
        }
    }
    devs.iter().map(|&d| dev_spb[d]).max().unwrap_or(1)
}

fn find(lines: &[Line], sector: u64) -> &Line {
    lines
        .iter()
        .find(|l| sector >= l.start && sector < l.start + l.len)
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn target_map_matches_model(seed in 1u64..u64::MAX, bs_case in 0usize..3) {
        let mut rng = Rng(seed);
        let dev_bs: [u32; DEVS] = [[512, 512, 512], [4096, 4096, 4096], [512, 4096, 512]][bs_case];
        let dev_spb = dev_bs.map(|b| b as u64 / 512);
        let spb = *dev_spb.iter().max().unwrap();
        let lines = random_table(&mut rng, spb, &dev_spb);
        let spb = table_spb(&lines, &dev_spb);
        let specs = table::parse(&text(&lines)).unwrap();
        let mut resolve = |name: &str| {
            let i: usize = name[1..].parse().unwrap();
            Ok(TableDev::detached(name, DevGeometry {
                block_size: dev_bs[i],
                num_sectors: DEV_SECTORS,
                caps: IoCaps::ALL,
            }))
        };
        let t = table::build(&specs, &mut resolve, &Events::detached(), false).unwrap();
        prop_assert_eq!(t.block_size as u64, spb * 512);
        let size = lines.iter().map(|l| l.len).sum::<u64>();
        prop_assert_eq!(t.size_sectors, size);
        let mut rngstate = 7u64;
        for _ in 0..64 {
            let sector = rng.below(size);
            let i = t.find(sector).unwrap();
            let l = find(&lines, sector);
            prop_assert_eq!(t.lines[i].start_sectors, l.start);
            for op in [IoOp::Read, IoOp::Write, IoOp::Unmap] {
                let rel = sector - l.start;
                let got = t.lines[i].target.map(op, rel, &mut MapCx::new(&mut rngstate));
                let devname = |d: u32| -> usize { t.devs[d as usize].name[1..].parse().unwrap() };
                let got = match got {
                    Map::Remap { dev, sector } | Map::Track { dev, sector, .. } | Map::Hold { dev, sector, .. } => {
                        Where::Dev(devname(dev), sector)
                    }
                    Map::ZeroFill => Where::Zero,
                    Map::Done(IoStatus::Success) => Where::Dropped,
                    Map::Done(_) => Where::Error,
                };
                prop_assert_eq!(got, model(l, op, rel), "{:?} at rel {} of {:?}", op, rel, l);
            }
        }
    }
}

/// One dm I/O and what the model expects of it.
fn run_case(seed: u64, bs_case: usize) {
    let mut rng = Rng(seed);
    let dev_bs: [u32; DEVS] = [[512, 512, 512], [4096, 4096, 4096], [512, 4096, 512]][bs_case];
    let dev_spb = dev_bs.map(|b| b as u64 / 512);
    let max_spb = *dev_spb.iter().max().unwrap();
    let r = Rig::new(1);
    let mut mem: Vec<Vec<u8>> = Vec::new();
    for (i, &b) in dev_bs.iter().enumerate() {
        let name = format!("D{i}");
        r.malloc(&name, DEV_SECTORS * 512 / b as u64, b);
        let data: Vec<u8> = (0..DEV_SECTORS * 512).map(|_| rng.next() as u8).collect();
        r.write_raw(&name, 0, &data);
        mem.push(data);
    }
    let lines = random_table(&mut rng, max_spb, &dev_spb);
    let spb = table_spb(&lines, &dev_spb);
    let bs = spb * 512;
    let table_text = text(&lines);
    r.create("m", Some(&table_text))
        .unwrap_or_else(|e| panic!("{table_text}: {e}"));
    let size_blocks = lines.iter().map(|l| l.len).sum::<u64>() / spb;
    let has_zero = lines.iter().any(|l| matches!(l.t, T::Zero));
    let mut c = r.client("m", MAIN, 1);
    for step in 0..40 {
        let op = match rng.below(100) {
            0..=39 => IoOp::Read,
            40..=79 => IoOp::Write,
            80..=87 => IoOp::Unmap,
            88..=94 => IoOp::WriteZeroes,
            _ => IoOp::Flush,
        };
        if op == IoOp::Flush {
            assert_eq!(c.run_nodata(&r, op, 0, 0), IoStatus::Success, "{table_text} flush");
            continue;
        }
        let off = rng.below(size_blocks);
        let n = 1 + rng.below((size_blocks - off).min(48));
        let bytes = (n * bs) as usize;
        // The data lives inside a larger buffer, cut into 1-4 windows at random byte positions.
        let pad = rng.below(512) as usize;
        let buf = DmaBuf::new(bytes + pad + 512);
        let src: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
        let guard: u8 = 0x5a;
        buf.bytes_mut().fill(guard);
        if op == IoOp::Write {
            buf.bytes_mut()[pad..pad + bytes].copy_from_slice(&src);
        }
        // Cuts at multiples of 64 bytes (malloc copies 8-byte words: segment lengths must be
        // multiples of 8); not at block boundaries, so children get windows that start and end
        // inside the caller's segments.
        let mut cuts: Vec<usize> = (0..rng.below(4))
            .map(|_| 64 * (1 + rng.below(bytes as u64 / 64 - 1)) as usize)
            .collect();
        cuts.sort();
        cuts.dedup();
        let mut iovs = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().chain([bytes]) {
            iovs.push(IoVec {
                buf: buf.clone(),
                offset_bytes: (pad + at) as u32,
                len_bytes: (cut - at) as u32,
            });
            at = cut;
        }
        if !op.has_data() {
            iovs.clear();
        }
        assert!(c.start_sg(&r, op, off, n, iovs, step), "requeued");
        let got = c.wait(&r, 1, Duration::from_secs(10))[0].1;
        // Model.
        let unsupported = op == IoOp::WriteZeroes && has_zero;
        let mut failed = false;
        let mut expect = vec![0u8; bytes];
        for s in 0..n * spb {
            let sector = off * spb + s;
            let l = find(&lines, sector);
            let w = model(l, op, sector - l.start);
            let range = (s * 512) as usize..(s * 512 + 512) as usize;
            match w {
                Where::Error => failed = true,
                Where::Zero | Where::Dropped => {}
                Where::Dev(d, ds) => {
                    let dr = (ds * 512) as usize..(ds * 512 + 512) as usize;
                    if unsupported {
                        continue;
                    }
                    match op {
                        IoOp::Read => expect[range].copy_from_slice(&mem[d][dr]),
                        IoOp::Write => mem[d][dr].copy_from_slice(&src[range]),
                        _ => mem[d][dr].fill(0),
                    }
                }
            }
        }
        let want = if unsupported {
            IoStatus::Unsupported
        } else if failed {
            IoStatus::Failed
        } else {
            IoStatus::Success
        };
        assert_eq!(got, want, "{table_text}step {step}: {op:?} {off}+{n} blocks");
        let b = buf.bytes();
        assert!(b[..pad].iter().all(|&x| x == guard), "bytes before the window touched");
        assert!(
            b[pad + bytes..].iter().all(|&x| x == guard),
            "bytes after the window touched"
        );
        if op == IoOp::Read && !failed {
            if let Some(p) = (0..bytes).find(|&i| b[pad + i] != expect[i]) {
                panic!(
                    "{table_text}step {step}: read {off}+{n} blocks: byte {p} (sector {}) is {:#x}, model says {:#x}",
                    off * spb + p as u64 / 512,
                    b[pad + p],
                    expect[p]
                );
            }
        }
        if op == IoOp::Write {
            assert_eq!(&b[pad..pad + bytes], &src[..], "a write changed the caller's buffer");
        }
        drop(b);
        if std::env::var("DM_DEBUG").is_ok() {
            for (i, m) in mem.iter().enumerate() {
                let name = format!("D{i}");
                let got = r.read_raw(&name, 0, DEV_SECTORS * 512 / dev_bs[i] as u64);
                if let Some(p) = (0..got.len()).find(|&j| got[j] != m[j]) {
                    panic!("after step {step}: {name} differs from the model at sector {}", p / 512);
                }
            }
        }
    }
    c.close(&r);
    r.remove("m", false).unwrap();
    for (i, m) in mem.iter().enumerate() {
        let name = format!("D{i}");
        let got = r.read_raw(&name, 0, DEV_SECTORS * 512 / dev_bs[i] as u64);
        if let Some(p) = (0..got.len()).find(|&j| got[j] != m[j]) {
            panic!(
                "{table_text}: {name} differs from the model at byte {p} (sector {})",
                p / 512
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn data_path_matches_model(seed in 1u64..u64::MAX, bs_case in 0usize..3) {
        run_case(seed, bs_case);
    }
}
