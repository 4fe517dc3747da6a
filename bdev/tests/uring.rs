//! The uring/aio file bdev on the deterministic driver, over real files in a temporary
//! directory: data round trips at 512 B and 4 KiB blocks with many requests in flight (multi-
//! segment included) and the bytes visible in the file afterwards, flush, unmap/write_zeroes,
//! backpressure, bad input, duplicate names, hot removal with I/O in flight, read-only aio,
//! config() round trips, delete, a block device (loop) when the machine allows one, and a
//! counting allocator proving steady-state I/O allocates nothing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::uring::{self, AioOpts, UringOpts};
use keel_bdev::modules::{malloc, null};
use keel_bdev::{
    Bdev, BdevError, BdevRegistry, Channel, CompletionQueue, DmaBuf, IoBox, IoOp, IoPool, IoRequest, IoStatus, IoVec,
    Submit,
};
use keel_reactor::{CoreId, TestDriver};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// A per-thread counting allocator (tests run on parallel threads; each counts only its own).
// ---------------------------------------------------------------------------------------------

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const MIB: u64 = 1 << 20;
/// Every pool request owns one buffer this large; segments sit at `SEG_STRIDE` multiples in it.
const REQ_BUF_BYTES: usize = 1 << 20;
const SEG_STRIDE: usize = 128 << 10;

/// Deterministic content of byte `pos` of the file.
fn pat(pos: u64) -> u8 {
    let x = (pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pos.rotate_left(29);
    (x >> 56) as u8 ^ (pos as u8)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn make_file(dir: &Path, name: &str, len_bytes: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(len_bytes).unwrap();
    p
}

fn uring_opts(path: &Path, name: &str, block_size: Option<u32>) -> UringOpts {
    UringOpts {
        filename: path.to_str().unwrap().to_string(),
        name: name.to_string(),
        block_size,
        uuid: None,
    }
}

fn aio_opts(path: &Path, name: &str, readonly: bool, fallocate: bool) -> AioOpts {
    AioOpts {
        name: name.to_string(),
        filename: path.to_str().unwrap().to_string(),
        block_size: None,
        readonly: Some(readonly),
        fallocate: Some(fallocate),
        uuid: None,
        nowait: None,
    }
}

/// The error of a create that must fail.
fn err_of(r: Result<Arc<Bdev>, BdevError>) -> BdevError {
    match r {
        Ok(b) => panic!("bdev '{}' was created", b.name()),
        Err(e) => e,
    }
}

/// One request, waited for by turning the reactors.
fn run_one(d: &TestDriver, ch: &Channel, op: IoOp, off_blocks: u64, num_blocks: u64, buf: &DmaBuf) -> IoStatus {
    let cq = CompletionQueue::with_capacity(4);
    let mut io = IoRequest::new_boxed();
    io.iovs.push(IoVec::whole(buf.clone()));
    io.prepare(op, off_blocks, num_blocks);
    assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(io) = cq.pop() {
            return io.status();
        }
        d.turn();
    }
    panic!("request never completed");
}

/// Splits `num_blocks` into 1..=max_segs block-aligned segments placed at `SEG_STRIDE` steps
/// in the request's buffer (so `offset_bytes` is exercised) as the scatter list. Returns whether
/// every segment fits its stride (callers retry until it does).
fn split_into(io: &mut IoRequest, buf: &DmaBuf, rng: &mut Rng, num_blocks: u64, bs: u64, max_segs: u64) -> bool {
    io.iovs.clear();
    let segs = 1 + rng.below(max_segs.min(num_blocks));
    let mut left = num_blocks;
    for s in 0..segs {
        let n = if s + 1 == segs {
            left
        } else {
            1 + rng.below(left - (segs - s - 1))
        };
        io.iovs.push(IoVec {
            buf: buf.clone(),
            offset_bytes: (s as usize * SEG_STRIDE) as u32,
            len_bytes: (n * bs) as u32,
        });
        left -= n;
    }
    io.iovs.iter().all(|v| v.len_bytes as usize <= SEG_STRIDE)
}

/// Requests of one submitter and those handed back for retry (capacity reserved up front).
struct Load {
    pool: IoPool,
    retry: Vec<IoBox>,
}

impl Load {
    fn new(pool: IoPool) -> Load {
        let retry = Vec::with_capacity(pool.capacity());
        Load { pool, retry }
    }
}

/// Keeps up to `pool.capacity()` requests in flight until `total` were made by `make` and all
/// completed through `check`. Requests handed back (`Requeue`) are retried first after the next
/// turn. Returns how many `Requeue`s were seen. Allocates nothing once `retry` has its capacity.
fn pump(
    d: &TestDriver,
    ch: &Channel,
    cq: &CompletionQueue,
    load: &mut Load,
    total: usize,
    mut make: impl FnMut(&mut IoRequest),
    mut check: impl FnMut(&IoRequest),
) -> usize {
    let Load { pool, retry } = load;
    let mut made = 0;
    let mut requeues = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        'submit: loop {
            let io = match retry.pop() {
                Some(io) => io,
                None if made < total => match pool.get() {
                    Some(mut io) => {
                        make(&mut io);
                        made += 1;
                        io
                    }
                    None => break 'submit,
                },
                None => break 'submit,
            };
            match ch.submit(io, cq) {
                Submit::Accepted => {}
                Submit::Requeue(io) => {
                    requeues += 1;
                    retry.push(io);
                    break 'submit;
                }
            }
        }
        d.turn();
        cq.drain_now(|io| {
            check(&io);
            pool.put(io);
        });
        if made == total && retry.is_empty() && pool.outstanding() == 0 {
            return requeues;
        }
        assert!(Instant::now() < deadline, "I/O did not finish in time");
    }
}

/// A pool whose requests carry `tag` = index into `bufs` (one buffer per request).
fn tagged_pool(n: usize) -> (IoPool, Vec<DmaBuf>) {
    let mut pool = IoPool::new(n);
    let mut taken = Vec::new();
    for i in 0..n {
        let mut io = pool.get().unwrap();
        io.tag = i as u64;
        taken.push(io);
    }
    for io in taken {
        pool.put(io);
    }
    (pool, (0..n).map(|_| DmaBuf::new(REQ_BUF_BYTES)).collect())
}

/// Checks that every segment of a completed read holds the pattern of its file position.
fn verify_read(io: &IoRequest, bs: u64) {
    assert_eq!(io.status(), IoStatus::Success, "read at block {}", io.offset_blocks);
    let mut pos = io.offset_blocks * bs;
    for v in &io.iovs {
        let bytes = v.buf.bytes();
        let win = &bytes[v.offset_bytes as usize..(v.offset_bytes + v.len_bytes) as usize];
        for (i, &b) in win.iter().enumerate() {
            if b != pat(pos + i as u64) {
                panic!(
                    "byte {} of the file reads {b:#x}, expected {:#x}",
                    pos + i as u64,
                    pat(pos + i as u64)
                );
            }
        }
        pos += v.len_bytes as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Writes the whole 4 MiB file in shuffled 32 KiB chunks (1–4 segments each, 64 in flight) on
/// core 0, flushes, reads 1500 random ranges (1–6 segments, 64 in flight) on core 1 and checks
/// them, then checks the file through std::fs.
fn round_trip(bs: u32) {
    round_trip_in(tempfile::tempdir().unwrap(), bs);
}

/// `round_trip` with the file in `dir`.
fn round_trip_in(dir: tempfile::TempDir, bs: u32) {
    let d = TestDriver::new(2);
    let size = 4 * MIB;
    let path = make_file(dir.path(), "disk", size);
    let reg = BdevRegistry::new(d.cores());
    let bdev = uring::create(&reg, &uring_opts(&path, "U0", Some(bs))).unwrap();
    assert_eq!(bdev.info().block_size, bs);
    assert_eq!(bdev.info().num_blocks, size / bs as u64);
    assert_eq!(bdev.info().product_name, "URING bdev");
    assert_eq!(bdev.info().module, "uring");
    let desc = reg.open("U0", true, |_| {}).unwrap();
    let bs64 = bs as u64;
    let chunk_bytes = 32 * 1024u64;
    let chunks = size / chunk_bytes;

    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let cq = CompletionQueue::with_capacity(128);
        let (pool, bufs) = tagged_pool(64);
        let mut load = Load::new(pool);
        let mut order: Vec<u64> = (0..chunks).collect();
        let mut rng = Rng(0x1234_5678 ^ bs as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut next = order.into_iter();
        let requeues = pump(
            &d,
            &ch,
            &cq,
            &mut load,
            chunks as usize,
            |io| {
                let chunk = next.next().unwrap();
                let buf = &bufs[io.tag as usize];
                assert!(split_into(io, buf, &mut rng, chunk_bytes / bs64, bs64, 4));
                let mut pos = chunk * chunk_bytes;
                {
                    let mut bytes = buf.bytes_mut();
                    for v in &io.iovs {
                        let s = v.offset_bytes as usize;
                        for (i, b) in bytes[s..s + v.len_bytes as usize].iter_mut().enumerate() {
                            *b = pat(pos + i as u64);
                        }
                        pos += v.len_bytes as u64;
                    }
                }
                io.prepare(IoOp::Write, chunk * chunk_bytes / bs64, chunk_bytes / bs64);
            },
            |io| assert_eq!(io.status(), IoStatus::Success),
        );
        assert_eq!(requeues, 0, "64 in flight fit in one ring");
        let flush_buf = DmaBuf::new(4096);
        assert_eq!(run_one(&d, &ch, IoOp::Flush, 0, 0, &flush_buf), IoStatus::Success);
        let st = ch.stats().snapshot();
        assert_eq!(st.op(IoOp::Write).ops, chunks);
        assert_eq!(st.op(IoOp::Write).bytes, size);
    });

    d.enter(CoreId(1), || {
        let ch = desc.channel();
        let cq = CompletionQueue::with_capacity(128);
        let (pool, bufs) = tagged_pool(64);
        let mut load = Load::new(pool);
        let mut rng = Rng(0xfeed_beef ^ bs as u64);
        let num_blocks = size / bs64;
        let max_blocks = (256 * 1024 / bs64).min(num_blocks);
        pump(
            &d,
            &ch,
            &cq,
            &mut load,
            1500,
            |io| {
                let n = 1 + rng.below(max_blocks);
                let off = rng.below(num_blocks - n + 1);
                let buf = &bufs[io.tag as usize];
                while !split_into(io, buf, &mut rng, n, bs64, 6) {}
                buf.bytes_mut().fill(0xEE);
                io.prepare(IoOp::Read, off, n);
            },
            |io| verify_read(io, bs64),
        );
        // Nothing in flight: the poller is idle and the reactors settle at once.
        assert!(d.run_until_idle(10) <= 2);
    });

    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len() as u64, size);
    for (i, &b) in file.iter().enumerate() {
        assert_eq!(b, pat(i as u64), "file byte {i}");
    }
    drop(desc);
}

#[test]
fn round_trip_512_byte_blocks_many_in_flight() {
    round_trip(512);
}

#[test]
fn round_trip_4096_byte_blocks_many_in_flight() {
    round_trip(4096);
}

/// `statfs` type of tmpfs.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// On tmpfs the channel does reads and writes inline instead of on the ring (module docs of
/// `uring/file.rs`): the same round trip, multi-segment and with many in flight, must hold.
/// `/dev/shm` must be a tmpfs (it is on every Linux this project supports); if not, this fails.
#[test]
fn round_trip_on_tmpfs_is_done_inline_and_holds() {
    let dir = tempfile::tempdir_in("/dev/shm").expect("a temporary directory in /dev/shm");
    let c_path = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
    // SAFETY: all-zero bytes are a valid statfs; the path is a live NUL-terminated string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a live, writable statfs.
    assert_eq!(unsafe { libc::statfs(c_path.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_type as u64, TMPFS_MAGIC, "/dev/shm must be a tmpfs for this test");
    round_trip_in(dir, 4096);
}

#[test]
fn auto_detected_block_size_is_512_for_files() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path(), "disk", MIB + 100);
    let reg = BdevRegistry::new(d.cores());
    let b = uring::create(&reg, &uring_opts(&path, "U0", None)).unwrap();
    // SPDK's choice for files; a filesystem needing more for O_DIRECT raises it.
    assert!(b.info().block_size >= 512 && b.info().block_size.is_power_of_two());
    assert_eq!(b.info().num_blocks, (MIB + 100) / b.info().block_size as u64);
    // block_size 0 means auto-detect too (on a second file: one bdev per file).
    let path1 = make_file(dir.path(), "disk1", MIB + 100);
    let b0 = uring::create(&reg, &uring_opts(&path1, "U1", Some(0))).unwrap();
    assert_eq!(b0.info().block_size, b.info().block_size);
}

#[test]
fn unmap_and_write_zeroes_through_fallocate() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let upath = make_file(dir.path(), "u", MIB);
    let apath = make_file(dir.path(), "a", MIB);
    let npath = make_file(dir.path(), "n", MIB);
    let reg = BdevRegistry::new(d.cores());
    uring::create(&reg, &uring_opts(&upath, "U0", Some(4096))).unwrap();
    uring::create_aio(&reg, &aio_opts(&apath, "A0", false, true)).unwrap();
    uring::create_aio(&reg, &aio_opts(&npath, "N0", false, false)).unwrap();
    for name in ["U0", "A0"] {
        let desc = reg.open(name, true, |_| {}).unwrap();
        let bs = desc.info().block_size as u64;
        d.enter(CoreId(0), || {
            let ch = desc.channel();
            let span = 64 * 1024 / bs;
            let buf = DmaBuf::new(64 * 1024);
            buf.bytes_mut().fill(0xA5);
            assert_eq!(run_one(&d, &ch, IoOp::Write, 0, span, &buf), IoStatus::Success);
            let q = span / 4;
            assert_eq!(run_one(&d, &ch, IoOp::Unmap, q, q, &buf), IoStatus::Success);
            assert_eq!(run_one(&d, &ch, IoOp::WriteZeroes, 3 * q, q, &buf), IoStatus::Success);
            let back = DmaBuf::new(64 * 1024);
            assert_eq!(run_one(&d, &ch, IoOp::Read, 0, span, &back), IoStatus::Success);
            let qb = (q * bs) as usize;
            let bytes = back.bytes();
            assert!(bytes[..qb].iter().all(|&b| b == 0xA5), "{name}: first quarter kept");
            assert!(
                bytes[qb..2 * qb].iter().all(|&b| b == 0),
                "{name}: unmapped quarter zero"
            );
            assert!(
                bytes[2 * qb..3 * qb].iter().all(|&b| b == 0xA5),
                "{name}: third quarter kept"
            );
            assert!(bytes[3 * qb..].iter().all(|&b| b == 0), "{name}: zeroed quarter zero");
        });
    }
    // aio without `fallocate` declares neither op.
    let desc = reg.open("N0", true, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let buf = DmaBuf::new(4096);
        assert_eq!(run_one(&d, &ch, IoOp::Unmap, 0, 1, &buf), IoStatus::Unsupported);
        assert_eq!(run_one(&d, &ch, IoOp::WriteZeroes, 0, 1, &buf), IoStatus::Unsupported);
        assert_eq!(run_one(&d, &ch, IoOp::Write, 0, 1, &buf), IoStatus::Success);
        assert_eq!(run_one(&d, &ch, IoOp::Flush, 0, 0, &buf), IoStatus::Success);
        assert_eq!(run_one(&d, &ch, IoOp::Reset, 0, 0, &buf), IoStatus::Success);
    });
}

#[test]
fn backpressure_requeues_and_everything_completes() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path(), "disk", 4 * MIB);
    let reg = BdevRegistry::new(d.cores());
    uring::create(&reg, &uring_opts(&path, "U0", Some(4096))).unwrap();
    let desc = reg.open("U0", true, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let depth = uring::RING_DEPTH as usize;
        let cq = CompletionQueue::with_capacity(depth + 200);
        let mut pool = IoPool::new(depth + 188);
        let buf = DmaBuf::new(4096);
        // All at once, without a turn: the token queue fills and the rest come back.
        let mut accepted = 0;
        let mut handed_back = Vec::new();
        while let Some(mut io) = pool.get() {
            io.iovs.clear();
            io.iovs.push(IoVec::whole(buf.clone()));
            io.prepare(IoOp::Read, (accepted % 1024) as u64, 1);
            match ch.submit(io, &cq) {
                Submit::Accepted => accepted += 1,
                Submit::Requeue(io) => handed_back.push(io),
            }
        }
        assert_eq!(accepted, depth);
        assert_eq!(handed_back.len(), 188);
        let mut done = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while done < depth + 188 {
            d.turn();
            cq.drain_now(|io| {
                assert_eq!(io.status(), IoStatus::Success);
                done += 1;
                pool.put(io);
            });
            while let Some(io) = handed_back.pop() {
                if let Submit::Requeue(io) = ch.submit(io, &cq) {
                    handed_back.push(io);
                    break;
                }
            }
            assert!(Instant::now() < deadline);
        }
        assert!(handed_back.is_empty());
        // And through the generic pump with more requests than slots.
        let mut load = Load::new(pool);
        let requeues = pump(
            &d,
            &ch,
            &cq,
            &mut load,
            3000,
            |io| {
                io.iovs.clear();
                io.iovs.push(IoVec::whole(buf.clone()));
                io.prepare(IoOp::Read, 7, 1);
            },
            |io| assert_eq!(io.status(), IoStatus::Success),
        );
        assert!(requeues > 0);
        assert_eq!(ch.stats().snapshot().op(IoOp::Read).ops, (depth + 188 + 3000) as u64);
    });
}

#[test]
fn bad_input_is_refused_with_clear_errors() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let reg = BdevRegistry::new(d.cores());
    let missing = dir.path().join("no-such-file");
    match err_of(uring::create(&reg, &uring_opts(&missing, "U0", None))) {
        e @ BdevError::Io { .. } => {
            assert!(e.to_string().contains("no-such-file"), "{e}");
            assert_eq!(e.errno(), -libc::ENOENT);
        }
        other => panic!("missing file: {other:?}"),
    }
    match err_of(uring::create_aio(&reg, &aio_opts(&missing, "A0", true, false))) {
        e @ BdevError::Io { .. } => assert!(e.to_string().contains("no-such-file"), "{e}"),
        other => panic!("missing file (aio): {other:?}"),
    }
    let empty = make_file(dir.path(), "empty", 0);
    match err_of(uring::create(&reg, &uring_opts(&empty, "U0", None))) {
        BdevError::InvalidParam { param, reason } => {
            assert_eq!(param, "filename");
            assert!(reason.contains("empty"), "{reason}");
        }
        other => panic!("zero-length file: {other:?}"),
    }
    let tiny = make_file(dir.path(), "tiny", 300);
    assert!(matches!(
        uring::create(&reg, &uring_opts(&tiny, "U0", None)),
        Err(BdevError::InvalidParam { param: "filename", .. })
    ));
    let small = make_file(dir.path(), "small", 6000);
    assert!(matches!(
        uring::create(&reg, &uring_opts(&small, "U0", Some(8192))),
        Err(BdevError::InvalidParam { param: "filename", .. })
    ));
    let ok = make_file(dir.path(), "ok", MIB);
    for bad in [1000, 256, 4097, 3 * 1024] {
        match err_of(uring::create(&reg, &uring_opts(&ok, "U0", Some(bad)))) {
            BdevError::InvalidParam { param, .. } => assert_eq!(param, "block_size"),
            other => panic!("block_size {bad}: {other:?}"),
        }
    }
    assert!(matches!(
        uring::create(&reg, &uring_opts(Path::new(""), "U0", None)),
        Err(BdevError::InvalidParam { param: "filename", .. })
    ));
    // A directory is neither a file nor a block device (open O_RDWR refuses it).
    assert!(uring::create(&reg, &uring_opts(dir.path(), "U0", None)).is_err());
    let mut bad_uuid = uring_opts(&ok, "U0", None);
    bad_uuid.uuid = Some("not-a-uuid".into());
    assert!(matches!(
        uring::create(&reg, &bad_uuid),
        Err(BdevError::InvalidParam { param: "uuid", .. })
    ));
    assert!(matches!(
        uring::create(&reg, &uring_opts(&ok, "has space", None)),
        Err(BdevError::InvalidParam { param: "name", .. })
    ));
    // Unknown RPC keys are refused at decode time.
    assert!(serde_json::from_value::<UringOpts>(json!({"filename": "f", "name": "n", "bogus": 1})).is_err());
    assert!(reg.list().is_empty());
}

#[test]
fn duplicate_names_are_refused() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path(), "disk", MIB);
    let reg = BdevRegistry::new(d.cores());
    uring::create(&reg, &uring_opts(&path, "U0", None)).unwrap();
    assert!(matches!(
        uring::create(&reg, &uring_opts(&path, "U0", None)),
        Err(BdevError::Exists(_))
    ));
    assert!(matches!(
        uring::create_aio(&reg, &aio_opts(&path, "U0", false, false)),
        Err(BdevError::Exists(_))
    ));
    null::create(&reg, &null::NullOpts::new("N0", 8, 512)).unwrap();
    assert!(matches!(
        uring::create(&reg, &uring_opts(&path, "N0", None)),
        Err(BdevError::Exists(_))
    ));
    assert!(malloc::create(&reg, &malloc::MallocOpts::new("U0", 8, 512)).is_err());
    assert_eq!(reg.list().len(), 2);
}

#[test]
fn hot_removal_with_io_in_flight_loses_nothing() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path(), "disk", 4 * MIB);
    let reg = BdevRegistry::new(d.cores());
    uring::create(&reg, &uring_opts(&path, "U0", Some(4096))).unwrap();
    let removed_event = Arc::new(AtomicBool::new(false));
    let ev2 = removed_event.clone();
    let desc = d.enter(CoreId(0), || {
        reg.open("U0", true, move |_| ev2.store(true, Ordering::SeqCst))
            .unwrap()
    });
    let deleted = Arc::new(AtomicBool::new(false));
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let cq = CompletionQueue::with_capacity(256);
        let (mut pool, bufs) = tagged_pool(96);
        let mut rng = Rng(42);
        let mut submit_n = |pool: &mut IoPool, n: usize, op: IoOp| {
            for _ in 0..n {
                let mut io = pool.get().unwrap();
                let buf = bufs[io.tag as usize].clone();
                io.iovs.clear();
                io.iovs.push(IoVec::whole(buf));
                io.prepare(op, rng.below(1024 - 128), 1 + rng.below(64));
                assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
            }
        };
        // 64 submitted to the kernel, 32 more only queued in the ring, then the removal.
        submit_n(&mut pool, 32, IoOp::Read);
        submit_n(&mut pool, 32, IoOp::Write);
        d.turn();
        submit_n(&mut pool, 32, IoOp::Read);
        let dl = deleted.clone();
        uring::delete(&reg, "U0", move || dl.store(true, Ordering::SeqCst)).unwrap();
        assert!(reg.get("U0").is_none());
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen < 96 {
            d.turn();
            cq.drain_now(|io| {
                assert!(
                    matches!(io.status(), IoStatus::Success | IoStatus::Aborted | IoStatus::Removed),
                    "unexpected {:?}",
                    io.status()
                );
                seen += 1;
                pool.put(io);
            });
            assert!(Instant::now() < deadline, "requests lost: {seen} of 96 came back");
        }
        d.run_until_idle(1000);
        assert!(deleted.load(Ordering::SeqCst));
        assert!(removed_event.load(Ordering::SeqCst));
        // New I/O on the removed bdev fails.
        let buf = DmaBuf::new(4096);
        assert_eq!(run_one(&d, &ch, IoOp::Read, 0, 1, &buf), IoStatus::Removed);
        assert_eq!(run_one(&d, &ch, IoOp::Write, 0, 1, &buf), IoStatus::Removed);
    });
    drop(desc);
    // The name is free again and the file still usable.
    uring::create(&reg, &uring_opts(&path, "U0", Some(4096))).unwrap();
}

#[test]
fn dropping_a_channel_with_io_in_flight_waits_for_the_kernel() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path(), "disk", 4 * MIB);
    let reg = BdevRegistry::new(d.cores());
    uring::create(&reg, &uring_opts(&path, "U0", Some(4096))).unwrap();
    let desc = reg.open("U0", true, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let cq = CompletionQueue::with_capacity(128);
        let (mut pool, bufs) = tagged_pool(64);
        for i in 0..64u64 {
            let mut io = pool.get().unwrap();
            io.iovs.clear();
            io.iovs.push(IoVec::whole(bufs[io.tag as usize].clone()));
            io.prepare(if i % 2 == 0 { IoOp::Read } else { IoOp::Write }, i * 16, 16);
            assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
        }
        d.turn();
        // The last handle: the channel drains its ring right here.
        drop(ch);
        assert_eq!(cq.len(), 64, "every request came back before the channel died");
        cq.drain_now(|io| {
            assert!(matches!(io.status(), IoStatus::Success | IoStatus::Aborted));
            pool.put(io);
        });
        assert_eq!(
            keel_reactor::current().poller_count(),
            0,
            "poller stopped with the channel"
        );
        // A new channel on the same core works.
        let ch = desc.channel();
        let buf = DmaBuf::new(4096);
        assert_eq!(run_one(&d, &ch, IoOp::Read, 0, 1, &buf), IoStatus::Success);
    });
}

#[test]
fn aio_readonly_refuses_writes() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    std::fs::write(&path, vec![0x5Au8; 64 * 1024]).unwrap();
    let reg = BdevRegistry::new(d.cores());
    let b = uring::create_aio(&reg, &aio_opts(&path, "A0", true, true)).unwrap();
    assert_eq!(b.info().product_name, "AIO disk");
    assert_eq!(b.info().module, "aio");
    assert!(!b.info().caps.supports(IoOp::Write));
    assert_eq!(
        b.backend().driver_specific(),
        json!({"aio": {
            "filename": path.to_str().unwrap(),
            "block_size_override": false,
            "readonly": true,
            "fallocate": true,
            "nowait": false,
        }})
    );
    // Even a writable descriptor cannot write: the bdev does not support it.
    let desc = reg.open("A0", true, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let buf = DmaBuf::new(4096);
        assert_eq!(run_one(&d, &ch, IoOp::Write, 0, 1, &buf), IoStatus::Unsupported);
        assert_eq!(run_one(&d, &ch, IoOp::Unmap, 0, 1, &buf), IoStatus::Unsupported);
        assert_eq!(run_one(&d, &ch, IoOp::WriteZeroes, 0, 1, &buf), IoStatus::Unsupported);
        assert_eq!(run_one(&d, &ch, IoOp::Read, 0, 8, &buf), IoStatus::Success);
        assert!(buf.bytes().iter().all(|&b| b == 0x5A));
        assert_eq!(run_one(&d, &ch, IoOp::Flush, 0, 0, &buf), IoStatus::Success);
    });
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0x5A));
}

#[test]
fn config_round_trips_through_the_rpc_parameters() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let upath = make_file(dir.path(), "u", 2 * MIB);
    let apath = make_file(dir.path(), "a", 2 * MIB);
    let reg = BdevRegistry::new(d.cores());
    let u = uring::create(&reg, &uring_opts(&upath, "U0", Some(4096))).unwrap();
    let mut ao = aio_opts(&apath, "A0", false, true);
    ao.block_size = Some(4096);
    ao.uuid = Some("6b6f6a61-0000-4000-8000-000000000001".into());
    let a = uring::create_aio(&reg, &ao).unwrap();

    assert_eq!(
        u.backend().driver_specific(),
        json!({"uring": {"filename": upath.to_str().unwrap()}})
    );
    assert_eq!(a.backend().driver_specific()["aio"]["block_size_override"], json!(true));
    let ucall = u.backend().config(u.info()).unwrap();
    assert_eq!(ucall.method, "bdev_uring_create");
    assert_eq!(
        ucall.params,
        json!({
            "filename": upath.to_str().unwrap(),
            "name": "U0",
            "block_size": 4096,
            "uuid": u.info().uuid.to_string(),
        })
    );
    let acall = a.backend().config(a.info()).unwrap();
    assert_eq!(acall.method, "bdev_aio_create");
    let p = &acall.params;
    assert_eq!(p["name"], json!("A0"));
    assert_eq!(p["filename"], json!(apath.to_str().unwrap()));
    assert_eq!(p["block_size"], json!(4096));
    assert_eq!(p["readonly"], json!(false));
    assert_eq!(p["fallocate"], json!(true));
    assert_eq!(p["uuid"], json!("6b6f6a61-0000-4000-8000-000000000001"));

    // Decode the saved params (unknown keys would be refused), delete, recreate: same bdevs.
    let uo: UringOpts = serde_json::from_value(ucall.params.clone()).unwrap();
    let ao2: AioOpts = serde_json::from_value(acall.params.clone()).unwrap();
    let (uinfo, ainfo) = (u.info().clone(), a.info().clone());
    drop((u, a));
    uring::delete(&reg, "U0", || {}).unwrap();
    uring::delete_aio(&reg, "A0", || {}).unwrap();
    d.run_until_idle(100);
    let u2 = uring::create(&reg, &uo).unwrap();
    let a2 = uring::create_aio(&reg, &ao2).unwrap();
    for (old, new) in [(uinfo, u2.info()), (ainfo, a2.info())] {
        assert_eq!(old.uuid, new.uuid);
        assert_eq!(old.block_size, new.block_size);
        assert_eq!(old.num_blocks, new.num_blocks);
        assert_eq!(old.caps, new.caps);
        assert_eq!(old.product_name, new.product_name);
    }
    assert_eq!(u2.backend().config(u2.info()).unwrap(), ucall);
    assert_eq!(a2.backend().config(a2.info()).unwrap(), acall);
}

#[test]
fn delete_removes_only_its_own_module() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path(), "disk", MIB);
    let path_a = make_file(dir.path(), "disk_a", MIB);
    let reg = BdevRegistry::new(d.cores());
    uring::create(&reg, &uring_opts(&path, "U0", None)).unwrap();
    uring::create_aio(&reg, &aio_opts(&path_a, "A0", false, false)).unwrap();
    assert!(matches!(
        uring::delete_aio(&reg, "U0", || {}),
        Err(BdevError::NotFound(_))
    ));
    assert!(matches!(uring::delete(&reg, "A0", || {}), Err(BdevError::NotFound(_))));
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    uring::delete(&reg, "U0", move || d2.store(true, Ordering::SeqCst)).unwrap();
    d.run_until_idle(100);
    assert!(done.load(Ordering::SeqCst));
    assert!(reg.get("U0").is_none());
    assert!(matches!(uring::delete(&reg, "U0", || {}), Err(BdevError::NotFound(_))));
    uring::delete_aio(&reg, "A0", || {}).unwrap();
    d.run_until_idle(100);
    assert!(reg.list().is_empty());
}

#[test]
fn steady_state_io_does_not_allocate() {
    let d = TestDriver::new(1);
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path(), "disk", 4 * MIB);
    let reg = BdevRegistry::new(d.cores());
    uring::create(&reg, &uring_opts(&path, "U0", Some(4096))).unwrap();
    let desc = reg.open("U0", true, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let cq = CompletionQueue::with_capacity(64);
        let (pool, bufs) = tagged_pool(32);
        let mut load = Load::new(pool);
        let mut rng = Rng(7);
        let mut run = |load: &mut Load, n: usize| {
            pump(
                &d,
                &ch,
                &cq,
                load,
                n,
                |io| {
                    let buf = &bufs[io.tag as usize];
                    assert!(split_into(io, buf, &mut rng, 4, 4096, 3));
                    let op = if rng.below(2) == 0 { IoOp::Read } else { IoOp::Write };
                    io.prepare(op, rng.below(1024 - 4), 4);
                },
                |io| assert_eq!(io.status(), IoStatus::Success),
            )
        };
        run(&mut load, 200); // warm-up: queues and stats reach their sizes
        let before = keel_testkit::thread_allocations();
        run(&mut load, 2000);
        assert_eq!(
            keel_testkit::thread_allocations() - before,
            0,
            "allocations on the I/O path"
        );
    });
}

/// A loop device over a file with 4 KiB logical sectors, when this machine lets us make one.
struct LoopDev(String);

impl LoopDev {
    fn new(backing: &Path) -> Option<LoopDev> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", "--sector-size", "4096"])
            .arg(backing)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!dev.is_empty()).then_some(LoopDev(dev))
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn block_device_block_size_is_detected_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let backing = make_file(dir.path(), "backing", 4 * MIB);
    let Some(dev) = LoopDev::new(&backing) else {
        eprintln!("skipped: cannot create a loop device here");
        return;
    };
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    let devpath = PathBuf::from(&dev.0);
    match err_of(uring::create(&reg, &uring_opts(&devpath, "L0", Some(512)))) {
        BdevError::InvalidParam { param, reason } => {
            assert_eq!(param, "block_size");
            assert!(reason.contains("4096"), "{reason}");
        }
        other => panic!("512 on a 4K device: {other:?}"),
    }
    let b = uring::create(&reg, &uring_opts(&devpath, "L0", None)).unwrap();
    assert_eq!(b.info().block_size, 4096);
    assert_eq!(b.info().num_blocks, 1024);
    let desc = reg.open("L0", true, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let ch = desc.channel();
        let buf = DmaBuf::new(8192);
        buf.bytes_mut().fill(0x3C);
        assert_eq!(run_one(&d, &ch, IoOp::Write, 10, 2, &buf), IoStatus::Success);
        assert_eq!(run_one(&d, &ch, IoOp::Flush, 0, 0, &buf), IoStatus::Success);
        let back = DmaBuf::new(8192);
        assert_eq!(run_one(&d, &ch, IoOp::Read, 10, 2, &back), IoStatus::Success);
        assert!(back.bytes().iter().all(|&b| b == 0x3C));
        assert_eq!(run_one(&d, &ch, IoOp::WriteZeroes, 10, 1, &buf), IoStatus::Success);
        assert_eq!(run_one(&d, &ch, IoOp::Read, 10, 2, &back), IoStatus::Success);
        assert!(back.bytes()[..4096].iter().all(|&b| b == 0));
        assert!(back.bytes()[4096..].iter().all(|&b| b == 0x3C));
    });
    drop((desc, b));
    uring::delete(&reg, "L0", || {}).unwrap();
    d.run_until_idle(100);
    drop((d, reg));
    drop(dev);
}
