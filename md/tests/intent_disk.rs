//! The write-intent bitmap's disk side on real bdevs: three malloc members (one behind an error
//! bdev) on a deterministic TestDriver. A write that wants a bit is held until the bit is on every
//! member; idle bits are cleared on disk after two daemon periods; a failed bitmap write to one
//! member is counted and reported but does not wedge the array; Debian's `mdadm -X` reads the
//! bitmap the members hold.
//!
//! `intent` is a private module of keel-md (the array core uses it), so this test compiles the
//! same source file into the test crate, with `crate::bitmap`, `crate::meta_io` and
//! `crate::MdError` pointing at keel-md's public items. (Its inline unit tests compile and run
//! here too.)

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::error::{self, ErrorOpts, InjectOpts};
use keel_bdev::modules::malloc;
use keel_bdev::{BdevRegistry, Channel, Descriptor};
use keel_md::bitmap::{self as bm, BitmapHeader, HEADER_BYTES};
use keel_reactor::{CoreId, TestDriver};

#[allow(dead_code)]
#[path = "../src/intent.rs"]
mod intent;

/// What `intent.rs` reaches as `crate::bitmap`.
mod bitmap {
    pub use keel_md::bitmap::*;
}
use keel_md::{meta_io, MdError};

use intent::{Intent, IntentDisk};

const MAIN: CoreId = CoreId(0);
const UUID: [u8; 16] = [0x4b; 16];
/// Where the bitmap starts on every member (1.2: superblock at 4 KiB, bitmap 4 KiB later).
const OFFSET_BYTES: u64 = 8192;
/// 40000 chunks of 4 KiB: a 5000-byte bit area, two 4 KiB pages.
const BITS: u64 = 40_000;
const CHUNK_SECTORS: u64 = 8;
const DAEMON_MS: u64 = 100;
const MEMBERS: [&str; 3] = ["M0", "M1", "EE_M2"];

fn header(events: u64) -> BitmapHeader {
    BitmapHeader {
        version: bm::VERSION,
        uuid: UUID,
        events,
        events_cleared: events,
        sync_size_sectors: BITS * CHUNK_SECTORS,
        state: 0,
        chunk_bytes: (CHUNK_SECTORS * 512) as u32,
        daemon_sleep_s: 5,
        write_behind: 0,
        sectors_reserved: 0,
        nodes: 0,
    }
}

struct Rig {
    d: TestDriver,
    reg: Arc<BdevRegistry>,
    _descs: Vec<Descriptor>,
    chans: Vec<Rc<Channel>>,
    intent: Intent,
    disk: IntentDisk,
    now_ms: u64,
    events: u64,
}

impl Rig {
    /// Members zeroed except for a clean bitmap (events 5) mdadm-style at `OFFSET_BYTES`.
    fn new() -> Rig {
        let d = TestDriver::new(1);
        let reg = BdevRegistry::new(d.cores());
        for m in ["M0", "M1", "M2"] {
            malloc::create(&reg, &malloc::MallocOpts::new(m, 64, 512)).unwrap();
        }
        error::create(
            &reg,
            &ErrorOpts {
                base_name: "M2".into(),
                uuid: None,
            },
        )
        .unwrap();
        let (descs, chans): (Vec<_>, Vec<_>) = d.enter(MAIN, || {
            MEMBERS
                .iter()
                .map(|m| {
                    let desc = reg.open(m, true, |_| {}).unwrap();
                    let ch = Rc::new(desc.channel());
                    (desc, ch)
                })
                .unzip()
        });
        let h = header(5);
        let image = intent::initial_image(&h, false);
        let mut rig = Rig {
            intent: Intent::new(h, &image[HEADER_BYTES..]).unwrap(),
            disk: IntentDisk::new(OFFSET_BYTES),
            d,
            reg,
            _descs: descs,
            chans,
            now_ms: 0,
            events: 5,
        };
        rig.disk.set_daemon_ms(DAEMON_MS);
        for i in 0..MEMBERS.len() {
            rig.write_raw(i, &image);
        }
        rig
    }

    fn turn_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < until, "{what} did not finish");
            self.d.turn();
        }
    }

    fn write_raw(&self, member: usize, data: &[u8]) {
        let st = Rc::new(RefCell::new(None));
        let s2 = st.clone();
        self.d.enter(MAIN, || {
            meta_io::write(&self.chans[member], OFFSET_BYTES, data, move |s| {
                *s2.borrow_mut() = Some(s)
            })
        });
        self.turn_until("raw write", || st.borrow().is_some());
        assert!(st.borrow().unwrap().is_success());
    }

    /// The bitmap area (header + both pages) of a member, through its channel.
    fn read_bitmap(&self, member: usize) -> Vec<u8> {
        let out = Rc::new(RefCell::new(None));
        let o2 = out.clone();
        self.d.enter(MAIN, || {
            meta_io::read(&self.chans[member], OFFSET_BYTES, 8192, move |r| {
                *o2.borrow_mut() = Some(r)
            })
        });
        self.turn_until("bitmap read", || out.borrow().is_some());
        let r = out.borrow_mut().take().unwrap();
        r.expect("read the bitmap area")
    }

    fn disk_bit(&self, member: usize, chunk: u64) -> bool {
        bm::test_bit(&self.read_bitmap(member)[HEADER_BYTES..], chunk)
    }

    /// One poll on the main core (not degraded).
    fn poll(&mut self) -> bool {
        let (disk, intent, chans, ev, now) = (&mut self.disk, &self.intent, &self.chans, self.events, self.now_ms);
        self.d.enter(MAIN, || disk.poll(intent, chans, ev, now, false))
    }

    /// Polls and turns the reactors until no batch is in flight and a poll finds nothing to do.
    fn settle(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let did = self.poll();
            self.d.turn();
            if !did && !self.disk.in_flight() {
                return;
            }
            assert!(Instant::now() < until, "bitmap writes did not settle");
        }
    }

    /// Advances the clock by one daemon period and settles.
    fn period(&mut self) {
        self.now_ms += DAEMON_MS;
        self.settle();
    }

    fn chunk(c: u64) -> (u64, u64) {
        (c * CHUNK_SECTORS, c * CHUNK_SECTORS + 4)
    }
}

#[test]
fn wanted_bits_reach_every_member_before_the_write_goes() {
    let mut r = Rig::new();
    let far = 35_000; // bit area byte 4375 + 256: the second page
    let (a, b) = Rig::chunk(0);
    let (fa, fb) = Rig::chunk(far);
    assert!(!r.intent.admit(a, b), "bit 0 is not on disk yet");
    assert!(!r.intent.admit(fa, fb));
    assert_eq!(r.intent.dirty_count(), 2);
    r.events = 7;
    assert!(r.poll(), "the batch starts");
    assert!(r.disk.in_flight());
    assert!(!r.intent.admit(a, b), "held while the batch is in flight");
    r.settle();
    assert!(r.intent.admit(a, b) && r.intent.admit(fa, fb), "persisted: writes go");
    for m in 0..MEMBERS.len() {
        let img = r.read_bitmap(m);
        let h = BitmapHeader::decode(&img, &UUID).unwrap();
        assert_eq!((h.events, h.events_cleared), (7, 7), "member {m}");
        assert!(bm::test_bit(&img[HEADER_BYTES..], 0) && bm::test_bit(&img[HEADER_BYTES..], far));
        assert_eq!(bm::dirty_count(&img[HEADER_BYTES..], BITS), 2, "member {m}");
    }
    assert_eq!(r.disk.events_on_disk(), 7);
    assert_eq!(r.disk.write_errors(), 0);
    r.intent.end(a, b, true);
    r.intent.end(fa, fb, true);
}

#[test]
fn idle_bits_are_cleared_on_disk_after_two_periods() {
    let mut r = Rig::new();
    let (a, b) = Rig::chunk(3);
    assert!(!r.intent.admit(a, b));
    r.settle();
    assert!(r.intent.admit(a, b));
    // While the write is pending nothing clears, however long it takes.
    for _ in 0..4 {
        r.period();
        assert!(r.disk_bit(0, 3));
    }
    r.intent.end(a, b, true);
    r.period(); // touched during this period
    r.period(); // idle once
    assert!(r.disk_bit(0, 3), "one idle period is not enough");
    let batches = r.disk.batches();
    r.period(); // idle twice: cleared
    assert_eq!(r.disk.batches(), batches + 1);
    for m in 0..MEMBERS.len() {
        assert!(!r.disk_bit(m, 3), "member {m} still has bit 3");
    }
    assert_eq!(r.intent.dirty_count(), 0);
    // Idle and clean: further periods write nothing.
    r.period();
    r.period();
    assert_eq!(r.disk.batches(), batches + 1);
    assert!(!r.poll(), "an idle poll does nothing");
}

#[test]
fn a_failed_member_write_is_reported_and_does_not_wedge() {
    let mut r = Rig::new();
    let mut o = InjectOpts::new("EE_M2", "write", "failure");
    o.num = Some(1);
    error::inject(&r.reg, &o).unwrap();
    let (a, b) = Rig::chunk(10);
    assert!(!r.intent.admit(a, b));
    r.settle();
    assert!(r.intent.admit(a, b), "the other members have the bit: the write goes");
    assert_eq!(r.disk.write_errors(), 1);
    let failed = r.disk.take_failed();
    assert_eq!(failed.len(), 1);
    assert!(Rc::ptr_eq(&failed[0], &r.chans[2]), "EE_M2 is reported");
    assert!(r.disk.take_failed().is_empty(), "reported once");
    assert!(r.disk_bit(0, 10) && r.disk_bit(1, 10) && !r.disk_bit(2, 10));
    r.intent.end(a, b, true);
    // The next batch reaches every member again.
    let (c, d) = Rig::chunk(11);
    assert!(!r.intent.admit(c, d));
    r.settle();
    assert!(r.intent.admit(c, d));
    r.intent.end(c, d, true);
    for m in 0..MEMBERS.len() {
        assert!(r.disk_bit(m, 11), "member {m}");
    }
    assert_eq!(r.disk.write_errors(), 1);
}

#[test]
fn mdadm_reads_the_bitmap_the_members_hold() {
    let mut r = Rig::new();
    for c in [0, 1, 20_000] {
        let (a, b) = Rig::chunk(c);
        assert!(!r.intent.admit(a, b));
    }
    r.events = 9;
    r.settle();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bitmap");
    std::fs::write(&path, r.read_bitmap(1)).unwrap();
    let out = keel_testkit::mdadm_run(&["-X"], &path);
    assert_eq!(keel_testkit::mdadm_field(&out, "Magic"), "6d746962");
    assert_eq!(keel_testkit::mdadm_field(&out, "Version"), "4");
    assert_eq!(keel_testkit::mdadm_field(&out, "Events"), "9");
    assert_eq!(keel_testkit::mdadm_field(&out, "Chunksize"), "4 KB");
    assert_eq!(keel_testkit::mdadm_field(&out, "State"), "OK");
    assert_eq!(
        keel_testkit::mdadm_field(&out, "Bitmap"),
        "40000 bits (chunks), 3 dirty (0.0%)"
    );
}
