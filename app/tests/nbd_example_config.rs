//! The shipped quick start, `examples/nbd/raid1-nbd.json` (an md raid1 over two malloc bdevs
//! exported over NBD on 127.0.0.1:10809): keel-tgt starts on it — with the listener moved to a
//! free port, so the test never collides with a target someone runs — and the README's qemu-io
//! command writes and reads the export.

mod common;

use common::{nbd_url, peer_ok, workspace, Target};

#[test]
fn the_quick_start_config_serves_its_mirror() {
    let path = workspace().join("examples/nbd/raid1-nbd.json");
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let nbd = doc["subsystems"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["subsystem"] == "nbd")
        .expect("the example has an nbd subsystem");
    let start = &mut nbd["config"][0];
    assert_eq!(start["method"], "nbd_server_start");
    assert_eq!(start["params"]["listen"], "127.0.0.1:10809");
    start["params"]["listen"] = "127.0.0.1:0".into();
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), doc.to_string()).unwrap();

    let t = Target::start(&["-c", cfg.path().to_str().unwrap()]);
    let listen = t.plugin(&["nbd_server_get_listeners"]);
    let tcp = listen[0].as_str().unwrap();
    let out = peer_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "read -P 0x5a 0 1M",
            &nbd_url(tcp, "md0"),
        ],
    );
    assert!(!out.contains("failed"), "{out}");
    let exports = t.plugin(&["nbd_server_get_exports"]);
    assert_eq!(exports[0]["bdev_name"], "md0");
    let arrays = t.plugin(&["md_get_arrays", "md0"]);
    assert_eq!(arrays[0]["level"], "raid1");
    assert!(t.stop().success());
}
