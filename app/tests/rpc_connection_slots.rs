//! Idle connections cannot lock everyone out (issue 13, item 8). 64 connections that send
//! nothing used to hold every slot forever, and the next client was dropped without a word. Now
//! a client over the limit gets an answer — -16 "too many RPC connections", its id echoed —
//! instead of a silent close, and connections that hold no request are closed after the idle
//! timeout (`--rpc-idle-timeout`), after which everyone gets in again. A connection whose call
//! is still running is never cut.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Target;
use serde_json::Value;

const IDLE_SECS: u64 = 2;

#[test]
fn idle_connections_are_closed_and_the_next_client_gets_an_answer() {
    let t = Target::start(&["--rpc-idle-timeout", &IDLE_SECS.to_string()]);
    let mut idle: Vec<UnixStream> = (0..64).map(|_| UnixStream::connect(&t.sock).unwrap()).collect();
    // Let the server account for all 64.
    std::thread::sleep(Duration::from_millis(300));

    // The 65th client is answered (not dropped silently), with its id.
    let mut s = UnixStream::connect(&t.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":42}"#)
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let v: Value = serde_json::from_str(out.lines().next().unwrap_or_else(|| panic!("no answer: '{out}'")))
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["id"], 42, "{v}");
    assert_eq!(v["error"]["code"], -16, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many RPC connections"),
        "{v}"
    );
    // spdk-rpc gets the same answer and exits with an error instead of hanging.
    let started = Instant::now();
    let (code, msg) = t.err(&["spdk_get_version"]);
    assert_eq!(code, -16, "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // After the idle timeout the server has closed the idle connections...
    std::thread::sleep(Duration::from_secs(IDLE_SECS) + Duration::from_millis(800));
    for c in &mut idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0, "an idle connection was left open");
    }
    // ...and clients get in again.
    assert!(t.json(&["spdk_get_version"])["version"].is_string());

    // A connection whose call runs longer than the idle timeout keeps it: dm_wait holds the
    // call for 2 × the timeout and still answers on that connection.
    t.ok(&["bdev_malloc_create", "-b", "M0", "4", "512"]);
    let out = t.rpc_with(
        &["--plugin", "keel_rpc"],
        &["dm_create", "w", "--table", "0 8 linear M0 0"],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut s = UnixStream::connect(&t.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        r#"{{"jsonrpc":"2.0","method":"dm_wait","id":5,"params":{{"name":"w","event_nr":0,"timeout_ms":{}}}}}"#,
        IDLE_SECS * 2000
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.contains(&b'\n') {
        let n = s.read(&mut b).expect("the answer of a long call");
        assert!(n > 0, "the server closed a connection whose call was running");
        buf.extend_from_slice(&b[..n]);
    }
    let v: Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["id"], 5, "{v}");
    assert_eq!(v["error"]["code"], -110, "dm_wait timed out as asked: {v}");
    drop(s);
    drop(idle);
    assert!(t.stop().success());
}
