//! Once a job is set up, the engine's per-I/O path — queue, commit, getevents, event — does not
//! allocate: a counting global allocator sees zero allocations while the engine, driven in
//! process exactly as fio drives it (fake `io_u` addresses, the job's own buffer area), completes
//! 100k I/Os on null, malloc and io_uring bdevs (inline completions and poller completions; a
//! uring bdev on tmpfs, whose channel reads and writes inline),
//! with reads, writes, trims and flushes.
//!
//! Everything runs in one #[test] on one thread so that no other test allocates meanwhile.

use std::ffi::c_void;

use keel_fio::engine::{ddir, Queued};
use keel_fio::{Global, JobEngine};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const IODEPTH: usize = 32;
const BS: u64 = 4096;
const WARMUP_IOS: u64 = 10_000;
const MEASURED_IOS: u64 = 100_000;

/// A fake fio job: `IODEPTH` io_u "addresses" (never dereferenced by the engine) and a free list.
struct FakeJob {
    engine: JobEngine,
    io_us: Vec<*mut c_void>,
    free: Vec<usize>,
    buffer: usize,
    rng: u64,
    done: u64,
    ops: [i32; 4],
}

impl FakeJob {
    fn step(&mut self, token: usize, size_blocks: u64) {
        while let Some(slot) = self.free.pop() {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let offset = (self.rng % size_blocks) * BS;
            let op = self.ops[(self.rng >> 60) as usize & 3];
            let q = self.engine.queue(
                slot,
                self.io_us[slot],
                op,
                token,
                offset,
                self.buffer + slot * BS as usize,
                BS,
            );
            assert_eq!(q, Queued::Queued);
        }
        self.engine.commit();
        let io_us = &self.io_us;
        let n = self.engine.getevents(1, IODEPTH, None, |io_u, errno| {
            assert_eq!(errno, 0);
            assert!(io_us.contains(&io_u));
        });
        for i in 0..n {
            let io_u = self.engine.event(i);
            let slot = self.io_us.iter().position(|&p| p == io_u).expect("known io_u");
            self.free.push(slot);
        }
        self.done += n as u64;
    }
}

fn steady_state_allocations(job: &mut FakeJob, bdev: &str, size_blocks: u64) -> u64 {
    let token = job.engine.open(bdev).unwrap();
    while job.done < WARMUP_IOS {
        job.step(token, size_blocks);
    }
    let before = keel_testkit::allocations();
    let start = job.done;
    while job.done < start + MEASURED_IOS {
        job.step(token, size_blocks);
    }
    let allocs = keel_testkit::allocations() - before;
    // Drain what is in flight before closing, as fio does.
    while job.free.len() < IODEPTH {
        let n = job.engine.getevents(1, IODEPTH, None, |_, _| {});
        for i in 0..n {
            let io_u = job.engine.event(i);
            job.free.push(job.io_us.iter().position(|&p| p == io_u).unwrap());
        }
    }
    job.engine.close(token);
    job.done = 0;
    allocs
}

#[test]
fn per_io_path_does_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("uring.img");
    std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
    // On tmpfs the uring channel reads and writes inline (no ring): that path is checked too.
    let shm_dir = tempfile::tempdir_in("/dev/shm").expect("a temporary directory in /dev/shm");
    let shm_img = shm_dir.path().join("uring.img");
    std::fs::write(&shm_img, vec![0u8; 8 << 20]).unwrap();
    let cfg = dir.path().join("stack.json");
    let text = serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 65536, "block_size": 4096}},
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 4096, "block_size": 4096}},
        {"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": img.to_str().unwrap()}},
        {"method": "bdev_uring_create", "params": {"name": "UringShm", "filename": shm_img.to_str().unwrap()}}
    ]}]});
    std::fs::write(&cfg, text.to_string()).unwrap();
    let g = Global::load(cfg.to_str()).unwrap();

    // What fio's init / io_u_init / iomem_alloc / post_init do.
    let mut engine = JobEngine::new(g, IODEPTH).unwrap();
    let io_us: Vec<*mut c_void> = (0..IODEPTH).map(|i| (0x1000 + 0x200 * i) as *mut c_void).collect();
    for (i, &u) in io_us.iter().enumerate() {
        assert_eq!(engine.add_slot(u), i);
    }
    let buffer = engine.alloc_buffer(IODEPTH * BS as usize).unwrap() as usize;
    engine.post_init();
    let mut job = FakeJob {
        engine,
        io_us,
        free: (0..IODEPTH).collect(),
        buffer,
        rng: 0x9e37_79b9_7f4a_7c15,
        done: 0,
        ops: [ddir::READ, ddir::WRITE, ddir::READ, ddir::WRITE],
    };
    for (bdev, blocks) in [
        ("Null0", 65536),
        ("Malloc0", 4096),
        ("Uring0", 2048),
        ("UringShm", 2048),
    ] {
        assert_eq!(
            steady_state_allocations(&mut job, bdev, blocks),
            0,
            "{bdev}: reads and writes"
        );
    }
    job.ops = [ddir::READ, ddir::WRITE, ddir::TRIM, ddir::SYNC];
    assert_eq!(
        steady_state_allocations(&mut job, "Malloc0", 4096),
        0,
        "malloc: trim and flush"
    );

    // Misaligned, out-of-buffer, unknown-file and unknown-op I/O completes at once with an errno.
    let token = job.engine.open("Null0").unwrap();
    let u = job.io_us[0];
    let errno = |e: i32| Queued::Completed(e as u32);
    // The job's first misaligned I/O is also explained in fio's log (that allocates, once).
    assert_eq!(
        job.engine.queue(0, u, ddir::READ, token, 512, buffer, BS),
        errno(libc::EINVAL)
    );
    let before = keel_testkit::allocations();
    assert_eq!(
        job.engine.queue(0, u, ddir::READ, token, 0, buffer, 100),
        errno(libc::EINVAL)
    );
    let past_end = buffer + IODEPTH * BS as usize;
    assert_eq!(
        job.engine.queue(0, u, ddir::READ, token, 0, past_end, BS),
        errno(libc::EFAULT)
    );
    assert_eq!(
        job.engine.queue(0, u, ddir::READ, token + 7, 0, buffer, BS),
        errno(libc::ENODEV)
    );
    assert_eq!(job.engine.queue(0, u, 42, token, 0, buffer, BS), errno(libc::EINVAL));
    assert_eq!(keel_testkit::allocations(), before);
    job.engine.close(token);
    assert_eq!(job.engine.busy(), 0);
    assert!(job.engine.drain(std::time::Duration::from_secs(1)));
}
