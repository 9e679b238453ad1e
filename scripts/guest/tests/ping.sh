# Guest test (busybox sh, run as /test.sh): pings the host side of the TAP, spread over the vCPUs.
#   run-guest.sh --script scripts/guest/tests/ping.sh --arg ip=A/24 --arg peer=B --arg count=40
# Results: sent, received (over all vCPUs), loss_cpuN.
peer="${MQV_PEER:?MQV_PEER is needed}"
count="${MQV_COUNT:-40}"
/sbin/ip-full link set eth0 up
ncpu="$(nproc)"
i=0
while [ "$i" -lt "$ncpu" ]; do
  taskset -c "$i" ping -c "$count" -i 0.25 -W 3 "$peer" >/tmp/ping$i 2>&1 &
  i=$((i + 1))
done
wait
sent=0
received=0
i=0
while [ "$i" -lt "$ncpu" ]; do
  tail -2 /tmp/ping$i
  s=$(awk '/packets transmitted/ { print $1 }' /tmp/ping$i)
  r=$(awk '/packets transmitted/ { print $4 }' /tmp/ping$i)
  sent=$((sent + ${s:-0}))
  received=$((received + ${r:-0}))
  mqv-result "loss_cpu$i" $(( ${s:-0} - ${r:-0} ))
  i=$((i + 1))
done
mqv-result sent "$sent"
mqv-result received "$received"
[ "$sent" -gt 0 ] && [ "$sent" = "$received" ]
