#!/bin/sh
# Guest side of app/tests/nvme_linux_target.rs: the lab guest's kernel NVMe/TCP target
# (nvmet-tcp) serving a 64 MiB file namespace on :4420, which the host reaches through the lab's
# hostfwd. Needs NQN (LAB_ENV) and the /host share: writes /host/ready once the port is up,
# then keeps the target up until the host writes /host/done (at most 10 minutes).
. /etc/lab/funcs.sh
fail() { echo "NVMET-LAB-FAIL: $*"; dmesg | grep -i nvme | tail -20; exit 1; }

modprobe nvmet || fail "modprobe nvmet"
modprobe nvmet_tcp || fail "modprobe nvmet_tcp"
C=/sys/kernel/config/nvmet
[ -d $C ] || mount -t configfs none /sys/kernel/config
truncate -s 64M /tmp/ns1.img || fail truncate
mkdir $C/subsystems/$NQN || fail "mkdir subsystem"
echo 1 > $C/subsystems/$NQN/attr_allow_any_host
mkdir $C/subsystems/$NQN/namespaces/1
echo -n /tmp/ns1.img > $C/subsystems/$NQN/namespaces/1/device_path
echo 1 > $C/subsystems/$NQN/namespaces/1/buffered_io
echo 1 > $C/subsystems/$NQN/namespaces/1/enable || fail "enable namespace"
mkdir $C/ports/1
echo tcp > $C/ports/1/addr_trtype; echo ipv4 > $C/ports/1/addr_adrfam
echo 0.0.0.0 > $C/ports/1/addr_traddr; echo 4420 > $C/ports/1/addr_trsvcid
ln -s $C/subsystems/$NQN $C/ports/1/subsystems/$NQN || fail "link port"
echo "nvmet-tcp serving $NQN on :4420"
touch /host/ready
for i in $(seq 6000); do [ -e /host/done ] && break; sleep 0.1; done
[ -e /host/done ] || fail "the host never finished"
cat /host/result.txt 2>/dev/null
dmesg | grep -i nvmet | tail -20
grep -q "HOST-OK" /host/result.txt 2>/dev/null || fail "host side failed"
echo "NVMET-LAB-OK"
