//! Helpers shared by keel-perf's scenario tests: the binary with arguments and a small config
//! file. The fault-injecting test bdevs the tests use (a corrupting disk drives verify
//! miscompares, a failing one `-f` / Fail/s, a slow one removal under load) are the shared rig's,
//! `keel_load::testing::disks`.
#![allow(dead_code)]

/// Runs the keel-perf binary with `args`; returns (exit code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel-perf"))
        .args(args)
        .output()
        .expect("run keel-perf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a JSON config with a small malloc and null bdev (fast to create) and returns its file.
pub fn small_config() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut f,
        br#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":4096,"block_size":4096}},
            {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":65536,"block_size":4096}}
        ]}]}"#,
    )
    .unwrap();
    f
}
