//! dm as a bdev module: each bdev registry owns its own dm state (no process-wide map), the
//! registry lists the `"dm"` subsystem once dm is loaded, and the registry's save_config plan
//! places dm's calls and the layers of other modules around them — a layer over a device after
//! that device, a device reloaded onto such a layer after the layer (though it is older than the
//! device under the layer), staged tables after their devices, suspends last, devices without a
//! bdev after the others.

mod common;

use std::sync::Arc;

use common::{Rig, MAIN};
use keel_bdev::modules::passthru;
use keel_bdev::{BdevModule, ConfigPlan};
use keel_dm::{DmRegistry, SUBSYSTEM};

/// "method name" of every call of subsystem `sub`.
fn calls(plan: &ConfigPlan, sub: &str) -> Vec<String> {
    plan.calls(sub)
        .unwrap_or_else(|| panic!("no subsystem {sub}"))
        .iter()
        .map(|c| format!("{} {}", c.method, c.params["name"].as_str().unwrap_or("")))
        .collect()
}

#[test]
fn each_registry_owns_its_dm_state() {
    let one = Rig::new(1);
    let two = Rig::new(1);
    assert!(Arc::ptr_eq(&one.dm, &DmRegistry::of(&one.reg)));
    assert!(Arc::ptr_eq(
        &one.dm,
        &one.reg.loaded_module::<DmRegistry>().expect("loaded by Rig::new")
    ));
    assert!(!Arc::ptr_eq(&one.dm, &two.dm));
    assert_eq!((one.dm.name(), one.dm.subsystem()), ("dm", SUBSYSTEM));
    let names: Vec<&str> = one.reg.subsystems().iter().map(|s| s.name).collect();
    assert_eq!(names, ["bdev", "dm"]);

    one.malloc("M0", 2048, 512);
    one.create("x", Some("0 1024 linear M0 0")).unwrap();
    assert_eq!(one.dm.list().len(), 1);
    assert!(two.dm.list().is_empty(), "another registry's devices");
    assert!(two.dm.info("x").is_err());

    // The registry owns the module: once the registry and the rig are gone, so is dm's state.
    let gone = Arc::downgrade(&two.dm);
    drop(two);
    assert!(gone.upgrade().is_none(), "nothing else keeps a registry's dm state");
    one.remove("x", false).unwrap();
    let gone = Arc::downgrade(&one.dm);
    drop(one);
    assert!(gone.upgrade().is_none());
}

#[test]
fn the_save_config_plan_places_dm_calls_and_the_layers_around_them() {
    let rig = Rig::new(2);
    rig.malloc("M0", 4096, 512);
    rig.malloc("M1", 4096, 512);
    rig.create("n", None).unwrap();
    rig.create("b", Some("0 1024 linear M1 0")).unwrap();
    rig.create("a", Some("0 2048 linear M0 0")).unwrap();
    passthru::create(&rig.reg, &passthru::PassthruOpts::new("P0", "a")).unwrap();
    rig.create("s", Some("0 1024 zero")).unwrap();
    rig.suspend("s", false).unwrap();
    // b (older than a) now maps the passthru over a; a has a staged table.
    rig.load("b", "0 1024 linear P0 0").unwrap();
    rig.resume("b").unwrap();
    rig.load("a", "0 2048 linear M1 0").unwrap();
    rig.malloc("M2", 4096, 512);
    let order: Vec<String> = rig.reg.list().iter().map(|b| b.name().to_string()).collect();
    assert_eq!(order, ["M0", "M1", "b", "a", "P0", "s", "M2"]);

    let plan = rig.d.enter(MAIN, || rig.reg.config_plan());
    assert_eq!(plan.names(), ["bdev", "dm"]);
    assert_eq!(
        calls(&plan, "bdev"),
        [
            "bdev_malloc_create M0",
            "bdev_malloc_create M1",
            "bdev_malloc_create M2"
        ]
    );
    assert_eq!(
        calls(&plan, "dm"),
        [
            "dm_create a",
            "bdev_passthru_create P0",
            "dm_create b",
            "dm_load a",
            "dm_create s",
            "dm_create n",
            "bdev_wait_for_examine ",
            "dm_suspend s"
        ]
    );
    let dm_calls = plan.calls("dm").unwrap();
    assert_eq!(dm_calls[0].params["table"], "0 2048 linear M0 0\n");
    assert_eq!(dm_calls[2].params["table"], "0 1024 linear P0 0\n");
    assert_eq!(dm_calls[3].params["table"], "0 2048 linear M1 0\n");
    assert_eq!(dm_calls[5].params.get("table"), None, "n has no table");

    // What a device's bdev stands on is its live table.
    let a = rig.reg.get("a").unwrap();
    assert_eq!(a.backend().bases(), ["M0"]);
    rig.resume("a").unwrap();
    assert_eq!(a.backend().bases(), ["M1"]);
    assert_eq!(rig.reg.get("b").unwrap().backend().bases(), ["P0"]);
}
