//! Two namespaces of one subsystem, attached by keel-perf's JSON config, driven from two
//! reactors at once (`-m 0x3 -C`: every core a job on every bdev, so each reactor has its own
//! I/O qpair shared by both namespace bdevs): verify at 4 KiB and 64 KiB.

mod common;

use serde_json::json;

use common::nvme::{attach_params, perf_ok, write_config};
use common::nvmf::{setup, NQN};

#[test]
fn two_namespaces_from_two_reactors_verify() {
    let (t, addr) = setup();
    t.ok(&["bdev_malloc_create", "-b", "Malloc1", "16", "4096"]);
    t.ok(&["nvmf_subsystem_add_ns", NQN, "Malloc1", "-n", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[(
            "bdev_nvme_attach_controller",
            attach_params("Nvme0", addr, NQN, false, json!({})),
        )],
    );
    for size in ["4096", "65536"] {
        let jobs = perf_ok(
            &cfg,
            &["-m", "0x3", "-C", "-q", "8", "-o", size, "-w", "verify", "-t", "2"],
        );
        let mut names: Vec<String> = jobs.iter().map(|j| j["job"].as_str().unwrap().to_string()).collect();
        names.sort();
        assert_eq!(jobs.len(), 4, "{names:?}");
        assert!(names.iter().filter(|n| n.contains("Nvme0n1")).count() == 2, "{names:?}");
        assert!(names.iter().filter(|n| n.contains("Nvme0n2")).count() == 2, "{names:?}");
    }
}
