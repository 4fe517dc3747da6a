//! Every md method through SPDK's unmodified spdk-rpc with Keel's plugin (`--plugin keel_rpc`,
//! mdadm's verbs) on malloc members: md_get_arrays' shape; md_fail → degraded with the member
//! faulty and role-less; md_remove; md_add of a spare → recovery runs to the end; a check finds
//! no mismatches; sync speed limits and their bounds; frozen/idle; md_stop + md_assemble (by
//! members, by uuid, idempotent while running). Bad params fail with -32602 (malformed) or md's
//! errno: -19 unknown array or bdev, -16 an active member removed or a raid0 member failed, -95
//! what raid0 cannot do, -22 bad values.

mod common;

use std::time::{Duration, Instant};

use common::Target;
use serde_json::{json, Value};

const PLUGIN: &[&str] = &["--plugin", "keel_rpc"];

/// stdout of a plugin command that must succeed.
fn md(t: &Target, args: &[&str]) -> String {
    let o = t.rpc_with(PLUGIN, args, None);
    assert!(
        o.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// (code, message) of a plugin command that must fail.
fn md_err(t: &Target, args: &[&str]) -> (i64, String) {
    let o = t.rpc_with(PLUGIN, args, None);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{args:?} unexpectedly succeeded: {all}");
    common::parse_error(&all).unwrap_or_else(|| panic!("no JSON-RPC error in output of {args:?}: {all}"))
}

/// The error code of a raw JSON-RPC call (for params the CLI cannot produce).
fn raw_code(t: &Target, method: &str, params: Value) -> i64 {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let out = t.raw(req.to_string().as_bytes(), Duration::from_secs(5));
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{method}: {e}: {out}"));
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("{method} {params}: no error: {out}"))
}

fn array(t: &Target, name: &str) -> Value {
    let v: Value = serde_json::from_str(&md(t, &["md_get_arrays", name])).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    v[0].clone()
}

/// (bdev, role, state) of every member.
fn members(a: &Value) -> Vec<(String, Value, String)> {
    a["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["bdev"].as_str().unwrap().to_string(),
                m["role"].clone(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls until the array is idle with every role in sync (or panics after 30 s).
fn wait_idle_in_sync(t: &Target, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = array(t, name);
        let all_in_sync = members(&a).iter().filter(|m| m.1.is_u64()).count()
            == a["raid_devices"].as_u64().unwrap() as usize
            && members(&a).iter().all(|m| m.2 == "in_sync" || m.2 == "spare");
        if a["sync_action"] == "idle" && all_in_sync {
            return a;
        }
        assert!(Instant::now() < deadline, "{name} did not finish syncing: {a}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until `ok` holds for the array (or panics after 30 s).
fn wait_for(t: &Target, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = array(t, name);
        if ok(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "{name}: condition not reached: {a}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn md_methods_with_good_and_bad_params() {
    let t = Target::start(&[]);
    for b in ["M0", "M1", "M2", "R0", "R1"] {
        t.ok(&["bdev_malloc_create", "-b", b, "8", "512"]);
    }
    md(&t, &["md_create", "-n", "mir", "-l", "raid1", "M0", "M1"]);
    md(&t, &["md_create", "-n", "str", "-l", "raid0", "-c", "64", "R0", "R1"]);

    // md_get_arrays' shape (what mdadm --detail shows). Created without assume_clean: the
    // initial resync runs, then safe mode marks the array clean.
    wait_idle_in_sync(&t, "mir");
    let a = wait_for(&t, "mir", |a| a["state"] == "clean");
    for key in [
        "name",
        "uuid",
        "level",
        "raid_devices",
        "state",
        "events",
        "members",
        "sync_action",
        "sync_progress",
        "sync_speed_kbs",
        "sync_eta_s",
        "sync_speed_min_kbs",
        "sync_speed_max_kbs",
        "mismatch_cnt",
        "bitmap",
        "active_devices",
        "working_devices",
        "failed_devices",
        "spare_devices",
    ] {
        assert!(a.get(key).is_some(), "md_get_arrays lacks '{key}': {a}");
    }
    assert_eq!(a["level"], "raid1");
    assert_eq!(a["state"], "clean");
    assert_eq!(a["bitmap"]["type"], "internal");
    assert_eq!(
        members(&a),
        vec![
            ("M0".into(), json!(0), "in_sync".into()),
            ("M1".into(), json!(1), "in_sync".into())
        ]
    );
    assert_eq!(
        (a["active_devices"].as_u64(), a["failed_devices"].as_u64()),
        (Some(2), Some(0))
    );
    let uuid = a["uuid"].as_str().unwrap().to_string();
    let s = array(&t, "str");
    assert_eq!((s["level"].as_str(), s["chunk_kb"].as_u64()), (Some("raid0"), Some(64)));
    assert_eq!(s["bitmap"], Value::Null);
    let detail = md(&t, &["md_get_arrays", "--detail", "mir"]);
    assert!(detail.contains("State : clean"), "{detail}");
    assert!(detail.contains("Intent Bitmap : Internal"), "{detail}");

    // Malformed params: -32602.
    for (method, params) in [
        ("md_add", json!({"name": "mir", "bdev": 5})),
        ("md_add", json!({"name": "mir", "bdev": "M2", "spare": true})),
        ("md_remove", json!({"name": "mir"})),
        ("md_fail", json!({"bdev": "M1"})),
        ("md_set_sync_action", json!({"name": "mir"})),
        ("md_set_sync_action", json!({"name": "mir", "action": 3})),
        ("md_set_sync_speed", json!({"name": "mir"})),
        ("md_set_sync_speed", json!({"name": "mir", "min_kbs": -1})),
        ("md_set_sync_speed", json!({"name": "mir", "max_kbs": "10"})),
        ("md_assemble", json!({})),
        ("md_assemble", json!({"members": "M0 M1"})),
        ("md_assemble", json!({"uuid": uuid, "force": "yes"})),
        ("md_assemble", json!({"uuid": uuid, "run": true})),
        ("md_get_arrays", json!({"name": 1})),
    ] {
        assert_eq!(raw_code(&t, method, params.clone()), -32602, "{method} {params}");
    }

    // Unknown array: -19.
    for args in [
        &["md_add", "nope", "M2"][..],
        &["md_remove", "nope", "M1"],
        &["md_fail", "nope", "M1"],
        &["md_set_sync_action", "nope", "check"],
        &["md_set_sync_speed", "nope", "--max", "100"],
        &["md_stop", "nope"],
        &["md_get_arrays", "nope"],
    ] {
        assert_eq!(md_err(&t, args).0, -19, "{args:?}");
    }
    // Unknown bdev, or a bdev that is not a member: -19.
    assert_eq!(md_err(&t, &["md_add", "mir", "nope"]).0, -19);
    assert_eq!(md_err(&t, &["md_fail", "mir", "nope"]).0, -19);
    assert_eq!(md_err(&t, &["md_fail", "mir", "M2"]).0, -19);
    assert_eq!(md_err(&t, &["md_remove", "mir", "M2"]).0, -19);
    // An active member must be failed first: -16. A claimed bdev cannot be added: -16.
    assert_eq!(md_err(&t, &["md_remove", "mir", "M1"]).0, -16);
    assert_eq!(md_err(&t, &["md_add", "mir", "R0"]).0, -16);
    // raid0 has no redundancy: failing a member is -16 (EBUSY, as Linux md), adding one -95.
    assert_eq!(md_err(&t, &["md_fail", "str", "R0"]).0, -16);
    assert_eq!(md_err(&t, &["md_add", "str", "M2"]).0, -95);
    assert_eq!(md_err(&t, &["md_set_sync_action", "str", "check"]).0, -95);
    // Bad values: -22 naming the parameter.
    let (code, msg) = raw_err(&t, "md_set_sync_action", json!({"name": "mir", "action": "scrub"}));
    assert_eq!(code, -22, "{msg}");
    assert!(msg.contains("action"), "{msg}");

    // Sync speed limits and their bounds.
    md(&t, &["md_set_sync_speed", "mir", "--min", "100", "--max", "50000"]);
    let a = array(&t, "mir");
    assert_eq!(
        (a["sync_speed_min_kbs"].as_u64(), a["sync_speed_max_kbs"].as_u64()),
        (Some(100), Some(50000))
    );
    md(&t, &["md_set_sync_speed", "mir", "--max", "60000"]);
    assert_eq!(array(&t, "mir")["sync_speed_min_kbs"], 100);
    let (code, msg) = md_err(&t, &["md_set_sync_speed", "mir", "--min", "70000"]);
    assert_eq!(code, -22, "{msg}");
    assert!(msg.contains("min_kbs"), "{msg}");
    assert_eq!(md_err(&t, &["md_set_sync_speed", "mir", "--max", "0"]).0, -22);
    assert_eq!(array(&t, "mir")["sync_speed_max_kbs"], 60000);

    // Fail → degraded, the member faulty without a role.
    let ev = array(&t, "mir")["events"].as_u64().unwrap();
    md(&t, &["md_fail", "mir", "M1"]);
    let a = array(&t, "mir");
    let state = a["state"].as_str().unwrap();
    assert!(state == "clean, degraded" || state == "active, degraded", "{a}");
    assert!(
        members(&a).contains(&("M1".into(), Value::Null, "faulty".into())),
        "{a}"
    );
    assert_eq!(a["failed_devices"], 1);
    assert_eq!(md_err(&t, &["md_fail", "mir", "M1"]).0, -19, "already faulty");

    // Remove (right after the fail) → gone; the events moved on.
    md(&t, &["md_remove", "mir", "M1"]);
    let a = wait_for(&t, "mir", |a| a["events"].as_u64().unwrap() > ev);
    assert_eq!(members(&a), vec![("M0".into(), json!(0), "in_sync".into())]);

    // Add a spare → recovery into the empty role, to the end.
    md(&t, &["md_add", "mir", "M2"]);
    let a = wait_idle_in_sync(&t, "mir");
    assert_eq!(a["last_sync_action"], "recover", "{a}");
    assert_eq!(
        members(&a),
        vec![
            ("M0".into(), json!(0), "in_sync".into()),
            ("M2".into(), json!(1), "in_sync".into())
        ]
    );
    assert_eq!(a["state"], "clean");
    // The released member can be added back: a spare.
    md(&t, &["md_add", "mir", "M1"]);
    let a = array(&t, "mir");
    assert!(members(&a).contains(&("M1".into(), Value::Null, "spare".into())), "{a}");
    assert_eq!(a["spare_devices"], 1);

    // A check finds the mirrors equal.
    md(&t, &["md_set_sync_action", "mir", "check"]);
    let a = wait_for(&t, "mir", |a| {
        a["sync_action"] == "idle" && a["last_sync_action"] == "check"
    });
    assert_eq!(a["mismatch_cnt"], 0, "{a}");

    // frozen / idle.
    md(&t, &["md_set_sync_action", "mir", "frozen"]);
    assert_eq!(array(&t, "mir")["sync_action"], "frozen");
    md(&t, &["md_set_sync_action", "mir", "idle"]);
    assert_eq!(array(&t, "mir")["sync_action"], "idle");

    // Spare removal releases it.
    md(&t, &["md_remove", "mir", "M1"]);
    assert!(!members(&array(&t, "mir")).iter().any(|m| m.0 == "M1"));

    // An open array does not stop (-16, naming the holder): a dm table over it.
    md(&t, &["dm_create", "over", "--table", "0 64 linear mir 0"]);
    let (code, msg) = md_err(&t, &["md_stop", "mir"]);
    assert_eq!(code, -16, "{msg}");
    assert!(msg.contains("dm device 'over'"), "{msg}");
    assert_eq!(array(&t, "mir")["name"], "mir", "still running");
    md(&t, &["dm_remove", "over"]);
    // md_create over members that carry a superblock (M1, removed above): -16 without force.
    t.ok(&["bdev_malloc_create", "-b", "F0", "8", "512"]);
    let (code, msg) = md_err(&t, &["md_create", "-n", "fresh", "-l", "raid1", "F0", "M1"]);
    assert_eq!(code, -16, "{msg}");
    assert!(
        msg.contains("'M1' holds a v1.2 superblock") && msg.contains("force"),
        "{msg}"
    );

    // Stop, then assemble: by members, idempotently by uuid while running, by uuid alone.
    md(&t, &["md_stop", "mir"]);
    assert_eq!(md_err(&t, &["md_get_arrays", "mir"]).0, -19);
    let out = md(&t, &["md_assemble", "-n", "mir", "-u", &uuid, "M0", "M2"]);
    assert_eq!(out.trim(), "mir");
    let a = wait_idle_in_sync(&t, "mir");
    assert_eq!(a["uuid"], uuid.as_str());
    assert_eq!(
        members(&a),
        vec![
            ("M0".into(), json!(0), "in_sync".into()),
            ("M2".into(), json!(1), "in_sync".into())
        ]
    );
    assert_eq!(md(&t, &["md_assemble", "-u", &uuid]).trim(), "mir");
    assert_eq!(md_err(&t, &["md_assemble", "-n", "other", "-u", &uuid]).0, -17);
    md(&t, &["md_stop", "mir"]);
    assert_eq!(md(&t, &["md_assemble", "-n", "mir", "-u", &uuid]).trim(), "mir");
    assert_eq!(wait_idle_in_sync(&t, "mir")["state"], "clean");
    // A bdev without a superblock cannot be assembled.
    t.ok(&["bdev_malloc_create", "-b", "Z", "8", "512"]);
    let (code, msg) = md_err(&t, &["md_assemble", "-n", "z", "Z"]);
    assert!(code < 0 && code != -32602, "{code} {msg}");
    md(&t, &["md_stop", "mir"]);
    md(&t, &["md_stop", "str"]);
    assert_eq!(md(&t, &["md_get_arrays"]).trim(), "[]");
}

/// (code, message) of a raw JSON-RPC call that must fail.
fn raw_err(t: &Target, method: &str, params: Value) -> (i64, String) {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let out = t.raw(req.to_string().as_bytes(), Duration::from_secs(5));
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{method}: {e}: {out}"));
    (
        v["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("{method}: no error: {out}")),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}
