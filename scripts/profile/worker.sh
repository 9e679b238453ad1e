#!/usr/bin/env bash
# Where a bench worker's time goes, instruction by instruction (docs/performance.md, "Paired windows").
#   scripts/profile/worker.sh OUTDIR THREAD SECONDS_BEFORE_RECORDING -- BENCH ARGS...
# e.g. scripts/profile/worker.sh /tmp/p bench-qp0 12 -- --scenarios 2 --sizes 64 --pairs 1 --busy-poll --sink copy \
#        --layout packed --seconds 14 --warmup 4
# Runs the bench with the JIT's listing of our data-path classes, records the thread THREAD (by name) with perf for
# 5 s, and writes OUTDIR/ips.txt (samples per instruction address) and OUTDIR/hot.txt (the hottest instructions in
# their context, decoded from the listing by scripts/profile/jit-disasm.py). Needs perf and, for the listing,
# Debian's libhsdis0-fcml (installed here if missing; its listing is bytes, which objdump decodes).
set -euo pipefail
out=$1 thread=$2 wait=$3
shift 3
[ "${1:-}" = "--" ] && shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$out"
if [ ! -e /usr/lib/x86_64-linux-gnu/libhsdis.so.0 ]; then
  apt-get install -y -q libhsdis0-fcml >/dev/null
fi
hsdis="$out/hsdis"
mkdir -p "$hsdis"
ln -sf /usr/lib/x86_64-linux-gnu/libhsdis.so.0 "$hsdis/hsdis-amd64.so"
print="-XX:CompileCommand=print,io.mqvirtio.net.QueuePairWorker::* -XX:CompileCommand=print,io.mqvirtio.virtio.*::*"
print="$print -XX:CompileCommand=print,io.mqvirtio.bench.*::* -XX:CompileCommand=print,io.mqvirtio.linux.IoVec::*"
print="$print -XX:CompileCommand=print,io.mqvirtio.backend.*::* -XX:CompileCommand=print,io.mqvirtio.device.*::*"
LD_LIBRARY_PATH="$hsdis" MQVIRTIO_NO_AOT=1 \
  MQVIRTIO_JAVA_OPTS="-XX:+UnlockDiagnosticVMOptions -XX:+DumpPerfMapAtExit -XX:CompileCommand=quiet $print" \
  timeout 600 "$root/bin/mqvirtio" bench "$@" --out "$out/bench" >"$out/bench.log" 2>&1 &
bench=$!
sleep "$wait"
tid=
for p in $(pgrep -f "mqvirtio.jar bench" || true); do
  t=$(grep -lx "$thread" /proc/"$p"/task/*/comm 2>/dev/null | cut -d/ -f5 | head -1 || true)
  [ -n "$t" ] && tid=$t
done
if [ -z "$tid" ]; then
  echo "no thread named $thread after ${wait}s" >&2
  kill "$bench" 2>/dev/null || true
  exit 1
fi
perf record -q -e cpu-clock -t "$tid" -o "$out/w.data" -- sleep 5
wait "$bench" || true
perf script -i "$out/w.data" -F ip,sym 2>/dev/null | sort | uniq -c | sort -rn >"$out/ips.txt"
awk '{s[$3" "$4]+=$1; t+=$1} END {for (k in s) printf "%5.1f%% %s\n", 100*s[k]/t, k}' "$out/ips.txt" | sort -rn | head -15
"$root/scripts/profile/jit-disasm.py" "$out/bench.log" "$out/ips.txt" 20 >"$out/hot.txt"
grep "^===" "$out/hot.txt" | head -12
echo "instructions in context: $out/hot.txt"
