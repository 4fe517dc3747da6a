//! md as a bdev module: each bdev registry owns its own md state (no process-wide map), examine
//! on appear is the module's examine hook (off until enabled), `fini_modules` stops every array
//! (final clean superblocks, members released), and the registry's save_config plan places an
//! array after its members, in the latest subsystem any of them is in, because the array bdev
//! names them as its bases.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{Rig, MAIN};
use keel_bdev::modules::passthru;
use keel_bdev::{BdevModule, BdevRegistry, ConfigCall, ConfigEntry, ConfigPlan, Subsystem};
use keel_md::MdRegistry;
use serde_json::json;

#[test]
fn each_registry_owns_its_md_state() {
    let one = Rig::new(1);
    let two = Rig::new(1);
    assert!(Arc::ptr_eq(&one.md, &MdRegistry::of(&one.reg)));
    assert!(Arc::ptr_eq(
        &one.md,
        &one.reg.loaded_module::<MdRegistry>().expect("loaded by Rig::new")
    ));
    assert!(!Arc::ptr_eq(&one.md, &two.md));
    assert_eq!((one.md.name(), one.md.subsystem()), ("md", Subsystem::BDEV));
    let names: Vec<&str> = one.reg.subsystems().iter().map(|s| s.name).collect();
    assert_eq!(names, ["bdev"], "md's calls stay in \"bdev\"");

    one.malloc("M0", 4096, 512);
    one.malloc("M1", 4096, 512);
    one.create_simple("r", "raid1", &["M0", "M1"], None).unwrap();
    assert_eq!(one.md.arrays(None).unwrap().len(), 1);
    assert!(two.md.arrays(None).unwrap().is_empty(), "another registry's arrays");
    assert!(two.md.arrays(Some("r")).is_err());

    // The registry owns the module: once the registry and the rig are gone, so is md's state.
    let gone = Arc::downgrade(&two.md);
    drop(two);
    assert!(gone.upgrade().is_none(), "nothing else keeps a registry's md state");
    one.stop("r").unwrap();
    let gone = Arc::downgrade(&one.md);
    drop(one);
    assert!(gone.upgrade().is_none());
}

#[test]
fn fini_stops_every_array_with_clean_superblocks() {
    let r = Rig::new(2);
    for m in ["A0", "A1", "B0", "B1"] {
        r.malloc(m, 4096, 512);
    }
    r.create_simple("a", "raid1", &["A0", "A1"], None).unwrap();
    r.create_simple("b", "raid0", &["B0", "B1"], Some(4)).unwrap();
    assert_eq!(r.write("a", 0, &[0x5a; 4096]), keel_bdev::IoStatus::Success);

    let finished = Arc::new(AtomicBool::new(false));
    let f2 = finished.clone();
    let reg = r.reg.clone();
    r.d.enter(MAIN, move || reg.fini_modules(move || f2.store(true, Ordering::SeqCst)));
    r.wait_until(10, "md's fini", |_| finished.load(Ordering::SeqCst));
    assert!(r.md.arrays(None).unwrap().is_empty(), "every array stopped");
    for name in ["a", "b"] {
        assert!(r.reg.get(name).is_none(), "{name}'s bdev is gone");
    }
    for m in ["A0", "A1", "B0", "B1"] {
        assert_eq!(r.reg.get(m).unwrap().claimed_by(), None, "{m} released");
    }
    for m in ["A0", "A1"] {
        assert!(r.superblock(m).is_clean(), "{m}: stopped clean");
    }
}

#[test]
fn examine_on_appear_is_the_module_hook_and_off_until_enabled() {
    let r = Rig::new(1);
    r.malloc("M0", 4096, 512);
    r.malloc("M1", 4096, 512);
    r.create_simple("r", "raid1", &["M0", "M1"], None).unwrap();
    r.stop("r").unwrap();
    // Members that register again (here: passthrus over them) are not examined while
    // examine-on-appear is off...
    let opts = passthru::PassthruOpts::new;
    r.d.enter(MAIN, || passthru::create(&r.reg, &opts("P0", "M0")).unwrap());
    r.d.enter(MAIN, || passthru::create(&r.reg, &opts("P1", "M1")).unwrap());
    r.run_for_ms(50);
    assert_eq!(r.reg.examines_in_flight(), 0);
    assert!(r.md.arrays(None).unwrap().is_empty());
    // ...and are once it is on: the array assembles from what appears next.
    MdRegistry::enable_auto_assembly(&r.reg);
    r.d.enter(MAIN, || {
        passthru::delete(&r.reg, "P0", || {}).unwrap();
        passthru::delete(&r.reg, "P1", || {}).unwrap();
    });
    r.run_for_ms(50);
    r.d.enter(MAIN, || passthru::create(&r.reg, &opts("P0", "M0")).unwrap());
    r.d.enter(MAIN, || passthru::create(&r.reg, &opts("P1", "M1")).unwrap());
    r.wait_until(10, "auto-assembly", |r| {
        r.reg.examines_in_flight() == 0 && r.md.arrays(Some("r")).is_ok()
    });
    let members: Vec<String> = r.array("r").members.iter().map(|m| m.bdev.clone()).collect();
    assert_eq!(members, ["P0", "P1"]);
}

/// A module whose call creates (says it provides) `M1`, in a subsystem after `"bdev"`: the plan
/// places `M1` there, as it places a dm device in `"dm"`.
struct Late;

const LATE: Subsystem = Subsystem {
    name: "late",
    depends_on: &["bdev"],
};

impl BdevModule for Late {
    fn init(_reg: &Arc<BdevRegistry>) -> Arc<Late> {
        Arc::new(Late)
    }

    fn name(&self) -> &'static str {
        "late"
    }

    fn subsystem(&self) -> Subsystem {
        LATE
    }

    fn config(&self, _reg: &BdevRegistry) -> Vec<ConfigEntry> {
        let call = ConfigCall {
            method: "late_attach",
            params: json!({ "name": "M1" }),
        };
        vec![ConfigEntry::new(call).provides("M1")]
    }
}

/// "method name" of every call of subsystem `sub`.
fn calls(plan: &ConfigPlan, sub: &str) -> Vec<String> {
    plan.calls(sub)
        .unwrap_or_else(|| panic!("no subsystem {sub}"))
        .iter()
        .map(|c| format!("{} {}", c.method, c.params["name"].as_str().unwrap_or("")))
        .collect()
}

#[test]
fn save_config_places_an_array_after_its_members() {
    let r = Rig::new(1);
    r.reg.module::<Late>();
    r.malloc("M0", 4096, 512);
    r.malloc("M1", 4096, 512);
    let opts = passthru::PassthruOpts::new("P0", "M0");
    r.d.enter(MAIN, || passthru::create(&r.reg, &opts).unwrap());
    r.malloc("other", 4096, 512);
    r.create_simple("r", "raid1", &["P0", "M1"], None).unwrap();
    let arr = r.reg.get("r").unwrap();
    assert_eq!(arr.backend().bases(), ["P0", "M1"], "the array names its members");
    // A member in a later subsystem takes the array there, after the call creating it.
    let plan = r.reg.config_plan();
    assert_eq!(plan.names(), ["bdev", "late"]);
    assert_eq!(
        calls(&plan, "bdev"),
        [
            "bdev_malloc_create M0",
            "bdev_passthru_create P0",
            "bdev_malloc_create other"
        ]
    );
    assert_eq!(
        calls(&plan, "late"),
        ["late_attach M1", "bdev_malloc_create M1", "md_assemble r"]
    );
    r.stop("r").unwrap();
}
