//! bdev_nvme's PCIe transport on a real (emulated) controller: the lab guest (Linux under QEMU,
//! `scripts/lab.sh`) has QEMU's NVMe 1b36:0010 behind an emulated IOMMU. The guest side
//! (`tests/lab/nvme_pcie.sh`) checks that attaching a device the kernel holds is refused with
//! a message naming scripts/nvme-bind.sh, binds it to vfio-pci, and has keel-tgt attach it over
//! RPC (`bdev_nvme_attach_controller -t PCIe`), reset, detach and re-attach it; the guest
//! kernel writes a known file through Keel (NBD over the namespace bdev) and runs fio verify
//! across a controller reset and over an md raid1 of the namespace and a file-backed bdev;
//! keel-perf runs verify at 4 KiB and 128 KiB on two reactors, write_zeroes and unmap, and fio
//! with Keel's engine `verify=crc32c` at 4 KiB and 128 KiB, from a JSON config; then the device
//! goes back to the kernel's nvme driver and `dd` reads the file Keel wrote. Here
//! `bdev_nvme_get_controllers`' identity is compared with nvme-cli's `id-ctrl` of the same
//! device. A lab that cannot start fails this test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_testkit::lab::{run_guest, LabOpts};

/// `file` of package `package` from the same build (built if missing): keel-perf, the fio
/// engine.
fn built(package: &str, file: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(file);
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root).args(["build", "-q", "-p", package]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "cannot build {package}");
    }
    assert!(p.exists(), "{} missing after building {package}", p.display());
    p
}

#[test]
fn bdev_nvme_pcie_on_qemu_nvme_through_vfio() {
    let share = tempfile::tempdir().expect("tempdir");
    let perf = built("keel-perf", "keel-perf");
    let engine = built("keel-fio", "libkeel_fio.so");
    for bin in [
        Path::new(env!("CARGO_BIN_EXE_keel-tgt")),
        Path::new(env!("CARGO_BIN_EXE_keel-rpc")),
        perf.as_path(),
        engine.as_path(),
    ] {
        std::fs::copy(bin, share.path().join(bin.file_name().unwrap())).expect("copy a binary into the share");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
    std::fs::copy(root.join("scripts/nvme-bind.sh"), share.path().join("nvme-bind.sh")).expect("copy nvme-bind.sh");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/nvme_pcie.sh");
    let r = run_guest(
        &script,
        &LabOpts {
            share: Some(share.path().into()),
            nvme: true,
            iommu: true,
            timeout: Duration::from_secs(600),
            ..LabOpts::new("bdev_nvme_pcie")
        },
    );
    r.assert_success();
    let log = r.guest_log();
    for want in [
        "fio verify across a controller reset: OK",
        "md raid1 over NVMe and a file: OK",
        "keel-perf verify 4k: OK",
        "keel-perf verify 128k: OK",
        "keel-perf write_zeroes: OK",
        "keel-perf unmap: OK",
        "fio verify=crc32c 4k: OK",
        "fio verify=crc32c 128k: OK",
        "kernel nvme driver reads Keel's data: OK",
    ] {
        assert!(log.contains(want), "missing {want:?} in:\n{log}");
    }
    assert!(log.trim_end().ends_with("LAB_NVME_PCIE: OK"), "{log}");

    // get_controllers' identity equals what nvme-cli read while the kernel held the device.
    let ours: serde_json::Value = serde_json::from_str(&r.file("ctrlrs.json")).expect("get_controllers JSON");
    let theirs: serde_json::Value = serde_json::from_str(&r.file("id-ctrl.json")).expect("id-ctrl JSON");
    let c = &ours[0]["ctrlrs"][0];
    assert_eq!(c["trid"]["trtype"], "PCIe", "{ours}");
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").trim_end().trim_end_matches('\0').to_string();
    assert_eq!(text(&c["ctrlr_data"]["serial_number"]), text(&theirs["sn"]), "{ours}");
    assert_eq!(text(&c["ctrlr_data"]["model_number"]), text(&theirs["mn"]), "{ours}");
    assert_eq!(
        text(&c["ctrlr_data"]["firmware_revision"]),
        text(&theirs["fr"]),
        "{ours}"
    );
    assert_eq!(c["cntlid"], theirs["cntlid"], "{ours}");
    assert_eq!(c["ctrlr_data"]["oncs"], theirs["oncs"], "{ours}");
    assert_eq!(
        c["ctrlr_data"]["vendor_id"],
        format!("{:#06x}", theirs["vid"].as_u64().expect("vid")),
        "{ours}"
    );
}
