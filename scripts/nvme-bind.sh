#!/bin/sh
# scripts/nvme-bind.sh — hand an NVMe PCI function to vfio-pci (for Keel's userspace driver)
# and back to the kernel's nvme driver, through sysfs driver_override, as SPDK's setup.sh does.
# POSIX sh (runs under busybox in the lab guest); needs root.
#
#   scripts/nvme-bind.sh vfio   BDF   unbind BDF from its driver, bind it to vfio-pci
#   scripts/nvme-bind.sh kernel BDF   unbind BDF from vfio-pci, bind it to nvme
#   scripts/nvme-bind.sh status [BDF] driver and IOMMU group of BDF (default: every NVMe function)
#
# BDF is the full PCI address (0000:00:04.0). Binding to vfio-pci is refused while the
# controller's namespaces (or their partitions) hold a mounted filesystem, active swap, or a
# holder (md, dm) — unbinding would pull the disk from under them. Exit status: 0 done,
# 1 refused or failed (the reason on stderr), 2 usage.
set -eu

die() { echo "nvme-bind.sh: $*" >&2; exit 1; }
usage() { sed -n '2,13p' "$0" >&2; exit 2; }

dev_path() {
  case $1 in
    [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]) ;;
    *) die "$1 is not a full PCI address like 0000:00:04.0" ;;
  esac
  [ -d "/sys/bus/pci/devices/$1" ] || die "no PCI device $1"
  echo "/sys/bus/pci/devices/$1"
}

driver_of() {
  if [ -e "$1/driver" ]; then basename "$(readlink "$1/driver")"; else echo none; fi
}

# Block devices (namespaces and partitions) of the controller at sysfs path $1. With native
# multipath the controller lists path devices nvme<S>c<C>n<N>; the block device is the head
# nvme<S>n<N>.
block_devs() {
  for ns in "$1"/nvme/nvme*/nvme*n*; do
    [ -e "$ns" ] || continue
    n=$(basename "$ns" | sed 's/c[0-9]*n/n/')
    case $n in *p[0-9]*) continue ;; esac
    echo "$n"
    for p in /sys/class/block/"$n"/"$n"p*; do [ -e "$p" ] && basename "$p"; done
  done
  return 0
}

check_unused() {
  for b in $(block_devs "$1"); do
    if awk -v d="/dev/$b" '$1 == d { found = 1 } END { exit !found }' /proc/mounts; then
      die "/dev/$b is mounted ($(awk -v d="/dev/$b" '$1 == d { print $2 }' /proc/mounts | head -1)); unmount it first"
    fi
    if [ -r /proc/swaps ] && awk -v d="/dev/$b" '$1 == d { found = 1 } END { exit !found }' /proc/swaps; then
      die "/dev/$b is in use as swap; swapoff it first"
    fi
    for h in /sys/class/block/"$b"/holders/*; do
      [ -e "$h" ] && die "/dev/$b is held by $(basename "$h") (md/dm); stop that first"
    done
  done
  return 0
}

bind() {
  dev=$1 bdf=$2 drv=$3
  modprobe -q "$drv" 2>/dev/null || true
  [ "$drv" = vfio-pci ] && { modprobe -q vfio_iommu_type1 2>/dev/null || true; }
  cur=$(driver_of "$dev")
  [ "$cur" = "$drv" ] && { echo "$bdf: already bound to $drv"; return 0; }
  echo "$drv" > "$dev/driver_override"
  [ "$cur" != none ] && echo "$bdf" > "$dev/driver/unbind"
  echo "$bdf" > /sys/bus/pci/drivers_probe || true
  now=$(driver_of "$dev")
  [ "$now" = "$drv" ] || die "$bdf: bound to $now after probing, not $drv (is the $drv module available?)"
  echo "$bdf: $cur -> $drv"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
  vfio)
    [ $# -eq 1 ] || usage
    dev=$(dev_path "$1")
    [ -e "$dev/iommu_group" ] || die "$1 has no IOMMU group: boot with intel_iommu=on (or amd_iommu=on)"
    check_unused "$dev"
    bind "$dev" "$1" vfio-pci
    group=$(basename "$(readlink "$dev/iommu_group")")
    for other in /sys/kernel/iommu_groups/"$group"/devices/*; do
      o=$(basename "$other")
      d=$(driver_of "$other")
      [ "$o" = "$1" ] || [ "$d" = none ] || [ "$d" = vfio-pci ] \
        || echo "nvme-bind.sh: warning: $o shares IOMMU group $group and is bound to $d: the group is not viable" >&2
    done
    ;;
  kernel)
    [ $# -eq 1 ] || usage
    dev=$(dev_path "$1")
    bind "$dev" "$1" nvme
    # Clear the override so a later probe may choose freely.
    echo > "$dev/driver_override" 2>/dev/null || true
    ;;
  status)
    if [ $# -eq 1 ]; then set -- "$(dev_path "$1")"; else
      set --
      for d in /sys/bus/pci/devices/*; do
        case $(cat "$d/class") in 0x0108*) set -- "$@" "$d" ;; esac
      done
    fi
    for d in "$@"; do
      g=none
      [ -e "$d/iommu_group" ] && g=$(basename "$(readlink "$d/iommu_group")")
      echo "$(basename "$d") driver=$(driver_of "$d") iommu_group=$g"
    done
    ;;
  *) usage ;;
esac
