//! The split module (SPDK's bdev_split) on the deterministic driver: parts map onto the base at
//! their offsets (routed and not), sizes and clamping as SPDK, configurations that wait for
//! their base, refusals that leave nothing behind, delete and hot removal, save_config.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keel_bdev::modules::malloc;
use keel_bdev::modules::passthru::{self, PassthruOpts};
use keel_bdev::modules::split::{self, SplitOpts};
use keel_bdev::{BdevError, BdevRegistry, Channel, CompletionQueue, DmaBuf, IoOp, IoPool, IoStatus, IoVec, Submit};
use keel_reactor::{CoreId, TestDriver};
use serde_json::json;

const BS: u32 = 512;

fn rig(base_blocks: u64) -> (TestDriver, Arc<BdevRegistry>) {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &malloc::MallocOpts::new("M0", base_blocks, BS)).unwrap();
    (d, reg)
}

fn opts(base: &str, count: u32, size_mb: u64) -> SplitOpts {
    SplitOpts {
        base_bdev: base.to_string(),
        split_count: count,
        split_size_mb: size_mb,
    }
}

fn io(d: &TestDriver, ch: &Channel, op: IoOp, off: u64, n: u64, buf: &DmaBuf) -> IoStatus {
    let cq = CompletionQueue::with_capacity(4);
    let mut pool = IoPool::new(1);
    let mut r = pool.get().unwrap();
    r.iovs.clear();
    r.iovs.push(IoVec::whole(buf.clone()));
    r.prepare(op, off, n);
    assert!(matches!(ch.submit(r, &cq), Submit::Accepted));
    for _ in 0..1000 {
        if let Some(r) = cq.pop() {
            return r.status();
        }
        d.turn();
    }
    panic!("no completion")
}

fn pattern(len: usize, seed: u8) -> DmaBuf {
    let b = DmaBuf::new(len);
    for (i, x) in b.bytes_mut().iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    b
}

#[test]
fn parts_map_onto_the_base_at_their_offsets() {
    let (d, reg) = rig(256);
    let names = split::module(&reg).create(&reg, &opts("M0", 4, 0)).unwrap();
    assert_eq!(names, ["M0p0", "M0p1", "M0p2", "M0p3"]);
    let base = reg.get("M0").unwrap();
    assert_eq!(base.claimed_by().as_deref(), Some("split"));
    for (i, n) in names.iter().enumerate() {
        let b = reg.get(n).unwrap();
        let info = b.info();
        assert_eq!(
            (info.product_name, info.module, info.block_size, info.num_blocks),
            ("Split Disk", "split", BS, 64)
        );
        assert_eq!(
            b.backend().driver_specific(),
            json!({"split": {"base_bdev": "M0", "offset_blocks": i as u64 * 64}})
        );
    }
    let parts: Vec<_> = names.iter().map(|n| reg.open(n, true, |_| {}).unwrap()).collect();
    let whole = reg.open("M0", false, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let chans: Vec<Channel> = parts.iter().map(|p| p.channel()).collect();
        // Single blocks (routed by the core) and a request over the whole part.
        for (i, ch) in chans.iter().enumerate() {
            let one = pattern(512, i as u8);
            assert_eq!(io(&d, ch, IoOp::Write, 63, 1, &one), IoStatus::Success);
            let head = pattern(63 * 512, 100 + i as u8);
            assert_eq!(io(&d, ch, IoOp::Write, 0, 63, &head), IoStatus::Success);
        }
        let wch = whole.channel();
        for i in 0..4u64 {
            let back = DmaBuf::new(64 * 512);
            assert_eq!(io(&d, &wch, IoOp::Read, i * 64, 64, &back), IoStatus::Success);
            let want_head = pattern(63 * 512, 100 + i as u8);
            assert_eq!(&back.bytes()[..63 * 512], &*want_head.bytes(), "part {i}");
            assert_eq!(&back.bytes()[63 * 512..], &*pattern(512, i as u8).bytes(), "part {i}");
            // And back through the part.
            let via = DmaBuf::new(64 * 512);
            assert_eq!(io(&d, &chans[i as usize], IoOp::Read, 0, 64, &via), IoStatus::Success);
            assert_eq!(&*via.bytes(), &*back.bytes());
        }
        // A part ends where it ends.
        let b = DmaBuf::new(1024);
        assert_eq!(io(&d, &chans[0], IoOp::Read, 63, 2, &b), IoStatus::InvalidRange);
        assert_eq!(io(&d, &chans[3], IoOp::Read, 64, 1, &b), IoStatus::InvalidRange);
    });
}

#[test]
fn sizes_clamp_and_refusals_leave_nothing_behind() {
    // 4 MiB base: 1 MiB parts, 8 asked, 4 fit.
    let (_d, reg) = rig(8192);
    let m = split::module(&reg);
    assert_eq!(m.create(&reg, &opts("M0", 8, 1)).unwrap().len(), 4);
    assert_eq!(reg.get("M0p3").unwrap().info().num_blocks, 2048);
    // One configuration per base.
    assert!(matches!(
        m.create(&reg, &opts("M0", 2, 0)),
        Err(BdevError::AlreadyConfigured(_))
    ));
    assert_eq!(reg.list().len(), 5);

    malloc::create(&reg, &malloc::MallocOpts::new("M1", 16, BS)).unwrap();
    // Zero parts, a part larger than the base, more parts than blocks.
    for (count, mb) in [(0, 0), (1, 1), (17, 0)] {
        let r = m.create(&reg, &opts("M1", count, mb));
        assert!(matches!(r, Err(BdevError::InvalidParam { .. })), "{count} {mb}: {r:?}");
        assert_eq!(reg.get("M1").unwrap().claimed_by(), None);
        assert!(m.parts_of("M1").is_empty());
    }
    // A claimed base: refused, nothing stored (a later split of it works once released).
    passthru::create(&reg, &PassthruOpts::new("P1", "M1")).unwrap();
    assert!(matches!(
        m.create(&reg, &opts("M1", 2, 0)),
        Err(BdevError::Claimed { .. })
    ));
    passthru::delete(&reg, "P1", || {}).unwrap();
    _d.run_until_idle(1000);
    assert_eq!(m.create(&reg, &opts("M1", 2, 0)).unwrap(), ["M1p0", "M1p1"]);
    // A part name already taken.
    malloc::create(&reg, &malloc::MallocOpts::new("M2", 16, BS)).unwrap();
    malloc::create(&reg, &malloc::MallocOpts::new("M2p1", 16, BS)).unwrap();
    assert!(matches!(m.create(&reg, &opts("M2", 2, 0)), Err(BdevError::Exists(_))));
    assert!(reg.get("M2p0").is_none());
    assert_eq!(reg.get("M2").unwrap().claimed_by(), None);
}

#[test]
fn a_configuration_waits_for_its_base_and_is_saved_meanwhile() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    let m = split::module(&reg);
    assert!(m.create(&reg, &opts("Later", 2, 0)).unwrap().is_empty());
    let plan = reg.config_plan();
    let calls = plan.calls("bdev").unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "bdev_split_create");
    assert_eq!(
        calls[0].params,
        json!({"base_bdev": "Later", "split_count": 2, "split_size_mb": 0})
    );
    malloc::create(&reg, &malloc::MallocOpts::new("Later", 64, BS)).unwrap();
    assert_eq!(reg.get("Later").unwrap().claimed_by().as_deref(), Some("split"));
    assert_eq!(reg.get("Laterp1").unwrap().info().num_blocks, 32);
    // Saved after the base, parts not saved on their own.
    let plan = reg.config_plan();
    let methods: Vec<_> = plan.calls("bdev").unwrap().iter().map(|c| c.method).collect();
    assert_eq!(methods, ["bdev_malloc_create", "bdev_split_create"]);
}

#[test]
fn delete_removes_the_parts_and_the_configuration() {
    let (d, reg) = rig(256);
    let m = split::module(&reg);
    m.create(&reg, &opts("M0", 2, 0)).unwrap();
    // A part someone serves outside refuses the delete; nothing changes.
    let held = reg.open("M0p1", false, |_| {}).unwrap();
    held.hold("nbd export 'x'");
    let r = m.delete(&reg, "M0", || {});
    assert!(
        matches!(&r, Err(BdevError::InUse { holders, .. }) if holders.contains("nbd export 'x'")),
        "{r:?}"
    );
    assert!(reg.get("M0p0").is_some() && reg.get("M0p1").is_some());
    drop(held);
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    m.delete(&reg, "M0", move || d2.store(true, Ordering::SeqCst)).unwrap();
    d.run_until_idle(1000);
    assert!(done.load(Ordering::SeqCst));
    assert!(reg.get("M0p0").is_none() && reg.get("M0p1").is_none());
    let base = reg.get("M0").unwrap();
    assert_eq!((base.claimed_by(), base.open_count()), (None, 0));
    assert!(matches!(m.delete(&reg, "M0", || {}), Err(BdevError::NotConfigured(_))));
    assert!(reg
        .config_plan()
        .calls("bdev")
        .unwrap()
        .iter()
        .all(|c| c.method != "bdev_split_create"));
    // Split again.
    assert_eq!(m.create(&reg, &opts("M0", 2, 0)).unwrap().len(), 2);
}

#[test]
fn hot_removal_of_the_base_takes_the_parts_and_the_configuration() {
    let (d, reg) = rig(256);
    let m = split::module(&reg);
    d.enter(CoreId(0), || {
        m.create(&reg, &opts("M0", 4, 0)).unwrap();
    });
    let part = reg.open("M0p2", true, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let ch = part.channel();
        let b = pattern(512, 1);
        assert_eq!(io(&d, &ch, IoOp::Write, 0, 1, &b), IoStatus::Success);
        malloc::delete(&reg, "M0", || {}).unwrap();
        d.run_until_idle(1000);
        assert_eq!(io(&d, &ch, IoOp::Read, 0, 1, &b), IoStatus::Removed);
    });
    assert!(
        reg.list().is_empty(),
        "{:?}",
        reg.list().iter().map(|b| b.name().to_string()).collect::<Vec<_>>()
    );
    assert!(m.parts_of("M0").is_empty());
    assert!(matches!(m.delete(&reg, "M0", || {}), Err(BdevError::NotConfigured(_))));
}
