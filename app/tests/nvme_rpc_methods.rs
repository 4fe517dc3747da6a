//! The `bdev_nvme_*` methods through SPDK's unmodified `spdk-rpc`, with one keel-tgt as the
//! NVMe/TCP target and another as the initiator: attach (the result is the list of namespace
//! bdevs), the bdev it creates, `bdev_nvme_get_controllers` in SPDK's shape, refusals (a PCIe
//! function that does not exist, a PCIe address that is not one, a name in use, nothing
//! listening, set_options after an attach), save_config
//! (`bdev_nvme_set_options` then the attach, in the bdev subsystem) → load_config into a fresh
//! keel-tgt, and detach.

mod common;

use common::nvmf::{setup, NQN};
use common::Target;

#[test]
fn attach_get_save_load_detach() {
    let (_t, addr) = setup();
    let port = addr.port().to_string();
    let i = Target::start(&[]);
    let (code, msg) = i.err(&[
        "bdev_nvme_attach_controller",
        "-b",
        "P0",
        "-t",
        "pcie",
        "-a",
        "0000:ff:1f.7",
    ]);
    assert_eq!(code, -19, "{msg}");
    assert!(
        msg.contains("no PCI device 0000:ff:1f.7") && msg.contains("lspci"),
        "{msg}"
    );
    let (code, msg) = i.err(&["bdev_nvme_attach_controller", "-b", "P0", "-t", "pcie", "-a", "01:00"]);
    assert_eq!(code, -32602, "{msg}");
    let attach = [
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme0",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-f",
        "ipv4",
        "-s",
        &port,
        "-n",
        NQN,
    ];
    assert_eq!(i.ok(&attach).trim(), "Nvme0n1");
    let (code, msg) = i.err(&attach);
    assert_eq!(code, -17, "{msg}");
    let closed = common::nvmf::free_port().to_string();
    let (code, msg) = i.err(&[
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme9",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &closed,
        "-n",
        NQN,
    ]);
    assert_eq!(code, -5, "{msg}");
    assert!(msg.contains("connect"), "{msg}");

    let c = i.json(&["bdev_nvme_get_controllers"]);
    assert_eq!(c[0]["name"], "Nvme0");
    let ctrlr = &c[0]["ctrlrs"][0];
    assert_eq!(ctrlr["state"], "enabled");
    assert_eq!(ctrlr["trid"]["trtype"], "TCP");
    assert_eq!(ctrlr["trid"]["traddr"], "127.0.0.1");
    assert_eq!(ctrlr["trid"]["trsvcid"], port.as_str());
    assert_eq!(ctrlr["trid"]["subnqn"], NQN);
    assert!(ctrlr["cntlid"].as_u64().unwrap() >= 1);
    let (code, _) = i.err(&["bdev_nvme_get_controllers", "-n", "Nope"]);
    assert_eq!(code, -19);

    let b = i.json(&["bdev_get_bdevs", "-b", "Nvme0n1"]);
    assert_eq!(b[0]["block_size"], 512);
    assert_eq!(b[0]["num_blocks"], 65536);
    assert_eq!(b[0]["product_name"], "NVMe disk");
    assert_eq!(
        b[0]["driver_specific"]["nvme"][0]["ctrlr_data"]["serial_number"],
        "KEEL0001"
    );

    let o = i.rpc(&["bdev_nvme_set_options", "--keep-alive-timeout-ms", "5000"]);
    assert!(!o.status.success(), "set_options after an attach must be refused");

    let saved = i.ok(&["save_config"]);
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let bdev = v["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap();
    let methods: Vec<&str> = bdev["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    let so = methods.iter().position(|m| *m == "bdev_nvme_set_options").unwrap();
    let at = methods
        .iter()
        .position(|m| *m == "bdev_nvme_attach_controller")
        .unwrap();
    assert!(so < at, "{methods:?}");
    let p = &bdev["config"][at]["params"];
    assert_eq!(p["name"], "Nvme0");
    assert_eq!(p["trsvcid"], port.as_str());
    assert_eq!(p["subnqn"], NQN);

    let i2 = Target::start(&[]);
    let o = i2.rpc_with(&[], &["load_config"], Some(&saved));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(i2.json(&["bdev_get_bdevs", "-b", "Nvme0n1"])[0]["num_blocks"], 65536);
    assert!(i2.stop().success());

    assert_eq!(i.ok(&["bdev_nvme_detach_controller", "Nvme0"]).trim(), "");
    let (code, _) = i.err(&["bdev_get_bdevs", "-b", "Nvme0n1"]);
    assert_eq!(code, -19);
    assert_eq!(i.json(&["bdev_nvme_get_controllers"]), serde_json::json!([]));
    let (code, _) = i.err(&["bdev_nvme_detach_controller", "Nvme0"]);
    assert_eq!(code, -19);
    assert!(i.stop().success());
}
