//! The QoS/histogram gate on the deterministic driver: a rate limit queues what exceeds the
//! timeslice budget and the gate poller releases it as tokens come; histograms count every
//! completion per core and merge across cores; lifting both takes the channel back to its
//! ungated path and the gate's poller away.

use std::sync::{Arc, Mutex};

use keel_bdev::modules::null;
use keel_bdev::{
    BdevRegistry, CompletionQueue, DmaBuf, Histogram, IoCaps, IoOp, IoPool, IoStatus, IoVec, QosLimits, Submit,
};
use keel_reactor::{current, ticks, ticks_per_sec, CoreId, TestDriver};

const N: usize = 20;

fn fill(pool: &mut IoPool, buf: &DmaBuf, op: IoOp, off: u64) -> keel_bdev::IoBox {
    let mut io = pool.get().unwrap();
    io.iovs.clear();
    io.iovs.push(IoVec::whole(buf.clone()));
    io.prepare(op, off, 1);
    io
}

#[test]
fn a_limit_queues_beyond_the_budget_and_releases_with_time() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    null::create(&reg, &null::NullOpts::new("Null0", 1024, 512)).unwrap();
    let bdev = reg.get("Null0").unwrap();
    let desc = reg.open("Null0", true, |_| {}).unwrap();
    let (ch, pollers_before) = d.enter(CoreId(0), || (desc.channel(), current().poller_count()));
    let limits = QosLimits {
        rw_ios_per_sec: 1000,
        ..Default::default()
    };
    d.enter(CoreId(0), || bdev.set_qos_limits(limits, || {}));
    d.run_until_idle(100);
    assert_eq!(bdev.qos_limits(), limits);
    assert_eq!(d.enter(CoreId(0), || current().poller_count()), pollers_before + 1);

    let cq = CompletionQueue::with_capacity(N);
    let mut pool = IoPool::new(N);
    let buf = DmaBuf::new(512);
    let start = ticks();
    d.enter(CoreId(0), || {
        for i in 0..N {
            let io = fill(&mut pool, &buf, IoOp::Read, i as u64);
            assert!(
                matches!(ch.submit(io, &cq), Submit::Accepted),
                "throttled I/O is queued, not refused"
            );
        }
    });
    // One I/O per 1 ms timeslice: the first went at once, the rest wait for later timeslices.
    assert!(cq.len() < N, "a 1000 IOPS limit let {} I/Os through at once", cq.len());
    assert!(d.run_until(10_000_000, || cq.len() == N), "queued I/O released");
    let elapsed_ms = (ticks() - start) * 1000 / ticks_per_sec();
    // A lower bound only (a slow machine takes longer, never less): 20 I/Os at 1 per ms, with
    // the first timeslice's and at most a catch-up's worth early.
    assert!(
        elapsed_ms + 12 >= N as u64,
        "20 I/Os at 1000 IOPS took only {elapsed_ms} ms"
    );
    while let Some(io) = cq.pop() {
        assert_eq!(io.status(), IoStatus::Success);
        pool.put(io);
    }
    d.enter(CoreId(0), || {
        assert_eq!(ch.stats().snapshot().op(IoOp::Read).ops, N as u64)
    });

    // Flushes pass a limit (SPDK limits only the ops that address data).
    d.enter(CoreId(0), || {
        for _ in 0..N {
            let mut io = pool.get().unwrap();
            io.prepare(IoOp::Flush, 0, 0);
            assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
        }
    });
    assert_eq!(cq.len(), N, "flushes are not throttled");
    while let Some(io) = cq.pop() {
        pool.put(io);
    }

    // Lifting the limit releases what waits and removes the gate's poller.
    d.enter(CoreId(0), || {
        for i in 0..N {
            let io = fill(&mut pool, &buf, IoOp::Write, i as u64);
            assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
        }
    });
    d.enter(CoreId(0), || bdev.set_qos_limits(QosLimits::default(), || {}));
    d.run_until_idle(1000);
    assert_eq!(cq.len(), N, "lifting the limit released the queue");
    assert!(bdev.qos_limits().is_unlimited());
    assert_eq!(d.enter(CoreId(0), || current().poller_count()), pollers_before);
    while let Some(io) = cq.pop() {
        pool.put(io);
    }
    d.enter(CoreId(0), move || drop(ch));
    d.run_until_idle(100);
}

#[test]
fn histograms_count_per_core_and_merge() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    null::create(&reg, &null::NullOpts::new("Null0", 1024, 512)).unwrap();
    let bdev = reg.get("Null0").unwrap();
    let desc = reg.open("Null0", true, |_| {}).unwrap();
    let chs: Vec<_> = (0..2).map(|c| d.enter(CoreId(c), || desc.channel())).collect();
    d.enter(CoreId(0), || {
        bdev.set_histogram(Some(IoCaps::of(&[IoOp::Write])), || {})
    });
    d.run_until_idle(100);
    assert_eq!(bdev.histogram_ops(), Some(IoCaps::of(&[IoOp::Write])));

    let cq = CompletionQueue::with_capacity(4 * N);
    let mut pool = IoPool::new(4 * N);
    let buf = DmaBuf::new(512);
    for (c, ch) in chs.iter().enumerate() {
        d.enter(CoreId(c as u32), || {
            for i in 0..N {
                for op in [IoOp::Write, IoOp::Read] {
                    let io = fill(&mut pool, &buf, op, i as u64);
                    assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
                }
            }
        });
    }
    assert!(d.run_until(1000, || cq.len() == 4 * N));
    while let Some(io) = cq.pop() {
        assert_eq!(io.status(), IoStatus::Success);
        pool.put(io);
    }
    // Statistics count every completion once, gate or not.
    for (c, ch) in chs.iter().enumerate() {
        d.enter(CoreId(c as u32), || {
            let s = ch.stats().snapshot();
            assert_eq!((s.op(IoOp::Write).ops, s.op(IoOp::Read).ops), (N as u64, N as u64));
        });
    }
    let got: Arc<Mutex<Option<Option<Histogram>>>> = Arc::default();
    let g2 = got.clone();
    d.enter(CoreId(0), || {
        bdev.collect_histogram(move |h| *g2.lock().unwrap() = Some(h))
    });
    d.run_until_idle(100);
    let h = got.lock().unwrap().take().expect("collected").expect("histogram on");
    assert_eq!(h.total(), 2 * N as u64, "only writes, from both cores");

    // A channel that closes keeps its counts in the bdev's histogram.
    let mut chs = chs;
    let last = chs.pop().unwrap();
    d.enter(CoreId(1), move || drop(last));
    d.run_until_idle(100);
    let g2 = got.clone();
    d.enter(CoreId(0), || {
        bdev.collect_histogram(move |h| *g2.lock().unwrap() = Some(h))
    });
    d.run_until_idle(100);
    let h = got.lock().unwrap().take().expect("collected").expect("histogram on");
    assert_eq!(h.total(), 2 * N as u64, "the closed channel's counts stay");

    // Off: no histogram, and the channels go back to their plain path.
    d.enter(CoreId(0), || bdev.set_histogram(None, || {}));
    d.run_until_idle(100);
    let g2 = got.clone();
    d.enter(CoreId(0), || {
        bdev.collect_histogram(move |h| *g2.lock().unwrap() = Some(h))
    });
    d.run_until_idle(100);
    assert_eq!(got.lock().unwrap().take(), Some(None));
    for (c, ch) in chs.into_iter().enumerate() {
        d.enter(CoreId(c as u32), move || drop(ch));
    }
    d.run_until_idle(100);
}

#[test]
fn hot_removal_fails_what_waits_for_tokens() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    null::create(&reg, &null::NullOpts::new("Null0", 1024, 512)).unwrap();
    let bdev = reg.get("Null0").unwrap();
    let desc = reg.open("Null0", true, |_| {}).unwrap();
    let ch = d.enter(CoreId(0), || desc.channel());
    d.enter(CoreId(0), || {
        bdev.set_qos_limits(
            QosLimits {
                rw_ios_per_sec: 1000,
                ..Default::default()
            },
            || {},
        )
    });
    d.run_until_idle(100);
    let cq = CompletionQueue::with_capacity(N);
    let mut pool = IoPool::new(N);
    let buf = DmaBuf::new(512);
    d.enter(CoreId(0), || {
        for i in 0..N {
            let io = fill(&mut pool, &buf, IoOp::Read, i as u64);
            assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
        }
    });
    d.enter(CoreId(0), || reg.unregister("Null0", || {}).unwrap());
    assert!(d.run_until(1000, || cq.len() == N), "every request came back");
    let removed = std::iter::from_fn(|| cq.pop())
        .filter(|io| io.status() == IoStatus::Removed)
        .count();
    assert!(removed > 0, "what waited for tokens failed with the removal");
    d.enter(CoreId(0), move || drop((ch, desc)));
    d.run_until_idle(100);
}
