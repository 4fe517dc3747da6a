//! Crash matrix through the front door: NBD clients write verifiable patterns into keel-tgt —
//! an md raid1 over two uring bdevs on files (export `mirror`), a dm linear over a second
//! such raid1 (export `lin`) and an md raid10 near-2 over four (export `ten`) — while keel-tgt
//! is SIGKILLed at a random moment, over and over (at least 20 kill points, seeds printed): the
//! first kills land in the arrays' initial resync, later ones in the bitmap-guided resyncs
//! after each unclean restart. Each restart runs `keel-tgt -c` on the config saved
//! before the first load; the arrays assemble from their superblocks (unclean: they resync),
//! and every block whose write the client saw acknowledged with FUA, or acknowledged before a
//! FLUSH whose reply came back, must read back that generation or a later one the client sent.
//! A block never reads as something no client wrote there. At the end, once the resyncs are
//! done and keel-tgt stopped cleanly, every array's copies compare equal byte for byte on the
//! member files and `mdadm --examine` agrees with Keel's superblock on every member.
//!
//! Each 4 KiB block carries (export, block, generation) in a header and a body derived from
//! them, so a stale, torn or misplaced block is told from a good one. `KEEL_CRASH_SEED=N` replays
//! one run; `KEEL_CRASH_KILLS=N` changes the number of kill points.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Target;
use keel_nbd::client::BlockingClient;
use keel_nbd::consts::{CMD_FLAG_FUA, CMD_FLUSH, CMD_WRITE};

const BLOCK: usize = 4096;
/// Blocks each client writes into (the first 16 MiB of each export).
const BLOCKS: u64 = 4096;
const MAGIC: u64 = 0x4b45_454c_4e42_4431; // "KEELNBD1"
const EXPORTS: [&str; 3] = ["mirror", "lin", "ten"];
/// Member files: u0/u1 the raid1 `mirror`, u2/u3 the raid1 under `lin`, u4..u7 the raid10 `ten`.
const FILES: usize = 8;

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The content of `block` of export `e` at generation `gen`.
fn pattern(e: u32, block: u64, gen: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&MAGIC.to_le_bytes());
    out[8..12].copy_from_slice(&e.to_le_bytes());
    out[12..20].copy_from_slice(&block.to_le_bytes());
    out[20..28].copy_from_slice(&gen.to_le_bytes());
    let mut x = gen.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ block ^ (u64::from(e) << 56) | 1;
    for chunk in out[28..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// The generation a block holds: `Some(0)` for never written, `None` for content that is no
/// generation of this block (torn, stale from elsewhere, garbage).
fn generation(e: u32, block: u64, data: &[u8]) -> Option<u64> {
    if data.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let gen = u64::from_le_bytes(data[20..28].try_into().unwrap());
    let mut want = vec![0u8; BLOCK];
    pattern(e, block, gen, &mut want);
    (want == data).then_some(gen)
}

/// What the clients know of each block of one export.
#[derive(Clone)]
struct Model {
    /// The highest generation acknowledged durable (FUA, or before an acknowledged FLUSH).
    durable: Vec<u64>,
    /// The highest generation ever sent (acknowledged or not).
    sent: Vec<u64>,
    next_gen: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            durable: vec![0; BLOCKS as usize],
            sent: vec![0; BLOCKS as usize],
            next_gen: 1,
        }
    }
}

fn connect(sock: &Path, export: &str) -> Option<BlockingClient<UnixStream>> {
    let s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    BlockingClient::connect(s, export, true).ok()
}

/// Reads every block of export `e` and checks it against the model. Returns the number of
/// blocks that held data.
fn verify(sock: &Path, e: u32, m: &Model, seed: u64, kill: usize) -> usize {
    let mut c = connect(sock, EXPORTS[e as usize]).expect("connect after restart");
    let chunk = 256u64;
    let mut written = 0;
    for first in (0..BLOCKS).step_by(chunk as usize) {
        let data = c
            .read(first * BLOCK as u64, (chunk as usize * BLOCK) as u32)
            .unwrap()
            .expect("read after restart");
        for (i, d) in data.chunks(BLOCK).enumerate() {
            let b = first + i as u64;
            let (lo, hi) = (m.durable[b as usize], m.sent[b as usize]);
            let got = generation(e, b, d);
            assert!(
                got.is_some_and(|g| g >= lo && g <= hi),
                "seed {seed} kill {kill}: {} block {b} holds {got:?}, the client had it durable at \
                 generation {lo} and sent up to {hi}",
                EXPORTS[e as usize]
            );
            if got != Some(0) {
                written += 1;
            }
        }
    }
    c.disconnect().ok();
    written
}

/// A write's blocks and generation: (first block, blocks, generation).
type Span = (u64, u64, u64);

/// Writes into export `e` until the connection dies (the kill), keeping `m` up to date: up to
/// 8 writes in flight, each 1-4 blocks, a quarter with FUA, a FLUSH every 16 writes.
fn writer(sock: PathBuf, e: u32, mut m: Model, seed: u64, stop: Arc<AtomicBool>) -> (Model, u64) {
    let mut rng = Rng(seed | 1);
    let Some(mut c) = connect(&sock, EXPORTS[e as usize]) else {
        return (m, 0);
    };
    // In flight, by cookie: (first block, blocks, generation, fua). Acknowledged writes wait
    // for a flush in `acked`.
    let mut inflight: std::collections::HashMap<u64, (u64, u64, u64, bool)> = Default::default();
    let mut acked: Vec<Span> = Vec::new();
    let mut flush: Option<(u64, Vec<Span>)> = None;
    let mut done = 0u64;
    let mut buf = vec![0u8; 4 * BLOCK];
    let durable = |m: &mut Model, first: u64, n: u64, gen: u64| {
        for b in first..first + n {
            let d = &mut m.durable[b as usize];
            *d = (*d).max(gen);
        }
    };
    loop {
        while inflight.len() < 8 && !stop.load(Ordering::Relaxed) {
            if flush.is_none() && done % 16 == 15 {
                let Ok(cookie) = c.send(0, CMD_FLUSH, 0, 0, &[]) else {
                    return (m, done);
                };
                flush = Some((cookie, std::mem::take(&mut acked)));
                done += 1;
                continue;
            }
            let n = 1 + rng.below(4);
            let first = rng.below(BLOCKS - n + 1);
            // Never two writes in flight to one block: their order would be undefined.
            if inflight.values().any(|&(f, k, _, _)| first < f + k && f < first + n) {
                continue;
            }
            let gen = m.next_gen;
            m.next_gen += 1;
            for (i, blk) in buf.chunks_mut(BLOCK).take(n as usize).enumerate() {
                pattern(e, first + i as u64, gen, blk);
            }
            for b in first..first + n {
                m.sent[b as usize] = gen;
            }
            let fua = rng.below(4) == 0;
            let flags = if fua { CMD_FLAG_FUA } else { 0 };
            let Ok(cookie) = c.send(
                flags,
                CMD_WRITE,
                first * BLOCK as u64,
                (n as usize * BLOCK) as u32,
                &buf[..n as usize * BLOCK],
            ) else {
                return (m, done);
            };
            inflight.insert(cookie, (first, n, gen, fua));
            done += 1;
        }
        if inflight.is_empty() && flush.is_none() {
            return (m, done);
        }
        let Ok(r) = c.reply() else {
            return (m, done);
        };
        assert_eq!(r.error, 0, "seed {seed}: a write or flush failed before the kill");
        if let Some((cookie, covered)) = &flush {
            if *cookie == r.cookie {
                for &(f, k, g) in covered {
                    durable(&mut m, f, k, g);
                }
                flush = None;
                continue;
            }
        }
        let (first, n, gen, fua) = inflight.remove(&r.cookie).expect("a reply to a request in flight");
        if fua {
            durable(&mut m, first, n, gen);
        } else {
            acked.push((first, n, gen));
        }
    }
}

fn sh(t: &Target, args: &[&str]) {
    t.plugin(args);
}

#[test]
fn sigkill_never_loses_acknowledged_writes() {
    let kills: usize = std::env::var("KEEL_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(22);
    let seed: u64 = std::env::var("KEEL_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash matrix seed {seed} (KEEL_CRASH_SEED={seed} replays it), {kills} kill points");
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path();
    for i in 0..FILES {
        let f = std::fs::File::create(dir.join(format!("u{i}.img"))).unwrap();
        f.set_len(24 << 20).unwrap();
    }
    let sock = dir.join("nbd.sock");
    let cfg = dir.join("saved.json");
    {
        let t = Target::start(&["-m", "0x3"]);
        for i in 0..FILES {
            let f = dir.join(format!("u{i}.img"));
            t.ok(&["bdev_uring_create", f.to_str().unwrap(), &format!("U{i}"), "4096"]);
        }
        sh(&t, &["md_create", "-n", "mirror", "-l", "raid1", "U0", "U1"]);
        sh(&t, &["md_create", "-n", "inner", "-l", "raid1", "U2", "U3"]);
        sh(
            &t,
            &[
                "md_create",
                "-n",
                "ten",
                "-l",
                "raid10",
                "-c",
                "64",
                "U4",
                "U5",
                "U6",
                "U7",
            ],
        );
        let size = t.json(&["bdev_get_bdevs", "-b", "inner"])[0]["num_blocks"]
            .as_u64()
            .unwrap()
            * 8;
        sh(
            &t,
            &["dm_create", "lin", "--table", &format!("0 {size} linear inner 0")],
        );
        sh(&t, &["nbd_server_start", &format!("unix:{}", sock.display())]);
        sh(&t, &["nbd_server_add_export", "mirror"]);
        sh(&t, &["nbd_server_add_export", "lin"]);
        sh(&t, &["nbd_server_add_export", "ten"]);
        std::fs::write(&cfg, t.ok(&["save_config"])).unwrap();
        assert!(t.stop().success());
    }
    let mut models = [Model::new(), Model::new(), Model::new()];
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut total_writes = 0;
    for kill in 0..kills {
        let rpc_dir = tempfile::tempdir().unwrap();
        let rpc = rpc_dir.path().join("spdk.sock");
        let mut t = Target::start_at(rpc_dir, rpc, &["-m", "0x3", "-c", cfg.to_str().unwrap()]);
        for e in 0..EXPORTS.len() as u32 {
            verify(&sock, e, &models[e as usize], seed, kill);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..EXPORTS.len() as u32)
            .map(|e| {
                let (s, m, st) = (sock.clone(), models[e as usize].clone(), stop.clone());
                let wseed = rng.next();
                std::thread::spawn(move || writer(s, e, m, wseed, st))
            })
            .collect();
        let delay = Duration::from_millis(50 + rng.below(500));
        std::thread::sleep(delay);
        t.child.kill().unwrap();
        t.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for (e, w) in writers.into_iter().enumerate() {
            let (m, n) = w.join().unwrap();
            models[e] = m;
            total_writes += n;
        }
        println!(
            "kill {kill}: after {} ms, {total_writes} requests so far",
            delay.as_millis()
        );
    }
    // A last clean start: everything acknowledged durable is there, and the arrays are whole.
    let mut t = Target::start(&["-m", "0x3", "-c", cfg.to_str().unwrap()]);
    let mut written = 0;
    for e in 0..EXPORTS.len() as u32 {
        written += verify(&sock, e, &models[e as usize], seed, kills);
    }
    assert!(
        total_writes > 200 && written > 100,
        "the clients got work done: {total_writes} requests, {written} blocks"
    );
    let durable = models
        .iter()
        .map(|m| m.durable.iter().filter(|&&g| g > 0).count())
        .sum::<usize>();
    assert!(durable > 50, "some writes were acknowledged durable: {durable}");
    println!(
        "crash matrix: {kills} kills, {total_writes} requests, {durable} blocks durable, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The bitmap-guided resyncs end; a clean stop writes clean superblocks.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrays = t.plugin(&["md_get_arrays"]);
        let busy: Vec<String> = arrays
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["sync_action"] != "idle" || a["state"].as_str().unwrap().contains("degraded"))
            .map(|a| a.to_string())
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: arrays did not settle: {busy:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = t.rpc(&["spdk_kill_instance", "SIGTERM"]);
    common::wait_exit(&mut t.child, Duration::from_secs(20)).expect("keel-tgt exits");
    members_agree(dir, seed);
}

/// After the clean stop: the copies of every array compare equal over the data area (raid1
/// pairs, and raid10 near-2 over four, whose members pair the same way), and mdadm --examine
/// agrees with Keel's superblock on every member (uuid, events, clean state, role).
fn members_agree(dir: &Path, seed: u64) {
    use keel_md::superblock::{Superblock, V1_2_SUPER_OFFSET_SECTORS};
    use std::os::unix::fs::FileExt;
    let read = |i: usize, at: u64, len: u64| {
        let f = std::fs::File::open(dir.join(format!("u{i}.img"))).unwrap();
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, at).unwrap();
        b
    };
    let sbs: Vec<Superblock> = (0..FILES)
        .map(|i| Superblock::decode(&read(i, 4096, 4096), V1_2_SUPER_OFFSET_SECTORS).unwrap())
        .collect();
    for (a, b) in [(0, 1), (2, 3), (4, 5), (6, 7)] {
        let (sa, sb) = (&sbs[a], &sbs[b]);
        assert_eq!(
            (sa.set_uuid, sa.events),
            (sb.set_uuid, sb.events),
            "seed {seed}: u{a} u{b}"
        );
        assert!(
            sa.is_clean() && sb.is_clean(),
            "seed {seed}: u{a}/u{b} not clean after a clean stop"
        );
        let off = sa.data_offset_sectors * 512;
        let len = sa.size_sectors.min(sa.data_size_sectors) * 512;
        assert!(
            read(a, off, len) == read(b, off, len),
            "seed {seed}: the copies on u{a} and u{b} differ"
        );
    }
    for (i, sb) in sbs.iter().enumerate() {
        let m = keel_testkit::mdadm_run(&["--examine"], &dir.join(format!("u{i}.img")));
        let f = |l: &str| keel_testkit::mdadm_field(&m, l).to_string();
        assert_eq!(
            f("Array UUID"),
            Superblock::uuid_text(&sb.set_uuid),
            "seed {seed}: u{i}"
        );
        assert_eq!(f("Events"), sb.events.to_string(), "seed {seed}: u{i}");
        assert_eq!(f("State"), "clean", "seed {seed}: u{i}");
        let role = match sb.own_role() {
            keel_md::superblock::Role::Active(r) => format!("Active device {r}"),
            other => format!("{other:?}"),
        };
        assert_eq!(f("Device Role"), role, "seed {seed}: u{i}");
    }
}
