//! Per-core polled event loops.
//!
//! Keel runs one [`Reactor`] per core of its core mask. A reactor never blocks while it has
//! work: each turn of its loop it
//!
//! 1. drains its message queue (closures sent by other cores through [`Cores::send`]),
//! 2. runs every active poller once,
//! 3. runs the timed pollers whose period has elapsed,
//! 4. accounts the turn as busy or idle in ticks (see [`ticks`]).
//!
//! Pollers return [`PollStatus::Busy`] when they did work and [`PollStatus::Idle`] when they
//! found none; those answers feed the busy/idle statistics and the idle back-off (a reactor that
//! has been idle for a while parks its thread for a short time and is woken by the next message).
//!
//! # Ownership
//!
//! Everything a reactor owns is `!Send` (`Rc`, `RefCell`): state lives on exactly one core and
//! other cores reach it only by message. [`Cores`] is the one `Send + Sync` handle: it addresses
//! reactors by [`CoreId`] and carries messages to them over lock-free queues.
//!
//! # Io devices
//!
//! An [`IoDevice`] is anything that needs per-core state: each core that uses it gets its own
//! channel, created lazily by the device's factory on that core ([`IoDevice::get_channel`]).
//! [`IoDevice::for_each_channel`] visits every existing channel on its own core, one core after
//! the other, and then runs a completion on the core that started it: the only way
//! configuration reaches the data path.
//!
//! # Drivers
//!
//! [`Runtime`] starts one pinned OS thread per core. [`TestDriver`] runs any number of reactors
//! on the calling thread in a fixed round-robin order, so logic tests are deterministic and need
//! no threads. [`AttachedReactor`] binds a reactor to a thread the host owns (fio's job threads)
//! and lets that thread turn it; [`Cores::attached`] addresses a set of them.
#![deny(unsafe_code)]

mod alloc_count;
mod attached;
mod cpumask;
mod error;
mod heap;
mod io_device;
mod poller;
mod reactor;
mod runtime;
mod test_driver;
mod tsc;

pub use alloc_count::{allocations, thread_allocations, CountingAlloc};
pub use attached::AttachedReactor;
pub use cpumask::CoreMask;
pub use error::ReactorError;
pub use heap::release_free_heap;
pub use io_device::{IoChannel, IoDevice};
pub use poller::{PollStatus, PollerHandle, PollerStats};
pub use reactor::{current, try_current, CoreId, Cores, Message, Reactor, ReactorStats};
pub use runtime::Runtime;
pub use test_driver::TestDriver;
pub use tsc::{ticks, ticks_per_sec, ticks_to_us};
