# Guest test (busybox sh, run as /test.sh) for live migration: keeps a bulk stream flowing into the guest, one going
# out of it, and pings from every vCPU going for MQV_SECONDS while the host migrates the VM, checking every byte of
# every download (a dirty bit the backend failed to set shows up as corrupt data once the VM runs on the
# destination); the host checks every upload.
#   run-guest.sh --script scripts/guest/tests/migrate.sh --arg ip=A/24 --arg peer=B --arg md5=M --arg seconds=S
# Guest environment: MQV_PEER (serves http://PEER:5002/down, takes uploads of the same bytes on PEER:5001),
#   MQV_MD5 (what every download must hash to), MQV_SECONDS (how long to keep going, default 60), MQV_CPUS (vCPUs
#   to ping from, default 1).
# Prints MQV-RESULT phase=traffic when the stream starts (the host may migrate from then on).
# Results: downloads, bad_downloads, failed_downloads, uploads, failed_uploads, pings_sent, pings_received (all
#   vCPUs), ping_max_gap (the longest run of unanswered pings on any vCPU, in pings of 0.2 s);
#   then, wherever the VM is by then (the last destination): set1, ping_after_set1, setback, ping_after_setback
#   (ethtool -L to one queue pair and back to MQV_PAIRS, a ping after each).
IP=/sbin/ip-full
peer="${MQV_PEER:?MQV_PEER is needed}"
want="${MQV_MD5:?MQV_MD5 is needed}"
secs="${MQV_SECONDS:-60}"
$IP link set eth0 up
# pings every 0.2 s from each vCPU (each on its own TX queue), in the background; sequence numbers tell the gaps
cpus="${MQV_CPUS:-1}"
pingers=""
i=0
while [ "$i" -lt "$cpus" ]; do
  taskset -c "$i" ping -i 0.2 -W 1 "$peer" >/tmp/ping$i 2>&1 &
  pingers="$pingers $!"
  i=$((i + 1))
done
end=$(( $(date +%s) + secs ))
# uploads: the first good download sent back again and again (the host checks each one's MD5)
(
  while [ ! -s /tmp/up ] && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
  u=0; uf=0
  while [ "$(date +%s)" -lt "$end" ]; do
    if timeout 60 nc "$peer" 5001 </tmp/up >/dev/null; then u=$((u + 1)); else uf=$((uf + 1)); sleep 1; fi
  done
  echo "$u $uf" >/tmp/upcount
) &
uploader=$!
mqv-result phase traffic
n=0; bad=0; failed=0
while [ "$(date +%s)" -lt "$end" ]; do
  rm -f /tmp/down
  if timeout 60 wget -q -O /tmp/down "http://$peer:5002/down"; then
    got="$(md5sum /tmp/down | cut -d' ' -f1)"
    n=$((n + 1))
    if [ "$got" != "$want" ]; then bad=$((bad + 1)); echo "MQV-FAIL download $n: md5 $got"
    elif [ ! -s /tmp/up ]; then cp /tmp/down /tmp/up.new && mv /tmp/up.new /tmp/up; fi
  else
    failed=$((failed + 1))
  fi
done
for p in $pingers; do kill -INT "$p" 2>/dev/null; done
wait "$uploader"
sleep 1
mqv-result downloads "$n"
mqv-result bad_downloads "$bad"
mqv-result failed_downloads "$failed"
read -r up upfailed </tmp/upcount
mqv-result uploads "${up:-0}"
mqv-result failed_uploads "${upfailed:-0}"
sent=0; recv=0; gap=0
i=0
while [ "$i" -lt "$cpus" ]; do
  s="$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/ping$i)"
  r="$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping$i)"
  g="$(awk -F'seq=' '/seq=/ { split($2, a, " "); s = a[1] + 0; if (have && s - last > max) max = s - last; last = s; have = 1 } END { print max + 0 }' /tmp/ping$i)"
  sent=$((sent + ${s:-0})); recv=$((recv + ${r:-0}))
  [ "$g" -gt "$gap" ] && gap="$g"
  i=$((i + 1))
done
mqv-result pings_sent "$sent"
mqv-result pings_received "$recv"
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
