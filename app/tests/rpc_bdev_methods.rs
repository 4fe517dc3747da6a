//! Every bdev method through SPDK's unmodified spdk-rpc: good and bad params, results, codes.

mod common;

use common::Target;
use serde_json::Value;

#[test]
fn bdev_methods_with_good_and_bad_params() {
    let t = Target::start(&["-m", "0x3"]);

    // malloc
    assert_eq!(t.ok(&["bdev_malloc_create", "-b", "M0", "16", "512"]).trim(), "M0");
    assert_eq!(t.ok(&["bdev_malloc_create", "16", "4096"]).trim(), "Malloc0");
    assert_eq!(t.err(&["bdev_malloc_create", "-b", "M0", "16", "512"]).0, -17);
    let (code, msg) = t.err(&["bdev_malloc_create", "-b", "Mx", "16", "1000"]);
    assert_eq!(code, -22, "{msg}");
    assert!(msg.contains("block_size"), "{msg}");
    let (code, _) = t.err(&["bdev_malloc_create", "-b", "Mx", "16", "512", "-t", "1", "-m", "8"]);
    assert_eq!(code, -22);

    // null
    assert_eq!(t.ok(&["bdev_null_create", "N0", "64", "512"]).trim(), "N0");
    assert_eq!(t.err(&["bdev_null_create", "N1", "0", "512"]).0, -22);

    // get_bdevs
    let all = t.json(&["bdev_get_bdevs"]);
    assert_eq!(all.as_array().unwrap().len(), 3);
    let one = t.json(&["bdev_get_bdevs", "-b", "N0"]);
    let b = &one[0];
    assert_eq!(b["name"], "N0");
    assert_eq!(b["product_name"], "Null disk");
    assert_eq!(b["block_size"], 512);
    assert_eq!(b["num_blocks"], 131072);
    assert_eq!(b["supported_io_types"]["read"], true);
    assert_eq!(b["supported_io_types"]["nvme_admin"], false);
    assert_eq!(b["driver_specific"], serde_json::json!({}));
    let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        &keys[..5],
        ["name", "aliases", "product_name", "block_size", "num_blocks"]
    );
    let (code, msg) = t.err(&["bdev_get_bdevs", "-b", "Nope"]);
    assert_eq!((code, msg.as_str()), (-19, "No such device"));
    let (code, _) = t.err(&["bdev_get_bdevs", "-b", "Nope", "-t", "50"]);
    assert_eq!(code, -19);
    // by UUID
    let uuid = b["uuid"].as_str().unwrap().to_string();
    assert_eq!(t.json(&["bdev_get_bdevs", "-b", &uuid])[0]["name"], "N0");

    // passthru, delay, error stacked on malloc
    assert_eq!(t.ok(&["bdev_passthru_create", "-b", "M0", "-p", "P0"]).trim(), "P0");
    let m0 = t.json(&["bdev_get_bdevs", "-b", "M0"]);
    assert_eq!(m0[0]["claimed"], true);
    assert_eq!(m0[0]["claim_type"], "exclusive_write");
    let p0 = t.json(&["bdev_get_bdevs", "-b", "P0"]);
    assert_eq!(p0[0]["driver_specific"]["passthru"]["base_bdev_name"], "M0");
    assert!(
        t.err(&["bdev_passthru_create", "-b", "M0", "-p", "P1"]).0 < 0,
        "second claim refused"
    );
    assert_eq!(t.err(&["bdev_passthru_create", "-b", "Nope", "-p", "P1"]).0, -19);
    assert_eq!(
        t.ok(&[
            "bdev_delay_create",
            "-b",
            "Malloc0",
            "-d",
            "D0",
            "-r",
            "10",
            "-t",
            "20",
            "-w",
            "30",
            "-n",
            "40"
        ])
        .trim(),
        "D0"
    );
    let d0 = t.json(&["bdev_get_bdevs", "-b", "D0"]);
    assert_eq!(d0[0]["driver_specific"]["delay"]["p99_write_latency"], 40);
    assert_eq!(t.ok(&["bdev_error_create", "N0"]).trim(), "true");
    let ee = t.json(&["bdev_get_bdevs", "-b", "EE_N0"]);
    assert_eq!(ee[0]["product_name"], "Error Injection Disk");
    t.ok(&["bdev_error_inject_error", "EE_N0", "read", "failure", "-n", "3"]);
    t.ok(&["bdev_error_inject_error", "EE_N0", "clear", "failure"]);
    let (code, _) = t.err(&["bdev_error_inject_error", "EE_N0", "read", "nvme_failure"]);
    assert_eq!(code, -22);
    let (code, _) = t.err(&["bdev_error_inject_error", "EE_Nope", "read", "failure"]);
    assert!(code == -19 || code == -22, "{code}");

    // iostat
    let st = t.json(&["bdev_get_iostat"]);
    assert!(st["tick_rate"].as_u64().unwrap() > 0);
    assert!(st["bdevs"].as_array().unwrap().iter().any(|b| b["name"] == "M0"));
    let st = t.json(&["bdev_get_iostat", "--names", "N0"]);
    // Only md's examine has read it (its superblock area).
    assert!(st["bdevs"][0]["num_read_ops"].as_u64().unwrap() <= 2, "{st}");
    let pc = t.json(&["bdev_get_iostat", "--names", "N0", "-c"]);
    assert_eq!(pc["name"], "N0");
    assert_eq!(t.err(&["bdev_get_iostat", "-c"]).0, -22);
    assert_eq!(t.err(&["bdev_get_iostat", "--names", "Nope"]).0, -19);

    // deletes: layers first, then bases; unknown names → -19
    assert_eq!(t.ok(&["bdev_error_delete", "EE_N0"]).trim(), "");
    assert_eq!(t.err(&["bdev_passthru_delete", "Nope"]).0, -19);
    t.ok(&["bdev_passthru_delete", "P0"]);
    t.ok(&["bdev_delay_delete", "D0"]);
    assert_eq!(t.json(&["bdev_get_bdevs", "-b", "M0"])[0]["claimed"], false);
    assert_eq!(
        t.err(&["bdev_null_delete", "M0"]).0,
        -19,
        "null_delete refuses a malloc bdev"
    );
    t.ok(&["bdev_malloc_delete", "M0"]);
    t.ok(&["bdev_malloc_delete", "Malloc0"]);
    t.ok(&["bdev_null_delete", "N0"]);
    assert_eq!(t.json(&["bdev_get_bdevs"]), Value::Array(vec![]));
    t.ok(&["bdev_wait_for_examine"]);
    assert!(t.stop().success());
}

#[test]
fn file_backed_bdevs_aio_and_uring() {
    let t = Target::start(&[]);
    let img = t.dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let img_s = img.to_str().unwrap();
    assert_eq!(t.ok(&["bdev_uring_create", img_s, "U0", "4096"]).trim(), "U0");
    let u = t.json(&["bdev_get_bdevs", "-b", "U0"]);
    assert_eq!(u[0]["num_blocks"], 1024);
    assert_eq!(u[0]["product_name"], "URING bdev");
    assert_eq!(u[0]["driver_specific"]["uring"]["filename"], img_s);
    // One bdev per file (each takes the file's lock): the aio bdev gets its own image.
    let img2 = t.dir.path().join("disk2.img");
    std::fs::write(&img2, vec![0u8; 4 << 20]).unwrap();
    assert_eq!(
        t.ok(&["bdev_aio_create", img2.to_str().unwrap(), "A0", "512"]).trim(),
        "A0"
    );
    let a = t.json(&["bdev_get_bdevs", "-b", "A0"]);
    assert_eq!(a[0]["product_name"], "AIO disk");
    assert_eq!(a[0]["num_blocks"], 8192);
    let missing = t.dir.path().join("missing.img");
    let (code, msg) = t.err(&["bdev_uring_create", missing.to_str().unwrap(), "U1"]);
    assert_eq!(code, -2, "{msg}");
    assert_eq!(t.err(&["bdev_aio_create", img_s, "A1", "1000"]).0, -22);
    t.ok(&["bdev_uring_delete", "U0"]);
    t.ok(&["bdev_aio_delete", "A0"]);
    assert_eq!(t.err(&["bdev_aio_delete", "A0"]).0, -19);
}
