use std::any::Any;
use std::marker::PhantomData;
use std::ops::Deref;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{current, try_current, CoreId, Cores};

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

type Factory<T> = dyn Fn(CoreId, &Weak<T>) -> T + Send + Sync;

/// Something that needs per-core state. Each core that calls [`IoDevice::get_channel`] gets its
/// own channel `T`, built on that core by the device's factory and shared by every user on that
/// core; the channel is destroyed (on its core) when the last [`IoChannel`] handle drops.
///
/// `IoDevice` is `Send + Sync` and cheap to clone; the channels are not.
pub struct IoDevice<T: 'static> {
    id: u64,
    name: Arc<str>,
    factory: Arc<Factory<T>>,
    _t: PhantomData<fn() -> T>,
}

impl<T: 'static> Clone for IoDevice<T> {
    fn clone(&self) -> Self {
        IoDevice {
            id: self.id,
            name: self.name.clone(),
            factory: self.factory.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: 'static> IoDevice<T> {
    /// A new device whose channels `factory` builds (called on the core that asks, with that
    /// core's id). Callable on any thread.
    pub fn new(name: impl Into<String>, factory: impl Fn(CoreId) -> T + Send + Sync + 'static) -> Self {
        IoDevice::new_cyclic(name, move |core, _| factory(core))
    }

    /// Like [`IoDevice::new`], with the factory also given a `Weak` to the channel it builds
    /// (for parts of the channel that must reach it later; it cannot be upgraded during the
    /// factory call).
    pub fn new_cyclic(
        name: impl Into<String>,
        factory: impl Fn(CoreId, &Weak<T>) -> T + Send + Sync + 'static,
    ) -> Self {
        IoDevice {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(name.into()),
            factory: Arc::new(factory),
            _t: PhantomData,
        }
    }

    /// The device's name (for logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This core's channel, created on first use. Called on a reactor core.
    pub fn get_channel(&self) -> IoChannel<T> {
        let reactor = current();
        if let Some(ch) = self.lookup_on(&reactor) {
            return ch;
        }
        let core = reactor.core();
        let chan: Rc<T> = Rc::new_cyclic(|weak| (self.factory)(core, weak));
        reactor
            .channels
            .borrow_mut()
            .insert(self.id, chan.clone() as Rc<dyn Any>);
        IoChannel {
            chan,
            device_id: self.id,
        }
    }

    /// This core's channel if one exists (no creation). Called on a reactor core.
    pub fn existing_channel(&self) -> Option<IoChannel<T>> {
        try_current().and_then(|r| self.lookup_on(&r))
    }

    fn lookup_on(&self, reactor: &crate::Reactor) -> Option<IoChannel<T>> {
        let any = reactor.channels.borrow().get(&self.id).cloned()?;
        let chan = any.downcast::<T>().ok()?;
        Some(IoChannel {
            chan,
            device_id: self.id,
        })
    }

    /// Visits every existing channel, each on its own core, one core after another in mask
    /// order, then runs `done` on the core that called this. Called on a reactor core; returns
    /// at once, the visits happen later.
    pub fn for_each_channel(&self, visit: impl Fn(&T) + Send + Sync + 'static, done: impl FnOnce() + Send + 'static) {
        let reactor = current();
        let origin = reactor.core();
        let cores = reactor.cores().clone();
        let visit: Arc<dyn Fn(&T) + Send + Sync> = Arc::new(visit);
        let dev = self.clone();
        cores.for_each_core(
            move || {
                if let Some(ch) = dev.existing_channel() {
                    visit(&ch);
                }
            },
            origin,
            done,
        );
    }
}

impl Cores {
    /// Runs `visit` on every core in mask order (each after the previous finished), then `done`
    /// on `origin`. Externally driven cores that no thread has attached are passed by (they have
    /// no reactor, hence no channels). Returns at once.
    pub fn for_each_core(
        &self,
        visit: impl Fn() + Send + Sync + 'static,
        origin: CoreId,
        done: impl FnOnce() + Send + 'static,
    ) {
        fn step(
            cores: Cores,
            idx: usize,
            visit: Arc<dyn Fn() + Send + Sync>,
            origin: CoreId,
            done: Box<dyn FnOnce() + Send>,
        ) {
            let ids = cores.core_ids();
            // Externally driven cores that nobody attached have no reactor and no channels.
            let mut idx = idx;
            while idx < ids.len() && !cores.is_live(ids[idx]) {
                idx += 1;
            }
            if idx >= ids.len() {
                // If origin vanished (shutdown), the completion is dropped with the queue.
                let _ = cores.send(origin, done);
                return;
            }
            let c2 = cores.clone();
            let _ = cores.send(
                ids[idx],
                Box::new(move || {
                    visit();
                    step(c2, idx + 1, visit, origin, done);
                }),
            );
        }
        step(self.clone(), 0, Arc::new(visit), origin, Box::new(done));
    }
}

/// A handle to this core's channel of an [`IoDevice`]; derefs to the channel. `!Send`.
pub struct IoChannel<T: 'static> {
    chan: Rc<T>,
    device_id: u64,
}

impl<T: 'static> Clone for IoChannel<T> {
    fn clone(&self) -> Self {
        IoChannel {
            chan: self.chan.clone(),
            device_id: self.device_id,
        }
    }
}

impl<T: 'static> Deref for IoChannel<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.chan
    }
}

impl<T: 'static> IoChannel<T> {
    /// The shared channel itself.
    pub fn rc(&self) -> &Rc<T> {
        &self.chan
    }
}

impl<T: 'static> Drop for IoChannel<T> {
    fn drop(&mut self) {
        // The reactor's map holds one reference; when ours is the only other, the channel dies.
        if Rc::strong_count(&self.chan) == 2 {
            if let Some(r) = try_current() {
                let removed = r.channels.borrow_mut().remove(&self.device_id);
                drop(removed); // drop after the map borrow ends: channel drops may touch the map
            }
        }
    }
}
