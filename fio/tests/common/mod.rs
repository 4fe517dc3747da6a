//! Harness shared by the fio end-to-end tests: finds (or builds) the engine library, runs
//! Debian's `fio` with a job file in a temporary directory, and parses its JSON report.
//!
//! fio is required: a missing fio fails the test (scripts/deps.sh installs it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The engine library: `target/<profile>/libkeel_fio.so` (what `cargo build` produces) or
/// `target/<profile>/deps/libkeel_fio.so` (what the test's own build of the library produced —
/// the crate is a cdylib too, but `cargo test` does not copy it up), whichever is newer, so a
/// test never runs a stale engine. Built with `cargo build -p keel-fio` if neither exists.
pub fn engine_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // The test executable is target/<profile>/deps/<name>-<hash>.
        let exe = std::env::current_exe().expect("test executable path");
        let deps_dir = exe.parent().expect("test executable has a directory").to_path_buf();
        let profile_dir = deps_dir
            .parent()
            .expect("test executable lives in target/<profile>/deps")
            .to_path_buf();
        let newest = || {
            [deps_dir.join("libkeel_fio.so"), profile_dir.join("libkeel_fio.so")]
                .into_iter()
                .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
                .max()
                .map(|(_, p)| p)
        };
        if newest().is_none() {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-p", "keel-fio"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo build -p keel-fio");
            assert!(st.success(), "cargo build -p keel-fio failed");
        }
        newest().unwrap_or_else(|| {
            panic!(
                "libkeel_fio.so missing in {} after building keel-fio",
                profile_dir.display()
            )
        })
    })
    .clone()
}

/// Checks that Debian's fio 3.33 is installed.
pub fn require_fio() {
    let out = Command::new("fio")
        .arg("--version")
        .output()
        .expect("fio is required for this test and is not installed (scripts/deps.sh installs it)");
    let v = String::from_utf8_lossy(&out.stdout);
    assert_eq!(v.trim(), "fio-3.33", "the engine targets Debian's fio 3.33");
}

/// A temporary directory with a Keel config in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// Writes `{"subsystems":[{"subsystem":"bdev","config": calls}]}` as `stack.json`.
    pub fn with_bdevs(calls: Value) -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": calls}]});
        std::fs::write(dir.path().join("stack.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        Scratch { dir }
    }

    /// The default test stack: Null0 (256 MiB, 4 KiB blocks) and Malloc0 (32 MiB, 4 KiB blocks).
    pub fn default_stack() -> Scratch {
        Scratch::with_bdevs(serde_json::json!([
            {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 65536, "block_size": 4096}},
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 4096}}
        ]))
    }

    /// Path of the config.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("stack.json")
    }

    /// A `[global]` section for the engine and this config, followed by `jobs`.
    pub fn job_file(&self, jobs: &str) -> String {
        format!(
            "[global]\nioengine=external:{}\nkeel_json_conf={}\nthread=1\n\n{jobs}",
            engine_path().display(),
            self.config().display()
        )
    }

    /// Runs fio on `job_text` (written to `job.fio`) with JSON output.
    pub fn run(&self, job_text: &str, env: &[(&str, &str)]) -> FioRun {
        let job = self.dir.path().join("job.fio");
        std::fs::write(&job, job_text).unwrap();
        run_fio(self.dir.path(), &job, env)
    }
}

/// Runs Debian's fio on the job file `job` in directory `cwd`, with JSON output.
pub fn run_fio(cwd: &Path, job: &Path, env: &[(&str, &str)]) -> FioRun {
    require_fio();
    let out = Command::new("fio")
        .arg("--output-format=json")
        .arg(job)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("run fio");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = stdout.find('{').and_then(|i| serde_json::from_str(&stdout[i..]).ok());
    FioRun {
        success: out.status.success(),
        stdout,
        stderr,
        json,
    }
}

/// What one fio run produced.
pub struct FioRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
}

/// Per-job totals from fio's JSON report.
#[derive(Debug)]
pub struct JobTotals {
    pub name: String,
    pub error: i64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub trim_bytes: u64,
}

impl FioRun {
    /// The jobs of the report; panics with fio's output if there is no report.
    pub fn jobs(&self) -> Vec<JobTotals> {
        let json = self
            .json
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report:\n{}", self.dump()));
        json["jobs"]
            .as_array()
            .expect("jobs array")
            .iter()
            .map(|j| JobTotals {
                name: j["jobname"].as_str().unwrap_or("").to_string(),
                error: j["error"].as_i64().unwrap_or(-1),
                read_bytes: j["read"]["io_bytes"].as_u64().unwrap_or(0),
                write_bytes: j["write"]["io_bytes"].as_u64().unwrap_or(0),
                trim_bytes: j["trim"]["io_bytes"].as_u64().unwrap_or(0),
            })
            .collect()
    }

    /// Asserts a clean run: exit 0, every job error 0; returns the jobs.
    pub fn assert_ok(&self) -> Vec<JobTotals> {
        assert!(self.success, "fio failed:\n{}", self.dump());
        let jobs = self.jobs();
        assert!(!jobs.is_empty(), "no jobs in the report:\n{}", self.dump());
        for j in &jobs {
            assert_eq!(
                j.error,
                0,
                "job {} reported error {}:\n{}",
                j.name,
                j.error,
                self.dump()
            );
        }
        jobs
    }

    /// Asserts a refused run: non-zero exit and `needle` in fio's output.
    pub fn assert_refused(&self, needle: &str) {
        assert!(!self.success, "fio should have failed:\n{}", self.dump());
        assert!(
            self.stderr.contains(needle) || self.stdout.contains(needle),
            "expected {needle:?} in fio's output:\n{}",
            self.dump()
        );
    }

    /// Both streams, for failure messages.
    pub fn dump(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}
