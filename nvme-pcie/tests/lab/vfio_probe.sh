#!/bin/sh
# Guest side of tests/lab_vfio.rs: Keel's userspace NVMe driver against QEMU's 1b36:0010 behind
# the emulated IOMMU. /host holds keel-nvme-pcie-probe and nvme-bind.sh.
. /etc/lab/funcs.sh
fail() { echo "FAIL: $*"; exit 1; }
step() { echo "== $*"; }
BDF=$(lab_nvme_bdfs | head -1)
[ -n "$BDF" ] || fail "no NVMe controller in the guest"
echo "controller $BDF ($(cat /sys/bus/pci/devices/$BDF/vendor):$(cat /sys/bus/pci/devices/$BDF/device)), IOMMU group $(lab_vfio_group $BDF)"
BIND="sh /host/nvme-bind.sh"

step "kernel nvme driver: identity"
modprobe nvme
$BIND kernel $BDF || fail "bind to nvme"
for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
[ -b /dev/nvme0n1 ] || fail "no /dev/nvme0n1"
nvme id-ctrl /dev/nvme0 -o json > id-ctrl.json || fail "nvme id-ctrl"
nvme id-ns /dev/nvme0n1 -o json > id-ns.json || fail "nvme id-ns"

step "binding is refused while a filesystem is mounted"
mke2fs -q /dev/nvme0n1 65536 || fail mke2fs
mkdir -p /mnt/k
mount -t ext4 /dev/nvme0n1 /mnt/k || fail mount
if $BIND vfio $BDF 2> refuse.txt; then fail "nvme-bind.sh bound a device with a mounted filesystem"; fi
cat refuse.txt
grep -q "is mounted" refuse.txt || fail "refusal does not say why"
[ "$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")" = nvme ] || fail "the device left nvme"
umount /mnt/k

step "the driver's message for a device not bound to vfio-pci"
/host/keel-nvme-pcie-probe --open-only $BDF > open-unbound.txt && fail "opened a device bound to nvme"
cat open-unbound.txt
grep -q "bound to nvme, not vfio-pci" open-unbound.txt || fail "unclear message"

step "bind to vfio-pci"
$BIND vfio $BDF || fail "bind to vfio-pci"
$BIND status $BDF
ls -l /dev/vfio/

step "Keel's driver: attach, identify, I/O, shutdown"
lab_t0
/host/keel-nvme-pcie-probe $BDF /lab/out > probe.txt 2>&1
rc=$?
cat probe.txt
lab_t1 probe
[ $rc = 0 ] || fail "probe exit $rc"

step "hand the device back to the kernel and read what Keel wrote"
$BIND kernel $BDF || fail "bind back to nvme"
for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
[ -b /dev/nvme0n1 ] || fail "no /dev/nvme0n1 after rebinding"
dd if=/dev/nvme0n1 of=got-4k.bin bs=512 skip=2048 count=8 iflag=direct 2>/dev/null || fail "dd 4k"
dd if=/dev/nvme0n1 of=got-128k.bin bs=512 skip=4096 count=256 iflag=direct 2>/dev/null || fail "dd 128k"
dd if=/dev/nvme0n1 of=got-zeroes.bin bs=512 skip=8192 count=128 iflag=direct 2>/dev/null || fail "dd zeroes"
cmp got-4k.bin expect-4k.bin || fail "4 KiB differs under the kernel driver"
cmp got-128k.bin expect-128k.bin || fail "128 KiB differs under the kernel driver"
cmp got-zeroes.bin expect-zeroes.bin || fail "zeroed/deallocated range differs under the kernel driver"
head -c 32768 got-zeroes.bin > wz.bin
head -c 32768 /dev/zero | cmp - wz.bin || fail "write-zeroes range is not zero under the kernel driver"
# For the record: does this controller zero blocks the kernel discards? (QEMU does so only when
# its drive has discard=unmap; the answer explains the probe's deallocate line.)
if command -v blkdiscard >/dev/null; then
  blkdiscard -o $((16384 * 512)) -l 65536 /dev/nvme0n1 2>/dev/null \
    && dd if=/dev/nvme0n1 bs=512 skip=16384 count=128 iflag=direct 2>/dev/null | head -c 65536 > kd.bin \
    && echo "kernel discard then read: $(head -c 65536 /dev/zero | cmp -s - kd.bin && echo zeroes || echo not zeroes)"
fi
echo "kernel nvme driver reads Keel's data: OK"
echo "LAB_VFIO: OK"
