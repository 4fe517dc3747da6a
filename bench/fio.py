#!/usr/bin/env python3
"""fio + Keel's ioengine against fio's own null engine, in one script, as same-run ratios.

Case (run RUNS times, the two interleaved, medians reported):
  null bdev through keel-fio (libkeel_fio.so, thread=1) vs fio --ioengine=null,
  4 KiB randread, iodepth 128, one job, both pinned to CPU 0 (--cpus_allowed=0).
Anchor: SPDK's own fio plugin does 3.5 M IOPS in this job with Debian's fio (about 1.35x fio's
null engine, ~2.6 M, on the machine the anchor comes from).

Usage: bench/fio.py [--runs 3] [--time 5] [--iodepth 128] [--json OUT]
Needs Debian's fio 3.33 (scripts/deps.sh installs it) and builds keel-fio in release mode.
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
ENGINE = os.path.join(ROOT, "target", "release", "libkeel_fio.so")
SPDK_ANCHOR_IOPS = 3.5e6




def fio(args, t, qd):
    out = sh(["fio", "--name=bench", "--rw=randread", "--bs=4k", f"--iodepth={qd}", "--numjobs=1",
              "--time_based", f"--runtime={t}", "--cpus_allowed=0", "--output-format=json"] + args)
    job = json.loads(out[out.index("{"):])["jobs"][0]
    if job["error"]:
        raise RuntimeError(f"fio job error {job['error']}: {args}")
    return job["read"]["iops"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--iodepth", type=int, default=128)
    ap.add_argument("--json", help="write results here")
    a = ap.parse_args()
    version = sh(["fio", "--version"]).strip()
    if version != "fio-3.33":
        sys.exit(f"the keel engine needs Debian's fio-3.33, found {version}")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-fio"], cwd=ROOT, check=True)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "null.json")
        with open(cfg, "w") as f:
            json.dump({"subsystems": [{"subsystem": "bdev", "config": [
                {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 262144, "block_size": 4096}}
            ]}]}, f)
        keel_args = ["--thread=1", f"--ioengine=external:{ENGINE}", f"--keel_json_conf={cfg}", "--filename=Null0"]
        null_args = ["--ioengine=null", "--size=1g"]
        keel, ref = [], []
        print(f"machine: {machine()}")
        print(f"{version}; runs: {a.runs} x {a.time}s, randread 4k, iodepth {a.iodepth}, 1 job, medians\n")
        for _ in range(a.runs):
            keel.append(fio(keel_args, a.time, a.iodepth))
            ref.append(fio(null_args, a.time, a.iodepth))
        k, r = statistics.median(keel), statistics.median(ref)
        print(f"fio + keel engine, null bdev : {k / 1e6:6.3f} M IOPS  runs {[round(x / 1e6, 3) for x in keel]}")
        print(f"fio null engine              : {r / 1e6:6.3f} M IOPS  runs {[round(x / 1e6, 3) for x in ref]}")
        print(f"ratio keel / fio null        : {k / r:6.2f}x   (SPDK plugin anchor: ~1.35x)")
        print(f"vs SPDK plugin anchor 3.5 M  : {k / SPDK_ANCHOR_IOPS:6.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "fio": version, "runs": a.runs, "time_s": a.time, "iodepth": a.iodepth,
                       "keel_iops": k, "keel_runs": keel, "fio_null_iops": r, "fio_null_runs": ref,
                       "ratio": k / r, "vs_spdk_anchor": k / SPDK_ANCHOR_IOPS}, f, indent=2)


if __name__ == "__main__":
    main()
