//! `bdev_malloc_create` and the machine's memory (issue 13): creation writes nothing, so a
//! large disk is created at once without stalling the core; sizes the machine could not hold
//! once written are refused with `NoMemory` (`-ENOMEM`) naming the figures — one disk larger
//! than the machine, or a second disk that does not fit next to the first — and the memory of
//! a deleted disk counts again once its channels are gone.

use std::time::{Duration, Instant};

use keel_bdev::modules::malloc::{self, MallocOpts};
use keel_bdev::{BdevError, BdevRegistry};
use keel_reactor::{CoreId, TestDriver};

const BS: u64 = 4096;

fn meminfo_bytes(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib << 10
}

fn create(reg: &BdevRegistry, name: &str, bytes: u64) -> Result<(), BdevError> {
    malloc::create(reg, &MallocOpts::new(name, bytes / BS, BS as u32)).map(|_| ())
}

#[test]
fn sizes_beyond_the_machine_are_refused_and_large_creates_are_instant() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());

    // Larger than the machine's memory: refused, nothing registered.
    let total = meminfo_bytes("MemTotal:");
    let e = create(&reg, "Huge", total + (1 << 30)).unwrap_err();
    assert!(matches!(e, BdevError::NoMemory(_)), "{e:?}");
    assert_eq!(e.errno(), -libc::ENOMEM);
    let text = e.to_string();
    assert!(
        text.contains("does not fit") && text.contains("MiB available"),
        "{text}"
    );
    assert!(reg.get("Huge").is_none());

    // Half of what is available: created at once (nothing is written), whatever the size.
    let avail = meminfo_bytes("MemAvailable:");
    let half = (avail / 2) / (2 << 20) * (2 << 20);
    let t = Instant::now();
    create(&reg, "Half", half).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "creating {half} bytes took {:?}",
        t.elapsed()
    );
    // Another 60 % does not fit next to it.
    let more = (avail / 10 * 6) / (2 << 20) * (2 << 20);
    let e = create(&reg, "More", more).unwrap_err();
    assert!(matches!(e, BdevError::NoMemory(_)), "{e:?}");
    assert!(e.to_string().contains("already take"), "{e}");
    assert!(reg.get("More").is_none());

    // Deleted (no channel holds it): its memory counts again.
    let (tx, rx) = std::sync::mpsc::channel();
    d.enter(CoreId(0), || {
        malloc::delete(&reg, "Half", move || tx.send(()).unwrap()).unwrap();
    });
    let until = Instant::now() + Duration::from_secs(10);
    while rx.try_recv().is_err() {
        assert!(Instant::now() < until, "delete did not finish");
        d.turn();
    }
    create(&reg, "More", more).unwrap();
}

#[test]
fn byte_counts_that_overflow_are_refused() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    let e = malloc::create(&reg, &MallocOpts::new("Big", 1 << 63, 4096))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            e,
            BdevError::InvalidParam {
                param: "num_blocks",
                ..
            }
        ),
        "{e:?}"
    );
}
