//! keel-tgt's NBD server with qemu's own clients (qemu 10: extended headers, structured
//! replies, base:allocation, FUA writes): qemu-io writes patterns over `nbd://` (TCP) and reads
//! them back with `-P` over `nbd+unix://`, zeroes and discards; `qemu-img convert` copies a
//! source image into an export and `qemu-img compare` finds them identical over both
//! transports; `qemu-img info` sees the size.

mod common;

use common::{nbd_unix_url, nbd_url, peer_ok, run_peer, Target};

#[test]
fn qemu_io_and_qemu_img_against_an_export() {
    let t = Target::start(&[]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "32", "512"]);
    let (tcp, unix) = t.nbd_listen();
    assert_eq!(t.plugin(&["nbd_server_add_export", "M0", "-d", "scratch"]), "M0");
    let tcp_url = nbd_url(&tcp, "M0");
    let unix_url = nbd_unix_url(&unix, "M0");

    let io = |url: &str, cmds: &[&str]| {
        let mut args = vec!["-f", "raw"];
        for c in cmds {
            args.extend(["-c", c]);
        }
        args.push(url);
        let out = peer_ok("qemu-io", &args);
        assert!(!out.contains("failed"), "qemu-io {cmds:?}: {out}");
        out
    };
    io(
        &tcp_url,
        &[
            "write -P 0xa5 0 1M",
            "write -P 0x5a 1M 64k",
            "write -P 0x11 3M 4k",
            "flush",
        ],
    );
    io(
        &unix_url,
        &[
            "read -P 0xa5 0 1M",
            "read -P 0x5a 1M 64k",
            "read -P 0 1088k 960k",
            "read -P 0x11 3M 4k",
        ],
    );
    // Zeroes (WRITE_ZEROES) and discards (TRIM), then read back.
    io(
        &unix_url,
        &["write -z 0 512k", "discard 3M 4k", "write -f -P 0x77 2M 8k"],
    );
    io(
        &tcp_url,
        &["read -P 0 0 512k", "read -P 0xa5 512k 512k", "read -P 0x77 2M 8k"],
    );
    // A pattern read that does not match must fail: the checks above are real.
    let o = run_peer("qemu-io", &["-f", "raw", "-c", "read -P 0x99 0 4k", &tcp_url]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Pattern verification failed"), "{text}");

    let info = peer_ok("qemu-img", &["info", "-f", "raw", &tcp_url]);
    assert!(info.contains("virtual size: 32 MiB"), "{info}");

    // convert a source image in, compare it over both transports.
    let src = t.dir.path().join("src.img");
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let src = src.to_str().unwrap();
    peer_ok("qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", src, &tcp_url]);
    for url in [&tcp_url, &unix_url] {
        let out = peer_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", src, url]);
        assert!(out.contains("Images are identical"), "{out}");
    }
    // And a changed export no longer compares equal.
    io(&tcp_url, &["write -P 0 4k 512"]);
    let o = run_peer("qemu-img", &["compare", "-f", "raw", "-F", "raw", src, &tcp_url]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));

    let exports = t.plugin(&["nbd_server_get_exports"]);
    assert_eq!(exports[0]["name"], "M0");
    assert_eq!(exports[0]["description"], "scratch");
    assert!(t.stop().success());
}
