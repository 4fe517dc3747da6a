//! The NVMe-oF methods through SPDK's unmodified `spdk-rpc` against keel-tgt: results and
//! SPDK's error codes for the transport, subsystems, namespaces (with NGUID, EUI-64, UUID),
//! hosts and listeners (including the discovery subsystem's), a namespace's bdev held while
//! served, and save_config → load_config into a fresh target reproducing the same subsystems,
//! which a host can then connect to.

mod common;

use common::nvmf::*;
use common::Target;
use serde_json::json;

const N1: &str = "nqn.2016-06.io.spdk:cnode1";
const N2: &str = "nqn.2016-06.io.spdk:cnode2";

#[test]
fn nvmf_methods_results_errors_and_save_load() {
    let t = Target::start(&[]);
    let port = free_port().to_string();
    assert_eq!(t.json(&["nvmf_get_transports"]), json!([]));
    // Listeners need the transport.
    t.ok(&[
        "nvmf_create_subsystem",
        N1,
        "-a",
        "-s",
        "SN1",
        "-d",
        "Model One",
        "-m",
        "4",
    ]);
    let (code, _) = t.err(&[
        "nvmf_subsystem_add_listener",
        N1,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    assert_eq!(code, -32602);
    t.ok(&["nvmf_create_transport", "-t", "TCP", "-q", "64"]);
    let (code, msg) = t.err(&["nvmf_create_transport", "-t", "TCP"]);
    assert_eq!(code, -32602, "{msg}");
    let (code, msg) = t.err(&["nvmf_create_transport", "-t", "RDMA"]);
    assert_eq!(code, -32602, "{msg}");
    let tr = t.json(&["nvmf_get_transports"]);
    assert_eq!(tr[0]["trtype"], "TCP");
    assert_eq!(tr[0]["max_queue_depth"], 64);
    assert_eq!(tr[0]["io_unit_size"], 131072);
    assert_eq!(tr[0]["max_io_size"], 131072);

    // Subsystems.
    let (code, msg) = t.err(&["nvmf_create_subsystem", N1]);
    assert_eq!(code, -32603, "{msg}");
    assert!(msg.contains("Unable to create subsystem"), "{msg}");
    let (code, _) = t.err(&["nvmf_create_subsystem", "not-an-nqn"]);
    assert_eq!(code, -32603);
    let (code, _) = t.err(&["nvmf_create_subsystem", N2, "-s", "THIS-SERIAL-IS-FAR-TOO-LONG"]);
    assert_eq!(code, -32602);
    t.ok(&["nvmf_create_subsystem", N2, "-i", "10", "-I", "20"]);

    // Namespaces.
    t.ok(&["bdev_malloc_create", "-b", "M0", "16", "512"]);
    t.ok(&["bdev_null_create", "Null0", "64", "4096"]);
    let (code, _) = t.err(&["nvmf_subsystem_add_ns", N1, "nope"]);
    assert_eq!(code, -32602);
    t.ok(&[
        "nvmf_subsystem_add_ns",
        N1,
        "M0",
        "-n",
        "3",
        "-g",
        "00112233445566778899aabbccddeeff",
        "-e",
        "0011223344556677",
        "-u",
        "ceccf520-691e-4b46-9546-34af789907c5",
    ]);
    let (code, _) = t.err(&["nvmf_subsystem_add_ns", N1, "Null0", "-n", "3"]);
    assert_eq!(code, -32602, "nsid in use");
    let (code, _) = t.err(&["nvmf_subsystem_add_ns", N1, "Null0", "-g", "xyz"]);
    assert_eq!(code, -32602, "bad nguid");
    t.ok(&["nvmf_subsystem_add_ns", N2, "Null0"]);
    // A served bdev is held.
    let (code, msg) = t.err(&["bdev_malloc_delete", "M0"]);
    assert_eq!(code, -16, "{msg}");

    // Hosts and listeners.
    let host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    t.ok(&["nvmf_subsystem_add_host", N2, host]);
    let (code, _) = t.err(&["nvmf_subsystem_add_host", N2, host]);
    assert_eq!(code, -32602);
    let (code, _) = t.err(&["nvmf_subsystem_remove_host", N2, "nqn.2014-08.org.nvmexpress:uuid:no"]);
    assert_eq!(code, -32602);
    listen(&t, N1, &port);
    t.ok(&[
        "nvmf_subsystem_add_listener",
        N2,
        "-t",
        "TCP",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
        "-f",
        "ipv4",
    ]);
    listen(&t, "discovery", &port);
    let (code, _) = t.err(&[
        "nvmf_subsystem_add_listener",
        N1,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    assert_eq!(code, -32602, "listener exists");
    let (code, _) = t.err(&[
        "nvmf_subsystem_add_listener",
        N1,
        "-t",
        "rdma",
        "-a",
        "127.0.0.1",
        "-s",
        "4420",
    ]);
    assert_eq!(code, -32602);
    let (code, _) = t.err(&[
        "nvmf_subsystem_add_listener",
        "nqn.2016-06.io.spdk:none",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        "4420",
    ]);
    assert_eq!(code, -32602);
    let l = t.json(&["nvmf_subsystem_get_listeners", N1]);
    assert_eq!(
        l[0]["address"],
        json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port})
    );

    let subs = t.json(&["nvmf_get_subsystems"]);
    assert_eq!(subs[0]["subtype"], "Discovery");
    assert_eq!(subs[0]["nqn"], "nqn.2014-08.org.nvmexpress.discovery");
    let s1 = &subs[1];
    assert_eq!(s1["nqn"], N1);
    assert_eq!(s1["subtype"], "NVMe");
    assert_eq!(s1["serial_number"], "SN1");
    assert_eq!(s1["model_number"], "Model One");
    assert_eq!(s1["allow_any_host"], true);
    assert_eq!(s1["max_namespaces"], 4);
    assert_eq!(
        s1["namespaces"],
        json!([{"nsid": 3, "bdev_name": "M0", "name": "M0", "nguid": "00112233445566778899AABBCCDDEEFF",
                "uuid": "ceccf520-691e-4b46-9546-34af789907c5", "eui64": "0011223344556677"}])
    );
    assert_eq!(subs[2]["hosts"], json!([{"nqn": host}]));
    assert_eq!(subs[2]["min_cntlid"], 10);
    assert_eq!(t.json(&["nvmf_get_subsystems", N2]).as_array().unwrap().len(), 1);
    let (code, _) = t.err(&["nvmf_get_subsystems", "nqn.2016-06.io.spdk:none"]);
    assert_eq!(code, -32602);
    assert_eq!(t.json(&["nvmf_subsystem_get_controllers", N1]), json!([]));
    assert_eq!(t.json(&["nvmf_subsystem_get_qpairs", N1]), json!([]));

    // save_config, then load it into a fresh target.
    let saved = t.ok(&["save_config"]);
    let doc: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let nvmf = doc["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "nvmf")
        .unwrap();
    let methods: Vec<&str> = nvmf["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "nvmf_create_transport",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_listener",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_host",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_add_listener",
        ]
    );
    let before = t.json(&["nvmf_get_subsystems"]);
    t.stop();
    let t2 = Target::start(&[]);
    let o = t2.rpc_with(&[], &["load_config"], Some(&saved));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(t2.json(&["nvmf_get_subsystems"]), before);
    // The reloaded target serves a host.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let a = admin_queue(addr, N1, false, 0);
    let mut io = io_queue_of(addr, N1, a.cntlid);
    let data = pattern(4096, 1);
    let c = io
        .command(
            &keel_nvme_proto::sqe::Command::Nvm(keel_nvme_proto::sqe::NvmCommand::Write(rw(3, 0, 8, false))),
            &data,
            &mut [],
        )
        .unwrap();
    assert!(c.status.is_success());
    drop(io);
    drop(a);

    // Removal and deletion.
    let (code, _) = t2.err(&["nvmf_subsystem_remove_ns", N1, "9"]);
    assert_eq!(code, -32602);
    t2.ok(&[
        "nvmf_subsystem_remove_listener",
        N2,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    let (code, _) = t2.err(&[
        "nvmf_subsystem_remove_listener",
        N2,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    assert_eq!(code, -32602);
    t2.ok(&["nvmf_subsystem_remove_ns", N1, "3"]);
    t2.ok(&["bdev_malloc_delete", "M0"]);
    t2.ok(&["nvmf_delete_subsystem", N2]);
    let (code, _) = t2.err(&["nvmf_delete_subsystem", N2]);
    assert_eq!(code, -32602);
    t2.ok(&["bdev_null_delete", "Null0"]);
    assert_eq!(t2.json(&["nvmf_get_subsystems"]).as_array().unwrap().len(), 2);
    t2.stop();
}
