//! The orchestrator: one benchmark run on real reactor threads.
//!
//! [`run`] is called on a plain thread (the binary's main thread). Steps 1-3 are a
//! [`Session`] (kept by `-z` for every `perform_tests`, `serve.rs`), steps 4-8 [`run_jobs`]. It
//!
//! 1. parses the JSON configuration (before anything starts, so a malformed file fails fast),
//! 2. starts one reactor per core of the mask ([`Runtime::start`], pinned unless told not to),
//! 3. creates the bdevs on the main core — from the configuration file, the embedded default
//!    stack, or a caller's setup function — and waits for that by `mpsc` channel,
//! 4. picks the target bdevs (`-T NAME`, else every leaf bdev, i.e. not claimed) and builds the
//!    jobs: one per bdev, assigned to cores round-robin over the mask, or with `-C` one per
//!    core per bdev, each on an equal contiguous slice,
//! 5. waits until malloc bdevs finished allocating their memory in the background
//!    ([`keel_bdev::modules::malloc::wait_settled`]), then with `--prefill` first writes every
//!    target once from start to end ([`prefill`]),
//! 6. sends each job to its core by message, where the job opens its descriptor and starts
//!    ([`keel_load::Job::start_with`]); results come back over the `mpsc` channel (control path),
//! 7. meanwhile prints the one-line progress display each second (only when asked to: the binary
//!    asks when stdout is a terminal) or, with `-S`, a full periodic report,
//! 8. prints the report (text or JSON) and miscompares / end reasons on the error stream, asks
//!    the reactors to stop and waits for them. Jobs have dropped their descriptors, channels and
//!    pollers on their own cores by then, so every reactor exits promptly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::{malloc, null};
use keel_bdev::BdevRegistry;
use keel_reactor::{CoreId, CoreMask, Cores, Runtime};
use keel_rpc::config::ConfigFile;

use keel_load::{Job, JobProgress, JobResult, JobSpec, JobStatus, Workload};

use crate::report::{self, JobLabel, LiveJob};
use crate::PerfError;

/// Name, size and block size of the embedded default stack's null bdev (1 GiB of 4 KiB blocks).
pub const DEFAULT_NULL: (&str, u64, u32) = ("Null0", (1 << 30) / 4096, 4096);
/// Name, size and block size of the embedded default stack's malloc bdev (128 MiB of 4 KiB).
pub const DEFAULT_MALLOC: (&str, u64, u32) = ("Malloc0", (128 << 20) / 4096, 4096);

/// After the run time, how long the orchestrator waits for jobs to drain before it asks them to
/// stop (a bdev that never completes would otherwise hang the run).
const DRAIN_GRACE: Duration = Duration::from_secs(20);
/// After asking stuck jobs to stop, how long it waits before giving up on them.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long bdev creation on the main core may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// I/O size and queue depth of the `--prefill` pass: large sequential writes, a few in flight.
const PREFILL_IO_BYTES: u64 = 128 << 10;
const PREFILL_QUEUE_DEPTH: u32 = 8;
/// How long the `--prefill` pass may take in all.
const PREFILL_TIMEOUT: Duration = Duration::from_secs(600);

/// A caller-supplied bdev setup, run on the main reactor core.
pub type SetupFn = Box<dyn FnOnce(&Arc<BdevRegistry>) -> Result<(), PerfError> + Send>;

/// Where the bdevs come from.
pub enum BdevSetup {
    /// The embedded default stack: [`DEFAULT_NULL`] and [`DEFAULT_MALLOC`].
    Default,
    /// An SPDK-format JSON configuration file (`--json` / `-c`).
    ConfigFile(PathBuf),
    /// Code (tests, embedding applications).
    Custom(SetupFn),
}

/// Output format of the final report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// Everything a run needs, validated (the CLI builds it; tests may too).
pub struct RunOptions {
    pub workload: Workload,
    pub queue_depth: u32,
    pub io_size_bytes: u64,
    pub run_time_secs: u64,
    /// Read percentage for rw/randrw.
    pub rw_read_percent: u8,
    pub core_mask: CoreMask,
    /// Pin reactor threads to their cores.
    pub pin: bool,
    /// `-C`: every core submits to every bdev.
    pub every_core: bool,
    /// `-T`: the one bdev to test.
    pub target: Option<String>,
    pub bdevs: BdevSetup,
    /// `-f`.
    pub continue_on_failure: bool,
    /// `-S`: seconds between full periodic reports.
    pub periodic_secs: Option<u64>,
    /// `-P N`: periodic reports show IOPS as an exponential moving average over N periods
    /// (weight 2/(N+1)) instead of the cumulative average.
    pub ema_periods: Option<u64>,
    /// `-F θ`: Zipf-distributed random offsets (`0 ≤ θ < 1`).
    pub zipf_theta: Option<f64>,
    /// `-k`: seconds after which an outstanding I/O counts as timed out (TO/s); 0 = off.
    pub timeout_secs: u64,
    pub output: OutputFormat,
    /// Show the one-line progress display each second (text output, no `-S`).
    pub progress_line: bool,
    /// `--prefill`: write every target bdev once, sequentially, before the timed run
    /// ([`prefill`]).
    pub prefill: bool,
}

impl RunOptions {
    /// Options with the embedded default workload (4 KiB randread, qd 128, 3 s) on core 0 over
    /// the default stack.
    pub fn defaults() -> RunOptions {
        RunOptions {
            workload: Workload::RandRead,
            queue_depth: 128,
            io_size_bytes: 4096,
            run_time_secs: 3,
            rw_read_percent: 50,
            core_mask: CoreMask::parse("0x1").expect("valid mask"),
            pin: true,
            every_core: false,
            target: None,
            bdevs: BdevSetup::Default,
            continue_on_failure: false,
            periodic_secs: None,
            ema_periods: None,
            zipf_theta: None,
            timeout_secs: 0,
            output: OutputFormat::Text,
            progress_line: false,
            prefill: false,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// One per job, in job order.
    pub results: Vec<JobResult>,
}

impl RunSummary {
    /// Whether every job ran to its deadline (exit status 0).
    pub fn success(&self) -> bool {
        self.results.iter().all(|r| r.status == JobStatus::Finished)
    }
}

/// Stops and joins the reactors however `run` returns.
struct RuntimeGuard {
    runtime: Option<Runtime>,
    cores: Cores,
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        self.cores.request_stop();
        if let Some(rt) = self.runtime.take() {
            rt.wait();
        }
    }
}

/// Creates the embedded default stack. Called on the main core.
pub fn create_default_stack(reg: &BdevRegistry) -> Result<(), PerfError> {
    let (n, blocks, bs) = DEFAULT_NULL;
    null::create(reg, &null::NullOpts::new(n, blocks, bs))?;
    let (n, blocks, bs) = DEFAULT_MALLOC;
    malloc::create(reg, &malloc::MallocOpts::new(n, blocks, bs))?;
    Ok(())
}

enum Msg {
    Started(usize, Arc<JobProgress>),
    StartFailed(usize, PerfError),
    Done(usize, Box<JobResult>),
}

/// `--prefill`: writes every target bdev that takes writes once from its first block to its
/// last, before the measured jobs start — one sequential write job per bdev on the main core,
/// stopped once it has written the bdev's size (a job's sequential cursor starts at block 0).
/// A RAM disk allocates its memory as it is written and reads unwritten blocks from the
/// kernel's zero page, so without this a read benchmark measures cached zeros. Called on the
/// orchestrator's thread; blocks until every pass finished.
pub fn prefill(cores: &Cores, reg: &Arc<BdevRegistry>, targets: &[Arc<keel_bdev::Bdev>]) -> Result<(), PerfError> {
    let (tx, rx) = mpsc::channel::<Result<(Arc<JobProgress>, u64), PerfError>>();
    let (done_tx, done_rx) = mpsc::channel::<JobResult>();
    let mut names: Vec<&str> = Vec::new();
    for b in targets {
        let info = b.info();
        if !info.caps.supports(keel_bdev::IoOp::Write) || names.contains(&info.name.as_str()) {
            continue;
        }
        names.push(&info.name);
        let bs = info.block_size as u64;
        let io_bytes = PREFILL_IO_BYTES.max(bs).min(info.size_bytes()) / bs * bs;
        let ios = info.size_bytes().div_ceil(io_bytes);
        let spec = JobSpec::new(&info.name, Workload::Write, PREFILL_QUEUE_DEPTH, io_bytes, 0);
        let (tx, done_tx, reg, name) = (tx.clone(), done_tx.clone(), reg.clone(), info.name.clone());
        cores.run_on(cores.main_core(), move || {
            let started = reg.open(&name, true, |_| {}).map_err(PerfError::from).and_then(|desc| {
                Job::start_with(spec, desc, move |r| {
                    let _ = done_tx.send(r.clone());
                })
                .map_err(PerfError::from)
            });
            let _ = tx.send(started.map(|h| (h.progress(), ios)));
        })?;
    }
    drop((tx, done_tx));
    let mut running = Vec::new();
    for r in rx.iter() {
        running.push(r?);
    }
    let deadline = Instant::now() + PREFILL_TIMEOUT;
    while !running.is_empty() {
        running.retain(|(p, ios)| {
            if p.completed_ios() >= *ios {
                p.request_stop();
                false
            } else {
                true
            }
        });
        if Instant::now() > deadline {
            return Err(PerfError::Config("--prefill did not finish in time".into()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..names.len() {
        let r = done_rx
            .recv_timeout(STOP_GRACE)
            .map_err(|_| PerfError::Config("--prefill: a write pass did not stop".into()))?;
        if r.status == JobStatus::Failed {
            return Err(PerfError::Config(format!(
                "--prefill: writing {} failed: {}",
                r.name,
                r.end_reason.as_deref().unwrap_or("I/O failed")
            )));
        }
    }
    Ok(())
}

/// A job to start: where, on what, and how.
struct Planned {
    core: CoreId,
    bdev: String,
    writable: bool,
    spec: JobSpec,
}

/// Runs a benchmark; see the module docs. `out` gets the report (and progress), `err` the
/// notices, miscompares and end reasons. Returns an error — and starts no I/O — for invalid
/// parameters, configuration failures, missing bdevs and rejected jobs. Call from a thread that
/// is not a reactor.
pub fn run(mut opts: RunOptions, out: &mut dyn Write, err: &mut dyn Write) -> Result<RunSummary, PerfError> {
    check_options(&opts)?;
    let session = Session::start(&mut opts)?;
    run_jobs(&opts, &session, out, err)
}

/// The checks of [`run`] that need no bdev (also for `perform_tests` overrides).
pub(crate) fn check_options(opts: &RunOptions) -> Result<(), PerfError> {
    if opts.queue_depth == 0 {
        return Err(PerfError::invalid("-q", "queue depth must be greater than 0"));
    }
    if opts.run_time_secs == 0 {
        return Err(PerfError::invalid("-t", "run time must be greater than 0 seconds"));
    }
    if opts.run_time_secs > crate::cli::MAX_SECS || opts.periodic_secs.is_some_and(|p| p > crate::cli::MAX_SECS) {
        return Err(PerfError::invalid(
            if opts.run_time_secs > crate::cli::MAX_SECS {
                "-t"
            } else {
                "-S"
            },
            format!("at most {} seconds", crate::cli::MAX_SECS),
        ));
    }
    if opts.rw_read_percent > 100 {
        return Err(PerfError::invalid("-M", "read percentage must be within 0..100"));
    }
    Ok(())
}

/// The reactors and the bdevs, set up once: by [`run`] for one run, by the RPC mode (`-z`) for
/// every `perform_tests`. Dropping it stops and joins the reactors.
pub struct Session {
    pub cores: Cores,
    pub reg: Arc<BdevRegistry>,
    _guard: RuntimeGuard,
}

impl Session {
    /// Parses the configuration, starts the reactors of `opts.core_mask` and creates the bdevs
    /// on the main core (taking `opts.bdevs`). Called on a thread that is not a reactor.
    pub fn start(opts: &mut RunOptions) -> Result<Session, PerfError> {
        let config = match &opts.bdevs {
            BdevSetup::ConfigFile(path) => Some(ConfigFile::from_path(path).map_err(|e| PerfError::Config(e.message))?),
            _ => None,
        };
        let runtime = Runtime::start(&opts.core_mask, opts.pin, || {})?;
        let cores = runtime.cores();
        let guard = RuntimeGuard {
            runtime: Some(runtime),
            cores: cores.clone(),
        };
        let reg = BdevRegistry::new(cores.clone());
        let (tx, rx) = mpsc::channel::<Result<(), PerfError>>();
        let reg2 = reg.clone();
        let setup = std::mem::replace(&mut opts.bdevs, BdevSetup::Default);
        cores.run_on(cores.main_core(), move || match (setup, config) {
            (_, Some(cfg)) => {
                let tx2 = tx.clone();
                keel_rpc::config::apply(reg2, cfg, move |r| {
                    let _ = tx2.send(r.map_err(|e| PerfError::Config(e.to_string())));
                });
            }
            (BdevSetup::Custom(f), None) => {
                let _ = tx.send(f(&reg2));
            }
            (_, None) => {
                let _ = tx.send(create_default_stack(&reg2));
            }
        })?;
        match rx.recv_timeout(SETUP_TIMEOUT) {
            Ok(r) => r?,
            Err(_) => return Err(PerfError::Config("bdev setup did not finish".into())),
        }
        Ok(Session {
            cores,
            reg,
            _guard: guard,
        })
    }
}

/// One run of the jobs `opts` describes on `session`'s bdevs (steps 4-8 of the module docs).
pub fn run_jobs(
    opts: &RunOptions,
    session: &Session,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<RunSummary, PerfError> {
    let (cores, reg) = (&session.cores, &session.reg);
    let (tx, rx) = mpsc::channel::<Msg>();
    // Targets and jobs.
    let targets: Vec<Arc<keel_bdev::Bdev>> = match &opts.target {
        Some(name) => vec![reg.get(name).ok_or_else(|| PerfError::BdevNotFound(name.clone()))?],
        None => reg.list().into_iter().filter(|b| b.claimed_by().is_none()).collect(),
    };
    let mask_cores = opts.core_mask.cores().to_vec();
    let mut planned = Vec::new();
    let mut rr = 0usize;
    for bdev in &targets {
        let info = bdev.info();
        let bs = info.block_size as u64;
        if !opts.io_size_bytes.is_multiple_of(bs) {
            return Err(PerfError::JobRejected {
                job: info.name.clone(),
                reason: format!(
                    "IO size ({}) is not a multiple of the data block size ({}) of bdev {}",
                    opts.io_size_bytes, bs, info.name
                ),
            });
        }
        if let Some(op) = opts.workload.ops().iter().find(|op| !info.caps.supports(**op)) {
            // bdevperf skips such jobs with a notice and runs the others.
            writeln!(err, "Skipping {} because it does not support {}", info.name, op.name()).ok();
            continue;
        }
        if opts.workload.is_verify() && info.module == null::MODULE {
            writeln!(
                err,
                "Notice: {} is a null bdev, which stores no data: {} will report a miscompare",
                info.name, opts.workload
            )
            .ok();
        }
        let io_blocks = opts.io_size_bytes / bs;
        let slices: Vec<(CoreId, u64, u64)> = if opts.every_core {
            let n = mask_cores.len() as u64;
            let slice = (info.num_blocks / n) / io_blocks * io_blocks;
            if slice == 0 {
                return Err(PerfError::JobRejected {
                    job: info.name.clone(),
                    reason: format!(
                        "with -C each of {n} cores gets {} blocks, less than one IO of {io_blocks} blocks",
                        info.num_blocks / n
                    ),
                });
            }
            mask_cores
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, i as u64 * slice, slice))
                .collect()
        } else {
            if io_blocks > info.num_blocks {
                return Err(PerfError::JobRejected {
                    job: info.name.clone(),
                    reason: format!(
                        "IO size ({}) is larger than bdev {} ({} bytes)",
                        opts.io_size_bytes,
                        info.name,
                        info.size_bytes()
                    ),
                });
            }
            let c = mask_cores[rr % mask_cores.len()];
            rr += 1;
            vec![(c, 0, 0)]
        };
        for (core, offset_blocks, length_blocks) in slices {
            let idx = planned.len() as u64;
            planned.push(Planned {
                core,
                bdev: info.name.clone(),
                writable: opts.workload.writes(),
                spec: JobSpec {
                    name: info.name.clone(),
                    workload: opts.workload,
                    rw_read_percent: opts.rw_read_percent,
                    queue_depth: opts.queue_depth,
                    io_size_bytes: opts.io_size_bytes,
                    run_time_us: opts.run_time_secs * 1_000_000,
                    offset_blocks,
                    length_blocks,
                    continue_on_failure: opts.continue_on_failure,
                    seed: 0x2545_f491_4f6c_dd1d ^ (idx + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    zipf_theta: opts.zipf_theta,
                    timeout_us: opts.timeout_secs * 1_000_000,
                },
            });
        }
    }
    if planned.is_empty() {
        return Err(PerfError::NoJobs);
    }
    // malloc bdevs allocate their memory in the background after creation; measuring while
    // that runs would measure it too.
    if !keel_bdev::modules::malloc::wait_settled(reg, std::time::Duration::from_secs(120)) {
        let _ = writeln!(
            err,
            "warning: malloc memory still being allocated; the run may be slower at first"
        );
    }
    if opts.prefill {
        prefill(cores, reg, &targets)?;
    }

    let text = opts.output == OutputFormat::Text;
    if text {
        writeln!(out, "Running I/O for {} seconds...", opts.run_time_secs).ok();
        if opts.periodic_secs.is_some() {
            report::write_header(out).ok();
        }
        out.flush().ok();
    }

    // Start every job on its core.
    let n = planned.len();
    let labels: Vec<(String, CoreId, u64)> = planned
        .iter()
        .map(|p| (p.spec.name.clone(), p.core, p.spec.io_size_bytes))
        .collect();
    for (idx, p) in planned.into_iter().enumerate() {
        let tx = tx.clone();
        let reg = reg.clone();
        cores.run_on(p.core, move || {
            let started = reg
                .open(&p.bdev, p.writable, |_| {})
                .map_err(PerfError::from)
                .and_then(|desc| {
                    let tx_done = tx.clone();
                    Job::start_with(p.spec, desc, move |r| {
                        let _ = tx_done.send(Msg::Done(idx, Box::new(r.clone())));
                    })
                    .map_err(PerfError::from)
                });
            let _ = tx.send(match started {
                Ok(h) => Msg::Started(idx, h.progress()),
                Err(e) => Msg::StartFailed(idx, e),
            });
        })?;
    }
    drop(tx);

    let mut progress: Vec<Option<Arc<JobProgress>>> = vec![None; n];
    let mut results: Vec<Option<JobResult>> = vec![None; n];
    let mut start_error: Option<PerfError> = None;
    let mut pending = n;
    let t0 = Instant::now();
    let run_time = Duration::from_secs(opts.run_time_secs);
    let mut next_tick = t0 + Duration::from_secs(1);
    let period = opts.periodic_secs.map(Duration::from_secs);
    let mut next_periodic = period.map(|p| t0 + p);
    let mut stop_sent_at: Option<Instant> = None;
    let progress_line = opts.progress_line && text && period.is_none();
    let mut last_completed = vec![0u64; n];
    // -P: per job, the completions and elapsed time at the last periodic report, and the EMA.
    let mut ema_state: Vec<(u64, f64, Option<f64>)> = vec![(0, 0.0, None); n];
    let mut last_progress_at = t0;
    while pending > 0 {
        let now = Instant::now();
        let wake = next_periodic.map_or(next_tick, |p| p.min(next_tick));
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Msg::Started(i, p)) => progress[i] = Some(p),
            Ok(Msg::StartFailed(i, e)) => {
                pending -= 1;
                if start_error.is_some() {
                    writeln!(err, "keel-perf: job {} could not start either: {e}", labels[i].0).ok();
                }
                start_error.get_or_insert(e);
                for p in progress.iter().flatten() {
                    p.request_stop();
                }
            }
            Ok(Msg::Done(i, r)) => {
                pending -= 1;
                results[i] = Some(*r);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            if progress_line && pending > 0 {
                // Rates over the last second, summed over jobs.
                let secs = now.duration_since(last_progress_at).as_secs_f64().max(1e-3);
                last_progress_at = now;
                let (mut iops, mut mibps) = (0.0, 0.0);
                for (i, p) in progress.iter().enumerate() {
                    if let Some(p) = p {
                        let done = p.completed_ios();
                        let r = done.saturating_sub(last_completed[i]) as f64 / secs;
                        last_completed[i] = done;
                        iops += r;
                        mibps += r * labels[i].2 as f64 / 1_048_576.0;
                    }
                }
                report::write_progress(out, iops, mibps).ok();
            }
            let overdue = now.duration_since(t0);
            if overdue > run_time + DRAIN_GRACE && stop_sent_at.is_none() {
                writeln!(err, "keel-perf: jobs did not drain in time; asking them to stop").ok();
                for p in progress.iter().flatten() {
                    p.request_stop();
                }
                stop_sent_at = Some(now);
            }
            if stop_sent_at.is_some_and(|t| now.duration_since(t) > STOP_GRACE) {
                writeln!(err, "keel-perf: {pending} job(s) never finished").ok();
                break;
            }
        }
        if let (Some(due), Some(p)) = (next_periodic, period) {
            if now >= due && pending > 0 {
                next_periodic = Some(due + p);
                let live: Vec<LiveJob<'_>> = progress
                    .iter()
                    .enumerate()
                    .filter_map(|(i, pr)| {
                        pr.as_ref().map(|pr| {
                            let snapshot = pr.snapshot();
                            let iops_override = opts.ema_periods.map(|periods| {
                                let (c0, e0, prev) = ema_state[i];
                                let secs = (snapshot.elapsed_us - e0) / 1e6;
                                let sample = if secs > 0.0 {
                                    snapshot.completed.saturating_sub(c0) as f64 / secs
                                } else {
                                    0.0
                                };
                                let ema = report::ema_step(prev, sample, periods);
                                ema_state[i] = (snapshot.completed, snapshot.elapsed_us, Some(ema));
                                ema
                            });
                            LiveJob {
                                label: JobLabel {
                                    name: &labels[i].0,
                                    core_mask_hex: report::core_mask_hex(labels[i].1),
                                    workload: opts.workload,
                                    rw_read_percent: opts.workload.is_mixed().then_some(opts.rw_read_percent),
                                    queue_depth: opts.queue_depth,
                                    io_size_bytes: labels[i].2,
                                },
                                snapshot,
                                iops_override,
                            }
                        })
                    })
                    .collect();
                if text {
                    report::write_periodic(out, &live).ok();
                    out.flush().ok();
                }
            }
        }
    }
    let results: Vec<JobResult> = results.into_iter().flatten().collect();
    if let Some(e) = start_error {
        return Err(e);
    }
    for r in &results {
        if let Some(m) = &r.miscompare {
            writeln!(err, "{m}").ok();
        }
        if r.status != JobStatus::Finished {
            writeln!(
                err,
                "Job {} {}: {}",
                r.name,
                r.status.name(),
                r.end_reason.as_deref().unwrap_or("ended early")
            )
            .ok();
        }
    }
    match opts.output {
        OutputFormat::Text => report::write_text_report(out, &results).ok(),
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report::json_report(&results)).expect("json")
        )
        .ok(),
    };
    out.flush().ok();
    Ok(RunSummary { results })
}
