# Guest test (busybox sh, run as /test.sh): keeps pinging the host side of the TAP while the host kills and
# restarts the vhost-user backend again and again, then checks that traffic flows again.
#   run-guest.sh --script scripts/guest/tests/restart.sh --arg ip=A/24 --arg peer=B --arg seconds=60 ...
# Guest environment: MQV_PEER, MQV_SECONDS (how long the pinging phase lasts, default 60).
# Results: during_sent, during_received (the long ping), after_loss (0 = the final 10 pings all came back),
#   rx_packets, tx_packets, eth0 (present|missing after the restarts).
IP=/sbin/ip-full
peer="${MQV_PEER:?MQV_PEER is needed}"
secs="${MQV_SECONDS:-60}"
$IP link set eth0 up
count=$((secs * 4))
ping -c "$count" -i 0.25 -W 1 "$peer" >/tmp/during 2>&1
tail -3 /tmp/during
mqv-result during_sent "$(awk '/packets transmitted/ { print $1 }' /tmp/during)"
mqv-result during_received "$(awk '/packets transmitted/ { print $4 }' /tmp/during)"
# the host stops restarting the backend before our phase ends; give the last restart time to settle
ping -c 10 -i 0.3 -W 2 "$peer" >/tmp/after 2>&1
cat /tmp/after | tail -2
grep -q " 0% packet loss" /tmp/after
after=$?
mqv-result after_loss "$after"
[ -e /sys/class/net/eth0 ] && mqv-result eth0 present || mqv-result eth0 missing
mqv-result rx_packets "$(cat /sys/class/net/eth0/statistics/rx_packets)"
mqv-result tx_packets "$(cat /sys/class/net/eth0/statistics/tx_packets)"
exit "$after"
