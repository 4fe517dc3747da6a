//! Every dm method through SPDK's unmodified spdk-rpc with Keel's plugin (`--plugin keel_rpc`,
//! dmsetup's verbs): good params print dmsetup's formats (spec §3.9, §7); bad params — table
//! syntax errors, gaps, out-of-range and misaligned targets, a chunk that is not a power of
//! two, unknown devices, taken names — fail with the dm errno and a message naming the line and
//! field. Then save_config → restart with -c (and load_config into a fresh target) rebuilds the
//! same mapped devices, in dependency order, with a bdev stacked on a dm device.

mod common;

use common::Target;

const PLUGIN: &[&str] = &["--plugin", "keel_rpc"];

/// stdout of a plugin command that must succeed.
fn dm(t: &Target, args: &[&str]) -> String {
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
fn dm_err(t: &Target, args: &[&str]) -> (i64, String) {
    let o = t.rpc_with(PLUGIN, args, None);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{args:?} unexpectedly succeeded: {all}");
    common::parse_error(&all).unwrap_or_else(|| panic!("no JSON-RPC error in output of {args:?}: {all}"))
}

/// dmsetup info's block of an ACTIVE, closed device.
fn info_block(name: &str, ra: Option<u32>, tables: &str, ev: u32, minor: u32, n: u32) -> String {
    let mut s = format!("Name:              {name}\nState:             ACTIVE\n");
    if let Some(ra) = ra {
        s.push_str(&format!("Read Ahead:        {ra}\n"));
    }
    s.push_str(&format!(
        "Tables present:    {tables}\nOpen count:        0\nEvent number:      {ev}\nMajor, minor:      253, {minor}\nNumber of targets: {n}\n"
    ));
    s
}

#[test]
fn dm_methods_with_good_and_bad_params() {
    let t = Target::start(&["-m", "0x3"]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    t.ok(&["bdev_malloc_create", "-b", "M1", "8", "512"]);
    t.ok(&["bdev_malloc_create", "-b", "M4", "1", "4096"]);

    assert_eq!(
        dm(&t, &["dm_targets"]),
        "zero            v1.2.0\nflakey          v1.5.0\ndelay           v1.4.0\nstriped         v1.6.0\nlinear          v1.4.0\nerror           v1.7.0\n"
    );
    assert_eq!(dm(&t, &["dm_list_targets"]), dm(&t, &["dm_targets"]), "alias");
    assert_eq!(dm(&t, &["dm_ls"]), "No devices found\n");

    // create → info, table, status; the bdev.
    assert_eq!(dm(&t, &["dm_create", "lin0", "--table", "0 2048 linear M0 0"]), "");
    assert_eq!(
        dm(&t, &["dm_info", "lin0"]),
        info_block("lin0", Some(256), "LIVE", 0, 0, 1) + "\n"
    );
    assert_eq!(dm(&t, &["dm_table", "lin0"]), "0 2048 linear M0 0\n");
    assert_eq!(dm(&t, &["dm_status", "lin0"]), "0 2048 linear \n");
    let b = t.json(&["bdev_get_bdevs", "-b", "lin0"]);
    assert_eq!(b[0]["product_name"], "Device Mapper");
    assert_eq!(b[0]["num_blocks"], 2048);
    assert_eq!(b[0]["driver_specific"]["dm"]["table"], "0 2048 linear M0 0\n");
    assert_eq!(t.json(&["bdev_get_bdevs", "-b", "M0"])[0]["claimed"], true);

    // load → LI-w, inactive table; suspend → LIsw; resume swaps (the size grows, bdev closed).
    dm(&t, &["dm_load", "lin0", "--table", "0 4096 striped 2 128 M0 4096 M1 0"]);
    assert_eq!(
        dm(&t, &["dm_info", "-c", "lin0"]),
        "Name             Maj Min Stat Open Targ Event  UUID\nlin0             253   0 LI-w    0    1      0\n"
    );
    assert_eq!(
        dm(&t, &["dm_table", "--inactive", "lin0"]),
        "0 4096 striped 2 128 M0 4096 M1 0\n"
    );
    assert_eq!(dm(&t, &["dm_table", "lin0"]), "0 2048 linear M0 0\n");
    dm(&t, &["dm_suspend", "lin0"]);
    assert!(dm(&t, &["dm_info", "-c", "lin0"]).contains(" LIsw "));
    assert!(dm(&t, &["dm_info", "lin0"]).contains("State:             SUSPENDED\n"));
    dm(&t, &["dm_resume", "lin0"]);
    assert_eq!(
        dm(
            &t,
            &[
                "dm_info",
                "-c",
                "--noheadings",
                "-o",
                "name,major,minor,attr,open,segments,events,uuid",
                "lin0"
            ]
        ),
        "lin0:253:0:L--w:0:1:0:\n"
    );
    assert_eq!(dm(&t, &["dm_table", "lin0"]), "0 4096 striped 2 128 M0 4096 M1 0\n");
    assert_eq!(dm(&t, &["dm_status", "lin0"]), "0 4096 striped 2 M0 M1 1 AA\n");
    assert!(dm(&t, &["dm_info", "lin0"]).contains("Read Ahead:        512\n"));
    assert_eq!(t.json(&["bdev_get_bdevs", "-b", "lin0"])[0]["num_blocks"], 4096);
    assert_eq!(dm(&t, &["dm_deps", "lin0"]), "2 dependencies\t: (M0) (M1)\n");
    // load + clear; resume without a staged table.
    dm(&t, &["dm_reload", "lin0", "--table", "0 8 zero"]);
    dm(&t, &["dm_clear", "lin0"]);
    assert_eq!(dm(&t, &["dm_table", "--inactive", "lin0"]), "\n");
    dm(&t, &["dm_resume", "lin0"]);
    assert!(dm(&t, &["dm_info", "-c", "lin0"]).contains(" L--w "));

    // uuid, rename (event +1), setuuid twice, wait.
    dm(
        &t,
        &[
            "dm_create",
            "lin1",
            "-u",
            "TEST-UUID-1",
            "--table",
            "0 1024 linear M1 4096",
        ],
    );
    assert!(dm(&t, &["dm_info", "lin1"]).ends_with("Number of targets: 1\nUUID: TEST-UUID-1\n\n"));
    dm(&t, &["dm_rename", "lin1", "lin2"]);
    assert_eq!(
        dm(&t, &["dm_info", "-c", "lin2"]),
        "Name             Maj Min Stat Open Targ Event  UUID\nlin2             253   1 L--w    0    1      1 TEST-UUID-1\n"
    );
    let (code, msg) = dm_err(&t, &["dm_rename", "lin2", "--setuuid", "OTHER"]);
    assert_eq!(code, -22, "{msg}");
    assert!(msg.contains("uuid is already set"), "{msg}");
    assert_eq!(
        dm(&t, &["dm_wait", "-v", "lin2", "0"]),
        info_block("lin2", Some(256), "LIVE", 1, 1, 1) + "UUID: TEST-UUID-1\n\n"
    );
    assert_eq!(dm_err(&t, &["dm_wait", "lin2", "1", "--timeout", "50"]).0, -110);
    dm(&t, &["dm_create", "nt", "--notable"]);
    assert_eq!(
        dm(&t, &["dm_info", "nt"]),
        info_block("nt", None, "None", 0, 2, 0) + "\n"
    );
    dm(&t, &["dm_rename", "nt", "--setuuid", "NT-UUID"]);
    assert_eq!(dm(&t, &["dm_ls"]), "lin0\t(253:0)\nlin2\t(253:1)\nnt\t(253:2)\n");
    assert_eq!(dm(&t, &["dm_list_devices"]), dm(&t, &["dm_ls"]));

    // all-device forms.
    assert_eq!(
        dm(&t, &["dm_table"]),
        "lin0: 0 4096 striped 2 128 M0 4096 M1 0\nlin2: 0 1024 linear M1 4096\nnt: \n"
    );
    let all = dm(&t, &["dm_info"]);
    assert_eq!(all.matches("Name:").count(), 3);

    // message: no target takes messages.
    let (code, msg) = dm_err(&t, &["dm_message", "lin0", "0", "hello"]);
    assert_eq!(code, -22);
    assert!(msg.contains("does not support messages"), "{msg}");
    assert_eq!(dm_err(&t, &["dm_message", "lin0", "999999", "hello"]).0, -22);

    // Bad tables: EINVAL naming the line and field; nothing left behind.
    for (table, needle) in [
        (
            "0 100 linear M0",
            "line 1, target 'linear': linear: Invalid argument count",
        ),
        ("0 100 linear M0 x", "line 1, field 5 <offset> 'x'"),
        (
            "0 8 zero\n10 8 zero",
            "line 2, field 1 <logical_start_sector> '10': zero: Gap in table",
        ),
        ("0 8 zero\n4 8 zero", "Gap in table"),
        ("0 99999999 linear M0 0", "M0 too small for target"),
        ("0 7 linear M4 0", "not aligned to the logical block size 4096"),
        ("0 8 linear M4 3", "field 5 <offset> '3'"),
        ("0 4096 striped 2 96 M0 0 M1 0", "field 5 <chunk_sectors> '96'"),
        ("0 8 nosuch", "nosuch: unknown target type"),
        ("0 8x zero", "field 2 <num_sectors> '8x'"),
        ("0 8 linear Nope 0", "field 4 <dev> 'Nope'"),
    ] {
        let (code, msg) = dm_err(&t, &["dm_create", "bad", "--table", table]);
        assert_eq!(code, -22, "{table}: {msg}");
        assert!(msg.contains(needle), "{table}: {msg}");
        assert_eq!(dm_err(&t, &["dm_info", "bad"]).0, -6, "{table}: device left behind");
    }
    let (code, msg) = dm_err(&t, &["dm_load", "lin0", "--table", "0 100 striped 2 128 M0 0 M1 0"]);
    assert_eq!(code, -22);
    assert!(msg.contains("not divisible by chunk size"), "{msg}");
    assert_eq!(dm_err(&t, &["dm_load", "lin0", "--table", ""]).0, -22);
    // Names and devices.
    assert_eq!(dm_err(&t, &["dm_create", "lin0", "--notable"]).0, -16);
    assert_eq!(dm_err(&t, &["dm_create", "M0", "--notable"]).0, -16);
    assert_eq!(dm_err(&t, &["dm_create", "x", "-u", "TEST-UUID-1", "--notable"]).0, -16);
    assert_eq!(dm_err(&t, &["dm_create", "a/b", "--notable"]).0, -22);
    assert_eq!(dm_err(&t, &["dm_create", "x", "-m", "1", "--notable"]).0, -16);
    assert_eq!(
        dm_err(&t, &["dm_create", "x", "--bdev-uuid", "nope", "--notable"]).0,
        -22
    );
    for verb in [
        "dm_info",
        "dm_table",
        "dm_status",
        "dm_deps",
        "dm_resume",
        "dm_suspend",
        "dm_clear",
        "dm_remove",
    ] {
        assert_eq!(dm_err(&t, &[verb, "nope"]).0, -6, "{verb}");
    }
    assert_eq!(dm_err(&t, &["dm_rename", "nope", "x"]).0, -6);
    assert_eq!(dm_err(&t, &["dm_rename", "lin0", "lin2"]).0, -16);
    assert_eq!(dm_err(&t, &["dm_wait", "nope"]).0, -6);
    // Raw JSON: missing and unknown params are -32602.
    let out = t.raw(
        br#"{"jsonrpc":"2.0","id":1,"method":"dm_load","params":{"name":"lin0"}}"#,
        std::time::Duration::from_secs(5),
    );
    assert!(out.contains("-32602"), "{out}");
    let out = t.raw(
        br#"{"jsonrpc":"2.0","id":2,"method":"dm_info","params":{"nme":"lin0"}}"#,
        std::time::Duration::from_secs(5),
    );
    assert!(out.contains("-32602"), "{out}");

    // remove: EBUSY while open (a device stacked on it), then in order; claims released.
    dm(&t, &["dm_create", "top", "--table", "0 1024 linear lin2 0"]);
    assert_eq!(dm(&t, &["dm_info", "-c", "-o", "name,open", "lin2"]), "lin2:1\n");
    assert_eq!(dm_err(&t, &["dm_remove", "lin2"]).0, -16);
    dm(&t, &["dm_remove", "top"]);
    dm(&t, &["dm_remove", "lin2"]);
    dm(&t, &["dm_remove", "lin0"]);
    dm(&t, &["dm_remove", "nt"]);
    assert_eq!(dm(&t, &["dm_ls"]), "No devices found\n");
    assert_eq!(t.json(&["bdev_get_bdevs", "-b", "M0"])[0]["claimed"], false);
    assert!(t.stop().success());
}

#[test]
fn save_config_rebuilds_mapped_devices_in_dependency_order() {
    let keep = tempfile::tempdir().unwrap();
    let t = Target::start(&["-m", "0x3"]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "4", "512"]);
    t.ok(&["bdev_malloc_create", "-b", "M1", "4", "512"]);
    t.ok(&["bdev_malloc_create", "-b", "M2", "4", "512"]);
    // A notable device first (minor 0), then a over M0, b striped over M1 and a.
    dm(&t, &["dm_create", "n", "--notable", "-u", "N-UUID"]);
    dm(&t, &["dm_create", "a", "--table", "0 2048 linear M0 0"]);
    dm(&t, &["dm_create", "b", "--table", "0 4096 striped 2 8 M1 0 a 0"]);
    // c over M2 (created now), then a reloaded with a staged table naming c: a now depends on
    // c, which was created after it.
    dm(&t, &["dm_create", "c", "-r", "--table", "0 2048 linear M2 0"]);
    dm(&t, &["dm_load", "a", "--table", "0 2048 linear c 0"]);
    // A passthru on a dm device, and a suspended device.
    t.ok(&["bdev_passthru_create", "-b", "b", "-p", "P0"]);
    dm(&t, &["dm_create", "s", "--table", "0 1024 zero\n1024 1024 error"]);
    dm(&t, &["dm_suspend", "s"]);
    let bdevs_before = t.json(&["bdev_get_bdevs"]);
    let info_before = dm(&t, &["dm_info"]);
    let tables_before = (dm(&t, &["dm_table"]), dm(&t, &["dm_table", "--inactive"]));
    assert!(info_before.contains("UUID: N-UUID"));
    assert!(dm(&t, &["dm_info", "c"]).contains("State:             ACTIVE (READ-ONLY)\n"));
    let saved = t.ok(&["save_config"]);
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let subs: Vec<&str> = v["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subsystem"].as_str().unwrap())
        .collect();
    assert_eq!(subs, vec!["bdev", "dm", "nvmf", "nbd", "ublk"]);
    let dm_methods: Vec<String> = v["subsystems"][1]["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["method"].as_str().unwrap(),
                c["params"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    let pos = |m: &str| {
        dm_methods
            .iter()
            .position(|x| x == m)
            .unwrap_or_else(|| panic!("{m} in {dm_methods:?}"))
    };
    assert!(pos("dm_create c") < pos("dm_load a"), "{dm_methods:?}");
    assert!(pos("dm_create a") < pos("dm_create b"), "{dm_methods:?}");
    assert!(pos("dm_create b") < pos("bdev_passthru_create P0"), "{dm_methods:?}");
    assert!(pos("dm_create s") < pos("dm_suspend s"), "{dm_methods:?}");
    let cfg = keep.path().join("saved.json");
    std::fs::write(&cfg, &saved).unwrap();
    assert!(t.stop().success());

    let t2 = Target::start(&["-m", "0x3", "-c", cfg.to_str().unwrap()]);
    assert_eq!(t2.json(&["bdev_get_bdevs"]), bdevs_before, "the same bdevs");
    assert_eq!(
        dm(&t2, &["dm_info"]),
        info_before.replace("Event number:      1", "Event number:      0")
    );
    assert_eq!(
        (dm(&t2, &["dm_table"]), dm(&t2, &["dm_table", "--inactive"])),
        tables_before
    );
    assert_eq!(t2.ok(&["save_config"]), saved);
    // The staged table still swaps in.
    dm(&t2, &["dm_resume", "a"]);
    assert_eq!(dm(&t2, &["dm_table", "a"]), "0 2048 linear c 0\n");
    assert!(t2.stop().success());

    // load_config into a fresh running target.
    let t3 = Target::start(&[]);
    let o = t3.rpc_with(&[], &["load_config", "-j", cfg.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(t3.json(&["bdev_get_bdevs"]), bdevs_before);
    assert_eq!(
        (dm(&t3, &["dm_table"]), dm(&t3, &["dm_table", "--inactive"])),
        tables_before
    );
}
