//! Live table swaps under load lose nothing: two malloc bdevs hold one device's data in a 2-way
//! stripe with 8 KiB chunks; a second table maps exactly the same sectors with one `linear` line
//! per chunk (512 targets). keel-load verify jobs run on every reactor (12 KiB I/Os, so many cross
//! chunk and target boundaries and are split) while the main core swaps the two layouts back and
//! forth hundreds of times (load + resume: suspend, drain, swap, resume). Every write is read
//! back and compared: zero miscompares and zero failed I/Os, and I/O kept flowing throughout.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use keel_bdev::modules::malloc;
use keel_bdev::BdevRegistry;
use keel_dm::{CreateOpts, DmError, DmRegistry};
use keel_load::{Job, JobResult, JobSpec, JobStatus, Workload};
use keel_reactor::{CoreMask, Cores, Runtime};

const SWAPS: usize = 300;
/// Blocks of 4 KiB per base bdev (2 MiB each, 4 MiB device).
const BASE_BLOCKS: u64 = 512;
const CHUNK_SECTORS: u64 = 16;

fn striped() -> String {
    format!("0 {} striped 2 {CHUNK_SECTORS} M0 0 M1 0\n", 2 * BASE_BLOCKS * 8)
}

/// The same mapping as [`striped`], one linear target per chunk.
fn linear_per_chunk() -> String {
    let chunks = 2 * BASE_BLOCKS * 8 / CHUNK_SECTORS;
    let mut t = String::new();
    for k in 0..chunks {
        t.push_str(&format!(
            "{} {CHUNK_SECTORS} linear M{} {}\n",
            k * CHUNK_SECTORS,
            k % 2,
            (k / 2) * CHUNK_SECTORS
        ));
    }
    t
}

fn swap_loop(
    cores: Cores,
    dm: Arc<DmRegistry>,
    i: usize,
    tables: Arc<[String; 2]>,
    tx: mpsc::Sender<Result<usize, DmError>>,
) {
    if i == SWAPS {
        let _ = tx.send(Ok(i));
        return;
    }
    if let Err(e) = dm.load("dm0", &tables[i % 2], false) {
        let _ = tx.send(Err(e));
        return;
    }
    let dm2 = dm.clone();
    let c2 = cores.clone();
    dm.resume("dm0", move |r| match r {
        // Continue by message: a long chain of swaps must not grow the stack.
        Ok(()) => {
            let (main, c3) = (c2.main_core(), c2.clone());
            let _ = c2.run_on(main, move || swap_loop(c3, dm2, i + 1, tables, tx));
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    });
}

#[test]
fn hundreds_of_swaps_under_verify_on_every_core() {
    let rt = Runtime::start(&CoreMask::parse("0x3").unwrap(), false, || {}).unwrap();
    let cores = rt.cores();
    let reg = BdevRegistry::new(cores.clone());
    let dm = DmRegistry::of(&reg);
    let tables = Arc::new([linear_per_chunk(), striped()]);

    let (tx, rx) = mpsc::channel();
    {
        let (reg, dm, t) = (reg.clone(), dm.clone(), tables[1].clone());
        cores
            .run_on(cores.main_core(), move || {
                malloc::create(&reg, &malloc::MallocOpts::new("M0", BASE_BLOCKS, 4096)).unwrap();
                malloc::create(&reg, &malloc::MallocOpts::new("M1", BASE_BLOCKS, 4096)).unwrap();
                dm.create(
                    CreateOpts {
                        name: "dm0".into(),
                        table: Some(t),
                        ..Default::default()
                    },
                    move |r| tx.send(r).unwrap(),
                );
            })
            .unwrap();
    }
    rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();

    // One verify job per core on its own half of the device.
    let (rtx, rrx) = mpsc::channel::<JobResult>();
    let mut progress = Vec::new();
    let half = BASE_BLOCKS; // device blocks / 2
    for (k, core) in cores.core_ids().into_iter().enumerate() {
        let (reg, rtx, ptx) = (reg.clone(), rtx.clone(), mpsc::channel());
        let mut spec = JobSpec::new("dm0", Workload::Verify, 16, 12 * 1024, 0);
        spec.offset_blocks = k as u64 * half;
        spec.length_blocks = half;
        spec.seed = 0x1234_5678 + k as u64;
        cores
            .run_on(core, move || {
                let desc = reg.open("dm0", true, |_| {}).unwrap();
                let h = Job::start_with(spec, desc, move |r| rtx.send(r.clone()).unwrap()).unwrap();
                ptx.0.send(h.progress()).unwrap();
            })
            .unwrap();
        progress.push(ptx.1.recv_timeout(Duration::from_secs(10)).unwrap());
    }
    // Let I/O flow, then swap layouts SWAPS times.
    let wait_for = |target: u64| {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while progress.iter().any(|p| p.completed_ios() < target) {
            assert!(std::time::Instant::now() < until, "jobs do not progress");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(2_000);
    let before: Vec<u64> = progress.iter().map(|p| p.completed_ios()).collect();
    let (stx, srx) = mpsc::channel();
    {
        let (c2, dm2, t2) = (cores.clone(), dm.clone(), tables.clone());
        cores
            .run_on(cores.main_core(), move || swap_loop(c2, dm2, 0, t2, stx))
            .unwrap();
    }
    let swapped = srx.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
    assert_eq!(swapped, SWAPS);
    let after: Vec<u64> = progress.iter().map(|p| p.completed_ios()).collect();
    // After an even number of swaps the striped layout is live again.
    assert_eq!(dm.table(Some("dm0"), false).unwrap(), tables[1]);
    wait_for(after.iter().max().copied().unwrap() + 1_000);
    for p in &progress {
        p.request_stop();
    }
    let results: Vec<JobResult> = (0..progress.len())
        .map(|_| rrx.recv_timeout(Duration::from_secs(20)).unwrap())
        .collect();
    for (i, r) in results.iter().enumerate() {
        assert!(r.miscompare.is_none(), "miscompare: {}", r.miscompare.as_ref().unwrap());
        assert_eq!(r.ios_failed, 0, "{r:?}");
        assert_eq!(r.status, JobStatus::Terminated, "{r:?}");
        assert!(
            after[i] > before[i],
            "job {i} made no progress during the swaps ({} → {})",
            before[i],
            after[i]
        );
    }
    let total: u64 = results.iter().map(|r| r.ios_completed).sum();
    eprintln!(
        "{SWAPS} swaps, {total} verified I/Os, during the swaps: {:?}",
        after.iter().zip(&before).map(|(a, b)| a - b).collect::<Vec<_>>()
    );
    // Tear down on the main core: remove the device (its claims go), stop the reactors.
    let (dtx, drx) = mpsc::channel();
    {
        let dm2 = dm.clone();
        cores
            .run_on(cores.main_core(), move || {
                dm2.remove("dm0", false, move |r| dtx.send(r).unwrap())
            })
            .unwrap();
    }
    drx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(reg.get("M0").unwrap().claimed_by(), None);
    cores.request_stop();
    rt.wait();
}
