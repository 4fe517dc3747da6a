#!/usr/bin/env python3
"""Foundation benchmarks: keel-perf against fio in one script, as same-run ratios.

Cases (each run RUNS times, keel and its reference interleaved, medians reported):
  1. null bdev, 4 KiB randread, qd 128, 1 core       vs fio's null engine (same qd/bs)
  2. uring bdev on a 1 GiB file, 4 KiB randread qd 32 vs fio io_uring, direct=1, same file
  2b. the same on a 1 GiB file in /dev/shm (page cache; tmpfs has no NOWAIT reads, so io_uring
     punts each one to a worker, and Keel's channel copies inline instead) vs fio io_uring
     direct=0 on that file: CPU-bound, so it shows per-I/O cost where 2 shows the device's limit
  3. malloc 4 KiB randread / randwrite, qd 32         vs fio mmap engine on a tmpfs file
     (a memory-copy reference) and against SPDK's bdevperf anchor (1.15 M / 0.83 M IOPS)

Usage: bench/foundation.py [--runs 3] [--time 5] [--dir DIR] [--json OUT]
Needs fio (scripts/deps.sh installs it) and builds keel-perf in release mode.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import sh, machine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.path.join(ROOT, "target", "release", "keel-perf")

SPDK_ANCHOR = {"null randread": 13.3e6, "malloc randread": 1.15e6, "malloc randwrite": 0.83e6}




def keel(config, bdev, workload, qd, t):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"subsystems": [{"subsystem": "bdev", "config": config}]}, f)
        path = f.name
    try:
        out = sh([PERF, "--json", path, "-T", bdev, "-w", workload, "-q", str(qd), "-o", "4096",
                  "-t", str(t), "-m", "0x1", "--output-format", "json"])
    finally:
        os.unlink(path)
    res = json.loads(out)
    return sum(j["iops"] for j in res["results"])


def fio(args, t):
    out = sh(["fio", "--name=ref", "--bs=4k", "--numjobs=1", "--time_based", f"--runtime={t}",
              "--group_reporting", "--output-format=json", "--cpus_allowed=0"] + args)
    job = json.loads(out)["jobs"][0]
    return job["read"]["iops"] + job["write"]["iops"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--dir", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--only", help="comma-separated case names to run")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-perf"], cwd=ROOT, check=True)

    data_file = os.path.join(a.dir, "uring-1g.img")
    if not os.path.exists(data_file) or os.path.getsize(data_file) != 1 << 30:
        # Written, not sparse: reads must hit real blocks.
        sh(["dd", "if=/dev/urandom", f"of={data_file}", "bs=1M", "count=1024", "status=none"])
    shm_file = os.path.join("/dev/shm", f"keel-bench-{os.getpid()}")

    shm_data = os.path.join("/dev/shm", "keel-bench-uring-1g.img")
    null_cfg = [{"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 262144, "block_size": 4096}}]
    uring_cfg = [{"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": data_file}}]
    uring_shm_cfg = [{"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": shm_data}}]
    malloc_cfg = [{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}}]
    t = a.time
    cases = [
        ("null randread", lambda: keel(null_cfg, "Null0", "randread", 128, t),
         "fio null", lambda: fio(["--ioengine=null", "--rw=randread", "--iodepth=128", "--size=1g"], t)),
        ("uring randread", lambda: keel(uring_cfg, "Uring0", "randread", 32, t),
         "fio io_uring direct=1", lambda: fio(["--ioengine=io_uring", "--direct=1", "--rw=randread", "--iodepth=32",
                                               f"--filename={data_file}", "--size=1g"], t)),
        ("uring randread shm", lambda: keel(uring_shm_cfg, "Uring0", "randread", 32, t),
         "fio io_uring buffered", lambda: fio(["--ioengine=io_uring", "--direct=0", "--rw=randread", "--iodepth=32",
                                               f"--filename={shm_data}", "--size=1g"], t)),
        ("malloc randread", lambda: keel(malloc_cfg, "Malloc0", "randread", 32, t),
         "fio mmap tmpfs", lambda: fio(["--ioengine=mmap", "--rw=randread", "--iodepth=1", f"--filename={shm_file}",
                                        "--size=256m"], t)),
        ("malloc randwrite", lambda: keel(malloc_cfg, "Malloc0", "randwrite", 32, t),
         "fio mmap tmpfs", lambda: fio(["--ioengine=mmap", "--rw=randwrite", "--iodepth=1", f"--filename={shm_file}",
                                        "--size=256m"], t)),
    ]
    if a.only:
        keep = set(a.only.split(","))
        cases = [c for c in cases if c[0] in keep]
    if any(c[0] == "uring randread shm" for c in cases):
        sh(["dd", "if=/dev/urandom", f"of={shm_data}", "bs=1M", "count=1024", "status=none"])
    results = []
    print(f"machine: {machine()}")
    print(f"runs: {a.runs} x {t}s, medians\n")
    try:
        for name, kfn, refname, rfn in cases:
            ks, rs = [], []
            for _ in range(a.runs):
                ks.append(kfn())
                rs.append(rfn())
            k, r = statistics.median(ks), statistics.median(rs)
            row = {"case": name, "keel_iops": k, "keel_runs": ks, "ref": refname, "ref_iops": r, "ref_runs": rs,
                   "ratio": k / r if r else None}
            if name in SPDK_ANCHOR:
                row["vs_spdk_anchor"] = k / SPDK_ANCHOR[name]
            results.append(row)
            anchor = f"  vs SPDK anchor {row['vs_spdk_anchor']:.2f}x" if "vs_spdk_anchor" in row else ""
            print(f"{name:18} keel {k/1e6:7.3f} M IOPS | {refname:22} {r/1e6:7.3f} M | ratio {k/r:5.2f}x{anchor}")
            sys.stdout.flush()
    finally:
        for f in (shm_file, shm_data):
            if os.path.exists(f):
                os.unlink(f)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "runs": a.runs, "time_s": t, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
