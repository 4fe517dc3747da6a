#!/usr/bin/env python3
"""keel-tgt's NBD server against nbdkit and qemu-nbd, through the same client, as same-run ratios.

Servers (all on the server CPU, 0 by default, started once and kept for the whole run; the
client on the client CPU, 1 by default):
  keel-null    keel-tgt -m <server CPU> (one reactor) exporting a 1 GiB null bdev
  keel-malloc  the same keel-tgt exporting a 1 GiB malloc bdev
  nbdkit       nbdkit memory 1G            (taskset -c <server CPU>)
  qemu-nbd     qemu-nbd -f raw on a 1 GiB file in /dev/shm (filled: a sparse file would answer
               reads with holes), --cache=writeback (taskset)
Client: fio's nbd engine (libnbd), one job, pinned to the client CPU, over a Unix socket and over
TCP on 127.0.0.1. Cases: 4 KiB randread and randwrite at iodepth 1 and 32, 1 MiB sequential read
and write at iodepth 8. Every case runs RUNS times with the four servers alternating; medians.
Besides IOPS, throughput and mean latency, each run records the server's CPU time per request:
keel-tgt's reactor busy ticks (a polled reactor spins when idle; its busy ticks are the turns
that did work), the others' process CPU time. On a shared machine, where other processes spin
on the server's CPU, that figure is the one least distorted by them.

Targets (issue 19): at iodepth 32 >= 1.5x nbdkit's IOPS, at iodepth 1 <= 0.8x its latency,
1 MiB sequential >= 1.2x its throughput, over both transports.

Usage: bench/nbd.py [--runs 3] [--time 5] [--transports unix,tcp] [--cases ...]
                    [--server-core 0] [--client-core 1] [--json OUT]
Needs fio with the nbd engine, nbdkit and qemu-nbd (scripts/deps.sh) and builds keel-tgt in
release mode.
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
SIZE = 1 << 30

# name: (rw, bs, iodepth)
CASES = {
    "randread-4k-qd1": ("randread", "4k", 1),
    "randread-4k-qd32": ("randread", "4k", 32),
    "randwrite-4k-qd1": ("randwrite", "4k", 1),
    "randwrite-4k-qd32": ("randwrite", "4k", 32),
    "read-1m-qd8": ("read", "1m", 8),
    "write-1m-qd8": ("write", "1m", 8),
}
SERVERS = ["keel-null", "keel-malloc", "nbdkit", "qemu-nbd"]


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


def wait_for(path_or_port, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if isinstance(path_or_port, int):
                socket.create_connection(("127.0.0.1", path_or_port), timeout=1).close()
            else:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path_or_port)
                s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def proc_cpu_s(pid):
    """User + system CPU seconds of process `pid` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Servers:
    """Starts every server on the server CPU and knows each one's URI per transport."""

    def __init__(self, tmp, core):
        self.procs = []
        self.uris = {}
        self.pids = {}
        log = open(os.path.join(tmp, "servers.log"), "w")
        # keel-tgt: one target, one reactor on the server core, both exports, both transports.
        rpc_sock = os.path.join(tmp, "keel-rpc.sock")
        self.rpc_sock = rpc_sock
        keel_unix = os.path.join(tmp, "keel-nbd.sock")
        keel_port = free_port()
        self.procs.append(subprocess.Popen([TGT, "-m", hex(1 << core), "-r", rpc_sock, "-L", "warn"]))
        wait_for(rpc_sock, "keel-tgt")
        rpc(rpc_sock, "bdev_null_create", {"name": "Null0", "num_blocks": SIZE // 4096, "block_size": 4096})
        rpc(rpc_sock, "bdev_malloc_create", {"name": "Malloc0", "num_blocks": SIZE // 4096, "block_size": 4096})
        rpc(rpc_sock, "nbd_server_start", {"listen": f"unix:{keel_unix}"})
        rpc(rpc_sock, "nbd_server_start", {"listen": f"127.0.0.1:{keel_port}"})
        for b in ["Null0", "Malloc0"]:
            rpc(rpc_sock, "nbd_server_add_export", {"bdev_name": b})
        self.uris["keel-null"] = {"unix": f"nbd+unix:///Null0?socket={keel_unix}",
                                  "tcp": f"nbd://127.0.0.1:{keel_port}/Null0"}
        self.uris["keel-malloc"] = {"unix": f"nbd+unix:///Malloc0?socket={keel_unix}",
                                    "tcp": f"nbd://127.0.0.1:{keel_port}/Malloc0"}
        # nbdkit memory 1G: one process per transport.
        for tr in ["unix", "tcp"]:
            if tr == "unix":
                sock = os.path.join(tmp, "nbdkit.sock")
                args = ["-U", sock]
                uri = f"nbd+unix:///?socket={sock}"
            else:
                port = free_port()
                args = ["-i", "127.0.0.1", "-p", str(port)]
                uri = f"nbd://127.0.0.1:{port}/"
            p = subprocess.Popen(["taskset", "-c", str(core), "nbdkit", "-f", "--exit-with-parent"] + args
                                 + ["memory", "1G"], stderr=log)
            self.procs.append(p)
            wait_for(sock if tr == "unix" else port, "nbdkit")
            self.uris.setdefault("nbdkit", {})[tr] = uri
            self.pids.setdefault("nbdkit", {})[tr] = p.pid
        # qemu-nbd on a file in /dev/shm.
        self.shm = tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="keel-bench-", suffix=".img", delete=False)
        # Filled, not sparse: qemu-nbd answers reads of holes with OFFSET_HOLE chunks (no data).
        block = bytes(range(256)) * 4096
        for _ in range(SIZE // len(block)):
            self.shm.write(block)
        self.shm.close()
        for tr in ["unix", "tcp"]:
            if tr == "unix":
                sock = os.path.join(tmp, "qemu-nbd.sock")
                args = ["-k", sock]
                uri = f"nbd+unix:///disk?socket={sock}"
            else:
                port = free_port()
                args = ["-b", "127.0.0.1", "-p", str(port)]
                uri = f"nbd://127.0.0.1:{port}/disk"
            p = subprocess.Popen(["taskset", "-c", str(core), "qemu-nbd", "-f", "raw", "-x", "disk", "-t",
                                  "--cache=writeback", "--shared=8"] + args + [self.shm.name], stderr=log)
            self.procs.append(p)
            wait_for(sock if tr == "unix" else port, "qemu-nbd")
            self.uris.setdefault("qemu-nbd", {})[tr] = uri
            self.pids.setdefault("qemu-nbd", {})[tr] = p.pid

    def cpu_s(self, server, tr):
        """CPU seconds the server has used doing work (see the module doc)."""
        if server.startswith("keel"):
            r = rpc(self.rpc_sock, "framework_get_reactors")
            return r["reactors"][0]["busy"] / r["tick_rate"]
        return proc_cpu_s(self.pids[server][tr])

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        os.unlink(self.shm.name)


def fio(uri, case, t, cwd, core):
    rw, bs, qd = CASES[case]
    out = sh(["taskset", "-c", str(core), "fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
              f"--bs={bs}", f"--iodepth={qd}", "--numjobs=1", "--time_based", f"--runtime={t}",
              f"--size={SIZE}", "--output-format=json"], cwd=cwd)
    job = json.loads(out[out.index("{"):])["jobs"][0]
    if job["error"]:
        raise RuntimeError(f"fio job error {job['error']}: {uri} {case}")
    d = job["read"] if rw in ("read", "randread") else job["write"]
    return {"iops": d["iops"], "mib_s": d["bw_bytes"] / (1 << 20), "lat_us": d["lat_ns"]["mean"] / 1000,
            "p50_us": d["clat_ns"]["percentile"]["50.000000"] / 1000, "ios": d["total_ios"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--transports", default="unix,tcp")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--json", help="write results here")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-app"], cwd=ROOT, check=True)
    transports = a.transports.split(",")
    cases = a.cases.split(",")
    versions = {
        "fio": sh(["fio", "--version"]).strip(),
        "nbdkit": sh(["nbdkit", "--version"]).strip(),
        "qemu-nbd": sh(["qemu-nbd", "--version"]).splitlines()[0],
    }
    results = {}
    print(f"machine: {machine()}")
    print(f"{versions}; runs: {a.runs} x {a.time}s, servers on CPU {a.server_core}, "
          f"fio (nbd engine) on CPU {a.client_core}, medians\n")
    with tempfile.TemporaryDirectory() as tmp:
        servers = Servers(tmp, a.server_core)
        try:
            for tr in transports:
                for case in cases:
                    runs = {s: [] for s in SERVERS}
                    for _ in range(a.runs):
                        for s in SERVERS:
                            c0 = servers.cpu_s(s, tr)
                            r = fio(servers.uris[s][tr], case, a.time, tmp, a.client_core)
                            r["cpu_us_per_io"] = (servers.cpu_s(s, tr) - c0) / max(r["ios"], 1) * 1e6
                            runs[s].append(r)
                    med = {s: {k: statistics.median(r[k] for r in runs[s]) for k in runs[s][0]} for s in SERVERS}
                    results[f"{tr}/{case}"] = {"median": med, "runs": runs}
                    report(tr, case, med)
        finally:
            servers.stop()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "versions": versions, "runs": a.runs, "time_s": a.time,
                       "server_core": a.server_core, "client_core": a.client_core, "results": results}, f, indent=2)


def report(tr, case, med):
    _, bs, qd = CASES[case]
    k = med["nbdkit"]
    line = f"{tr:4} {case:18}"
    for s in SERVERS:
        m = med[s]
        if bs == "1m":
            line += f" | {s} {m['mib_s']:5.0f} MiB/s"
        elif qd == 1:
            line += f" | {s} {m['iops'] / 1e3:4.1f}k {m['lat_us']:5.1f}us p50 {m['p50_us']:4.1f}"
        else:
            line += f" | {s} {m['iops'] / 1e3:5.1f}k"
        line += f" cpu {m['cpu_us_per_io']:.1f}us/io"
    for s in ["keel-null", "keel-malloc"]:
        m = med[s]
        if bs == "1m":
            line += f" | {s}/nbdkit {m['mib_s'] / k['mib_s']:.2f}x"
        elif qd == 1:
            line += f" | {s}/nbdkit lat {m['lat_us'] / k['lat_us']:.2f}x"
        else:
            line += f" | {s}/nbdkit {m['iops'] / k['iops']:.2f}x"
    print(line, flush=True)


if __name__ == "__main__":
    main()
