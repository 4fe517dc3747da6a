//! The generic I/O path on the deterministic driver: validation, completion delivery from the
//! owner's poller, statistics, claims, backpressure-free modules, hot removal.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keel_bdev::modules::{malloc, null};
use keel_bdev::{BdevError, BdevEvent, BdevRegistry, CompletionQueue, DmaBuf, IoOp, IoPool, IoStatus, IoVec, Submit};
use keel_reactor::{CoreId, TestDriver};

fn submit_and_wait(d: &TestDriver, ch: &keel_bdev::Channel, op: IoOp, off: u64, n: u64, buf: &DmaBuf) -> IoStatus {
    let cq = CompletionQueue::with_capacity(4);
    let mut pool = IoPool::new(1);
    let mut io = pool.get().unwrap();
    io.iovs.clear();
    io.iovs.push(IoVec::whole(buf.clone()));
    io.prepare(op, off, n);
    assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
    // Delivered through the queue, never synchronously to the caller.
    let mut status = None;
    for _ in 0..1000 {
        if let Some(io) = cq.pop() {
            status = Some(io.status());
            break;
        }
        d.turn();
    }
    status.expect("completion delivered")
}

#[test]
fn malloc_write_read_and_validation() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &malloc::MallocOpts::new("Malloc0", 64, 512)).unwrap();
    let desc = reg.open("Malloc0", true, |_| {}).unwrap();
    d.enter(CoreId(1), || {
        let ch = desc.channel();
        let buf = DmaBuf::new(4096);
        for (i, b) in buf.bytes_mut().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        assert_eq!(submit_and_wait(&d, &ch, IoOp::Write, 8, 8, &buf), IoStatus::Success);
        let back = DmaBuf::new(4096);
        assert_eq!(submit_and_wait(&d, &ch, IoOp::Read, 8, 8, &back), IoStatus::Success);
        assert_eq!(&*back.bytes(), &*buf.bytes());
        // Out of range, zero length, short buffer.
        assert_eq!(
            submit_and_wait(&d, &ch, IoOp::Read, 60, 8, &back),
            IoStatus::InvalidRange
        );
        assert_eq!(
            submit_and_wait(&d, &ch, IoOp::Read, 0, 0, &back),
            IoStatus::InvalidRange
        );
        assert_eq!(
            submit_and_wait(&d, &ch, IoOp::Read, 0, 16, &back),
            IoStatus::InvalidRange
        );
        // Unmap zeroes.
        assert_eq!(submit_and_wait(&d, &ch, IoOp::Unmap, 8, 8, &back), IoStatus::Success);
        assert_eq!(submit_and_wait(&d, &ch, IoOp::Read, 8, 8, &back), IoStatus::Success);
        assert!(back.bytes().iter().all(|&b| b == 0));
        let st = ch.stats().snapshot();
        assert_eq!(st.op(IoOp::Write).ops, 1);
        assert_eq!(st.op(IoOp::Write).bytes, 4096);
        assert_eq!(st.op(IoOp::Read).ops, 2);
        assert_eq!(st.failed(), 3);
    });
}

#[test]
fn read_only_descriptor_refuses_writes() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    null::create(&reg, &null::NullOpts::new("Null0", 128, 512)).unwrap();
    let desc = reg.open("Null0", false, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let buf = DmaBuf::new(4096);
        assert_eq!(submit_and_wait(&d, &ch, IoOp::Write, 0, 1, &buf), IoStatus::ReadOnly);
        assert_eq!(submit_and_wait(&d, &ch, IoOp::Read, 0, 1, &buf), IoStatus::Success);
    });
}

#[test]
fn claims_are_exclusive() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    null::create(&reg, &null::NullOpts::new("Null0", 128, 512)).unwrap();
    let a = reg.open("Null0", true, |_| {}).unwrap();
    a.claim("passthru").unwrap();
    assert!(matches!(
        reg.open("Null0", true, |_| {}),
        Err(BdevError::Claimed { .. })
    ));
    let ro = reg.open("Null0", false, |_| {}).unwrap();
    assert!(matches!(ro.claim("other"), Err(BdevError::Claimed { .. })));
    drop(a);
    let w = reg.open("Null0", true, |_| {}).unwrap();
    assert!(matches!(ro.claim("other"), Err(BdevError::HasWriters { .. })));
    drop(w);
    ro.claim("other").unwrap();
}

#[test]
fn registry_rejects_duplicates_and_bad_params() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    null::create(&reg, &null::NullOpts::new("Null0", 128, 512)).unwrap();
    assert!(matches!(
        null::create(&reg, &null::NullOpts::new("Null0", 128, 512)),
        Err(BdevError::Exists(_))
    ));
    assert!(null::create(&reg, &null::NullOpts::new("Bad", 128, 1000)).is_err());
    assert!(null::create(&reg, &null::NullOpts::new("Bad", 0, 512)).is_err());
    assert!(null::create(&reg, &null::NullOpts::new("has space", 1, 512)).is_err());
    assert!(malloc::create(&reg, &malloc::MallocOpts::new("Huge", u64::MAX / 512, 512)).is_err());
    assert_eq!(reg.list().len(), 1);
    // Lookup by UUID.
    let u = reg.get("Null0").unwrap().info().uuid.to_string();
    assert_eq!(reg.get(&u).unwrap().name(), "Null0");
    // Delete of another module's bdev is refused as not found.
    assert!(malloc::delete(&reg, "Null0", || {}).is_err());
}

#[test]
fn hot_removal_fails_new_io_and_tells_openers() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &malloc::MallocOpts::new("M", 64, 512)).unwrap();
    let events = Arc::new(AtomicUsize::new(0));
    let e2 = events.clone();
    let desc = d.enter(CoreId(1), || {
        reg.open("M", true, move |ev| {
            assert_eq!(ev, BdevEvent::Remove);
            assert_eq!(keel_reactor::current().core(), CoreId(1));
            e2.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap()
    });
    let done = Rc::new(RefCell::new(false));
    let ch = d.enter(CoreId(1), || desc.channel());
    malloc::delete(&reg, "M", || {}).unwrap();
    assert!(reg.get("M").is_none());
    d.run_until_idle(100);
    assert_eq!(events.load(Ordering::SeqCst), 1);
    d.enter(CoreId(1), || {
        let buf = DmaBuf::new(512);
        assert_eq!(submit_and_wait(&d, &ch, IoOp::Read, 0, 1, &buf), IoStatus::Removed);
    });
    *done.borrow_mut() = true;
    d.enter(CoreId(1), || drop(ch));
    drop(desc);
}
