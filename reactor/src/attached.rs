//! Reactors driven by threads that Keel does not own.
//!
//! [`crate::Runtime`] starts its own pinned threads and [`crate::TestDriver`] runs reactors inside
//! one test thread. Some hosts bring their own threads instead: fio runs every job on a pthread it
//! created and calls an I/O engine from there, so the engine cannot hand the work to a Keel thread
//! without paying a cross-thread hop per I/O. An [`AttachedReactor`] is the answer: a reactor
//! created on, and bound to, the calling thread. While it exists
//!
//! - [`crate::current`] on that thread returns it, so bdev channels, pollers, timed pollers and
//!   messages work exactly as on a `Runtime` core (channels are per reactor: each attached thread
//!   gets its own);
//! - the thread drives it by calling [`AttachedReactor::turn`] whenever it wants progress (fio's
//!   engine: when it looks for completions). Nothing else ever runs it, and it never parks: the
//!   host decides when to turn.
//!
//! [`Cores::attached`] builds the `Send + Sync` addressing handle for `n` such reactors (core ids
//! `0..n`) without starting any thread. Each core is held by at most one attached reactor at a
//! time — the claim is the core's [`crate::ReactorStats::tid`] slot, set from 0 to the attaching
//! thread's id and back to 0 when the `AttachedReactor` drops — so a core freed by one thread can
//! be attached again by another (a fresh reactor: pollers and channels do not carry over).
//!
//! # Limits
//!
//! - A message sent to a core that nobody has attached waits in its queue until some thread
//!   attaches that core. Visits over every core ([`Cores::for_each_core`],
//!   [`crate::IoDevice::for_each_channel`], bdev hot removal) pass such cores by — they have no
//!   reactor and so no channels — but wait for every attached core, which must be turned.
//! - Only for handles made by [`Cores::attached`]: a `Runtime`'s cores are owned by its threads.
//!
//! Everything here is control path except [`AttachedReactor::turn`], which is one reactor loop
//! turn (messages, active pollers, due timed pollers, busy/idle accounting) and allocates nothing.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::reactor::set_current;
use crate::{try_current, CoreId, Cores, Reactor, ReactorError};

impl Cores {
    /// A handle for `n` externally driven reactors on cores `0..n` (at least one); no thread is
    /// started. Threads join with [`AttachedReactor::attach`]. Callable on any thread.
    pub fn attached(n: u32) -> Cores {
        let ids: Vec<CoreId> = (0..n.max(1)).map(CoreId).collect();
        let cores = Cores::new(&ids);
        cores.inner.external.store(true, Ordering::Release);
        cores
    }
}

/// A reactor bound to the thread that created it, turned by that thread. `!Send` (it is the
/// thread's [`crate::current`] reactor). Dropping it — on its thread — destroys its channels and
/// pollers, clears `current()` and frees the core for the next thread.
pub struct AttachedReactor {
    reactor: Rc<Reactor>,
}

impl AttachedReactor {
    /// Creates the reactor of `core` on the calling thread and makes it the thread's
    /// [`crate::current`]. Fails if the thread already runs a reactor, if `core` is not in
    /// `cores`, if another thread holds `core`, or if `cores` is stopping. Control path.
    pub fn attach(cores: &Cores, core: CoreId) -> Result<AttachedReactor, ReactorError> {
        AttachedReactor::try_attach(cores, core).map_err(|(_, e)| e)
    }

    /// [`AttachedReactor::attach`], telling apart "another thread holds the core" (`true`).
    fn try_attach(cores: &Cores, core: CoreId) -> Result<AttachedReactor, (bool, ReactorError)> {
        if let Some(r) = try_current() {
            return Err((
                false,
                ReactorError::Spawn {
                    core,
                    reason: format!("this thread already runs the reactor of core {}", r.core()),
                },
            ));
        }
        if cores.is_stopping() {
            return Err((false, ReactorError::ShuttingDown));
        }
        let mb = cores.mailbox(core).ok_or((false, ReactorError::NoSuchCore(core)))?;
        // The claim: 0 = free. `max(1)` keeps a claim visible where the thread id is unknown.
        let tid = os_thread_id().max(1);
        if let Err(holder) = mb
            .stats
            .tid
            .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Acquire)
        {
            return Err((
                true,
                ReactorError::Spawn {
                    core,
                    reason: format!("core {core} is already attached to thread {holder}"),
                },
            ));
        }
        let reactor = Reactor::new(core, cores.clone());
        set_current(Some(reactor.clone()));
        Ok(AttachedReactor { reactor })
    }

    /// Attaches the first free core at or after `from` (in core order). Fails when every one
    /// is held, naming how many there are. Control path.
    pub fn attach_first_free(cores: &Cores, from: CoreId) -> Result<AttachedReactor, ReactorError> {
        let ids: Vec<CoreId> = cores.core_ids().into_iter().filter(|c| *c >= from).collect();
        for &core in &ids {
            match AttachedReactor::try_attach(cores, core) {
                Ok(r) => return Ok(r),
                Err((true, _)) => continue,
                Err((false, e)) => return Err(e),
            }
        }
        Err(ReactorError::Spawn {
            core: from,
            reason: format!("all {} cores from {from} on are attached to other threads", ids.len()),
        })
    }

    /// This reactor's core.
    pub fn core(&self) -> CoreId {
        self.reactor.core()
    }

    /// The reactor itself (to register pollers, read statistics).
    pub fn reactor(&self) -> &Rc<Reactor> {
        &self.reactor
    }

    /// One loop turn: queued messages, every active poller, due timed pollers, busy/idle
    /// accounting. Returns whether anything did work. Called by the owning thread whenever it
    /// wants progress; allocates nothing.
    #[inline]
    pub fn turn(&self) -> bool {
        self.reactor.turn()
    }
}

impl Drop for AttachedReactor {
    fn drop(&mut self) {
        // Channels die first, on this thread, while `current()` still answers (their drops look
        // the reactor up), outside the map's borrow.
        self.reactor.drop_channels();
        set_current(None);
        if let Some(mb) = self.reactor.cores().mailbox(self.reactor.core()) {
            mb.stats.tid.store(0, Ordering::Release);
        }
        // Pollers and shutdown hooks drop with the last `Rc<Reactor>`, right after this.
    }
}

/// The calling thread's OS id (as `Runtime` records it for `thread_get_stats`), 0 if unknown.
fn os_thread_id() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{current, IoDevice, PollStatus};
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};

    #[test]
    fn attach_sets_current_runs_messages_and_frees_the_core_on_drop() {
        let cores = Cores::attached(3);
        assert_eq!(cores.core_ids(), vec![CoreId(0), CoreId(1), CoreId(2)]);
        let ran = Arc::new(AtomicUsize::new(0));
        let r2 = ran.clone();
        // Queued before anyone attached: waits for the attacher.
        cores
            .run_on(CoreId(1), move || {
                assert_eq!(current().core(), CoreId(1));
                r2.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        let a = AttachedReactor::attach(&cores, CoreId(1)).unwrap();
        assert_eq!(current().core(), CoreId(1));
        assert_eq!(ran.load(Ordering::SeqCst), 0, "messages run only when the thread turns");
        assert!(a.turn());
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(!a.turn(), "nothing left to do");
        assert_ne!(cores.stats(CoreId(1)).unwrap().tid.load(Ordering::SeqCst), 0);
        drop(a);
        assert!(try_current().is_none());
        assert_eq!(cores.stats(CoreId(1)).unwrap().tid.load(Ordering::SeqCst), 0);
        // Free again: the same thread (or another) may attach it.
        let b = AttachedReactor::attach(&cores, CoreId(1)).unwrap();
        assert_eq!(b.core(), CoreId(1));
    }

    #[test]
    fn a_core_has_one_holder_and_a_thread_one_reactor() {
        let cores = Cores::attached(2);
        let a = AttachedReactor::attach(&cores, CoreId(0)).unwrap();
        // Same thread, second reactor: refused.
        let e = AttachedReactor::attach(&cores, CoreId(1)).err().unwrap();
        assert!(e.to_string().contains("already runs the reactor of core 0"), "{e}");
        // Another thread, held core: refused; free core: taken; none left: refused.
        let c2 = cores.clone();
        std::thread::spawn(move || {
            let e = AttachedReactor::attach(&c2, CoreId(0)).err().unwrap();
            assert!(e.to_string().contains("already attached"), "{e}");
            assert!(matches!(
                AttachedReactor::attach(&c2, CoreId(7)),
                Err(ReactorError::NoSuchCore(CoreId(7)))
            ));
            let b = AttachedReactor::attach_first_free(&c2, CoreId(0)).unwrap();
            assert_eq!(b.core(), CoreId(1));
            drop(b);
        })
        .join()
        .unwrap();
        let c3 = cores.clone();
        let hold = AttachedReactor::attach_first_free(&cores, CoreId(0));
        assert!(hold.is_err(), "this thread already has core 0");
        std::thread::spawn(move || {
            let b = AttachedReactor::attach_first_free(&c3, CoreId(1)).unwrap();
            let c4 = c3.clone();
            std::thread::spawn(move || {
                let e = AttachedReactor::attach_first_free(&c4, CoreId(0)).err().unwrap();
                assert!(e.to_string().contains("all 2 cores"), "{e}");
            })
            .join()
            .unwrap();
            drop(b);
        })
        .join()
        .unwrap();
        drop(a);
    }

    #[test]
    fn each_thread_gets_its_own_channels_and_drives_its_own_pollers() {
        let cores = Cores::attached(3);
        let created = Arc::new(AtomicUsize::new(0));
        let c2 = created.clone();
        let dev: IoDevice<Cell<u32>> = IoDevice::new("per-thread", move |core| {
            c2.fetch_add(1, Ordering::SeqCst);
            Cell::new(core.0)
        });
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = [CoreId(1), CoreId(2)]
            .into_iter()
            .map(|core| {
                let (cores, dev, barrier) = (cores.clone(), dev.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let r = AttachedReactor::attach(&cores, core).unwrap();
                    let ch = dev.get_channel();
                    assert_eq!(ch.get(), core.0, "the factory ran for this thread's core");
                    let hits = Rc::new(Cell::new(0u32));
                    let h2 = hits.clone();
                    let _p = r.reactor().register_poller("count", move || {
                        h2.set(h2.get() + 1);
                        PollStatus::Busy
                    });
                    barrier.wait(); // both threads hold a channel at once
                    for _ in 0..5 {
                        assert!(r.turn());
                    }
                    assert_eq!(hits.get(), 5);
                    drop(ch);
                    drop(r);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(created.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn visits_over_all_cores_pass_unattached_cores_by() {
        let cores = Cores::attached(4);
        let r0 = AttachedReactor::attach(&cores, CoreId(0)).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, d2) = (seen.clone(), done.clone());
        cores.for_each_core(
            move || s2.lock().unwrap().push(crate::current().core()),
            CoreId(0),
            move || d2.store(true, Ordering::SeqCst),
        );
        for _ in 0..10 {
            r0.turn();
        }
        assert!(done.load(Ordering::SeqCst), "the visit waited for cores nobody drives");
        assert_eq!(*seen.lock().unwrap(), vec![CoreId(0)]);
        assert!(cores.is_live(CoreId(0)) && !cores.is_live(CoreId(3)));
    }
}
