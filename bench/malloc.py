#!/usr/bin/env python3
"""malloc bdev against the machine's copy limit, in one script, as same-run ratios.

The reference is bench/copyref.c: random 4 KiB copies out of (reads) or into (writes) one buffer
of the malloc bdev's size, with the malloc bdev's page policy (a 2 MiB-aligned anonymous mapping
advised MADV_HUGEPAGE), written in full before the clock starts, one thread pinned to the core
keel-perf's job runs on, 32 rotating 4 KiB buffers (qd 32). It copies with glibc's memcpy, an AVX2
loop and, for writes, an AVX2 loop with non-temporal stores; the **limit** is the best of them.
keel-perf runs with --prefill, so its reads hit written memory too.

Cases, each run RUNS times, interleaved round by round (keel, then its reference):
  1 core:  keel-perf randread / randwrite qd 32 on core 1   vs copyref best on core 1
  2 cores: keel-perf -m 0x3 -C (one job per core, each on half the bdev) randread / randwrite
           vs 1.8x the 1-core keel figure of the same round (the target), and two copyref
           processes at once (one per core, each its own buffer of the bdev's size) for scale
Also once per run: copyref on 4 KiB pages (what the limit becomes where THP is off).

Usage: bench/malloc.py [--runs 3] [--time 5] [--size-mib 512] [--json OUT]
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
SRC = os.path.join(ROOT, "bench", "copyref.c")
BLOCK = 4096
QD = 32
# The 1-core job runs on core 1 (core 0 also carries the machine's interrupts and other tenants'
# background work); the reference is pinned to the same core.
CORE = 1

METHODS = {"read": ["memcpy", "avx2"], "write": ["memcpy", "avx2", "avx2nt"]}


def build_copyref(out_dir):
    exe = os.path.join(out_dir, "copyref")
    subprocess.run(["cc", "-O2", "-o", exe, SRC], check=True)
    return exe


def copyref(exe, size, secs, direction, method, policy="thp", core=CORE):
    out = sh(["taskset", "-c", str(core), exe, str(size), str(secs), direction, method, policy, str(BLOCK), str(QD)])
    return json.loads(out)["ops_per_sec"]


def copyref_pair(exe, size, secs, direction, method):
    """Two copyref processes at once, one per core; their summed rate."""
    procs = [subprocess.Popen(["taskset", "-c", str(c), exe, str(size), str(secs), direction, method, "thp",
                               str(BLOCK), str(QD)], stdout=subprocess.PIPE, text=True) for c in (0, 1)]
    total = 0.0
    for p in procs:
        out, _ = p.communicate()
        total += json.loads(out)["ops_per_sec"]
    return total


def keel(cfg_path, workload, t, mask):
    args = [PERF, "--json", cfg_path, "-T", "Malloc0", "--prefill", "-w", workload, "-q", str(QD), "-o", str(BLOCK),
            "-t", str(t), "-m", mask, "--output-format", "json"]
    if mask == "0x3":
        args.append("-C")
    res = json.loads(sh(args))
    return sum(j["iops"] for j in res["results"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--json", help="write results here")
    a = ap.parse_args()
    size = a.size_mib << 20
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-perf"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp()
    exe = build_copyref(tmp)
    cfg = {"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": size // BLOCK,
                                                    "block_size": BLOCK}}]}]}
    cfg_path = os.path.join(tmp, "malloc.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)

    print(f"machine: {machine()}")
    print(f"malloc {a.size_mib} MiB, 4 KiB, qd {QD}; runs: {a.runs} x {a.time}s interleaved, medians\n")
    rows = {}

    def add(key, value):
        rows.setdefault(key, []).append(value)

    for r in range(a.runs):
        for d in ("read", "write"):
            w = "rand" + d
            k1 = keel(cfg_path, w, a.time, f"0x{1 << CORE:x}")
            add(f"keel 1c {d}", k1)
            best = 0.0
            for m in METHODS[d]:
                v = copyref(exe, size, min(a.time, 2), d, m)
                add(f"copy {d} {m}", v)
                best = max(best, v)
            add(f"limit {d}", best)
            add(f"ratio 1c {d}", k1 / best)
            k2 = keel(cfg_path, w, a.time, "0x3")
            add(f"keel 2c {d}", k2)
            add(f"scale 2c {d}", k2 / k1)
            pair_method = "avx2nt" if d == "write" else "avx2"
            add(f"copy 2c {d} {pair_method}", copyref_pair(exe, size, min(a.time, 2), d, pair_method))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] / 1e6:.3f}" if v[-1] > 50 else f"{k} {v[-1]:.2f}"
                                                for k, v in rows.items()))
        sys.stdout.flush()
    for d in ("read", "write"):
        add(f"copy {d} avx2 4k pages", copyref(exe, size, 2, d, "avx2", "4k"))

    print()
    med = {k: statistics.median(v) for k, v in rows.items()}
    for k, v in rows.items():
        m = med[k]
        if m > 50:
            print(f"{k:28} {m / 1e6:8.3f} M/s   runs: " + ", ".join(f"{x / 1e6:.3f}" for x in v))
        else:
            print(f"{k:28} {m:8.2f}x     runs: " + ", ".join(f"{x:.2f}" for x in v))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "runs": a.runs, "time_s": a.time, "size_mib": a.size_mib,
                       "rows": rows, "medians": med}, f, indent=2)


if __name__ == "__main__":
    main()
