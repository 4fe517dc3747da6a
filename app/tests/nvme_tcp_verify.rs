//! Keel's NVMe/TCP initiator against keel-tgt over 127.0.0.1: keel-perf loads a JSON config
//! with `bdev_nvme_attach_controller` and runs verify workloads on the namespace bdev — 4 KiB
//! writes (in-capsule data) and 128 KiB writes (over the 8 KiB in-capsule size: R2T and
//! H2CData), reads checked against what was written — without digests, then with header and
//! data digests.

mod common;

use serde_json::json;

use common::nvme::{attach_params, perf_ok, write_config};
use common::nvmf::{setup, NQN};

#[test]
fn verify_small_and_large_with_and_without_digests() {
    let (_t, addr) = setup();
    let dir = tempfile::tempdir().unwrap();
    for digests in [false, true] {
        let cfg = write_config(
            dir.path(),
            &[(
                "bdev_nvme_attach_controller",
                attach_params("Nvme0", addr, NQN, digests, json!({})),
            )],
        );
        for size in ["4096", "131072"] {
            let jobs = perf_ok(
                &cfg,
                &["-q", "16", "-o", size, "-w", "verify", "-t", "2", "-T", "Nvme0n1"],
            );
            assert_eq!(jobs[0]["job"], "Nvme0n1");
        }
    }
}
