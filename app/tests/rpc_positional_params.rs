//! Params are objects (issue 13, item 7): a JSON array as `params` is refused with SPDK's -32603
//! "spdk_json_decode_object failed", for every method, before its handler runs. It used to be
//! decoded positionally: `bdev_null_create ["PN", 2048, 512]` created a bdev, and
//! `spdk_kill_instance ["SIGTERM"]` would stop the target. Configuration files go through the
//! same path: an array there fails the load, naming the entry.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Target;
use serde_json::{json, Value};

/// Sends one request on a fresh connection and returns the response object.
fn call(t: &Target, method: &str, params: Value) -> Value {
    let req = json!({"jsonrpc": "2.0", "method": method, "id": 7, "params": params});
    let out = t.raw(req.to_string().as_bytes(), Duration::from_secs(10));
    let line = out.lines().next().unwrap_or_else(|| panic!("{method}: no response"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{method}: {e}: {line}"))
}

fn assert_decode_error(method: &str, r: &Value) {
    assert_eq!(r["id"], 7, "{method}: {r}");
    assert_eq!(r["error"]["code"], -32603, "{method}: {r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("spdk_json_decode_object failed"), "{method}: {msg}");
    assert!(!msg.contains("struct"), "{method}: decoder internals in '{msg}'");
}

#[test]
fn array_params_are_refused_for_every_method() {
    let t = Target::start(&[]);
    // The case from the issue: nothing is created.
    let r = call(&t, "bdev_null_create", json!(["PN", 2048, 512]));
    assert_decode_error("bdev_null_create", &r);
    assert_eq!(t.json(&["bdev_get_bdevs"]), json!([]), "no bdev was created");
    // Every method callable now; spdk_kill_instance among them must not stop the target.
    let methods = t.json(&["rpc_get_methods", "--current"]);
    let methods: Vec<String> = serde_json::from_value(methods).unwrap();
    assert!(methods.len() > 50, "{methods:?}");
    for m in &methods {
        for params in [json!([]), json!(["SIGTERM"]), json!([{"name": "x"}, 1])] {
            let r = call(&t, m, params.clone());
            assert_decode_error(&format!("{m} {params}"), &r);
        }
    }
    let mut t = t;
    assert!(t.is_running(), "an array made spdk_kill_instance stop the target");
    // Batches: each element is judged on its own.
    let out = t.raw(
        br#"[{"method":"bdev_null_create","id":1,"params":["PB",8,512]},{"method":"spdk_get_version","id":2}]"#,
        Duration::from_secs(10),
    );
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v[0]["error"]["code"], -32603, "{v}");
    assert!(v[1]["result"]["version"].is_string(), "{v}");
    assert!(t.stop().success());
}

#[test]
fn array_params_in_a_config_file_fail_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_null_create","params":{"name":"N0","num_blocks":8,"block_size":512}},
            {"method":"bdev_null_create","params":["PN",2048,512]}]}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel-tgt"))
        .arg("-r")
        .arg(dir.path().join("sock"))
        .args(["--no-pin", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the config loaded: {err}");
    assert!(
        err.contains("entry 1 (bdev_null_create): spdk_json_decode_object failed"),
        "{err}"
    );
}
