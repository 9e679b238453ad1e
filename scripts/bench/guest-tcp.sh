#!/usr/bin/env bash
# Bulk TCP between the test guest (Linux 6.1 under QEMU/TCG) and the host, through a multiqueue TAP in a network
# namespace of its own, with the guest's NIC served by mqvirtio (vhost-user) or by QEMU's own userspace virtio-net
# (-netdev tap,vhost=off), or QEMU with the kernel's vhost-net (vhost=on, backend qemu-vhost, where /dev/vhost-net
# exists): one stream and one per vCPU, each way, with the guest's offloads (TSO/GSO/GRO) on and off.
# Prints Mbit/s per case and the per-queue packet counts the guest saw (each vCPU's flow on its own queue pair), and,
# for mqvirtio, which pair carried each TCP flow each way (from serve --capture, read by tshark).
#   scripts/bench/guest-tcp.sh [--pairs N] [--mb MB] [--backends "ours qemu qemu-vhost"] [--offloads "on off"] [--out DIR]
# MQVIRTIO_CMD: the mqvirtio command to run serve with (default bin/mqvirtio; the tests give their own jar).
# Root. Without /dev/vhost-net, qemu-vhost is skipped with a line saying so (the default backends are "ours qemu",
# plus qemu-vhost where the device exists). Under TCG the guest's
# CPU is the bottleneck: compare cases with each other, within one run.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
pairs=4; mb=32; backends="ours qemu$( [ -c /dev/vhost-net ] && echo " qemu-vhost" || true)"; offloads="on off"; out="$root/target/guest-tcp"
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) pairs="$2"; shift 2 ;;
    --mb) mb="$2"; shift 2 ;;
    --backends) backends="$2"; shift 2 ;;
    --offloads) offloads="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "guest-tcp.sh needs root (a TAP in a network namespace)" >&2; exit 1; }
mkdir -p "$out"
read -r -a mqvirtio <<<"${MQVIRTIO_CMD:-$root/bin/mqvirtio}"
ns="mqvgt$$"; tap="mqvgt$$"; host=10.231.0.1; guest=10.231.0.2
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  pids=()
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
printf '%-10s %-9s %10s %10s %12s %12s  %s\n' backend offloads "up 1" "up $pairs" "down 1" "down $pairs" \
  "guest packets per queue (tx/rx)"
for backend in $backends; do
  if [ "$backend" = qemu-vhost ] && [ ! -c /dev/vhost-net ]; then
    echo "qemu-vhost: skipped, this kernel has no /dev/vhost-net (QEMU's vhost=on needs the vhost_net module)"
    continue
  fi
  for off in $offloads; do
    cleanup
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" /usr/bin/python3 "$root/scripts/bench/tcp-peer.py" 0.0.0.0 "$pairs" "$mb" \
      >"$out/peer.log" 2>&1 &
    pids+=($!)
    case "$backend" in
      ours)
        sock="$out/vm.sock"; rm -f "$sock"
        cap="$out/capture-$off"; rm -rf "$cap"
        ip netns exec "$ns" "${mqvirtio[@]}" serve --socket-path "$sock" --queues "$pairs" --tap "$tap" \
          --name vm --metrics 127.0.0.1:9464 --capture "$cap" --capture-snaplen 96 >"$out/serve-$off.log" 2>&1 &
        serve_pid=$!
        pids+=($serve_pid)
        for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
        [ -S "$sock" ] || { echo "serve did not start: $(tail -3 "$out/serve-$off.log")" >&2; exit 1; }
        net=(--vhost-user "$sock")
        ;;
      qemu|qemu-vhost)
        ip -n "$ns" tuntap add dev "$tap" mode tap multi_queue
        net=(--tap "$tap" --netns "$ns")
        [ "$backend" = qemu-vhost ] && net+=(--vhost-net)
        ;;
      *) echo "unknown backend: $backend" >&2; exit 2 ;;
    esac
    ip -n "$ns" addr add "$host/24" dev "$tap"
    ip -n "$ns" link set "$tap" up
    log="$out/$backend-$off.console.log"
    "$root/scripts/guest/run-guest.sh" "${net[@]}" --queues "$pairs" --smp "$pairs" --mem 1024 --timeout 900 \
      --script "$root/scripts/guest/tests/tcp-bench.sh" --log "$log" \
      --arg ip="$guest/24" --arg peer="$host" --arg mb="$mb" --arg offloads="$off" >"$out/run-$backend-$off.log" 2>&1 \
      || echo "($backend, offloads $off: the guest failed, see $log)" >&2
    r() { sed -n "s/.*MQV-RESULT $1=\([^ ]*\).*/\1/p" "$log" | tail -1 | tr -d '\r'; }
    per=""
    for q in $(seq 0 $((pairs - 1))); do per="$per $(r "tx_queue_${q}_packets")/$(r "rx_queue_${q}_packets")"; done
    if [ "$backend" = ours ]; then
      # the device's own count of each queue (guest TX queue q is the device's TX queue q, and RX likewise)
      prom="$(ip netns exec "$ns" /usr/bin/python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode())' 2>/dev/null || true)"
      dev=""
      for q in $(seq 0 $((pairs - 1))); do
        t=$(sed -n "s/^mqvirtio_queue_packets_total{device=\"vm\",direction=\"tx\",queue=\"$q\"} \([0-9.E]*\)/\1/p" <<<"$prom")
        x=$(sed -n "s/^mqvirtio_queue_packets_total{device=\"vm\",direction=\"rx\",queue=\"$q\"} \([0-9.E]*\)/\1/p" <<<"$prom")
        dev="$dev $(printf '%.0f/%.0f' "${t:-0}" "${x:-0}")"
      done
      per="$per  (device:$dev)"
      # Which pair carried each TCP flow, both ways, from the device's own capture (the headers of every frame each
      # pair moved, read back by tshark after serve closed the files). The guest runs the flow to host port 5001+i
      # (and from 5101+i) on vCPU i, so it belongs on pair i both ways, and it settles there: printed per flow as
      # host:guest port=pair(share of its guest-TX frames there)/pair(share of its RX frames). Frames elsewhere are
      # the TAP's doing: it steers a flow's first replies (the SYN-ACK) before it has learned the flow's queue from
      # the guest, and a download follows the guest's ACKs from the CPU that took that interrupt for a while.
      kill "$serve_pid" 2>/dev/null || true
      wait "$serve_pid" 2>/dev/null || true
      frames="$out/flows-$off.txt"
      for f in "$cap"/vm-qp*.pcapng; do
        q="${f##*-qp}"; q="${q%.pcapng}"
        tshark -r "$f" -Y tcp -T fields -e frame.time_epoch -e frame.packet_flags_direction -e tcp.srcport \
          -e tcp.dstport 2>/dev/null \
          | awk -v q="$q" '{ d = ($2 ~ /2$/) ? "tx" : "rx"; h = ($3 >= 5001 && $3 <= 5199) ? $3 : $4
                             g = (h == $3) ? $4 : $3; print $1, h ":" g, d, q }'
      done | sort -n >"$frames"
      # a flow's pair each way is where its second half went (by time): where it settled once the TAP learned it
      flows_line="$(awk '
          NR == FNR { all[$2, $3]++; next }
          { f = $2; k = f SUBSEP $3; seen[f] = 1; at[k]++; if ($4 > maxq) maxq = $4
            if (at[k] > all[k] / 2) late[k, $4]++; n[k, $4]++ }
          END { ok = "yes"; off = 0; total = 0
                for (f in seen) { split(f, p, ":"); want = (p[1] >= 5101) ? p[1] - 5101 : p[1] - 5001
                  line = line " " f "="
                  for (d = 0; d < 2; d++) { dir = d ? "rx" : "tx"; k = f SUBSEP dir; best = -1; bn = 0
                    for (q = 0; q <= maxq; q++) if (late[k, q] > bn) { bn = late[k, q]; best = q }
                    line = line (d ? "/" : "") (best < 0 ? "-" : best "(" int(100 * n[k, best] / all[k]) "%)")
                    if (best != want) ok = "no"
                    off += all[k] - n[k, want]; total += all[k] } }
                printf "flows (host:guest port=pair tx/rx, share of all its frames):%s\n", line
                printf "  each flow settles on its vCPU'"'"'s pair both ways: %s; frames off it: %d of %d\n", ok, off, total }' \
          "$frames" "$frames")"
    fi
    printf '%-10s %-9s %10s %10s %12s %12s  %s\n' "$backend" "$off($(r offloads))" "$(r up1_mbps)" "$(r upN_mbps)" \
      "$(r down1_mbps)" "$(r downN_mbps)" "$per"
    if [ "$backend" = ours ]; then echo "  $flows_line"; fi
  done
done
echo "(Mbit/s of payload; up: guest to host; consoles and logs in $out)"
