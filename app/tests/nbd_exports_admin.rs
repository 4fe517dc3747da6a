//! The life of NBD exports in keel-tgt, through the plugin: a read-only export refuses writes
//! with EPERM (qemu-io) and serves reads; an exported bdev is held — bdev_malloc_delete,
//! bdev_passthru_delete and dm_remove fail with EBUSY naming the export until it is removed;
//! removing an export with a client connected is EBUSY (the answer names the peer), `--force`
//! disconnects the client cleanly (its next request fails, nothing hangs); listeners stop; and
//! save_config → `keel-tgt -c` rebuilds listeners and exports that serve the same data.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{nbd_url, peer_ok, run_peer, Target};
use keel_nbd::client::BlockingClient;

#[test]
fn read_only_holds_removal_and_save_load() {
    let t = Target::start(&[]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    t.ok(&["bdev_malloc_create", "-b", "M1", "8", "512"]);
    t.ok(&["bdev_passthru_create", "-b", "M1", "-p", "P1"]);
    t.ok(&["bdev_malloc_create", "-b", "M2", "8", "512"]);
    t.plugin(&["dm_create", "lin", "--table", "0 16384 linear M2 0"]);
    let (tcp, unix) = t.nbd_listen();
    assert_eq!(
        t.plugin(&["nbd_server_get_listeners"]).as_array().map(Vec::len),
        Some(2)
    );
    t.plugin(&["nbd_server_add_export", "M0", "-n", "rw"]);
    t.plugin(&["nbd_server_add_export", "M0", "-n", "ro", "-r"]);
    t.plugin(&["nbd_server_add_export", "P1"]);
    t.plugin(&["nbd_server_add_export", "lin"]);
    let (code, msg) = t.plugin_err(&["nbd_server_add_export", "M2", "-n", "rw"]);
    assert_eq!(code, -17, "{msg}");
    let (code, msg) = t.plugin_err(&["nbd_server_add_export", "nope"]);
    assert_eq!(code, -19, "{msg}");
    let (code, msg) = t.plugin_err(&["nbd_server_add_export", "M2"]);
    assert_eq!(code, -16, "M2 is claimed by dm: {msg}");

    // Read-only: writes are EPERM, reads work.
    let io = |url: &str, cmd: &str| run_peer("qemu-io", &["-f", "raw", "-c", cmd, url]);
    peer_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x42 0 64k", &nbd_url(&tcp, "rw")],
    );
    let o = io(&nbd_url(&tcp, "ro"), "write -P 0x43 0 4k");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // qemu sees READ_ONLY and refuses to open the export for writing.
    assert!(!o.status.success() && text.contains("Permission denied"), "{text}");
    let o = run_peer(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x42 0 64k", &nbd_url(&tcp, "ro")],
    );
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("failed"));
    // At the protocol level: EPERM (1) for WRITE, TRIM and WRITE_ZEROES on the read-only export.
    let mut c = BlockingClient::connect(TcpStream::connect(&tcp).unwrap(), "ro", true).unwrap();
    assert_eq!(c.write(0, &[1; 512], false).unwrap(), 1);
    c.send(0, keel_nbd::consts::CMD_TRIM, 0, 512, &[]).unwrap();
    assert_eq!(c.reply().unwrap().error, 1);
    assert_eq!(c.read(0, 512).unwrap(), Ok(vec![0x42; 512]));

    // Held bdevs: every delete path refuses, naming the export.
    for (args, name) in [
        (vec!["bdev_malloc_delete", "M0"], "'rw'"),
        (vec!["bdev_passthru_delete", "P1"], "'P1'"),
    ] {
        let (code, msg) = t.err(&args);
        assert_eq!(code, -16, "{args:?}: {msg}");
        assert!(msg.contains(name), "{args:?}: {msg}");
    }
    let (code, msg) = t.plugin_err(&["dm_remove", "lin"]);
    assert_eq!(code, -16, "{msg}");
    assert!(msg.contains("nbd export 'lin'"), "{msg}");

    // Removing an export with a client connected: EBUSY naming the peer; --force disconnects.
    let (code, msg) = t.plugin_err(&["nbd_server_remove_export", "ro"]);
    assert_eq!(code, -16, "{msg}");
    let peer = c.stream.local_addr().unwrap().to_string();
    assert!(msg.contains(&peer), "{msg} names {peer}");
    let exports = t.plugin(&["nbd_server_get_exports"]);
    let ro = exports
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ro")
        .unwrap()
        .clone();
    assert_eq!(ro["read_only"], true);
    assert_eq!(ro["bdev_name"], "M0");
    assert_eq!(ro["connections"][0]["peer"], peer.as_str());
    assert_eq!(t.plugin(&["nbd_server_remove_export", "ro", "--force"]), true);
    c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(c.read(0, 512).is_err(), "the forced-out client is disconnected");
    let (code, _) = t.plugin_err(&["nbd_server_remove_export", "ro"]);
    assert_eq!(code, -19);
    // The other export of M0 still holds it.
    assert_eq!(t.err(&["bdev_malloc_delete", "M0"]).0, -16);

    // save_config (without the Unix listener: its directory goes with this target), then a new
    // target from it serves the same exports and data.
    t.plugin(&["nbd_server_stop", &format!("unix:{}", unix.display())]);
    assert!(!unix.exists(), "the socket file goes with the listener");
    let saved = t.ok(&["save_config"]);
    let doc: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let nbd = doc["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "nbd")
        .expect("an nbd subsystem")["config"]
        .clone();
    let methods: Vec<&str> = nbd
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "nbd_server_start",
            "nbd_server_add_export",
            "nbd_server_add_export",
            "nbd_server_add_export"
        ]
    );
    // Removing the rest frees the bdevs: deletes work again.
    for name in ["rw", "P1", "lin"] {
        assert_eq!(t.plugin(&["nbd_server_remove_export", name]), true);
    }
    t.ok(&["bdev_passthru_delete", "P1"]);
    t.plugin(&["dm_remove", "lin"]);
    t.ok(&["bdev_malloc_delete", "M0"]);
    t.plugin(&["nbd_server_stop", &tcp]);
    assert!(TcpStream::connect(&tcp).is_err(), "the listener is closed");
    let (code, _) = t.plugin_err(&["nbd_server_stop", &tcp]);
    assert_eq!(code, -19);
    assert!(t.stop().success());

    // Malloc data does not survive a restart, but listeners, exports and flags do.
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), &saved).unwrap();
    let t2 = Target::start(&["-c", cfg.path().to_str().unwrap()]);
    let exports = t2.plugin(&["nbd_server_get_exports"]);
    let names: Vec<&str> = exports
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rw", "P1", "lin"]);
    peer_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x17 0 4k",
            "-c",
            "read -P 0x17 0 4k",
            &nbd_url(&tcp, "lin"),
        ],
    );
    assert!(t2.stop().success());
}
