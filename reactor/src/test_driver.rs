use std::rc::Rc;

use crate::reactor::set_current;
use crate::{CoreId, Cores, Reactor};

/// Runs N reactors on the calling thread in a fixed round-robin order: every logic test that
/// needs cores, messages and pollers is deterministic and uses no OS thread.
///
/// Reactor `i` has core id `i`. While a reactor turns, [`crate::current`] returns it.
pub struct TestDriver {
    cores: Cores,
    reactors: Vec<Rc<Reactor>>,
}

impl TestDriver {
    /// `n` reactors on cores `0..n`.
    pub fn new(n: u32) -> TestDriver {
        let ids: Vec<CoreId> = (0..n).map(CoreId).collect();
        let cores = Cores::new(&ids);
        let reactors = ids.iter().map(|&c| Reactor::new(c, cores.clone())).collect();
        TestDriver { cores, reactors }
    }

    /// The handle that addresses these reactors.
    pub fn cores(&self) -> Cores {
        self.cores.clone()
    }

    /// Runs `f` as if on `core` (with `current()` set to that reactor) and returns its result.
    pub fn enter<R>(&self, core: CoreId, f: impl FnOnce() -> R) -> R {
        let prev = set_current(Some(self.reactors[core.0 as usize].clone()));
        let r = f();
        set_current(prev);
        r
    }

    /// One turn of every reactor in core order. Returns whether any was busy.
    pub fn turn(&self) -> bool {
        let mut busy = false;
        for r in &self.reactors {
            let prev = set_current(Some(r.clone()));
            busy |= r.turn();
            set_current(prev);
        }
        busy
    }

    /// Turns until a whole round is idle and no message is queued; returns the rounds taken.
    /// Panics after `max_rounds` (a test whose pollers never go idle is broken).
    pub fn run_until_idle(&self, max_rounds: usize) -> usize {
        for round in 0..max_rounds {
            let busy = self.turn();
            let queued = self.cores.inner.mailboxes.iter().any(|m| !m.queue.is_empty());
            if !busy && !queued {
                return round + 1;
            }
        }
        panic!("reactors still busy after {max_rounds} rounds");
    }

    /// Turns until `cond` holds (checked after each round); returns whether it did within
    /// `max_rounds`.
    pub fn run_until(&self, max_rounds: usize, mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..max_rounds {
            self.turn();
            if cond() {
                return true;
            }
        }
        false
    }
}

impl Drop for TestDriver {
    fn drop(&mut self) {
        // Run shutdown hooks and let pollers drain, then drop channels on their own "core".
        self.cores.request_stop();
        for _ in 0..10_000 {
            self.turn();
            if self.reactors.iter().all(|r| r.poller_count() == 0) {
                break;
            }
        }
        for r in &self.reactors {
            let prev = set_current(Some(r.clone()));
            r.drop_channels();
            set_current(prev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{current, IoDevice, PollStatus};
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn messages_run_on_their_core_in_order() {
        let d = TestDriver::new(3);
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..6u32 {
            let l = log.clone();
            d.cores()
                .run_on(CoreId(i % 3), move || l.lock().unwrap().push((i, current().core())))
                .unwrap();
        }
        d.run_until_idle(100);
        let got = log.lock().unwrap().clone();
        assert_eq!(got.len(), 6);
        for (i, core) in got {
            assert_eq!(core, CoreId(i % 3));
        }
        assert!(d.cores().run_on(CoreId(9), || {}).is_err());
    }

    #[test]
    fn pollers_report_busy_and_idle_truthfully() {
        let d = TestDriver::new(1);
        let left = Rc::new(Cell::new(5));
        let l2 = left.clone();
        let h = d.enter(CoreId(0), || {
            current().register_poller("countdown", move || {
                if l2.get() == 0 {
                    return PollStatus::Idle;
                }
                l2.set(l2.get() - 1);
                PollStatus::Busy
            })
        });
        let rounds = d.run_until_idle(100);
        assert_eq!(left.get(), 0);
        assert_eq!(rounds, 6, "five busy turns then one idle");
        let stats = d.enter(CoreId(0), || current().poller_stats());
        assert_eq!(stats[0].run_count, 6);
        assert_eq!(stats[0].busy_count, 5);
        let st = d.cores();
        let s = st.stats(CoreId(0)).unwrap();
        assert!(s.busy_ticks.load(Ordering::Relaxed) > 0);
        assert!(s.idle_ticks.load(Ordering::Relaxed) > 0);
        h.unregister();
        d.turn();
        assert_eq!(d.enter(CoreId(0), || current().poller_count()), 0);
    }

    #[test]
    fn pollers_registered_from_pollers_start_next_turn() {
        let d = TestDriver::new(1);
        let handles: Rc<RefCell<Vec<crate::PollerHandle>>> = Rc::default();
        let hits = Rc::new(Cell::new(0));
        let (h2, hits2) = (handles.clone(), hits.clone());
        let outer = d.enter(CoreId(0), || {
            current().register_poller("spawner", move || {
                if h2.borrow().is_empty() {
                    let hits3 = hits2.clone();
                    let h = current().register_poller("child", move || {
                        hits3.set(hits3.get() + 1);
                        PollStatus::Idle
                    });
                    h2.borrow_mut().push(h);
                    return PollStatus::Busy;
                }
                PollStatus::Idle
            })
        });
        d.turn();
        assert_eq!(hits.get(), 0);
        d.turn();
        assert_eq!(hits.get(), 1);
        drop(outer);
        handles.borrow_mut().clear();
        d.turn();
        assert_eq!(d.enter(CoreId(0), || current().poller_count()), 0);
    }

    #[test]
    fn channels_are_per_core_and_for_each_channel_visits_them_all() {
        let d = TestDriver::new(3);
        let created = Arc::new(AtomicUsize::new(0));
        let c2 = created.clone();
        let dev: IoDevice<Cell<u32>> = IoDevice::new("counter", move |core| {
            c2.fetch_add(1, Ordering::SeqCst);
            Cell::new(core.0 * 100)
        });
        // Channels on cores 0 and 2 only; two handles on core 0 share one channel.
        let ch0 = d.enter(CoreId(0), || dev.get_channel());
        let ch0b = d.enter(CoreId(0), || dev.get_channel());
        let ch2 = d.enter(CoreId(2), || dev.get_channel());
        assert_eq!(created.load(Ordering::SeqCst), 2);
        assert_eq!(ch2.get(), 200);
        let visited = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(Mutex::new(None));
        let (v2, dn2, dev2) = (visited.clone(), done.clone(), dev.clone());
        d.enter(CoreId(1), || {
            dev2.for_each_channel(
                move |c: &Cell<u32>| {
                    c.set(c.get() + 1);
                    v2.lock().unwrap().push(current().core());
                },
                move || *dn2.lock().unwrap() = Some(current().core()),
            )
        });
        d.run_until_idle(100);
        assert_eq!(*visited.lock().unwrap(), vec![CoreId(0), CoreId(2)]);
        assert_eq!(*done.lock().unwrap(), Some(CoreId(1)));
        assert_eq!(ch0.get(), 1);
        assert_eq!(ch0b.get(), 1);
        assert_eq!(ch2.get(), 201);
        // Dropping the last handle destroys the channel; the next get creates a fresh one.
        d.enter(CoreId(2), || drop(ch2));
        let again = d.enter(CoreId(2), || dev.get_channel());
        assert_eq!(again.get(), 200);
        assert_eq!(created.load(Ordering::SeqCst), 3);
        d.enter(CoreId(2), || drop(again));
        d.enter(CoreId(0), || {
            drop(ch0);
            drop(ch0b)
        });
    }

    #[test]
    fn timed_pollers_wait_for_their_period() {
        let d = TestDriver::new(1);
        let runs = Rc::new(Cell::new(0));
        let r2 = runs.clone();
        let _h = d.enter(CoreId(0), || {
            current().register_timed_poller("slow", 20_000, move || {
                r2.set(r2.get() + 1);
                PollStatus::Busy
            })
        });
        d.turn();
        d.turn();
        assert_eq!(runs.get(), 0, "due only after 20 ms");
        std::thread::sleep(std::time::Duration::from_millis(25));
        d.turn();
        assert_eq!(runs.get(), 1);
    }

    #[test]
    fn shutdown_hooks_run_once() {
        let d = TestDriver::new(2);
        let n = Rc::new(Cell::new(0));
        let n2 = n.clone();
        d.enter(CoreId(1), || current().on_shutdown(move || n2.set(n2.get() + 1)));
        d.cores().request_stop();
        d.turn();
        d.turn();
        assert_eq!(n.get(), 1);
    }
}
