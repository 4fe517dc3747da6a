//! Invalid input to the binary: a clear message on stderr naming the problem, nothing on
//! stdout's report, exit status 1 (bdevperf exits 1 on invalid parameters).

mod common;

use std::io::Write;

#[test]
fn bad_input_exits_1_with_a_clear_message() {
    let cfg = common::small_config();
    let cfg_path = cfg.path().to_str().unwrap().to_string();
    let mut malformed = tempfile::NamedTempFile::new().unwrap();
    malformed
        .write_all(br#"{"subsystems": [ {"subsystem": "bdev", "config": [ }"#)
        .unwrap();
    let malformed_path = malformed.path().to_str().unwrap().to_string();
    let mut unknown = tempfile::NamedTempFile::new().unwrap();
    unknown
        .write_all(br#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_bogus_create","params":{}}]}]}"#)
        .unwrap();
    let unknown_path = unknown.path().to_str().unwrap().to_string();
    let c = cfg_path.as_str();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-w", "randomread", "-t", "1"], "unknown workload 'randomread'"),
        (
            vec!["-q", "0", "-t", "1"],
            "invalid parameter -q: queue depth must be greater than 0",
        ),
        (vec!["-q", "x", "-t", "1"], "invalid parameter -q"),
        (
            vec!["-t", "0"],
            "invalid parameter -t: run time in seconds must be greater than 0",
        ),
        (vec!["-o", "12q", "-t", "1"], "invalid IO size '12q'"),
        (
            vec!["--json", c, "-o", "1000", "-t", "1", "-T", "Malloc0"],
            "IO size (1000) is not a multiple of the data block size (4096) of bdev Malloc0",
        ),
        (vec!["--json", c, "-T", "Nope", "-t", "1"], "bdev 'Nope' not found"),
        (vec!["-c", malformed_path.as_str(), "-t", "1"], "invalid JSON"),
        (
            vec!["-c", unknown_path.as_str(), "-t", "1"],
            "unknown method 'bdev_bogus_create'",
        ),
        (
            vec!["-c", "/nonexistent/keel.json", "-t", "1"],
            "cannot read config file /nonexistent/keel.json",
        ),
        (
            vec!["-m", "0xq", "-t", "1"],
            "invalid parameter -m: invalid core mask '0xq'",
        ),
        (vec!["-m", "0x0", "-t", "1"], "invalid core mask '0x0'"),
        (
            vec!["-w", "randrw", "-t", "1"],
            "read percentage (-M 0..100) is required for workload randrw",
        ),
        (
            vec!["-w", "rw", "-M", "150", "-t", "1"],
            "read percentage must be 0..100",
        ),
        (vec!["--output-format", "xml"], "invalid value 'xml'"),
        (vec!["--bogus"], "unexpected argument '--bogus'"),
    ];
    for (args, want) in cases {
        let (code, out, err) = common::run_bin(&args);
        assert_eq!(code, 1, "{args:?}: stdout {out} stderr {err}");
        assert!(err.contains(want), "{args:?}: stderr lacks '{want}':\n{err}");
        assert!(!out.contains("Latency(us)"), "{args:?} ran anyway:\n{out}");
    }
}

#[test]
fn help_explains_the_embedded_default() {
    let (code, out, _) = common::run_bin(&["--help"]);
    assert_eq!(code, 0);
    for want in [
        "Null0",
        "Malloc0",
        "-q 128 -o 4096 -w randread -t 3",
        "--output-format",
        "--no-pin",
        "-C",
    ] {
        assert!(out.contains(want), "--help lacks {want}:\n{out}");
    }
}
