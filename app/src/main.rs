//! `keel-tgt`: the long-running Keel target.
//!
//! Starts one reactor per core of `-m`, loads a JSON config (`-c`), and serves SPDK-compatible
//! JSON-RPC on a Unix socket (`-r`, default `/var/tmp/spdk.sock`, so `spdk-rpc` with no `-s`
//! reaches it). With `--wait-for-rpc` it stays in STARTUP until `framework_start_init`.
//! SIGINT/SIGTERM and `spdk_kill_instance` shut it down cleanly: the RPC socket goes away first,
//! then the bdev modules stop (`BdevRegistry::fini_modules`: consumers first — exports, then dm,
//! then md, whose arrays write their final superblocks), then the bdevs are removed topmost
//! first, and every reactor drains and exits.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_bdev::BdevRegistry;
use keel_reactor::{CoreMask, Runtime};
use keel_rpc::config::{apply_with, ConfigFile};
use keel_rpc::server::{Dispatch, RpcServer, ServerOpts};
use keel_rpc::{call_method, find_method, Ctx, Framework, RpcError};

/// Counting allocations per thread (keel_get_pollers reports each reactor's): how a test proves,
/// in this very process, that a reactor serving an export does not allocate per I/O.
#[global_allocator]
static ALLOC: keel_reactor::CountingAlloc = keel_reactor::CountingAlloc;

#[derive(Parser, Debug)]
#[command(name = "keel-tgt", version, about = "Keel storage target (SPDK-compatible JSON-RPC)")]
struct Args {
    /// Core mask: hex (0x3) or list ([0,2-3]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// JSON configuration file (SPDK format) to load at start.
    #[arg(short = 'c', long = "config", alias = "json")]
    config: Option<PathBuf>,
    /// RPC listen socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/spdk.sock")]
    rpc_socket: PathBuf,
    /// Permission bits of the RPC socket, octal.
    #[arg(long = "rpc-socket-mode", default_value = "600", value_parser = parse_mode)]
    rpc_socket_mode: u32,
    /// Close an RPC connection that receives nothing for this many seconds while none of its
    /// calls runs (0 = never), so idle clients cannot hold every connection slot.
    #[arg(long = "rpc-idle-timeout", value_name = "SECS", default_value_t = keel_rpc::server::DEFAULT_IDLE_TIMEOUT.as_secs())]
    rpc_idle_timeout: u64,
    /// Stay in STARTUP until the framework_start_init RPC.
    #[arg(long = "wait-for-rpc")]
    wait_for_rpc: bool,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides; the last -L wins).
    #[arg(
        short = 'L',
        long = "log-level",
        default_value = "info",
        overrides_with = "log_level"
    )]
    log_level: String,
    /// Do not pin reactor threads to their cores.
    #[arg(long = "no-pin")]
    no_pin: bool,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not an octal permission mode"))
}

/// Why the main thread wakes up.
enum Event {
    Ready(Result<(), RpcError>),
    Shutdown(String),
}

fn main() -> ExitCode {
    let args = Args::parse();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    // Reloadable, so the log_* methods can change it at run time (keel_rpc::log_methods).
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let initial = keel_rpc::log_methods::SpdkLevel::from_tracing(&args.log_level)
        .unwrap_or(keel_rpc::log_methods::SpdkLevel::Notice);
    let log = keel_rpc::log_methods::LogControl::new(
        initial,
        Box::new(move |directive| {
            let f = tracing_subscriber::EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
            reload.reload(f).map_err(|e| e.to_string())
        }),
    );
    match run(args, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-tgt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, log: keel_rpc::log_methods::LogControl) -> Result<(), String> {
    let started = Instant::now();
    let mask = CoreMask::parse(&args.cpumask).map_err(|e| e.to_string())?;
    let config = match &args.config {
        Some(p) => Some(ConfigFile::from_path(p).map_err(|e| e.message)?),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Event>();
    let runtime = Runtime::start(&mask, !args.no_pin, || {}).map_err(|e| e.to_string())?;
    let cores = runtime.cores();
    let registry = BdevRegistry::new(cores.clone());
    // The bdev modules behind the served subsystems (dm), registered before anything uses them.
    keel_rpc::load_modules(&registry);
    // md's module (arrays stop at shutdown); members that appear (config, RPC) are examined and
    // their arrays assemble by themselves.
    keel_rpc::md_methods::enable_md_auto_assembly(&registry);
    // The NBD server's subsystem is listed by save_config even before its first export.
    keel_rpc::nbd_methods::load(&registry);

    // Config: entries allowed in STARTUP first, then (after init) the RUNTIME ones, as SPDK's
    // application loader does.
    let (startup_calls, runtime_calls) = match config {
        Some(cfg) => {
            let (s, r): (Vec<_>, Vec<_>) = cfg
                .calls
                .into_iter()
                .partition(|c| find_method(&c.method).is_some_and(|m| m.phase.in_startup()));
            (
                ConfigFile {
                    calls: s,
                    skipped_subsystems: cfg.skipped_subsystems,
                },
                ConfigFile {
                    calls: r,
                    skipped_subsystems: Vec::new(),
                },
            )
        }
        None => (ConfigFile::default(), ConfigFile::default()),
    };
    let kill_tx = tx.clone();
    let reg2 = registry.clone();
    let start_init: keel_rpc::StartInit = Box::new(move |done| {
        apply_with(Ctx::new(reg2), runtime_calls, done);
    });
    let fw = Framework::starting(
        start_init,
        Box::new(move |sig| {
            if sig == "SIGKILL" {
                let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
            }
            let _ = kill_tx.send(Event::Shutdown(format!("spdk_kill_instance {sig}")));
        }),
    );
    fw.set_log_control(log);
    let ctx = Ctx {
        registry: registry.clone(),
        fw: fw.clone(),
    };

    let main_core = cores.main_core();
    let dispatch: Dispatch = {
        let ctx = ctx.clone();
        let cores = cores.clone();
        Arc::new(move |req, reply| {
            let ctx = ctx.clone();
            let method = req.method;
            let params = req.params;
            // The closure holds `reply`; if the core is gone, dropping it answers "internal".
            let _ = cores.run_on(main_core, move || call_method(&ctx, &method, params, reply));
        })
    };

    // Startup pass, then (unless --wait-for-rpc) initialisation with the runtime pass.
    {
        let tx = tx.clone();
        let ctx = ctx.clone();
        let wait = args.wait_for_rpc;
        cores
            .run_on(main_core, move || {
                let ctx2 = ctx.clone();
                apply_with(ctx, startup_calls, move |r| {
                    if r.is_err() || wait {
                        let _ = tx.send(Event::Ready(r));
                        return;
                    }
                    call_method(
                        &ctx2,
                        "framework_start_init",
                        None,
                        Box::new(move |r| {
                            let _ = tx.send(Event::Ready(r.map(|_| ())));
                        }),
                    );
                });
            })
            .map_err(|e| e.to_string())?;
    }
    let mut server = None;
    let mut outcome = Ok(());
    match rx.recv() {
        Ok(Event::Ready(Ok(()))) => {
            match RpcServer::start(
                &ServerOpts {
                    path: args.rpc_socket.clone(),
                    mode: args.rpc_socket_mode,
                    idle_timeout: (args.rpc_idle_timeout > 0).then(|| Duration::from_secs(args.rpc_idle_timeout)),
                },
                dispatch,
            ) {
                Ok(s) => server = Some(s),
                Err(e) => outcome = Err(e.message),
            }
        }
        Ok(Event::Ready(Err(e))) => outcome = Err(format!("configuration failed: {}", e.message)),
        Ok(Event::Shutdown(why)) => outcome = Err(format!("shut down during start: {why}")),
        Err(_) => outcome = Err("reactors exited during start".into()),
    }
    if outcome.is_ok() {
        tracing::info!(
            socket = %args.rpc_socket.display(),
            cores = %args.cpumask,
            startup_ms = started.elapsed().as_millis() as u64,
            state = if fw.is_runtime() { "runtime" } else { "startup (waiting for framework_start_init)" },
            "keel-tgt ready"
        );
        let sig_tx = tx.clone();
        let mut signals =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
                .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _ = sig_tx.send(Event::Shutdown(format!("signal {sig}")));
            }
        });
        loop {
            match rx.recv() {
                Ok(Event::Shutdown(why)) => {
                    tracing::info!(reason = %why, "shutting down");
                    break;
                }
                Ok(Event::Ready(_)) => continue,
                Err(_) => break,
            }
        }
    }
    if let Some(s) = server {
        s.stop();
    }
    // Stop the modules, then remove the bdevs, dependents first, so every layer lets go of its
    // base and every channel and poller is released on its own core before the reactors stop.
    drop(ctx);
    let (done_tx, done_rx) = mpsc::channel();
    let _ = cores.run_on(main_core, move || {
        let reg2 = registry.clone();
        // Consumers before providers: the latest subsystem first (exports, then dm, which runs
        // nothing to stop), then the "bdev" modules, latest created first — md's daemons write
        // the final (clean) superblocks while the members, dm devices among them, are still
        // there.
        registry.fini_modules(move || remove_all(reg2, done_tx));
    });
    if done_rx.recv_timeout(std::time::Duration::from_secs(10)).is_err() {
        tracing::warn!("bdev removal did not finish in 10 s; stopping anyway");
    }
    cores.request_stop();
    runtime.wait();
    outcome
}

/// Unregisters the most recently registered bdev, then the next, until none is left.
fn remove_all(registry: Arc<BdevRegistry>, done: mpsc::Sender<()>) {
    let Some(last) = registry.list().pop() else {
        let _ = done.send(());
        return;
    };
    let reg2 = registry.clone();
    let name = last.name().to_string();
    let main = registry.cores().main_core();
    let cores = registry.cores().clone();
    let d2 = done.clone();
    if registry
        .unregister(&name, move || {
            let _ = cores.run_on(main, move || remove_all(reg2, d2));
        })
        .is_err()
    {
        // Already gone (a layer removed itself when its base went): carry on.
        remove_all(registry, done);
    }
}
