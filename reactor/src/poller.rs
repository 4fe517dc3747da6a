use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// What a poller found on one call: work (`Busy`) or nothing (`Idle`). Must be truthful: it
/// drives busy/idle accounting and the reactor's idle back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    Busy,
    Idle,
}

impl PollStatus {
    /// `Busy` if `did_work`.
    #[inline]
    pub fn from_work(did_work: bool) -> PollStatus {
        if did_work {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

/// Counters of one poller, readable from its core.
#[derive(Debug, Clone, Default)]
pub struct PollerStats {
    pub name: String,
    /// 0 for an active poller.
    pub period_us: u64,
    pub run_count: u64,
    pub busy_count: u64,
}

pub(crate) type PollFn = Box<dyn FnMut() -> PollStatus>;

pub(crate) struct PollerEntry {
    pub name: String,
    pub period_ticks: u64,
    pub next_due: u64,
    pub func: RefCell<PollFn>,
    pub alive: Rc<Cell<bool>>,
    pub run_count: Cell<u64>,
    pub busy_count: Cell<u64>,
}

/// Owner's handle of a registered poller; dropping it (or calling [`PollerHandle::unregister`])
/// stops the poller before the reactor's next turn. `!Send`: it lives on the poller's core.
pub struct PollerHandle {
    pub(crate) alive: Rc<Cell<bool>>,
}

impl PollerHandle {
    /// Stops the poller. Idempotent.
    pub fn unregister(&self) {
        self.alive.set(false);
    }

    /// Whether the poller is still registered.
    pub fn is_registered(&self) -> bool {
        self.alive.get()
    }
}

impl Drop for PollerHandle {
    fn drop(&mut self) {
        self.alive.set(false);
    }
}
