#!/usr/bin/env python3
"""NVMe over TCP: keel-tgt as the target, Keel's initiator in keel-perf, against SPDK's anchor.

Setup (issue 15): keel-tgt on the target CPU (0 by default) with one reactor, serving a 1 GiB
null bdev and a 1 GiB malloc bdev as namespaces of two subsystems on 127.0.0.1; keel-perf on
the initiator CPU (1 by default), one reactor, attaching the subsystem under test with
bdev_nvme_attach_controller from its JSON config. Cases: 4 KiB randread and randwrite at queue
depth 1, 32 and 128 on the null and the malloc namespace. fio's null engine (4 KiB randread, qd
128, on the initiator CPU) runs in the same script as the machine reference. Every case runs
RUNS times, interleaved with the others; medians.

SPDK's anchor (nvmf_tgt 1 core + spdk_nvme_perf 1 core on this machine class, with fio null at
~1.4 M IOPS in the same measurement): null randread 22-31 k IOPS at qd 1 (32-45 us), ~220-257 k
at qd 32, ~282 k (median) at qd 128; null randwrite ~31 k / ~267 k / ~397 k; malloc randread qd
32 ~160-180 k, randwrite ~180-205 k. Targets: >= 1.3x SPDK's IOPS at qd 32 and 128 (>= 0.26x
fio null in the same run for null randread qd 128), <= 0.8x its qd 1 latency.

Usage: bench/nvmf.py [--runs 3] [--time 5] [--target-core 0] [--initiator-core 1] [--json OUT]
Needs fio (scripts/deps.sh) and builds keel-tgt and keel-perf in release mode.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import sh, machine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TGT = os.path.join(ROOT, "target", "release", "keel-tgt")
PERF = os.path.join(ROOT, "target", "release", "keel-perf")
SIZE = 1 << 30
NQN = {"null": "nqn.2016-06.io.keel:bench-null", "malloc": "nqn.2016-06.io.keel:bench-malloc"}

# SPDK's anchor IOPS (midpoints of the ranges in the issue) and qd 1 latency (us).
SPDK_IOPS = {
    ("null", "randread", 1): 26.5e3, ("null", "randread", 32): 238e3, ("null", "randread", 128): 282e3,
    ("null", "randwrite", 1): 31e3, ("null", "randwrite", 32): 267e3, ("null", "randwrite", 128): 397e3,
    ("malloc", "randread", 32): 170e3, ("malloc", "randwrite", 32): 192e3,
}
SPDK_QD1_LAT_US = {("null", "randread"): 38.5}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rpc(sock, method, params=None):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    s.sendall(json.dumps(req).encode())
    buf = b""
    while True:
        d = s.recv(65536)
        if not d:
            raise RuntimeError(f"{method}: connection closed")
        buf += d
        try:
            r = json.loads(buf)
            break
        except ValueError:
            continue
    s.close()
    if "error" in r:
        raise RuntimeError(f"{method}: {r['error']}")
    return r["result"]


def wait_for(path, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def start_target(tmp, core):
    sock = os.path.join(tmp, "tgt.sock")
    proc = subprocess.Popen([TGT, "-m", hex(1 << core), "-r", sock, "-L", "warn"])
    wait_for(sock, "keel-tgt")
    port = free_port()
    rpc(sock, "bdev_null_create", {"name": "Null0", "num_blocks": SIZE // 4096, "block_size": 4096})
    rpc(sock, "bdev_malloc_create", {"name": "Malloc0", "num_blocks": SIZE // 4096, "block_size": 4096})
    rpc(sock, "nvmf_create_transport", {"trtype": "TCP", "max_queue_depth": 128, "in_capsule_data_size": 8192,
                                        "max_io_size": 131072})
    for kind, bdev in [("null", "Null0"), ("malloc", "Malloc0")]:
        rpc(sock, "nvmf_create_subsystem", {"nqn": NQN[kind], "allow_any_host": True, "serial_number": "BENCH"})
        rpc(sock, "nvmf_subsystem_add_ns", {"nqn": NQN[kind], "namespace": {"bdev_name": bdev}})
        rpc(sock, "nvmf_subsystem_add_listener", {"nqn": NQN[kind], "listen_address": {
            "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}})
    return proc, port


def keel(tmp, port, kind, workload, qd, t, core):
    cfg = os.path.join(tmp, f"init-{kind}.json")
    with open(cfg, "w") as f:
        json.dump({"subsystems": [{"subsystem": "bdev", "config": [{
            "method": "bdev_nvme_attach_controller",
            "params": {"name": "Nvme0", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
                       "trsvcid": str(port), "subnqn": NQN[kind]}}]}]}, f)
    out = sh([PERF, "--json", cfg, "-T", "Nvme0n1", "-w", workload, "-q", str(qd), "-o", "4096",
              "-t", str(t), "-m", hex(1 << core), "--output-format", "json"])
    job = json.loads(out)["results"][0]
    if job.get("io_failed"):
        raise RuntimeError(f"keel-perf: failed I/O {job}")
    return job["iops"], job["avg_latency_us"]


def fio_null(t, core):
    out = sh(["taskset", "-c", str(core), "fio", "--name=ref", "--ioengine=null", "--rw=randread", "--bs=4k",
              "--iodepth=128", "--size=1g", "--numjobs=1", "--time_based", f"--runtime={t}",
              "--output-format=json"])
    return json.loads(out[out.index("{"):])["jobs"][0]["read"]["iops"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--target-core", type=int, default=0)
    ap.add_argument("--initiator-core", type=int, default=1)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-app", "-p", "keel-perf"], cwd=ROOT, check=True)
    cases = [(k, w, q) for k in ["null", "malloc"] for w in ["randread", "randwrite"] for q in [1, 32, 128]]
    samples = {c: [] for c in cases}
    ref = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_target(tmp, args.target_core)
        try:
            for _ in range(args.runs):
                ref.append(fio_null(args.time, args.initiator_core))
                for c in cases:
                    samples[c].append(keel(tmp, port, *c, args.time, args.initiator_core))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    fio_med = statistics.median(ref)
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f}; medians of {args.runs} x {args.time} s")
    print(f"fio null randread 4k qd128: {fio_med / 1e3:.0f} k IOPS")
    print(f"{'case':<28} {'IOPS':>10} {'lat us':>8} {'x SPDK':>7} {'x fio null':>10}")
    results = {"machine": machine(), "fio_null_randread_qd128": fio_med, "cases": {}}
    for c in cases:
        iops = statistics.median(s[0] for s in samples[c])
        lat = statistics.median(s[1] for s in samples[c])
        anchor = SPDK_IOPS.get(c)
        ratio = f"{iops / anchor:.2f}" if anchor else "-"
        name = f"{c[0]} {c[1]} qd{c[2]}"
        print(f"{name:<28} {iops / 1e3:>8.1f} k {lat:>8.1f} {ratio:>7} {iops / fio_med:>10.3f}")
        results["cases"][name] = {"iops": iops, "avg_latency_us": lat, "x_spdk": iops / anchor if anchor else None,
                                  "x_fio_null": iops / fio_med}
    lat1 = statistics.median(s[1] for s in samples[("null", "randread", 1)])
    print(f"null randread qd1 latency vs SPDK's {SPDK_QD1_LAT_US[('null', 'randread')]} us: "
          f"{lat1 / SPDK_QD1_LAT_US[('null', 'randread')]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
