#!/usr/bin/env python3
"""keel-tgt control-plane figures: time to ready, idle memory, RPC round-trip latency.

For each of RUNS starts: launch the release keel-tgt on a private socket, time until the socket
accepts a connection and answers spdk_get_version, read VmRSS after 1 s idle, then send CALLS
requests one at a time on one kept-open connection and time each round trip. Prints medians over
the runs, and the same client loop against nothing else (the reference is the client's own
cost, measured by a loopback echo through a socketpair).

Usage: bench/rpc.py [--runs 5] [--calls 2000]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-app"], cwd=ROOT, check=True)
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
