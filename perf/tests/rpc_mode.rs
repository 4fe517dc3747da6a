//! keel-perf -z as bdevperf -z, driven by SPDK's own Python client from the `spdk` package:
//! `perform_tests` (sent as bdevperf.py sends it, through `spdk.rpc.client.JSONRPCClient`)
//! starts a run and answers bdevperf's result object; other methods are served too, so the
//! stock `spdk-rpc` enables a histogram before the run and `bdev_get_histogram` after it, and
//! the histogram decodes with SPDK's documented layout (a decoder written here in Python from
//! `spdk/histogram_data.h`'s rules) to exactly the run's I/O count. Refusals as bdevperf's;
//! SIGTERM ends the process cleanly.
//!
//! (The `spdk` package ships no `bdevperf.py`; the client class it uses is the package's.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn venv(bin: &str) -> PathBuf {
    let p = workspace().join(".venv/bin").join(bin);
    assert!(p.exists(), "{} missing: run scripts/deps.sh", p.display());
    p
}

/// `perform_tests` with `params` (a Python dict literal) through the spdk package's client;
/// prints the result as JSON, or `ERROR <code> <message>`.
const PERFORM: &str = r#"
import json, sys
from spdk.rpc.client import JSONRPCClient, JSONRPCException
sock, params = sys.argv[1], eval(sys.argv[2])
client = JSONRPCClient(sock, timeout=max(60, params.get("time_in_sec", 0) + 5))
try:
    print(json.dumps(client.call("perform_tests", params)))
except JSONRPCException as e:
    err = json.loads(e.message.split("response:\n", 1)[1])
    print("ERROR", err["code"], err["message"])
"#;

/// SPDK's histogram layout (spdk/histogram_data.h): 2^g buckets per range, ranges min..=max;
/// range r > 0 starts at 2^(r+g-1) and its buckets are 2^(r-1) wide. Prints the total count
/// and the lowest and highest non-empty bucket's bounds in microseconds.
const DECODE: &str = r#"
import base64, json, struct, sys
h = json.load(sys.stdin)
g = h.get("granularity", h.get("bucket_shift"))
lo_r, hi_r = h.get("min_range", 0), h.get("max_range", 64 - g)
data = base64.b64decode(h["histogram"])
n = (hi_r - lo_r + 1) << g
assert len(data) == 8 * n, (len(data), n)
counts = struct.unpack("<%dQ" % n, data)
def end(r, i):
    # SPDK's bucket start of the next bucket: where bucket (r, i) ends.
    return i + 1 if r == 0 else (1 << (r + g - 1)) + ((i + 1) << (r - 1))
total, seen, prev = 0, [], 0
for k, c in enumerate(counts):
    r, i = lo_r + (k >> g), k & ((1 << g) - 1)
    e = end(r, i)
    if c:
        seen.append((prev, e))
        total += c
    prev = e
us = 1e6 / h["tsc_rate"]
out = {"total": total}
if seen:
    out.update(min_us=seen[0][0] * us, max_us=seen[-1][1] * us)
print(json.dumps(out))
"#;

struct Perf {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Perf {
    fn start() -> Perf {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("null.json");
        std::fs::write(
            &cfg,
            r#"{"subsystems":[{"subsystem":"bdev","config":[
                {"method":"bdev_null_create","params":{"name":"N0","num_blocks":65536,"block_size":512}}]}]}"#,
        )
        .unwrap();
        let sock = dir.path().join("perf.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_keel-perf"))
            .args(["--no-pin", "-z", "-r"])
            .arg(&sock)
            .arg("--json")
            .arg(&cfg)
            .args(["-q", "4", "-o", "4096", "-w", "randread", "-t", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "keel-perf -z never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Perf { child, sock, _dir: dir }
    }

    fn rpc(&self, args: &[&str]) -> Output {
        Command::new(venv("spdk-rpc"))
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.rpc(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// A refused call's output (spdk-rpc prints the error response), both streams.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.rpc(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn perform(&self, params: &str) -> Result<Value, (i64, String)> {
        let o = Command::new(venv("python3"))
            .args(["-c", PERFORM])
            .arg(&self.sock)
            .arg(params)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8(o.stdout).unwrap();
        match text.strip_prefix("ERROR ") {
            Some(rest) => {
                let (code, msg) = rest.trim().split_once(' ').unwrap();
                Err((code.parse().unwrap(), msg.to_string()))
            }
            None => Ok(serde_json::from_str(&text).unwrap()),
        }
    }
}

impl Drop for Perf {
    /// A failed assertion must not leave the server running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn decode(histogram_json: &str) -> Value {
    let mut child = Command::new(venv("python3"))
        .args(["-c", DECODE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(histogram_json.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn perform_tests_runs_and_histograms_decode_as_spdk() {
    let mut p = Perf::start();
    // Other methods are served: the bdev is there; a histogram, reset counters.
    assert!(p.ok(&["bdev_get_bdevs", "-b", "N0"]).contains("\"N0\""));
    let (code, _) = p.perform("{'workload_type': 'bogus'}").unwrap_err();
    assert_eq!(code, -32700, "an invalid parameter is bdevperf's parse error");
    let e = p.fails(&["bdev_get_histogram", "N0"]);
    assert!(
        e.contains("-32603") && e.contains("Bad address"),
        "no histogram yet: {e}"
    );
    p.ok(&["bdev_enable_histogram", "N0", "--histogram"]);
    p.ok(&["bdev_reset_iostat", "-b", "N0"]);

    // Run 1: the command line's parameters with bdevperf.py's overrides.
    let r = p
        .perform("{'time_in_sec': 1, 'queue_depth': 8, 'io_size': '4096', 'workload_type': 'randread'}")
        .expect("perform_tests");
    assert_eq!(r["core_count"], 1);
    let job = &r["results"][0];
    assert_eq!(
        (job["job"].as_str(), job["status"].as_str()),
        (Some("N0"), Some("finished"))
    );
    assert_eq!(
        (job["queue_depth"].as_u64(), job["io_size"].as_u64()),
        (Some(8), Some(4096))
    );
    assert_eq!(job["workload"], "randread");
    assert!(job["iops"].as_f64().unwrap() > 0.0);

    // The histogram counts exactly the reads of the run, in SPDK's encoding.
    let reads = serde_json::from_str::<Value>(&p.ok(&["bdev_get_iostat", "--names", "N0"])).unwrap()["bdevs"][0]
        ["num_read_ops"]
        .as_u64()
        .unwrap();
    let h = p.ok(&["bdev_get_histogram", "N0"]);
    let hv: Value = serde_json::from_str(&h).unwrap();
    assert_eq!(
        (hv["bucket_shift"].as_u64(), hv["granularity"].as_u64()),
        (Some(7), Some(7))
    );
    let d = decode(&h);
    assert_eq!(
        d["total"].as_u64(),
        Some(reads),
        "histogram {d} vs iostat reads {reads}"
    );
    // Decoded bounds bracket the run's exact latencies (buckets are coarser, never off).
    assert!(d["min_us"].as_f64().unwrap() <= job["avg_latency_us"].as_f64().unwrap());
    assert!(d["max_us"].as_f64().unwrap() >= job["avg_latency_us"].as_f64().unwrap());

    // Overrides stay for the next call; an opc histogram records only its type.
    p.ok(&["bdev_enable_histogram", "N0", "--histogram", "-o", "write"]);
    p.ok(&["bdev_enable_histogram", "N0", "--no-histogram"]);
    p.ok(&["bdev_enable_histogram", "N0", "--histogram", "-o", "write"]);
    let r = p.perform("{'time_in_sec': 1}").expect("second run");
    assert_eq!(r["results"][0]["queue_depth"], 8, "earlier overrides stay");
    let d = decode(&p.ok(&["bdev_get_histogram", "N0"]));
    assert_eq!(d["total"], 0, "a write histogram counts no reads");
    let e = p.fails(&["bdev_enable_histogram", "N0", "--histogram", "-o", "bogus"]);
    assert!(e.contains("Invalid Io type"), "{e}");
    let e = p.fails(&["bdev_enable_histogram", "Nope", "--histogram"]);
    assert!(e.contains("-19"), "{e}");

    // SIGTERM: a clean exit.
    let pid = p.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "keel-perf -z did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
