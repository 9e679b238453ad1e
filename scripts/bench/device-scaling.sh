#!/usr/bin/env bash
# The multi-core scaling figure (docs/performance.md, "Many CPUs"): scenario 1 (our driver -> our backend) at 1, 2,
# 4, ... pairs, one CPU per busy thread: driver threads on the first half of the CPUs, workers on the second half,
# so that N pairs use 2N CPUs and no two threads share one. Busy polling, then workers woken by kicks.
#   scripts/bench/device-scaling.sh OUT_DIR [MAX_PAIRS] [extra bench options...]
# Runs the kit of scripts/bench/device-kit.sh (target/device) if there is one, else bin/mqvirtio. Each mode's
# results go to OUT_DIR/poll and OUT_DIR/kicks (bench.csv, bench.json), its output to OUT_DIR/*.txt.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:?usage: device-scaling.sh OUT_DIR [MAX_PAIRS] [bench options]}"
shift
cpus=$(nproc)
half=$((cpus / 2))
max="${1:-$half}"
[ $# -gt 0 ] && shift
if [ "$max" -gt "$half" ]; then
  echo "device-scaling: $cpus CPUs give one CPU per thread to $half pairs at most, not $max" >&2
  exit 2
fi
pairs=1
list=1
while [ $((pairs * 2)) -le "$max" ]; do
  pairs=$((pairs * 2))
  list="$list,$pairs"
done
tx=$(seq -s, 0 $((half - 1)))
rx=$(seq -s, "$half" $((2 * half - 1)))
if [ -x "$root/target/device/runtime/bin/java" ]; then
  run=("$root/target/device/runtime/bin/java" --enable-native-access=ALL-UNNAMED -cp "$root/target/device/lib/*"
       io.mqvirtio.cli.Main)
else
  run=("$root/bin/mqvirtio")
fi
mkdir -p "$out"
{
  echo "device-scaling: $(date -u +%FT%TZ), $cpus CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs))"
  echo "pairs $list, driver threads on CPUs $tx, workers on CPUs $rx"
} | tee "$out/machine.txt"
for mode in poll kicks; do
  opts=()
  [ "$mode" = poll ] && opts=(--busy-poll)
  "${run[@]}" bench --scenarios 1 --sizes 64,1500 --pairs "$list" --layout both --in-order on \
    --cpus "$tx:$rx" --repeat 2 --seconds 1 --warmup 1 --rounds 3 "${opts[@]}" --out "$out/$mode" "$@" \
    2>&1 | tee "$out/$mode.txt"
done
