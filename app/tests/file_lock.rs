//! One writer per file across processes (issue 13, item 6). Two keel-tgt once assembled the same
//! file-backed array and both wrote to it (split brain). Now a uring/aio bdev takes an advisory
//! lock on its file: exclusive for a writable bdev, shared for aio's `readonly: true`.
//!
//! * Two keel-tgt on one file: the second `bdev_uring_create` / `bdev_aio_create` is refused
//!   with EBUSY naming the first target's pid; after the first deletes its bdev, or is killed
//!   with SIGKILL, the second gets the file.
//! * Read-only sharing: two targets may both open a file with aio `readonly: true`; a writer
//!   is refused while they do (the message says the holder has a shared lock).
//! * keel-tgt and a fio process running the Keel engine: whoever comes second is refused, and
//!   the refusal names the other process (`keel-tgt` / `fio`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_exit, Target};

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 4 << 20]).unwrap();
    p
}

fn pid_of(t: &Target) -> u32 {
    t.child.id()
}

#[test]
fn two_targets_on_one_file() {
    let a = Target::start(&[]);
    let b = Target::start(&[]);
    let img = image(a.dir.path(), "disk.img");
    let img_s = img.to_str().unwrap();
    assert_eq!(a.ok(&["bdev_uring_create", img_s, "U0", "4096"]).trim(), "U0");
    // The second target is refused, whatever the module, naming the holder.
    let holder = format!("pid {} (keel-tgt, exclusive lock)", pid_of(&a));
    for args in [
        vec!["bdev_uring_create", img_s, "U1", "4096"],
        vec!["bdev_aio_create", img_s, "A1", "4096"],
        vec!["bdev_aio_create", img_s, "R1", "4096", "-r"],
    ] {
        let (code, msg) = b.err(&args);
        assert_eq!(code, -16, "{args:?}: {msg}");
        assert!(msg.contains(&holder) && msg.contains(img_s), "{args:?}: {msg}");
    }
    // A second bdev over the file in the same target is refused too, naming the first bdev.
    let (code, msg) = a.err(&["bdev_aio_create", img_s, "A0", "4096"]);
    assert_eq!(code, -16, "{msg}");
    assert!(msg.contains("bdev 'U0' of this process"), "{msg}");
    assert_eq!(
        b.json(&["bdev_get_bdevs"]),
        serde_json::json!([]),
        "nothing was created"
    );
    // Deleting the bdev frees the file for the other target.
    a.ok(&["bdev_uring_delete", "U0"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = b.rpc(&["bdev_uring_create", img_s, "U1", "4096"]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the lock was not released after the delete");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And a killed holder releases it at once (the kernel closes its files).
    let (code, _) = a.err(&["bdev_uring_create", img_s, "U0", "4096"]);
    assert_eq!(code, -16);
    let mut b = b;
    b.child.kill().unwrap();
    wait_exit(&mut b.child, Duration::from_secs(10)).expect("killed target exits");
    assert_eq!(a.ok(&["bdev_uring_create", img_s, "U0", "4096"]).trim(), "U0");
    assert!(a.stop().success());
}

#[test]
fn read_only_bdevs_share_a_file_and_keep_writers_out() {
    let a = Target::start(&[]);
    let b = Target::start(&[]);
    let img = image(a.dir.path(), "ro.img");
    let img_s = img.to_str().unwrap();
    assert_eq!(a.ok(&["bdev_aio_create", img_s, "R0", "512", "-r"]).trim(), "R0");
    assert_eq!(b.ok(&["bdev_aio_create", img_s, "R1", "512", "-r"]).trim(), "R1");
    for args in [
        vec!["bdev_uring_create", img_s, "U1"],
        vec!["bdev_aio_create", img_s, "A1", "512"],
    ] {
        let (code, msg) = b.err(&args);
        assert_eq!(code, -16, "{args:?}: {msg}");
        assert!(
            msg.contains(&format!("pid {} (keel-tgt, shared lock)", pid_of(&a))),
            "{args:?}: {msg}"
        );
    }
    assert!(a.stop().success());
    assert!(b.stop().success());
}

/// The fio engine library, as the fio tests find it: the newest of the two places cargo puts
/// it, built if neither exists.
fn engine_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    let profile = deps.parent().unwrap().to_path_buf();
    let newest = || {
        [deps.join("libkeel_fio.so"), profile.join("libkeel_fio.so")]
            .into_iter()
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .max()
            .map(|(_, p)| p)
    };
    if newest().is_none() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "keel-fio"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p keel-fio failed");
    }
    newest().expect("libkeel_fio.so")
}

/// Writes a Keel config with a uring bdev `U0` over `img` and an fio job over it; returns the
/// job file.
fn fio_job(dir: &Path, img: &str, runtime_s: u32) -> PathBuf {
    let cfg = dir.join("stack.json");
    let conf = serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_uring_create", "params": {"name": "U0", "filename": img, "block_size": 4096}}
    ]}]});
    std::fs::write(&cfg, serde_json::to_vec(&conf).unwrap()).unwrap();
    let job = dir.join("job.fio");
    std::fs::write(
        &job,
        format!(
            "[global]\nioengine=external:{}\nkeel_json_conf={}\nthread=1\n\n[w]\nfilename=U0\nrw=randwrite\nbs=4k\niodepth=4\ntime_based=1\nruntime={runtime_s}\n",
            engine_path().display(),
            cfg.display()
        ),
    )
    .unwrap();
    job
}

#[test]
fn keel_tgt_and_a_fio_engine_process_on_one_file() {
    let out = Command::new("fio")
        .arg("--version")
        .output()
        .expect("fio is required (scripts/deps.sh)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "fio-3.33");
    let t = Target::start(&[]);
    let img = image(t.dir.path(), "shared.img");
    let img_s = img.to_str().unwrap().to_string();

    // keel-tgt first: fio's engine cannot load its config, and says who holds the file.
    assert_eq!(t.ok(&["bdev_uring_create", &img_s, "T0", "4096"]).trim(), "T0");
    let job = fio_job(t.dir.path(), &img_s, 1);
    let out = Command::new("fio")
        .arg(&job)
        .current_dir(t.dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "fio ran over a file keel-tgt holds:\n{text}");
    assert!(
        text.contains(&format!("pid {} (keel-tgt, exclusive lock)", t.child.id())),
        "{text}"
    );
    t.ok(&["bdev_uring_delete", "T0"]);

    // fio first: keel-tgt is refused while fio writes, naming fio, and gets the file after.
    let job = fio_job(t.dir.path(), &img_s, 4);
    let mut fio = Command::new("fio")
        .arg(&job)
        .current_dir(t.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until fio's engine holds the file (its lock shows in /proc/locks), without
    // competing for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains(" FLOCK ") && l.split_whitespace().nth(4) == Some(fio.id().to_string().as_str()))
    {
        assert!(Instant::now() < deadline, "fio never took the file");
        assert!(fio.try_wait().unwrap().is_none(), "fio ended before taking the file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, msg) = t.err(&["bdev_uring_create", &img_s, "T0", "4096"]);
    assert_eq!(code, -16, "{msg}");
    assert!(
        msg.contains(&format!("pid {} (fio, exclusive lock)", fio.id())),
        "{msg}"
    );
    assert!(fio.wait().unwrap().success(), "fio's own run succeeds");
    assert_eq!(t.ok(&["bdev_uring_create", &img_s, "T0", "4096"]).trim(), "T0");
    assert!(t.stop().success());
}
