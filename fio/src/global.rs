//! The process-wide part of the engine: one set of attached cores, one bdev registry, one
//! configuration load — shared by every fio job thread of the process.
//!
//! fio loads the engine once per job but all jobs of a `thread=1` run live in one process, so
//! they share one Keel instance, as SPDK's plugin shares one SPDK environment. The first job
//! that asks ([`Global::load`], from fio's `setup` callback — or `init` when the job thread does
//! its own setup) creates it under a mutex:
//!
//! 1. [`Cores::attached`] with [`MAX_CORES`] cores and no thread: core [`CONTROL_CORE`] is the
//!    control core, cores `1..` are claimed by fio job threads as they start
//!    ([`Global::attach_job_reactor`]) and released when they end;
//! 2. a [`BdevRegistry`] on those cores;
//! 3. the JSON configuration (`keel_json_conf`) applied through `keel_rpc::config` on a
//!    reactor attached to the control core by a `keel-control` thread, turned until the load
//!    reports (bounded by [`LOAD_TIMEOUT`]). If the load left pollers on the control core (md
//!    arrays' control pollers), the thread keeps turning it for the life of the process,
//!    sleeping when idle; otherwise it detaches and ends.
//!
//! The outcome — success or the load's error message — is remembered: later jobs get the same
//! registry or the same refusal, and a job naming a different config file is refused (one Keel
//! instance per fio process).
//!
//! Without a control thread the control core has no reactor after the load; visits over every
//! core (dm table swaps, bdev removal) pass unattached cores by and wait only for the cores fio
//! job threads hold and turn.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use keel_bdev::BdevRegistry;
use keel_reactor::{AttachedReactor, CoreId, Cores};
use keel_rpc::config::ConfigFile;

/// Cores of the attached set: the control core plus up to 255 concurrently running fio job
/// threads. A mailbox costs a few hundred bytes, and fio's own default job limit is far above
/// what a 2–64 core host runs with a polled engine; more concurrent jobs are refused by name.
pub const MAX_CORES: u32 = 256;
/// How long the control thread sleeps when its reactor had nothing to do.
const CONTROL_IDLE_SLEEP: Duration = Duration::from_micros(200);

/// The core the configuration is loaded on (the registry's main core).
pub const CONTROL_CORE: CoreId = CoreId(0);
/// Longest a configuration load may take (a uring file on a slow disk, big malloc bdevs).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The shared Keel instance: attached cores and the bdev registry. `Send + Sync`; lives until
/// the process exits.
pub struct Global {
    cores: Cores,
    registry: Arc<BdevRegistry>,
    config_path: String,
}

enum State {
    Empty,
    Loaded(Arc<Global>),
    Failed { path: String, message: String },
}

static STATE: Mutex<State> = Mutex::new(State::Empty);

impl Global {
    /// The process's Keel instance, loading `config_path` first if nothing was loaded yet.
    /// Errors (as messages for fio's log): no path given, a config that fails to read, parse or
    /// apply, a different path than the one already loaded, or a load that failed before.
    /// Called from fio's `setup`/`init` on any thread that has no reactor; control path.
    pub fn load(config_path: Option<&str>) -> Result<Arc<Global>, String> {
        let path = config_path.filter(|p| !p.is_empty()).ok_or_else(|| {
            "the keel_json_conf option is not set: name the Keel JSON config that creates the bdevs \
             (keel_json_conf=/path/to/stack.json)"
                .to_string()
        })?;
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            State::Loaded(g) if g.config_path == path => Ok(g.clone()),
            State::Loaded(g) => Err(format!(
                "keel_json_conf={path}: this fio process already loaded {}; all jobs of one fio run share one \
                 Keel instance and must name the same config",
                g.config_path
            )),
            State::Failed { path: p, message } if p == path => Err(message.clone()),
            State::Failed { path: p, .. } => Err(format!(
                "keel_json_conf={path}: not loaded because loading {p} already failed in this fio process"
            )),
            State::Empty => match load_now(path) {
                Ok(g) => {
                    *state = State::Loaded(g.clone());
                    Ok(g)
                }
                Err(message) => {
                    *state = State::Failed {
                        path: path.to_string(),
                        message: message.clone(),
                    };
                    Err(message)
                }
            },
        }
    }

    /// The registry every job opens its bdevs in.
    pub fn registry(&self) -> &Arc<BdevRegistry> {
        &self.registry
    }

    /// The attached cores.
    pub fn cores(&self) -> &Cores {
        &self.cores
    }

    /// The config file this instance was built from.
    pub fn config_path(&self) -> &str {
        &self.config_path
    }

    /// Size in bytes and block size of bdev `name` (name, alias or UUID), or a message naming
    /// the bdev and listing what the config defines. Any thread; control path.
    pub fn bdev_size(&self, name: &str) -> Result<(u64, u32), String> {
        match self.registry.get(name) {
            Some(b) => Ok((b.info().size_bytes(), b.info().block_size)),
            None => {
                let names: Vec<String> = self.registry.list().iter().map(|b| b.name().to_string()).collect();
                Err(format!(
                    "unknown bdev '{name}' in filename=: {} defines {}",
                    self.config_path,
                    if names.is_empty() {
                        "no bdevs".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            }
        }
    }

    /// Names of the bdevs nothing else claims (what `filename=*` expands to), in registration
    /// order.
    pub fn leaf_bdevs(&self) -> Vec<String> {
        self.registry
            .list()
            .iter()
            .filter(|b| b.claimed_by().is_none())
            .map(|b| b.name().to_string())
            .collect()
    }

    /// Attaches a reactor for the calling fio job thread on the first free core after the
    /// control core. Called from fio's `init` on the job thread.
    pub fn attach_job_reactor(&self) -> Result<AttachedReactor, String> {
        AttachedReactor::attach_first_free(&self.cores, CoreId(CONTROL_CORE.0 + 1)).map_err(|e| {
            format!(
                "cannot give this fio job its own reactor: {e} (at most {} jobs may run at once)",
                MAX_CORES - 1
            )
        })
    }
}

/// Message prefix naming the file.
fn in_file(path: &str) -> String {
    format!("keel_json_conf={path}")
}

fn load_now(path: &str) -> Result<Arc<Global>, String> {
    let cfg = ConfigFile::from_path(Path::new(path)).map_err(|e| format!("{}: {}", in_file(path), e.message))?;
    let cores = Cores::attached(MAX_CORES);
    let registry = BdevRegistry::new(cores.clone());
    // The load runs on a control thread that owns the control core's reactor. When the load
    // leaves pollers there (md arrays' control pollers: dirty marking, bitmap, resync), that
    // thread keeps turning the control reactor for the life of the process, sleeping while it
    // is idle; otherwise it detaches and ends, and the process has no Keel thread.
    let (tx, rx) = mpsc::channel();
    let (cores2, registry2, path2) = (cores.clone(), registry.clone(), path.to_string());
    std::thread::Builder::new()
        .name("keel-control".into())
        .spawn(move || control_thread(cores2, registry2, cfg, path2, tx))
        .map_err(|e| format!("{}: cannot start the control thread: {e}", in_file(path)))?;
    let outcome = rx
        .recv()
        .unwrap_or_else(|_| Err(format!("{}: the load ended without reporting", in_file(path))));
    outcome?;
    Ok(Arc::new(Global {
        cores,
        registry,
        config_path: path.to_string(),
    }))
}

/// The control thread: loads the configuration on the control core, reports, then keeps the
/// control reactor turning while it has pollers (see [`load_now`]).
fn control_thread(
    cores: Cores,
    registry: Arc<BdevRegistry>,
    cfg: ConfigFile,
    path: String,
    report: mpsc::Sender<Result<(), String>>,
) {
    let control = match AttachedReactor::attach(&cores, CONTROL_CORE) {
        Ok(c) => c,
        Err(e) => {
            let _ = report.send(Err(format!("{}: cannot attach the control core: {e}", in_file(&path))));
            return;
        }
    };
    let (tx, rx) = mpsc::channel();
    keel_rpc::config::apply(registry, cfg, move |r| {
        let _ = tx.send(r);
    });
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let outcome = loop {
        control.turn();
        match rx.try_recv() {
            Ok(r) => break r.map_err(|e| format!("{}: {}", in_file(&path), e.message)),
            Err(mpsc::TryRecvError::Disconnected) => {
                break Err(format!("{}: the load ended without reporting", in_file(&path)))
            }
            Err(mpsc::TryRecvError::Empty) if Instant::now() > deadline => {
                break Err(format!(
                    "{}: the load did not finish within {} s (a config method waited for \
                     something no thread drives)",
                    in_file(&path),
                    LOAD_TIMEOUT.as_secs()
                ))
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
    };
    // Let follow-up messages of the load (e.g. examine) run before reporting.
    for _ in 0..1000 {
        if !control.turn() {
            break;
        }
    }
    let ok = outcome.is_ok();
    let _ = report.send(outcome);
    if !ok || control.reactor().poller_count() == 0 {
        return;
    }
    loop {
        if !control.turn() {
            std::thread::sleep(CONTROL_IDLE_SLEEP);
        }
    }
}
