# Guest bench (busybox sh, run as /test.sh): bulk TCP to and from the host, first one stream, then one per vCPU
# (each pinned to its vCPU, so that each flow leaves on its own TX queue); MB MiB per stream and direction.
#   run-guest.sh --script scripts/guest/tests/tcp-bench.sh --arg ip=A/24 --arg peer=B --arg mb=64 --arg offloads=on
# The host side (scripts/bench/tcp-peer.py) sinks PEER:5001+i and sends MB MiB from PEER:5101+i.
# offloads=off turns TSO, GSO and GRO off in the guest (frames of one MTU each way).
# Results: up1_mbps, upN_mbps, down1_mbps, downN_mbps (Mbit/s of payload, N = vCPUs), streams,
#   tx_queue_I_packets and rx_queue_I_packets of each queue (ethtool -S), offloads (what ethtool -k says of TSO).
E=/usr/sbin/ethtool
peer="${MQV_PEER:?MQV_PEER is needed}"
mb="${MQV_MB:-64}"
ncpu="$(nproc)"
if [ "${MQV_OFFLOADS:-on}" = off ]; then
  $E -K eth0 tso off gso off gro off 2>&1
fi
mqv-result offloads "$($E -k eth0 | awk '/^tcp-segmentation-offload:/ { print $2 }')"
mqv-result streams "$ncpu"
now() { awk '{ print $1 }' /proc/uptime; }
run() {  # DIRECTION STREAMS
  dir=$1; n=$2; i=0
  t0=$(now)
  while [ "$i" -lt "$n" ]; do
    if [ "$dir" = up ]; then
      taskset -c "$i" sh -c "dd if=/dev/zero bs=65536 count=$((mb * 16)) 2>/dev/null | timeout 300 nc $peer $((5001 + i)) >/dev/null" &
    else
      taskset -c "$i" sh -c "timeout 300 nc $peer $((5101 + i)) </dev/null >/dev/null" &
    fi
    i=$((i + 1))
  done
  wait
  t1=$(now)
  awk -v a="$t0" -v b="$t1" -v n="$n" -v mb="$mb" 'BEGIN { s = b - a; if (s <= 0) s = 0.01; printf "%.0f", n * mb * 8 * 1.048576 / s }'
}
mqv-result up1_mbps "$(run up 1)"
mqv-result upN_mbps "$(run up "$ncpu")"
mqv-result down1_mbps "$(run down 1)"
mqv-result downN_mbps "$(run down "$ncpu")"
$E -S eth0 | awk -F': *' '/(tx|rx)_queue_[0-9]+_packets/ { gsub(/^ +/, "", $1); print "MQV-RESULT " $1 "=" $2 }'
exit 0
