//! The module facility end to end on the deterministic driver: per-registry module states
//! created on first use, the examine hook and its in-flight count, fini in consumer-first order
//! with completions from other cores, downcasting a bdev's backend, the error and delay RPC
//! functions finding their own bdevs (and refusing others), and save_config planned across
//! subsystems with a dm-like module and the real stacking layers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use keel_bdev::modules::delay::{self, DelayOpts};
use keel_bdev::modules::error::{self, ErrorOpts, InjectOpts};
use keel_bdev::modules::passthru::{self, PassthruOpts};
use keel_bdev::modules::{malloc, null};
use keel_bdev::{
    BackendChannel, Bdev, BdevBackend, BdevError, BdevInfo, BdevModule, BdevParams, BdevRegistry, ChannelCx,
    ConfigCall, ConfigEntry, ExamineToken, IoBox, IoCaps, IoStatus, ModuleDone, Submit, Subsystem,
};
use keel_reactor::{current, CoreId, Cores, TestDriver};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Fake modules
// ---------------------------------------------------------------------------------------------

/// How many `Counter` modules were ever built (all registries of this test binary).
static COUNTER_INITS: AtomicUsize = AtomicUsize::new(0);

/// A module with nothing but state.
struct Counter {
    reg: Weak<BdevRegistry>,
    hits: AtomicUsize,
}

impl BdevModule for Counter {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<Counter> {
        COUNTER_INITS.fetch_add(1, Ordering::SeqCst);
        Arc::new(Counter {
            reg: Arc::downgrade(reg),
            hits: AtomicUsize::new(0),
        })
    }

    fn name(&self) -> &'static str {
        "counter"
    }
}

/// A module that records every bdev it examines and keeps the tokens until told to finish:
/// half of them on the spot, half by message to the main core (as md reads superblocks).
#[derive(Default)]
struct Watcher {
    cores: Mutex<Option<Cores>>,
    seen: Mutex<Vec<String>>,
    held: Mutex<Vec<ExamineToken>>,
}

impl BdevModule for Watcher {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<Watcher> {
        Arc::new(Watcher {
            cores: Mutex::new(Some(reg.cores().clone())),
            ..Watcher::default()
        })
    }

    fn name(&self) -> &'static str {
        "watcher"
    }

    fn examine(&self, bdev: &Arc<Bdev>, token: ExamineToken) {
        self.seen.lock().unwrap().push(bdev.name().to_string());
        if bdev.name().starts_with("msg") {
            // Finished later, on the main core: the count holds until the message ran.
            let cores = self.cores.lock().unwrap().clone().unwrap();
            cores.run_on(cores.main_core(), move || drop(token)).unwrap();
        } else {
            self.held.lock().unwrap().push(token);
        }
    }
}

/// What fini calls saw: (module, core it ran on).
type FiniLog = Arc<Mutex<Vec<(&'static str, CoreId)>>>;

static FINI_LOG: Mutex<Option<FiniLog>> = Mutex::new(None);

fn fini_log() -> FiniLog {
    FINI_LOG.lock().unwrap().get_or_insert_with(Default::default).clone()
}

/// Modules for the fini order: `First` and `Second` in "bdev", `Export` in a later subsystem;
/// `Second` finishes from core 1.
macro_rules! fini_module {
    ($ty:ident, $name:literal, $sub:expr, $finish_on_core1:literal) => {
        struct $ty {
            cores: Cores,
            log: FiniLog,
        }
        impl BdevModule for $ty {
            fn init(reg: &Arc<BdevRegistry>) -> Arc<$ty> {
                Arc::new($ty {
                    cores: reg.cores().clone(),
                    log: fini_log(),
                })
            }
            fn name(&self) -> &'static str {
                $name
            }
            fn subsystem(&self) -> Subsystem {
                $sub
            }
            fn fini(&self, done: ModuleDone) {
                self.log.lock().unwrap().push(($name, current().core()));
                if $finish_on_core1 {
                    self.cores.run_on(CoreId(1), move || done.done()).unwrap();
                } else {
                    done.done();
                }
            }
        }
    };
}

const EXPORT: Subsystem = Subsystem {
    name: "export",
    depends_on: &["bdev"],
};
fini_module!(First, "first", Subsystem::BDEV, false);
fini_module!(Second, "second", Subsystem::BDEV, true);
fini_module!(Export, "export", EXPORT, false);

/// A dm-like module in its own subsystem: its bdevs are saved by a module-level call
/// (`fake_create`), not by their own `config()`.
struct FakeDm {
    reg: Weak<BdevRegistry>,
    /// (device, its base) in creation order.
    devices: Mutex<Vec<(String, String)>>,
}

const FAKE_DM: Subsystem = Subsystem {
    name: "fakedm",
    depends_on: &["bdev"],
};

impl BdevModule for FakeDm {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<FakeDm> {
        Arc::new(FakeDm {
            reg: Arc::downgrade(reg),
            devices: Mutex::new(Vec::new()),
        })
    }

    fn name(&self) -> &'static str {
        "fakedm"
    }

    fn subsystem(&self) -> Subsystem {
        FAKE_DM
    }

    fn config(&self, _reg: &BdevRegistry) -> Vec<ConfigEntry> {
        self.devices
            .lock()
            .unwrap()
            .iter()
            .map(|(name, base)| {
                ConfigEntry::new(ConfigCall {
                    method: "fake_create",
                    params: json!({"name": name, "base": base}),
                })
                .provides(name.clone())
                .needs([base.clone()])
            })
            .collect()
    }
}

impl FakeDm {
    /// Registers device `name` (over `base`, which it only names: enough for save_config).
    fn create(&self, name: &str, base: &str) -> Arc<Bdev> {
        let reg = self.reg.upgrade().unwrap();
        let bdev = reg
            .register(
                params(name, "fakedm"),
                Arc::new(TestBackend {
                    tag: 7,
                    bases: vec![base.to_string()],
                }),
            )
            .unwrap();
        self.devices.lock().unwrap().push((name.into(), base.into()));
        bdev
    }
}

/// A backend of the tests' own: completes everything successfully.
struct TestBackend {
    tag: u32,
    bases: Vec<String>,
}

struct TestChannel;

impl BackendChannel for TestChannel {
    fn submit(&self, io: IoBox) -> Submit {
        io.complete(IoStatus::Success);
        Submit::Accepted
    }
}

impl BdevBackend for TestBackend {
    fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(TestChannel)
    }

    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }

    fn bases(&self) -> Vec<String> {
        self.bases.clone()
    }
}

fn params(name: &str, module: &'static str) -> BdevParams {
    BdevParams {
        name: name.into(),
        uuid: None,
        product_name: "test",
        module,
        block_size: 512,
        num_blocks: 64,
        caps: IoCaps::ALL,
        optimal_io_boundary_blocks: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[test]
fn each_registry_has_its_own_module_state_created_on_first_use() {
    let d = TestDriver::new(1);
    let (a, b) = (BdevRegistry::new(d.cores()), BdevRegistry::new(d.cores()));
    assert!(a.loaded_module::<Counter>().is_none(), "nothing before first use");
    let before = COUNTER_INITS.load(Ordering::SeqCst);
    let a1 = a.module::<Counter>();
    let a2 = a.module::<Counter>();
    assert!(Arc::ptr_eq(&a1, &a2), "one state per registry");
    assert!(Arc::ptr_eq(&a.loaded_module::<Counter>().unwrap(), &a1));
    let b1 = b.module::<Counter>();
    assert!(!Arc::ptr_eq(&a1, &b1), "another registry, another state");
    assert!(a1.reg.upgrade().is_some_and(|r| Arc::ptr_eq(&r, &a)));
    assert!(b1.reg.upgrade().is_some_and(|r| Arc::ptr_eq(&r, &b)));
    a1.hits.fetch_add(3, Ordering::SeqCst);
    assert_eq!(
        (
            a.module::<Counter>().hits.load(Ordering::SeqCst),
            b1.hits.load(Ordering::SeqCst)
        ),
        (3, 0)
    );
    assert!(a.loaded_module::<Watcher>().is_none(), "other types are other modules");
    assert!(COUNTER_INITS.load(Ordering::SeqCst) >= before + 2);

    // The registry owns its modules: they go with it (no static keeps them).
    let weak = Arc::downgrade(&b1);
    drop((b1, b));
    assert!(weak.upgrade().is_none());
}

#[test]
fn examine_sees_every_later_registration_and_counts_until_done() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    null::create(&reg, &null::NullOpts::new("early", 8, 512)).unwrap();
    let w = reg.module::<Watcher>();

    null::create(&reg, &null::NullOpts::new("n1", 8, 512)).unwrap();
    assert!(null::create(&reg, &null::NullOpts::new("n1", 8, 512)).is_err());
    malloc::create(&reg, &malloc::MallocOpts::new("m1", 8, 512)).unwrap();
    assert_eq!(
        *w.seen.lock().unwrap(),
        ["n1", "m1"],
        "successful registrations after loading"
    );
    assert_eq!(reg.examines_in_flight(), 2, "counted from registration on");

    // One examination finishing by message on the main core.
    d.enter(CoreId(1), || {
        null::create(&reg, &null::NullOpts::new("msg1", 8, 512)).unwrap();
    });
    assert_eq!(reg.examines_in_flight(), 3);
    d.run_until_idle(10);
    assert_eq!(reg.examines_in_flight(), 2, "the message ended its examination");

    // The held ones end when the module lets them go; a token of the module's own (an
    // examination it starts itself) counts in the same count.
    let extra = reg.examine_token();
    assert_eq!(reg.examines_in_flight(), 3);
    w.held.lock().unwrap().clear();
    assert_eq!(reg.examines_in_flight(), 1);
    drop(extra);
    assert_eq!(reg.examines_in_flight(), 0);
}

#[test]
fn fini_stops_consumers_first_and_continues_on_the_main_core() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    let log = fini_log();
    // Created in this order; fini must go export (later subsystem), second, first.
    reg.module::<First>();
    reg.module::<Export>();
    reg.module::<Second>();
    let names: Vec<&str> = reg.subsystems().iter().map(|s| s.name).collect();
    assert_eq!(names, ["bdev", "export"]);
    let finished = Arc::new(AtomicUsize::new(0));
    let f2 = finished.clone();
    d.enter(CoreId(0), || {
        reg.fini_modules(move || {
            assert_eq!(current().core(), CoreId(0), "done runs on the main core");
            f2.fetch_add(1, Ordering::SeqCst);
        })
    });
    // Second finishes from core 1: nothing after it has run yet.
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    d.run_until_idle(10);
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    let ours: Vec<(&str, CoreId)> = log
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|(n, _)| ["first", "second", "export"].contains(n))
        .collect();
    assert_eq!(
        ours,
        [("export", CoreId(0)), ("second", CoreId(0)), ("first", CoreId(0))],
        "consumer subsystems first, then latest created; every fini on the main core"
    );

    // No module: done at once.
    let empty = BdevRegistry::new(d.cores());
    let f3 = finished.clone();
    d.enter(CoreId(0), || {
        empty.fini_modules(move || {
            f3.fetch_add(1, Ordering::SeqCst);
        })
    });
    assert_eq!(finished.load(Ordering::SeqCst), 2);
}

#[test]
fn a_module_gets_its_own_backend_back_and_no_other() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    let mine = reg
        .register(
            params("T0", "test"),
            Arc::new(TestBackend {
                tag: 42,
                bases: Vec::new(),
            }),
        )
        .unwrap();
    let other = malloc::create(&reg, &malloc::MallocOpts::new("M0", 8, 512)).unwrap();
    assert_eq!(mine.backend_as::<TestBackend>().map(|b| b.tag), Some(42));
    assert!(
        other.backend_as::<TestBackend>().is_none(),
        "a malloc backend is not ours"
    );
    let found = reg.get("T0").unwrap();
    assert_eq!(found.backend_as::<TestBackend>().map(|b| b.tag), Some(42));
}

#[test]
fn error_and_delay_rpcs_find_their_bdevs_and_refuse_others() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &malloc::MallocOpts::new("M0", 64, 512)).unwrap();
    malloc::create(&reg, &malloc::MallocOpts::new("M1", 64, 512)).unwrap();
    let ee = error::create(
        &reg,
        &ErrorOpts {
            base_name: "M0".into(),
            uuid: None,
        },
    )
    .unwrap();
    let dl = delay::create(&reg, &DelayOpts::new("D1", "M1", 10, 20, 30, 40)).unwrap();

    // Found by name and by UUID.
    error::inject(&reg, &InjectOpts::new("EE_M0", "read", "failure")).unwrap();
    error::inject(&reg, &InjectOpts::new(&ee.info().uuid.to_string(), "clear", "failure")).unwrap();
    delay::update_latency(&reg, "D1", "p99_write", 99).unwrap();
    assert_eq!(dl.backend().config(dl.info()).unwrap().params["p99_write_latency"], 99);
    delay::update_latency(&reg, &dl.info().uuid.to_string(), "avg_read", 11).unwrap();
    assert_eq!(dl.backend().config(dl.info()).unwrap().params["avg_read_latency"], 11);

    // Unknown bdevs: NotFound with the name.
    let e = error::inject(&reg, &InjectOpts::new("nope", "read", "failure")).unwrap_err();
    assert!(matches!(&e, BdevError::NotFound(n) if n == "nope"), "{e}");
    let e = delay::update_latency(&reg, "nope", "avg_read", 1).unwrap_err();
    assert!(matches!(&e, BdevError::NotFound(n) if n == "nope"), "{e}");

    // Another module's bdev: InvalidParam on name, naming both modules.
    for (name, module) in [("M0", "malloc"), ("D1", "delay")] {
        let e = error::inject(&reg, &InjectOpts::new(name, "read", "failure")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid parameter 'name': bdev '{name}' is not a error bdev (module '{module}')")
        );
    }
    for (name, module) in [("M1", "malloc"), ("EE_M0", "error")] {
        let e = delay::update_latency(&reg, name, "avg_read", 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid parameter 'name': bdev '{name}' is not a delay bdev (module '{module}')")
        );
    }

    // Gone from the registry: NotFound again.
    error::delete(&reg, "EE_M0", || {}).unwrap();
    delay::delete(&reg, "D1", || {}).unwrap();
    d.run_until_idle(100);
    assert!(matches!(
        error::inject(&reg, &InjectOpts::new("EE_M0", "read", "failure")),
        Err(BdevError::NotFound(_))
    ));
    assert!(matches!(
        delay::update_latency(&reg, "D1", "avg_read", 1),
        Err(BdevError::NotFound(_))
    ));
}

#[test]
fn save_config_places_layers_after_the_subsystem_of_their_base() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    let dm = reg.module::<FakeDm>();
    malloc::create(&reg, &malloc::MallocOpts::new("M0", 64, 512)).unwrap();
    dm.create("a", "M0");
    passthru::create(&reg, &PassthruOpts::new("P0", "a")).unwrap();
    error::create(
        &reg,
        &ErrorOpts {
            base_name: "P0".into(),
            uuid: None,
        },
    )
    .unwrap();
    malloc::create(&reg, &malloc::MallocOpts::new("M1", 64, 512)).unwrap();
    passthru::create(&reg, &PassthruOpts::new("P1", "M1")).unwrap();
    dm.create("b", "EE_P0");

    let plan = reg.config_plan();
    let show: Vec<(&str, Vec<String>)> = plan
        .subsystems
        .iter()
        .map(|s| {
            let calls = s
                .calls
                .iter()
                .map(|c| {
                    let p = &c.params;
                    let who = p["name"].as_str().or(p["base_name"].as_str()).unwrap_or("");
                    format!("{} {who}", c.method)
                })
                .collect();
            (s.name, calls)
        })
        .collect();
    assert_eq!(
        show,
        [
            (
                "bdev",
                vec![
                    "bdev_malloc_create M0".to_string(),
                    "bdev_malloc_create M1".to_string(),
                    "bdev_passthru_create P1".to_string(),
                ]
            ),
            (
                "fakedm",
                vec![
                    "fake_create a".to_string(),
                    "bdev_passthru_create P0".to_string(),
                    "bdev_error_create P0".to_string(),
                    "fake_create b".to_string(),
                ]
            ),
        ],
        "P0 and EE_P0 follow their root into fakedm, b waits for EE_P0, M1 and P1 stay"
    );
    assert_eq!(plan.calls("fakedm").map(<[ConfigCall]>::len), Some(4));
    assert!(plan.calls("nbd").is_none());
    let subs: Vec<(&str, Vec<&str>)> = reg
        .subsystems()
        .iter()
        .map(|s| (s.name, s.depends_on.clone()))
        .collect();
    assert_eq!(subs, [("bdev", vec![]), ("fakedm", vec!["bdev"])]);
}
