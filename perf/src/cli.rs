//! The command line, as bdevperf's (`shared/specs/bdevperf.md` §1), parsed with clap.
//!
//! Numeric options are taken as strings and checked here so that every rejection names the
//! option and the rule (`invalid parameter -q: queue depth must be greater than 0 (got '0')`);
//! the binary prints the message on stderr and exits with status 1, as bdevperf does on invalid
//! parameters. Unlike bdevperf, `-q`, `-o`, `-w` and `-t` are optional: each one left out takes
//! the embedded default (qd 128, 4 KiB, randread, 3 s), and without `--json` the bdevs are the
//! embedded default stack, so `keel-perf` alone shows real numbers.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use keel_reactor::CoreMask;

use crate::run::{BdevSetup, OutputFormat, RunOptions, DEFAULT_MALLOC, DEFAULT_NULL};
use crate::{PerfError, Workload};

const AFTER_HELP: &str = "\
Defaults (keel-perf alone runs a real benchmark):
  Without --json/-c, keel-perf creates an embedded default stack: a null bdev 'Null0'
  (1 GiB, 4096-byte blocks) and a malloc bdev 'Malloc0' (128 MiB, 4096-byte blocks).
  Each of -q/-o/-w/-t that is not given takes the default workload's value:
  -q 128 -o 4096 -w randread -t 3 (4 KiB random reads, queue depth 128, 3 seconds).
  Without -m the default stack runs each bdev's job on its own core (cores 0 and 1) when
  the machine has two, so `cargo run --release -p keel-perf` shows both at full speed.

Output:
  Text output follows bdevperf's table; latency columns are exact (not histogram buckets),
  followed by exact percentiles (p50..p99.99) per job. A live progress line is shown each
  second only when stdout is a terminal. --output-format json prints bdevperf's perform_tests
  result object plus a per-job latency_percentiles_us object.

Exit status: 0 when every job ran to its deadline; 1 on invalid parameters, configuration
errors, failed I/O without -f, a verify miscompare (even with -f), or a job that ended early.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Command-line arguments as given.
#[derive(Debug, Parser)]
#[command(
    name = "keel-perf",
    version,
    about = "Keel's bdevperf: runs an I/O workload on bdevs on N reactors and reports IOPS, MiB/s and latency",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Queue depth per job (I/Os kept outstanding), > 0 [default: 128]
    #[arg(short = 'q', long = "queue-depth", value_name = "N")]
    queue_depth: Option<String>,
    /// I/O size in bytes, optional k/K/m/M/g/G suffix; a multiple of the bdev's block size
    /// [default: 4096]
    #[arg(short = 'o', long = "io-size", value_name = "SIZE")]
    io_size: Option<String>,
    /// Workload: read, write, randread, randwrite, rw, randrw (with -M), verify, reset, flush,
    /// unmap, write_zeroes [default: randread]
    #[arg(short = 'w', long = "workload", value_name = "TYPE")]
    workload: Option<String>,
    /// Run time in seconds, 1..2147483647 [default: 3]
    #[arg(short = 't', long = "time", value_name = "SECS")]
    time: Option<String>,
    /// Read percentage (0-100) for rw/randrw; required for them
    #[arg(short = 'M', long = "rw-percentage", value_name = "PCT")]
    rw_percentage: Option<String>,
    /// Reactor core mask: hex (0x3) or list ([0,2-3]) [default: 0x1; with the embedded
    /// default stack, one core per default bdev where the machine has them]
    #[arg(short = 'm', long = "cpumask", value_name = "MASK")]
    cpumask: Option<String>,
    /// Every core submits to every bdev: one job per core per bdev, each on an equal
    /// contiguous slice of the bdev
    #[arg(short = 'C')]
    every_core: bool,
    /// Run only against this bdev [default: every leaf bdev, i.e. not claimed]
    #[arg(short = 'T', long = "target", value_name = "NAME")]
    target: Option<String>,
    /// SPDK JSON config ({"subsystems":[...]}) that creates the bdevs
    #[arg(short = 'c', long = "json", visible_alias = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Continue after failed I/O (count it as Fail/s) instead of ending the job with error
    #[arg(short = 'f', long = "continue-on-failure")]
    continue_on_failure: bool,
    /// Print a full report every SECS seconds during the run (replaces the progress line)
    #[arg(short = 'S', long = "periodic", value_name = "SECS")]
    periodic: Option<String>,
    /// With -S: show IOPS as an exponential moving average over N periods (weight 2/(N+1))
    #[arg(short = 'P', long = "ema-periods", value_name = "N")]
    ema_periods: Option<String>,
    /// Random offsets follow a Zipf distribution with exponent THETA (0 <= THETA < 1; offset 0
    /// most popular) instead of a uniform one
    #[arg(short = 'F', long = "zipf", value_name = "THETA")]
    zipf: Option<String>,
    /// Per-I/O timeout in seconds: I/Os outstanding longer count in the TO/s column (0 = off)
    #[arg(short = 'k', long = "timeout", value_name = "SECS")]
    timeout: Option<String>,
    /// Report format
    #[arg(long = "output-format", value_enum, default_value = "text", value_name = "FORMAT")]
    output_format: Format,
    /// Do not pin reactor threads to their cores (pinning is the default)
    #[arg(long = "no-pin")]
    no_pin: bool,
    /// Before the timed run, write every target bdev once from start to end (128 KiB
    /// sequential writes), so reads of memory or files that were never written (a fresh malloc
    /// bdev reads the kernel's zero page) measure real data
    #[arg(long = "prefill")]
    prefill: bool,
    /// Set up the bdevs, then wait for the perform_tests RPC (bdevperf's -z); every Keel RPC
    /// method is served too
    #[arg(short = 'z', long = "wait-for-tests")]
    wait_for_tests: bool,
    /// RPC listen socket for -z [default: /var/tmp/spdk.sock]
    #[arg(short = 'r', long = "rpc-socket", value_name = "PATH")]
    rpc_socket: Option<PathBuf>,
}

/// What the command line asks for.
pub enum CliAction {
    /// Run with these options.
    Run(Box<RunOptions>),
    /// Print this text on stdout and exit 0 (`--help`, `--version`).
    Print(String),
    /// `-z`: set up, then serve RPC on this socket and run on each `perform_tests`
    /// ([`crate::serve::serve`]).
    Serve(Box<RunOptions>, PathBuf),
}

/// The longest `-t` and `-S`, in seconds: bdevperf keeps them in a C `int`, so this is its
/// limit too (about 68 years). Larger values would overflow the deadline's arithmetic.
pub const MAX_SECS: u64 = i32::MAX as u64;

/// A positive number of seconds for `param`, at most [`MAX_SECS`].
fn parse_secs(param: &'static str, what: &str, text: &str) -> Result<u64, PerfError> {
    let v = parse_positive(param, what, text)?;
    if v > MAX_SECS {
        return Err(PerfError::invalid(
            param,
            format!("{what} must be at most {MAX_SECS} (got '{text}')"),
        ));
    }
    Ok(v)
}

fn parse_positive(param: &'static str, what: &str, text: &str) -> Result<u64, PerfError> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(PerfError::invalid(
            param,
            format!("{what} must be greater than 0 (got '{text}')"),
        )),
        Ok(v) => Ok(v),
        Err(_) => Err(PerfError::invalid(
            param,
            format!("{what} must be a positive integer (got '{text}')"),
        )),
    }
}

/// Parses the arguments (including the program name first). Invalid parameters come back as
/// [`PerfError`] (clap's own errors as [`PerfError::InvalidParam`] with clap's text). `stdout_is_tty`
/// decides whether the progress line is shown. Called on the binary's main thread.
pub fn parse_args(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    stdout_is_tty: bool,
) -> Result<CliAction, PerfError> {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(CliAction::Print(e.render().to_string())),
                _ => Err(PerfError::Usage(e.render().to_string().trim_end().to_string())),
            };
        }
    };
    let d = RunOptions::defaults();
    let workload = match &cli.workload {
        Some(w) => Workload::parse(w)?,
        None => d.workload,
    };
    let queue_depth = match &cli.queue_depth {
        Some(q) => {
            let v = parse_positive("-q", "queue depth", q)?;
            u32::try_from(v).map_err(|_| PerfError::invalid("-q", format!("queue depth {v} is too large")))?
        }
        None => d.queue_depth,
    };
    let io_size_bytes = match &cli.io_size {
        Some(o) => parse_size(o)?,
        None => d.io_size_bytes,
    };
    let run_time_secs = match &cli.time {
        Some(t) => parse_secs("-t", "run time in seconds", t)?,
        None => d.run_time_secs,
    };
    let rw_read_percent =
        match (&cli.rw_percentage, workload.is_mixed()) {
            (Some(m), _) => {
                let v: u8 =
                    m.trim().parse().ok().filter(|v| *v <= 100).ok_or_else(|| {
                        PerfError::invalid("-M", format!("read percentage must be 0..100 (got '{m}')"))
                    })?;
                if !workload.is_mixed() {
                    tracing::warn!("-M is ignored for workload {workload}");
                }
                v
            }
            (None, true) => {
                return Err(PerfError::invalid(
                    "-M",
                    format!("the read percentage (-M 0..100) is required for workload {workload}"),
                ))
            }
            (None, false) => d.rw_read_percent,
        };
    // bdevperf's default is core 0 only. The embedded default stack has two bdevs; on one core
    // the null job would be paced by the malloc job's copies, so there each gets its own core.
    let default_mask = if cli.config.is_none() && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        "0x3"
    } else {
        "0x1"
    };
    let cpumask = cli.cpumask.as_deref().unwrap_or(default_mask);
    let core_mask = CoreMask::parse(cpumask).map_err(|e| PerfError::invalid("-m", e.to_string()))?;
    let periodic_secs = cli
        .periodic
        .as_deref()
        .map(|s| parse_secs("-S", "report period in seconds", s))
        .transpose()?;
    let ema_periods = cli
        .ema_periods
        .as_deref()
        .map(|s| parse_positive("-P", "number of periods", s))
        .transpose()?;
    if ema_periods.is_some() && periodic_secs.is_none() {
        tracing::warn!("-P is ignored without -S");
    }
    let zipf_theta = match cli.zipf.as_deref() {
        None => None,
        Some(t) => match t.trim().parse::<f64>() {
            Ok(v) if (0.0..1.0).contains(&v) => Some(v),
            _ => {
                return Err(PerfError::invalid(
                    "-F",
                    format!("zipf theta must be a number at least 0 and below 1 (got '{t}')"),
                ))
            }
        },
    };
    let timeout_secs = match cli.timeout.as_deref() {
        None => 0,
        Some(k) => match k.trim().parse::<u64>() {
            Ok(v) if v <= MAX_SECS => v,
            _ => {
                return Err(PerfError::invalid(
                    "-k",
                    format!("timeout must be 0..{MAX_SECS} seconds (got '{k}')"),
                ))
            }
        },
    };
    let bdevs = match cli.config {
        Some(p) => BdevSetup::ConfigFile(p),
        None => BdevSetup::Default,
    };
    let opts = Box::new(RunOptions {
        workload,
        queue_depth,
        io_size_bytes,
        run_time_secs,
        rw_read_percent,
        core_mask,
        pin: !cli.no_pin,
        every_core: cli.every_core,
        target: cli.target,
        bdevs,
        continue_on_failure: cli.continue_on_failure,
        periodic_secs,
        ema_periods,
        zipf_theta,
        timeout_secs,
        output: match cli.output_format {
            Format::Text => OutputFormat::Text,
            Format::Json => OutputFormat::Json,
        },
        progress_line: stdout_is_tty,
        prefill: cli.prefill,
    });
    if cli.wait_for_tests {
        let socket = cli
            .rpc_socket
            .unwrap_or_else(|| PathBuf::from(crate::serve::DEFAULT_RPC_SOCKET));
        return Ok(CliAction::Serve(opts, socket));
    }
    Ok(CliAction::Run(opts))
}

/// Parses an I/O size as bdevperf's `-o`: a decimal number with an optional binary suffix
/// `k/K`, `m/M`, `g/G` (×1024ⁿ). Zero and overflow are errors.
pub fn parse_size(text: &str) -> Result<u64, PerfError> {
    let bad = || {
        PerfError::invalid(
            "-o",
            format!("invalid IO size '{text}': expected a positive number with an optional k/K/m/M/g/G suffix"),
        )
    };
    let t = text.trim();
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(PerfError::invalid("-o", "IO size must be greater than 0"));
    }
    if bytes > u32::MAX as u64 {
        return Err(PerfError::invalid(
            "-o",
            format!("IO size {bytes} is larger than the 4 GiB a request can carry"),
        ));
    }
    Ok(bytes)
}

/// The default stack as one line, for messages.
pub fn default_stack_description() -> String {
    format!(
        "{} ({} blocks of {} bytes) and {} ({} blocks of {} bytes)",
        DEFAULT_NULL.0, DEFAULT_NULL.1, DEFAULT_NULL.2, DEFAULT_MALLOC.0, DEFAULT_MALLOC.1, DEFAULT_MALLOC.2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunOptions, PerfError> {
        let mut v = vec!["keel-perf"];
        v.extend_from_slice(args);
        match parse_args(v, false)? {
            CliAction::Run(o) => Ok(*o),
            CliAction::Print(_) | CliAction::Serve(..) => panic!("unexpected action"),
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        for bad in ["", "k", "0", "4q", "-4", "4.5k", "99999999999999999999", "8G"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_moving_average_weighs_recent_periods() {
        assert_eq!(crate::report::ema_step(None, 100.0, 3), 100.0);
        // M = 2/(3+1) = 0.5.
        assert_eq!(crate::report::ema_step(Some(100.0), 200.0, 3), 150.0);
        assert_eq!(parse(&["-S", "1", "-P", "4"]).unwrap().ema_periods, Some(4));
        assert_eq!(parse(&["-F", "0.9"]).unwrap().zipf_theta, Some(0.9));
    }

    #[test]
    fn defaults_apply_per_option() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.workload, o.queue_depth, o.io_size_bytes, o.run_time_secs),
            (Workload::RandRead, 128, 4096, 3)
        );
        assert!(matches!(o.bdevs, BdevSetup::Default));
        let o = parse(&[
            "-q", "32", "-o", "8k", "-w", "randrw", "-M", "70", "-t", "1", "-m", "[0,1]",
        ])
        .unwrap();
        assert_eq!((o.queue_depth, o.io_size_bytes, o.rw_read_percent), (32, 8192, 70));
        assert_eq!(o.core_mask.cores().len(), 2);
    }

    #[test]
    fn bad_values_name_the_option() {
        for (args, want) in [
            (&["-q", "0"][..], "-q"),
            (&["-t", "0"][..], "-t"),
            (&["-t", "18446744073709551615"][..], "-t"),
            (&["-t", "2147483648"][..], "at most 2147483647"),
            (&["-S", "18446744073709551615"][..], "-S"),
            (&["-S", "1", "-P", "0"][..], "-P"),
            (&["-F", "1.5"][..], "-F"),
            (&["-F", "x"][..], "-F"),
            (&["-k", "soon"][..], "-k"),
            (&["-w", "bogus"][..], "unknown workload 'bogus'"),
            (&["-w", "rw"][..], "-M"),
            (&["-M", "101", "-w", "rw"][..], "-M"),
            (&["-o", "4x"][..], "invalid IO size"),
            (&["-m", "0xzz"][..], "invalid core mask"),
            (&["--nope"][..], "--nope"),
        ] {
            let e = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"))
                .to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
