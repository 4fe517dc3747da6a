//! Bad input on the socket: malformed JSON, wrong envelopes, wrong param types, unknown params,
//! oversized requests, batches, notifications, many and half-closed connections. The target
//! answers as SPDK does and keeps serving.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Target;

const W: Duration = Duration::from_secs(5);

#[test]
fn wire_level_bad_input() {
    let mut t = Target::start(&[]);
    // Socket is owner-only.
    let mode = std::fs::metadata(&t.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Malformed JSON: parse error, then the connection closes.
    let out = t.raw(b"{\"method\": ", W);
    assert_eq!(out, "", "incomplete value then EOF: nothing to answer");
    let out = t.raw(b"{\"method\" 1}", W);
    assert_eq!(
        out,
        "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"Parse error\"}}\n"
    );
    // Envelope problems.
    for bad in [
        &b"5"[..],
        br#"{"id":1}"#,
        br#"{"method":"spdk_get_version","id":1,"x":2}"#,
        br#"{"jsonrpc":"1.0","method":"a","id":1}"#,
    ] {
        let out = t.raw(bad, W);
        assert!(out.contains("-32600"), "{}: {out}", String::from_utf8_lossy(bad));
    }
    // Wrong types and unknown params.
    let out = t.raw(
        br#"{"method":"bdev_malloc_create","id":2,"params":{"num_blocks":"x","block_size":512}}"#,
        W,
    );
    assert!(
        out.contains("\"id\":2") && out.contains("-32603") && out.contains("invalid type"),
        "{out}"
    );
    let out = t.raw(
        br#"{"method":"bdev_null_create","id":3,"params":{"name":"a","num_blocks":8,"block_size":512,"zzz":1}}"#,
        W,
    );
    assert!(out.contains("unknown field"), "{out}");
    let out = t.raw(br#"{"method":"spdk_get_version","id":4,"params":{"a":1}}"#, W);
    assert!(out.contains("-32602"), "{out}");
    // Oversized request: refused and closed.
    let mut big = b"{\"method\":\"spdk_get_version\",\"id\":5,\"params\":{\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 300 * 1024));
    let out = t.raw(&big, W);
    assert!(out.contains("-32700"), "{out}");
    // Several requests in one write, pretty-printed, string ids; a notification gets no answer.
    let out = t.raw(
        b"{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"spdk_get_version\",\n  \"id\": \"a\"\n}{\"method\":\"framework_wait_init\"}{\"method\":\"framework_wait_init\",\"id\":7}",
        W,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("\"id\":\"a\""));
    assert_eq!(lines[1], "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":true}");
    // Batches.
    let out = t.raw(b"[]", W);
    assert!(out.contains("-32600") && !out.starts_with('['), "{out}");
    let out = t.raw(
        br#"[{"method":"framework_wait_init","id":1},{"method":"nope","id":2},3,{"method":"framework_wait_init"}]"#,
        W,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["result"], true);
    assert_eq!(arr[1]["error"]["code"], -32601);
    assert_eq!(arr[2]["error"]["code"], -32600);

    // Many concurrent connections, some half-closed without sending, some idle: still serving.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(UnixStream::connect(&t.sock).unwrap());
    }
    for s in idle.iter().take(20) {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let v = t.json(&["spdk_get_version"]);
    assert_eq!(v["fields"]["minor"], 9);
    drop(idle);
    // Kept-open connection: many calls in sequence.
    let mut s = UnixStream::connect(&t.sock).unwrap();
    s.set_read_timeout(Some(W)).unwrap();
    for i in 0..200 {
        s.write_all(format!("{{\"jsonrpc\":\"2.0\",\"method\":\"framework_wait_init\",\"id\":{i}}}").as_bytes())
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"result\":true}}\n")
        );
    }
    assert!(t.is_running());
    assert!(t.stop().success());
}

#[test]
fn stale_socket_is_replaced_and_live_one_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spdk.sock");
    // A stale socket file left by a dead process.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let sock2 = sock.clone();
    let t = Target::start_at(dir, sock, &[]);
    assert_eq!(t.json(&["spdk_get_version"])["fields"]["major"], 26);
    // A second target on the same path refuses to start and leaves the first one serving.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel-tgt"))
        .args(["--no-pin", "-L", "error", "-r"])
        .arg(&sock2)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    assert_eq!(t.json(&["spdk_get_version"])["fields"]["major"], 26);
    assert!(t.stop().success());
    assert!(!sock2.exists(), "socket removed on shutdown");
}
