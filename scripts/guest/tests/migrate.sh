# Guest test (busybox sh, run as /test.sh) for live migration: keeps a bulk stream flowing into the guest and pings
# going for MQV_SECONDS while the host migrates the VM, checking every byte of every download (a dirty bit the
# backend failed to set shows up as corrupt data once the VM runs on the destination).
#   run-guest.sh --script scripts/guest/tests/migrate.sh --arg ip=A/24 --arg peer=B --arg md5=M --arg seconds=S
# Guest environment: MQV_PEER (serves http://PEER:5002/down), MQV_MD5 (what every download must hash to),
#   MQV_SECONDS (how long to keep going, default 60).
# Prints MQV-RESULT phase=traffic when the stream starts (the host may migrate from then on).
# Results: downloads, bad_downloads, failed_downloads, pings_sent, pings_received, ping_max_gap (in pings of 0.2 s);
#   then, wherever the VM is by then (the last destination): set1, ping_after_set1, setback, ping_after_setback
#   (ethtool -L to one queue pair and back to MQV_PAIRS, a ping after each).
IP=/sbin/ip-full
peer="${MQV_PEER:?MQV_PEER is needed}"
want="${MQV_MD5:?MQV_MD5 is needed}"
secs="${MQV_SECONDS:-60}"
$IP link set eth0 up
# pings every 0.2 s, in the background; their sequence numbers tell the longest gap
ping -i 0.2 -W 1 "$peer" >/tmp/ping 2>&1 &
pinger=$!
mqv-result phase traffic
end=$(( $(date +%s) + secs ))
n=0; bad=0; failed=0
while [ "$(date +%s)" -lt "$end" ]; do
  rm -f /tmp/down
  if timeout 60 wget -q -O /tmp/down "http://$peer:5002/down"; then
    got="$(md5sum /tmp/down | cut -d' ' -f1)"
    n=$((n + 1))
    if [ "$got" != "$want" ]; then bad=$((bad + 1)); echo "MQV-FAIL download $n: md5 $got"; fi
  else
    failed=$((failed + 1))
  fi
done
kill -INT "$pinger" 2>/dev/null; sleep 1
mqv-result downloads "$n"
mqv-result bad_downloads "$bad"
mqv-result failed_downloads "$failed"
sent="$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/ping)"
recv="$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)"
mqv-result pings_sent "${sent:-0}"
mqv-result pings_received "${recv:-0}"
gap="$(awk -F'seq=' '/seq=/ { split($2, a, " "); s = a[1] + 0; if (have && s - last > max) max = s - last; last = s; have = 1 } END { print max + 0 }' /tmp/ping)"
mqv-result ping_max_gap "$gap"
pairs="${MQV_PAIRS:-1}"
rc=0
if [ "$pairs" -gt 1 ]; then
  /usr/sbin/ethtool -L eth0 combined 1; mqv-result set1 $?
  ping -c 3 -i 0.2 -W 3 "$peer" >/dev/null 2>&1; mqv-result ping_after_set1 $?
  /usr/sbin/ethtool -L eth0 combined "$pairs"; mqv-result setback $?
  ping -c 3 -i 0.2 -W 3 "$peer" >/dev/null 2>&1; mqv-result ping_after_setback $?
fi
[ "$n" -gt 0 ] && [ "$bad" = 0 ] || exit 1
exit 0
