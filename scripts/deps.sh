#!/usr/bin/env bash
# Installs the third-party peers Keel's tests and benchmarks talk to. Idempotent: installs only
# what is missing. Debian packages via apt-get (root or sudo), Python packages into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fio >/dev/null 2>&1 || need_apt+=(fio)
command -v mdadm >/dev/null 2>&1 || need_apt+=(mdadm)
# The kernel-made md fixture images are committed zstd-compressed.
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
# NBD peers: qemu-io/qemu-img/qemu-nbd, libnbd's nbdinfo/nbdcopy, nbdkit (the benchmark's
# reference server). fio's nbd engine comes with Debian's fio (built against libnbd).
command -v qemu-io >/dev/null 2>&1 || need_apt+=(qemu-utils)
command -v nbdinfo >/dev/null 2>&1 || need_apt+=(libnbd-bin)
command -v nbdkit >/dev/null 2>&1 || need_apt+=(nbdkit)
# ISA-L, which `cargo bench -p keel-parity --features isal` runs beside Keel's parity kernels.
dpkg-query -W -f='${Status}' libisal-dev 2>/dev/null | grep -q "ok installed" || need_apt+=(libisal-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "== installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
for tool in fio mdadm zstd qemu-io qemu-img qemu-nbd nbdinfo nbdcopy nbdkit; do
  command -v $tool >/dev/null 2>&1 || { echo "$tool is required and could not be installed" >&2; exit 1; }
done
if ! fio --enghelp 2>/dev/null | grep -qx '[[:space:]]*nbd'; then
  echo "fio has no nbd engine (Debian's fio package is built with libnbd; a fio built without it lacks it)" >&2
  exit 1
fi
# Benchmark only (the tests do not link it): warn, do not fail.
dpkg-query -W -f='${Status}' libisal-dev 2>/dev/null | grep -q "ok installed" \
  || echo "warning: libisal-dev could not be installed; the parity bench needs it for --features isal" >&2

# SPDK's own JSON-RPC client, unmodified, for the keel-tgt end-to-end tests.
if ! .venv/bin/spdk-rpc --help >/dev/null 2>&1; then
  echo "== installing spdk==26.9 (spdk-rpc) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check spdk==26.9
fi
.venv/bin/spdk-rpc --help >/dev/null 2>&1 || { echo "spdk-rpc is required and could not be installed" >&2; exit 1; }
