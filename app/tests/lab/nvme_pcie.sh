#!/bin/sh
# Lab guest script of app/tests/lab_nvme_pcie.rs: bdev_nvme's PCIe transport on QEMU's NVMe
# 1b36:0010 behind the emulated IOMMU. /host holds keel-tgt, keel-rpc, keel-perf and
# nvme-bind.sh. keel-tgt attaches the controller over RPC (bdev_nvme_attach_controller -t PCIe),
# get_controllers is recorded for the host to compare with nvme-cli's id-ctrl, detach and
# re-attach and a reset work; fio verify through NBD across a controller reset and over an md
# raid1 of the namespace and a file-backed bdev; keel-perf runs verify at 4 KiB and 128 KiB on two reactors,
# write_zeroes and unmap, and fio with Keel's engine verify=crc32c, from a JSON config; keel-tgt exports the namespace over NBD and the
# guest kernel writes a known file through it; then the device goes back to the kernel's nvme
# driver and dd reads the file back.
# Prints "LAB_NVME_PCIE: OK" last when every check passed; any failed check exits nonzero.
set -u
. /etc/lab/funcs.sh
fail() { echo "FAIL: $*"; [ -f tgt.log ] && tail -40 tgt.log; exit 1; }
step() { echo "== $*"; }
R="/host/keel-rpc -s /tmp/keel.sock"
BIND="sh /host/nvme-bind.sh"
BDF=$(lab_nvme_bdfs | head -1)
[ -n "$BDF" ] || fail "no NVMe controller in the guest"
stop_tgt() {
  kill -INT $TGT
  i=0
  while kill -0 $TGT 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "keel-tgt still running 30 s after SIGINT"
    sleep 0.1
  done
  wait $TGT; rc=$?
  [ $rc = 0 ] || fail "keel-tgt exited with $rc"
  grep -i "panic" tgt.log && fail "keel-tgt panicked"
}

step "kernel nvme driver: identity"
modprobe nvme
$BIND kernel $BDF || fail "bind to nvme"
for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
[ -b /dev/nvme0n1 ] || fail "no /dev/nvme0n1"
nvme id-ctrl /dev/nvme0 -o json > id-ctrl.json || fail "nvme id-ctrl"

step "attach refused while the kernel holds it, with what to do"
/host/keel-tgt -m 0x3 -r /tmp/keel.sock >tgt.log 2>&1 &
TGT=$!
$R -w 60 bdev_get_bdevs >/dev/null || fail "keel-tgt does not answer"
if $R bdev_nvme_attach_controller name=Nvme0 trtype=PCIe traddr=$BDF >out.txt 2>err.txt; then fail "attached a device bound to nvme"; fi
cat err.txt
grep -q "nvme-bind.sh" err.txt || fail "the refusal does not say how to bind"
stop_tgt

step "bind to vfio-pci; keel-tgt attaches over RPC"
$BIND vfio $BDF || fail "bind to vfio-pci"
/host/keel-tgt -m 0x3 -r /tmp/keel.sock >tgt.log 2>&1 &
TGT=$!
$R -w 60 bdev_get_bdevs >/dev/null || fail "keel-tgt does not answer"
$R bdev_nvme_attach_controller name=Nvme0 trtype=PCIe traddr=$BDF > attach.txt || fail "attach"
cat attach.txt
grep -q Nvme0n1 attach.txt || fail "no Nvme0n1 in the attach result"
$R bdev_nvme_get_controllers > ctrlrs.json || fail "get_controllers"
cat ctrlrs.json
$R bdev_get_bdevs name=Nvme0n1 > bdev.json || fail "bdev_get_bdevs"
step "reset, detach, re-attach"
$R bdev_nvme_reset_controller name=Nvme0 > /dev/null || fail "reset_controller"
sleep 1
$R bdev_nvme_detach_controller name=Nvme0 > /dev/null || fail "detach"
$R bdev_get_bdevs name=Nvme0n1 > /dev/null 2>&1 && fail "Nvme0n1 still there after detach"
$R bdev_nvme_attach_controller name=Nvme0 trtype=PCIe traddr=$BDF > attach2.txt || fail "re-attach"
grep -q Nvme0n1 attach2.txt || fail "no Nvme0n1 after re-attach"

step "the kernel writes a known file through Keel (NBD over the PCIe namespace)"
modprobe nbd nbds_max=2 || fail "modprobe nbd"
dev=$($R nbd_start_disk bdev_name=Nvme0n1 nbd_device=/dev/nbd0) || fail "nbd_start_disk"
head -c 1048576 /dev/urandom > expect.bin
dd if=expect.bin of=/dev/nbd0 bs=65536 seek=64 oflag=direct conv=fsync 2>/dev/null || fail "dd through nbd"
dd if=/dev/nbd0 of=back.bin bs=65536 skip=64 count=16 iflag=direct 2>/dev/null || fail "dd back through nbd"
cmp expect.bin back.bin || fail "read back through Keel differs"

step "controller reset under load: fio verify through NBD across bdev_nvme_reset_controller"
fio --name=rl --filename=/dev/nbd0 --ioengine=libaio --direct=1 --bs=4k --iodepth=16 --offset=16m \
    --size=16m --rw=randwrite --verify=crc32c --verify_fatal=1 --verify_state_save=0 > fio-reset.txt 2>&1 &
FIO=$!
sleep 1
$R bdev_nvme_reset_controller name=Nvme0 > /dev/null || fail "reset_controller under load"
wait $FIO || { cat fio-reset.txt; fail "fio verify across a controller reset"; }
grep -q "controller reset done" tgt.log || fail "no reset in keel-tgt's log"
grep -E "err=" fio-reset.txt
echo "fio verify across a controller reset: OK"
$R nbd_stop_disk nbd_device=/dev/nbd0 > /dev/null || fail "nbd_stop_disk"

step "md raid1 over the NVMe namespace and a file-backed bdev"
truncate -s 64M /tmp/f0.img
$R bdev_aio_create filename=/tmp/f0.img name=F0 block_size=512 > /dev/null || fail "bdev_aio_create"
$R bdev_raid_create name=R1 raid_level=raid1 'base_bdevs=["Nvme0n1","F0"]' > /dev/null || fail "raid1 create"
$R nbd_start_disk bdev_name=R1 nbd_device=/dev/nbd1 > /dev/null || fail "nbd_start_disk R1"
fio --name=r1 --filename=/dev/nbd1 --ioengine=libaio --direct=1 --bs=64k --iodepth=8 --size=16m \
    --rw=randwrite --verify=crc32c --verify_fatal=1 --verify_state_save=0 > fio-r1.txt 2>&1 \
  || { cat fio-r1.txt; fail "fio verify on raid1"; }
grep -E "err=" fio-r1.txt
$R nbd_stop_disk nbd_device=/dev/nbd1 > /dev/null || fail "nbd_stop_disk R1"
$R bdev_raid_delete name=R1 > /dev/null || fail "raid delete"
$R bdev_aio_delete name=F0 > /dev/null || fail "aio delete"
echo "md raid1 over NVMe and a file: OK"
$R bdev_nvme_detach_controller name=Nvme0 > /dev/null || fail "detach before keel-perf"
stop_tgt

step "keel-perf from a JSON config: verify 4 KiB and 128 KiB on two reactors, write zeroes, unmap"
cat > pcie.json <<EOC
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"PCIe","traddr":"$BDF"}}]}]}
EOC
lab_t0
/host/keel-perf -c pcie.json -m 0x3 -C -q 16 -o 4096 -w verify -t 3 > perf-4k.txt 2>&1 || { cat perf-4k.txt; fail "verify 4k"; }
cat perf-4k.txt
grep -q "Core Mask 0x2" perf-4k.txt || fail "no job on the second reactor"
echo "keel-perf verify 4k: OK"
/host/keel-perf -c pcie.json -m 0x3 -C -q 8 -o 131072 -w verify -t 3 > perf-128k.txt 2>&1 || { cat perf-128k.txt; fail "verify 128k"; }
cat perf-128k.txt
echo "keel-perf verify 128k: OK"
# keel-perf's jobs cover the whole namespace (the NBD file included), so the file is written
# again through Keel below before the kernel reads it.
/host/keel-perf -c pcie.json -q 8 -o 65536 -w write_zeroes -t 1 > perf-wz.txt 2>&1 || { cat perf-wz.txt; fail "write_zeroes"; }
echo "keel-perf write_zeroes: OK"
/host/keel-perf -c pcie.json -q 8 -o 65536 -w unmap -t 1 > perf-unmap.txt 2>&1 || { cat perf-unmap.txt; fail "unmap"; }
echo "keel-perf unmap: OK"
lab_t1 keel-perf

step "fio with Keel's engine from the same JSON config: verify=crc32c at 4 KiB and 128 KiB"
for bs in 4k 128k; do
  cat > job-$bs.fio <<EOJ
[global]
ioengine=external:/host/libkeel_fio.so
keel_json_conf=pcie.json
thread=1

[verify]
filename=Nvme0n1
rw=randwrite
bs=$bs
iodepth=16
size=16m
verify=crc32c
verify_fatal=1
EOJ
  fio job-$bs.fio > fio-$bs.txt 2>&1 || { cat fio-$bs.txt; fail "fio verify $bs"; }
  grep -E "err=|WRITE:|READ:" fio-$bs.txt
  echo "fio verify=crc32c $bs: OK"
done

step "write the known file again through Keel, hand the device back to the kernel, dd"
/host/keel-tgt -m 0x1 -r /tmp/keel.sock >tgt.log 2>&1 &
TGT=$!
$R -w 60 bdev_get_bdevs >/dev/null || fail "keel-tgt does not answer"
$R bdev_nvme_attach_controller name=Nvme0 trtype=PCIe traddr=$BDF > /dev/null || fail "attach for the final write"
$R nbd_start_disk bdev_name=Nvme0n1 nbd_device=/dev/nbd0 > /dev/null || fail "nbd_start_disk again"
dd if=expect.bin of=/dev/nbd0 bs=65536 seek=64 oflag=direct conv=fsync 2>/dev/null || fail "dd through nbd again"
$R nbd_stop_disk nbd_device=/dev/nbd0 > /dev/null || fail "nbd_stop_disk"
$R bdev_nvme_detach_controller name=Nvme0 > /dev/null || fail "final detach"
stop_tgt
$BIND kernel $BDF || fail "bind back to nvme"
for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
[ -b /dev/nvme0n1 ] || fail "no /dev/nvme0n1 after rebinding"
dd if=/dev/nvme0n1 of=got.bin bs=65536 skip=64 count=16 iflag=direct 2>/dev/null || fail "dd from the kernel's device"
cmp expect.bin got.bin || fail "the kernel reads different data than Keel wrote"
echo "kernel nvme driver reads Keel's data: OK"
echo "LAB_NVME_PCIE: OK"
