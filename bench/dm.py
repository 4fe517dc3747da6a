#!/usr/bin/env python3
"""Device-mapper benchmarks: what a dm layer costs, as same-run ratios against bare null.

Cases (keel-perf, 1 core, qd 128, 4 KiB randread; each run RUNS times, cases interleaved so all
see the same machine state; medians reported, and the ratio two ways: median case over median
bare null, and the median of each round's case over that round's bare null — the second is
steadier when the shared machine's speed drifts during the script):
  1. bare null bdev                                   (the reference)
  2. dm-linear over a null bdev                       (one target, the direct path)
  3. dm-striped over 2 null bdevs, 64 KiB chunks      (4 KiB reads never cross a chunk)
  3b. dm-striped over 3 null bdevs, 64 KiB chunks     (a leg count that is not a power of two:
                                                       the route divides by a reciprocal multiply)
  4. passthru over a null bdev                        (keel-bdev's cost of any stacked layer:
                                                       one more Channel::submit + complete + a
                                                       completion poller hop; the floor a dm
                                                       layer cannot go under)
  5. dm-striped over 2 null bdevs, 4 KiB chunks, 16 KiB randread (every I/O split into 4
     children: the split path), informational, only with --split

Usage: bench/dm.py [--runs 3] [--time 5] [--json OUT] [--split] [--compare DIR]
With --compare DIR (a directory holding another build's keel-perf, e.g. of the commit before a
change), every case of every round also runs with that binary right after this tree's, and both
are reported with their ratios: a before/after comparison in one run on one machine state.
Builds keel-perf in release mode. All bdevs come from one SPDK-format config (subsystems "bdev"
and "dm"), the one keel-perf and keel-tgt both read.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.path.join(ROOT, "target", "release", "keel-perf")

NULL_BLOCKS = 262144  # 1 GiB of 4 KiB blocks
SECTORS = NULL_BLOCKS * 8

# SPDK's raid0 over 2 null bdevs on this machine class, as the issue quotes it.
SPDK_RAID0_RATIO = 0.45


def config():
    nulls = [{"method": "bdev_null_create",
              "params": {"name": "Null%d" % i, "num_blocks": NULL_BLOCKS, "block_size": 4096}}
             for i in range(10)]
    bdev = nulls + [{"method": "bdev_passthru_create", "params": {"name": "Pass0", "base_bdev_name": "Null4"}}]
    dm = [
        {"method": "dm_create", "params": {"name": "dm_linear", "table": "0 %d linear Null1 0" % SECTORS}},
        {"method": "dm_create", "params": {"name": "dm_striped",
                                           "table": "0 %d striped 2 128 Null2 0 Null3 0" % (2 * SECTORS)}},
        {"method": "dm_create", "params": {"name": "dm_striped3",
                                           "table": "0 %d striped 3 128 Null7 0 Null8 0 Null9 0" % (3 * SECTORS)}},
        {"method": "dm_create", "params": {"name": "dm_striped4k",
                                           "table": "0 %d striped 2 8 Null5 0 Null6 0" % (2 * SECTORS)}},
    ]
    return {"subsystems": [{"subsystem": "bdev", "config": bdev}, {"subsystem": "dm", "config": dm}]}



def keel(cfg_path, bdev, t, io_size=4096, perf=PERF):
    out = subprocess.run([perf, "--json", cfg_path, "-T", bdev, "-w", "randread", "-q", "128", "-o", str(io_size),
                          "-t", str(t), "-m", "0x1", "--output-format", "json"],
                         check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    assert all(j["io_failed"] == 0 for j in res["results"]), res
    return sum(j["iops"] for j in res["results"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--split", action="store_true", help="also run the split-path case")
    ap.add_argument("--compare", help="directory with another build's keel-perf, run alternately")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-perf"], cwd=ROOT, check=True)
    cases = [
        ("bare null", "Null0", 4096),
        ("dm-linear over null", "dm_linear", 4096),
        ("dm-striped over 2 null", "dm_striped", 4096),
        ("dm-striped over 3 null", "dm_striped3", 4096),
        ("passthru over null (floor)", "Pass0", 4096),
    ]
    if a.split:
        cases.append(("dm-striped 4k chunk, 16k I/O (split)", "dm_striped4k", 16384))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config(), f)
        cfg_path = f.name
    builds = [("this tree", PERF)]
    if a.compare:
        builds.append(("compared", os.path.join(a.compare, "keel-perf")))
    runs = {(label, name): [] for label, _ in builds for name, _, _ in cases}
    try:
        for _ in range(a.runs):
            for name, bdev, size in cases:
                for label, perf in builds:
                    runs[(label, name)].append(keel(cfg_path, bdev, a.time, size, perf))
    finally:
        os.unlink(cfg_path)
    print(f"machine: {machine()}")
    print(f"keel-perf -m 0x1 -q 128 -w randread, {a.runs} runs x {a.time}s each, interleaved; medians")
    results = []
    for label, perf in builds:
        base = statistics.median(runs[(label, "bare null")])
        print(f"\n[{label}: {perf}]")
        print(f"{'case':40} {'IOPS (median)':>14}  {'vs bare null':>12}  {'per round':>9}  runs")
        for name, bdev, size in cases:
            r = runs[(label, name)]
            m = statistics.median(r)
            ratio = m / base
            paired = statistics.median(x / n for x, n in zip(r, runs[(label, "bare null")]))
            results.append({"build": label, "binary": perf, "case": name, "bdev": bdev, "io_size": size, "iops": m,
                            "runs": r, "ratio_vs_bare_null": ratio, "median_round_ratio": paired})
            shown = ", ".join(f"{x / 1e6:.2f}" for x in r)
            print(f"{name:40} {m / 1e6:11.2f} M  {ratio:11.3f}x  {paired:8.3f}x  ({shown})")
    print(f"\nreference: SPDK raid0 over 2 null bdevs runs at {SPDK_RAID0_RATIO:.2f}x bare null on this machine class")
    sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "runs": a.runs, "time_s": a.time, "queue_depth": 128,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
