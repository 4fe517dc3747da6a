//! The text report matches bdevperf's line formats and widths (spec §2.2), parsed back from the
//! binary's stdout; with stdout not a terminal there is no progress line; `-S` prints periodic
//! blocks under a header printed once.

mod common;

fn check_stats_line(line: &str, name: &str) -> Vec<f64> {
    assert!(line.starts_with("\t "), "{line:?}");
    assert_eq!(&line[2..22], format!("{name:<20}"), "{line:?}");
    assert_eq!(&line[22..24], ": ", "{line:?}");
    // runtime, IOPS, MiB/s, Fail/s (10 each), TO/s (8), Average, min, max (10 each), one space
    // between fields.
    let widths = [10, 10, 10, 10, 8, 10, 10, 10];
    let mut pos = 24;
    let mut values = Vec::new();
    for (i, w) in widths.iter().enumerate() {
        if i > 0 {
            assert_eq!(&line[pos..pos + 1], " ", "{line:?} at {pos}");
            pos += 1;
        }
        let field = &line[pos..pos + w];
        let v: f64 = field
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("field {i} {field:?} in {line:?}"));
        assert_eq!(
            field.trim().split('.').nth(1).map(str::len),
            Some(2),
            "two decimals: {field:?}"
        );
        values.push(v);
        pos += w;
    }
    assert_eq!(pos, line.len(), "{line:?}");
    values
}

#[test]
fn text_report_lines_have_bdevperf_widths() {
    let cfg = common::small_config();
    let (code, out, err) = common::run_bin(&[
        "--json",
        cfg.path().to_str().unwrap(),
        "-q",
        "16",
        "-o",
        "4096",
        "-w",
        "randread",
        "-t",
        "1",
        "--no-pin",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(" IOPS, "),
        "no progress line when stdout is not a terminal:\n{out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Running I/O for 1 seconds...");
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], format!("{}Latency(us)", " ".repeat(96)));
    assert_eq!(
        lines[3],
        "\r Device Information          : runtime(s)       IOPS      MiB/s     Fail/s     TO/s    Average        min        max"
    );
    let mut rows = Vec::new();
    for (i, name) in ["Malloc0", "Null0"].iter().enumerate() {
        assert_eq!(
            lines[4 + 2 * i],
            format!("Job: {name} (Core Mask 0x1, workload: randread, depth: 16, IO size: 4096)")
        );
        let v = check_stats_line(lines[5 + 2 * i], name);
        assert!((1.0..1.5).contains(&v[0]), "runtime {v:?}");
        assert!(v[1] > 0.0 && v[3] == 0.0 && v[4] == 0.0, "{v:?}");
        assert!(v[6] <= v[5] && v[5] <= v[7], "min <= avg <= max: {v:?}");
        rows.push(v);
    }
    assert_eq!(lines[8], format!("\r {}", "=".repeat(115)));
    let total = lines[9];
    assert!(
        total.starts_with(&format!("\r {:<28}: {:10} ", "Total", "")),
        "{total:?}"
    );
    let t: Vec<f64> = total[42..].split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(t.len(), 7, "{total:?}");
    assert!(
        (t[0] - (rows[0][1] + rows[1][1])).abs() < 0.02,
        "Total IOPS is the sum: {t:?}"
    );
    assert_eq!(t[5], rows[0][6].min(rows[1][6]), "Total min is the min of mins");
    assert_eq!(t[6], rows[0][7].max(rows[1][7]), "Total max is the max of maxes");
    // Percentile blocks follow, one per job.
    let rest = lines[10..].join("\n");
    assert!(rest.contains("Latency percentiles (us"), "{rest}");
    assert_eq!(rest.matches(&"=".repeat(45)).count(), 2);
    assert!(rest.contains("Job: Malloc0 (Core Mask 0x1)\n 50.00000% : "), "{rest}");
    assert!(rest.contains("\n 99.99000% : "), "{rest}");
}

#[test]
fn periodic_reports_with_s() {
    let cfg = common::small_config();
    let (code, out, err) = common::run_bin(&[
        "--json",
        cfg.path().to_str().unwrap(),
        "-T",
        "Null0",
        "-q",
        "4",
        "-t",
        "2",
        "-S",
        "1",
        "--no-pin",
    ]);
    assert_eq!(code, 0, "{err}");
    // Header once at start, once in the final report.
    assert_eq!(out.matches("Device Information").count(), 2, "{out}");
    let periodic = out.matches("\t Null0               : ").count();
    assert!(
        periodic >= 2,
        "one periodic block per second plus the final line:\n{out}"
    );
}
