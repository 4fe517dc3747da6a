//! A suspend whose in-flight I/O is held below the device (here: by a suspended device it maps
//! onto) cannot drain until that one resumes. The suspend — and a resume's table swap, which
//! suspends too — gives up after its bound: the device runs again, nothing changed, and the error
//! names the suspended device below. Once the lower device resumes, the held I/O completes and a
//! suspend succeeds.

mod common;

use std::time::Duration;

use common::{pattern, Rig, MAIN};
use keel_bdev::{IoOp, IoStatus};
use keel_dm::DmError;

const BOUND: Duration = Duration::from_millis(150);

/// Turns the reactors until the operation answered (at most 10 s of wall time).
fn answer_within<T>(r: &Rig, rx: &std::sync::mpsc::Receiver<T>) -> T {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        r.d.turn();
        if let Ok(v) = rx.try_recv() {
            return v;
        }
    }
    panic!("no answer within 10 s: the bound did not end the wait");
}

#[test]
fn a_suspend_held_up_below_gives_up_and_changes_nothing() {
    let r = Rig::new(1);
    r.malloc("M0", 64, 4096);
    r.malloc("M1", 64, 4096);
    r.create("low", Some("0 256 linear M0 0")).unwrap();
    // Blocks 0..31 go through `low`, 32..63 straight to M1.
    r.create("top", Some("0 256 linear low 0\n256 256 linear M1 0"))
        .unwrap();
    r.suspend("low", false).unwrap();

    let mut c = r.client("top", MAIN, 4);
    let held = pattern(4096, |_| 0x5a);
    assert!(c.start(&r, IoOp::Write, 3, 1, Some(&held), 1));
    for _ in 0..5 {
        r.d.turn();
    }
    assert!(c.poll().is_empty(), "the write waits in the suspended lower device");

    // suspend: bounded, refused, device running again.
    let answer = r.start_op(|dm, done| dm.suspend_within("top", false, Some(BOUND), done));
    let err = answer_within(&r, &answer).expect_err("the drain cannot finish while 'low' holds the write");
    assert!(matches!(err, DmError::DrainTimedOut { .. }), "{err:?}");
    assert_eq!(err.errno(), -libc::ETIMEDOUT);
    let msg = err.to_string();
    assert!(msg.contains("'low'") && msg.contains("nothing changed"), "{msg}");
    assert!(!r.dm.info("top").unwrap().suspended, "the device runs again");
    let other = pattern(4096, |_| 0x33);
    assert!(c.start(&r, IoOp::Write, 40, 1, Some(&other), 2));
    assert_eq!(
        c.wait(&r, 1, Duration::from_secs(5)),
        vec![(2, IoStatus::Success)],
        "new I/O to the part not below 'low' is not held"
    );

    // resume with a staged table: the swap's drain is bounded the same way; the table stays staged.
    r.load("top", "0 256 linear M1 0\n256 256 linear M1 0").unwrap();
    let live_before = r.dm.table(Some("top"), false).unwrap();
    let answer = r.start_op(|dm, done| dm.resume_within("top", Some(BOUND), done));
    let err = answer_within(&r, &answer).expect_err("the swap cannot drain either");
    assert!(matches!(err, DmError::DrainTimedOut { .. }), "{err:?}");
    assert_eq!(
        r.dm.table(Some("top"), false).unwrap(),
        live_before,
        "old table still live"
    );
    assert!(
        !r.dm.table(Some("top"), true).unwrap().is_empty(),
        "new table still staged"
    );
    assert!(!r.dm.info("top").unwrap().suspended);
    assert!(c.poll().is_empty(), "the held write is still held, not failed");

    // The lower device resumes: the write lands where the old table sent it.
    r.resume("low").unwrap();
    assert_eq!(c.wait(&r, 1, Duration::from_secs(5)), vec![(1, IoStatus::Success)]);
    assert!(r.read_raw("M0", 3, 1).iter().all(|&b| b == 0x5a));
    // Nothing in flight now: both operations succeed.
    r.suspend("top", false).unwrap();
    r.resume("top").unwrap();
    assert_eq!(r.dm.table(Some("top"), true).unwrap(), "", "the swap happened");
    c.close(&r);
}

#[test]
fn an_unbounded_suspend_waits_until_the_lower_device_resumes() {
    let r = Rig::new(1);
    r.malloc("M0", 64, 4096);
    r.create("low", Some("0 256 linear M0 0")).unwrap();
    r.create("top", Some("0 256 linear low 0")).unwrap();
    r.suspend("low", false).unwrap();
    let mut c = r.client("top", MAIN, 2);
    let buf = pattern(4096, |_| 0x11);
    assert!(c.start(&r, IoOp::Write, 0, 1, Some(&buf), 1));
    for _ in 0..5 {
        r.d.turn();
    }
    let answer = r.start_op(|dm, done| dm.suspend_within("top", false, None, done));
    let until = std::time::Instant::now() + 3 * BOUND;
    while std::time::Instant::now() < until {
        r.d.turn();
    }
    assert!(answer.try_recv().is_err(), "no bound: still waiting");
    r.resume("low").unwrap();
    assert!(
        r.d.run_until(10_000, || answer.try_recv().is_ok()),
        "answered once drained"
    );
    assert!(r.dm.info("top").unwrap().suspended);
    assert_eq!(c.wait(&r, 1, Duration::from_secs(5)), vec![(1, IoStatus::Success)]);
    r.resume("top").unwrap();
    c.close(&r);
}
