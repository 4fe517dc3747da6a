//! Workload types and job specifications: what one job issues (`shared/specs/bdevperf.md` §1.3).
//!
//! A [`JobSpec`] is plain data (`Send`): a tool (keel-perf's orchestrator) or a test builds it on
//! its own thread and sends it to the job's core, where [`crate::Job::start`] checks it against
//! the bdev.

use keel_bdev::IoOp;

use crate::LoadError;

/// bdevperf's workload types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Sequential reads, wrapping at the end of the range.
    Read,
    /// Sequential writes.
    Write,
    /// Uniform random reads (xorshift64).
    RandRead,
    /// Uniform random writes.
    RandWrite,
    /// Sequential, each I/O a read with probability `-M` %.
    Rw,
    /// Random, each I/O a read with probability `-M` %.
    RandRw,
    /// Write a pattern, read it back, compare the whole buffer.
    Verify,
    /// Flushes only.
    Flush,
    /// Unmaps only.
    Unmap,
    /// Write-zeroes only.
    WriteZeroes,
    /// Verify plus a bdev reset every [`RESET_PERIOD_US`]; failed I/O does not end the job.
    Reset,
}

/// How often a `reset` job resets its bdev (bdevperf: every 10 s).
pub const RESET_PERIOD_US: u64 = 10_000_000;

impl Workload {
    /// Every workload, in bdevperf's documentation order.
    pub const ALL: [Workload; 11] = [
        Workload::Read,
        Workload::Write,
        Workload::RandRead,
        Workload::RandWrite,
        Workload::Rw,
        Workload::RandRw,
        Workload::Verify,
        Workload::Reset,
        Workload::Unmap,
        Workload::Flush,
        Workload::WriteZeroes,
    ];

    /// Parses bdevperf's `-w` value (exact, lower case).
    pub fn parse(text: &str) -> Result<Workload, LoadError> {
        Workload::ALL.into_iter().find(|w| w.name() == text).ok_or_else(|| {
            let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
            LoadError::invalid(
                "-w",
                format!("unknown workload '{text}' (expected one of: {})", names.join(", ")),
            )
        })
    }

    /// The name bdevperf prints (`randread`, `write_zeroes`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Rw => "rw",
            Workload::RandRw => "randrw",
            Workload::Verify => "verify",
            Workload::Flush => "flush",
            Workload::Unmap => "unmap",
            Workload::WriteZeroes => "write_zeroes",
            Workload::Reset => "reset",
        }
    }

    /// Whether offsets are random (else sequential).
    pub fn is_random(self) -> bool {
        matches!(self, Workload::RandRead | Workload::RandWrite | Workload::RandRw)
    }

    /// Whether the read percentage (`-M`) applies.
    pub fn is_mixed(self) -> bool {
        matches!(self, Workload::Rw | Workload::RandRw)
    }

    /// Whether data is written and read back for comparison.
    pub fn is_verify(self) -> bool {
        matches!(self, Workload::Verify | Workload::Reset)
    }

    /// Whether the job modifies the bdev (and so needs a writable descriptor).
    pub fn writes(self) -> bool {
        !matches!(self, Workload::Read | Workload::RandRead)
    }

    /// The single op a non-mixed, non-verify workload issues; `None` for the others.
    pub fn fixed_op(self) -> Option<IoOp> {
        match self {
            Workload::Read | Workload::RandRead => Some(IoOp::Read),
            Workload::Write | Workload::RandWrite => Some(IoOp::Write),
            Workload::Flush => Some(IoOp::Flush),
            Workload::Unmap => Some(IoOp::Unmap),
            Workload::WriteZeroes => Some(IoOp::WriteZeroes),
            Workload::Rw | Workload::RandRw | Workload::Verify | Workload::Reset => None,
        }
    }

    /// Every op the workload issues (support is checked against the bdev before starting).
    pub fn ops(self) -> &'static [IoOp] {
        match self {
            Workload::Read | Workload::RandRead => &[IoOp::Read],
            Workload::Write | Workload::RandWrite => &[IoOp::Write],
            Workload::Rw | Workload::RandRw | Workload::Verify => &[IoOp::Read, IoOp::Write],
            Workload::Reset => &[IoOp::Read, IoOp::Write, IoOp::Reset],
            Workload::Flush => &[IoOp::Flush],
            Workload::Unmap => &[IoOp::Unmap],
            Workload::WriteZeroes => &[IoOp::WriteZeroes],
        }
    }

    /// Whether the workload moves data through buffers (needs one buffer per request).
    pub fn has_data(self) -> bool {
        !matches!(self, Workload::Flush | Workload::Unmap | Workload::WriteZeroes)
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything one job needs to know, as plain data. Built by a tool or a test on any
/// thread; [`crate::Job::start`] validates it against the bdev on the job's core.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Job name as printed (bdevperf names a job after its bdev).
    pub name: String,
    pub workload: Workload,
    /// Read percentage for `rw`/`randrw` (0–100); ignored by the other workloads.
    pub rw_read_percent: u8,
    /// Requests kept outstanding (> 0).
    pub queue_depth: u32,
    /// Bytes per I/O; a multiple of the bdev's block size.
    pub io_size_bytes: u64,
    /// Run time in µs; 0 = run until stopped ([`crate::JobHandle::stop`] or the stop flag of
    /// [`crate::JobProgress`]).
    pub run_time_us: u64,
    /// First block of the job's range.
    pub offset_blocks: u64,
    /// Blocks in the job's range; 0 = from `offset_blocks` to the end of the bdev.
    pub length_blocks: u64,
    /// `-f`: count failed I/Os and go on. Without it the first failed I/O ends the job with
    /// status `failed`. A miscompare always ends the job.
    pub continue_on_failure: bool,
    /// Seed of the job's xorshift64 generator (random offsets, rw mix). Non-zero.
    pub seed: u64,
    /// `-F θ`: random offsets follow a Zipf distribution with exponent θ (`0 ≤ θ < 1`; offset
    /// 0 of the range the most popular) instead of a uniform one. Random workloads only.
    pub zipf_theta: Option<f64>,
    /// `-k`: an I/O outstanding longer than this (µs) counts as timed out (0: no timeout).
    pub timeout_us: u64,
}

impl JobSpec {
    /// A spec with bdevperf's defaults for the rest: whole bdev, no `-f`, a fixed seed.
    pub fn new(name: &str, workload: Workload, queue_depth: u32, io_size_bytes: u64, run_time_us: u64) -> JobSpec {
        JobSpec {
            name: name.to_string(),
            workload,
            rw_read_percent: 50,
            queue_depth,
            io_size_bytes,
            run_time_us,
            offset_blocks: 0,
            length_blocks: 0,
            continue_on_failure: false,
            seed: 0x2545_f491_4f6c_dd1d,
            zipf_theta: None,
            timeout_us: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()).unwrap(), w);
        }
        let e = Workload::parse("randomread").unwrap_err().to_string();
        assert!(e.contains("unknown workload 'randomread'"), "{e}");
    }
}
