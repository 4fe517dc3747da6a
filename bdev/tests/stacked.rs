//! Stacking bdevs (passthru, error, delay) over malloc on the deterministic driver: forwarding
//! and statistics on both layers, claims and failed creates that leave nothing behind, error
//! injection of every kind, delay latencies and the 1-in-100 p99 rule, delete and hot-removal
//! cascades with no request lost, and each module's config().

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::delay::{self, DelayOpts};
use keel_bdev::modules::error::{self, ErrorOpts, InjectOpts};
use keel_bdev::modules::passthru::{self, PassthruOpts};
use keel_bdev::modules::{malloc, null};
use keel_bdev::{
    BdevError, BdevRegistry, Channel, CompletionQueue, Descriptor, DmaBuf, IoCaps, IoOp, IoPool, IoStatus, IoVec,
    Submit,
};
use keel_reactor::{ticks, ticks_to_us, CoreId, TestDriver};
use serde_json::json;

/// Counts allocations per thread, so `no_allocation_per_io_through_three_layers` can prove the
/// data path allocation-free while other tests run on other threads.
#[global_allocator]
static ALLOC: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const BS: u32 = 512;
const BLOCKS: u64 = 256;

fn rig(cores: u32) -> (TestDriver, Arc<BdevRegistry>) {
    let d = TestDriver::new(cores);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &malloc::MallocOpts::new("M0", BLOCKS, BS)).unwrap();
    (d, reg)
}

/// A submitter on one core: a channel, a completion queue and a request pool. Test code, so it
/// may allocate freely.
struct Client {
    ch: Channel,
    cq: CompletionQueue,
    pool: IoPool,
    started: HashMap<u64, u64>,
}

/// One completion seen by a [`Client`].
#[derive(Debug, Clone, Copy)]
struct Done {
    tag: u64,
    status: IoStatus,
    latency_us: f64,
}

impl Client {
    /// Call on the core that will submit.
    fn new(desc: &Descriptor, depth: usize) -> Client {
        Client {
            ch: desc.channel(),
            cq: CompletionQueue::with_capacity(depth),
            pool: IoPool::new(depth),
            started: HashMap::new(),
        }
    }

    /// Submits one request; `false` if it was handed back (`Requeue`, request returned to the
    /// pool).
    fn start(&mut self, op: IoOp, offset_blocks: u64, num_blocks: u64, buf: &DmaBuf, tag: u64) -> bool {
        let mut io = self.pool.get().expect("pool has a free request");
        io.iovs.clear();
        io.iovs.push(IoVec::whole(buf.clone()));
        io.prepare(op, offset_blocks, num_blocks);
        io.tag = tag;
        let t0 = ticks();
        match self.ch.submit(io, &self.cq) {
            Submit::Accepted => {
                self.started.insert(tag, t0);
                true
            }
            Submit::Requeue(io) => {
                assert_eq!(io.depth(), 0, "a requeued request comes back with no frame left");
                assert_eq!(io.status(), IoStatus::Pending);
                self.pool.put(io);
                false
            }
        }
    }

    /// Turns the reactors until `n` completions arrived or `timeout` passed; returns them.
    fn wait(&mut self, d: &TestDriver, n: usize, timeout: Duration) -> Vec<Done> {
        let until = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            while let Some(mut io) = self.cq.pop() {
                let t0 = self.started.remove(&io.tag).expect("completion of a started request");
                out.push(Done {
                    tag: io.tag,
                    status: io.status(),
                    latency_us: ticks_to_us(ticks() - t0),
                });
                io.iovs.clear();
                self.pool.put(io);
            }
            if out.len() >= n || Instant::now() >= until {
                return out;
            }
            d.turn();
        }
    }

    /// Submits one request and waits for it.
    fn run(&mut self, d: &TestDriver, op: IoOp, offset_blocks: u64, num_blocks: u64, buf: &DmaBuf) -> Done {
        assert!(
            self.start(op, offset_blocks, num_blocks, buf, 7),
            "request was requeued"
        );
        let done = self.wait(d, 1, Duration::from_secs(5));
        assert_eq!(done.len(), 1, "request did not complete");
        done[0]
    }
}

fn pattern(len: usize, seed: u8) -> DmaBuf {
    let b = DmaBuf::new(len);
    for (i, x) in b.bytes_mut().iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(13).wrapping_add(seed);
    }
    b
}

fn copy_of(b: &DmaBuf) -> Vec<u8> {
    b.bytes().to_vec()
}

fn inject(reg: &BdevRegistry, name: &str, io_type: &str, error_type: &str, num: Option<u32>) {
    let mut o = InjectOpts::new(name, io_type, error_type);
    o.num = num;
    error::inject(reg, &o).unwrap();
}

fn param_of<T>(r: Result<T, BdevError>) -> &'static str {
    match r {
        Err(BdevError::InvalidParam { param, .. }) => param,
        Err(other) => panic!("expected InvalidParam, got {other:?}"),
        Ok(_) => panic!("expected InvalidParam, got success"),
    }
}

// ---------------------------------------------------------------------------------------------
// passthru

#[test]
fn passthru_round_trip_with_stats_on_both_layers() {
    let (d, reg) = rig(2);
    let pt = passthru::create(&reg, &PassthruOpts::new("PT0", "M0")).unwrap();
    let info = pt.info();
    assert_eq!(
        (info.product_name, info.module, info.block_size, info.num_blocks),
        ("passthru", "passthru", BS, BLOCKS)
    );
    assert_eq!(info.caps, IoCaps::ALL);
    assert_eq!(
        pt.backend().driver_specific(),
        json!({"passthru": {"name": "PT0", "base_bdev_name": "M0"}})
    );
    let base = reg.get("M0").unwrap();
    assert_eq!(base.claimed_by().as_deref(), Some("passthru"));
    assert!(matches!(reg.open("M0", true, |_| {}), Err(BdevError::Claimed { .. })));

    let desc = reg.open("PT0", true, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 4);
        let data = pattern(4096, 3);
        // Passthru forwards in place: malloc finishes inside submit, and the success is queued
        // straight for the submitter's poller (nothing runs on the submitter's stack; the layer's
        // poller is skipped).
        assert!(c.start(IoOp::Write, 16, 8, &data, 1));
        assert_eq!(
            c.cq.len(),
            1,
            "success queued for the submitter, skipping the layer's poller"
        );
        d.turn();
        let w = c.wait(&d, 1, Duration::ZERO);
        assert_eq!((w.len(), w[0].status), (1, IoStatus::Success));
        let back = DmaBuf::new(4096);
        assert_eq!(c.run(&d, IoOp::Read, 16, 8, &back).status, IoStatus::Success);
        assert_eq!(copy_of(&back), copy_of(&data));
        assert_eq!(c.run(&d, IoOp::Flush, 0, 0, &back).status, IoStatus::Success);
        // The layer validates like any bdev: out of range never reaches the base.
        assert_eq!(
            c.run(&d, IoOp::Read, BLOCKS - 1, 8, &back).status,
            IoStatus::InvalidRange
        );

        let top = c.ch.stats().snapshot();
        assert_eq!((top.op(IoOp::Write).ops, top.op(IoOp::Write).bytes), (1, 4096));
        assert_eq!((top.op(IoOp::Read).ops, top.op(IoOp::Read).bytes), (1, 4096));
        assert_eq!(top.op(IoOp::Flush).ops, 1);
        assert_eq!(top.failed(), 1);
        let below = base
            .local_stats()
            .expect("the layer opened a base channel on this core");
        assert_eq!((below.op(IoOp::Write).ops, below.op(IoOp::Write).bytes), (1, 4096));
        assert_eq!(below.op(IoOp::Read).ops, 1);
        assert_eq!(below.op(IoOp::Flush).ops, 1);
        assert_eq!(below.failed(), 0);
    });
    // The data is really in the base.
    let ro = reg.open("M0", false, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let mut c = Client::new(&ro, 1);
        let back = DmaBuf::new(4096);
        assert_eq!(c.run(&d, IoOp::Read, 16, 8, &back).status, IoStatus::Success);
        assert_eq!(copy_of(&back), copy_of(&pattern(4096, 3)));
    });
}

#[test]
fn passthru_config_and_stacking_over_null() {
    let (_d, reg) = rig(1);
    null::create(&reg, &null::NullOpts::new("N0", 1024, 4096)).unwrap();
    let mut o = PassthruOpts::new("PTn", "N0");
    o.uuid = Some("b2f3a0c4-0d7e-4a51-9b8f-2d3e4f5a6b7c".into());
    let pt = passthru::create(&reg, &o).unwrap();
    assert_eq!((pt.info().block_size, pt.info().num_blocks), (4096, 1024));
    let cfg = pt.backend().config(pt.info()).unwrap();
    assert_eq!(cfg.method, "bdev_passthru_create");
    assert_eq!(
        cfg.params,
        json!({"name": "PTn", "base_bdev_name": "N0", "uuid": "b2f3a0c4-0d7e-4a51-9b8f-2d3e4f5a6b7c"})
    );
    // Round trip through the RPC parameter type.
    let again: PassthruOpts = serde_json::from_value(cfg.params).unwrap();
    assert_eq!(again, o);
}

#[test]
fn failed_creates_leave_nothing_registered_or_claimed() {
    let (_d, reg) = rig(1);
    malloc::create(&reg, &malloc::MallocOpts::new("M1", 64, BS)).unwrap();
    passthru::create(&reg, &PassthruOpts::new("PT0", "M0")).unwrap();
    let count = reg.list().len();

    // A second layer on a claimed base: each module says Claimed and registers nothing.
    assert!(matches!(
        passthru::create(&reg, &PassthruOpts::new("PT1", "M0")),
        Err(BdevError::Claimed { ref name, ref module }) if name == "M0" && module == "passthru"
    ));
    assert!(matches!(
        error::create(
            &reg,
            &ErrorOpts {
                base_name: "M0".into(),
                uuid: None
            }
        ),
        Err(BdevError::Claimed { .. })
    ));
    assert!(matches!(
        delay::create(&reg, &DelayOpts::new("D1", "M0", 1, 1, 1, 1)),
        Err(BdevError::Claimed { .. })
    ));
    assert!(reg.get("PT1").is_none() && reg.get("EE_M0").is_none() && reg.get("D1").is_none());

    // Missing base, taken name, bad UUID, p99 below avg: the free base M1 stays unclaimed.
    assert!(matches!(
        passthru::create(&reg, &PassthruOpts::new("PT1", "nope")),
        Err(BdevError::NotFound(ref n)) if n == "nope"
    ));
    assert!(matches!(
        passthru::create(&reg, &PassthruOpts::new("PT0", "M1")),
        Err(BdevError::Exists(_))
    ));
    let mut bad = PassthruOpts::new("PT1", "M1");
    bad.uuid = Some("not-a-uuid".into());
    assert_eq!(param_of(passthru::create(&reg, &bad)), "uuid");
    assert_eq!(
        param_of(delay::create(&reg, &DelayOpts::new("D1", "M1", 10, 9, 1, 1))),
        "p99_read_latency"
    );
    assert_eq!(
        param_of(delay::create(&reg, &DelayOpts::new("D1", "M1", 1, 1, 10, 9))),
        "p99_write_latency"
    );
    assert!(matches!(
        delay::create(&reg, &DelayOpts::new("has space", "M1", 1, 1, 1, 1)),
        Err(BdevError::InvalidParam { .. })
    ));
    // A UUID already in use fails at registration, after the claim: it is released again.
    let mut dup = PassthruOpts::new("PT1", "M1");
    dup.uuid = Some(reg.get("M0").unwrap().info().uuid.to_string());
    assert!(matches!(passthru::create(&reg, &dup), Err(BdevError::Exists(_))));
    assert_eq!(reg.get("M1").unwrap().claimed_by(), None);
    assert_eq!(reg.get("M1").unwrap().open_count(), 0);
    assert_eq!(reg.list().len(), count);
    // And it is still usable.
    passthru::create(&reg, &PassthruOpts::new("PT1", "M1")).unwrap();
}

#[test]
fn delete_releases_the_base_for_a_new_claim() {
    let (d, reg) = rig(2);
    passthru::create(&reg, &PassthruOpts::new("PT0", "M0")).unwrap();
    // delete only deletes its own module's bdevs.
    assert!(matches!(error::delete(&reg, "PT0", || {}), Err(BdevError::NotFound(_))));
    assert!(matches!(
        passthru::delete(&reg, "M0", || {}),
        Err(BdevError::NotFound(_))
    ));
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    passthru::delete(&reg, "PT0", move || done2.store(true, Ordering::SeqCst)).unwrap();
    assert!(reg.get("PT0").is_none());
    d.run_until_idle(1000);
    assert!(done.load(Ordering::SeqCst));
    let base = reg.get("M0").unwrap();
    assert_eq!(base.claimed_by(), None);
    assert_eq!(base.open_count(), 0);
    // Claimable again, by another module.
    let ee = error::create(
        &reg,
        &ErrorOpts {
            base_name: "M0".into(),
            uuid: None,
        },
    )
    .unwrap();
    assert_eq!(ee.name(), "EE_M0");
    assert_eq!(base.claimed_by().as_deref(), Some("error"));
    error::delete(&reg, "EE_M0", || {}).unwrap();
    d.run_until_idle(1000);
    let dl = delay::create(&reg, &DelayOpts::new("D0", "M0", 0, 0, 0, 0)).unwrap();
    assert_eq!(dl.name(), "D0");
    delay::delete(&reg, "D0", || {}).unwrap();
    d.run_until_idle(1000);
    assert_eq!(base.claimed_by(), None);
}

#[test]
fn hot_removal_cascades_through_two_layers_and_loses_nothing() {
    let (d, reg) = rig(2);
    // Created on the main core, as RPC does: the remove events travel by message.
    d.enter(CoreId(0), || {
        passthru::create(&reg, &PassthruOpts::new("PT0", "M0")).unwrap();
        error::create(
            &reg,
            &ErrorOpts {
                base_name: "PT0".into(),
                uuid: None,
            },
        )
        .unwrap();
    });
    let desc = reg.open("EE_PT0", true, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 16);
        let buf = pattern(4096, 9);
        assert_eq!(c.run(&d, IoOp::Write, 0, 8, &buf).status, IoStatus::Success);
        // Outstanding I/O at the moment of removal: 6 finished by malloc but not yet polled up
        // through both layers, and 2 held by a `pending` injection.
        inject(&reg, "EE_PT0", "read", "pending", Some(2));
        for tag in 0..8 {
            assert!(c.start(IoOp::Read, tag, 1, &buf, tag));
        }
        malloc::delete(&reg, "M0", || {}).unwrap();
        let done = c.wait(&d, 8, Duration::from_secs(5));
        assert_eq!(done.len(), 8, "every outstanding request completes");
        let ok = done.iter().filter(|x| x.status == IoStatus::Success).count();
        let aborted = done.iter().filter(|x| x.status == IoStatus::Aborted).count();
        assert_eq!((ok, aborted), (6, 2), "{done:?}");
        d.run_until_idle(1000);
        assert!(reg.get("PT0").is_none(), "passthru followed its base");
        assert!(reg.get("EE_PT0").is_none(), "error bdev followed the passthru");
        assert_eq!(reg.list().len(), 0);
        assert_eq!(c.run(&d, IoOp::Read, 0, 1, &buf).status, IoStatus::Removed);
    });
    // The error bdev's state is gone with it.
    assert!(matches!(
        error::inject(&reg, &InjectOpts::new("EE_PT0", "all", "failure")),
        Err(BdevError::NotFound(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// error

fn error_rig() -> (TestDriver, Arc<BdevRegistry>, Descriptor) {
    let (d, reg) = rig(2);
    error::create(
        &reg,
        &ErrorOpts {
            base_name: "M0".into(),
            uuid: None,
        },
    )
    .unwrap();
    let desc = reg.open("EE_M0", true, |_| {}).unwrap();
    (d, reg, desc)
}

#[test]
fn error_bdev_identity_and_config() {
    let (_d, reg) = rig(1);
    let u = "0f1e2d3c-4b5a-4697-8877-665544332211";
    let ee = error::create(
        &reg,
        &ErrorOpts {
            base_name: "M0".into(),
            uuid: Some(u.into()),
        },
    )
    .unwrap();
    let info = ee.info();
    assert_eq!(
        (info.name.as_str(), info.product_name, info.module),
        ("EE_M0", "Error Injection Disk", "error")
    );
    assert_eq!(info.uuid.to_string(), u);
    assert_eq!(
        ee.backend().driver_specific(),
        json!({"error_disk": {"base_bdev": "M0"}})
    );
    let cfg = ee.backend().config(info).unwrap();
    assert_eq!(cfg.method, "bdev_error_create");
    assert_eq!(cfg.params, json!({"base_name": "M0", "uuid": u}));
    let again: ErrorOpts = serde_json::from_value(cfg.params).unwrap();
    assert_eq!(again.base_name, "M0");
    // A second error bdev on the same base would have the same name; the base is claimed anyway.
    assert!(error::create(
        &reg,
        &ErrorOpts {
            base_name: "M0".into(),
            uuid: None
        }
    )
    .is_err());
}

#[test]
fn error_read_failure_num_3_fails_exactly_three_reads() {
    let (d, reg, desc) = error_rig();
    inject(&reg, "EE_M0", "read", "failure", Some(3));
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 4);
        let buf = pattern(512, 1);
        let mut got = Vec::new();
        for i in 0..6 {
            got.push(c.run(&d, IoOp::Read, i, 1, &buf).status);
            // Writes are not affected by a read injection.
            assert_eq!(c.run(&d, IoOp::Write, i, 1, &buf).status, IoStatus::Success);
        }
        use IoStatus::*;
        assert_eq!(got, vec![Failed, Failed, Failed, Success, Success, Success]);
        let st = c.ch.stats().snapshot();
        assert_eq!(st.errors, vec![("failed", 3)]);
        assert_eq!(st.op(IoOp::Read).ops, 3);
        assert_eq!(st.op(IoOp::Write).ops, 6);
        // The failed reads never reached the base.
        let below = reg.get("M0").unwrap().local_stats().unwrap();
        assert_eq!(below.op(IoOp::Read).ops, 3);
        assert_eq!(below.failed(), 0);
    });
}

#[test]
fn error_all_types_nvme_failure_and_clear() {
    let (d, reg, desc) = error_rig();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 4);
        let buf = pattern(512, 1);
        // `all` arms every injectable op with its own count.
        inject(&reg, "EE_M0", "all", "failure", Some(2));
        for _ in 0..2 {
            assert_eq!(c.run(&d, IoOp::Write, 0, 1, &buf).status, IoStatus::Failed);
            assert_eq!(c.run(&d, IoOp::Read, 0, 1, &buf).status, IoStatus::Failed);
            assert_eq!(c.run(&d, IoOp::Unmap, 0, 1, &buf).status, IoStatus::Failed);
            assert_eq!(c.run(&d, IoOp::Flush, 0, 0, &buf).status, IoStatus::Failed);
            // write_zeroes is never injected (as SPDK).
            assert_eq!(c.run(&d, IoOp::WriteZeroes, 0, 1, &buf).status, IoStatus::Success);
        }
        assert_eq!(c.run(&d, IoOp::Read, 0, 1, &buf).status, IoStatus::Success);

        // clear disarms everything at once.
        inject(&reg, "EE_M0", "all", "failure", Some(100));
        assert_eq!(c.run(&d, IoOp::Read, 0, 1, &buf).status, IoStatus::Failed);
        inject(&reg, "EE_M0", "clear", "failure", None);
        for op in [IoOp::Read, IoOp::Write, IoOp::Unmap] {
            assert_eq!(c.run(&d, op, 0, 1, &buf).status, IoStatus::Success);
        }

        // nvme_failure fails like failure (Keel has no NVMe status codes on the data path).
        let mut o = InjectOpts::new("EE_M0", "write", "nvme_failure");
        o.nvme_sct = Some(0);
        o.nvme_sc = Some(2);
        error::inject(&reg, &o).unwrap();
        assert_eq!(c.run(&d, IoOp::Write, 0, 1, &buf).status, IoStatus::Failed);
        assert_eq!(c.run(&d, IoOp::Write, 0, 1, &buf).status, IoStatus::Success);

        // queue_depth: only affects an I/O when that many are in flight on the channel.
        let mut o = InjectOpts::new("EE_M0", "read", "failure");
        o.queue_depth = Some(2);
        error::inject(&reg, &o).unwrap();
        assert_eq!(c.run(&d, IoOp::Read, 0, 1, &buf).status, IoStatus::Success);
        for tag in 0..3 {
            assert!(c.start(IoOp::Read, tag, 1, &buf, tag));
        }
        let done = c.wait(&d, 3, Duration::from_secs(5));
        let st: Vec<_> = done.iter().map(|x| (x.tag, x.status)).collect();
        assert!(st.contains(&(2, IoStatus::Failed)), "{st:?}");
        assert_eq!(st.iter().filter(|x| x.1 == IoStatus::Failed).count(), 1);
    });
}

#[test]
fn error_pending_holds_until_clear() {
    let (d, reg, desc) = error_rig();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 8);
        let buf = pattern(512, 1);
        inject(&reg, "EE_M0", "read", "pending", Some(2));
        for tag in 0..3 {
            assert!(c.start(IoOp::Read, tag, 1, &buf, tag));
        }
        // The third read was not held.
        let done = c.wait(&d, 1, Duration::from_secs(5));
        assert_eq!((done[0].tag, done[0].status), (2, IoStatus::Success));
        // The held ones stay held however long the reactors run.
        assert!(c.wait(&d, 1, Duration::from_millis(20)).is_empty());
        inject(&reg, "EE_M0", "clear", "failure", None);
        let done = c.wait(&d, 2, Duration::from_secs(5));
        let st: Vec<_> = done.iter().map(|x| (x.tag, x.status)).collect();
        assert_eq!(st, vec![(0, IoStatus::Failed), (1, IoStatus::Failed)]);
        assert_eq!(c.run(&d, IoOp::Read, 0, 1, &buf).status, IoStatus::Success);

        // Pending armed after a clear is not released by the older clear.
        inject(&reg, "EE_M0", "read", "pending", Some(1));
        assert!(c.start(IoOp::Read, 5, 1, &buf, 5));
        assert!(c.wait(&d, 1, Duration::from_millis(10)).is_empty());
        // Deleting the bdev aborts what it holds.
        error::delete(&reg, "EE_M0", || {}).unwrap();
        let done = c.wait(&d, 1, Duration::from_secs(5));
        assert_eq!((done[0].tag, done[0].status), (5, IoStatus::Aborted));
    });
}

#[test]
fn error_corrupt_data_flips_exactly_one_byte() {
    let (d, reg, desc) = error_rig();
    let ro = reg.open("M0", false, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 2);
        let mut base = Client::new(&ro, 2);
        let data = pattern(1024, 5);
        let sent = copy_of(&data);

        // Write: the disk gets byte 5 XOR 0xff; the caller's buffer comes back as sent.
        let mut o = InjectOpts::new("EE_M0", "write", "corrupt_data");
        o.corrupt_offset = Some(5);
        o.corrupt_value = Some(0xff);
        error::inject(&reg, &o).unwrap();
        assert_eq!(c.run(&d, IoOp::Write, 10, 2, &data).status, IoStatus::Success);
        assert_eq!(copy_of(&data), sent);
        let disk = DmaBuf::new(1024);
        assert_eq!(base.run(&d, IoOp::Read, 10, 2, &disk).status, IoStatus::Success);
        let disk = copy_of(&disk);
        let diff: Vec<usize> = (0..1024).filter(|&i| disk[i] != sent[i]).collect();
        assert_eq!(diff, vec![5]);
        assert_eq!(disk[5], sent[5] ^ 0xff);
        // Used up: the next write is intact.
        assert_eq!(c.run(&d, IoOp::Write, 10, 2, &data).status, IoStatus::Success);

        // Read: byte 700 (in the second block) arrives XOR 0x01; the disk is untouched.
        let mut o = InjectOpts::new("EE_M0", "read", "corrupt_data");
        o.corrupt_offset = Some(700);
        o.corrupt_value = Some(0x01);
        error::inject(&reg, &o).unwrap();
        let back = DmaBuf::new(1024);
        assert_eq!(c.run(&d, IoOp::Read, 10, 2, &back).status, IoStatus::Success);
        let back_v = copy_of(&back);
        let diff: Vec<usize> = (0..1024).filter(|&i| back_v[i] != sent[i]).collect();
        assert_eq!(diff, vec![700]);
        assert_eq!(back_v[700], sent[700] ^ 0x01);
        assert_eq!(c.run(&d, IoOp::Read, 10, 2, &back).status, IoStatus::Success);
        assert_eq!(copy_of(&back), sent);

        // An offset past the request's data changes nothing.
        let mut o = InjectOpts::new("EE_M0", "read", "corrupt_data");
        o.corrupt_offset = Some(1 << 40);
        o.corrupt_value = Some(0x80);
        error::inject(&reg, &o).unwrap();
        assert_eq!(c.run(&d, IoOp::Read, 10, 2, &back).status, IoStatus::Success);
        assert_eq!(copy_of(&back), sent);
    });
}

#[test]
fn error_nomem_hands_requests_back() {
    let (d, reg, desc) = error_rig();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 2);
        let buf = pattern(512, 2);
        inject(&reg, "EE_M0", "write", "nomem", Some(2));
        assert!(!c.start(IoOp::Write, 0, 1, &buf, 1), "first write requeued");
        assert!(!c.start(IoOp::Write, 0, 1, &buf, 2), "second write requeued");
        assert!(c.start(IoOp::Read, 0, 1, &buf, 3), "reads are not affected");
        assert!(c.start(IoOp::Write, 0, 1, &buf, 4), "third write accepted");
        let done = c.wait(&d, 2, Duration::from_secs(5));
        assert!(done.iter().all(|x| x.status == IoStatus::Success), "{done:?}");
        // Backpressure is not an error in the statistics.
        assert_eq!(c.ch.stats().snapshot().failed(), 0);
    });
}

#[test]
fn error_inject_rejects_bad_params() {
    let (_d, reg, _desc) = error_rig();
    malloc::create(&reg, &malloc::MallocOpts::new("M1", 64, BS)).unwrap();
    passthru::create(&reg, &PassthruOpts::new("PT", "M1")).unwrap();
    let bad = |f: &dyn Fn(&mut InjectOpts)| {
        let mut o = InjectOpts::new("EE_M0", "read", "failure");
        f(&mut o);
        error::inject(&reg, &o)
    };
    assert_eq!(param_of(bad(&|o| o.io_type = "reed".into())), "io_type");
    assert_eq!(param_of(bad(&|o| o.error_type = "explode".into())), "error_type");
    let e = bad(&|o| o.error_type = "nvme_failure".into()).unwrap_err();
    assert!(e
        .to_string()
        .contains("nvme_sct or nvme_sc should be specified for NVMe error injection"));
    assert_eq!(e.errno(), -22);
    let sc_only = |o: &mut InjectOpts| o.nvme_sc = Some(1);
    assert_eq!(param_of(bad(&sc_only)), "nvme_sc");
    assert!(bad(&sc_only)
        .unwrap_err()
        .to_string()
        .contains("nvme_sct or nvme_sc should be specified"));
    assert_eq!(param_of(bad(&|o| o.nvme_sct = Some(1))), "nvme_sct");
    assert_eq!(
        param_of(bad(&|o| o.error_type = "corrupt_data".into())),
        "corrupt_value"
    );
    let zero = |o: &mut InjectOpts| {
        o.error_type = "corrupt_data".into();
        o.corrupt_value = Some(0);
    };
    assert_eq!(param_of(bad(&zero)), "corrupt_value");
    assert!(matches!(
        bad(&|o| o.name = "EE_nope".into()),
        Err(BdevError::NotFound(_))
    ));
    assert_eq!(param_of(bad(&|o| o.name = "PT".into())), "name");
    // nvme_failure with a status and corrupt_data with a value are fine; by UUID too.
    let mut o = InjectOpts::new("EE_M0", "read", "nvme_failure");
    o.nvme_sct = Some(1);
    error::inject(&reg, &o).unwrap();
    let mut o = InjectOpts::new(
        &reg.get("EE_M0").unwrap().info().uuid.to_string(),
        "all",
        "corrupt_data",
    );
    o.corrupt_value = Some(255);
    error::inject(&reg, &o).unwrap();
    // Strict decoding of the RPC parameters.
    assert!(serde_json::from_value::<InjectOpts>(json!({"name": "EE_M0", "io_type": "read"})).is_err());
    assert!(serde_json::from_value::<InjectOpts>(
        json!({"name": "EE_M0", "io_type": "read", "error_type": "failure", "bogus": 1})
    )
    .is_err());
}

// ---------------------------------------------------------------------------------------------
// delay

#[test]
fn delay_bdev_identity_config_and_update_latency() {
    let (d, reg) = rig(2);
    let mut o = DelayOpts::new("D0", "M0", 10, 20, 30, 40);
    o.uuid = Some("11111111-2222-4333-8444-555555555555".into());
    let dl = delay::create(&reg, &o).unwrap();
    let info = dl.info();
    assert_eq!(
        (info.product_name, info.module, info.block_size),
        ("delay", "delay", BS)
    );
    let expect = json!({
        "name": "D0", "base_bdev_name": "M0", "uuid": "11111111-2222-4333-8444-555555555555",
        "avg_read_latency": 10, "p99_read_latency": 20, "avg_write_latency": 30, "p99_write_latency": 40,
    });
    assert_eq!(dl.backend().driver_specific(), json!({ "delay": expect }));
    let cfg = dl.backend().config(info).unwrap();
    assert_eq!(cfg.method, "bdev_delay_create");
    assert_eq!(cfg.params, expect);
    assert_eq!(serde_json::from_value::<DelayOpts>(cfg.params).unwrap(), o);

    // update_latency: shows in config and takes effect for the next read.
    delay::update_latency(&reg, "D0", "avg_read", 3000).unwrap();
    delay::update_latency(&reg, "D0", "p99_read", 3000).unwrap();
    delay::update_latency(&reg, "D0", "avg_write", 0).unwrap();
    delay::update_latency(&reg, "D0", "p99_write", 0).unwrap();
    let p = dl.backend().config(info).unwrap().params;
    assert_eq!(
        (
            p["avg_read_latency"].clone(),
            p["p99_read_latency"].clone(),
            p["avg_write_latency"].clone()
        ),
        (json!(3000), json!(3000), json!(0))
    );
    let desc = reg.open("D0", true, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 2);
        let buf = pattern(512, 4);
        let r = c.run(&d, IoOp::Read, 0, 1, &buf);
        assert_eq!(r.status, IoStatus::Success);
        assert!(r.latency_us >= 3000.0, "read took {} us", r.latency_us);
    });
    assert_eq!(
        param_of(delay::update_latency(&reg, "D0", "max_read", 1)),
        "latency_type"
    );
    assert!(matches!(
        delay::update_latency(&reg, "nope", "avg_read", 1),
        Err(BdevError::NotFound(_))
    ));
    assert_eq!(param_of(delay::update_latency(&reg, "M0", "avg_read", 1)), "name");
}

#[test]
fn delay_reads_and_writes_wait_flush_does_not() {
    let (d, reg) = rig(2);
    delay::create(&reg, &DelayOpts::new("D0", "M0", 2000, 2000, 1000, 1000)).unwrap();
    let desc = reg.open("D0", true, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 4);
        let buf = pattern(4096, 4);
        let w = c.run(&d, IoOp::Write, 0, 8, &buf);
        assert_eq!(w.status, IoStatus::Success);
        assert!(w.latency_us >= 1000.0, "write took {} us", w.latency_us);
        let back = DmaBuf::new(4096);
        let r = c.run(&d, IoOp::Read, 0, 8, &back);
        assert_eq!(r.status, IoStatus::Success);
        assert!(r.latency_us >= 2000.0, "read took {} us", r.latency_us);
        assert_eq!(copy_of(&back), copy_of(&buf));
        // Not delayed: flush and unmap complete on the very next reactor turn.
        for op in [IoOp::Flush, IoOp::Unmap] {
            assert!(c.start(op, 0, if op == IoOp::Flush { 0 } else { 1 }, &buf, 1));
            d.turn();
            let done = c.wait(&d, 1, Duration::ZERO);
            assert_eq!(done.len(), 1, "{op:?} was delayed");
            assert_eq!(done[0].status, IoStatus::Success);
        }
        // The layer's own statistics saw the read latency.
        let st = c.ch.stats().snapshot();
        assert!(ticks_to_us(st.op(IoOp::Read).min_latency_ticks) >= 2000.0);
    });
}

#[test]
fn delay_one_in_a_hundred_waits_p99_and_removal_aborts_held() {
    let (d, reg) = rig(2);
    // avg 0 and a p99 far beyond the test: exactly the p99 requests stay held.
    delay::create(&reg, &DelayOpts::new("D0", "M0", 0, 60_000_000, 0, 60_000_000)).unwrap();
    let desc = reg.open("D0", true, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let mut c = Client::new(&desc, 256);
        let buf = pattern(512, 6);
        for tag in 0..200 {
            let op = if tag % 2 == 0 { IoOp::Read } else { IoOp::Write };
            assert!(c.start(op, tag % BLOCKS, 1, &buf, tag));
        }
        let done = c.wait(&d, 198, Duration::from_secs(10));
        assert_eq!(done.len(), 198);
        assert!(done.iter().all(|x| x.status == IoStatus::Success));
        // Nothing else completes: the 100th and 200th requests wait the p99 latency.
        assert!(c.wait(&d, 1, Duration::from_millis(20)).is_empty());
        let mut held: Vec<u64> = c.started.keys().copied().collect();
        held.sort();
        assert_eq!(held, vec![99, 199]);
        // Flush is never held, even while others are.
        assert!(c.start(IoOp::Flush, 0, 0, &buf, 1000));
        let f = c.wait(&d, 1, Duration::from_secs(5));
        assert_eq!((f[0].tag, f[0].status), (1000, IoStatus::Success));

        // Hot removal of the base: the layer goes and its held requests complete aborted.
        malloc::delete(&reg, "M0", || {}).unwrap();
        let done = c.wait(&d, 2, Duration::from_secs(5));
        let st: Vec<_> = done.iter().map(|x| x.status).collect();
        assert_eq!(st, vec![IoStatus::Aborted, IoStatus::Aborted]);
        d.run_until_idle(1000);
        assert!(reg.get("D0").is_none());
    });
    assert!(matches!(
        delay::update_latency(&reg, "D0", "avg_read", 1),
        Err(BdevError::NotFound(_))
    ));
}

#[test]
fn delay_reset_aborts_held_requests_on_every_core() {
    let (d, reg) = rig(2);
    delay::create(
        &reg,
        &DelayOpts::new("D0", "M0", 60_000_000, 60_000_000, 60_000_000, 60_000_000),
    )
    .unwrap();
    let desc = reg.open("D0", true, |_| {}).unwrap();
    let buf = pattern(512, 8);
    let mut c0 = d.enter(CoreId(0), || Client::new(&desc, 4));
    let mut c1 = d.enter(CoreId(1), || Client::new(&desc, 4));
    d.enter(CoreId(0), || {
        assert!(c0.start(IoOp::Read, 0, 1, &buf, 1));
        assert!(c0.start(IoOp::Write, 1, 1, &buf, 2));
    });
    d.enter(CoreId(1), || {
        assert!(c1.start(IoOp::Read, 2, 1, &buf, 3));
    });
    assert!(c0.wait(&d, 1, Duration::from_millis(10)).is_empty());
    assert!(c1.wait(&d, 1, Duration::ZERO).is_empty());
    // A reset on core 1 releases the held requests of both cores as aborted, and succeeds.
    d.enter(CoreId(1), || assert!(c1.start(IoOp::Reset, 0, 0, &buf, 4)));
    let mut on1: Vec<_> = c1
        .wait(&d, 2, Duration::from_secs(5))
        .iter()
        .map(|x| (x.tag, x.status))
        .collect();
    on1.sort_by_key(|x| x.0);
    assert_eq!(on1, vec![(3, IoStatus::Aborted), (4, IoStatus::Success)]);
    let mut on0: Vec<_> = c0
        .wait(&d, 2, Duration::from_secs(5))
        .iter()
        .map(|x| (x.tag, x.status))
        .collect();
    on0.sort_by_key(|x| x.0);
    assert_eq!(on0, vec![(1, IoStatus::Aborted), (2, IoStatus::Aborted)]);
    // Requests after the reset are delayed again (not aborted by the old reset).
    d.enter(CoreId(0), || assert!(c0.start(IoOp::Read, 0, 1, &buf, 5)));
    assert!(c0.wait(&d, 1, Duration::from_millis(10)).is_empty());
    delay::update_latency(&reg, "D0", "avg_read", 0).unwrap();
    delay::update_latency(&reg, "D0", "p99_read", 0).unwrap();
    // Already held with the old deadline: deleting the layer releases it.
    delay::delete(&reg, "D0", || {}).unwrap();
    let done = c0.wait(&d, 1, Duration::from_secs(5));
    assert_eq!((done[0].tag, done[0].status), (5, IoStatus::Aborted));
    d.enter(CoreId(0), || drop(c0));
    d.enter(CoreId(1), || drop(c1));
}

#[test]
fn no_allocation_per_io_through_three_layers() {
    let (d, reg) = rig(1);
    passthru::create(&reg, &PassthruOpts::new("PT0", "M0")).unwrap();
    error::create(
        &reg,
        &ErrorOpts {
            base_name: "PT0".into(),
            uuid: None,
        },
    )
    .unwrap();
    delay::create(&reg, &DelayOpts::new("D0", "EE_PT0", 0, 0, 0, 0)).unwrap();
    let desc = reg.open("D0", true, |_| {}).unwrap();
    const DEPTH: usize = 32;
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let cq = CompletionQueue::with_capacity(DEPTH);
        let mut pool = IoPool::new(DEPTH);
        let bufs: Vec<DmaBuf> = (0..DEPTH).map(|i| pattern(4096, i as u8)).collect();
        let (mut ok, mut failed, mut requeued) = (0u64, 0u64, 0u64);
        // Keeps DEPTH requests in flight for `rounds` completions; only reused objects.
        let mut run = |rounds: u64, ok: &mut u64, failed: &mut u64, requeued: &mut u64| {
            let mut next = 0u64;
            let mut completed = 0u64;
            while completed < rounds {
                while let Some(mut io) = pool.get() {
                    let i = (next as usize) % DEPTH;
                    io.iovs.clear();
                    io.iovs.push(IoVec::whole(bufs[i].clone()));
                    let op = [IoOp::Read, IoOp::Write, IoOp::Read, IoOp::Flush][i % 4];
                    let n = if op == IoOp::Flush { 0 } else { 8 };
                    io.prepare(op, (i as u64 * 8) % (BLOCKS - 8), n);
                    next += 1;
                    if let Submit::Requeue(io) = ch.submit(io, &cq) {
                        *requeued += 1;
                        pool.put(io);
                        break;
                    }
                }
                d.turn();
                while let Some(mut io) = cq.pop() {
                    if io.status() == IoStatus::Success {
                        *ok += 1;
                    } else {
                        *failed += 1;
                    }
                    io.iovs.clear();
                    pool.put(io);
                    completed += 1;
                }
            }
        };
        // Warm-up: channels, queues and pools reach their high-water marks.
        run(2000, &mut ok, &mut failed, &mut requeued);
        // Armed injections are exercised inside the measured window (arming is control path).
        inject(&reg, "EE_PT0", "read", "failure", Some(5));
        inject(&reg, "EE_PT0", "write", "nomem", Some(3));
        let (ok0, failed0, requeued0) = (ok, failed, requeued);
        let before = keel_testkit::thread_allocations();
        drop(std::hint::black_box(Box::new(0u64)));
        assert_eq!(
            keel_testkit::thread_allocations(),
            before + 1,
            "the counter counts this thread's allocations"
        );
        let before = keel_testkit::thread_allocations();
        run(4000, &mut ok, &mut failed, &mut requeued);
        let allocs = keel_testkit::thread_allocations() - before;
        assert_eq!(failed - failed0, 5);
        assert_eq!(requeued - requeued0, 3);
        assert!(ok - ok0 >= 3995);
        assert_eq!(allocs, 0, "allocations on the data path");
        drop(ch);
    });
}
