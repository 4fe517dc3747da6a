//! Result output in bdevperf's shapes (`shared/specs/bdevperf.md` §2 and §4).
//!
//! Text: the two header lines, per job a `Job:` description line (plus the optional "ended in
//! about" and "Verification LBA range" lines) and a stats line, the `=` separator and the Total
//! line, with the exact field widths of the spec. After the table comes Keel's extension: one
//! block of exact latency percentiles per job. JSON: the object bdevperf's `perform_tests` RPC
//! returns, plus a `latency_percentiles_us` object per job.
//!
//! Latency columns differ from bdevperf in one respect the spec allows: they are exact
//! (sum/min/max of tick counts) rather than histogram-bucket approximations. All functions here
//! run on the orchestrator's thread and write to a caller-supplied `Write`.

use std::io::{self, Write};

use keel_reactor::CoreMask;
use serde::Serialize;

use keel_load::{JobResult, ProgressSnapshot, Workload, PERCENTILES};

/// Width of header line 1 (`Latency(us)` right-aligned).
const HEADER1_WIDTH: usize = 107;
/// `=` characters of the separator line.
const SEPARATOR_LEN: usize = 115;
/// `=` characters above each percentile block (as bdevperf's `-l` summary).
const PCT_RULE_LEN: usize = 45;

/// The lowercase hex mask of one core ("1", "2", "10").
pub fn core_mask_hex(core: keel_reactor::CoreId) -> String {
    CoreMask::from_cores([core]).to_hex()
}

/// Header line 1 and 2, each followed by a newline.
pub fn write_header(out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "{:>HEADER1_WIDTH$}", "Latency(us)")?;
    writeln!(
        out,
        "\r {:<28}: {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "Device Information", "runtime(s)", "IOPS", "MiB/s", "Fail/s", "TO/s", "Average", "min", "max"
    )
}

/// What the description line of a job says.
pub struct JobLabel<'a> {
    pub name: &'a str,
    pub core_mask_hex: String,
    pub workload: Workload,
    pub rw_read_percent: Option<u8>,
    pub queue_depth: u32,
    pub io_size_bytes: u64,
}

impl<'a> JobLabel<'a> {
    /// The label of a finished job.
    pub fn of(r: &'a JobResult) -> JobLabel<'a> {
        JobLabel {
            name: &r.name,
            core_mask_hex: core_mask_hex(r.core),
            workload: r.workload,
            rw_read_percent: r.rw_read_percent,
            queue_depth: r.queue_depth,
            io_size_bytes: r.io_size_bytes,
        }
    }
}

/// `Job: <name> (Core Mask 0x.., workload: .., [percentage: ..,] depth: .., IO size: ..)`.
pub fn write_job_line(out: &mut dyn Write, l: &JobLabel<'_>) -> io::Result<()> {
    write!(
        out,
        "Job: {} (Core Mask 0x{}, workload: {}, ",
        l.name, l.core_mask_hex, l.workload
    )?;
    if let Some(p) = l.rw_read_percent {
        write!(out, "percentage: {p}, ")?;
    }
    writeln!(out, "depth: {}, IO size: {})", l.queue_depth, l.io_size_bytes)
}

/// The numbers of one stats line (or of the Total line, without runtime).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Row {
    pub runtime_s: f64,
    pub iops: f64,
    pub mibps: f64,
    pub fail_per_s: f64,
    pub timeout_per_s: f64,
    pub avg_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

/// The stats line: TAB, space, name in 20, `: `, the eight numbers.
pub fn write_stats_line(out: &mut dyn Write, name: &str, r: &Row) -> io::Result<()> {
    writeln!(
        out,
        "\t {:<20}: {:10.2} {:10.2} {:10.2} {:10.2} {:8.2} {:10.2} {:10.2} {:10.2}",
        name, r.runtime_s, r.iops, r.mibps, r.fail_per_s, r.timeout_per_s, r.avg_us, r.min_us, r.max_us
    )
}

/// Separator and Total line.
pub fn write_total(out: &mut dyn Write, t: &Row) -> io::Result<()> {
    writeln!(out, "\r {}", "=".repeat(SEPARATOR_LEN))?;
    writeln!(
        out,
        "\r {:<28}: {:10} {:10.2} {:10.2} {:10.2} {:8.2} {:10.2} {:10.2} {:10.2}",
        "Total", "", t.iops, t.mibps, t.fail_per_s, t.timeout_per_s, t.avg_us, t.min_us, t.max_us
    )
}

/// Per-job row of a finished job.
pub fn row_of(r: &JobResult) -> Row {
    Row {
        runtime_s: r.runtime_us / 1e6,
        iops: r.iops(),
        mibps: r.mibps(),
        fail_per_s: r.fail_per_sec(),
        timeout_per_s: r.timeout_per_sec(),
        avg_us: r.avg_latency_us,
        min_us: r.min_latency_us,
        max_us: r.max_latency_us,
    }
}

/// Totals as bdevperf computes them: sums of rates, I/O-weighted average latency, min of the
/// minimums and max of the maximums (jobs without any I/O left out of min/max).
fn total_of(rows: &[(Row, u64, f64)]) -> Row {
    let mut t = Row::default();
    let mut ios = 0u64;
    let mut lat_sum = 0.0;
    let mut min = f64::MAX;
    for (r, n, sum) in rows {
        t.iops += r.iops;
        t.mibps += r.mibps;
        t.fail_per_s += r.fail_per_s;
        t.timeout_per_s += r.timeout_per_s;
        ios += n;
        lat_sum += sum;
        if *n > 0 {
            min = min.min(r.min_us);
            t.max_us = t.max_us.max(r.max_us);
        }
    }
    t.avg_us = if ios > 0 { lat_sum / ios as f64 } else { 0.0 };
    t.min_us = if ios > 0 { min } else { 0.0 };
    t
}

/// The final text report: an empty line, headers, job blocks, separator, Total, then the
/// percentile blocks.
pub fn write_text_report(out: &mut dyn Write, results: &[JobResult]) -> io::Result<()> {
    writeln!(out)?;
    write_header(out)?;
    write_job_blocks(out, results)?;
    write_percentiles(out, results)
}

/// Job blocks, separator and Total line of finished jobs.
pub fn write_job_blocks(out: &mut dyn Write, results: &[JobResult]) -> io::Result<()> {
    let mut rows = Vec::with_capacity(results.len());
    for r in results {
        write_job_line(out, &JobLabel::of(r))?;
        if r.ended_with_error() {
            writeln!(
                out,
                "Job: {} ended in about {:.2} seconds with error",
                r.name,
                r.runtime_us / 1e6
            )?;
        }
        if let Some(v) = r.verify_range {
            writeln!(
                out,
                "\t Verification LBA range: start 0x{:x} length 0x{:x}",
                v.start, v.length
            )?;
        }
        let row = row_of(r);
        write_stats_line(out, &r.name, &row)?;
        rows.push((row, r.ios_completed + r.ios_failed, r.latency_sum_us));
    }
    write_total(out, &total_of(&rows))
}

/// Keel's extension: exact latency percentiles per job, after the table.
pub fn write_percentiles(out: &mut dyn Write, results: &[JobResult]) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "Latency percentiles (us, from HdrHistogram, 3 significant digits):"
    )?;
    for r in results {
        writeln!(out, "{}", "=".repeat(PCT_RULE_LEN))?;
        writeln!(out, "Job: {} (Core Mask 0x{})", r.name, core_mask_hex(r.core))?;
        for (i, (p, _)) in PERCENTILES.iter().enumerate() {
            writeln!(out, "{:9.5}% : {:9.3}us", p, r.percentiles_us[i])?;
        }
    }
    Ok(())
}

/// A running job as the periodic report (`-S`) sees it.
pub struct LiveJob<'a> {
    pub label: JobLabel<'a>,
    pub snapshot: ProgressSnapshot,
    /// IOPS to show instead of the cumulative average (`-P`: the moving average).
    pub iops_override: Option<f64>,
}

/// One step of bdevperf's `-P` moving average: the first period's rate as is, then
/// `M × sample + (1 − M) × previous` with `M = 2 / (periods + 1)`.
pub fn ema_step(prev: Option<f64>, sample: f64, periods: u64) -> f64 {
    match prev {
        None => sample,
        Some(p) => {
            let m = 2.0 / (periods as f64 + 1.0);
            m * sample + (1.0 - m) * p
        }
    }
}

/// One periodic block: per-job lines, separator, Total, empty line (cumulative averages, or a
/// job's `iops_override`).
pub fn write_periodic(out: &mut dyn Write, jobs: &[LiveJob<'_>]) -> io::Result<()> {
    let mut rows = Vec::with_capacity(jobs.len());
    for j in jobs {
        write_job_line(out, &j.label)?;
        let s = &j.snapshot;
        let secs = s.elapsed_us / 1e6;
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let n = s.completed + s.failed;
        let iops = j.iops_override.unwrap_or_else(|| rate(s.completed));
        let row = Row {
            runtime_s: secs,
            iops,
            mibps: iops * j.label.io_size_bytes as f64 / 1_048_576.0,
            fail_per_s: rate(s.failed),
            timeout_per_s: 0.0,
            avg_us: if n > 0 { s.latency_sum_us / n as f64 } else { 0.0 },
            min_us: if n > 0 { s.min_latency_us } else { 0.0 },
            max_us: s.max_latency_us,
        };
        write_stats_line(out, j.label.name, &row)?;
        rows.push((row, n, s.latency_sum_us));
    }
    write_total(out, &total_of(&rows))?;
    writeln!(out)
}

/// The one-line progress display: `%12.2f IOPS, %8.2f MiB/s` and a carriage return.
pub fn write_progress(out: &mut dyn Write, iops: f64, mibps: f64) -> io::Result<()> {
    write!(out, "{iops:12.2} IOPS, {mibps:8.2} MiB/s\r")?;
    out.flush()
}

#[derive(Serialize)]
struct JsonRange {
    start: u64,
    length: u64,
}

#[derive(Serialize)]
struct JsonPercentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    #[serde(rename = "p99.9")]
    p99_9: f64,
    #[serde(rename = "p99.99")]
    p99_99: f64,
}

#[derive(Serialize)]
struct JsonJob<'a> {
    job: &'a str,
    core_mask: String,
    workload: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    percentage: Option<u8>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify_range: Option<JsonRange>,
    queue_depth: u32,
    io_size: u64,
    runtime: f64,
    iops: f64,
    mibps: f64,
    io_failed: u64,
    io_timeout: u64,
    avg_latency_us: f64,
    min_latency_us: f64,
    max_latency_us: f64,
    latency_percentiles_us: JsonPercentiles,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    results: Vec<JsonJob<'a>>,
    core_count: usize,
}

/// bdevperf's `perform_tests` result object (§4) with Keel's `latency_percentiles_us`.
pub fn json_report(results: &[JobResult]) -> serde_json::Value {
    let mut cores: Vec<u32> = results.iter().map(|r| r.core.0).collect();
    cores.sort_unstable();
    cores.dedup();
    let report = JsonReport {
        results: results
            .iter()
            .map(|r| {
                let p = &r.percentiles_us;
                JsonJob {
                    job: &r.name,
                    core_mask: format!("0x{}", core_mask_hex(r.core)),
                    workload: r.workload.name(),
                    percentage: r.rw_read_percent,
                    status: r.status.name(),
                    verify_range: r.verify_range.map(|v| JsonRange {
                        start: v.start,
                        length: v.length,
                    }),
                    queue_depth: r.queue_depth,
                    io_size: r.io_size_bytes,
                    runtime: r.runtime_us / 1e6,
                    iops: r.iops(),
                    mibps: r.mibps(),
                    io_failed: r.ios_failed,
                    io_timeout: r.ios_timed_out,
                    avg_latency_us: r.avg_latency_us,
                    min_latency_us: r.min_latency_us,
                    max_latency_us: r.max_latency_us,
                    latency_percentiles_us: JsonPercentiles {
                        p50: p[0],
                        p90: p[1],
                        p99: p[2],
                        p99_9: p[3],
                        p99_99: p[4],
                    },
                }
            })
            .collect(),
        core_count: cores.len(),
    };
    serde_json::to_value(&report).expect("report serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_load::{JobStatus, VerifyRange};
    use keel_reactor::CoreId;

    fn result(name: &str, core: u32, workload: Workload) -> JobResult {
        JobResult {
            name: name.into(),
            bdev: name.into(),
            core: CoreId(core),
            workload,
            rw_read_percent: workload.is_mixed().then_some(70),
            queue_depth: 128,
            io_size_bytes: 4096,
            status: JobStatus::Finished,
            verify_range: workload.is_verify().then_some(VerifyRange {
                start: 0,
                length: 0x8000,
            }),
            runtime_us: 5_000_000.0,
            ios_completed: 4_061_728,
            ios_failed: 0,
            ios_timed_out: 0,
            latency_sum_us: 4_061_728.0 * 157.31,
            avg_latency_us: 157.31,
            min_latency_us: 10.88,
            max_latency_us: 1287.71,
            percentiles_us: [100.0, 200.0, 300.0, 400.0, 500.0],
            end_reason: None,
            miscompare: None,
        }
    }

    #[test]
    fn text_lines_have_the_spec_widths() {
        let mut out = Vec::new();
        write_text_report(
            &mut out,
            &[
                result("Malloc0", 0, Workload::RandRead),
                result("Null0", 1, Workload::RandRw),
            ],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(lines[1].len(), 107);
        assert!(lines[1].ends_with("Latency(us)"));
        assert_eq!(
            lines[2],
            "\r Device Information          : runtime(s)       IOPS      MiB/s     Fail/s     TO/s    Average        \
             min        max"
        );
        assert_eq!(
            lines[3],
            "Job: Malloc0 (Core Mask 0x1, workload: randread, depth: 128, IO size: 4096)"
        );
        assert_eq!(
            lines[4],
            "\t Malloc0             :       5.00  812345.60    3173.22       0.00     0.00     157.31      10.88    1287.71"
        );
        assert_eq!(
            lines[5],
            "Job: Null0 (Core Mask 0x2, workload: randrw, percentage: 70, depth: 128, IO size: 4096)"
        );
        assert_eq!(lines[7], format!("\r {}", "=".repeat(115)));
        assert!(lines[8].starts_with("\r Total                       :            1624691.20    6346.45"));
    }

    #[test]
    fn json_has_bdevperf_fields() {
        let v = json_report(&[result("Malloc0", 0, Workload::Verify), result("Null0", 0, Workload::Rw)]);
        assert_eq!(v["core_count"], 1);
        let j = &v["results"][0];
        assert_eq!(j["job"], "Malloc0");
        assert_eq!(j["core_mask"], "0x1");
        assert_eq!(j["verify_range"]["length"], 0x8000);
        assert!(j.get("percentage").is_none());
        assert_eq!(v["results"][1]["percentage"], 70);
        assert_eq!(j["latency_percentiles_us"]["p99.99"], 500.0);
    }
}
