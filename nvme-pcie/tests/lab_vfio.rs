//! Keel's userspace NVMe driver on a real (emulated) controller: the lab guest (Linux 6.12 under
//! QEMU, `scripts/lab.sh`) has QEMU's NVMe 1b36:0010 behind an emulated Intel IOMMU. The guest
//! script (`tests/lab/vfio_probe.sh`) records `nvme id-ctrl`/`id-ns` while the kernel driver
//! holds the controller, checks that `scripts/nvme-bind.sh` refuses a device with a mounted
//! filesystem and that the driver's error for a device not bound to vfio-pci says what to do,
//! binds it to vfio-pci, runs `keel-nvme-pcie-probe` (attach, identify, 4 KiB and 128 KiB
//! write+read verify, write zeroes and deallocate, flush, a second queue pair, a controller reset
//! with writes outstanding (done by the device, their completions unreaped: QEMU's controller
//! can die if reset mid-DMA, so that case is the model's), an out-of-range read, shutdown), then
//! rebinds the kernel driver and compares what Keel wrote with `dd`.
//! Here the identity the probe printed is compared field by field with nvme-cli's JSON. A lab
//! that cannot start fails this test.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use keel_testkit::lab::{run_guest, LabOpts};

fn probe_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id.")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn userspace_driver_on_qemu_nvme_through_vfio() {
    let share = tempfile::tempdir().expect("tempdir");
    let probe = Path::new(env!("CARGO_BIN_EXE_keel-nvme-pcie-probe"));
    std::fs::copy(probe, share.path().join("keel-nvme-pcie-probe")).expect("copy the probe");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
    std::fs::copy(root.join("scripts/nvme-bind.sh"), share.path().join("nvme-bind.sh")).expect("copy nvme-bind.sh");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/vfio_probe.sh");
    let r = run_guest(
        &script,
        &LabOpts {
            share: Some(share.path().into()),
            nvme: true,
            iommu: true,
            timeout: Duration::from_secs(420),
            ..LabOpts::new("nvme_pcie_vfio")
        },
    );
    r.assert_success();
    let log = r.guest_log();
    for want in [
        "verify 4k: OK",
        "verify 128k: OK",
        "write zeroes (plain and deac) read back zeroes: OK",
        "deallocate: completed with success",
        "reads queue pair 1's data: OK",
        "4 in-flight writes handed back for retry",
        "retried writes read back after the reset: OK",
        "shutdown: OK",
        "PROBE: OK",
        "kernel nvme driver reads Keel's data: OK",
    ] {
        assert!(log.contains(want), "missing {want:?} in:\n{log}");
    }
    assert!(log.trim_end().ends_with("LAB_VFIO: OK"), "{log}");
    // Deallocated blocks read back as the kernel's own discard leaves them (QEMU zeroes only with
    // discard=unmap on its drive, which the lab does not set).
    if log.contains("kernel discard then read: zeroes") {
        assert!(log.contains("deallocated blocks read back as zeroes"), "{log}");
    } else if log.contains("kernel discard then read: not zeroes") {
        assert!(log.contains("deallocated blocks read back as the old data"), "{log}");
    }

    // The identity Keel read equals what the kernel driver's nvme-cli reported.
    let ours = probe_fields(&r.file("probe.txt"));
    let theirs: serde_json::Value = serde_json::from_str(&r.file("id-ctrl.json")).expect("id-ctrl JSON");
    let mut compared = 0;
    for (k, v) in &ours {
        let Some(t) = theirs.get(k) else {
            panic!("nvme-cli has no field {k}: {theirs}");
        };
        let t = match t {
            serde_json::Value::String(s) => s.trim_end().trim_end_matches('\0').to_string(),
            other => other.to_string(),
        };
        assert_eq!(&t, v, "id-ctrl field {k}");
        compared += 1;
    }
    assert!(compared >= 15, "only {compared} fields compared: {ours:?}");
    assert_eq!(ours.get("sn").map(String::as_str), Some("LABNVME0"));
    let ns: serde_json::Value = serde_json::from_str(&r.file("id-ns.json")).expect("id-ns JSON");
    let probe = r.file("probe.txt");
    let nsze = ns["nsze"].as_u64().expect("nsze");
    assert!(
        probe.contains(&format!("ns.blocks={nsze}")),
        "namespace size {nsze} vs:\n{probe}"
    );
}
