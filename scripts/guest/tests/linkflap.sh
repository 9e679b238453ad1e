# Guest test (busybox sh, run as /test.sh): pings the host side of the TAP while the host takes the TAP's link down
# and up again several times, then deletes the TAP. The host drives the phases:
#   1. ping until the host adds MQV_DONE to its side (the flaps are over); counts what came back meanwhile
#   2. traffic must flow again: 10 replies in a row (after_ok), within 60 tries
#   3. "MQV-RESULT phase3 start", then MQV_TAIL seconds of pings while the host deletes the TAP: nothing comes back,
#      but the device must keep using what the guest sends (its TX completions, ethtool's tx_queue_N_packets, grow)
#      and eth0 must stay (no ring broken, no reset)
#   run-guest.sh --script scripts/guest/tests/linkflap.sh --arg ip=A/24 --arg peer=B --arg done=C --arg tail=8 ...
# Results: during_sent, during_received, reached_done, after_ok, after_tries, tx_done_before, tx_done_after, eth0.
IP=/sbin/ip-full
peer="${MQV_PEER:?MQV_PEER is needed}"
done_addr="${MQV_DONE:?MQV_DONE is needed}"
max="${MQV_MAX:-200}"
tail_s="${MQV_TAIL:-8}"
$IP link set eth0 up
# TX completions so far, over all queues (virtio_net counts tx packets when the device has used them)
tx_done() {
  /usr/sbin/ethtool -S eth0 2>/dev/null | awk '/tx_queue_[0-9]+_packets:/ { s += $2 } END { print s + 0 }'
}
sent=0
received=0
reached=0
start=$(cut -d. -f1 /proc/uptime)
while [ $(( $(cut -d. -f1 /proc/uptime) - start )) -lt "$max" ]; do
  sent=$((sent + 1))
  ping -c 1 -W 1 "$peer" >/dev/null 2>&1 && received=$((received + 1))
  if [ $((sent % 4)) = 0 ] && ping -c 1 -W 1 "$done_addr" >/dev/null 2>&1; then
    reached=1
    break
  fi
  sleep 0.2
done
mqv-result during_sent "$sent"
mqv-result during_received "$received"
mqv-result reached_done "$reached"
tries=0
run=0
while [ "$tries" -lt 60 ] && [ "$run" -lt 10 ]; do
  tries=$((tries + 1))
  if ping -c 1 -W 2 "$peer" >/dev/null 2>&1; then run=$((run + 1)); else run=0; fi
done
[ "$run" -ge 10 ] && after=1 || after=0
mqv-result after_ok "$after"
mqv-result after_tries "$tries"
before=$(tx_done)
mqv-result tx_done_before "$before"
mqv-result phase3 start
end=$(( $(cut -d. -f1 /proc/uptime) + tail_s ))
while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
  ping -c 1 -W 1 "$peer" >/dev/null 2>&1
  sleep 0.1
done
sleep 1
mqv-result tx_done_after "$(tx_done)"
[ -e /sys/class/net/eth0 ] && mqv-result eth0 present || mqv-result eth0 missing
dmesg | grep -iE "virtio|eth0|timed out" | tail -10
[ "$reached" = 1 ] && [ "$after" = 1 ]
