#!/usr/bin/env bash
# Boots the mqvirtio test guest (Debian cloud kernel + the initramfs of build-initramfs.sh) under QEMU/TCG with
# one virtio-net-pci NIC, and waits for it to power off. Made for ProcessBuilder: no terminal, no stdin, every
# process bounded by --timeout, QEMU killed when this script is (TERM/INT/HUP, or KILL through pdeathsig).
#
#   scripts/guest/run-guest.sh [OPTIONS] [-- EXTRA_QEMU_ARGS...]
#
# Options (each has an environment variable; the option wins):
#   --guest-dir DIR      MQV_GUEST_DIR   output of build-initramfs.sh (default: <repo>/target/guest); (re)built
#                                        there when out of date (cached, flock-protected)
#   --kernel FILE        MQV_KERNEL      default DIR/vmlinuz
#   --initrd FILE        MQV_INITRD      default DIR/initramfs.cpio.gz
#   --script FILE        MQV_GUEST_SCRIPT the guest test, run as /test.sh (appended to the initrd as a second cpio
#                                        archive, so one cached initramfs serves every test)
#   --log FILE           MQV_LOG         serial console log (default DIR/console.log; give each concurrent run
#                                        its own); truncated at start
#   --tee                MQV_TEE=1       also copy the console to stdout
#   --timeout SECONDS    MQV_TIMEOUT     overall limit (default 180); QEMU gets TERM then, KILL 5 s later
#   --smp N              MQV_SMP         vCPUs (default 4)
#   --mem MB             MQV_MEM         guest memory, a shared memfd (default 1024)
#   --net KIND           MQV_NET         vhost-user | tap | user | none (default: vhost-user when a socket is given,
#                                        tap when a tap is given, else user)
#   --vhost-user SOCK    MQV_VHOST_SOCK  vhost-user socket path
#   --server             MQV_VHOST_SERVER=1     QEMU listens on SOCK (server=on,wait=off); the backend connects
#   --reconnect          MQV_VHOST_RECONNECT=1  client chardev reconnects after a backend restart
#   --sock-wait SECONDS  MQV_SOCK_WAIT   client mode: wait this long for SOCK to appear (default 30)
#   --tap IFNAME         MQV_TAP         an existing (multiqueue) TAP; vhost=off
#   --vhost-net          MQV_VHOST_NET=1 with --tap: vhost=on (the kernel's vhost-net; needs /dev/vhost-net)
#   --netns NAME         MQV_NETNS       run QEMU inside this network namespace (for a TAP that lives there)
#   --queues N           MQV_QUEUES      queue pairs (default 1); mq=on, vectors=2N+2
#   --mac MAC            MQV_MAC         default 52:54:00:12:34:56
#   --dev-opts OPTS      MQV_DEV_OPTS    more virtio-net-pci properties, e.g. packed=on,mrg_rxbuf=off
#   --append ARGS        MQV_APPEND      more kernel arguments
#   --arg KEY=VALUE                      adds the kernel argument mqv.KEY=VALUE (guest env MQV_KEY); repeatable
#   --msi auto|on|off    MQV_MSI         auto (default): pci=nomsi for vhost-user on QEMU < 8 (scripts/qemu-info.sh)
#   --check              MQV_CHECK=1     exit with the guest's MQV-DONE rc instead of QEMU's status
#   --qmp SOCK           MQV_QMP         also open a QMP monitor on this UNIX socket (server=on,wait=off)
#   --pidfile FILE       MQV_PIDFILE     QEMU writes its pid there
#   --cpus LIST          MQV_QEMU_CPUS   pin QEMU to these host CPUs (taskset -c); beside a busy-polling testpmd
#                                        on CPU 1, pinning QEMU to CPU 0 measured slower (29 s vs 22 s) than none
#   MQV_QEMU                             the QEMU binary (default: qemu-system-x86_64 on PATH)
#   MQV_QEMU_EXTRA                       more QEMU arguments, split on blanks (e.g. "-L /usr/share/seabios")
#
# Exit status: QEMU's (0 after the guest powered off, also after a kernel panic: read the log), 124 when the
# timeout hit. With --check: the guest's MQV-DONE rc; 124 on timeout; 125 when the log has no MQV-DONE line.
# stderr ends with one line: `run-guest: qemu_rc=N guest_rc=N|none wall_s=S log=FILE`.
# Guest console markers: see build-initramfs.sh (MQV-BOOT, MQV-NET, MQV-READY, MQV-RESULT, MQV-DONE rc=N).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
log() { echo "run-guest: $*" >&2; }
die() { log "$*"; exit 2; }

guest_dir="${MQV_GUEST_DIR:-$root/target/guest}"
kernel="${MQV_KERNEL:-}"; initrd="${MQV_INITRD:-}"; script="${MQV_GUEST_SCRIPT:-}"
logfile="${MQV_LOG:-}"; tee="${MQV_TEE:-}"; timeout_s="${MQV_TIMEOUT:-180}"
smp="${MQV_SMP:-4}"; mem="${MQV_MEM:-1024}"; net="${MQV_NET:-}"
sock="${MQV_VHOST_SOCK:-}"; server="${MQV_VHOST_SERVER:-}"; reconnect="${MQV_VHOST_RECONNECT:-}"
sock_wait="${MQV_SOCK_WAIT:-30}"; tap="${MQV_TAP:-}"; netns="${MQV_NETNS:-}"; vhost_net="${MQV_VHOST_NET:-}"
queues="${MQV_QUEUES:-1}"; mac="${MQV_MAC:-52:54:00:12:34:56}"; dev_opts="${MQV_DEV_OPTS:-}"
append="${MQV_APPEND:-}"; msi="${MQV_MSI:-auto}"; check="${MQV_CHECK:-}"
qmp="${MQV_QMP:-}"; pidfile="${MQV_PIDFILE:-}"; cpus="${MQV_QEMU_CPUS:-}"
extra_qemu=(); mqv_args=()

while [ $# -gt 0 ]; do
  case "$1" in
    --guest-dir) guest_dir="$2"; shift 2 ;;
    --kernel) kernel="$2"; shift 2 ;;
    --initrd) initrd="$2"; shift 2 ;;
    --script) script="$2"; shift 2 ;;
    --log) logfile="$2"; shift 2 ;;
    --tee) tee=1; shift ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --smp) smp="$2"; shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --net) net="$2"; shift 2 ;;
    --vhost-user) sock="$2"; shift 2 ;;
    --server) server=1; shift ;;
    --reconnect) reconnect=1; shift ;;
    --sock-wait) sock_wait="$2"; shift 2 ;;
    --tap) tap="$2"; shift 2 ;;
    --vhost-net) vhost_net=1; shift ;;
    --netns) netns="$2"; shift 2 ;;
    --queues) queues="$2"; shift 2 ;;
    --mac) mac="$2"; shift 2 ;;
    --dev-opts) dev_opts="$2"; shift 2 ;;
    --append) append="$append $2"; shift 2 ;;
    --arg) mqv_args+=("mqv.$2"); shift 2 ;;
    --msi) msi="$2"; shift 2 ;;
    --check) check=1; shift ;;
    --qmp) qmp="$2"; shift 2 ;;
    --pidfile) pidfile="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --) shift; extra_qemu=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done

case "$queues" in ''|*[!0-9]*) die "--queues must be a number" ;; esac
case "$timeout_s" in ''|*[!0-9]*) die "--timeout must be whole seconds" ;; esac
if [ -z "$net" ]; then
  if [ -n "$sock" ]; then net=vhost-user; elif [ -n "$tap" ]; then net=tap; else net=user; fi
fi

eval "$("$here/../qemu-info.sh")" || die "no QEMU found (scripts/install-deps.sh installs it)"

# Kernel and initramfs (built and cached when missing).
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
  # Refreshed when out of date (cached: about 0.2 s), unless it was built with a baked-in guest script.
  if [ ! -f "$guest_dir/initramfs.cpio.gz" ] || [ ! -f "$guest_dir/vmlinuz" ] || [ ! -f "$guest_dir/baked-script" ]; then
    "$here/build-initramfs.sh" "$guest_dir" >/dev/null
  fi
  kernel="${kernel:-$guest_dir/vmlinuz}"; initrd="${initrd:-$guest_dir/initramfs.cpio.gz}"
fi
[ -f "$kernel" ] || die "no kernel: $kernel"
[ -f "$initrd" ] || die "no initrd: $initrd"
logfile="${logfile:-$guest_dir/console.log}"
mkdir -p "$(dirname "$logfile")"
: >"$logfile"

# Leftovers of runs that were killed with KILL (their trap could not run), older than a day.
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'mqv-guest.*' -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/mqv-guest.XXXXXX")"
runner_pid=""
cleanup() {
  if [ -n "$runner_pid" ] && kill -0 "$runner_pid" 2>/dev/null; then
    kill -TERM "$runner_pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$runner_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$runner_pid" 2>/dev/null || true
  fi
  [ -n "${tee_pid:-}" ] && kill "$tee_pid" 2>/dev/null || true
  rm -rf "$tmpdir"
}
trap cleanup EXIT
trap 'log "signal: stopping QEMU"; exit 143' TERM INT HUP

# The test script travels as a second cpio archive appended to the initramfs.
if [ -n "$script" ]; then
  [ -f "$script" ] || die "no such guest script: $script"
  mkdir -p "$tmpdir/ov"
  cp "$script" "$tmpdir/ov/test.sh"; chmod 755 "$tmpdir/ov/test.sh"
  (cd "$tmpdir/ov" && echo test.sh | cpio -o -H newc -R 0:0 --quiet | gzip -1 -n) >"$tmpdir/overlay.cpio.gz"
  cat "$initrd" "$tmpdir/overlay.cpio.gz" >"$tmpdir/initrd.cpio.gz"
  initrd="$tmpdir/initrd.cpio.gz"
fi

# Network.
netargs=()
mq=""
if [ "$queues" -gt 1 ]; then mq=",mq=on,vectors=$((2 * queues + 2))"; fi
dev="virtio-net-pci,netdev=n0,mac=$mac,romfile=$mq${dev_opts:+,$dev_opts}"
case "$net" in
  vhost-user)
    [ -n "$sock" ] || die "--net vhost-user needs --vhost-user SOCK"
    chardev="socket,id=c0,path=$sock"
    if [ -n "$server" ]; then
      chardev="$chardev,server=on,wait=off"
    else
      [ -n "$reconnect" ] && chardev="$chardev,$QEMU_RECONNECT_OPT"
      n=0
      while [ ! -S "$sock" ] && [ "$n" -lt $((sock_wait * 10)) ]; do sleep 0.1; n=$((n + 1)); done
      [ -S "$sock" ] || die "vhost-user socket $sock did not appear within ${sock_wait}s"
    fi
    netargs=(-chardev "$chardev" -netdev "vhost-user,id=n0,chardev=c0,queues=$queues" -device "$dev") ;;
  tap)
    [ -n "$tap" ] || die "--net tap needs --tap IFNAME"
    vhost=off
    if [ -n "$vhost_net" ]; then
      [ -c /dev/vhost-net ] || die "--vhost-net: this kernel has no /dev/vhost-net (modprobe vhost_net)"
      vhost=on
    fi
    netargs=(-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no,vhost=$vhost,queues=$queues" -device "$dev") ;;
  user)
    # restrict=on: no traffic leaves the guest's private slirp network.
    netargs=(-netdev "user,id=n0,restrict=on" -device "$dev") ;;
  none) ;;
  *) die "unknown --net $net" ;;
esac

case "$msi" in
  auto) if [ "$net" = vhost-user ] && [ "$QEMU_MSIX_OK" != 1 ]; then append="$append $QEMU_GUEST_APPEND"; fi ;;
  off) append="$append pci=nomsi" ;;
  on) ;;
  *) die "--msi auto|on|off" ;;
esac

kargs="console=ttyS0 panic=-1 quiet loglevel=3 $append ${mqv_args[*]:-}"
kargs="$(echo "$kargs" | tr -s ' ' | sed 's/^ //; s/ $//')"

serial=(-chardev "file,id=con0,path=$logfile" -serial chardev:con0)
misc=()
[ -n "$qmp" ] && misc+=(-qmp "unix:$qmp,server=on,wait=off")
[ -n "$pidfile" ] && misc+=(-pidfile "$pidfile")
read -r -a env_extra <<<"${MQV_QEMU_EXTRA:-}"

# shellcheck disable=SC2054  # commas are QEMU's
qemu=("$QEMU_BIN" -nodefaults -no-user-config -display none -no-reboot
  -accel tcg,thread=multi -cpu max -smp "$smp" -m "${mem}M"
  -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem
  -kernel "$kernel" -initrd "$initrd" -append "$kargs"
  "${serial[@]}" "${netargs[@]}" "${misc[@]}" "${env_extra[@]}" "${extra_qemu[@]}")

# If this script dies (even by KILL), timeout gets TERM and passes it to QEMU; if timeout dies, QEMU gets KILL.
prefix=(setpriv --pdeathsig TERM timeout -k 5 "$timeout_s")
[ -n "$netns" ] && prefix+=(ip netns exec "$netns")
prefix+=(setpriv --pdeathsig KILL)
[ -n "$cpus" ] && prefix+=(taskset -c "$cpus")

log "QEMU $QEMU_VERSION, net=$net queues=$queues, append: $kargs"
log "log: $logfile"
if [ -n "$tee" ]; then
  tail -n +1 -F "$logfile" 2>/dev/null &
  tee_pid=$!
fi

t0=$(date +%s.%N)
rc=0
"${prefix[@]}" "${qemu[@]}" </dev/null &
runner_pid=$!
wait "$runner_pid" || rc=$?
runner_pid=""
t1=$(date +%s.%N)
if [ -n "${tee_pid:-}" ]; then sleep 0.3; kill "$tee_pid" 2>/dev/null || true; wait "$tee_pid" 2>/dev/null || true; tee_pid=""; fi

guest_rc="$(tr -d '\r' <"$logfile" | sed -n 's/.*MQV-DONE rc=\([0-9]*\).*/\1/p' | tail -1)"
wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')"
[ "$rc" = 124 ] && log "timeout after ${timeout_s}s: QEMU killed"
log "qemu_rc=$rc guest_rc=${guest_rc:-none} wall_s=$wall log=$logfile"
if [ -n "$check" ]; then
  [ "$rc" = 124 ] && exit 124
  [ -n "$guest_rc" ] || exit 125
  exit "$guest_rc"
fi
exit "$rc"
