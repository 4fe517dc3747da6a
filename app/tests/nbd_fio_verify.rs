//! fio's own nbd engine (`--ioengine=nbd`, libnbd; Debian's fio 3.33 has it) writes and
//! verifies (`verify=crc32c`, fatal on a mismatch) through keel-tgt's NBD server on three
//! stacks: a malloc bdev (over TCP), an md raid1 over two malloc bdevs (over the Unix socket)
//! and a dm striped device over two malloc bdevs (TCP, two jobs = two connections). fio opens a
//! probe connection and then one per job, and closes them without `DISC`.

mod common;

use std::process::Command;

use common::{nbd_unix_url, nbd_url, peer, Target};

fn fio_verify(dir: &std::path::Path, uri: &str, bs: &str, jobs: u32) {
    let out = Command::new(peer("fio"))
        .current_dir(dir)
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            &format!("--bs={bs}"),
            "--iodepth=16",
            "--size=16m",
            &format!("--numjobs={jobs}"),
            "--offset_increment=16m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio on {uri} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    let jobs_v = v["jobs"].as_array().unwrap();
    assert_eq!(jobs_v.len(), jobs as usize);
    for j in jobs_v {
        assert_eq!(j["error"], 0, "{j}");
        let bytes = |d: &str| j[d]["io_bytes"].as_u64().unwrap();
        assert!(bytes("write") >= 8 << 20, "{uri}: {j}");
        assert_eq!(
            bytes("read"),
            bytes("write"),
            "{uri}: every block written read back and verified"
        );
    }
}

#[test]
fn fio_nbd_engine_verifies_on_malloc_md_raid1_and_dm_striped() {
    let t = Target::start(&["-m", "0x3"]);
    for m in ["M0", "A0", "A1", "S0", "S1"] {
        t.ok(&["bdev_malloc_create", "-b", m, "40", "512"]);
    }
    t.plugin(&["md_create", "-n", "mirror", "-l", "raid1", "A0", "A1"]);
    // 2 × 32 MiB striped in 64 KiB chunks.
    t.plugin(&["dm_create", "stripe", "--table", "0 131072 striped 2 128 S0 0 S1 0"]);
    let (tcp, unix) = t.nbd_listen();
    for b in ["M0", "mirror", "stripe"] {
        assert_eq!(t.plugin(&["nbd_server_add_export", b]), b);
    }
    let dir = t.dir.path();
    fio_verify(dir, &nbd_url(&tcp, "M0"), "4k", 1);
    fio_verify(dir, &nbd_unix_url(&unix, "mirror"), "4k-64k", 1);
    fio_verify(dir, &nbd_url(&tcp, "stripe"), "16k", 2);
    // The connections went to both reactors (round robin), and all have closed.
    let exports = t.plugin(&["nbd_server_get_exports"]);
    for e in exports.as_array().unwrap() {
        assert_eq!(e["connections"].as_array().map(Vec::len), Some(0), "{e}");
    }
    assert!(t.stop().success());
}
