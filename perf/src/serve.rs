//! `-z`: bdevperf's RPC-driven mode (`shared/specs/bdevperf.md` §4).
//!
//! keel-perf sets up its reactors and bdevs as for a run ([`Session::start`]), then serves
//! JSON-RPC on `-r SOCKET` (default `/var/tmp/spdk.sock`, as bdevperf) until SIGINT or SIGTERM.
//! Every Keel method is served (as bdevperf serves SPDK's: a script may create bdevs, set QoS
//! limits or enable histograms first), plus `perform_tests`: it starts one run with the
//! command line's parameters, overridden by the call's `time_in_sec`, `workload_type`,
//! `queue_depth`, `io_size` and `rw_percentage` (the overrides stay for later calls, as
//! bdevperf's), and answers when the run ends with bdevperf's result object
//! (`{"results": [...], "core_count": N}`, [`report::json_report`]). The console report is
//! printed as well.
//!
//! Refusals as bdevperf's: a `perform_tests` while one runs is -32603 "Unknown error -115"
//! (bdevperf's strerror text of -EINPROGRESS); parameters that do not make a run are -32700
//! "Invalid parameters provided"; no bdev to run on is -32602 "No jobs defined or bdevs
//! created".
//!
//! Threads: the RPC server's connection threads hand `perform_tests` to the calling thread of
//! [`serve`] (the orchestrator, which runs the jobs as [`crate::run()`] does) and every other method
//! to the main reactor.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use keel_rpc::server::{Dispatch, RpcServer, ServerOpts};
use keel_rpc::{call_method, Ctx, RpcError, INTERNAL_ERROR, INVALID_PARAMS, PARSE_ERROR};
use serde_json::Value;

use crate::report;
use crate::run::{check_options, run_jobs, RunOptions, Session};
use crate::{PerfError, Workload};

/// bdevperf's default RPC socket with `-z`.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/spdk.sock";

/// A `perform_tests` call waiting for the orchestrator.
struct Perform {
    params: Option<Value>,
    reply: Box<dyn FnOnce(Result<Value, RpcError>) + Send>,
}

/// Applies `perform_tests` overrides to `opts` (lenient: unknown keys are ignored, as bdevperf
/// decodes them). `Err` when a value does not make a run.
fn apply_overrides(opts: &mut RunOptions, params: &Option<Value>) -> Result<(), PerfError> {
    let Some(p) = params else {
        return Ok(());
    };
    let Some(p) = p.as_object() else {
        return Err(PerfError::invalid("params", "not an object"));
    };
    let saved = (
        opts.run_time_secs,
        opts.queue_depth,
        opts.rw_read_percent,
        opts.io_size_bytes,
        opts.workload,
    );
    let applied = apply_each(opts, p).and_then(|()| check_options(opts));
    if applied.is_err() {
        (
            opts.run_time_secs,
            opts.queue_depth,
            opts.rw_read_percent,
            opts.io_size_bytes,
            opts.workload,
        ) = saved;
    }
    applied
}

/// Sets each override given in `p` on `opts`.
fn apply_each(opts: &mut RunOptions, p: &serde_json::Map<String, Value>) -> Result<(), PerfError> {
    let uint = |key: &'static str| -> Result<Option<u64>, PerfError> {
        match p.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| PerfError::invalid(key, format!("{v} is not a non-negative integer"))),
        }
    };
    if let Some(t) = uint("time_in_sec")? {
        opts.run_time_secs = t;
    }
    if let Some(q) = uint("queue_depth")? {
        opts.queue_depth = u32::try_from(q).map_err(|_| PerfError::invalid("queue_depth", "too large"))?;
    }
    if let Some(m) = uint("rw_percentage")? {
        opts.rw_read_percent = u8::try_from(m).map_err(|_| PerfError::invalid("rw_percentage", "above 100"))?;
    }
    match p.get("io_size") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => opts.io_size_bytes = crate::parse_size(s)?,
        Some(Value::Number(n)) => opts.io_size_bytes = crate::parse_size(&n.to_string())?,
        Some(v) => return Err(PerfError::invalid("io_size", format!("{v} is not a size"))),
    }
    match p.get("workload_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(w)) => opts.workload = Workload::parse(w)?,
        Some(v) => return Err(PerfError::invalid("workload_type", format!("{v} is not a workload"))),
    }
    Ok(())
}

/// Serves RPC until `stop` is set (the binary sets it on SIGINT/SIGTERM); see the module docs.
/// Errors only when the setup or the socket fails. Called on a thread that is not a reactor.
pub fn serve(
    mut opts: RunOptions,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), PerfError> {
    check_options(&opts)?;
    let session = Session::start(&mut opts)?;
    let ctx = Ctx::new(session.reg.clone());
    let (tx, rx) = mpsc::channel::<Perform>();
    let busy = Arc::new(AtomicBool::new(false));
    let dispatch: Dispatch = {
        let cores = session.cores.clone();
        let busy = busy.clone();
        let tx = std::sync::Mutex::new(tx);
        Arc::new(move |req, reply| {
            if req.method == "perform_tests" {
                if busy.swap(true, Ordering::AcqRel) {
                    return reply(Err(RpcError::new(INTERNAL_ERROR, "Unknown error -115")));
                }
                let sent = tx.lock().unwrap_or_else(|e| e.into_inner()).send(Perform {
                    params: req.params,
                    reply,
                });
                if let Err(mpsc::SendError(p)) = sent {
                    busy.store(false, Ordering::Release);
                    (p.reply)(Err(RpcError::new(INTERNAL_ERROR, "keel-perf is shutting down")));
                }
                return;
            }
            let ctx = ctx.clone();
            let (method, params) = (req.method, req.params);
            let _ = cores.run_on(cores.main_core(), move || call_method(&ctx, &method, params, reply));
        })
    };
    let server = RpcServer::start(&ServerOpts::new(&socket), dispatch).map_err(|e| PerfError::Config(e.message))?;
    writeln!(err, "keel-perf: waiting for perform_tests on {}", socket.display()).ok();
    while !stop.load(Ordering::Acquire) {
        let Ok(call) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let answer = match apply_overrides(&mut opts, &call.params) {
            Err(e) => {
                writeln!(err, "keel-perf: perform_tests: {e}").ok();
                Err(RpcError::new(PARSE_ERROR, "Invalid parameters provided"))
            }
            Ok(()) => match run_jobs(&opts, &session, out, err) {
                Ok(summary) => Ok(report::json_report(&summary.results)),
                Err(PerfError::NoJobs) => Err(RpcError::new(INVALID_PARAMS, "No jobs defined or bdevs created")),
                Err(e) => Err(RpcError::new(INTERNAL_ERROR, e.to_string())),
            },
        };
        out.flush().ok();
        busy.store(false, Ordering::Release);
        (call.reply)(answer);
    }
    server.stop();
    Ok(())
}
