//! What handlers work on: the call context ([`Ctx`]), the answer channel ([`Reply`]) and the
//! framework state (STARTUP or RUNTIME, [`Framework`]).
//!
//! A leaf: it uses nothing of the crate but [`RpcError`], so every method file and the registry
//! can depend on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use keel_bdev::BdevRegistry;
use serde_json::{json, Value};

use crate::error::RpcError;
use crate::log_methods::LogControl;

/// What handlers work on. Owned by the application; handlers run on the main reactor.
#[derive(Clone)]
pub struct Ctx {
    pub registry: Arc<BdevRegistry>,
    pub fw: Arc<Framework>,
}

impl Ctx {
    /// A context for a framework that is already running (no STARTUP phase, no kill hook).
    pub fn new(registry: Arc<BdevRegistry>) -> Ctx {
        Ctx {
            registry,
            fw: Framework::running(),
        }
    }
}

/// The answer channel of one call: call it exactly once (on any core).
pub type Reply = Box<dyn FnOnce(Result<Value, RpcError>) + Send>;

/// Asks the application to start its RUNTIME phase; calls the completion when done.
pub type StartInit = Box<dyn FnOnce(Box<dyn FnOnce(Result<(), RpcError>) + Send>) + Send>;

/// What the methods need from the application. Shared (`Arc`) by every handler; created by the
/// application before the first call.
pub struct Framework {
    runtime: AtomicBool,
    start_init: Mutex<Option<StartInit>>,
    init_waiters: Mutex<Vec<Reply>>,
    kill: Box<dyn Fn(&str) + Send + Sync>,
    /// The application's log control, if it gave one (`log_methods.rs`).
    log: OnceLock<LogControl>,
}

impl Framework {
    /// A framework already in RUNTIME (tools that load a config and run: keel-perf, tests).
    pub fn running() -> Arc<Framework> {
        Arc::new(Framework {
            runtime: AtomicBool::new(true),
            start_init: Mutex::new(None),
            init_waiters: Mutex::new(Vec::new()),
            kill: Box::new(|_| {}),
            log: OnceLock::new(),
        })
    }

    /// A framework in STARTUP: `framework_start_init` runs `start_init`, then switches to
    /// RUNTIME. `kill` gets the signal name of `spdk_kill_instance`.
    pub fn starting(start_init: StartInit, kill: Box<dyn Fn(&str) + Send + Sync>) -> Arc<Framework> {
        Arc::new(Framework {
            runtime: AtomicBool::new(false),
            start_init: Mutex::new(Some(start_init)),
            init_waiters: Mutex::new(Vec::new()),
            kill,
            log: OnceLock::new(),
        })
    }

    /// Whether initialisation finished.
    pub fn is_runtime(&self) -> bool {
        self.runtime.load(Ordering::Acquire)
    }

    /// Marks initialisation done and answers `framework_wait_init` callers.
    pub fn set_runtime(&self) {
        self.runtime.store(true, Ordering::Release);
        *self.start_init.lock().unwrap() = None;
        for w in std::mem::take(&mut *self.init_waiters.lock().unwrap()) {
            w(Ok(json!(true)));
        }
    }

    /// Gives the log methods the application's log control. The first call wins (later ones
    /// are ignored). Called once by the application, before serving.
    pub fn set_log_control(&self, control: LogControl) {
        let _ = self.log.set(control);
    }

    /// The application's log control, if it gave one.
    pub(crate) fn log(&self) -> Option<&LogControl> {
        self.log.get()
    }

    /// Runs the kill hook given at construction with a signal name.
    pub fn kill(&self, sig: &str) {
        (self.kill)(sig)
    }

    /// The initialisation to run, once: `None` if it already ran (or is running) or the
    /// framework started in RUNTIME. Called on the main reactor by `framework_start_init`.
    pub(crate) fn take_start_init(&self) -> Option<StartInit> {
        self.start_init.lock().unwrap().take()
    }

    /// Answers `reply` with `true` once initialisation is done (now, if it is). Called on the
    /// main reactor by `framework_wait_init`.
    pub(crate) fn wait_init(&self, reply: Reply) {
        if self.is_runtime() {
            return reply(Ok(json!(true)));
        }
        self.init_waiters.lock().unwrap().push(reply);
    }
}
