#!/bin/sh
# Lab guest script of app/tests/lab_nbd_disk.rs: keel-tgt (from /host) serves bdevs to the
# guest kernel's /dev/nbdX with nbd_start_disk; fio writes with verify through the kernel, the
# data survives a stop and a start on another device, errors are SPDK's, save_config lists the
# disks, and a target that exits with a disk running clears the device.
# Prints "NBD_DISK: OK" last when every check passed; any failed check exits nonzero.
set -u
fail() { echo "FAIL: $*"; [ -f tgt.log ] && tail -30 tgt.log; exit 1; }
R="/host/keel-rpc -s /tmp/keel.sock"
# expect_err CODE METHOD ARGS...: the call fails with JSON-RPC error CODE.
expect_err() {
  code=$1; shift
  if $R "$@" >/tmp/out 2>/tmp/err; then fail "$* succeeded: $(cat /tmp/out)"; fi
  grep -q "\"code\":$code[,}]" /tmp/err || fail "$*: want code $code, got $(cat /tmp/err)"
  echo "refused as expected ($code): $* -> $(cat /tmp/err)"
}
fio_job() { # fio_job DEVICE EXTRA...
  dev=$1; shift
  fio --name=nbd --filename="$dev" --ioengine=libaio --direct=1 --bs=4k --iodepth=8 --size=4M \
      --rw=randwrite --verify=crc32c --verify_state_save=0 --randseed=7 "$@" >fio.out 2>&1 \
    || { cat fio.out; fail "fio on $dev $*"; }
}

# save_config SUBSYSTEM...: what spdk-rpc's save_config writes, from framework_get_config.
save_config() {
  printf '{"subsystems":['
  sep=
  for s in "$@"; do
    c=$($R framework_get_config name=$s) || fail "framework_get_config $s"
    printf '%s{"subsystem":"%s","config":%s}' "$sep" "$s" "$c"
    sep=,
  done
  printf ']}\n'
}
# stop_tgt: SIGINT, exit 0 within 30 s.
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

modprobe nbd nbds_max=4 || fail "modprobe nbd"
/host/keel-tgt -m 0x3 -r /tmp/keel.sock >tgt.log 2>&1 &
TGT=$!
$R -w 60 bdev_malloc_create name=M0 num_blocks=8192 block_size=4096 >/dev/null || fail "malloc M0"
$R bdev_malloc_create name=M1 num_blocks=4096 block_size=512 >/dev/null || fail "malloc M1"

# The first free device when none is named.
dev=$($R nbd_start_disk bdev_name=M0) || fail "nbd_start_disk M0"
[ "$dev" = /dev/nbd0 ] || fail "M0 went to '$dev'"
[ -e /sys/block/nbd0/pid ] || fail "nbd0 has no pid after the answer"
[ "$(cat /sys/block/nbd0/size)" = 65536 ] || fail "nbd0 size $(cat /sys/block/nbd0/size)"
[ "$(cat /sys/block/nbd0/queue/logical_block_size)" = 4096 ] || fail "nbd0 block size"
dev=$($R nbd_start_disk bdev_name=M1 nbd_device=/dev/nbd2) || fail "nbd_start_disk M1 nbd2"
[ "$dev" = /dev/nbd2 ] || fail "M1 went to '$dev'"
[ "$(cat /sys/block/nbd2/queue/logical_block_size)" = 512 ] || fail "nbd2 block size"
disks=$($R nbd_get_disks)
[ "$disks" = '[{"nbd_device":"/dev/nbd0","bdev_name":"M0"},{"nbd_device":"/dev/nbd2","bdev_name":"M1"}]' ] \
  || fail "nbd_get_disks: $disks"
one=$($R nbd_get_disks nbd_device=/dev/nbd2)
[ "$one" = '[{"nbd_device":"/dev/nbd2","bdev_name":"M1"}]' ] || fail "nbd_get_disks nbd2: $one"

expect_err -16 nbd_start_disk bdev_name=M1 nbd_device=/dev/nbd0
expect_err -19 nbd_start_disk bdev_name=nope
expect_err -22 nbd_start_disk bdev_name=M1 nbd_device=/dev/sda
expect_err -19 nbd_stop_disk nbd_device=/dev/nbd1
expect_err -19 nbd_get_disks nbd_device=/dev/nbd1
expect_err -16 bdev_malloc_delete name=M0

# Data through the kernel: write + verify, then stop, start the same bdev elsewhere and
# verify only: the data is in the bdev, not in the guest's page cache.
fio_job /dev/nbd0
grep -q "err= 0" fio.out || fail "fio reported errors"
fio_job /dev/nbd2 --bs=512 --size=1M
$R nbd_stop_disk nbd_device=/dev/nbd0 >/dev/null || fail "nbd_stop_disk nbd0"
[ ! -e /sys/block/nbd0/pid ] || fail "nbd0 still running after nbd_stop_disk answered"
[ "$($R nbd_get_disks)" = '[{"nbd_device":"/dev/nbd2","bdev_name":"M1"}]' ] || fail "after stop: $($R nbd_get_disks)"
dev=$($R nbd_start_disk bdev_name=M0 nbd_device=/dev/nbd1) || fail "restart M0 on nbd1"
fio_job /dev/nbd1 --verify_only
echo "verify after restart: OK"
# Flush and discard reach the bdev.
blkdiscard /dev/nbd1 2>/dev/null && echo "discard: OK"
sync

# save_config (framework_get_config of each subsystem) has the disks in the nbd subsystem.
cfg=$($R framework_get_config name=nbd) || fail "framework_get_config nbd"
echo "$cfg" | grep -q '"method":"nbd_start_disk","params":{"bdev_name":"M1","nbd_device":"/dev/nbd2"}' \
  || fail "save_config: $cfg"
echo "$cfg" | grep -q '"bdev_name":"M0","nbd_device":"/dev/nbd1"' || fail "save_config M0: $cfg"
save_config bdev nbd >saved.json

# The target's exit stops its disks and clears the devices.
stop_tgt
for n in 0 1 2; do [ ! -e /sys/block/nbd$n/pid ] || fail "nbd$n still running after keel-tgt exited"; done

# load_config: keel-tgt -c with the saved configuration brings both disks back.
mv tgt.log tgt-1.log
/host/keel-tgt -m 0x3 -r /tmp/keel.sock -c saved.json >tgt.log 2>&1 &
TGT=$!
$R -w 60 -t 60 nbd_get_disks >/tmp/disks || fail "no RPC after keel-tgt -c"
[ "$(cat /tmp/disks)" = '[{"nbd_device":"/dev/nbd2","bdev_name":"M1"},{"nbd_device":"/dev/nbd1","bdev_name":"M0"}]' ] \
  || fail "disks after load: $(cat /tmp/disks)"
[ -e /sys/block/nbd1/pid ] && [ -e /sys/block/nbd2/pid ] || fail "devices not running after load"
fio_job /dev/nbd1 --size=1M
echo "load_config: OK"
stop_tgt
echo "NBD_DISK: OK"
