//! Hot removal and re-add on raid5 and raid6 under I/O. Members are uring bdevs over sparse
//! files (on tmpfs where there is one); two cores run a verifying load (random 4 KiB reads and
//! writes over the first 16 MiB of the array, each block carrying its generation; a read must
//! return the last write the model holds). Then:
//!
//! 1. a member's bdev is deleted in the middle of the load (raid6: a second one too): the array
//!    degrades, no request fails, and reads — reconstructed where they touch a lost member —
//!    verify;
//! 2. the deleted bdev comes back over the same file and `md_add` re-adds it into its role: the
//!    bitmap (64 MiB chunks of member sectors; the load writes only into the first) confines the
//!    recovery to the dirty chunk — the member's write statistics say it got that chunk, the
//!    load's writes and metadata, not the whole member;
//! 3. raid6: the second lost member is replaced by a fresh file (a spare): a full recovery;
//! 4. the load runs through the recoveries, the array ends healthy, `check` finds no mismatch,
//!    and the whole loaded range reads back as the model says.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Rig, MAIN};
use keel_bdev::modules::uring::{self, UringOpts};
use keel_bdev::{DmaBuf, IoOp, IoStats, IoStatus, StatsReset};
use keel_load::testing::Client;
use keel_md::CreateOpts;
use keel_reactor::CoreId;

/// Member files: bitmap chunk 0 is the first 64 MiB of each member's data, chunk 1 the rest.
const MEMBER_BYTES: u64 = 136 << 20;
/// The loaded range: the first 16 MiB of the array (4 KiB blocks), all in bitmap chunk 0.
const BLOCKS: u64 = 4096;
const IO_BYTES: usize = 4096;
/// Bitmap chunk (mdadm's minimum, `intent::default_chunk_bytes`).
const BITMAP_CHUNK_BYTES: u64 = 64 << 20;
/// Superblocks and bitmap pages a member gets besides data: an upper bound.
const META_SLACK_BYTES: u64 = 1 << 20;
const DEPTH: usize = 8;

fn fill(block: u64, gen: u64, buf: &mut [u8]) {
    buf[..8].copy_from_slice(b"KEELHOTR");
    buf[8..16].copy_from_slice(&block.to_le_bytes());
    buf[16..24].copy_from_slice(&gen.to_le_bytes());
    let mut x = (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen) | 1;
    for w in buf[24..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

fn expected(block: u64, gen: u64) -> Vec<u8> {
    let mut v = vec![0u8; IO_BYTES];
    if gen != 0 {
        fill(block, gen, &mut v);
    }
    v
}

/// One core's share of the load: blocks `b` with `b % 2 == core`.
struct Lane {
    client: Client,
    bufs: Vec<DmaBuf>,
    /// Per tag: (write?, block, generation) in flight.
    inflight: Vec<Option<(bool, u64, u64)>>,
    rng: u64,
}

/// The verifying load over array `name` from two cores.
struct Load {
    lanes: Vec<Lane>,
    /// Per block: the generation it holds (0: never written).
    model: Vec<u64>,
    next_gen: u64,
    blocks_per_io: u64,
    reads: u64,
    writes: u64,
}

impl Load {
    fn new(r: &Rig, name: &str) -> Load {
        let lanes = (0..2)
            .map(|c| Lane {
                client: r.client(name, CoreId(c), DEPTH),
                bufs: (0..DEPTH).map(|_| DmaBuf::new(IO_BYTES)).collect(),
                inflight: vec![None; DEPTH],
                rng: 0x1234_5678 + c as u64,
            })
            .collect();
        let bs = r.reg.get(name).unwrap().info().block_size as u64;
        Load {
            lanes,
            model: vec![0; BLOCKS as usize],
            next_gen: 1,
            blocks_per_io: IO_BYTES as u64 / bs,
            reads: 0,
            writes: 0,
        }
    }

    /// Keeps every lane full and turns the reactors until `ops` more requests completed.
    fn run(&mut self, r: &Rig, ops: u64, what: &str) {
        let goal = self.reads + self.writes + ops;
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while self.reads + self.writes < goal {
            assert!(std::time::Instant::now() < until, "{what}: the load stalled");
            self.step(r);
        }
    }

    /// One round: submit into free slots, turn once, take completions.
    fn step(&mut self, r: &Rig) {
        for (c, lane) in self.lanes.iter_mut().enumerate() {
            for tag in 0..DEPTH {
                if lane.inflight[tag].is_some() {
                    continue;
                }
                lane.rng ^= lane.rng << 13;
                lane.rng ^= lane.rng >> 7;
                lane.rng ^= lane.rng << 17;
                let block = (lane.rng % (BLOCKS / 2)) * 2 + c as u64;
                if lane.inflight.iter().flatten().any(|&(_, b, _)| b == block) {
                    continue;
                }
                let write = lane.rng >> 40 & 1 == 1;
                let gen = if write {
                    self.next_gen += 1;
                    fill(block, self.next_gen, &mut lane.bufs[tag].bytes_mut());
                    self.next_gen
                } else {
                    0
                };
                let op = if write { IoOp::Write } else { IoOp::Read };
                let buf = lane.bufs[tag].clone();
                if lane.client.start(
                    r,
                    op,
                    block * self.blocks_per_io,
                    self.blocks_per_io,
                    Some(&buf),
                    tag as u64,
                ) {
                    lane.inflight[tag] = Some((write, block, gen));
                }
            }
        }
        r.d.turn();
        for lane in &mut self.lanes {
            for (tag, status) in lane.client.poll() {
                let (write, block, gen) = lane.inflight[tag as usize].take().expect("in flight");
                assert_eq!(
                    status,
                    IoStatus::Success,
                    "{} of block {block} failed",
                    if write { "write" } else { "read" }
                );
                if write {
                    self.model[block as usize] = gen;
                    self.writes += 1;
                } else {
                    let want = self.model[block as usize];
                    let got = lane.bufs[tag as usize].bytes()[..IO_BYTES].to_vec();
                    assert!(
                        got == expected(block, want),
                        "block {block}: read does not hold generation {want} (header {:?})",
                        &got[..24]
                    );
                    self.reads += 1;
                }
            }
        }
    }

    /// Waits for everything in flight, then closes the clients.
    fn finish(mut self, r: &Rig) -> Vec<u64> {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while self.lanes.iter().any(|l| l.inflight.iter().any(Option::is_some)) {
            assert!(std::time::Instant::now() < until, "the load did not drain");
            r.d.turn();
            for lane in &mut self.lanes {
                for (tag, status) in lane.client.poll() {
                    let (write, block, gen) = lane.inflight[tag as usize].take().expect("in flight");
                    assert_eq!(status, IoStatus::Success, "block {block}");
                    if write {
                        self.model[block as usize] = gen;
                    }
                }
            }
        }
        for lane in self.lanes {
            lane.client.close(r);
        }
        self.model
    }
}

fn uring(r: &Rig, name: &str, path: &Path) {
    r.d.enter(MAIN, || {
        uring::create(
            &r.reg,
            &UringOpts {
                filename: path.to_str().unwrap().into(),
                name: name.into(),
                block_size: None,
                uuid: None,
            },
        )
        .unwrap()
    });
}

fn stats(r: &Rig, bdev: &str) -> IoStats {
    let b = r.reg.get(bdev).unwrap();
    r.call(MAIN, "bdev statistics", |done| b.collect_stats(StatsReset::None, done))
}

fn member_state(r: &Rig, bdev: &str) -> Option<&'static str> {
    r.array("arr").members.iter().find(|m| m.bdev == bdev).map(|m| m.state)
}

/// Runs the load until `cond` holds.
fn load_until(r: &Rig, load: &mut Load, secs: u64, what: &str, cond: impl Fn(&Rig) -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond(r) {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}: {:?}",
            r.array("arr")
        );
        for _ in 0..20 {
            load.step(r);
        }
    }
}

fn healthy(r: &Rig) -> bool {
    let a = r.array("arr");
    a.sync.action == "idle" && !a.state.contains("degraded") && a.members.iter().all(|m| m.state == "in_sync")
}

fn scenario(level: &str, members: usize, lost: &[usize]) {
    let r = Rig::new(2);
    let dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let file = |n: &str| -> PathBuf {
        let p = dir.path().join(format!("{n}.img"));
        File::create(&p).and_then(|f| f.set_len(MEMBER_BYTES)).unwrap();
        p
    };
    let names: Vec<String> = (0..members).map(|i| format!("U{i}")).collect();
    let paths: Vec<PathBuf> = names.iter().map(|n| file(n)).collect();
    for (n, p) in names.iter().zip(&paths) {
        uring(&r, n, p);
    }
    r.create(CreateOpts {
        name: "arr".into(),
        level: level.into(),
        members: names.clone(),
        chunk_kb: Some(64),
        bitmap: Some("internal".into()),
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();
    // The load runs through every recovery: it must not throttle them to speed_min.
    r.md.set_sync_speed("arr", Some(1_000_000), Some(4_000_000)).unwrap();
    let component_bytes = r.superblock(&names[0]).size_sectors * 512;
    assert!(component_bytes > BITMAP_CHUNK_BYTES + (4 << 20), "two bitmap chunks");
    let mut load = Load::new(&r, "arr");
    load.run(&r, 2000, "healthy");

    // 1. Delete the members' bdevs under the load.
    for &i in lost {
        load.run(&r, 200, "before the removal");
        r.d.enter(MAIN, || uring::delete(&r.reg, &names[i], || {}).unwrap());
        load.run(&r, 200, "right after the removal");
        load_until(&r, &mut load, 20, "the deleted member leaves", |r| {
            member_state(r, &names[i]).is_none()
        });
    }
    assert!(r.array("arr").state.contains("degraded"));
    let reads = load.reads;
    load.run(&r, 3000, "degraded");
    assert!(load.reads - reads > 1000, "reads while degraded");

    // 2. The first lost member's bdev comes back over its file and is re-added: bitmap-guided.
    let back = &names[lost[0]];
    uring(&r, back, &paths[lost[0]]);
    let writes = load.writes;
    r.add("arr", back).unwrap();
    load_until(&r, &mut load, 120, "the re-added member recovers", |r| {
        member_state(r, back) == Some("in_sync") && r.array("arr").sync.action == "idle"
    });
    let got = stats(&r, back).op(IoOp::Write).bytes;
    let fg = (load.writes - writes) * IO_BYTES as u64;
    eprintln!(
        "{level}: re-added {back}: {got} bytes written to it (load {fg}, member {component_bytes}); {} reads, {} \
         writes so far",
        load.reads, load.writes
    );
    assert!(
        got >= BITMAP_CHUNK_BYTES && got <= BITMAP_CHUNK_BYTES + fg + META_SLACK_BYTES,
        "{level}: the re-added member got {got} bytes; the dirty bitmap chunk is {BITMAP_CHUNK_BYTES}, the \
         load wrote {fg} meanwhile, the member holds {component_bytes}"
    );

    // 3. raid6: the second lost member is replaced by a fresh one: a full recovery.
    if let Some(&i) = lost.get(1) {
        let p = file("S");
        uring(&r, "S", &p);
        r.add("arr", "S").unwrap();
        load_until(&r, &mut load, 180, "the replacement recovers", |r| {
            member_state(r, "S") == Some("in_sync") && r.array("arr").sync.action == "idle"
        });
        let got = stats(&r, "S").op(IoOp::Write).bytes;
        eprintln!("{level}: the replacement got {got} bytes");
        assert!(
            got >= component_bytes,
            "the replacement of {} got {got} bytes of {component_bytes}",
            names[i]
        );
    }
    load_until(&r, &mut load, 30, "a healthy array", healthy);
    load.run(&r, 1000, "healthy again");
    let model = load.finish(&r);

    // 4. Consistent, and what the load wrote.
    r.md.set_sync_action("arr", "check").unwrap();
    r.wait_until(120, "check", |r| {
        let a = r.array("arr");
        a.sync.action == "idle" && a.sync.last_action == Some("check")
    });
    assert_eq!(r.array("arr").sync.mismatch_sectors, 0, "{level}: check");
    let bs = r.reg.get("arr").unwrap().info().block_size as u64;
    let per = IO_BYTES as u64 / bs;
    let mut bad: HashMap<u64, u64> = HashMap::new();
    for first in (0..BLOCKS).step_by(256) {
        let data = r.read("arr", first * per, 256 * per);
        for (i, blk) in data.chunks(IO_BYTES).enumerate() {
            let b = first + i as u64;
            if blk != expected(b, model[b as usize]) {
                bad.insert(b, model[b as usize]);
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{level}: {} blocks differ from the model: {bad:?}",
        bad.len()
    );
    r.stop("arr").unwrap();
}

#[test]
fn raid5_member_deleted_under_io_then_readded_with_bitmap() {
    scenario("raid5", 4, &[1]);
}

#[test]
fn raid6_two_members_deleted_under_io_then_readd_and_replacement() {
    scenario("raid6", 5, &[1, 3]);
}
