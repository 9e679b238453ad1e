# Guest test (busybox sh, run as /test.sh) for a multiqueue vhost-user-net backend with a TAP host side:
# queue-pair changes with ethtool, a ping from every vCPU (so every TX queue carries a flow), and a bulk
# transfer each way compared by checksum.
#   run-guest.sh --script scripts/guest/tests/vhost-user-net.sh --queues 4 --arg pairs=4 --arg ip=A/24 \
#       --arg peer=B --arg bulkkb=4096
# Guest environment: MQV_PAIRS, MQV_PEER (host side of the TAP), MQV_PINGS (per vCPU, default 5),
#   MQV_BULKKB (KiB each way, default 4096); the host listens on PEER:5001 (upload: reads exactly that many bytes)
#   and serves http://PEER:5002/down (download).
# Results: max_combined, combined, set1, setback, combined_after_setback, ping_cpuN (0 = no loss), up_md5,
#   up_rc, down_md5, down_bytes, rx_packets, tx_packets.
E=/usr/sbin/ethtool
IP=/sbin/ip-full
fail=0
pairs="${MQV_PAIRS:-1}"
peer="${MQV_PEER:?MQV_PEER is needed}"
kb="${MQV_BULKKB:-4096}"
comb_max() { $E -l eth0 | awk '/^Combined:/ { print $2; exit }'; }
comb_cur() { $E -l eth0 | awk '/^Combined:/ { v = $2 } END { print v }'; }
check() {  # NAME ACTUAL EXPECTED
  mqv-result "$1" "$2"
  if [ "$2" != "$3" ]; then echo "MQV-FAIL $1: got '$2', want '$3'"; fail=1; fi
}

check max_combined "$(comb_max)" "$pairs"
check combined "$(comb_cur)" "$pairs"
if [ "$pairs" -gt 1 ]; then
  $E -L eth0 combined 1; check set1 $? 0
  check combined_after_set1 "$(comb_cur)" 1
  $E -L eth0 combined "$pairs"; check setback $? 0
  check combined_after_setback "$(comb_cur)" "$pairs"
fi

$IP link set eth0 up
ncpu="$(nproc)"
i=0
while [ "$i" -lt "$ncpu" ]; do
  taskset -c "$i" ping -c "${MQV_PINGS:-5}" -i 0.2 -W 3 "$peer" >/tmp/ping$i 2>&1
  rc=$?
  grep -q " 0% packet loss" /tmp/ping$i || rc=1
  check "ping_cpu$i" "$rc" 0
  [ "$rc" = 0 ] || cat /tmp/ping$i
  i=$((i + 1))
done

dd if=/dev/urandom of=/tmp/up bs=1024 count="$kb" 2>/dev/null
mqv-result up_md5 "$(md5sum /tmp/up | cut -d' ' -f1)"
timeout 120 nc "$peer" 5001 </tmp/up >/dev/null
mqv-result up_rc $?
rm -f /tmp/down
timeout 120 wget -q -O /tmp/down "http://$peer:5002/down"
mqv-result down_rc $?
mqv-result down_md5 "$(md5sum /tmp/down | cut -d' ' -f1)"
mqv-result down_bytes "$(wc -c </tmp/down)"

mqv-result rx_packets "$(cat /sys/class/net/eth0/statistics/rx_packets)"
mqv-result tx_packets "$(cat /sys/class/net/eth0/statistics/tx_packets)"
exit "$fail"
