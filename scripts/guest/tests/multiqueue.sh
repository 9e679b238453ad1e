# Guest test (busybox sh, run as /test.sh): multiqueue virtio-net as the Linux driver sees it.
#   scripts/guest/run-guest.sh --script scripts/guest/tests/multiqueue.sh --queues 4 --arg pairs=4 \
#       [--arg ip=10.0.0.2/24 --arg peer=10.0.0.1 [--arg peermac=02:00:00:00:00:01]] ...
# Guest environment (from mqv.* kernel arguments):
#   MQV_PAIRS     expected queue pairs (default 1)
#   MQV_IP        eth0's address (set up by /init)
#   MQV_PEER      an address to ping from every vCPU (taskset -c i), so that every TX queue carries traffic
#   MQV_PEERMAC   a static neighbour entry for MQV_PEER (for peers that answer no ARP, e.g. testpmd macswap)
#   MQV_PINGS     pings per vCPU (default 3)
# Results: MQV-RESULT max_combined, combined, set1, combined_after_set1, setback, combined_after_setback,
#          ping_cpuN (ping's exit status), rx_packets, tx_packets, txq_N/rxq_N (per-queue packets, when ethtool -S
#          has them), interrupts (virtio lines). Exit status 0 when all checks passed.
E=/usr/sbin/ethtool
IP=/sbin/ip-full
fail=0
pairs="${MQV_PAIRS:-1}"
comb_max() { $E -l eth0 | awk '/^Combined:/ { print $2; exit }'; }
comb_cur() { $E -l eth0 | awk '/^Combined:/ { v = $2 } END { print v }'; }
check() {  # NAME ACTUAL EXPECTED
  mqv-result "$1" "$2"
  if [ "$2" != "$3" ]; then echo "MQV-FAIL $1: got '$2', want '$3'"; fail=1; fi
}

[ -e /sys/class/net/eth0 ] || { echo "MQV-FAIL no eth0"; exit 1; }
check max_combined "$(comb_max)" "$pairs"
check combined "$(comb_cur)" "$pairs"
if [ "$pairs" -gt 1 ]; then
  $E -L eth0 combined 1; check set1 $? 0
  check combined_after_set1 "$(comb_cur)" 1
  $E -L eth0 combined "$pairs"; check setback $? 0
  check combined_after_setback "$(comb_cur)" "$pairs"
fi

if [ -n "${MQV_PEER:-}" ]; then
  $IP link set eth0 up
  [ -n "${MQV_PEERMAC:-}" ] && $IP neigh replace "$MQV_PEER" lladdr "$MQV_PEERMAC" dev eth0 nud permanent
  ncpu="$(nproc)"
  i=0
  while [ "$i" -lt "$ncpu" ]; do
    taskset -c "$i" ping -c "${MQV_PINGS:-3}" -i 0.2 -W 2 "$MQV_PEER" >/tmp/ping$i 2>&1
    rc=$?
    mqv-result "ping_cpu$i" "$rc"
    # With a static neighbour (echo peers), replies may not count: only a real peer makes ping succeed.
    if [ -z "${MQV_PEERMAC:-}" ] && [ "$rc" != 0 ]; then echo "MQV-FAIL ping from cpu $i"; cat /tmp/ping$i; fail=1; fi
    i=$((i + 1))
  done
fi

mqv-result rx_packets "$(cat /sys/class/net/eth0/statistics/rx_packets)"
mqv-result tx_packets "$(cat /sys/class/net/eth0/statistics/tx_packets)"
$E -S eth0 2>/dev/null | awk '/^ *(rx|tx)_queue_[0-9]+_packets:/ {
  split($1, a, "_"); printf "MQV-RESULT %sq_%s=%s\n", a[1], a[3], $2 }'
mqv-result interrupts "$(grep -c virtio /proc/interrupts)"
grep virtio /proc/interrupts
exit "$fail"
