//! The threaded runtime: messages across real threads, channels per core, busy/idle statistics
//! and a stop that waits for pollers to drain.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use keel_reactor::{current, CoreId, CoreMask, IoDevice, PollStatus, Runtime};

#[test]
fn runs_messages_channels_and_drains_on_stop() {
    let mask = CoreMask::parse("0x3").unwrap();
    let (tx, rx) = mpsc::channel();
    let rt = Runtime::start(&mask, false, move || tx.send(current().core()).unwrap()).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), CoreId(0));
    let cores = rt.cores();

    // A poller on core 1 that keeps "in-flight work" for 50 turns after stop is requested, and
    // unregisters itself when drained: the reactor must wait for it.
    let drained = Arc::new(AtomicUsize::new(0));
    let d2 = drained.clone();
    cores
        .run_on(CoreId(1), move || {
            let left = Rc::new(Cell::new(50u32));
            let handle: Rc<Cell<Option<keel_reactor::PollerHandle>>> = Rc::new(Cell::new(None));
            let h2 = handle.clone();
            let cores = current().cores().clone();
            let h = current().register_poller("inflight", move || {
                if !cores.is_stopping() {
                    return PollStatus::Idle;
                }
                if left.get() == 0 {
                    d2.store(1, Ordering::SeqCst);
                    h2.take(); // drop the handle: unregisters
                    return PollStatus::Idle;
                }
                left.set(left.get() - 1);
                PollStatus::Busy
            });
            handle.set(Some(h));
        })
        .unwrap();

    // Channels: one per core, visited on their own core.
    let dev: IoDevice<Cell<u32>> = IoDevice::new("dev", |core| Cell::new(core.0));
    let (ctx, crx) = mpsc::channel();
    for c in [CoreId(0), CoreId(1)] {
        let dev = dev.clone();
        let ctx = ctx.clone();
        cores
            .run_on(c, move || {
                let ch = dev.get_channel();
                // Keep the channel alive for the rest of the test by leaking the handle into a
                // shutdown hook, which drops it on its core.
                current().on_shutdown(move || drop(ch));
                ctx.send(()).unwrap();
            })
            .unwrap();
    }
    crx.recv_timeout(Duration::from_secs(5)).unwrap();
    crx.recv_timeout(Duration::from_secs(5)).unwrap();
    let (vtx, vrx) = mpsc::channel();
    let dev2 = dev.clone();
    cores
        .run_on(CoreId(0), move || {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let s2 = seen.clone();
            dev2.for_each_channel(
                move |c: &Cell<u32>| s2.lock().unwrap().push((c.get(), current().core().0)),
                move || vtx.send(seen.lock().unwrap().clone()).unwrap(),
            );
        })
        .unwrap();
    assert_eq!(vrx.recv_timeout(Duration::from_secs(5)).unwrap(), vec![(0, 0), (1, 1)]);

    std::thread::sleep(Duration::from_millis(30));
    let s = cores.stats(CoreId(1)).unwrap();
    assert!(s.loops.load(Ordering::Relaxed) > 0);
    assert!(s.idle_ticks.load(Ordering::Relaxed) > 0);
    assert!(s.tid.load(Ordering::Relaxed) > 0);

    cores.request_stop();
    rt.wait();
    assert_eq!(
        drained.load(Ordering::SeqCst),
        1,
        "stop returned before the poller drained"
    );
    assert!(
        cores.run_on(CoreId(0), || {}).is_ok(),
        "queueing after exit is harmless"
    );
}

#[test]
fn refuses_cores_the_machine_lacks_when_pinning() {
    let mask = CoreMask::parse("[1000]").unwrap();
    let err = Runtime::start(&mask, true, || {}).err().expect("core 1000 refused");
    assert!(err.to_string().contains("core 1000"), "{err}");
}

/// A channel that outlives its handles (the map holds the last reference) and holds a channel
/// of another device dies at the runtime's exit: its drop releases the other device's channel,
/// which takes itself out of the map — while the exit is emptying it (was "RefCell already
/// borrowed", a panic of the reactor thread at keel-tgt's shutdown).
#[test]
fn channels_holding_channels_of_other_devices_die_at_exit() {
    struct Layer {
        _base: keel_reactor::IoChannel<Cell<u32>>,
    }
    let mask = CoreMask::parse("0x1").unwrap();
    let rt = Runtime::start(&mask, false, || {}).unwrap();
    // Many pairs: the map empties in hash order, and a layer must die before its base.
    let layers: Vec<IoDevice<Layer>> = (0..32)
        .map(|i| {
            let base: IoDevice<Cell<u32>> = IoDevice::new(format!("base{i}"), |core| Cell::new(core.0));
            IoDevice::new(format!("layer{i}"), move |_| Layer {
                _base: base.get_channel(),
            })
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    rt.cores()
        .run_on(CoreId(0), move || {
            for layer in &layers {
                let h = layer.get_channel();
                // A plain `Rc` of the channel outlives the handle, so the handle's drop leaves
                // the channel in the map; then the `Rc` goes too: only the map holds it.
                let extra: Rc<Layer> = h.rc().clone();
                drop(h);
                drop(extra);
            }
            tx.send(()).unwrap();
        })
        .unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    rt.cores().request_stop();
    rt.join().expect("every reactor exits normally");
}
