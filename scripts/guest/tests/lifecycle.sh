# Guest test (busybox sh, run as /test.sh): the guest's own lifecycle under traffic. Each boot, MQV_CYCLES times:
#   link    ip link set eth0 down, then up
#   suspend suspend to RAM (echo mem >/sys/power/state), woken by the RTC alarm or by the host
#   queues  ethtool -L combined 1 and MTU 1400, then combined MQV_PAIRS and MTU 1500
#   knobs   offloads off, rings resized, another MAC, promiscuous, MTU 9000 (an "MQV-KNOBS" line says which the
#           driver refused); then all set back
#   reload  combined 1 and MTU 1280, then rmmod virtio_net and insmod it again with csum=0 gso=0 napi_tx=0 (the
#           device is reset and its features negotiated afresh; the guest then sends no offloaded frame), eth0
#           configured again; then the same with the module's defaults
# after each, traffic must resume (first ping reply within 30 s), then pings from every vCPU without loss and a
# download compared by checksum. Then "MQV-CYCLES-DONE" and traffic flows (a pinger per vCPU, downloads and
# uploads in a loop)
# until the host either resets the guest (QMP system_reset: the script runs again after the reboot) or adds
# MQV_DONE to its side; then a last check and the end.
#   run-guest.sh --script scripts/guest/tests/lifecycle.sh --arg pairs=2 --arg ip=A/24 --arg peer=B --arg done=C \
#       --arg downmd5=MD5 --arg cycles=1 ...
# The host serves http://PEER:5002/down (its MD5 is MQV_DOWNMD5) and takes whatever is sent to PEER:5001.
# MQV_CHURN (default 0) rounds of queues, link and reload back to back follow, then one traffic check ("churn").
# Console: one "MQV-STEP boot=ID step=NAME n=I rc=RC resume_ms=MS combined=N mtu=M pings=0|1 bulk=0|1" line per step
#   (rc: the step's own commands, 0 = all worked), "MQV-CYCLES-DONE boot=ID", "MQV-RESULT final=0|1".
E=/usr/sbin/ethtool
IP=/sbin/ip-full
pairs="${MQV_PAIRS:-1}"
peer="${MQV_PEER:?MQV_PEER is needed}"
done_addr="${MQV_DONE:?MQV_DONE is needed}"
cycles="${MQV_CYCLES:-1}"
boot="$(cut -c1-8 /proc/sys/kernel/random/boot_id)"
ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
comb_cur() { $E -l eth0 2>/dev/null | awk '/^Combined:/ { v = $2 } END { print v + 0 }'; }

# traffic NAME N RC: waits for the first reply, then pings from every vCPU and a download; one MQV-STEP line
traffic() {
  t0=$(ms)
  tries=0
  until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -ge 30 ] && break
  done
  resume=$(( $(ms) - t0 ))
  [ "$tries" -ge 30 ] && resume=-1
  pings=1
  i=0
  while [ "$i" -lt "$(nproc)" ]; do
    taskset -c "$i" ping -c 2 -i 0.2 -W 2 "$peer" >/tmp/ping$i 2>&1 &
    i=$((i + 1))
  done
  wait
  i=0
  while [ "$i" -lt "$(nproc)" ]; do
    grep -q " 0% packet loss" /tmp/ping$i || { pings=0; cat /tmp/ping$i; }
    i=$((i + 1))
  done
  rm -f /tmp/down
  timeout 30 wget -q -O /tmp/down "http://$peer:5002/down"
  [ "$(md5sum /tmp/down 2>/dev/null | cut -d' ' -f1)" = "${MQV_DOWNMD5:-}" ] && bulk=1 || bulk=0
  echo "MQV-STEP boot=$boot step=$1 n=$2 rc=$3 resume_ms=$resume combined=$(comb_cur) \
mtu=$(cat /sys/class/net/eth0/mtu 2>/dev/null) pings=$pings bulk=$bulk"
}

configure() {
  $IP addr add "$MQV_IP" dev eth0 2>/dev/null
  $IP link set eth0 up
}

# reload [MODULE ARGS]: virtio_net unloaded and loaded again (the device reset, its features negotiated again)
reload() {
  r=0
  rmmod virtio_net || r=1
  w=0
  while [ -e /sys/class/net/eth0 ] && [ "$w" -lt 100 ]; do sleep 0.1; w=$((w + 1)); done
  insmod /lib/modules/virtio_net.ko "$@" || r=1
  w=0
  while [ ! -e /sys/class/net/eth0 ] && [ "$w" -lt 300 ]; do sleep 0.1; w=$((w + 1)); done
  configure || r=1
  return "$r"
}

$IP link set eth0 up
traffic boot 0 0
n=1
while [ "$n" -le "$cycles" ]; do
  rc=0
  $IP link set eth0 down || rc=1
  sleep 0.5
  $IP link set eth0 up || rc=1
  traffic link "$n" "$rc"

  # suspend to RAM (S3): the driver's freeze resets the device, its restore negotiates again; the RTC alarm or the
  # host (QMP system_wakeup) wakes the guest
  rc=0
  echo 0 >/sys/class/rtc/rtc0/wakealarm
  echo +2 >/sys/class/rtc/rtc0/wakealarm
  echo "MQV-SUSPEND boot=$boot"
  echo mem >/sys/power/state || rc=1
  traffic suspend "$n" "$rc"

  rc=0
  if [ "$pairs" -gt 1 ]; then $E -L eth0 combined 1 || rc=1; fi
  $IP link set eth0 mtu 1400 || rc=1
  traffic queues1 "$n" "$rc"
  rc=0
  if [ "$pairs" -gt 1 ]; then $E -L eth0 combined "$pairs" || rc=1; fi
  $IP link set eth0 mtu 1500 || rc=1
  traffic queues "$n" "$rc"

  rc=0
  # knobs: offloads off (ethtool -K; with CTRL_GUEST_OFFLOADS the receive ones go to the device), rings resized
  # (ethtool -G: needs RING_RESET), another MAC, promiscuous mode, MTU 9000 with an 8000-byte ping; each may be
  # refused (rc in the MQV-KNOBS line), but traffic must flow after it
  k1=0; k2=0; k3=0; k4=0; k5=0
  $E -K eth0 rx off tx off sg off tso off gso off gro off >/dev/null 2>&1 || k1=1
  $E -G eth0 rx 128 tx 128 >/dev/null 2>&1 || k2=1
  mac="$(cat /sys/class/net/eth0/address)"
  $IP link set eth0 address 02:00:00:00:5e:01 || k3=1
  $IP link set eth0 promisc on
  $IP link set eth0 mtu 9000 || k4=1
  ping -c 2 -s 8000 -W 2 "$peer" >/dev/null 2>&1 || k5=1
  echo "MQV-KNOBS boot=$boot offloads=$k1 ringsize=$k2 mac=$k3 mtu9000=$k4 ping8000=$k5"
  traffic knobs "$n" "$rc"
  $E -K eth0 rx on tx on sg on tso on gso on gro on >/dev/null 2>&1
  $E -G eth0 rx 256 tx 256 >/dev/null 2>&1
  $IP link set eth0 address "$mac" || rc=1
  $IP link set eth0 promisc off
  $IP link set eth0 mtu 1500 || rc=1
  if [ "$pairs" -gt 1 ]; then $E -L eth0 combined 1 || rc=1; fi
  $IP link set eth0 mtu 1280 || rc=1
  reload csum=0 gso=0 napi_tx=0 || rc=1
  traffic reload_nocsum "$n" "$rc"
  rc=0
  reload || rc=1
  traffic reload "$n" "$rc"
  n=$((n + 1))
done
# churn: MQV_CHURN rounds of the same, back to back, with no traffic check in between
rc=0
n=1
while [ "$n" -le "${MQV_CHURN:-0}" ]; do
  if [ "$pairs" -gt 1 ]; then $E -L eth0 combined 1 || rc=1; $E -L eth0 combined "$pairs" || rc=1; fi
  $IP link set eth0 down || rc=1
  $IP link set eth0 up || rc=1
  if [ $((n % 2)) = 0 ]; then reload csum=0 || rc=1; else reload || rc=1; fi
  n=$((n + 1))
done
[ "${MQV_CHURN:-0}" -gt 0 ] && traffic churn "${MQV_CHURN}" "$rc"
echo "MQV-CYCLES-DONE boot=$boot"

# traffic flows until the host resets us or says it is over
bg=""
i=0
while [ "$i" -lt "$(nproc)" ]; do
  taskset -c "$i" ping -i 0.2 "$peer" >/dev/null 2>&1 &
  bg="$bg $!"
  i=$((i + 1))
done
(while :; do timeout 30 wget -q -O /dev/null "http://$peer:5002/down"; done) >/dev/null 2>&1 &
bg="$bg $!"
(while :; do timeout 3 nc "$peer" 5001 </dev/zero; done) >/dev/null 2>&1 &
bg="$bg $!"
start=$(cut -d. -f1 /proc/uptime)
reached=0
while [ $(( $(cut -d. -f1 /proc/uptime) - start )) -lt "${MQV_MAX:-120}" ]; do
  if ping -c 1 -W 1 "$done_addr" >/dev/null 2>&1; then reached=1; break; fi
  sleep 0.5
done
kill $bg 2>/dev/null
# and what the loops had running: an upload still sending at poweroff -f can hang the guest's power-off under TCG
# (seen with QEMU's own TAP backend as with ours: a soft lockup in nc, QEMU never exits)
killall nc wget 2>/dev/null
sleep 0.5
traffic final 0 $((1 - reached))
dmesg | grep -iE "virtio|eth0|timed out|error" | tail -10
mqv-result eth0 "$([ -e /sys/class/net/eth0 ] && echo present || echo missing)"
mqv-result reached_done "$reached"
