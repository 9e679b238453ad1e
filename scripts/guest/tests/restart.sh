# Guest test (busybox sh, run as /test.sh): keeps pinging the host side of the TAP while the host kills and
# restarts the vhost-user backend again and again; the host then adds a second address (MQV_DONE) to its side,
# and once the guest reaches it, the guest checks that traffic flows with no loss.
#   run-guest.sh --script scripts/guest/tests/restart.sh --arg ip=A/24 --arg peer=B --arg done=C --arg max=300 ...
# Guest environment: MQV_PEER, MQV_DONE (the address that says "restarts over"), MQV_MAX (seconds at most).
# Results: during_sent, during_received (pings while restarting), longest_gap_ms (between two answered pings of a
#   second pinger, one ping every 0.1 s), gap_pings, reached_done, after_ok (1 = after the last
#   restart, 10 pings in a row came back, within 60 tries), after_tries, eth0 (present|missing), rx_packets,
#   tx_packets.
IP=/sbin/ip-full
peer="${MQV_PEER:?MQV_PEER is needed}"
done_addr="${MQV_DONE:?MQV_DONE is needed}"
max="${MQV_MAX:-300}"
$IP link set eth0 up
sent=0
received=0
reached=0
# the gap measure: a ping every 0.1 s in the background; the longest run of unanswered sequence numbers between
# two answered ones says how long the guest was cut off (to 0.1 s)
ping -i 0.1 "$peer" >/tmp/gap 2>&1 &
gap_pid=$!
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
kill "$gap_pid" 2>/dev/null
wait "$gap_pid" 2>/dev/null
longest=$(awk -F'seq=' '/seq=/ { split($2, a, " "); s = a[1] + 0; if (have && s - last > g) g = s - last; last = s; have = 1 }
  END { print (g > 0 ? g : 1) * 100 }' /tmp/gap)
mqv-result longest_gap_ms "$longest"
mqv-result gaps "$(awk -F'seq=' '/seq=/ { split($2, a, " "); s = a[1] + 0; if (have && s - last > 3) printf "%d:%d,", last, (s - last) * 100; last = s; have = 1 }' /tmp/gap)"
mqv-result gap_pings "$(grep -c 'seq=' /tmp/gap)"
mqv-result reached_done "$reached"
# traffic must flow again: 10 replies in a row (a slow, loaded TCG guest may lose a stray one before that)
tries=0
run=0
while [ "$tries" -lt 60 ] && [ "$run" -lt 10 ]; do
  tries=$((tries + 1))
  if ping -c 1 -W 2 "$peer" >/dev/null 2>&1; then run=$((run + 1)); else run=0; fi
done
[ "$run" -ge 10 ] && after=0 || after=1
mqv-result after_ok "$((1 - after))"
mqv-result after_tries "$tries"
[ -e /sys/class/net/eth0 ] && mqv-result eth0 present || mqv-result eth0 missing
mqv-result rx_packets "$(cat /sys/class/net/eth0/statistics/rx_packets)"
mqv-result tx_packets "$(cat /sys/class/net/eth0/statistics/tx_packets)"
mqv-result rx_dropped "$(cat /sys/class/net/eth0/statistics/rx_dropped)"
mqv-result rx_errors "$(cat /sys/class/net/eth0/statistics/rx_errors)"
/usr/sbin/ethtool -S eth0 2>/dev/null | grep -E "packets|drops|kicks" | head -20
dmesg | grep -iE "virtio|eth0" | tail -10
[ "$reached" = 1 ] && exit "$after"
exit 1
