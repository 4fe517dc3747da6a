#!/bin/sh
# Lab guest script of app/tests/lab_ublk_disk.rs: keel-tgt (from /host) serves bdevs as the
# guest kernel's /dev/ublkbN (ublk_drv, Linux 6.12); fio writes with verify through them, the
# data survives a stop and a start under another id, errors are SPDK's, save_config lists the
# target and disks, destroying the target deletes the devices, and so does keel-tgt's exit; a
# disk whose keel-tgt was killed under I/O is recovered by a new one (ublk_recover_disk); the
# reactor serving a queue makes no heap allocation per I/O.
# Prints "UBLK_DISK: OK" last when every check passed; any failed check exits nonzero.
set -u
fail() { echo "FAIL: $*"; [ -f tgt.log ] && tail -40 tgt.log; exit 1; }
R="/host/keel-rpc -s /tmp/keel.sock"
expect_err() {
  code=$1; shift
  if $R "$@" >/tmp/out 2>/tmp/err; then fail "$* succeeded: $(cat /tmp/out)"; fi
  grep -q "\"code\":$code[,}]" /tmp/err || fail "$*: want code $code, got $(cat /tmp/err)"
  echo "refused as expected ($code): $* -> $(cat /tmp/err)"
}
fio_job() { # fio_job DEVICE EXTRA...
  dev=$1; shift
  fio --name=ublk --filename="$dev" --ioengine=libaio --direct=1 --bs=4k --iodepth=16 --size=4M \
      --rw=randwrite --verify=crc32c --verify_state_save=0 --randseed=11 "$@" >fio.out 2>&1 \
    || { cat fio.out; fail "fio on $dev $*"; }
}
wait_gone() { # wait_gone PATH: the node disappears (devtmpfs) within 5 s
  i=0
  while [ -e "$1" ]; do i=$((i + 1)); [ $i -lt 50 ] || fail "$1 still exists"; sleep 0.1; done
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

modprobe ublk_drv || fail "modprobe ublk_drv"
/host/keel-tgt -m 0x3 -r /tmp/keel.sock >tgt.log 2>&1 &
TGT=$!
$R -w 60 bdev_malloc_create name=M0 num_blocks=8192 block_size=4096 >/dev/null || fail "malloc M0"
$R bdev_malloc_create name=M1 num_blocks=4096 block_size=512 >/dev/null || fail "malloc M1"

expect_err -19 ublk_start_disk bdev_name=M0 ublk_id=1
[ "$($R ublk_create_target)" = true ] || fail "ublk_create_target"
expect_err -16 ublk_create_target
id=$($R ublk_start_disk bdev_name=M0 ublk_id=1 num_queues=2 queue_depth=32) || fail "ublk_start_disk M0"
[ "$id" = 1 ] || fail "ublk_start_disk answered '$id'"
[ -b /dev/ublkb1 ] || fail "/dev/ublkb1 missing after the answer"
[ "$(cat /sys/block/ublkb1/size)" = 65536 ] || fail "ublkb1 size $(cat /sys/block/ublkb1/size)"
[ "$(cat /sys/block/ublkb1/queue/logical_block_size)" = 4096 ] || fail "ublkb1 block size"
[ "$($R ublk_start_disk bdev_name=M1 ublk_id=2)" = 2 ] || fail "ublk_start_disk M1"
[ "$(cat /sys/block/ublkb2/queue/logical_block_size)" = 512 ] || fail "ublkb2 block size"
disks=$($R ublk_get_disks)
[ "$disks" = '[{"ublk_device":"/dev/ublkb1","id":1,"queue_depth":32,"num_queues":2,"bdev_name":"M0"},{"ublk_device":"/dev/ublkb2","id":2,"queue_depth":128,"num_queues":1,"bdev_name":"M1"}]' ] \
  || fail "ublk_get_disks: $disks"
[ "$($R ublk_get_disks ublk_id=2)" = '[{"ublk_device":"/dev/ublkb2","id":2,"queue_depth":128,"num_queues":1,"bdev_name":"M1"}]' ] \
  || fail "ublk_get_disks 2"

expect_err -16 ublk_start_disk bdev_name=M1 ublk_id=1
expect_err -19 ublk_start_disk bdev_name=nope ublk_id=5
expect_err -22 ublk_start_disk bdev_name=M1 ublk_id=5 queue_depth=5000
expect_err -22 ublk_start_disk bdev_name=M1 ublk_id=5 num_queues=33
expect_err -19 ublk_stop_disk ublk_id=7
expect_err -19 ublk_get_disks ublk_id=7
expect_err -16 bdev_malloc_delete name=M0
[ ! -e /dev/ublkb5 ] || fail "a refused start left /dev/ublkb5"

fio_job /dev/ublkb1
grep -q "err= 0" fio.out || fail "fio reported errors"
fio_job /dev/ublkb2 --bs=512 --size=1M
blkdiscard /dev/ublkb1 2>/dev/null && echo "discard: OK"

cfg=$($R framework_get_config name=ublk) || fail "framework_get_config ublk"
echo "$cfg" | grep -q '"method":"ublk_create_target"' || fail "save_config: $cfg"
echo "$cfg" | grep -q '"method":"ublk_start_disk","params":{"bdev_name":"M0","ublk_id":1,"num_queues":2,"queue_depth":32}' \
  || fail "save_config M0: $cfg"
save_config bdev ublk >saved.json

# Stop, then serve the same bdev under another id: the data is in the bdev.
fio_job /dev/ublkb1 --randseed=12
[ "$($R ublk_stop_disk ublk_id=1)" = true ] || fail "ublk_stop_disk 1"
wait_gone /dev/ublkb1
[ "$($R ublk_start_disk bdev_name=M0 ublk_id=3 num_queues=1 queue_depth=8)" = 3 ] || fail "restart M0 as 3"
fio_job /dev/ublkb3 --randseed=12 --verify_only
echo "verify after restart: OK"

# Destroying the target deletes every disk; then there is none to destroy.
[ "$($R ublk_destroy_target)" = true ] || fail "ublk_destroy_target"
wait_gone /dev/ublkb2
wait_gone /dev/ublkb3
[ "$($R ublk_get_disks)" = '[]' ] || fail "disks after destroy: $($R ublk_get_disks)"
expect_err -2 ublk_destroy_target
$R bdev_malloc_delete name=M1 >/dev/null || fail "M1 still held after destroy"

# keel-tgt's exit deletes its disks.
[ "$($R ublk_create_target cpumask=0x2)" = true ] || fail "ublk_create_target 0x2"
[ "$($R ublk_start_disk bdev_name=M0 ublk_id=4)" = 4 ] || fail "start 4"
dd if=/dev/ublkb4 of=/dev/null bs=4096 count=16 2>/dev/null || fail "read ublkb4"
# No allocation per I/O on the reactor serving the queue (core 1 only: cpumask 0x2): keel-tgt
# counts heap allocations per thread and keel_get_pollers reports them (read at the start of
# its visit, so each reading includes the previous visit's own allocations: compare against
# an idle interval between two readings).
allocs1() { $R keel_get_pollers lcore=1 | sed -n 's/.*"allocations":\([0-9]*\).*/\1/p'; }
fio_job /dev/ublkb4 --size=1M --randseed=30
a0=$(allocs1); sleep 1; a1=$(allocs1)
fio_job /dev/ublkb4 --size=16M --randseed=31
a2=$(allocs1)
[ -n "$a0" ] && [ -n "$a1" ] && [ -n "$a2" ] || fail "no allocation counts from keel_get_pollers"
idle=$((a1 - a0)); busy=$((a2 - a1))
echo "core 1 allocations: idle interval $idle, 8192 I/Os (4096 writes + 4096 verify reads) $busy"
[ "$busy" -le "$idle" ] || fail "the ublk queue's reactor allocated under I/O ($busy vs $idle idle)"
echo "no allocation per I/O: OK"
stop_tgt
wait_gone /dev/ublkb4

# load_config: keel-tgt -c with the configuration saved while disks 1 and 2 ran.
mv tgt.log tgt-1.log
/host/keel-tgt -m 0x3 -r /tmp/keel.sock -c saved.json >tgt.log 2>&1 &
TGT=$!
$R -w 60 -t 60 ublk_get_disks >/tmp/disks || fail "no RPC after keel-tgt -c"
[ "$(cat /tmp/disks)" = "$disks" ] || fail "disks after load: $(cat /tmp/disks), want $disks"
[ -b /dev/ublkb1 ] && [ -b /dev/ublkb2 ] || fail "devices missing after load"
fio_job /dev/ublkb1 --size=1M
echo "load_config: OK"
stop_tgt
wait_gone /dev/ublkb1

# Recovery: keel-tgt is SIGKILLed while fio writes through a file-backed disk; the kernel keeps
# /dev/ublkb6 (quiesced); a new keel-tgt takes it over with ublk_recover_disk; fio finishes
# without an error and everything it wrote verifies.
mv tgt.log tgt-2.log
dd if=/dev/zero of=/tmp/rec.img bs=1M count=64 2>/dev/null || fail "backing file"
start_rec_tgt() {
  /host/keel-tgt -m 0x3 -r /tmp/keel.sock >>tgt.log 2>&1 &
  TGT=$!
  $R -w 60 bdev_uring_create filename=/tmp/rec.img name=R0 block_size=4096 >/dev/null || fail "uring R0"
  $R bdev_malloc_create name=S0 num_blocks=1024 block_size=4096 >/dev/null || fail "malloc S0"
  [ "$($R ublk_create_target)" = true ] || fail "ublk_create_target (recovery)"
}
start_rec_tgt
expect_err -19 ublk_recover_disk bdev_name=R0 ublk_id=6
[ "$($R ublk_start_disk bdev_name=R0 ublk_id=6 num_queues=2 queue_depth=32)" = 6 ] || fail "start 6"
fio --name=rec --filename=/dev/ublkb6 --ioengine=libaio --direct=1 --bs=4k --iodepth=16 --size=64M \
    --rw=randwrite --verify=crc32c --verify_state_save=0 --randseed=21 >fio-rec.out 2>&1 &
FIO=$!
sleep 2
kill -0 $FIO 2>/dev/null || { cat fio-rec.out; fail "fio finished before the kill: nothing in flight to recover"; }
kill -9 $TGT
wait $TGT 2>/dev/null
echo "keel-tgt killed under fio"
[ -b /dev/ublkb6 ] || fail "/dev/ublkb6 went with its server (made without user recovery?)"
start_rec_tgt
expect_err -16 ublk_start_disk bdev_name=R0 ublk_id=6
expect_err -22 ublk_recover_disk bdev_name=S0 ublk_id=6
expect_err -19 ublk_recover_disk bdev_name=R0 ublk_id=9
[ "$($R ublk_recover_disk bdev_name=R0 ublk_id=6)" = 6 ] || fail "ublk_recover_disk: $(tail -5 tgt.log)"
[ "$($R ublk_get_disks ublk_id=6)" = '[{"ublk_device":"/dev/ublkb6","id":6,"queue_depth":32,"num_queues":2,"bdev_name":"R0"}]' ] \
  || fail "ublk_get_disks after recovery: $($R ublk_get_disks)"
expect_err -16 ublk_recover_disk bdev_name=R0 ublk_id=6
wait $FIO || { cat fio-rec.out; fail "fio through the crash and the recovery"; }
grep -q "err= 0" fio-rec.out || { cat fio-rec.out; fail "fio reported errors across the recovery"; }
fio --name=rec --filename=/dev/ublkb6 --ioengine=libaio --direct=1 --bs=4k --iodepth=16 --size=64M \
    --rw=randwrite --verify=crc32c --verify_state_save=0 --randseed=21 --verify_only >fio-rec2.out 2>&1 \
  || { cat fio-rec2.out; fail "verify after recovery"; }
echo "recovery: OK"
stop_tgt
wait_gone /dev/ublkb6
echo "UBLK_DISK: OK"
