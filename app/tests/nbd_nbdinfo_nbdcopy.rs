//! libnbd's tools against keel-tgt's NBD server: `nbdinfo` reads the size, the block-size
//! constraints (minimum = the bdev's block size, preferred 4096, maximum 32 MiB) and the
//! capability flags, `--map` reports base:allocation, `--list` lists every export with its
//! description; `nbdcopy --connections=2` (multi-conn) copies an image into an export and back
//! out, over TCP and over the Unix socket, and the copies are identical.

mod common;

use common::{nbd_unix_url, nbd_url, peer_ok, Target};
use serde_json::Value;

#[test]
fn nbdinfo_and_multi_conn_nbdcopy() {
    let t = Target::start(&[]);
    t.ok(&[
        "bdev_malloc_create",
        "-b",
        "M4k",
        "-u",
        "0b6c2f0e-6f3b-4c41-9d3f-2f8a6a1c9e01",
        "16",
        "4096",
    ]);
    t.ok(&["bdev_null_create", "N0", "64", "512"]);
    let (tcp, unix) = t.nbd_listen();
    t.plugin(&["nbd_server_add_export", "M4k", "-n", "disk", "-d", "a 4k disk"]);
    t.plugin(&["nbd_server_add_export", "N0", "-r"]);

    let info: Value = serde_json::from_str(&peer_ok("nbdinfo", &["--json", &nbd_url(&tcp, "disk")])).unwrap();
    let e = &info["exports"][0];
    assert_eq!(e["export-size"], 16 << 20);
    assert_eq!(e["block_size_minimum"], 4096);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 << 20);
    for cap in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
        "can_cache",
    ] {
        assert_eq!(e[cap], true, "{cap}: {e}");
    }
    assert_eq!(e["is_read_only"], false);
    let ro: Value = serde_json::from_str(&peer_ok("nbdinfo", &["--json", &nbd_unix_url(&unix, "N0")])).unwrap();
    let r = &ro["exports"][0];
    assert_eq!(
        (r["export-size"].as_u64(), r["block_size_minimum"].as_u64()),
        (Some(64 << 20), Some(512))
    );
    assert_eq!(r["is_read_only"], true);
    assert_eq!(r["can_trim"], false);

    // base:allocation: one allocated extent over the whole export (Keel cannot tell holes).
    let map = peer_ok("nbdinfo", &["--map", &nbd_url(&tcp, "disk")]);
    let lines: Vec<Vec<&str>> = map.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), 1, "{map}");
    assert_eq!(&lines[0][..4], ["0", &(16u64 << 20).to_string(), "0", "data"], "{map}");

    let list = peer_ok("nbdinfo", &["--list", "--json", &nbd_url(&tcp, "")]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk", "N0"]);
    assert_eq!(list["exports"][0]["description"], "a 4k disk");

    // nbdcopy with two connections, into the export and out of it again.
    let dir = t.dir.path();
    let src = dir.join("src.img");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) >> 11) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    peer_ok(
        "nbdcopy",
        &["--connections=2", src.to_str().unwrap(), &nbd_url(&tcp, "disk")],
    );
    let out = dir.join("out.img");
    peer_ok(
        "nbdcopy",
        &["--connections=2", &nbd_unix_url(&unix, "disk"), out.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&out).unwrap() == data,
        "nbdcopy out of the export differs from what went in"
    );
    // A second image in over the Unix socket, out over TCP.
    let data2: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&src, &data2).unwrap();
    peer_ok(
        "nbdcopy",
        &["--connections=2", src.to_str().unwrap(), &nbd_unix_url(&unix, "disk")],
    );
    peer_ok(
        "nbdcopy",
        &["--connections=2", &nbd_url(&tcp, "disk"), out.to_str().unwrap()],
    );
    assert!(std::fs::read(&out).unwrap() == data2, "second copy differs");
    assert!(t.stop().success());
}
