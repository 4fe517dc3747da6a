//! Waiting on the main reactor without blocking it: [`retry_every`]. A leaf.

use std::cell::RefCell;
use std::rc::Rc;

use keel_reactor::{current, PollStatus, PollerHandle};

/// Runs `attempt` every `period_us` on this core (a timed poller named `name`) until it
/// returns true, then drops the poller. Called on a reactor; `attempt` runs there.
pub(crate) fn retry_every(name: &'static str, period_us: u64, mut attempt: impl FnMut() -> bool + 'static) {
    let handle: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
    let h2 = handle.clone();
    let h = current().register_timed_poller(name, period_us, move || {
        if !attempt() {
            return PollStatus::Idle;
        }
        h2.borrow_mut().take();
        PollStatus::Busy
    });
    *handle.borrow_mut() = Some(h);
}
