#!/usr/bin/env bash
# Runs DPDK's testpmd with the given --vdev ports and forwarding mode, without a terminal, for the interop tests.
# testpmd runs interactive with its stdin on a FIFO held open by this script; the script types the commands.
#
#   scripts/dpdk/testpmd.sh --vdev SPEC [--vdev SPEC...] [OPTIONS] [-- MORE_TESTPMD_ARGS...]
#
#   --vdev SPEC          an EAL virtual device, e.g. 'net_vhost0,iface=/tmp/x.sock,queues=4' (vhost-user backend,
#                        server by default, client=1 to connect) or 'net_virtio_user0,path=/tmp/x.sock,queues=4,cq=1'
#                        (virtio-user frontend; cq=1 needed with queues > 1)
#   --forward MODE       io | macswap | txonly | rxonly | ... (default io)
#   --queues N           --rxq=N --txq=N (default 1)
#   --core N             the CPU of the forwarding lcore (default 1 on 2+ CPUs); the main lcore, which only reads
#                        commands, sits on another CPU (the other core of a 2-core machine). Two testpmds side by
#                        side: give them different --core values.
#   --prefix NAME        EAL --file-prefix (default mqv-PID); its /var/run/dpdk/NAME is removed afterwards
#   --duration S         forward for S seconds, print the statistics, quit (default 0: until TERM/INT/HUP, or the
#                        timeout; the statistics are printed then too)
#   --timeout S          hard limit for the whole run (default 600)
#   --stats-every S      also print `show port stats all` every S seconds while forwarding (default: off)
#   --txpkts LEN         txonly frame length (default testpmd's 64)
#   --mem MB             EAL -m, no hugepages (default 512)
#   --mbufs N            --total-num-mbufs (default 32768; testpmd's own default does not fit in 512 MB with 4 queues)
#   --wait-socket PATH   wait (up to 30 s) for this UNIX socket to exist before starting (virtio-user client side)
#   --no-start           don't start forwarding (ports are still set up); e.g. to only serve a vhost socket
#   --log FILE           also keep testpmd's output here (default: a temp file, removed)
#   MQV_TESTPMD          the binary (default dpdk-testpmd on PATH, else /usr/bin/dpdk-testpmd)
#
# stdout: testpmd's own output, then machine-readable lines:
#   MQV-TESTPMD started pid=N prefix=NAME
#   MQV-TESTPMD-STATS port=P rx_packets=N rx_missed=N rx_bytes=N rx_errors=N rx_nombuf=N tx_packets=N tx_errors=N tx_bytes=N
#                     (one per port, from the final `show port stats all`)
#   MQV-TESTPMD-DONE rc=N      (testpmd's exit status; 124 if the timeout killed it)
# Exit status: testpmd's.
set -euo pipefail

log() { echo "testpmd.sh: $*" >&2; }
die() { log "$*"; exit 2; }

vdevs=(); forward=io; queues=1; core=""; prefix="mqv-$$"; duration=0; timeout_s=600; stats_every=0
txpkts=""; mem=512; mbufs=32768; wait_socket=""; start=1; logfile=""; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --vdev) vdevs+=(--vdev "$2"); shift 2 ;;
    --forward) forward="$2"; shift 2 ;;
    --queues) queues="$2"; shift 2 ;;
    --core) core="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --stats-every) stats_every="$2"; shift 2 ;;
    --txpkts) txpkts="$2"; shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --mbufs) mbufs="$2"; shift 2 ;;
    --wait-socket) wait_socket="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    --log) logfile="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
[ "${#vdevs[@]}" -gt 0 ] || die "at least one --vdev is needed"
bin="${MQV_TESTPMD:-$(command -v dpdk-testpmd || echo /usr/bin/dpdk-testpmd)}"
[ -x "$bin" ] || die "no dpdk-testpmd (install dpdk-dev: scripts/install-deps.sh)"

ncpu="$(nproc)"
if [ -z "$core" ]; then core=$(( ncpu > 1 ? 1 : 0 )); fi
main_cpu=$(( ncpu > 1 ? (core == 0 ? 1 : 0) : 0 ))

tmp="$(mktemp -d "${TMPDIR:-/tmp}/mqv-testpmd.XXXXXX")"
fifo="$tmp/stdin"; mkfifo "$fifo"
[ -n "$logfile" ] || logfile="$tmp/out.log"
: >"$logfile"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  exec 7>&- 2>/dev/null || true
  rm -rf "$tmp" "/var/run/dpdk/$prefix"
}
trap cleanup EXIT
stop_req=0
trap 'stop_req=1' TERM INT HUP

if [ -n "$wait_socket" ]; then
  for _ in $(seq 300); do [ -S "$wait_socket" ] && break; sleep 0.1; done
  [ -S "$wait_socket" ] || die "socket $wait_socket did not appear"
fi

app=(-i --rxq="$queues" --txq="$queues" --nb-cores=1 --total-num-mbufs="$mbufs" --forward-mode="$forward")
[ -n "$txpkts" ] && app+=(--txpkts="$txpkts")
eal=(--lcores "0@$main_cpu,1@$core" --main-lcore 0 --no-huge -m "$mem" --no-pci --file-prefix "$prefix" "${vdevs[@]}")

exec 7<>"$fifo"        # read-write: never blocks, and testpmd never sees EOF while we hold it
# If this script dies, timeout gets TERM (and passes it on); if timeout dies, testpmd gets KILL.
setpriv --pdeathsig TERM timeout -k 5 "$timeout_s" setpriv --pdeathsig KILL \
  "$bin" "${eal[@]}" -- "${app[@]}" "${extra[@]}" <&7 > >(tee -a "$logfile") 2>&1 &
pid=$!
echo "MQV-TESTPMD started pid=$pid prefix=$prefix"
send() { kill -0 "$pid" 2>/dev/null && echo "$*" >&7 || true; }

# Wait for the prompt (ports set up) before typing.
for _ in $(seq 300); do
  grep -q 'testpmd>' "$logfile" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[ "$start" = 1 ] && send start

t_start=$SECONDS; t_stats=$SECONDS
while kill -0 "$pid" 2>/dev/null && [ "$stop_req" = 0 ]; do
  if [ "$duration" != 0 ] && [ $((SECONDS - t_start)) -ge "$duration" ]; then break; fi
  if [ "$stats_every" != 0 ] && [ $((SECONDS - t_stats)) -ge "$stats_every" ]; then
    send "show port stats all"; t_stats=$SECONDS
  fi
  sleep 0.2 & wait $! || true
done

mark="$(wc -l <"$logfile")"
send "show port stats all"
sleep 0.5
send stop
sleep 0.5
send quit
rc=0
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
  log "testpmd did not quit; stopping it"
  kill -TERM "$pid" 2>/dev/null || true
fi
wait "$pid" || rc=$?
pid=""
sleep 0.2

# Final port statistics (the block printed after `mark`).
tail -n +"$((mark + 1))" "$logfile" | tr -d '\r' | awk '
  /NIC statistics for port/ { for (i = 1; i <= NF; i++) if ($i == "port") port = $(i + 1); inblk = 1; next }
  inblk && /RX-packets:/ { rxp = $2; rxm = $4; rxb = $6 }
  inblk && /RX-errors:/  { rxe = $2 }
  inblk && /RX-nombuf:/  { rxn = $2 }
  inblk && /TX-packets:/ { txp = $2; txe = $4; txb = $6 }
  inblk && /####################/ && rxp != "" {
    printf "MQV-TESTPMD-STATS port=%s rx_packets=%s rx_missed=%s rx_bytes=%s rx_errors=%s rx_nombuf=%s tx_packets=%s tx_errors=%s tx_bytes=%s\n", port, rxp, rxm, rxb, rxe, rxn, txp, txe, txb
    inblk = 0; rxp = ""
  }'
echo "MQV-TESTPMD-DONE rc=$rc"
exit "$rc"
