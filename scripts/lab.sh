#!/usr/bin/env bash
# scripts/lab.sh — Keel's one door to the lab guest: the shared lab (../shared/lab) boots
# Debian's 6.12 kernel under QEMU with what this host lacks (nbd, ublk_drv, md, dm, nvme,
# nvmet, fio, nbd-client, mdadm) and runs one script in it. Every lab test goes through here,
# from the shell or from Rust (`keel_testkit::lab::run_guest` calls `scripts/lab.sh run`).
#
#   scripts/lab.sh setup                 fetch and build the guest into $LAB_CACHE (idempotent;
#                                        ~1 min and ~0.7 GiB the first time, a few s after)
#   scripts/lab.sh run SCRIPT [ARGS...]  set up if needed, boot, run SCRIPT (busybox sh, cwd
#                                        /lab/out), copy /lab/out back, power off
#   scripts/lab.sh shell                 the same guest with a shell on the serial console
#   scripts/lab.sh where                 print the shared lab folder and the cache
#
# Environment:
#   KEEL_SHARED   the shared folder (design.md, specs/, lab/). Default: the first `shared/`
#                 with lab/run-in-guest.sh beside the repository or one of its parents, or
#                 beside the main checkout of a git worktree (CI has it at ../shared).
#   LAB_CACHE     where the guest is built [target/lab-cache]: git-ignored, writable (CI gets
#                 a read-only copy of shared/, so the lab's own default cache/ would not do).
#   LAB_KERNELS   kernels setup fetches ["backports" = 6.12 only; "bookworm backports" adds 6.1]
#   LAB_TIMEOUT   hard bound of one run in seconds [300]; the run fails with 124 past it.
#   LAB_*         every knob of run-in-guest.sh passes through: LAB_SHARE (a host folder seen
#                 as /host in the guest), LAB_NET / LAB_GUESTFWD (guest -> host ports via
#                 10.0.2.100), LAB_ENV, LAB_OUT, LAB_VDISKS, LAB_NVME_SIZE, LAB_CONSOLE, ...
#
# Exit status of `run`: the guest script's; 124 timeout; 125 the guest died; 3 the lab could
# not be set up or found — a failure, never a skip: a test that needs the lab fails without it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "lab.sh: $*" >&2; exit 3; }

find_shared() {
  if [ -n "${KEEL_SHARED:-}" ]; then
    [ -x "$KEEL_SHARED/lab/run-in-guest.sh" ] || die "KEEL_SHARED=$KEEL_SHARED has no lab/run-in-guest.sh"
    (cd "$KEEL_SHARED" && pwd); return
  fi
  local starts=("$ROOT")
  # A git worktree's main checkout: its parent holds shared/ when the worktree lives elsewhere.
  local common
  if common=$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null); then
    starts+=("$(dirname "$common")")
  fi
  local s d
  for s in "${starts[@]}"; do
    d=$s
    while [ "$d" != / ]; do
      d=$(dirname "$d")
      if [ -x "$d/shared/lab/run-in-guest.sh" ]; then (cd "$d/shared" && pwd); return; fi
    done
  done
  die "no shared/lab/run-in-guest.sh beside $ROOT or its parents; set KEEL_SHARED"
}

SHARED=$(find_shared)
LAB=$SHARED/lab
export LAB_CACHE=${LAB_CACHE:-$ROOT/target/lab-cache}
export LAB_KERNELS=${LAB_KERNELS:-backports}
export LAB_TIMEOUT=${LAB_TIMEOUT:-300}

# Whether a guest can boot from the cache now: a 6.12 kernel and its initramfs, newer than
# every input of the initramfs (the lab's guest files and helper sources), and the stamp of a
# completed setup newer than setup.sh itself.
ready() {
  local k
  k=$(ls -d "$LAB_CACHE"/kernel-6.12* 2>/dev/null | head -1) || return 1
  [ -n "$k" ] || return 1
  local kver=${k##*/kernel-}
  [ -r "$k/boot/vmlinuz-$kver" ] && [ -s "$LAB_CACHE/initramfs-$kver.cpio" ] || return 1
  [ "$LAB_CACHE/.keel-setup-done" -nt "$LAB/setup.sh" ] || return 1
  [ -z "$(find "$LAB/guest" "$LAB/lib" "$LAB/tools" -newer "$LAB_CACHE/.keel-setup-done" -type f 2>/dev/null | head -1)" ]
}

setup() {
  mkdir -p "$LAB_CACHE"
  # One setup at a time (tests in parallel, or two worktrees sharing a cache).
  exec 9>"$LAB_CACHE/.setup.lock"
  flock 9
  if [ "${1:-}" = if-needed ] && ready; then return 0; fi
  echo "lab.sh: setting up the lab in $LAB_CACHE (from $LAB)" >&2
  "$LAB/setup.sh" >&2 || die "setup failed (see above)"
  touch "$LAB_CACHE/.keel-setup-done"
  ready || die "setup finished but no bootable 6.12 guest is in $LAB_CACHE"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  setup)
    setup always ;;
  run)
    [ $# -ge 1 ] || die "usage: scripts/lab.sh run SCRIPT [ARGS...]"
    [ -r "$1" ] || die "no such guest script: $1"
    # A cache copied from elsewhere does not bring QEMU: setup installs it.
    if command -v qemu-system-x86_64 >/dev/null; then setup if-needed; else setup always; fi
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing after setup"
    exec "$LAB/run-in-guest.sh" "$@" ;;
  shell)
    setup if-needed
    exec "$LAB/run-in-guest.sh" --shell ;;
  where)
    echo "shared: $SHARED"
    echo "cache:  $LAB_CACHE" ;;
  *)
    sed -n '2,30p' "$0" >&2
    exit 3 ;;
esac
