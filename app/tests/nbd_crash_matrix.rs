//! Crash matrix through the front door: NBD clients write verifiable patterns into keel-tgt —
//! an md raid1 over two uring bdevs on files (export `mirror`), a dm table over a second such
//! raid1, half linear and half striped (export `lin`), an md raid10 near-2 over four (export `ten`), an md raid5 over
//! three (export `r5`) and an md raid6 over four (export `r6`) — while keel-tgt is SIGKILLed
//! at a random moment, over and over (at least 20 kill points, seeds printed): the first kills
//! land in the arrays' initial resync (raid5: its initial recovery onto the last member),
//! later ones in the bitmap-guided resyncs after each unclean restart; every third round
//! fails, removes and re-adds a member of `mirror`, `r5` and `r6` first (the kill lands in
//! their recovery), every third swaps `lin`'s table (load, suspend, resume) under the writers
//! and takes a member out of `r5` and two out of `r6` (the kill lands while they run
//! degraded; the next start assembles them with the members back, which recover).
//!
//! The parity arrays are not in the saved configuration: every start assembles them
//! (`md_assemble`) and exports them. Killed while degraded or recovering they are dirty and
//! degraded, and Linux's rule (the write hole: a stripe whose data and parity writes were
//! torn by the kill cannot rebuild its lost chunk) refuses them: the refusal must name the
//! write hole, and the test then assembles with `force` as an administrator would. In such a
//! start, the blocks of every stripe that had a write in flight at the kill are unknown (any
//! content) until a client writes them durably again; every other block is checked as
//! always. Each restart runs `keel-tgt -c` on the config saved
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
/// Blocks each client of the copy levels writes into (the first 16 MiB of each export).
const BLOCKS: u64 = 4096;
/// Blocks the clients of the parity exports write into (the first 8 MiB): they resync and
/// recover whole members in every start (the bitmap's one chunk covers them), so they are kept
/// small to bound the run's time.
const PARITY_BLOCKS: u64 = 2048;
/// Size of a member file of a parity array (the others: 24 MiB).
const PARITY_FILE_BYTES: u64 = 8 << 20;
const MAGIC: u64 = 0x4b45_454c_4e42_4431; // "KEELNBD1"
const EXPORTS: [&str; 5] = ["mirror", "lin", "ten", "r5", "r6"];
/// Member files: u0/u1 the raid1 `mirror`, u2/u3 the raid1 under `lin`, u4..u7 the raid10
/// `ten`, u8..u10 the raid5 `r5`, u11..u14 the raid6 `r6`.
const FILES: usize = 15;
/// The parity arrays: (name, members, the member a recovery round re-adds, the members a
/// degraded round takes out).
const PARITY: [(&str, &[&str], &str, &[&str]); 2] = [
    ("r5", &["U8", "U9", "U10"], "U9", &["U10"]),
    ("r6", &["U11", "U12", "U13", "U14"], "U12", &["U13", "U14"]),
];
/// Chunk of the parity arrays, in 4 KiB blocks (64 KiB); both have two data members, so a
/// stripe is 32 blocks.
const PARITY_STRIPE_BLOCKS: u64 = 2 * 16;

/// `lin`'s table over the raid1 `inner`, as many sectors as the clients write: the first half a
/// linear target, the second half a two-leg striped target with 4 KiB chunks over two further
/// ranges of `inner` (multi-block writes there are split across the legs).
fn lin_table() -> String {
    let half = BLOCKS * 8 / 2;
    let leg = half / 2;
    format!(
        "0 {half} linear inner 0\n{half} {half} striped 2 8 inner {half} inner {}\n",
        half + leg
    )
}

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
    /// Blocks of a stripe torn by a kill of a dirty, degraded parity array started with force
    /// (the write hole): any content until a durable write.
    unknown: Vec<bool>,
    /// The writes (first block, blocks) that were in flight when the last round's connection
    /// died.
    at_kill: Vec<(u64, u64)>,
}

impl Model {
    fn new(blocks: u64) -> Model {
        Model {
            durable: vec![0; blocks as usize],
            sent: vec![0; blocks as usize],
            next_gen: 1,
            unknown: vec![false; blocks as usize],
            at_kill: Vec::new(),
        }
    }

    fn blocks(&self) -> u64 {
        self.durable.len() as u64
    }

    /// The start after the kill was forced: every stripe a write in flight at the kill touched
    /// is unknown.
    fn torn_stripes_unknown(&mut self) -> usize {
        let mut n = 0;
        for &(first, blocks) in &self.at_kill {
            let lo = first / PARITY_STRIPE_BLOCKS * PARITY_STRIPE_BLOCKS;
            let hi = ((first + blocks).div_ceil(PARITY_STRIPE_BLOCKS) * PARITY_STRIPE_BLOCKS).min(self.blocks());
            for b in lo..hi {
                if !self.unknown[b as usize] {
                    self.unknown[b as usize] = true;
                    n += 1;
                }
            }
        }
        n
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
    for first in (0..m.blocks()).step_by(chunk as usize) {
        let data = c
            .read(first * BLOCK as u64, (chunk as usize * BLOCK) as u32)
            .unwrap()
            .expect("read after restart");
        for (i, d) in data.chunks(BLOCK).enumerate() {
            let b = first + i as u64;
            if m.unknown[b as usize] {
                continue;
            }
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
    m.at_kill.clear();
    let Some(mut c) = connect(&sock, EXPORTS[e as usize]) else {
        return (m, 0);
    };
    // The connection died (the kill): what was in flight (and a write whose send failed).
    let died =
        |mut m: Model, inflight: &std::collections::HashMap<u64, (u64, u64, u64, bool)>, extra: Option<(u64, u64)>| {
            m.at_kill = inflight.values().map(|&(f, k, _, _)| (f, k)).chain(extra).collect();
            m
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
            m.unknown[b as usize] = false;
        }
    };
    loop {
        while inflight.len() < 8 && !stop.load(Ordering::Relaxed) {
            if flush.is_none() && done % 16 == 15 {
                let Ok(cookie) = c.send(0, CMD_FLUSH, 0, 0, &[]) else {
                    return (died(m, &inflight, None), done);
                };
                flush = Some((cookie, std::mem::take(&mut acked)));
                done += 1;
                continue;
            }
            let n = 1 + rng.below(4);
            let first = rng.below(m.blocks() - n + 1);
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
                return (died(m, &inflight, Some((first, n))), done);
            };
            inflight.insert(cookie, (first, n, gen, fua));
            done += 1;
        }
        if inflight.is_empty() && flush.is_none() {
            return (m, done);
        }
        let Ok(r) = c.reply() else {
            return (died(m, &inflight, None), done);
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

/// One JSON-RPC call straight over keel-tgt's socket: the result, or (code, message). The
/// rounds' control calls go this way (a spdk-rpc process per call costs ~0.3 s of this
/// shared machine each; the rounds make a dozen), the setup's through spdk-rpc as ever.
fn call(t: &Target, method: &str, params: serde_json::Value) -> Result<serde_json::Value, (i64, String)> {
    use std::io::Write;
    let mut s = UnixStream::connect(&t.sock).expect("connect to keel-tgt's RPC socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
    s.write_all(req.to_string().as_bytes()).unwrap();
    let reply: serde_json::Value = serde_json::Deserializer::from_reader(&s)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{method}: no reply"))
        .unwrap_or_else(|e| panic!("{method}: bad reply: {e}"));
    match reply.get("error") {
        Some(e) => Err((
            e["code"].as_i64().unwrap_or(0),
            e["message"].as_str().unwrap_or("").to_string(),
        )),
        None => Ok(reply["result"].clone()),
    }
}

/// [`call`] that must succeed.
fn call_ok(t: &Target, method: &str, params: serde_json::Value) -> serde_json::Value {
    call(t, method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e:?}"))
}

/// `member` leaves `array` (md_fail, md_remove once its I/O drained).
fn fail_remove(t: &Target, array: &str, member: &str, seed: u64, kill: usize) {
    let p = serde_json::json!({"name": array, "bdev": member});
    call_ok(t, "md_fail", p.clone());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match call(t, "md_remove", p.clone()) {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < until,
                "seed {seed} kill {kill}: md_remove {array} {member}: {e:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `member` leaves `array` and comes back (md_add: a re-add): a recovery onto it starts, which
/// the round's kill interrupts or follows.
fn recover(t: &Target, array: &str, member: &str, seed: u64, kill: usize) {
    fail_remove(t, array, member, seed, kill);
    call_ok(t, "md_add", serde_json::json!({"name": array, "bdev": member}));
}

/// Whether every member of `array` is in sync and no sync runs (md_get_arrays' view
/// `arrays`). A parity array loses a member only then: failing one while the resync after an
/// unclean start has not yet passed the stripes the kill tore leaves them degraded with stale
/// parity — the write hole, which Linux does not prevent either (md only refuses to *start*
/// such an array without force).
fn healthy(arrays: &serde_json::Value, array: &str) -> bool {
    arrays
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == array)
        .is_some_and(|a| {
            a["sync_action"] == "idle" && a["members"].as_array().unwrap().iter().all(|m| m["state"] == "in_sync")
        })
}

/// Starts parity array `name` over `members` (not in the saved configuration) and exports
/// it. Auto-assembly may have started it already; otherwise `md_assemble`, and when that
/// refuses a dirty, degraded array (the write hole) `md_assemble` with `force`. Members the
/// running array lacks are added back. Returns whether the start was forced; `uuid` is the
/// array's (with it, md_assemble answers an array auto-assembly started as success).
fn start_parity(t: &Target, name: &str, uuid: &str, members: &[&str], seed: u64, kill: usize) -> bool {
    let mut p = serde_json::json!({"name": name, "uuid": uuid, "members": members});
    let forced = match call(t, "md_assemble", p.clone()) {
        Ok(_) => false,
        Err((code, msg)) => {
            assert!(
                code == -16 && msg.contains("write hole"),
                "seed {seed} kill {kill}: md_assemble {name} refused for another reason than the write hole: {code} {msg}"
            );
            p["force"] = true.into();
            call_ok(t, "md_assemble", p);
            true
        }
    };
    let arrays = call_ok(t, "md_get_arrays", serde_json::json!({"name": name}));
    for m in members {
        if !arrays[0]["members"].as_array().unwrap().iter().any(|h| h["bdev"] == *m) {
            call_ok(t, "md_add", serde_json::json!({"name": name, "bdev": m}));
        }
    }
    call_ok(t, "nbd_server_add_export", serde_json::json!({"bdev_name": name}));
    forced
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
        f.set_len(if i >= 8 { PARITY_FILE_BYTES } else { 24 << 20 }).unwrap();
    }
    let sock = dir.join("nbd.sock");
    let cfg = dir.join("saved.json");
    let mut uuids: Vec<String> = Vec::new();
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
        let inner_sectors = t.json(&["bdev_get_bdevs", "-b", "inner"])[0]["num_blocks"]
            .as_u64()
            .unwrap()
            * 8;
        assert!(inner_sectors >= BLOCKS * 8, "inner holds lin's table");
        sh(&t, &["dm_create", "lin", "--table", &lin_table()]);
        sh(&t, &["nbd_server_start", &format!("unix:{}", sock.display())]);
        sh(&t, &["nbd_server_add_export", "mirror"]);
        sh(&t, &["nbd_server_add_export", "lin"]);
        sh(&t, &["nbd_server_add_export", "ten"]);
        std::fs::write(&cfg, t.ok(&["save_config"])).unwrap();
        // Built as Linux builds them: raid5 by recovery onto its last member, raid6 by resync.
        for (name, members, _, _) in PARITY {
            let mut args = vec![
                "md_create",
                "-n",
                name,
                "-l",
                if name == "r5" { "raid5" } else { "raid6" },
                "-c",
                "64",
            ];
            args.extend(members);
            sh(&t, &args);
            uuids.push(
                t.plugin(&["md_get_arrays", name])[0]["uuid"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert!(t.stop().success());
    }
    let mut models: Vec<Model> = EXPORTS
        .iter()
        .map(|e| Model::new(if e.starts_with('r') { PARITY_BLOCKS } else { BLOCKS }))
        .collect();
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut total_writes = 0;
    let (mut recoveries, mut swaps) = (0, 0);
    let (mut forced, mut degraded_kills, mut parity_recoveries, mut unknown_blocks) = (0, 0, 0, 0);
    for kill in 0..kills {
        let rpc_dir = tempfile::tempdir().unwrap();
        let rpc = rpc_dir.path().join("spdk.sock");
        let mut t = Target::start_at(rpc_dir, rpc, &["-m", "0x3", "-c", cfg.to_str().unwrap()]);
        for (i, (name, members, _, _)) in PARITY.iter().enumerate() {
            if start_parity(&t, name, &uuids[i], members, seed, kill) {
                forced += 1;
                unknown_blocks += models[3 + i].torn_stripes_unknown();
            }
        }
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
        // Every third round the kill lands in a recovery (U1 failed, removed and added back to
        // `mirror` while the clients write), every third in or after a table swap of `lin`.
        // The parity arrays take part only when healthy (a member cannot leave a raid5 that is
        // still rebuilding another) and not resyncing (see `healthy`); otherwise a sync is
        // under way anyway.
        let arrays = if kill % 3 == 0 {
            serde_json::Value::Null
        } else {
            call_ok(&t, "md_get_arrays", serde_json::json!({}))
        };
        let action = match kill % 3 {
            1 => {
                recover(&t, "mirror", "U1", seed, kill);
                for (name, _, member, _) in PARITY {
                    if healthy(&arrays, name) {
                        recover(&t, name, member, seed, kill);
                        parity_recoveries += 1;
                    }
                }
                recoveries += 1;
                "recovery"
            }
            2 => {
                sh(&t, &["dm_load", "lin", "--table", &lin_table()]);
                sh(&t, &["dm_suspend", "lin"]);
                sh(&t, &["dm_resume", "lin"]);
                swaps += 1;
                for (name, _, _, out) in PARITY {
                    if healthy(&arrays, name) {
                        for m in out {
                            fail_remove(&t, name, m, seed, kill);
                        }
                        degraded_kills += 1;
                    }
                }
                "table swap, parity arrays degraded"
            }
            _ => "writes",
        };
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
            "kill {kill} ({action}): after {} ms, {total_writes} requests so far",
            delay.as_millis()
        );
    }
    // A last clean start: everything acknowledged durable is there, and the arrays are whole.
    let mut t = Target::start(&["-m", "0x3", "-c", cfg.to_str().unwrap()]);
    for (i, (name, members, _, _)) in PARITY.iter().enumerate() {
        if start_parity(&t, name, &uuids[i], members, seed, kills) {
            forced += 1;
            unknown_blocks += models[3 + i].torn_stripes_unknown();
        }
    }
    let mut written = 0;
    for e in 0..EXPORTS.len() as u32 {
        written += verify(&sock, e, &models[e as usize], seed, kills);
    }
    assert!(
        total_writes > 200 && written > 100,
        "the clients got work done: {total_writes} requests, {written} blocks"
    );
    assert!(
        recoveries >= kills / 3 && swaps >= kills / 3 - 1,
        "kill points in recoveries {recoveries}, in table swaps {swaps}"
    );
    assert!(
        parity_recoveries >= 2 && degraded_kills >= 2 && forced >= 2,
        "parity arrays: kill points in recoveries {parity_recoveries}, while degraded {degraded_kills}, forced starts \
         {forced}"
    );
    let durable = models
        .iter()
        .map(|m| m.durable.iter().filter(|&&g| g > 0).count())
        .sum::<usize>();
    assert!(durable > 50, "some writes were acknowledged durable: {durable}");
    println!(
        "crash matrix: {kills} kills, {total_writes} requests, {durable} blocks durable, {:.1} s; parity arrays: \
         {parity_recoveries} kills in re-add recoveries, {degraded_kills} while degraded, {forced} forced starts (dirty and degraded), {unknown_blocks} blocks of \
         torn stripes let go",
        started.elapsed().as_secs_f64()
    );
    // The bitmap-guided resyncs end; a clean stop writes clean superblocks.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrays = call_ok(&t, "md_get_arrays", serde_json::json!({}));
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
    // The parity arrays' own comparison: parity matches the data everywhere.
    for (name, _, _, _) in PARITY {
        call_ok(
            &t,
            "md_set_sync_action",
            serde_json::json!({"name": name, "action": "check"}),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrays = call_ok(&t, "md_get_arrays", serde_json::json!({}));
        let done: Vec<&serde_json::Value> = arrays
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| PARITY.iter().any(|p| a["name"] == p.0))
            .filter(|a| a["sync_action"] == "idle" && a["last_sync_action"] == "check")
            .collect();
        if done.len() == PARITY.len() {
            for a in done {
                assert_eq!(a["mismatch_cnt"], 0, "seed {seed}: {} after the check", a["name"]);
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the checks did not end: {arrays}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = t.rpc(&["spdk_kill_instance", "SIGTERM"]);
    common::wait_exit(&mut t.child, Duration::from_secs(20)).expect("keel-tgt exits");
    members_agree(dir, seed);
}

/// After the clean stop: the copies of every array compare equal over the data area (raid1
/// pairs, and raid10 near-2 over four, whose members pair the same way; the parity arrays were
/// checked before the stop), and mdadm --examine agrees with Keel's superblock on every member
/// (uuid, events, clean state, role).
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
