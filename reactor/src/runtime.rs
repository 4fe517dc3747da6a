use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::reactor::set_current;
use crate::{CoreId, CoreMask, Cores, Reactor, ReactorError};

/// Reactors on pinned OS threads, one per core of a mask.
pub struct Runtime {
    cores: Cores,
    threads: Vec<JoinHandle<()>>,
}

/// After a stop request a reactor waits this long for its pollers to unregister (in-flight I/O
/// to drain) before it exits anyway and logs what was left.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Runtime {
    /// Starts one reactor thread per core of `mask`, pinned to that core when `pin` is set (a
    /// core the machine does not have is an error then). `init` runs first thing on the main
    /// (lowest) core. Call from a non-reactor thread.
    pub fn start(mask: &CoreMask, pin: bool, init: impl FnOnce() + Send + 'static) -> Result<Runtime, ReactorError> {
        if pin {
            let avail: Vec<usize> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect();
            for c in mask.cores() {
                if !avail.contains(&(c.0 as usize)) {
                    return Err(ReactorError::Spawn {
                        core: *c,
                        reason: format!("this machine has cores {avail:?}"),
                    });
                }
            }
        }
        let cores = Cores::new(mask.cores());
        cores.run_on(cores.main_core(), init)?;
        let mut threads = Vec::new();
        for &core in mask.cores() {
            let c = cores.clone();
            let t = std::thread::Builder::new()
                .name(format!("reactor_{}", core.0))
                .spawn(move || run_reactor(core, c, pin))
                .map_err(|e| ReactorError::Spawn {
                    core,
                    reason: e.to_string(),
                })?;
            threads.push(t);
        }
        Ok(Runtime { cores, threads })
    }

    /// Handle to the reactors.
    pub fn cores(&self) -> Cores {
        self.cores.clone()
    }

    /// Blocks until every reactor has exited (after [`Cores::request_stop`]). A reactor that
    /// panicked is logged; [`Runtime::join`] reports it instead.
    pub fn wait(self) {
        if let Err(e) = self.join() {
            tracing::error!(error = %e, "a reactor panicked");
        }
    }

    /// As [`Runtime::wait`], and says whether every reactor exited normally: `Err` names the
    /// reactors that panicked.
    pub fn join(self) -> Result<(), String> {
        let mut panicked = Vec::new();
        for (i, t) in self.threads.into_iter().enumerate() {
            if t.join().is_err() {
                panicked.push(format!("reactor thread {i}"));
            }
        }
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(format!("{} panicked", panicked.join(", ")))
        }
    }
}

fn thread_id() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn run_reactor(core: CoreId, cores: Cores, pin: bool) {
    if pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: core.0 as usize });
    }
    let mb = cores.mailbox(core).expect("mailbox for own core");
    let _ = mb.thread.set(std::thread::current());
    mb.stats.tid.store(thread_id(), Ordering::Relaxed);
    let reactor: Rc<Reactor> = Reactor::new(core, cores.clone());
    set_current(Some(reactor.clone()));
    let mut stop_deadline: Option<Instant> = None;
    loop {
        let busy = reactor.turn();
        if reactor.shutdown_started() {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
            if reactor.poller_count() == 0 && mb.queue.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    core = core.0,
                    pollers = reactor.poller_count(),
                    "reactor exits with work left"
                );
                break;
            }
        }
        if !busy {
            if let Some(us) = reactor.park_hint() {
                mb.parked.store(true, Ordering::Release);
                if mb.queue.is_empty() && !cores.is_stopping() {
                    std::thread::park_timeout(Duration::from_micros(us));
                }
                mb.parked.store(false, Ordering::Release);
            }
        }
    }
    // Channels and pollers die here, on their core.
    reactor.drop_channels();
    set_current(None);
}
