//! Deletes of bdevs a dm table holds, and error texts that name who holds what (issue 13,
//! items 5 and 8).
//!
//! Deleting a bdev that a live or staged dm table names used to succeed: the table kept naming
//! a bdev that was gone, save_config wrote it, and the saved configuration no longer loaded.
//! Now such a delete fails with EBUSY naming the dm device (and the claim holds, nothing
//! changes) — also when the bdev would only go along with another one (a malloc under a
//! passthru the table names), and for `dm_remove --force` of a device another table names.
//! Refusals name the holder: `dm_remove` of an open device says who holds it, a create over a
//! claimed base says which device claimed it. Decoder internals stay out of messages, and md
//! array names with '/' are refused like dm names.

mod common;

use std::time::Duration;

use common::Target;
use serde_json::{json, Value};

/// One call on a fresh connection: the result, or (code, message).
fn call(t: &Target, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let req = json!({"jsonrpc": "2.0", "method": method, "id": 1, "params": params});
    let out = t.raw(req.to_string().as_bytes(), Duration::from_secs(20));
    let v: Value = serde_json::from_str(out.lines().next().unwrap_or_else(|| panic!("{method}: no answer")))
        .unwrap_or_else(|e| panic!("{method}: {e}: {out}"));
    match v.get("error") {
        Some(e) => Err((e["code"].as_i64().unwrap(), e["message"].as_str().unwrap().to_string())),
        None => Ok(v["result"].clone()),
    }
}

fn ok(t: &Target, method: &str, params: Value) -> Value {
    call(t, method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e:?}"))
}

fn busy(t: &Target, method: &str, params: Value, holder: &str) {
    match call(t, method, params.clone()) {
        Ok(v) => panic!("{method} {params} succeeded ({v}); {holder} holds it"),
        Err((code, msg)) => {
            assert_eq!(code, -16, "{method} {params}: {msg}");
            assert!(
                msg.contains(holder),
                "{method} {params}: '{msg}' does not name {holder}"
            );
        }
    }
}

fn malloc(t: &Target, name: &str) {
    ok(
        t,
        "bdev_malloc_create",
        json!({"name": name, "num_blocks": 2048, "block_size": 512}),
    );
}

#[test]
fn deleting_a_bdev_a_dm_table_names_is_refused_naming_the_device() {
    let t = Target::start(&[]);
    for m in ["M0", "M1", "M2", "M3"] {
        malloc(&t, m);
    }
    ok(
        &t,
        "bdev_passthru_create",
        json!({"base_bdev_name": "M1", "name": "P0"}),
    );
    ok(
        &t,
        "dm_create",
        json!({"name": "x", "table": "0 1024 linear M0 0\n1024 1024 linear P0 0"}),
    );
    ok(&t, "dm_create", json!({"name": "y"}));
    ok(&t, "dm_load", json!({"name": "y", "table": "0 2048 linear M2 0"}));
    let tables = ok(&t, "dm_table", json!({}));
    let staged = ok(&t, "dm_table", json!({"inactive": true}));
    let bdevs = ok(&t, "bdev_get_bdevs", json!({}));

    busy(
        &t,
        "bdev_malloc_delete",
        json!({"name": "M0"}),
        "dm device 'x' (live table)",
    );
    busy(
        &t,
        "bdev_malloc_delete",
        json!({"name": "M1"}),
        "dm device 'x' (live table) through 'P0', which goes with it",
    );
    busy(
        &t,
        "bdev_passthru_delete",
        json!({"name": "P0"}),
        "dm device 'x' (live table)",
    );
    busy(
        &t,
        "bdev_malloc_delete",
        json!({"name": "M2"}),
        "dm device 'y' (staged table)",
    );
    // Nothing changed: every bdev is there and still claimed, every table as it was.
    assert_eq!(ok(&t, "bdev_get_bdevs", json!({})), bdevs);
    assert_eq!(ok(&t, "dm_table", json!({})), tables);
    assert_eq!(ok(&t, "dm_table", json!({"inactive": true})), staged);
    for b in ["M0", "P0", "M2"] {
        assert_eq!(ok(&t, "bdev_get_bdevs", json!({"name": b}))[0]["claimed"], true, "{b}");
    }
    // A bdev nobody holds still goes.
    ok(&t, "bdev_malloc_delete", json!({"name": "M3"}));
    // Once the staged table is cleared, its bdev is free to go.
    ok(&t, "dm_clear", json!({"name": "y"}));
    ok(&t, "bdev_malloc_delete", json!({"name": "M2"}));

    // A device another table names: dm_remove names the holder, and --force does not help.
    ok(&t, "dm_create", json!({"name": "z", "table": "0 2048 linear x 0"}));
    busy(
        &t,
        "dm_remove",
        json!({"name": "x"}),
        "held by dm device 'z' (live table)",
    );
    busy(
        &t,
        "dm_remove",
        json!({"name": "x", "force": true}),
        "dm device 'z' (live table)",
    );
    // A passthru over a device: named too; --force removes it (the passthru goes with it).
    ok(&t, "bdev_passthru_create", json!({"base_bdev_name": "z", "name": "PZ"}));
    busy(&t, "dm_remove", json!({"name": "z"}), "held by passthru bdev 'PZ'");
    ok(&t, "dm_remove", json!({"name": "z", "force": true}));
    assert!(
        call(&t, "bdev_get_bdevs", json!({"name": "PZ"})).is_err(),
        "PZ went with z"
    );
    // A create over a claimed base says who claimed it.
    match call(
        &t,
        "bdev_passthru_create",
        json!({"base_bdev_name": "M0", "name": "PX"}),
    ) {
        Err((_, msg)) => assert!(
            msg.contains("claimed by module 'dm' (held by dm device 'x' (live table))"),
            "{msg}"
        ),
        Ok(v) => panic!("passthru over a dm-claimed base: {v}"),
    }
    match call(&t, "dm_create", json!({"name": "w", "table": "0 1024 linear M1 0"})) {
        Err((code, msg)) => {
            assert_eq!(code, -16, "{msg}");
            assert!(msg.contains("held by passthru bdev 'P0'"), "{msg}");
        }
        Ok(v) => panic!("dm over a passthru's base: {v}"),
    }
    assert!(t.stop().success());
}

#[test]
fn messages_name_parameters_not_decoder_internals() {
    let t = Target::start(&[]);
    // A wrong type names the parameter; serde's type names stay out.
    let (code, msg) = call(&t, "spdk_kill_instance", json!({"sig_name": 5})).unwrap_err();
    assert_eq!(code, -32602, "{msg}");
    assert!(
        msg.starts_with("Invalid parameters: sig_name: invalid type: integer `5`"),
        "{msg}"
    );
    let (_, msg) = call(
        &t,
        "bdev_null_create",
        json!({"name": "N", "num_blocks": "x", "block_size": 512}),
    )
    .unwrap_err();
    assert!(
        msg.contains("num_blocks: invalid type: string \"x\", expected u64"),
        "{msg}"
    );
    // The array form that used to say "expected struct Kill with 1 element".
    let (_, msg) = call(&t, "spdk_kill_instance", json!(["SIGTERM", 2])).unwrap_err();
    assert!(!msg.contains("struct") && !msg.contains("Kill"), "{msg}");
    let mut t = t;
    assert!(t.is_running());
    // md array names with '/' are refused like dm names, before anything is touched.
    malloc(&t, "A");
    malloc(&t, "B");
    for (method, params) in [
        (
            "md_create",
            json!({"name": "a/b", "level": "raid1", "members": ["A", "B"]}),
        ),
        (
            "md_create",
            json!({"name": "..", "level": "raid1", "members": ["A", "B"]}),
        ),
        ("md_assemble", json!({"name": "x/y"})),
        (
            "bdev_raid_create",
            json!({"name": "r/1", "raid_level": "raid1", "base_bdevs": ["A", "B"]}),
        ),
    ] {
        let (code, msg) = call(&t, method, params.clone()).unwrap_err();
        assert_eq!(code, -22, "{method} {params}: {msg}");
        assert!(
            msg.contains("invalid parameter 'name'") && msg.contains("cannot contain '/'"),
            "{msg}"
        );
    }
    assert_eq!(ok(&t, "md_get_arrays", json!({})), json!([]));
    assert_eq!(ok(&t, "bdev_get_bdevs", json!({"name": "A"}))[0]["claimed"], false);
    // dm refuses the same names, as before.
    let (code, msg) = call(&t, "dm_create", json!({"name": "a/b"})).unwrap_err();
    assert_eq!(code, -22, "{msg}");
    assert!(t.stop().success());
}

#[test]
fn null_sizes_whose_byte_count_overflows_are_refused() {
    let t = Target::start(&[]);
    // num_blocks 2^63 of 512 bytes: 2^72 bytes.
    for (num_blocks, block_size) in [(1u64 << 63, 512u32), (u64::MAX, 4096), ((u64::MAX >> 9) + 1, 512)] {
        let (code, msg) = call(
            &t,
            "bdev_null_create",
            json!({"name": "Huge", "num_blocks": num_blocks, "block_size": block_size}),
        )
        .unwrap_err();
        assert_eq!(code, -22, "{msg}");
        assert!(
            msg.contains("invalid parameter 'num_blocks'") && msg.contains("2^64 bytes"),
            "{msg}"
        );
    }
    // The largest that fits is fine.
    ok(
        &t,
        "bdev_null_create",
        json!({"name": "Big", "num_blocks": u64::MAX >> 9, "block_size": 512}),
    );
    let b = ok(&t, "bdev_get_bdevs", json!({"name": "Big"}));
    assert_eq!(b[0]["num_blocks"], u64::MAX >> 9);
    // A dm table as large is refused too (its size in bytes would not fit).
    let (code, msg) = call(
        &t,
        "dm_create",
        json!({"name": "z", "table": "0 18446744073709551615 zero"}),
    )
    .unwrap_err();
    assert_eq!(code, -22, "{msg}");
    assert!(msg.contains("2^64 bytes"), "{msg}");
    let mut t = t;
    assert!(t.is_running());
    assert!(t.stop().success());
}
