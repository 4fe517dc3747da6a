//! The md crash scenario: SIGKILL a process writing to a raid1, raid5 or raid6 on file-backed
//! members, then assemble it again, let the bitmap-guided resync run, and check that it covered
//! only the dirty chunks and that every acknowledged write survived (`shared/specs/md-bitmap.md`
//! §7).
//!
//! The writer is `md/examples/crash_writer.rs`, a process that embeds the same stack (one
//! reactor, uring bdevs over the member files, the array) and logs `ISSUE <block> <gen>` before
//! and `ACK <block> <gen>` after every 4 KiB write; the content of a write encodes its block and
//! generation ([`fill_block`], a copy of the writer's). The test
//!
//! 1. makes sparse member files and runs `crash_writer --create --stop-after 100` (an array
//!    with an internal bitmap, 100 writes, clean stop); every superblock must say clean and each
//!    bitmap header's `events` must have caught up with its superblock's, or the next assembly
//!    would take the bitmap as stale and resync everything (`md-bitmap.md` §6);
//! 2. runs `crash_writer` again (assemble), reads its log until [`CRASH_ACKS`] writes were
//!    acknowledged, SIGKILLs it and reads the log to its end;
//! 3. reads the members' superblocks and bitmaps from the files: the array must be recorded as
//!    "active" (resync_offset 0), the bitmap must have dirty chunks but not all of them, only
//!    chunks of the written range, and every inconsistent row (raid1: copies that differ; raid5:
//!    member blocks at one offset that do not XOR to zero; raid6 has no layout-free test) must
//!    lie in a dirty chunk of each bitmap;
//! 4. in this process (a deterministic rig), creates uring bdevs over the same files, assembles
//!    the array and runs until `md_get_arrays` shows the resync finished (idle, clean,
//!    last_sync_action "resync"); the member bdevs' I/O statistics say how much the resync read
//!    and wrote: exactly the dirty chunks (plus metadata), not the array — raid1 reads member 0
//!    and writes member 1; raid5/6 read every member's dirty chunks and write only parity that
//!    did not match (at least every inconsistent raid5 row); then `check` must find 0
//!    mismatches, and the written range is read back through the array;
//! 5. checks every block: it holds its last acknowledged generation or a later one that was in
//!    flight at the kill, and blocks never written are still zero; raid1 (after a stop) also
//!    compares the member files over the whole array: identical.
//!
//! The bitmap chunk is mdadm's minimum, 64 MiB (`intent::default_chunk_bytes`), and create has
//! no option to change it, so the members are large and sparse: raid1's are 256 MiB (4 bitmap
//! chunks, writes at 30–50 % of the array: inside chunk 1), the parity levels' 160 MiB (their
//! bitmap counts member sectors: 3 chunks; writes at 45–75 % of the array, which striping maps
//! to the same fraction of each member: inside chunk 1). The resync must skip the clean chunks.
//! One dirty chunk keeps the resync, and the blocks it allocates in the files, at 64 MiB: on a
//! filesystem mounted with `discard` freeing them is what costs time; the parity levels' files,
//! whose thousands of scattered 4 KiB extents cost more, live on tmpfs when there is one.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::uring::{self, UringOpts};
use keel_bdev::{IoOp, IoStats, StatsReset};
use keel_load::testing::BdevRig;
use keel_md::bitmap::{self as bm, BitmapHeader, HEADER_BYTES};
use keel_md::superblock::{Superblock, BLOCK_BYTES, MAX_SECTOR, V1_2_SUPER_OFFSET_SECTORS};
use keel_md::{ArrayInfo, AssembleOpts, MdError, MdRegistry};
use keel_reactor::CoreId;

const MAIN: CoreId = CoreId(0);
/// Size of each member file (sparse).
const MEMBER_BYTES: u64 = 256 << 20;
/// The same for the parity levels (see `scenario`).
const PARITY_MEMBER_BYTES: u64 = 160 << 20;
/// The writes go to `[start, start + len)` percent of the array (all inside bitmap chunk 1).
const RANGE_START_PCT: u64 = 30;
const RANGE_LEN_PCT: u64 = 20;
/// Writes of the create run (then a clean stop).
const CREATE_WRITES: u64 = 100;
/// Acknowledged writes of the crash run before the SIGKILL.
const CRASH_ACKS: usize = 3000;
/// Generations of the crash run start here (the create run's start at 1).
const CRASH_GEN_START: u64 = 1_000_000;
/// The writer's queue depth.
const QD: usize = 8;
/// Bytes per logged block.
const IO_BYTES: usize = 4096;
/// Generous bounds for a slow, shared CI machine.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);
const RESYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// SIGKILL's number (what `Child::kill` sends on Unix).
const SIGKILL: i32 = 9;
/// Chunk of the parity levels (raid1 ignores it).
const CHUNK_KB: u64 = 64;

/// Data members of `level` over `members` (raid1: 1, the array is one member's size).
fn disks_of(level: &str, members: usize) -> u64 {
    match level {
        "raid1" => 1,
        "raid5" => members as u64 - 1,
        "raid6" => members as u64 - 2,
        l => panic!("no scenario for {l}"),
    }
}

/// Metadata the array writes besides the resync (superblocks, bitmap pages): an upper bound.
const META_SLACK_BYTES: u64 = 1 << 20;

/// The content of a write of generation `gen` to 4 KiB block `block` (a copy of the writer's).
fn fill_block(block: u64, gen: u64, buf: &mut [u8]) {
    buf[..8].copy_from_slice(b"KEELCRSH");
    buf[8..16].copy_from_slice(&block.to_le_bytes());
    buf[16..24].copy_from_slice(&gen.to_le_bytes());
    let mut x = (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)) | 1;
    for w in buf[24..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

/// What a 4 KiB block of a member holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Zero,
    Gen(u64),
    Garbage(String),
}

fn classify(block: u64, buf: &[u8]) -> Content {
    if buf == &[0u8; IO_BYTES][..] {
        return Content::Zero;
    }
    if &buf[..8] != b"KEELCRSH" {
        return Content::Garbage("no KEELCRSH magic".into());
    }
    let blk = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    let gen = u64::from_le_bytes(buf[16..24].try_into().unwrap());
    if blk != block {
        return Content::Garbage(format!("says block {blk} (gen {gen})"));
    }
    let mut want = vec![0u8; IO_BYTES];
    fill_block(block, gen, &mut want);
    if want != buf {
        return Content::Garbage(format!("gen {gen} header, but the body does not match (torn?)"));
    }
    Content::Gen(gen)
}

// ---------------------------------------------------------------------------------------------
// The writer process
// ---------------------------------------------------------------------------------------------

/// The `crash_writer` example, built for this test's profile. `cargo test --test crash_resync`
/// does not build examples and an existing binary may be stale, so this runs `cargo build
/// --example` (quick when up to date); if that fails but a binary exists, that one is used.
fn writer_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir.join("examples").join("crash_writer");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "keel-md", "--example", "crash_writer"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(p) => {
            cmd.args(["--profile", p]);
        }
    }
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) if bin.exists() => eprintln!(
            "warning: building crash_writer failed ({}), using the existing {}:\n{}",
            o.status,
            bin.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(o) => panic!(
            "cannot build the crash_writer example ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if bin.exists() => eprintln!("warning: cannot run cargo ({e}), using {}", bin.display()),
        Err(e) => panic!("cannot run cargo to build crash_writer: {e}"),
    }
    assert!(bin.exists(), "{} is missing after building it", bin.display());
    bin
}

/// A running writer: its log lines arrive on `lines` (from a reader thread) until EOF.
struct Writer {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
}

impl Writer {
    fn spawn(bin: &Path, dir: &Path, tag: &str, args: &[String]) -> Writer {
        let stderr_path = dir.join(format!("writer-{tag}.stderr"));
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn crash_writer");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Writer {
            child,
            lines: rx,
            stderr_path,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next line, `None` at EOF; panics (killing the writer) after the deadline.
    fn next_line(&mut self, deadline: Instant, what: &str) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("crash_writer: timed out waiting for {what}; stderr:\n{}", self.stderr());
            }
        }
    }

    fn wait(&mut self, deadline: Instant) -> std::process::ExitStatus {
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("crash_writer did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Every write of both runs, per block in issue order: (generation, acknowledged).
#[derive(Default)]
struct History {
    blocks: HashMap<u64, Vec<(u64, bool)>>,
    issued: usize,
    acked: usize,
    /// The writer's array size and write range in 4 KiB blocks (from its READY line).
    ready: Option<(u64, u64, u64)>,
    stopped: bool,
}

impl History {
    /// Takes one log line; `last` says whether it is the final one (which a kill may cut).
    fn take(&mut self, line: &str, last: bool) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        match (f.first().copied(), num(1), num(2)) {
            (Some("ISSUE"), Some(b), Some(g)) => {
                let h = self.blocks.entry(b).or_default();
                assert!(
                    h.iter().all(|&(_, acked)| acked),
                    "block {b}: gen {g} issued while an earlier write was in flight"
                );
                h.push((g, false));
                self.issued += 1;
            }
            (Some("ACK"), Some(b), Some(g)) => {
                let e = self
                    .blocks
                    .get_mut(&b)
                    .and_then(|h| h.iter_mut().find(|(x, _)| *x == g))
                    .unwrap_or_else(|| panic!("ACK {b} {g} without its ISSUE"));
                assert!(!e.1, "ACK {b} {g} twice");
                e.1 = true;
                self.acked += 1;
            }
            (Some("READY"), _, _) => {
                let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).expect("READY fields");
                self.ready = Some((n(2), n(3), n(4)));
            }
            (Some("STOPPED"), _, _) => self.stopped = true,
            _ if last => eprintln!("note: ignoring a cut last log line {line:?}"),
            _ => panic!("unexpected writer output {line:?}"),
        }
    }

    /// Writes issued but never acknowledged (in flight at the kill).
    fn unacked(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .blocks
            .iter()
            .flat_map(|(&b, h)| h.iter().filter(|e| !e.1).map(move |e| (b, e.0)))
            .collect();
        v.sort();
        v
    }
}

// ---------------------------------------------------------------------------------------------
// On-disk metadata, read from the files
// ---------------------------------------------------------------------------------------------

struct OnDisk {
    sb: Superblock,
    header: BitmapHeader,
    bits: Vec<u8>,
}

impl OnDisk {
    fn read(path: &Path) -> OnDisk {
        let f = File::open(path).expect("open member file");
        let mut buf = vec![0u8; BLOCK_BYTES];
        f.read_exact_at(&mut buf, V1_2_SUPER_OFFSET_SECTORS * 512)
            .expect("read superblock");
        let sb = Superblock::decode(&buf, V1_2_SUPER_OFFSET_SECTORS)
            .unwrap_or_else(|e| panic!("{}: superblock: {e}", path.display()));
        assert!(sb.bitmap_offset_sectors != 0, "{}: no internal bitmap", path.display());
        let at = (sb.super_offset_sectors as i64 + sb.bitmap_offset_sectors as i64) as u64 * 512;
        let mut hb = vec![0u8; HEADER_BYTES];
        f.read_exact_at(&mut hb, at).expect("read bitmap header");
        let header = BitmapHeader::decode(&hb, &sb.set_uuid)
            .unwrap_or_else(|e| panic!("{}: bitmap header: {e}", path.display()));
        let mut bits = vec![0u8; header.bits().div_ceil(8) as usize];
        f.read_exact_at(&mut bits, at + HEADER_BYTES as u64)
            .expect("read bitmap bits");
        OnDisk { sb, header, bits }
    }

    fn dirty(&self) -> Vec<u64> {
        (0..self.header.bits())
            .filter(|&c| bm::test_bit(&self.bits, c))
            .collect()
    }

    fn is_dirty_block(&self, block: u64) -> bool {
        bm::test_bit(&self.bits, self.header.bit_of(block * (IO_BYTES as u64 / 512)))
    }

    /// Array bytes covered by the dirty chunks.
    fn dirty_bytes(&self) -> u64 {
        let cs = self.header.chunk_sectors();
        let size = self.header.sync_size_sectors;
        self.dirty()
            .iter()
            .map(|&c| ((c + 1) * cs).min(size) - c * cs)
            .sum::<u64>()
            * 512
    }
}

/// Calls `f(block, members)` for every 4 KiB block of the members' data areas (`blocks` of
/// them), `members[i]` being member `i`'s bytes of that block.
fn for_each_block(paths: &[PathBuf], data_offset_bytes: u64, blocks: u64, mut f: impl FnMut(u64, &[&[u8]])) {
    const PIECE_BLOCKS: u64 = 1024;
    let files: Vec<File> = paths.iter().map(|p| File::open(p).expect("open member")).collect();
    let mut bufs = vec![vec![0u8; PIECE_BLOCKS as usize * IO_BYTES]; paths.len()];
    let mut b = 0;
    while b < blocks {
        let n = PIECE_BLOCKS.min(blocks - b);
        let len = n as usize * IO_BYTES;
        for (file, buf) in files.iter().zip(bufs.iter_mut()) {
            file.read_exact_at(&mut buf[..len], data_offset_bytes + b * IO_BYTES as u64)
                .expect("read member data");
        }
        for i in 0..n as usize {
            let r = i * IO_BYTES..(i + 1) * IO_BYTES;
            let row: Vec<&[u8]> = bufs.iter().map(|buf| &buf[r.clone()]).collect();
            f(b + i as u64, &row);
        }
        b += n;
    }
}

/// Whether a row of member blocks (the same member offset on every member) is inconsistent:
/// raid1 copies that differ, raid5 blocks that do not XOR to zero (P is the XOR of the row's
/// data whatever the layout). `None` for raid6, whose Q has no layout-free test.
fn row_inconsistent(level: &str, row: &[&[u8]]) -> Option<bool> {
    match level {
        "raid1" => Some(row.iter().any(|m| *m != row[0])),
        "raid5" => Some((0..IO_BYTES / 8).any(|w| {
            row.iter().fold(0u64, |x, m| {
                x ^ u64::from_le_bytes(m[w * 8..w * 8 + 8].try_into().unwrap())
            }) != 0
        })),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The in-process rig (deterministic reactors, as md/tests/common)
// ---------------------------------------------------------------------------------------------

/// keel-load's [`BdevRig`] (`d`, `reg`, raw reads) and the md registry.
struct Rig {
    base: BdevRig,
    md: Arc<MdRegistry>,
}

impl std::ops::Deref for Rig {
    type Target = BdevRig;

    fn deref(&self) -> &BdevRig {
        &self.base
    }
}

impl Rig {
    fn new() -> Rig {
        let base = BdevRig::new(1);
        let md = MdRegistry::of(&base.reg);
        Rig { base, md }
    }

    /// Runs sync action `action` (check) to its end; the mismatch count.
    fn sync_action(&self, name: &str, action: &'static str) -> u64 {
        self.md.set_sync_action(name, action).expect("md_set_sync_action");
        let until = Instant::now() + RESYNC_TIMEOUT;
        loop {
            let a = self.array(name);
            if a.sync.action == "idle" && a.sync.last_action == Some(action) {
                return a.sync.mismatch_sectors;
            }
            assert!(Instant::now() < until, "{action} did not finish: {a:?}");
            for _ in 0..200 {
                self.d.turn();
            }
        }
    }

    fn wait<T>(&self, rx: mpsc::Receiver<T>, what: &str) -> T {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = rx.try_recv() {
                return r;
            }
            assert!(Instant::now() < until, "{what} did not finish");
            self.d.turn();
        }
    }

    fn uring(&self, name: &str, path: &Path) {
        self.d.enter(MAIN, || {
            uring::create(
                &self.reg,
                &UringOpts {
                    filename: path.to_str().expect("utf-8 path").into(),
                    name: name.into(),
                    block_size: None,
                    uuid: None,
                },
            )
            .expect("uring bdev")
        });
    }

    fn assemble(&self, members: &[&str]) -> Result<String, MdError> {
        let (tx, rx) = mpsc::channel();
        let opts = AssembleOpts {
            name: None,
            uuid: None,
            members: Some(members.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        self.d.enter(MAIN, || {
            self.md.assemble(opts, move |r| {
                let _ = tx.send(r);
            })
        });
        self.wait(rx, "md assemble")
    }

    fn stop(&self, name: &str) -> Result<(), MdError> {
        let (tx, rx) = mpsc::channel();
        self.d.enter(MAIN, || {
            self.md.stop(name, move |r| {
                let _ = tx.send(r);
            })
        });
        self.wait(rx, "md stop")
    }

    fn array(&self, name: &str) -> ArrayInfo {
        self.md.arrays(Some(name)).expect("md_get_arrays").remove(0)
    }

    fn stats(&self, bdev: &str) -> IoStats {
        let b = self.reg.get(bdev).expect("bdev");
        let (tx, rx) = mpsc::channel();
        self.d.enter(MAIN, || {
            b.collect_stats(StatsReset::None, move |s| {
                let _ = tx.send(s);
            })
        });
        self.wait(rx, "bdev statistics")
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

#[test]
fn sigkill_during_writes_then_bitmap_resync_keeps_every_acknowledged_write() {
    scenario("raid1", 2);
}

#[test]
fn raid5_sigkill_then_bitmap_resync_of_the_dirty_stripes() {
    scenario("raid5", 4);
}

#[test]
fn raid6_sigkill_then_bitmap_resync_of_the_dirty_stripes() {
    scenario("raid6", 5);
}

fn scenario(level: &str, members: usize) {
    let t0 = Instant::now();
    let parity = level != "raid1";
    // raid1: 4 bitmap chunks, writes inside chunk 1. The parity levels' bitmap counts member
    // sectors too; 3 chunks keep the check's full pass (in a debug build) shorter, and the
    // writes at 45–75 % of the array (= of each member) stay inside chunk 1 there.
    let (member_bytes, range_start_pct, range_len_pct) = if parity {
        (PARITY_MEMBER_BYTES, 45, 30)
    } else {
        (MEMBER_BYTES, RANGE_START_PCT, RANGE_LEN_PCT)
    };
    // The parity levels' writes (data, P, Q) scatter thousands of 4 KiB extents over the
    // member files; on a filesystem mounted with `discard` deleting them took ~17 s. A SIGKILL
    // is not a power cut: tmpfs (where there is one) serves the scenario as well.
    let dir = if parity && Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let paths: Vec<PathBuf> = (0..members)
        .map(|i| dir.path().join(format!("member{i}.img")))
        .collect();
    for p in &paths {
        File::create(p)
            .and_then(|f| f.set_len(member_bytes))
            .expect("member file");
    }
    let bin = writer_bin();
    let t_built = t0.elapsed();
    let base_args = |gen_start: u64| -> Vec<String> {
        let mut a = Vec::new();
        for p in &paths {
            a.push("--member".to_string());
            a.push(p.to_str().expect("utf-8 path").to_string());
        }
        for (k, v) in [
            ("--range-start-pct", range_start_pct),
            ("--range-len-pct", range_len_pct),
            ("--qd", QD as u64),
            ("--gen-start", gen_start),
            ("--seed", gen_start),
        ] {
            a.push(k.to_string());
            a.push(v.to_string());
        }
        a.extend(["--level".to_string(), level.to_string()]);
        if parity {
            a.extend(["--chunk-kb".to_string(), CHUNK_KB.to_string()]);
        }
        a
    };
    let mut hist = History::default();

    // 1. Create, write a little, stop cleanly.
    let mut args = base_args(1);
    args.extend(["--create".to_string(), "--stop-after".into(), CREATE_WRITES.to_string()]);
    let mut w = Writer::spawn(&bin, dir.path(), "create", &args);
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let mut pending: Option<String> = None;
    while let Some(l) = w.next_line(deadline, "the create run's log") {
        if let Some(p) = pending.replace(l) {
            hist.take(&p, false);
        }
    }
    if let Some(p) = pending.take() {
        hist.take(&p, true);
    }
    let st = w.wait(deadline);
    assert!(st.success(), "create run: {st}; stderr:\n{}", w.stderr());
    assert!(
        hist.stopped,
        "create run did not report STOPPED; stderr:\n{}",
        w.stderr()
    );
    assert_eq!(hist.acked as u64, CREATE_WRITES);
    let (blocks_4k, lo, hi) = hist.ready.expect("READY line");
    let t_created = t0.elapsed();
    eprintln!("crash_resync: built the writer in {t_built:?}, create run done at {t_created:?}");
    for (i, p) in paths.iter().enumerate() {
        let d = OnDisk::read(p);
        assert!(
            d.sb.is_clean(),
            "member {i}: after a clean stop the superblock says clean"
        );
        // md-bitmap.md §6: the bitmap is trusted only if its events ≥ the superblock's; a
        // header left behind makes the next assembly resync every chunk.
        assert!(
            d.header.events >= d.sb.events,
            "member {i}: after a clean stop the bitmap header has events {} but the superblock {}: the next \
             assembly will treat the bitmap as stale and resync every chunk (md-bitmap.md §6: the bitmap \
             superblock's events are rewritten with every md superblock write)",
            d.header.events,
            d.sb.events
        );
    }

    // 2. Assemble, write until CRASH_ACKS acknowledgements, SIGKILL, read the log to its end.
    let mut w = Writer::spawn(&bin, dir.path(), "crash", &base_args(CRASH_GEN_START));
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let acked_before = hist.acked;
    let mut pending: Option<String> = None;
    let mut killed = false;
    while let Some(l) = w.next_line(deadline, "the crash run's log") {
        if let Some(p) = pending.replace(l) {
            hist.take(&p, false);
        }
        if !killed && hist.acked - acked_before >= CRASH_ACKS {
            w.child.kill().expect("SIGKILL crash_writer");
            killed = true;
        }
    }
    if let Some(p) = pending.take() {
        hist.take(&p, true);
    }
    let st = w.wait(deadline);
    assert!(killed, "the crash run ended on its own ({st}); stderr:\n{}", w.stderr());
    assert_eq!(st.signal(), Some(SIGKILL), "crash run: {st}; stderr:\n{}", w.stderr());
    let crash_acks = hist.acked - acked_before;
    let in_flight = hist.unacked();
    assert!(
        in_flight.len() <= QD,
        "more writes in flight than the queue depth: {in_flight:?}"
    );
    let t_killed = t0.elapsed();
    eprintln!(
        "crash_resync: killed the writer after {crash_acks} acks at {t_killed:?} ({} writes in flight)",
        in_flight.len()
    );

    // 3. What the kill left on disk.
    let disk: Vec<OnDisk> = paths.iter().map(|p| OnDisk::read(p)).collect();
    for (i, d) in disk.iter().enumerate() {
        assert_eq!(
            d.sb.resync_offset, 0,
            "member {i}: an array killed while writing is recorded active (resync_offset 0)"
        );
        let dirty = d.dirty();
        assert!(
            !dirty.is_empty(),
            "member {i}: the bitmap has no dirty chunk after the kill"
        );
        assert!(
            (dirty.len() as u64) < d.header.bits(),
            "member {i}: every bitmap chunk is dirty ({dirty:?}): nothing left to skip"
        );
        // The writes' array range maps to the same fraction of each member (raid1: the same
        // sectors; striping spreads it evenly).
        let dd = disks_of(level, members);
        let range_chunks = d.header.bit_of(lo * 8 / dd)..=d.header.bit_of((hi * 8 - 1) / dd);
        assert!(
            dirty.iter().all(|c| range_chunks.contains(c)),
            "member {i}: dirty chunks {dirty:?} outside the written range's chunks {range_chunks:?}"
        );
    }
    let sb = disk[0].sb.clone();
    let data_offset_bytes = sb.data_offset_sectors * 512;
    let member_blocks = sb.size_sectors / (IO_BYTES as u64 / 512);
    let array_blocks = member_blocks * disks_of(level, members);
    assert_eq!(array_blocks, blocks_4k, "the writer's array size");
    // Rows (member offsets) left inconsistent by the kill: raid1 copies that differ, raid5 rows
    // whose parity does not match (raid6: not told apart here; the check below covers it).
    let t_scan = Instant::now();
    let mut differ_before = Vec::new();
    if row_inconsistent(level, &[&[0u8; IO_BYTES][..]]).is_some() {
        for_each_block(&paths, data_offset_bytes, member_blocks, |b, row| {
            if row_inconsistent(level, row) == Some(true) {
                differ_before.push(b);
            }
        });
    }
    let t_scan = t_scan.elapsed();
    for (i, d) in disk.iter().enumerate() {
        let outside: Vec<u64> = differ_before
            .iter()
            .copied()
            .filter(|&b| !d.is_dirty_block(b))
            .collect();
        assert!(
            outside.is_empty(),
            "member {i}'s bitmap: rows {outside:?} are inconsistent but their chunks are clean \
             (the intent bit was not on disk before the write)"
        );
    }
    // Assembly takes the freshest member's bitmap (equal events: either; they agree here).
    let fresh = if disk[1].sb.events > disk[0].sb.events {
        &disk[1]
    } else {
        &disk[0]
    };
    let dirty_chunks = fresh.dirty();
    let expect_sync_bytes = fresh.dirty_bytes();
    let chunk_bytes = fresh.header.chunk_bytes as u64;
    let total_chunks = fresh.header.bits();

    // 4. Assemble here and let the resync run.
    let rig = Rig::new();
    let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
    for (n, p) in names.iter().zip(&paths) {
        rig.uring(n, p);
    }
    let t_asm = Instant::now();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let name = rig.assemble(&refs).expect("assemble after the kill");
    let first = rig.array(&name);
    assert_eq!(
        first.bitmap.map(|b| b.1),
        Some(dirty_chunks.len() as u64),
        "dirty bits after assembly: {first:?}"
    );
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let until = Instant::now() + RESYNC_TIMEOUT;
    let done = loop {
        let a = rig.array(&name);
        if a.sync.action == "resync" {
            samples.push((a.sync.done_sectors, a.sync.total_sectors));
        }
        if a.sync.action == "idle" && a.sync.last_action == Some("resync") && a.state == "clean" {
            break a;
        }
        assert!(Instant::now() < until, "the resync did not finish: {a:?}");
        for _ in 0..200 {
            rig.d.turn();
        }
    };
    let resync_time = t_asm.elapsed();
    eprintln!("crash_resync: assembled and resynced in {resync_time:?}");
    let stats: Vec<(u64, u64)> = names
        .iter()
        .map(|n| {
            let s = rig.stats(n);
            (s.op(IoOp::Read).bytes, s.op(IoOp::Write).bytes)
        })
        .collect();
    let (r0, w1) = (stats[0].0, stats[1].1);
    if parity {
        // Every member's dirty chunks were read (data and parity alike) and nothing else; what
        // was written is parity that did not match, inside the dirty chunks.
        for (i, &(r, w)) in stats.iter().enumerate() {
            assert!(
                r >= expect_sync_bytes && r <= expect_sync_bytes + META_SLACK_BYTES,
                "the resync read {r} bytes from member {i}; the dirty chunks {dirty_chunks:?} hold \
                 {expect_sync_bytes} of it"
            );
            assert!(
                w <= expect_sync_bytes + META_SLACK_BYTES,
                "the resync wrote {w} bytes to member {i}; the dirty chunks hold {expect_sync_bytes}"
            );
        }
        let written: u64 = stats.iter().map(|s| s.1).sum();
        assert!(
            written >= differ_before.len() as u64 * IO_BYTES as u64,
            "the resync wrote {written} bytes in all; {} rows had parity that did not match",
            differ_before.len()
        );
    } else {
        let (w0, r1) = (stats[0].1, stats[1].0);
        assert!(
            w1 >= expect_sync_bytes && w1 <= expect_sync_bytes + META_SLACK_BYTES,
            "the resync wrote {w1} bytes to member 1; the dirty chunks {dirty_chunks:?} hold {expect_sync_bytes} \
             (array {} bytes)",
            sb.size_sectors * 512
        );
        assert!(
            r0 >= expect_sync_bytes && r0 <= expect_sync_bytes + META_SLACK_BYTES,
            "the resync read {r0} bytes from member 0; the dirty chunks hold {expect_sync_bytes}"
        );
        assert!(
            w0 <= META_SLACK_BYTES && r1 <= META_SLACK_BYTES,
            "member 0 writes {w0}, member 1 reads {r1}"
        );
    }
    // The redundancy agrees with the data everywhere now.
    let t_check = Instant::now();
    assert_eq!(rig.sync_action(&name, "check"), 0, "{level}: check after the resync");
    let t_check = t_check.elapsed();
    let t_read = Instant::now();
    // What the array serves: read back through it (the parity levels' blocks are spread over
    // the members; raid1's are compared on the files below too).
    let mut served: HashMap<u64, Content> = HashMap::new();
    const READ_BLOCKS: u64 = 256;
    let bs = rig.reg.get(&name).expect("array bdev").info().block_size as u64;
    let per = IO_BYTES as u64 / bs;
    let mut b = lo;
    while b < hi {
        let n = READ_BLOCKS.min(hi - b);
        let data = rig.read(&name, b * per, n * per);
        for (i, blk) in data.chunks(IO_BYTES).enumerate() {
            served.insert(b + i as u64, classify(b + i as u64, blk));
        }
        b += n;
    }
    let t_read = t_read.elapsed();
    rig.stop(&name).expect("md stop");
    drop(rig);
    for (i, p) in paths.iter().enumerate() {
        let d = OnDisk::read(p);
        assert_eq!(
            d.sb.resync_offset, MAX_SECTOR,
            "member {i} clean after the resync and stop"
        );
    }

    // 5. Every block: what the log allows, as the array served it; raid1's members identical.
    let mut problems: Vec<String> = Vec::new();
    let (mut landed, mut not_landed, mut written) = (0u64, 0u64, 0u64);
    let mut judge = |b: u64, got: Content| match hist.blocks.get(&b) {
        None => {
            if got != Content::Zero {
                problems.push(format!("block {b}: never written but holds {got:?}"));
            }
        }
        Some(h) => {
            written += 1;
            let last_ack = h.iter().rposition(|e| e.1);
            let later: Vec<u64> = h[last_ack.map_or(0, |i| i + 1)..].iter().map(|e| e.0).collect();
            let ok = match (&got, last_ack) {
                (Content::Gen(g), Some(i)) if *g == h[i].0 => true,
                (Content::Gen(g), _) if later.contains(g) => {
                    landed += 1;
                    true
                }
                (Content::Zero, None) => true,
                _ => false,
            };
            if ok && !later.is_empty() && !matches!(&got, Content::Gen(g) if later.contains(g)) {
                not_landed += 1;
            }
            if !ok {
                problems.push(format!(
                    "block {b}: holds {got:?}; last acknowledged gen {:?}, in flight at the kill {later:?}",
                    last_ack.map(|i| h[i].0)
                ));
            }
        }
    };
    let mut mirror_problems: Vec<String> = Vec::new();
    if parity {
        let mut blocks: Vec<u64> = served.keys().copied().collect();
        blocks.sort();
        for b in blocks {
            judge(b, served[&b].clone());
        }
        assert!(
            hist.blocks.keys().all(|b| served.contains_key(b)),
            "a written block lies outside the range read back"
        );
    } else {
        for_each_block(&paths, data_offset_bytes, member_blocks, |b, row| {
            if row[0] != row[1] {
                mirror_problems.push(format!(
                    "block {b}: members differ after the resync ({:?} vs {:?})",
                    classify(b, row[0]),
                    classify(b, row[1])
                ));
            }
            let got = classify(b, row[0]);
            if (lo..hi).contains(&b) && served.get(&b) != Some(&got) {
                mirror_problems.push(format!(
                    "block {b}: the array served {:?}, member 0 holds {got:?}",
                    served.get(&b)
                ));
            }
            judge(b, got);
        });
    }
    problems.extend(mirror_problems);
    let t_total = t0.elapsed();
    eprintln!(
        "crash_resync {level}: array {array_blocks} blocks of 4 KiB, writes in [{lo}, {hi}); bitmap {total_chunks} chunks of \
         {} MiB, dirty {dirty_chunks:?}; create run {CREATE_WRITES} writes; crash run {crash_acks} acks, {} in flight \
         at the kill ({landed} landed, {not_landed} did not); {} rows inconsistent before the resync; resync read {r0} \
         / wrote {w1} bytes (members 0 / 1) (dirty chunks {expect_sync_bytes}) in {resync_time:?}; progress samples {} (first {:?}, \
         last {:?}); {written} blocks written in all; timings: build {t_built:?}, create {:?}, crash {:?}, scan \
         {t_scan:?}, check {t_check:?}, read back {t_read:?}, total {t_total:?}",
        chunk_bytes >> 20,
        in_flight.len(),
        differ_before.len(),
        samples.len(),
        samples.first(),
        samples.last(),
        t_created - t_built,
        t_killed - t_created,
    );
    let _ = done;
    assert!(
        problems.is_empty(),
        "{} problems after the resync, first ones:\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}
