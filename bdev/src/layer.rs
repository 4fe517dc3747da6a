//! A stacking layer's per-core scaffold: its state, its completion queue and its poller.
//!
//! A layer over other bdevs (dm, md; later the exports' per-connection cores) keeps, per core
//! where its bdev is used, the same three things around its own state: the state behind one
//! `RefCell` that only this core touches, the **completion queue** its requests below come back
//! to (forwarded failures, children, requests of its own), and **one poller** that drains the
//! queue into the state and then runs the state's own step (the splitter's queues, held
//! requests, timers). [`LayerCore`] is that scaffold; the layer implements [`LayerState`] (what
//! a request from above, a request back from below and a poller turn do) and builds its state
//! on the core in [`LayerCore::new`].
//!
//! # Ownership and cores
//!
//! The [`LayerCore`] is the layer's value of its per-core channel (an `IoDevice` channel,
//! usually): it owns the poller, which runs as long as it lives. The state and the queue are
//! shared (`Rc`) with [`LayerHandle`]s — what the layer's bdev backend channel on this core
//! holds to submit, one pointer hop from the bdev channel to the state. Everything is `!Send`
//! and stays on the core that built it. Control-path visits (`for_each_channel` messages)
//! reach the state with [`LayerCore::state`]; they run between poller turns, so the state is
//! never borrowed twice (a nested borrow panics: it would be a bug, not contention).
//!
//! # Cost
//!
//! Nothing allocates after [`LayerCore::new`]. A submit is one `RefCell` borrow and a static
//! call into the layer (the handle is generic over the state: its methods inline into the
//! layer's backend channel); a poller turn is one borrow, the drain, and the state's step.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;

use keel_reactor::{current, PollStatus, PollerHandle};

use crate::{CompletionQueue, IoBox, Submit};

/// What a layer's per-core state does for the scaffold (see the module docs). Called on its
/// core only, with the state borrowed.
pub trait LayerState: 'static {
    /// A request from above (the layer's bdev channel's `submit`); `cq` is the layer's queue,
    /// where whatever it sends below comes back.
    fn submit(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit;

    /// A request back from below, drained from `cq` by the poller.
    fn complete(&mut self, io: IoBox, cq: &CompletionQueue);

    /// The rest of a poller turn, after the queue was drained: what the layer queued itself.
    /// Returns the work done (0: none).
    fn poll(&mut self, cq: &CompletionQueue) -> usize {
        let _ = cq;
        0
    }
}

/// The state and the queue, shared by the core and its handles.
struct Shared<S> {
    st: RefCell<S>,
    cq: CompletionQueue,
}

impl<S: LayerState> Shared<S> {
    /// One poller turn: drain the queue into the state, then the state's own step.
    fn turn(&self) -> usize {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let cq = &self.cq;
        let n = cq.drain_now(|io| st.complete(io, cq));
        n + st.poll(cq)
    }
}

/// A layer's scaffold on one core (module docs): owns the poller.
pub struct LayerCore<S> {
    shared: Rc<Shared<S>>,
    _poller: PollerHandle,
}

/// What a layer's backend channel holds to reach the state on its core: submit and visits.
pub struct LayerHandle<S>(Rc<Shared<S>>);

impl<S> Clone for LayerHandle<S> {
    fn clone(&self) -> LayerHandle<S> {
        LayerHandle(self.0.clone())
    }
}

impl<S: LayerState> LayerCore<S> {
    /// Builds the scaffold on the calling core (a reactor): a completion queue with room for
    /// `cq_capacity` before it first grows, the state from `build` (given the queue, e.g. for
    /// the layer's `ForwardCtx`), and the poller `poller_name` draining the queue into it.
    pub fn new(poller_name: String, cq_capacity: usize, build: impl FnOnce(&CompletionQueue) -> S) -> LayerCore<S> {
        let cq = CompletionQueue::with_capacity(cq_capacity);
        let st = build(&cq);
        let shared = Rc::new(Shared {
            st: RefCell::new(st),
            cq,
        });
        let s2 = shared.clone();
        let poller = current().register_poller(poller_name, move || PollStatus::from_work(s2.turn() > 0));
        LayerCore {
            shared,
            _poller: poller,
        }
    }

    /// A handle for the layer's backend channel on this core.
    pub fn handle(&self) -> LayerHandle<S> {
        LayerHandle(self.shared.clone())
    }

    /// The state, for a control-path visit (on this core, between poller turns).
    pub fn state(&self) -> RefMut<'_, S> {
        self.shared.st.borrow_mut()
    }

    /// The state, unless it is borrowed right now (a `Drop` of the layer's core value that
    /// may run from inside one of the state's own calls).
    pub fn try_state(&self) -> Option<RefMut<'_, S>> {
        self.shared.st.try_borrow_mut().ok()
    }

    /// The layer's completion queue on this core.
    pub fn cq(&self) -> &CompletionQueue {
        &self.shared.cq
    }
}

impl<S: LayerState> LayerHandle<S> {
    /// A request from above: [`LayerState::submit`] with the layer's queue. The bdev channel's
    /// hot path.
    #[inline(always)]
    pub fn submit(&self, io: IoBox) -> Submit {
        let sh = &*self.0;
        sh.st.borrow_mut().submit(io, &sh.cq)
    }

    /// The state (see [`LayerCore::state`]).
    pub fn state(&self) -> RefMut<'_, S> {
        self.0.st.borrow_mut()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use keel_reactor::{CoreId, TestDriver};

    use super::*;
    use crate::{IoOp, IoRequest};

    /// Sends every request "below" by pushing it straight onto its own queue, takes it back
    /// when the poller drains the queue, and retires what came back on its own step.
    struct Echo {
        back: Vec<IoBox>,
        retired: Vec<IoBox>,
        polls: Rc<Cell<usize>>,
    }

    impl LayerState for Echo {
        fn submit(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
            cq.push(io);
            Submit::Accepted
        }

        fn complete(&mut self, io: IoBox, _cq: &CompletionQueue) {
            self.back.push(io);
        }

        fn poll(&mut self, _cq: &CompletionQueue) -> usize {
            self.polls.set(self.polls.get() + 1);
            let n = self.back.len();
            self.retired.append(&mut self.back);
            n
        }
    }

    #[test]
    fn the_poller_drains_the_queue_into_the_state_then_runs_its_step() {
        let d = TestDriver::new(1);
        let polls = Rc::new(Cell::new(0));
        let p2 = polls.clone();
        let core = d.enter(CoreId(0), move || {
            LayerCore::new("echo".into(), 4, move |_| Echo {
                back: Vec::new(),
                retired: Vec::new(),
                polls: p2,
            })
        });
        let h = core.handle();
        d.enter(CoreId(0), || {
            for _ in 0..3 {
                let mut io = IoRequest::new_boxed();
                io.prepare(IoOp::Flush, 0, 0);
                assert!(matches!(h.submit(io), Submit::Accepted));
            }
            assert_eq!((core.state().back.len(), core.cq().len()), (0, 3), "nothing ran yet");
        });
        assert!(d.run_until(1000, || core.try_state().is_some_and(|st| st.retired.len() == 3)));
        assert!(polls.get() >= 1);
        assert!(core.try_state().is_some_and(|st| st.back.is_empty()));
        // A borrowed state is refused, not borrowed twice.
        let held = h.state();
        assert!(core.try_state().is_none());
        drop(held);
        d.enter(CoreId(0), move || drop((h, core)));
    }
}
