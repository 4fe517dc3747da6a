use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use crossbeam_queue::SegQueue;

use crate::poller::{PollFn, PollerEntry};
use crate::{ticks, ticks_per_sec, PollStatus, PollerHandle, PollerStats, ReactorError};

/// Index of a core (the bit number in the core mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub u32);

impl fmt::Display for CoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Work sent to a reactor: runs once, on that reactor's core, at the start of a loop turn.
pub type Message = Box<dyn FnOnce() + Send>;

/// Busy/idle accounting of one reactor, updated by that reactor every turn and readable from any
/// core (relaxed atomics: values are statistics, not synchronisation).
#[derive(Debug, Default)]
pub struct ReactorStats {
    pub busy_ticks: AtomicU64,
    pub idle_ticks: AtomicU64,
    pub loops: AtomicU64,
    /// OS thread id of the reactor's thread (0 under the test driver before the first turn).
    pub tid: AtomicU64,
}

pub(crate) struct Mailbox {
    pub core: CoreId,
    pub queue: SegQueue<Message>,
    pub thread: OnceLock<Thread>,
    pub parked: AtomicBool,
    pub stats: ReactorStats,
}

pub(crate) struct CoresInner {
    pub mailboxes: Vec<Mailbox>,
    pub stopping: AtomicBool,
    /// Cores driven by threads Keel does not own (see `attached.rs`): a core nobody has
    /// attached has no reactor, so visits over all cores pass it by.
    pub external: AtomicBool,
}

/// `Send + Sync` handle to every reactor of a runtime: addresses them by core and carries
/// messages. Cheap to clone; callable from any thread.
#[derive(Clone)]
pub struct Cores {
    pub(crate) inner: Arc<CoresInner>,
}

impl Cores {
    pub(crate) fn new(mask: &[CoreId]) -> Cores {
        Cores {
            inner: Arc::new(CoresInner {
                mailboxes: mask
                    .iter()
                    .map(|&core| Mailbox {
                        core,
                        queue: SegQueue::new(),
                        thread: OnceLock::new(),
                        parked: AtomicBool::new(false),
                        stats: ReactorStats::default(),
                    })
                    .collect(),
                stopping: AtomicBool::new(false),
                external: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn mailbox(&self, core: CoreId) -> Option<&Mailbox> {
        self.inner.mailboxes.iter().find(|m| m.core == core)
    }

    /// Whether `core` can run messages now. False only for an externally driven core that no
    /// thread has attached (it has no reactor, so no channels and nothing to visit).
    pub fn is_live(&self, core: CoreId) -> bool {
        match self.mailbox(core) {
            Some(mb) => !self.inner.external.load(Ordering::Acquire) || mb.stats.tid.load(Ordering::Acquire) != 0,
            None => false,
        }
    }

    /// The cores that have a reactor, ascending.
    pub fn core_ids(&self) -> Vec<CoreId> {
        self.inner.mailboxes.iter().map(|m| m.core).collect()
    }

    /// The first core of the mask: it runs the control plane.
    pub fn main_core(&self) -> CoreId {
        self.inner.mailboxes[0].core
    }

    /// The core after `core` in mask order, wrapping around.
    pub fn next_core(&self, core: CoreId) -> CoreId {
        let ids = &self.inner.mailboxes;
        let pos = ids.iter().position(|m| m.core == core).unwrap_or(0);
        ids[(pos + 1) % ids.len()].core
    }

    /// Queues `msg` for `core`. It runs there at the start of that reactor's next turn. Messages
    /// from one sender to one core run in the order sent.
    pub fn send(&self, core: CoreId, msg: Message) -> Result<(), ReactorError> {
        let mb = self.mailbox(core).ok_or(ReactorError::NoSuchCore(core))?;
        mb.queue.push(msg);
        if mb.parked.load(Ordering::Acquire) {
            if let Some(t) = mb.thread.get() {
                t.unpark();
            }
        }
        Ok(())
    }

    /// Convenience: [`Cores::send`] with a closure.
    pub fn run_on(&self, core: CoreId, f: impl FnOnce() + Send + 'static) -> Result<(), ReactorError> {
        self.send(core, Box::new(f))
    }

    /// Busy/idle statistics of `core`'s reactor.
    pub fn stats(&self, core: CoreId) -> Option<&ReactorStats> {
        self.mailbox(core).map(|m| &m.stats)
    }

    /// Asks every reactor to stop: each runs its shutdown hooks, then keeps polling until its
    /// pollers have all unregistered (in-flight work drained) and exits.
    pub fn request_stop(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        for mb in &self.inner.mailboxes {
            if let Some(t) = mb.thread.get() {
                t.unpark();
            }
        }
    }

    /// Whether [`Cores::request_stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }
}

/// One core's event loop. Lives on its core (`!Send`); reach it with [`current`] from code
/// running on that core, or by message through [`Cores`].
pub struct Reactor {
    core: CoreId,
    cores: Cores,
    active: RefCell<Vec<PollerEntry>>,
    timed: RefCell<Vec<PollerEntry>>,
    /// Pollers registered while the loop iterates; merged at the start of the next turn.
    pending: RefCell<Vec<PollerEntry>>,
    pub(crate) channels: RefCell<HashMap<u64, Rc<dyn Any>>>,
    shutdown_hooks: RefCell<Vec<Box<dyn FnOnce()>>>,
    shutdown_started: Cell<bool>,
    idle_since: Cell<u64>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

/// The reactor of the calling core, if the caller runs on one.
pub fn try_current() -> Option<Rc<Reactor>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The reactor of the calling core. Calling it off a reactor is a programming error and panics
/// with a message naming the mistake (it never happens on a reactor thread).
pub fn current() -> Rc<Reactor> {
    try_current().expect("keel_reactor::current() called outside a reactor")
}

pub(crate) fn set_current(r: Option<Rc<Reactor>>) -> Option<Rc<Reactor>> {
    CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), r))
}

/// How long a reactor must have been idle before it parks its thread, and for how long it
/// parks. 10 ms keeps a loaded reactor spinning (SPDK never sleeps) while an idle target gives
/// its cores back to a shared machine; 1 ms bounds the wake-up latency of timed pollers, and
/// messages wake a parked reactor at once.
const IDLE_BEFORE_PARK_US: u64 = 10_000;
const PARK_MAX_US: u64 = 1_000;

impl Reactor {
    pub(crate) fn new(core: CoreId, cores: Cores) -> Rc<Reactor> {
        Rc::new(Reactor {
            core,
            cores,
            active: RefCell::new(Vec::new()),
            timed: RefCell::new(Vec::new()),
            pending: RefCell::new(Vec::new()),
            channels: RefCell::new(HashMap::new()),
            shutdown_hooks: RefCell::new(Vec::new()),
            shutdown_started: Cell::new(false),
            idle_since: Cell::new(ticks()),
        })
    }

    /// This reactor's core.
    pub fn core(&self) -> CoreId {
        self.core
    }

    /// Drops every channel of this reactor, outside the channel map's borrow: a channel's drop
    /// may release channels of other devices, which take themselves out of the map. Drops may
    /// leave new entries (a channel made while another drops), so it repeats until the map
    /// stays empty. Called on this reactor's thread when it stops, with `current()` set.
    pub(crate) fn drop_channels(&self) {
        loop {
            let channels = std::mem::take(&mut *self.channels.borrow_mut());
            if channels.is_empty() {
                break;
            }
            drop(channels);
        }
    }

    /// Handle to all reactors of the runtime.
    pub fn cores(&self) -> &Cores {
        &self.cores
    }

    /// Registers an active poller: `f` runs once every loop turn until the returned handle is
    /// dropped or unregistered. Called on this reactor's core.
    pub fn register_poller(&self, name: impl Into<String>, f: impl FnMut() -> PollStatus + 'static) -> PollerHandle {
        self.add_poller(name.into(), 0, Box::new(f))
    }

    /// Registers a timed poller that runs every `period_us` microseconds (at the first turn at
    /// or after its due time). `period_us == 0` makes it active.
    pub fn register_timed_poller(
        &self,
        name: impl Into<String>,
        period_us: u64,
        f: impl FnMut() -> PollStatus + 'static,
    ) -> PollerHandle {
        let period_ticks = (period_us as u128 * ticks_per_sec() as u128 / 1_000_000) as u64;
        self.add_poller(name.into(), period_ticks, Box::new(f))
    }

    fn add_poller(&self, name: String, period_ticks: u64, func: PollFn) -> PollerHandle {
        let alive = Rc::new(Cell::new(true));
        self.pending.borrow_mut().push(PollerEntry {
            name,
            period_ticks,
            next_due: ticks() + period_ticks,
            func: RefCell::new(func),
            alive: alive.clone(),
            run_count: Cell::new(0),
            busy_count: Cell::new(0),
        });
        PollerHandle { alive }
    }

    /// Runs `hook` once when the runtime is asked to stop (before the drain). Owners of
    /// long-lived pollers use it to stop admitting work.
    pub fn on_shutdown(&self, hook: impl FnOnce() + 'static) {
        self.shutdown_hooks.borrow_mut().push(Box::new(hook));
    }

    /// Number of registered pollers (active and timed, pending included).
    pub fn poller_count(&self) -> usize {
        let live = |v: &Vec<PollerEntry>| v.iter().filter(|p| p.alive.get()).count();
        live(&self.active.borrow()) + live(&self.timed.borrow()) + live(&self.pending.borrow())
    }

    /// (active, timed) poller counts, for `thread_get_stats`.
    pub fn poller_counts(&self) -> (usize, usize) {
        let mut active = self.active.borrow().iter().filter(|p| p.alive.get()).count();
        let mut timed = self.timed.borrow().iter().filter(|p| p.alive.get()).count();
        for p in self.pending.borrow().iter().filter(|p| p.alive.get()) {
            if p.period_ticks == 0 {
                active += 1
            } else {
                timed += 1
            }
        }
        (active, timed)
    }

    /// Statistics of every registered poller.
    pub fn poller_stats(&self) -> Vec<PollerStats> {
        let tps = ticks_per_sec() as u128;
        let one = |p: &PollerEntry| PollerStats {
            name: p.name.clone(),
            period_us: (p.period_ticks as u128 * 1_000_000 / tps) as u64,
            run_count: p.run_count.get(),
            busy_count: p.busy_count.get(),
        };
        let mut v: Vec<PollerStats> = self.active.borrow().iter().filter(|p| p.alive.get()).map(one).collect();
        v.extend(self.timed.borrow().iter().filter(|p| p.alive.get()).map(one));
        v
    }

    fn merge_pending(&self) {
        if self.pending.borrow().is_empty() {
            return;
        }
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for p in pending {
            if p.period_ticks == 0 {
                self.active.borrow_mut().push(p);
            } else {
                self.timed.borrow_mut().push(p);
            }
        }
    }

    fn run_list(list: &RefCell<Vec<PollerEntry>>, now: u64, timed: bool) -> (bool, bool) {
        // Pollers may register or unregister pollers while they run: new ones go to `pending`,
        // removed ones are only flagged, so iterating by index under a shared borrow is sound.
        let mut busy = false;
        let mut dead = false;
        let list_ref = list.borrow();
        for p in list_ref.iter() {
            if !p.alive.get() {
                dead = true;
                continue;
            }
            if timed && now < p.next_due {
                continue;
            }
            let status = (p.func.borrow_mut())();
            p.run_count.set(p.run_count.get() + 1);
            if status == PollStatus::Busy {
                p.busy_count.set(p.busy_count.get() + 1);
                busy = true;
            }
        }
        drop(list_ref);
        if timed {
            // Reschedule with a mutable borrow after the calls.
            for p in list.borrow_mut().iter_mut() {
                if now >= p.next_due {
                    p.next_due = now + p.period_ticks;
                }
            }
        }
        (busy, dead)
    }

    /// One loop turn: messages, active pollers, due timed pollers, accounting. Returns whether
    /// anything was busy. Called by the drivers only.
    pub(crate) fn turn(self: &Rc<Self>) -> bool {
        let start = ticks();
        let mb = self.cores.mailbox(self.core).expect("reactor without mailbox");
        let mut busy = false;
        // A bounded number of messages per turn keeps pollers running under a message flood.
        for _ in 0..256 {
            match mb.queue.pop() {
                Some(msg) => {
                    msg();
                    busy = true;
                }
                None => break,
            }
        }
        if self.cores.is_stopping() && !self.shutdown_started.get() {
            self.shutdown_started.set(true);
            let hooks = std::mem::take(&mut *self.shutdown_hooks.borrow_mut());
            for h in hooks {
                h();
            }
        }
        self.merge_pending();
        let (b1, dead1) = Self::run_list(&self.active, start, false);
        let (b2, dead2) = Self::run_list(&self.timed, start, true);
        busy |= b1 | b2;
        if dead1 {
            self.active.borrow_mut().retain(|p| p.alive.get());
        }
        if dead2 {
            self.timed.borrow_mut().retain(|p| p.alive.get());
        }
        let end = ticks();
        let st = &mb.stats;
        if busy {
            st.busy_ticks.fetch_add(end - start, Ordering::Relaxed);
            self.idle_since.set(end);
        } else {
            st.idle_ticks.fetch_add(end - start, Ordering::Relaxed);
        }
        st.loops.fetch_add(1, Ordering::Relaxed);
        busy
    }

    /// Whether the reactor has been idle long enough to park, and for how long (µs).
    pub(crate) fn park_hint(&self) -> Option<u64> {
        let now = ticks();
        let tps = ticks_per_sec();
        let idle_us = (now.saturating_sub(self.idle_since.get()) as u128 * 1_000_000 / tps as u128) as u64;
        if idle_us < IDLE_BEFORE_PARK_US {
            return None;
        }
        let mut park_us = PARK_MAX_US;
        for p in self.timed.borrow().iter().filter(|p| p.alive.get()) {
            let until = (p.next_due.saturating_sub(now) as u128 * 1_000_000 / tps as u128) as u64;
            park_us = park_us.min(until);
        }
        (park_us > 0).then_some(park_us)
    }

    pub(crate) fn shutdown_started(&self) -> bool {
        self.shutdown_started.get()
    }
}
