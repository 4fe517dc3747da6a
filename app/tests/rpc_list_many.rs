//! A full `bdev_get_bdevs` over more bdevs than the main reactor describes in one turn (the
//! listing is built in slices across turns) answers every bdev once, in creation order, each
//! object equal to the one a lookup by name gives; a listing taken midway holds exactly the
//! bdevs created before it.

mod common;

use std::time::Duration;

use common::Target;
use serde_json::{json, Value};

const BDEVS: usize = 700;

#[test]
fn a_full_listing_in_slices_is_complete_and_ordered() {
    let t = Target::start(&[]);
    let mut batch = String::new();
    let mut id = 0;
    let mut req = |method: &str, params: Value| {
        id += 1;
        batch.push_str(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string());
    };
    for k in 0..BDEVS {
        req(
            "bdev_null_create",
            json!({"name": format!("n{k}"), "num_blocks": 8, "block_size": 512}),
        );
        if k == BDEVS / 2 {
            // A listing in the middle of the creates: the ones after it are not in it.
            req("bdev_get_bdevs", json!({}));
        }
    }
    req("bdev_get_bdevs", json!({}));
    req("bdev_get_bdevs", json!({"name": format!("n{}", BDEVS - 1)}));
    req("bdev_get_bdevs", json!({"name": "n0"}));
    let out = t.raw(batch.as_bytes(), Duration::from_secs(60));
    let answers: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), id, "one answer per request");
    for a in &answers {
        assert!(a.get("error").is_none(), "{a}");
    }
    let names = |v: &Value| -> Vec<String> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect()
    };
    let middle = answers.iter().find(|a| a["id"] == json!(BDEVS / 2 + 2)).unwrap();
    let want_middle: Vec<String> = (0..=BDEVS / 2).map(|k| format!("n{k}")).collect();
    assert_eq!(names(middle), want_middle);
    let full = &answers[id - 3];
    let want: Vec<String> = (0..BDEVS).map(|k| format!("n{k}")).collect();
    assert_eq!(names(full), want, "every bdev once, in creation order");
    let list = full["result"].as_array().unwrap();
    assert_eq!(list[BDEVS - 1], answers[id - 2]["result"][0], "same object as a lookup");
    assert_eq!(list[0], answers[id - 1]["result"][0]);
    t.stop();
}
