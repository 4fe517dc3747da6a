#!/bin/sh
# Guest side of app/tests/nvmf_linux_host.rs: the lab guest's Linux NVMe/TCP host against
# keel-tgt on the host (reached at 10.0.2.100:PORT, forwarded by the lab to the host's loopback). Needs PORT and NQN
# (LAB_ENV). Every step must pass; the first failure exits non-zero with its name.
. /etc/lab/funcs.sh
H=10.0.2.100
fail() { echo "NVMF-LAB-FAIL: $*"; dmesg | grep -i nvme | tail -20; exit 1; }
step() { echo "== $*"; }

modprobe nvme_tcp || fail modprobe
modprobe ext4 || fail "modprobe ext4"

ctrl_of() { for c in /sys/class/nvme/nvme*; do [ "$(cat $c/subsysnqn 2>/dev/null)" = "$NQN" ] && basename $c; done | head -1; }

step "nvme discover"
nvme discover -t tcp -a $H -s $PORT > disc.txt || fail "nvme discover"
cat disc.txt
grep -q "subnqn: *$NQN" disc.txt || fail "discovery log without $NQN"

verify() { # $1 = device, $2 = block size
  fio --name=v --filename=$1 --rw=randwrite --bs=$2 --direct=1 --ioengine=io_uring --iodepth=16 \
      --size=8m --verify=crc32c --do_verify=1 --verify_fatal=1 --output=fio-$2.txt || { cat fio-$2.txt; fail "fio verify bs=$2"; }
  grep -q "err= 0" fio-$2.txt || { cat fio-$2.txt; fail "fio errors bs=$2"; }
  echo "fio verify bs=$2: OK"
}

for mode in plain digests; do
  if [ $mode = plain ]; then flags=""; else flags="-g -G"; fi
  step "nvme connect ($mode)"
  nvme connect -t tcp -a $H -s $PORT -n $NQN $flags || fail "nvme connect $mode"
  for i in $(seq 50); do C=$(ctrl_of); [ -n "$C" ] && [ -b /dev/${C}n1 ] && break; sleep 0.1; done
  [ -b /dev/${C}n1 ] || fail "no namespace block device"
  nvme list
  nvme id-ctrl /dev/$C > idctrl.txt || fail "nvme id-ctrl"
  grep -E "^(sn|mn|mdts|cntrltype|subnqn|ioccsz)" idctrl.txt
  grep -q "^sn *: KEELLAB1" idctrl.txt || fail "id-ctrl serial"
  grep -q "^subnqn *: $NQN" idctrl.txt || fail "id-ctrl subnqn"
  nvme id-ns /dev/${C}n1 > idns.txt || fail "nvme id-ns"
  grep -q "^nsze *: 0x20000" idns.txt || fail "id-ns size"
  [ "$mode" = digests ] && { grep -q . /sys/class/nvme/$C/address && cat /sys/class/nvme/$C/address; }
  verify /dev/${C}n1 4k
  verify /dev/${C}n1 64k
  verify /dev/${C}n1 128k
  if [ $mode = plain ]; then
    step "mkfs + mount + file checksum"
    mke2fs -q /dev/${C}n1 || fail mke2fs
    mkdir -p /mnt/k
    mount -t ext4 /dev/${C}n1 /mnt/k || fail mount
    dd if=/dev/urandom of=/mnt/k/f bs=64k count=64 2>/dev/null
    a=$(md5sum /mnt/k/f | cut -d' ' -f1)
    umount /mnt/k || fail umount
    echo 3 > /proc/sys/vm/drop_caches
    mount -t ext4 /dev/${C}n1 /mnt/k || fail remount
    b=$(md5sum /mnt/k/f | cut -d' ' -f1)
    umount /mnt/k
    echo "file md5 $a after remount $b"
    [ "$a" = "$b" ] || fail "file checksum after remount"
    echo "blkdiscard"; blkdiscard /dev/${C}n1 2>/dev/null || echo "(no blkdiscard tool)"
  fi
  step "nvme disconnect ($mode)"
  nvme disconnect -n $NQN || fail "nvme disconnect"
  for i in $(seq 50); do [ -z "$(ctrl_of)" ] && break; sleep 0.1; done
  [ -z "$(ctrl_of)" ] || fail "controller still there after disconnect"
done
echo NVMF-LAB-OK
