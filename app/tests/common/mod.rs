//! Harness for keel-tgt end-to-end tests: start the real binary on a private socket, drive it
//! with SPDK's unmodified `spdk-rpc` (installed into `.venv` by `scripts/deps.sh`) or raw bytes.
#![allow(dead_code)]

pub mod nvme;
pub mod nvmf;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// SPDK's client. Missing → the test fails (it must not skip silently).
pub fn spdk_rpc() -> PathBuf {
    let p = workspace().join(".venv/bin/spdk-rpc");
    assert!(
        p.exists(),
        "spdk-rpc not found at {}: run scripts/deps.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

pub struct Target {
    pub child: Child,
    pub sock: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Target {
    /// Starts keel-tgt with `extra` args on a socket in a fresh temp dir and waits until it
    /// accepts connections.
    pub fn start(extra: &[&str]) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("spdk.sock");
        Target::start_at(dir, sock, extra)
    }

    pub fn start_at(dir: tempfile::TempDir, sock: PathBuf, extra: &[&str]) -> Target {
        Target::start_full(dir, sock, extra, Stdio::inherit())
    }

    /// As [`Target::start`], its log (stderr) going to `stderr`; `extra` comes after the
    /// default `-L warn`, so it may override it.
    pub fn start_logging_to(extra: &[&str], stderr: Stdio) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("spdk.sock");
        Target::start_full(dir, sock, extra, stderr)
    }

    fn start_full(dir: tempfile::TempDir, sock: PathBuf, extra: &[&str], stderr: Stdio) -> Target {
        let child = Command::new(env!("CARGO_BIN_EXE_keel-tgt"))
            .arg("-r")
            .arg(&sock)
            .args(["--no-pin", "-L", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let t = Target { child, sock, dir };
        t.wait_ready();
        t
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("keel-tgt did not open {}", self.sock.display());
    }

    /// Runs `spdk-rpc -s SOCK args...` (globals such as --plugin go first in `args`).
    pub fn rpc_with(&self, globals: &[&str], args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(spdk_rpc());
        cmd.env("PYTHONPATH", workspace().join("python"))
            .arg("-s")
            .arg(&self.sock)
            .args(globals)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    pub fn rpc(&self, args: &[&str]) -> Output {
        self.rpc_with(&[], args, None)
    }

    /// stdout of a call that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.rpc(args);
        assert!(
            o.status.success(),
            "spdk-rpc {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// JSON result of a call that must succeed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// The JSON-RPC error of a call that must fail: (code, message).
    pub fn err(&self, args: &[&str]) -> (i64, String) {
        let o = self.rpc(args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "spdk-rpc {args:?} unexpectedly succeeded: {all}");
        parse_error(&all).unwrap_or_else(|| panic!("no JSON-RPC error in output of {args:?}: {all}"))
    }

    /// Sends raw bytes on a fresh connection, half-closes, returns everything received until
    /// the server closes or `wait` passes.
    pub fn raw(&self, bytes: &[u8], wait: Duration) -> String {
        let mut s = UnixStream::connect(&self.sock).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// Asks the target to exit and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = self.rpc(&["spdk_kill_instance", "SIGTERM"]);
        wait_exit(&mut self.child, Duration::from_secs(20)).expect("keel-tgt did not exit")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Extracts `{"code": .., "message": ..}` from spdk-rpc's error printout.
pub fn parse_error(text: &str) -> Option<(i64, String)> {
    let start = text.find("response:")?;
    let rest = &text[start + "response:".len()..];
    let open = rest.find('{')?;
    let mut de = serde_json::Deserializer::from_str(&rest[open..]).into_iter::<serde_json::Value>();
    let v = de.next()?.ok()?;
    Some((v["code"].as_i64()?, v["message"].as_str()?.to_string()))
}

// ---------------------------------------------------------------------------------------------
// NBD exports: the peers (qemu-io, qemu-img, nbdinfo, nbdcopy, fio's nbd engine) and the plugin.

/// The plugin's global options for `rpc_with`.
pub const PLUGIN: &[&str] = &["--plugin", "keel_rpc"];

/// A third-party program a test talks to, found on PATH. Missing → the test fails with the
/// set-up hint (it must not skip).
pub fn peer(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{name} not found: run scripts/deps.sh (scripts/test.sh does)"))
}

/// Runs a peer with `args`; returns its output (not checked).
pub fn run_peer(name: &str, args: &[&str]) -> Output {
    Command::new(peer(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// stdout of a peer run that must succeed.
pub fn peer_ok(name: &str, args: &[&str]) -> String {
    let o = run_peer(name, args);
    assert!(
        o.status.success(),
        "{name} {args:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Target {
    /// JSON result of a plugin command that must succeed.
    pub fn plugin(&self, args: &[&str]) -> serde_json::Value {
        let o = self.rpc_with(PLUGIN, args, None);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{args:?} failed: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if out.trim().is_empty() {
            return serde_json::Value::Null;
        }
        // spdk-rpc prints a string result bare.
        serde_json::from_str(&out).unwrap_or_else(|_| serde_json::Value::String(out.trim().to_string()))
    }

    /// (code, message) of a plugin command that must fail.
    pub fn plugin_err(&self, args: &[&str]) -> (i64, String) {
        let o = self.rpc_with(PLUGIN, args, None);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "{args:?} unexpectedly succeeded: {all}");
        parse_error(&all).unwrap_or_else(|| panic!("no JSON-RPC error in output of {args:?}: {all}"))
    }

    /// Starts the NBD server on a free TCP port of 127.0.0.1 and on a Unix socket in the
    /// target's directory; returns (`127.0.0.1:PORT`, the socket's path).
    pub fn nbd_listen(&self) -> (String, PathBuf) {
        let tcp = self.plugin(&["nbd_server_start", "127.0.0.1:0"]);
        let tcp = tcp.as_str().expect("the bound address").to_string();
        let path = self.dir.path().join("nbd.sock");
        let unix = format!("unix:{}", path.display());
        assert_eq!(self.plugin(&["nbd_server_start", &unix]), serde_json::json!(unix));
        (tcp, path)
    }
}

/// `nbd://HOST:PORT/NAME`.
pub fn nbd_url(tcp: &str, name: &str) -> String {
    format!("nbd://{tcp}/{name}")
}

/// `nbd+unix:///NAME?socket=PATH`.
pub fn nbd_unix_url(path: &Path, name: &str) -> String {
    format!("nbd+unix:///{name}?socket={}", path.display())
}
