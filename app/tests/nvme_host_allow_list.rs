//! A subsystem that does not allow any host refuses Keel's initiator until its host NQN is
//! added: the attach fails with the Connect status named, creates nothing, and succeeds once
//! `nvmf_subsystem_add_host` lists the host.

mod common;

use common::nvmf::{serve, HOSTNQN, NQN};
use common::Target;

#[test]
fn unlisted_host_is_refused_then_admitted() {
    let t = Target::start(&[]);
    let addr = serve(&t, NQN, "16", &[], &["-s", "KEEL0002"]);
    let port = addr.port().to_string();
    let i = Target::start(&[]);
    let attach = [
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme0",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
        "-n",
        NQN,
        "-q",
        HOSTNQN,
    ];
    let (code, msg) = i.err(&attach);
    assert_eq!(code, -5, "{msg}");
    assert!(msg.contains("Fabrics Connect failed"), "{msg}");
    assert_eq!(i.json(&["bdev_nvme_get_controllers"]), serde_json::json!([]));
    let (code, _) = i.err(&["bdev_get_bdevs", "-b", "Nvme0n1"]);
    assert_eq!(code, -19);

    t.ok(&["nvmf_subsystem_add_host", NQN, HOSTNQN]);
    assert_eq!(i.ok(&attach).trim(), "Nvme0n1");
    assert!(i.stop().success());
}
