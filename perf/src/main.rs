//! The `keel-perf` binary: parses the command line ([`keel_perf::cli`]), runs
//! ([`keel_perf::run()`]) and maps the outcome to bdevperf's exit status: 0 when every job ran to
//! its deadline, 1 otherwise (invalid parameters, configuration errors, failed jobs).
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use keel_perf::cli::{parse_args, CliAction};
use keel_perf::PerfError;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let opts = match parse_args(std::env::args_os(), tty) {
        Ok(CliAction::Run(o)) => o,
        Ok(CliAction::Serve(o, socket)) => return serve(*o, socket),
        Ok(CliAction::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&e),
    };
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    match keel_perf::run(*opts, &mut out, &mut err) {
        Ok(summary) if summary.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            out.flush().ok();
            fail(&e)
        }
    }
}

/// `-z`: serves RPC until SIGINT or SIGTERM.
fn serve(opts: keel_perf::RunOptions, socket: std::path::PathBuf) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("keel-perf: error: cannot handle signal {sig}: {e}");
            return ExitCode::from(1);
        }
    }
    let mut out = std::io::stdout().lock();
    match keel_perf::serve::serve(opts, socket, stop, &mut out, &mut std::io::stderr()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &PerfError) -> ExitCode {
    match e {
        PerfError::Usage(text) => eprintln!("{text}"),
        other => eprintln!("keel-perf: error: {other}"),
    }
    ExitCode::from(1)
}
