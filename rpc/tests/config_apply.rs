//! Applying configuration files through the method handlers on the deterministic driver.

use std::sync::{Arc, Mutex};

use keel_bdev::BdevRegistry;
use keel_reactor::{CoreId, TestDriver};
use keel_rpc::config::{apply, ConfigFile};

fn load(d: &TestDriver, reg: &Arc<BdevRegistry>, text: &str) -> Result<(), keel_rpc::RpcError> {
    let cfg = ConfigFile::parse(text)?;
    let out = Arc::new(Mutex::new(None));
    let o2 = out.clone();
    let r2 = reg.clone();
    d.enter(CoreId(0), move || {
        apply(r2, cfg, move |r| *o2.lock().unwrap() = Some(r))
    });
    assert!(
        d.run_until(10_000, || out.lock().unwrap().is_some()),
        "config load never finished"
    );
    let r = out.lock().unwrap().take().unwrap();
    r
}

#[test]
fn builds_the_stack_in_file_order() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    load(
        &d,
        &reg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":256,"block_size":4096,"uuid":"0b6a4b5e-4d39-4d8e-9a59-1b1b1a1c2d3e"}},
            {"method":"bdev_null_create","params":{"name":"N0","num_blocks":1024,"block_size":512}},
            {"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512}},
            {"method":"bdev_wait_for_examine"}
        ]}]}"#,
    )
    .unwrap();
    let names: Vec<String> = reg.list().iter().map(|b| b.name().to_string()).collect();
    assert_eq!(names, ["M0", "N0", "Malloc0"]);
    assert_eq!(
        reg.get("M0").unwrap().info().uuid.to_string(),
        "0b6a4b5e-4d39-4d8e-9a59-1b1b1a1c2d3e"
    );
    assert_eq!(reg.get("N0").unwrap().info().num_blocks, 1024);
}

#[test]
fn a_failing_entry_is_named_and_stops_the_load() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    let e = load(
        &d,
        &reg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_null_create","params":{"name":"N0","num_blocks":1024,"block_size":512}},
            {"method":"bdev_null_create","params":{"name":"N1","num_blocks":1024,"block_size":1000}},
            {"method":"bdev_null_create","params":{"name":"N2","num_blocks":1024,"block_size":512}}
        ]}]}"#,
    )
    .unwrap_err();
    assert!(e.message.contains("entry 1 (bdev_null_create)"), "{}", e.message);
    assert!(e.message.contains("block_size"), "{}", e.message);
    assert!(reg.get("N2").is_none());

    let e = load(
        &d,
        &reg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_null_create","params":{"name":"X","num_blocks":"many","block_size":512}}]}]}"#,
    )
    .unwrap_err();
    assert_eq!(e.code, keel_rpc::INTERNAL_ERROR);
    assert!(e.message.contains("invalid type"), "{}", e.message);
    let e = load(
        &d,
        &reg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_null_create","params":{"name":"X","num_blocks":8,"block_size":512,"bogus":1}}]}]}"#,
    )
    .unwrap_err();
    assert!(e.message.contains("unknown field `bogus`"), "{}", e.message);
    assert!(reg.get("X").is_none());
}

#[test]
fn delete_methods_finish_after_removal() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    load(
        &d,
        &reg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_null_create","params":{"name":"N0","num_blocks":8,"block_size":512}},
            {"method":"bdev_null_delete","params":{"name":"N0"}}
        ]}]}"#,
    )
    .unwrap();
    assert!(reg.list().is_empty());
    let e = load(
        &d,
        &reg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_delete","params":{"name":"N0"}}]}]}"#,
    )
    .unwrap_err();
    assert_eq!(e.code, -19);
}
