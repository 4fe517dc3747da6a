//! A mapped device's event counter and its waiters (`dmsetup wait`, spec §6).
//!
//! The counter is a 32-bit atomic: targets raise events from data cores (a striped leg error),
//! the control path on renames. Waiters are control-path callbacks kept under a mutex; a raise on
//! a data core bumps the counter and sends one message to the main core, which answers every
//! waiter whose number now differs. That message allocates, so raising is for rare events only
//! (striped raises at most 15 per target, as Linux).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_reactor::{CoreId, Cores};

/// What a waiter gets: the event number it saw change, or `Err(())` when it was cancelled
/// (device removed, timed out).
pub type WaitFn = Box<dyn FnOnce(Result<u32, ()>) + Send>;

struct Waiter {
    id: u64,
    seen: u32,
    cb: WaitFn,
}

/// The event counter of one mapped device. `Send + Sync`; shared by the device, its targets and
/// its channels.
pub struct Events {
    nr: AtomicU32,
    waiters: Mutex<Vec<Waiter>>,
    next_id: AtomicU64,
    /// Where waiters are answered; `None` for tables built outside a device (tests).
    route: Option<(Cores, CoreId)>,
}

impl Events {
    /// A counter whose waiters are answered on `main` of `cores`.
    pub fn new(cores: Cores, main: CoreId) -> Arc<Events> {
        Arc::new(Events {
            nr: AtomicU32::new(0),
            waiters: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            route: Some((cores, main)),
        })
    }

    /// A counter with no reactors behind it (tables built in pure tests): raises only count.
    pub fn detached() -> Arc<Events> {
        Arc::new(Events {
            nr: AtomicU32::new(0),
            waiters: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            route: None,
        })
    }

    /// The current event number. Any thread.
    pub fn number(&self) -> u32 {
        self.nr.load(Ordering::Acquire)
    }

    /// Raises an event: the counter goes up by one (wrapping) and waiters are answered on the
    /// main core. Any thread; allocates one message, so only for rare events.
    pub fn raise(self: &Arc<Self>) {
        self.nr.fetch_add(1, Ordering::AcqRel);
        match &self.route {
            Some((cores, main)) => {
                let me = self.clone();
                if cores.run_on(*main, move || me.wake()).is_err() {
                    tracing::debug!("dm event raised while the reactors stop");
                }
            }
            None => self.wake(),
        }
    }

    /// Answers every waiter whose number differs from the counter now. Called on the main core.
    pub(crate) fn wake(&self) {
        let now = self.number();
        let ready: Vec<Waiter> = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            let (ready, keep): (Vec<Waiter>, Vec<Waiter>) = w.drain(..).partition(|x| x.seen != now);
            *w = keep;
            ready
        };
        for w in ready {
            (w.cb)(Ok(now));
        }
    }

    /// Calls `cb` once the counter differs from `seen` — at once if it already does. Returns an
    /// id for [`Events::cancel`]. Called on the main core.
    pub(crate) fn wait(&self, seen: u32, cb: WaitFn) -> Option<u64> {
        let now = self.number();
        if now != seen {
            cb(Ok(now));
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Waiter { id, seen, cb });
        Some(id)
    }

    /// Cancels one waiter (its callback gets `Err(())`). Idempotent.
    pub(crate) fn cancel(&self, id: u64) {
        let w = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            w.iter().position(|x| x.id == id).map(|p| w.remove(p))
        };
        if let Some(w) = w {
            (w.cb)(Err(()));
        }
    }

    /// Cancels every waiter (device removed).
    pub(crate) fn cancel_all(&self) {
        let all: Vec<Waiter> = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()));
        for w in all {
            (w.cb)(Err(()));
        }
    }
}
