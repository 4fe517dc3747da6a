//! The lab guest from Rust tests: boot the shared lab's 6.12 kernel under QEMU, run one guest
//! script, get its exit status and output folder back.
//!
//! Every lab test of every crate goes through [`run_guest`], which runs `scripts/lab.sh run`
//! (the same door the shell uses: it finds `../shared/lab`, sets the lab up in the git-ignored
//! `target/lab-cache` when needed, and bounds the run in time). A lab that cannot start is a
//! failure, never a skip: [`LabResult::assert_success`] panics with the guest's log.
//!
//! A typical test (keel-tgt run on the host, a kernel client in the guest):
//!
//! ```ignore
//! use keel_testkit::lab::{run_guest, LabOpts};
//! let share = tempfile::tempdir()?;              // seen as /host in the guest
//! std::fs::write(share.path().join("data"), b"...")?;
//! let r = run_guest(Path::new("tests/lab/nbd_client.sh"), &LabOpts {
//!     share: Some(share.path().into()),
//!     guestfwd: vec![port],                      // guest reaches 10.0.2.100:port
//!     env: vec![("PORT".into(), port.to_string())],
//!     ..LabOpts::new("nbd_client")
//! });
//! r.assert_success();
//! assert!(r.guest_log().contains("verify: OK"));
//! ```
//!
//! Guest scripts run under busybox `sh` with `/lab/out` (the result folder, copied back) as
//! their working directory; `. /etc/lab/funcs.sh` gives the lab's helpers. Host-built
//! glibc binaries run from the share: keel's own (`target/debug/keel-tgt`) as they are, other
//! host tools with their libraries through [`share_host_binary`].
//!
//! Called from test threads on the host; blocks for the run (~20 s of boot under TCG plus the
//! script). Runs are independent: each boots its own guest with fresh disks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How one guest is started. Build it with [`LabOpts::new`] and struct update syntax.
#[derive(Clone, Debug)]
pub struct LabOpts {
    /// Names the run: its output folder is `target/lab-out/<name>-<pid>-<n>` unless
    /// [`LabOpts::out`] says otherwise.
    pub name: String,
    /// A host folder the guest sees read-write as `/host` (`LAB_SHARE`).
    pub share: Option<PathBuf>,
    /// Hard bound of the whole run, boot included (`LAB_TIMEOUT`); past it the run fails with
    /// status 124.
    pub timeout: Duration,
    /// Variables exported to the guest script (`LAB_ENV`); values must not contain newlines.
    pub env: Vec<(String, String)>,
    /// Host loopback ports the guest may connect to, as `10.0.2.100:PORT` (`LAB_GUESTFWD`;
    /// the guest network is `restrict`ed: nothing else on the host is reachable).
    pub guestfwd: Vec<u16>,
    /// virtio-blk disks `/dev/vda`... (`LAB_VDISKS`), each `vdisk_size` (`LAB_VDISK_SIZE`, e.g.
    /// `"256M"`).
    pub vdisks: u32,
    /// Size of each virtio disk.
    pub vdisk_size: String,
    /// Give the guest its emulated NVMe controller (`LAB_NVME_SIZE` 1G) or not (0).
    pub nvme: bool,
    /// Put an emulated Intel IOMMU in front of the devices (`LAB_IOMMU`), for VFIO tests. Off by
    /// default: under TCG on a loaded host, the 6.12 kernel's check that the timer works through
    /// the interrupt-remapped IO-APIC can fail at boot ("timer doesn't work through
    /// Interrupt-remapped IO-APIC", a panic), and only VFIO needs the IOMMU.
    pub iommu: bool,
    /// Guest memory in MiB (`LAB_MEM`).
    pub mem_mib: u32,
    /// Guest vCPUs (`LAB_CPUS`).
    pub cpus: u32,
    /// Where the guest's `/lab/out` lands; default under `target/lab-out/`.
    pub out: Option<PathBuf>,
}

impl LabOpts {
    /// A run named `name`: no share, no network ports, no disks, no NVMe, 2 vCPUs, 2 GiB, a
    /// 300 s bound.
    pub fn new(name: &str) -> LabOpts {
        LabOpts {
            name: name.to_string(),
            share: None,
            timeout: Duration::from_secs(300),
            env: Vec::new(),
            guestfwd: Vec::new(),
            vdisks: 0,
            vdisk_size: "256M".into(),
            nvme: false,
            iommu: false,
            mem_mib: 2048,
            cpus: 2,
            out: None,
        }
    }
}

/// What a run left: the guest script's exit status and its output folder.
#[derive(Debug)]
pub struct LabResult {
    /// The guest script's exit status; 124 = the run timed out, 125 = the guest died, 3 = the
    /// lab could not be set up.
    pub rc: i32,
    /// The guest's `/lab/out`: `guest.log` (the script's output), `console.log`, `dmesg.txt`,
    /// and whatever the script wrote.
    pub out_dir: PathBuf,
    /// Wall time of the run, boot included.
    pub wall: Duration,
    /// What `scripts/lab.sh` printed on the host (set-up, QEMU's start line, the verdict).
    pub host_log: String,
}

impl LabResult {
    /// The guest script's output (empty if the guest never ran it).
    pub fn guest_log(&self) -> String {
        std::fs::read_to_string(self.out_dir.join("guest.log")).unwrap_or_default()
    }

    /// A file the guest script wrote to its working directory.
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out_dir.join(name)).unwrap_or_default()
    }

    /// Panics unless the script exited 0, showing the host log, the guest log and the tails of
    /// the console and the kernel log.
    pub fn assert_success(&self) {
        if self.rc == 0 {
            return;
        }
        let tail = |name: &str, lines: usize| {
            let text = self.file(name);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        panic!(
            "lab run failed with status {} after {:.1} s (output in {})\n--- host ---\n{}\n--- guest.log ---\n{}\n--- console (tail) ---\n{}\n--- dmesg (tail) ---\n{}",
            self.rc,
            self.wall.as_secs_f64(),
            self.out_dir.display(),
            self.host_log,
            self.guest_log(),
            tail("console.log", 40),
            tail("dmesg.txt", 40),
        );
    }
}

/// The repository root (testkit lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit has a parent folder")
        .to_path_buf()
}

static RUNS: AtomicU32 = AtomicU32::new(0);

/// Boots the lab guest, runs `script` in it with `opts`, and returns when the guest powered
/// off (or the bound passed). Never skips: a lab that cannot start gives a nonzero
/// [`LabResult::rc`] (3) with the reason in [`LabResult::host_log`]. A guest that died before
/// the script started (status 125 and no script output: a boot that failed under emulation)
/// is booted once more; a second such death is the result. Blocks the calling thread.
pub fn run_guest(script: &Path, opts: &LabOpts) -> LabResult {
    let first = run_once(script, opts);
    if first.rc != 125 || first.out_dir.join("guest.log").exists() {
        return first;
    }
    eprintln!(
        "lab: {}: the guest died before the script ran (output in {}); booting once more",
        opts.name,
        first.out_dir.display()
    );
    let mut second = run_once(script, opts);
    second.host_log = format!(
        "(first boot died before the script ran; its output is in {})\n{}",
        first.out_dir.display(),
        second.host_log
    );
    second
}

fn run_once(script: &Path, opts: &LabOpts) -> LabResult {
    let out_dir = opts.out.clone().unwrap_or_else(|| {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        repo_root()
            .join("target/lab-out")
            .join(format!("{}-{}-{n}", opts.name, std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = Command::new(repo_root().join("scripts/lab.sh"));
    cmd.arg("run")
        .arg(script)
        .env("LAB_OUT", &out_dir)
        .env("LAB_CONSOLE", "quiet")
        .env("LAB_TIMEOUT", opts.timeout.as_secs().max(1).to_string())
        .env("LAB_VDISKS", opts.vdisks.to_string())
        .env("LAB_VDISK_SIZE", &opts.vdisk_size)
        .env("LAB_NVME_SIZE", if opts.nvme { "1G" } else { "0" })
        .env("LAB_IOMMU", if opts.iommu { "1" } else { "0" })
        .env("LAB_MEM", opts.mem_mib.to_string())
        .env("LAB_CPUS", opts.cpus.to_string())
        .env("LAB_NET", "restrict")
        .env(
            "LAB_GUESTFWD",
            opts.guestfwd.iter().map(u16::to_string).collect::<Vec<_>>().join(" "),
        )
        .env(
            "LAB_ENV",
            opts.env
                .iter()
                .map(|(k, v)| {
                    assert!(!v.contains('\n') && !k.contains('\n'), "LAB_ENV entries are lines");
                    format!("{k}={}", sh_quote(v))
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match &opts.share {
        Some(s) => cmd.env("LAB_SHARE", s),
        None => cmd.env_remove("LAB_SHARE"),
    };
    let t0 = Instant::now();
    let (rc, host_log) = match cmd.output() {
        Ok(o) => (
            o.status.code().unwrap_or(125),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (3, format!("cannot run scripts/lab.sh: {e}")),
    };
    let wall = t0.elapsed();
    eprintln!(
        "lab: {} rc={rc} wall={:.1}s out={}",
        opts.name,
        wall.as_secs_f64(),
        out_dir.display()
    );
    LabResult {
        rc,
        out_dir,
        wall,
        host_log,
    }
}

/// Copies the host program `bin` and the shared libraries it needs (all but the C library,
/// which the guest has in the same version: both are Debian bookworm) into `share/bin` and
/// `share/lib`, and returns how the guest runs it: `LD_LIBRARY_PATH=/host/lib /host/bin/NAME`.
/// For host tools the guest image lacks (`mkfs.ext4`). Panics if `ldd` cannot resolve it.
pub fn share_host_binary(bin: &Path, share: &Path) -> String {
    let name = bin.file_name().expect("a file").to_string_lossy().into_owned();
    let (bin_dir, lib_dir) = (share.join("bin"), share.join("lib"));
    std::fs::create_dir_all(&bin_dir).expect("share/bin");
    std::fs::create_dir_all(&lib_dir).expect("share/lib");
    std::fs::copy(bin, bin_dir.join(&name)).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    let ldd = Command::new("ldd").arg(bin).output().expect("run ldd");
    let text = String::from_utf8_lossy(&ldd.stdout);
    for line in text.lines() {
        // "\tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x...)"
        let Some((soname, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        let path = rest.split_whitespace().next().unwrap_or("");
        assert!(
            path.starts_with('/'),
            "ldd cannot resolve {soname} for {}",
            bin.display()
        );
        if soname.starts_with("libc.so") || soname.starts_with("ld-linux") {
            continue;
        }
        std::fs::copy(path, lib_dir.join(soname)).unwrap_or_else(|e| panic!("copy {path}: {e}"));
    }
    format!("LD_LIBRARY_PATH=/host/lib /host/bin/{name}")
}

/// `v` single-quoted for a POSIX shell.
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// A free TCP port on 127.0.0.1 now (bound, then released), for a host service the guest
/// reaches through [`LabOpts::guestfwd`].
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}
