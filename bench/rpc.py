#!/usr/bin/env python3
"""keel-tgt control-plane figures: time to ready, idle memory, RPC round-trip latency.

For each of RUNS starts: launch the release keel-tgt on a private socket, time until the socket
accepts a connection and answers spdk_get_version, read VmRSS after 1 s idle, then send CALLS
requests one at a time on one kept-open connection and time each round trip. Prints medians over
the runs, and the same client loop against nothing else (the reference is the client's own
cost, measured by a loopback echo through a socketpair).

Scale case (--scale 1000,10000,50000): one keel-tgt grows to each count of null bdevs in turn
(created one RPC at a time, as a user script would). At each count: the median time of the last
SCALE_WINDOW creates before it, the median of SCALE_WINDOW single lookups `bdev_get_bdevs -b`
of random bdevs (by name, then by UUID), one full `bdev_get_bdevs`, one `framework_get_config
bdev` (save_config's bdev part), and the RSS growth per bdev since the empty target. The issue's
bar: a lookup and a create at 50,000 within 1.2x of their cost at 1,000.

Usage: bench/rpc.py [--runs 5] [--calls 2000] [--scale 1000,10000,50000] [--tgt KEEL_TGT]
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TGT = os.path.join(ROOT, "target", "release", "keel-tgt")


def rpc_loop(sock, calls, method="spdk_get_version"):
    lat = []
    buf = b""
    for i in range(calls):
        req = json.dumps({"jsonrpc": "2.0", "method": method, "id": i}).encode()
        t0 = time.perf_counter_ns()
        sock.sendall(req)
        while b"\n" not in buf:
            buf += sock.recv(65536)
        _, buf = buf.split(b"\n", 1)
        lat.append(time.perf_counter_ns() - t0)
    return lat


def echo_reference(calls):
    a, b = socket.socketpair()
    lat = []
    for i in range(calls):
        req = json.dumps({"jsonrpc": "2.0", "method": "spdk_get_version", "id": i}).encode()
        t0 = time.perf_counter_ns()
        a.sendall(req)
        b.sendall(b.recv(65536) + b"\n")
        a.recv(65536)
        lat.append(time.perf_counter_ns() - t0)
    return lat


def one_run(calls):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "spdk.sock")
    t0 = time.perf_counter()
    p = subprocess.Popen([TGT, "-r", path, "-L", "warn", "--no-pin"], stderr=subprocess.DEVNULL)
    s = None
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            break
        except OSError:
            s.close()
            time.sleep(0.0005)
            if time.perf_counter() - t0 > 10:
                raise RuntimeError("keel-tgt not ready in 10 s")
    rpc_loop(s, 1)
    ready_ms = (time.perf_counter() - t0) * 1000
    time.sleep(1.0)
    with open(f"/proc/{p.pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    lat = rpc_loop(s, calls)
    s.close()
    p.terminate()
    p.wait(10)
    return ready_ms, rss_kib, lat


SCALE_WINDOW = 200


class Conn:
    """One kept-open JSON-RPC connection; `call` returns (result, seconds)."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""
        self.id = 0

    def call(self, method, params=None):
        self.id += 1
        req = {"jsonrpc": "2.0", "method": method, "id": self.id}
        if params is not None:
            req["params"] = params
        t0 = time.perf_counter()
        self.s.sendall(json.dumps(req).encode())
        # keel-tgt ends every response with a newline (JSON text has none unescaped).
        parts = [self.buf]
        while b"\n" not in parts[-1]:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("keel-tgt closed the connection")
            parts.append(chunk)
        line, self.buf = b"".join(parts).split(b"\n", 1)
        obj = json.loads(line)
        dt = time.perf_counter() - t0
        if "error" in obj:
            raise RuntimeError(f"{method}: {obj['error']}")
        return obj["result"], dt


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def scale(counts):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "spdk.sock")
    p = subprocess.Popen([TGT, "-r", path, "-L", "warn", "--no-pin"], stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    while not os.path.exists(path):
        time.sleep(0.005)
        if time.perf_counter() - t0 > 10:
            raise RuntimeError("keel-tgt not ready in 10 s")
    time.sleep(0.2)
    c = Conn(path)
    c.call("spdk_get_version")
    rss0 = rss_kib(p.pid)
    rows = []
    made = 0
    uuids = []
    import random
    rng = random.Random(18)
    try:
        for n in counts:
            window = []
            while made < n:
                r, dt = c.call("bdev_null_create", {"name": f"n{made}", "num_blocks": 8, "block_size": 512})
                if made >= n - SCALE_WINDOW:
                    window.append(dt)
                made += 1
            by_name = [c.call("bdev_get_bdevs", {"name": f"n{rng.randrange(made)}"})[1] for _ in range(SCALE_WINDOW)]
            one = c.call("bdev_get_bdevs", {"name": f"n{made - 1}"})[0][0]
            by_uuid = [c.call("bdev_get_bdevs", {"name": one["uuid"]})[1] for _ in range(SCALE_WINDOW)]
            _, list_s = c.call("bdev_get_bdevs")
            _, cfg_s = c.call("framework_get_config", {"name": "bdev"})
            time.sleep(0.5)
            rows.append({"bdevs": n, "create_us": statistics.median(window) * 1e6,
                         "lookup_name_us": statistics.median(by_name) * 1e6,
                         "lookup_uuid_us": statistics.median(by_uuid) * 1e6,
                         "list_ms": list_s * 1e3, "save_config_ms": cfg_s * 1e3,
                         "rss_per_bdev_kib": (rss_kib(p.pid) - rss0) / n})
            r = rows[-1]
            print(f"{n:6} bdevs: create {r['create_us']:7.1f} us  lookup name {r['lookup_name_us']:6.1f} us"
                  f"  uuid {r['lookup_uuid_us']:6.1f} us  list {r['list_ms']:8.1f} ms"
                  f"  framework_get_config {r['save_config_ms']:8.1f} ms  RSS/bdev {r['rss_per_bdev_kib']:5.2f} KiB")
            sys.stdout.flush()
    finally:
        p.terminate()
        p.wait(30)
    first, last = rows[0], rows[-1]
    print(f"create {last['bdevs']} vs {first['bdevs']}: {last['create_us'] / first['create_us']:.2f}x; "
          f"lookup by name {last['lookup_name_us'] / first['lookup_name_us']:.2f}x, "
          f"by uuid {last['lookup_uuid_us'] / first['lookup_uuid_us']:.2f}x")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--scale", help="comma-separated bdev counts: run only the scale case")
    ap.add_argument("--tgt", help="run this keel-tgt binary (e.g. another build's) instead of building this tree's")
    a = ap.parse_args()
    global TGT
    if a.tgt:
        TGT = a.tgt
    else:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-app"], cwd=ROOT, check=True)
    if a.scale:
        scale([int(x) for x in a.scale.split(",")])
        return 0
    readies, rsss, p50s, p99s, rates = [], [], [], [], []
    for _ in range(a.runs):
        ready, rss, lat = one_run(a.calls)
        lat.sort()
        readies.append(ready)
        rsss.append(rss)
        p50s.append(lat[len(lat) // 2] / 1000)
        p99s.append(lat[int(len(lat) * 0.99)] / 1000)
        rates.append(len(lat) / (sum(lat) / 1e9))
    ref = sorted(echo_reference(a.calls))
    print(f"runs={a.runs} calls/run={a.calls} (medians)")
    print(f"ready:          {statistics.median(readies):8.1f} ms   (SPDK spdk_tgt: 330-430 ms)")
    print(f"idle RSS:       {statistics.median(rsss)/1024:8.1f} MiB  (SPDK spdk_tgt: ~370 MiB)")
    print(f"call p50:       {statistics.median(p50s):8.1f} us   (SPDK: ~4000 us, 4 ms poll period)")
    print(f"call p99:       {statistics.median(p99s):8.1f} us")
    print(f"calls/s:        {statistics.median(rates):8.0f}      (SPDK: ~250)")
    print(f"client-only reference (socketpair echo) p50: {ref[len(ref)//2]/1000:.1f} us")


if __name__ == "__main__":
    sys.exit(main())
