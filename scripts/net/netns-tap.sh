#!/usr/bin/env bash
# A persistent multiqueue TAP inside a network namespace of the test's own, so that test traffic (10.x included)
# never touches the host's own network. Root only.
#
#   scripts/net/netns-tap.sh up NS TAP [CIDR]   create namespace NS (if needed, lo up) and TAP in it
#                                               (mode tap multi_queue), give it CIDR (e.g. 10.77.0.1/24), set it up
#   scripts/net/netns-tap.sh down NS [TAP]      delete TAP (if given) and the namespace
#
# Use the TAP from QEMU with run-guest.sh --netns NS --tap TAP --queues N, or from a process started with
# `ip netns exec NS ...` (TUNSETIFF attaches by name in the caller's namespace).
set -euo pipefail
die() { echo "netns-tap: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: $0 up NS TAP [CIDR] | down NS [TAP]"
cmd="$1"; ns="$2"; tap="${3:-}"; cidr="${4:-}"
case "$cmd" in
  up)
    [ -n "$tap" ] || die "up needs a TAP name"
    ip netns list | awk '{print $1}' | grep -qx "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link show "$tap" >/dev/null 2>&1 || ip netns exec "$ns" ip tuntap add dev "$tap" mode tap multi_queue
    [ -n "$cidr" ] && ip -n "$ns" addr replace "$cidr" dev "$tap"
    ip -n "$ns" link set "$tap" up ;;
  down)
    if [ -n "$tap" ]; then ip netns exec "$ns" ip tuntap del dev "$tap" mode tap multi_queue 2>/dev/null || true; fi
    ip netns del "$ns" 2>/dev/null || true ;;
  *) die "unknown command $cmd" ;;
esac
